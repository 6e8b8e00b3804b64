//! `pool_client`: the task client matching `pool_worker`, with the pool's own demo: `map` over
//! 20 × "sum of 1..=20,000,000", results in input order; then a single `submit` waited on with a
//! timeout, a done-callback, and a task that fails.
//!
//! ```text
//! cargo run --release --bin colony -- server                      # terminal 1
//! cargo run --release -p colony-examples --bin pool_worker        # terminal 2 (and more)
//! cargo run --release -p colony-examples --bin pool_client        # terminal 3
//! ```
//!
//! Arguments: `[URL]` (default `tcp://127.0.0.1:7878`); the secret as for `pool_worker`. It uses
//! the blocking executor; async programs use `colony_tokio::executor::Executor` the same way and
//! `.await` the handles.

use std::time::{Duration, Instant};

use colony_examples::init_logging;
use colony_tokio::executor::{BlockingExecutor, Executor, ExecutorError, Wait};
use colony_tokio::kind::TaskKind;
use colony_tokio::secret::{SECRET_ENV, Secret};

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
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:7878".to_owned());
    // The client names the kinds and their types; the workers hold the functions.
    let sum = TaskKind::<u64, u64>::declared("sum");
    let word_lengths = TaskKind::<String, Vec<u32>>::declared("word-lengths");

    let exec: BlockingExecutor = Executor::builder(&url, secret()?)
        .no_worker_wait(Some(Duration::from_secs(30)))
        .connect_blocking()?;
    println!(
        "connected to {url}; jobs named {}/…",
        exec.executor().job_name()
    );

    let started = Instant::now();
    for (i, result) in exec.map(&sum, vec![20_000_000u64; 20]).enumerate() {
        println!("sum {i:2}: {}", result?);
    }
    println!(
        "20 sums of 1..=20,000,000 in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let mut handle = exec.submit(&word_lengths, &"the quick brown fox".to_owned())?;
    match handle.wait_timeout(Duration::from_secs(30)) {
        Ok(lengths) => println!("word lengths: {lengths:?}"),
        Err(ExecutorError::Timeout) => println!("no answer within 30 s; the task goes on"),
        Err(e) => return Err(e.into()),
    }

    let (tx, rx) = std::sync::mpsc::channel();
    exec.submit(&sum, &100)?.on_done(move |result| {
        let _ = tx.send(result);
    });
    println!(
        "done-callback got: {:?}",
        rx.recv_timeout(Duration::from_secs(60))?
    );

    match exec.submit(&word_lengths, &String::new())?.wait() {
        Err(e) => println!("a failing task reports: {e}"),
        Ok(v) => println!("unexpected: {v:?}"),
    }
    exec.shutdown(Wait::Yes);
    Ok(())
}
