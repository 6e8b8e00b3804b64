//! Shared helpers of Colony's runnable examples (`src/bin/*.rs`).

use std::process::{Child, Command};

/// Starts `count` more copies of this very program with `COLONY_ADDR=addr`, so that they join
/// the loop this process serves as workers (the same program runs on every node).
///
/// # Errors
/// If the program cannot be started.
pub fn spawn_copies(count: usize, addr: std::net::SocketAddr) -> std::io::Result<Vec<Child>> {
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    (0..count)
        .map(|_| {
            Command::new(&exe)
                .args(&args)
                .env("COLONY_ADDR", addr.to_string())
                .env("COLONY_SPAWNED", "1")
                .spawn()
        })
        .collect()
}

/// Whether this process was started by [`spawn_copies`].
pub fn is_spawned_copy() -> bool {
    std::env::var_os("COLONY_SPAWNED").is_some()
}

/// Logging to stderr at `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
}
