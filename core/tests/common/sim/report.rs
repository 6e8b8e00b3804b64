//! What a run reports: counts of what happened, or the first invariant it broke.
//!
//! Invariant: every count is a sum over runs, except `longest_us`, a maximum, so reports of many
//! seeds add up with [`Stats::add`].

/// Counts of what happened in one run (or, added up, in many).
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) runs: u64,
    pub(crate) jobs: u64,
    pub(crate) dag_jobs: u64,
    pub(crate) tasks: u64,
    pub(crate) edges: u64,
    pub(crate) doomed: u64,
    pub(crate) workers: u64,
    pub(crate) connections: u64,
    pub(crate) handshakes: u64,
    pub(crate) grants: u64,
    pub(crate) reissued: u64,
    pub(crate) expiries: u64,
    pub(crate) stale_answers: u64,
    pub(crate) fenced_answers: u64,
    pub(crate) retryable_failures: u64,
    pub(crate) permanent_failures: u64,
    pub(crate) failed: u64,
    pub(crate) poisoned: u64,
    pub(crate) exhausted: u64,
    pub(crate) cascaded: u64,
    pub(crate) worker_kills: u64,
    pub(crate) link_drops: u64,
    pub(crate) half_open: u64,
    pub(crate) hangs: u64,
    pub(crate) goodbyes: u64,
    pub(crate) slow_links: u64,
    pub(crate) silent_closes: u64,
    pub(crate) idle_drops: u64,
    pub(crate) server_crashes: u64,
    pub(crate) tail_bytes_lost: u64,
    pub(crate) tail_bytes_kept: u64,
    pub(crate) resumed_settled: u64,
    pub(crate) fsyncs: u64,
    pub(crate) log_bytes: u64,
    pub(crate) frames: u64,
    pub(crate) net_bytes: u64,
    pub(crate) sim_time_us: u64,
    /// The longest run's simulated time (a maximum, not a sum).
    pub(crate) longest_us: u64,
    pub(crate) steps: u64,
}

impl Stats {
    /// Adds `other` into `self`, field by field.
    pub(crate) fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            runs,
            jobs,
            dag_jobs,
            tasks,
            edges,
            doomed,
            workers,
            connections,
            handshakes,
            grants,
            reissued,
            expiries,
            stale_answers,
            fenced_answers,
            retryable_failures,
            permanent_failures,
            failed,
            poisoned,
            exhausted,
            cascaded,
            worker_kills,
            link_drops,
            half_open,
            hangs,
            goodbyes,
            slow_links,
            silent_closes,
            idle_drops,
            server_crashes,
            tail_bytes_lost,
            tail_bytes_kept,
            resumed_settled,
            fsyncs,
            log_bytes,
            frames,
            net_bytes,
            sim_time_us,
            steps
        );
        self.longest_us = self.longest_us.max(o.longest_us);
    }
}

/// A run that held every invariant.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) stats: Stats,
    /// The jobs and workers of the run, one line each.
    pub(crate) setup: Vec<String>,
    /// Notable events (crashes, restarts, workers dying), in order.
    pub(crate) events: Vec<String>,
}

/// A run that broke an invariant.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) seed: u64,
    pub(crate) step: u64,
    pub(crate) time_us: u64,
    pub(crate) message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} (step {}, at {:.3} ms simulated)",
            self.seed,
            self.message,
            self.step,
            self.time_us as f64 / 1000.0
        )
    }
}
