//! Checkpoint resume: a run that crashes half way, and the run after it, which does only what
//! was left (and what was in flight), yet hands back every output in item order.
//!
//! ```text
//! cargo run --release -p colony-examples --bin checkpoint
//! ```
//!
//! The first run is a copy of this program that aborts itself (no clean shutdown at all) after
//! half the items; the second run resumes from the checkpoint it left.

use std::process::Command;

use colony_examples::init_logging;
use colony_tokio::forloop::{Loop, LoopError};

const ITEMS: u64 = 20_000;

fn square_digits(n: u64) -> u64 {
    n.to_string()
        .bytes()
        .map(|b| u64::from(b - b'0').pow(2))
        .sum()
}

fn run(checkpoint: &std::path::Path, crash_after: Option<usize>) -> Result<(), LoopError> {
    let mut job = Loop::new("square-digits", 0..ITEMS)
        .addr("127.0.0.1:0")
        .checkpoint(checkpoint)
        .start()?;
    let mut ran = 0;
    for item in job.iter() {
        item.produce(&square_digits(*item))?;
        ran += 1;
        if crash_after == Some(ran) {
            eprintln!("first run: crashing on purpose after {ran} items");
            std::process::abort();
        }
    }
    let report = job.finish::<u64>()?;
    let product = report.product.unwrap_or_default();
    let all_right = product
        .iter()
        .enumerate()
        .all(|(i, o)| *o == Some(square_digits(i as u64)));
    println!(
        "second run: {} items were already done, {} ran now; {} outputs in order, all correct: {all_right}",
        report.resumed,
        report.ran_here,
        product.len()
    );
    Ok(())
}

fn main() -> Result<(), LoopError> {
    init_logging();
    let checkpoint = match std::env::var_os("CHECKPOINT") {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            let path = std::env::temp_dir().join(format!(
                "colony-checkpoint-example-{}.ckpt",
                std::process::id()
            ));
            let status = Command::new(
                std::env::current_exe().map_err(|e| LoopError::Config(e.to_string()))?,
            )
            .env("CHECKPOINT", &path)
            .env("CRASH_AFTER", (ITEMS / 2).to_string())
            .status()
            .map_err(|e| LoopError::Config(e.to_string()))?;
            println!("first run ended with {status}");
            let result = run(&path, None);
            let _ = std::fs::remove_file(&path);
            return result;
        }
    };
    let crash_after = std::env::var("CRASH_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());
    run(&checkpoint, crash_after)
}
