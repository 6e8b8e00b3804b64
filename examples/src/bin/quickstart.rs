//! The quick start: one command, a job spread over local worker processes with the server
//! embedded.
//!
//! ```text
//! cargo run --release -p colony-examples --bin quickstart [-- ITEMS [WORKERS]]
//! ```
//!
//! This process binds a free loopback port and so serves the loop; it then starts WORKERS more
//! copies of itself (default 2), which find the address taken and join as workers. Every
//! process runs `for item in job`: here, the length of the Collatz chain of each number.
//! The serving process gathers every output in order and prints the answer and the figures.

use std::time::Instant;

use colony_examples::{init_logging, is_spawned_copy, spawn_copies};
use colony_tokio::forloop::{Loop, LoopError, Role};

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

fn main() -> Result<(), LoopError> {
    init_logging();
    let mut args = std::env::args().skip(1);
    let items: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let started = Instant::now();

    // Items are chunks of 1,000 numbers, so each item is a few hundred microseconds of work.
    let chunks: Vec<(u64, u64)> = (1..=items)
        .step_by(1_000)
        .map(|s| (s, (s + 999).min(items)))
        .collect();
    let addr = if is_spawned_copy() {
        None
    } else {
        Some("127.0.0.1:0")
    };
    let mut job = Loop::new("quickstart-collatz", chunks).slots(1);
    if let Some(addr) = addr {
        job = job.addr(addr);
    }
    let mut running = job.start()?;
    let mut children = Vec::new();
    if let Some(local) = running.local_addr() {
        println!("serving the loop on {local}; starting {workers} worker processes");
        children = spawn_copies(workers, local).map_err(|e| LoopError::Config(e.to_string()))?;
    }
    for item in running.iter() {
        let (lo, hi) = *item;
        let best = (lo..=hi)
            .map(|n| (collatz_steps(n), n))
            .max()
            .unwrap_or((0, lo));
        item.produce(&best)?;
    }
    let report = running.finish::<(u32, u64)>()?;
    for mut child in children {
        let _ = child.wait();
    }
    let elapsed = started.elapsed();
    match report.role {
        Role::Working => println!(
            "worker {}: ran {} items",
            std::process::id(),
            report.ran_here
        ),
        Role::Serving | Role::Serial => {
            let product = report.product.unwrap_or_default();
            let best = product.iter().flatten().max().copied().unwrap_or_default();
            println!(
                "numbers 1..={items}: the longest Collatz chain starts at {} ({} steps)",
                best.1, best.0
            );
            println!(
                "{} items ({} ran here, {} failed) in {:.2} s: {:.0} items/s, {:.0} numbers/s",
                product.len(),
                report.ran_here,
                report.failures.len(),
                elapsed.as_secs_f64(),
                product.len() as f64 / elapsed.as_secs_f64(),
                items as f64 / elapsed.as_secs_f64()
            );
        }
    }
    Ok(())
}
