//! `pool_worker`: a pool worker program. It registers two typed task kinds and serves every
//! client of a standing `colony server`, one task per core at a time, until stopped.
//!
//! ```text
//! cargo run --release --bin colony -- server                      # terminal 1
//! cargo run --release -p colony-examples --bin pool_worker        # terminal 2 (and more)
//! cargo run --release -p colony-examples --bin pool_client        # terminal 3
//! ```
//!
//! Arguments: `[URL] [--slots N]`. The URL defaults to `tcp://127.0.0.1:7878`; the secret comes
//! from `COLONY_SECRET` (hex), else from `colony-data/secret`, the file `colony server` writes on
//! its first start. Start as many as you like, on any machine that reaches the server; stop
//! them at any time (a task a stopped worker held runs elsewhere).

use std::time::Duration;

use colony_examples::init_logging;
use colony_tokio::kind::TaskKind;
use colony_tokio::secret::{SECRET_ENV, Secret};
use colony_tokio::worker::{TaskError, Worker};

/// `sum`: 1 + 2 + … + n, the slow way (a CPU-bound task, like the Python pool's demo).
fn sum() -> TaskKind<u64, u64> {
    TaskKind::new("sum", |n: u64| {
        let mut total = 0u64;
        for i in 1..=n {
            total = total.wrapping_add(std::hint::black_box(i));
        }
        Ok::<_, TaskError>(total)
    })
}

/// `word-lengths`: the length of every word of a text; an empty text is refused for good.
fn word_lengths() -> TaskKind<String, Vec<u32>> {
    TaskKind::new("word-lengths", |text: String| {
        if text.trim().is_empty() {
            return Err(TaskError::permanent("no words in an empty text"));
        }
        Ok(text
            .split_whitespace()
            .map(|w| w.chars().count() as u32)
            .collect())
    })
}

fn secret() -> Result<Secret, Box<dyn std::error::Error>> {
    if let Some(secret) = Secret::from_env(SECRET_ENV)? {
        return Ok(secret);
    }
    Secret::from_file("colony-data/secret").map_err(|e| {
        format!("{e} (set {SECRET_ENV}, or run this where `colony server` keeps colony-data)")
            .into()
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let mut url = "tcp://127.0.0.1:7878".to_owned();
    let mut slots = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--slots" => slots = Some(args.next().ok_or("--slots needs a number")?.parse()?),
            other => url = other.to_owned(),
        }
    }
    let mut builder = Worker::builder()
        .kind(sum())
        .kind(word_lengths())
        .server_lost_after(Duration::from_secs(60));
    if let Some(slots) = slots {
        builder = builder.slots(slots);
    }
    let worker = builder.connect(&url, secret()?)?;
    println!("pool worker serving kinds sum and word-lengths at {url}; Ctrl-C stops it");
    let exit = worker.run_blocking()?;
    println!("stopped: {exit:?}");
    Ok(())
}
