//! Deterministic simulation of the scheduler and the workers (see `common/sim/mod.rs`): many
//! seeded runs with faults, every invariant checked after every step.
//!
//! `SIM_SEEDS=<n>` sets how many seeds run (default 1,000); `SIM_SEED=<n>` replays one seed,
//! and `SIM_TRACE=1` prints its every event: `SIM_SEED=42 SIM_TRACE=1 cargo test -p colony-core
//! --test sim -- --nocapture`.

#[path = "common/sim/mod.rs"]
mod sim;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sim::{Failure, Mode, Options, Stats};

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={text:?} is not a number"),
    }
}

/// Runs `seeds` on every core; returns the summed stats and the failures, lowest seed first.
fn run_seeds(seeds: &[u64], options: &Options) -> (Stats, Vec<Failure>) {
    let next = AtomicU64::new(0);
    let total = Mutex::new(Stats::default());
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(seeds.len()).max(1) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(k) else { break };
                    let outcome = std::panic::catch_unwind(|| sim::run(seed, options));
                    match outcome {
                        Ok(Ok(report)) => total.lock().unwrap().add(&report.stats),
                        Ok(Err(failure)) => failures.lock().unwrap().push(failure),
                        Err(panic) => {
                            let message = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            failures.lock().unwrap().push(Failure {
                                seed,
                                step: 0,
                                time_us: 0,
                                message: format!("panicked: {message}"),
                            });
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.seed);
    (total.into_inner().unwrap(), failures)
}

#[test]
fn seeded_runs_hold_every_invariant() {
    let trace = env_u64("SIM_TRACE").is_some_and(|t| t != 0);
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(1_000)).collect(),
    };
    let options = Options {
        trace,
        ..Options::default()
    };
    let started = std::time::Instant::now();
    let (stats, failures) = run_seeds(&seeds, &options);
    eprintln!(
        "{} seeds in {:.2?}: {} tasks, {} grants ({} re-issued), {} expiries, {} server crashes, \
         {} worker deaths, {} link drops, {} hangs, {} fsyncs, {:.1} s simulated",
        seeds.len(),
        started.elapsed(),
        stats.tasks,
        stats.grants,
        stats.reissued,
        stats.expiries,
        stats.server_crashes,
        stats.worker_kills,
        stats.link_drops,
        stats.hangs,
        stats.fsyncs,
        stats.sim_time_us as f64 / 1e6
    );
    if let Some(first) = failures.first() {
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        panic!(
            "{} of {} seeds failed; the first: {first}\nreplay it with: SIM_SEED={} SIM_TRACE=1 \
             cargo test -p colony-core --test sim -- --nocapture",
            failures.len(),
            seeds.len(),
            first.seed
        );
    }
    // The faults the simulation promises did happen, somewhere.
    if seeds.len() >= 100 {
        assert!(
            stats.server_crashes > 0 && stats.tail_bytes_lost > 0,
            "{stats:?}"
        );
        assert!(stats.expiries > 0 && stats.reissued > 0, "{stats:?}");
        assert!(
            stats.worker_kills > 0 && stats.link_drops > 0 && stats.hangs > 0,
            "{stats:?}"
        );
        assert!(
            stats.stale_answers > 0 && stats.fenced_answers > 0,
            "{stats:?}"
        );
        assert!(
            stats.retryable_failures > 0 && stats.doomed > 0,
            "{stats:?}"
        );
        assert!(stats.dag_jobs > 0 && stats.resumed_settled > 0, "{stats:?}");
    }
}

/// The first seed below `limit` that `mode` fails, with its failure; `cross_checks` off leaves
/// only the headline invariants to judge.
fn first_caught(mode: Mode, limit: u64, cross_checks: bool) -> Option<Failure> {
    let options = Options {
        mode,
        tasks: (40, 80),
        cross_checks,
        ..Options::default()
    };
    (0..limit).find_map(|seed| sim::run(seed, &options).err())
}

/// Runs a deliberately broken glue with and without the cross-checks; both must catch it, and
/// the headline invariants alone must name one of `expected`.
fn assert_caught(mode: Mode, limit: u64, expected: &[&str]) {
    for cross_checks in [true, false] {
        let Some(failure) = first_caught(mode, limit, cross_checks) else {
            panic!("{mode:?} went unnoticed for {limit} seeds (cross-checks: {cross_checks})");
        };
        eprintln!("{mode:?}, cross-checks {cross_checks}: caught {failure}");
        if !cross_checks {
            assert!(
                expected.iter().any(|e| failure.message.contains(e)),
                "{mode:?} caught for another reason: {failure}"
            );
        }
    }
}

#[test]
fn checker_catches_acknowledging_before_durable() {
    assert_caught(
        Mode::AckBeforeDurable,
        50,
        &[
            "acknowledged before it was durable",
            "reported done before it was durable",
        ],
    );
}

#[test]
fn checker_catches_forgetting_completions_on_replay() {
    assert_caught(
        Mode::ForgetDoneOnReplay,
        200,
        &["granted again after it durably settled", "recorded twice"],
    );
}

#[test]
fn checker_catches_leases_beyond_credit() {
    assert_caught(Mode::InflateCredit, 50, &["but asked for"]);
}
