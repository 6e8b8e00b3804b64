//! Serial mode: the whole loop in one process, no network, still writing and resuming its
//! checkpoint. For debugging a loop body with a debugger or `println!`.
//!
//! ```text
//! cargo run -p colony-examples --bin serial
//! ```
//!
//! Any loop runs this way with `COLONY_SERIAL=1` in the environment, too.

use colony_examples::init_logging;
use colony_tokio::forloop::{Loop, LoopError};

fn main() -> Result<(), LoopError> {
    init_logging();
    let dir = std::env::temp_dir().join(format!("colony-serial-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| LoopError::Config(e.to_string()))?;
    let checkpoint = dir.join("serial.ckpt");
    let words = ["alpha", "beta", "gamma", "delta", "epsilon"].map(String::from);

    let mut job = Loop::new("word-lengths", words.clone())
        .serial(true)
        .checkpoint(&checkpoint)
        .start()?;
    for item in job.iter() {
        println!("item {}: {:?}", item.index(), item.value());
        item.produce(&item.len())?;
    }
    let report = job.finish::<usize>()?;
    println!("lengths: {:?}", report.product.unwrap_or_default());

    // Run it again: everything is in the checkpoint, so no item runs a second time.
    let mut again = Loop::new("word-lengths", words)
        .serial(true)
        .checkpoint(&checkpoint)
        .start()?;
    let ran = again.iter().count();
    let report = again.finish::<usize>()?;
    println!(
        "second run: {ran} items ran, {} found done in the checkpoint",
        report.resumed
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
