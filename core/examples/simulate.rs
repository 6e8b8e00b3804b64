//! Runs Colony's deterministic simulation and tells what happened.
//!
//! ```sh
//! cargo run --release -p colony-core --example simulate            # 200 seeds
//! cargo run --release -p colony-core --example simulate -- 5000 17  # 5000 seeds from seed 17
//! ```
//!
//! Each seed runs one or two jobs (a few hundred tasks, with or without dependency DAGs) on the
//! real scheduler and real worker state machines, through a simulated network, clock and disk,
//! while workers die, hang, join late and leave, links drop and lag, tasks fail, and the server
//! crashes and resumes from its log. Every invariant is checked after every step; the program
//! prints one run's story, then what all the runs went through, and exits with an error
//! naming the seed if any run broke an invariant.

#[path = "../tests/common/sim/mod.rs"]
mod sim;

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sim::{Failure, Options, Report, Stats};

fn arg(n: usize, default: u64) -> Result<u64, String> {
    match std::env::args().nth(n) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("argument {n} must be a number, not {text:?}")),
    }
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: u64) -> String {
    match n {
        0..1_024 => format!("{n} B"),
        1_024..1_048_576 => format!("{:.1} KiB", n as f64 / 1_024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn main() -> ExitCode {
    let (count, first) = match (arg(1, 200), arg(2, 0)) {
        (Ok(c), Ok(f)) => (c, f),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("usage: simulate [seeds] [first seed]: {e}");
            return ExitCode::FAILURE;
        }
    };
    let seeds: Vec<u64> = (first..first.saturating_add(count)).collect();
    println!(
        "Colony simulation: {} seeded runs (seeds {first}..{}) of the real scheduler and worker \
         state machines, with faults.\n",
        seeds.len(),
        first.saturating_add(count)
    );

    let started = Instant::now();
    let next = AtomicU64::new(0);
    let reports = Mutex::new(Vec::<Report>::new());
    let failures = Mutex::new(Vec::<Failure>::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let options = Options::default();
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                    match sim::run(seed, &options) {
                        Ok(report) => reports.lock().unwrap().push(report),
                        Err(failure) => failures.lock().unwrap().push(failure),
                    }
                }
            });
        }
    });
    let wall = started.elapsed();
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|r| r.seed);
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.seed);

    // The liveliest of the first twenty runs: most server crashes, then most events.
    let close_up = reports
        .iter()
        .take(20)
        .max_by_key(|r| (r.stats.server_crashes, r.events.len(), u64::MAX - r.seed));
    if let Some(r) = close_up {
        let s = &r.stats;
        println!("One run up close (seed {}):", r.seed);
        for line in &r.setup {
            println!("  {line}");
        }
        for line in &r.events {
            println!("  {line}");
        }
        println!(
            "  => {} tasks done, {} failed for good; {} leases granted, {} re-issued, {} expired; \
             {} fsyncs; {:.3} s simulated\n",
            s.tasks - s.failed,
            s.failed,
            s.grants,
            s.reissued,
            s.expiries,
            s.fsyncs,
            s.sim_time_us as f64 / 1e6
        );
    }

    let mut t = Stats::default();
    for r in &reports {
        t.add(&r.stats);
    }
    let g = grouped;
    println!("All {} runs that completed:", g(t.runs));
    println!(
        "  jobs        {} ({} with dependency DAGs): {} tasks, {} edges",
        g(t.jobs),
        g(t.dag_jobs),
        g(t.tasks),
        g(t.edges)
    );
    println!(
        "  outcome     {} tasks done with the right output, each recorded once; {} failed for good \
         ({} poisoned, {} out of attempts, {} after a failed predecessor)",
        g(t.tasks - t.failed),
        g(t.failed),
        g(t.poisoned),
        g(t.exhausted),
        g(t.cascaded)
    );
    println!(
        "  workers     {} joined over {} connections; {} died, {} lost their link, {} were \
         left half-open, {} hung, {} left for good, {} gave up on a silent server",
        g(t.workers),
        g(t.connections),
        g(t.worker_kills),
        g(t.link_drops),
        g(t.half_open),
        g(t.hangs),
        g(t.goodbyes),
        g(t.silent_closes)
    );
    println!(
        "  server      {} crashes: {} of un-synced log lost, {} of a torn tail kept; \
         {} settled tasks resumed from the log",
        g(t.server_crashes),
        bytes(t.tail_bytes_lost),
        bytes(t.tail_bytes_kept),
        g(t.resumed_settled)
    );
    println!(
        "  leases      {} granted, {} re-issued, {} expired on the server's clock, \
         {} late answers dropped, {} answers for dead connections never sent",
        g(t.grants),
        g(t.reissued),
        g(t.expiries),
        g(t.stale_answers),
        g(t.fenced_answers)
    );
    println!(
        "  tasks       {} transient errors retried, {} permanent errors",
        g(t.retryable_failures),
        g(t.permanent_failures)
    );
    println!(
        "  log         {} fsyncs (group commit), {} written",
        g(t.fsyncs),
        bytes(t.log_bytes)
    );
    println!(
        "  network     {} frames from the server, {} in all",
        g(t.frames),
        bytes(t.net_bytes)
    );
    let simulated = t.sim_time_us as f64 / 1e6;
    println!(
        "  time        {simulated:.1} s simulated (the longest run {:.1} s) in {:.2} s on {threads} \
         threads ({:.0}x)",
        t.longest_us as f64 / 1e6,
        wall.as_secs_f64(),
        simulated / wall.as_secs_f64().max(1e-9)
    );
    if failures.is_empty() {
        println!(
            "  invariants  checked after each of {} steps: all held",
            g(t.steps)
        );
        ExitCode::SUCCESS
    } else {
        println!("\n{} runs broke an invariant:", failures.len());
        for f in &failures {
            println!("  {f}");
        }
        println!(
            "replay one with: SIM_SEED={} SIM_TRACE=1 cargo test -p colony-core --test sim -- --nocapture",
            failures[0].seed
        );
        ExitCode::FAILURE
    }
}
