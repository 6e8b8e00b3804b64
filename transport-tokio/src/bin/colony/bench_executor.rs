//! `colony bench --case executor`: the executor through the real server (durable checkpoint on)
//! and real pool-worker processes on loopback.
//!
//! Two measurements per round, on tasks of the demo `noop` kind (unit input and output):
//! - **round trip**: one `submit`, then awaiting its result, one task at a time; the p50 and p99
//!   of `ROUND_TRIPS` of them;
//! - **map**: `map` over `--tasks` inputs (default 1,000,000), from the first submission to the
//!   last result in hand.
//!
//! The report gives every round's figures and their medians (the summary prints the medians).
//!
//! Invariants: the checkpoint lives in a fresh directory removed afterwards; worker processes
//! never outlive the run (they are killed when their handle drops).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use colony_tokio::executor::{Executor, Wait};
use colony_tokio::kind::TaskKind;
use colony_tokio::secret::{SECRET_ENV, Secret};
use colony_tokio::server::{ClientLimits, Server, ServerConfig};
use serde::Serialize;
use tokio::process::{Child, Command};

use super::bench::Plan;

/// Default tasks of the map.
pub(crate) const MAP_TASKS: u32 = 1_000_000;

/// Round trips measured per round (at most as many as the map's tasks).
const ROUND_TRIPS: usize = 2_000;

/// Round trips run before measuring (connections warm, workers joined).
const WARM_UP: usize = 200;

/// Tasks a map keeps in flight.
const MAP_WINDOW: u32 = 32_768;

/// Set (to anything) to run the server without its checkpoint, for comparison: the figures then
/// leave out every `fdatasync`.
const NO_LOG_ENV: &str = "COLONY_BENCH_NO_LOG";

/// What the executor case measured (the `--json` line).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ExecutorReport {
    case: &'static str,
    tasks: u32,
    workers: u32,
    rounds: u32,
    round_trip_p50_us: Vec<u64>,
    round_trip_p99_us: Vec<u64>,
    map_tasks_per_sec: Vec<f64>,
    median_round_trip_p50_us: u64,
    median_round_trip_p99_us: u64,
    median_map_tasks_per_sec: f64,
    fsyncs: u64,
}

/// Runs the executor case and prints its summary, then (with `json`) its JSON line.
///
/// # Errors
/// The server, a worker or the executor failed.
pub(crate) fn main(plan: &Plan, json: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile_dir()?;
    let report = runtime.block_on(run(plan, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    print!("{}", render(&report));
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow!("no random directory name: {e}"))?;
    let path = std::env::temp_dir().join(format!(
        "colony-bench-executor-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    std::fs::create_dir(&path)
        .with_context(|| format!("cannot create bench directory {}", path.display()))?;
    Ok(path)
}

async fn run(plan: &Plan, dir: &Path) -> Result<ExecutorReport> {
    let secret = Secret::random()?;
    let mut config = ServerConfig::new(secret.clone())
        .listen((std::net::Ipv4Addr::LOCALHOST, 0).into())
        .client_limits(ClientLimits::default().max_in_flight(4 * MAP_WINDOW));
    if std::env::var_os(NO_LOG_ENV).is_none() {
        config = config.checkpoint(dir.join("bench.ckpt"));
    }
    let bound = Server::bind(config).context("cannot start the server")?;
    let addr = bound.local_addr();
    let handle = bound.handle();
    let server = bound.spawn();
    let mut workers = Vec::new();
    for i in 0..plan.workers {
        workers.push(spawn_worker(addr, &secret, i, plan.prefetch)?);
    }
    let result = measure(plan, &secret, addr, &handle).await;
    let stopped = handle.shutdown().await;
    let ended = server.await;
    drop(workers);
    let report = result?;
    stopped.context("server shutdown")?;
    ended
        .context("server task")?
        .context("server stopped on a fault")?;
    Ok(report)
}

async fn measure(
    plan: &Plan,
    secret: &Secret,
    addr: std::net::SocketAddr,
    handle: &colony_tokio::server::ServerHandle,
) -> Result<ExecutorReport> {
    let tasks = plan.tasks.unwrap_or(MAP_TASKS);
    let rounds = plan.rounds.max(1);
    let exec = Executor::builder(addr.to_string(), secret.clone())
        .name("colony-bench")
        .map_window(MAP_WINDOW)
        .max_in_flight(2 * MAP_WINDOW)
        .no_worker_wait(Some(Duration::from_secs(30)))
        .connect()
        .await?;
    let noop = TaskKind::<(), ()>::declared("noop");
    for _ in 0..WARM_UP {
        exec.submit(&noop, &()).await?.await?;
    }
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut rates = Vec::new();
    for round in 0..rounds {
        let trips = ROUND_TRIPS.min(tasks as usize).max(1);
        let mut latencies = Vec::with_capacity(trips);
        for _ in 0..trips {
            let started = Instant::now();
            exec.submit(&noop, &()).await?.await?;
            latencies.push(started.elapsed());
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies
                .get(i)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        };
        p50s.push(at(0.5));
        p99s.push(at(0.99));

        let started = Instant::now();
        let mut results = exec.map(&noop, std::iter::repeat_n((), tasks as usize));
        let mut done = 0u64;
        while let Some(result) = results.next().await {
            result.with_context(|| format!("map task {done}"))?;
            done += 1;
        }
        let rate = done as f64 / started.elapsed().as_secs_f64();
        rates.push((rate).round());
        eprintln!(
            "round {}: round trip p50 {} us, p99 {} us; map {} tasks/s",
            round + 1,
            p50s.last().copied().unwrap_or(0),
            p99s.last().copied().unwrap_or(0),
            rate.round()
        );
    }
    exec.shutdown(Wait::Yes).await;
    Ok(ExecutorReport {
        case: "executor",
        tasks,
        workers: plan.workers,
        rounds,
        median_round_trip_p50_us: median_u64(&p50s),
        median_round_trip_p99_us: median_u64(&p99s),
        median_map_tasks_per_sec: median_f64(&rates),
        round_trip_p50_us: p50s,
        round_trip_p99_us: p99s,
        map_tasks_per_sec: rates,
        fsyncs: handle.fsyncs(),
    })
}

fn median_u64(xs: &[u64]) -> u64 {
    let mut v = xs.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn median_f64(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn spawn_worker(
    addr: std::net::SocketAddr,
    secret: &Secret,
    i: u32,
    prefetch: u32,
) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    Command::new(exe)
        .arg("pool-worker")
        .arg("--server")
        .arg(addr.to_string())
        .arg("--name")
        .arg(format!("bench-pool-worker-{i}"))
        .args(["--slots", "1", "--inline", "--prefetch"])
        .arg(prefetch.to_string())
        .env(SECRET_ENV, secret.to_hex())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a pool worker process")
}

/// Renders the report for people.
pub(crate) fn render(r: &ExecutorReport) -> String {
    format!(
        "executor: {tasks} tasks per map over {workers} worker processes, {rounds} rounds (medians)\n  \
         round trip      p50 {p50} us, p99 {p99} us (submit to result, one task at a time)\n  \
         map             {rate} tasks/s\n  \
         fsyncs          {fsyncs}\n",
        tasks = r.tasks,
        workers = r.workers,
        rounds = r.rounds,
        p50 = r.median_round_trip_p50_us,
        p99 = r.median_round_trip_p99_us,
        rate = colony_tokio::progress::format_rate(r.median_map_tasks_per_sec),
        fsyncs = r.fsyncs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median_u64(&[5, 1, 3]), 3);
        assert_eq!(median_f64(&[2.0, 9.0, 4.0]), 4.0);
        assert_eq!(median_u64(&[]), 0);
    }
}
