//! `colony bench`: the end-to-end benchmark through the real server, real sockets and real worker
//! processes on loopback, with the durable checkpoint log on.
//!
//! The server runs in this process; each worker is this same program re-run with the hidden
//! `bench-worker` subcommand (the secret passes in its environment, never on its command line),
//! which runs the std worker with a no-op handler and prints its counters and lease round-trip
//! histogram as one JSON line on stdout when the job ends.
//!
//! Timeline of a case, from the clock's start `t0`:
//! bind the server (open the checkpoint) → create the job (inputs and edges; the server's RSS is
//! read before and after) → start the workers → first durable completion → every task durable.
//! `first_item_ms` is `t0` to the first completion, `wall_s` is `t0` to the end, and
//! `tasks_per_sec` counts from the workers' start to the end (the job's creation excluded).
//!
//! `--case all` runs each case in a child process of its own (this program again), so memory one
//! case freed cannot hide the next one's growth; its JSON line is then `{"cases": [...]}`.
//!
//! Invariants: the checkpoint lives in a fresh directory of its own that is removed afterwards;
//! worker processes never outlive a failed case (they are killed when their handle drops).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use colony_core::TaskId;
use colony_core::proto::Edge;
use colony_core::sched::{Inputs, Progress};
use colony_tokio::progress::{self, ProgressBar};
use colony_tokio::secret::{SECRET_ENV, Secret};
use colony_tokio::server::{Server, ServerConfig, ServerHandle};
use colony_tokio::worker::{
    Execution, Histogram, StatsSnapshot, TaskCtx, TaskError, WorkerConfig, WorkerExit,
    run_worker_blocking,
};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// The task kind every benchmark task runs.
const KIND: &str = "colony-bench-noop";

/// Default number of tasks of the `loop` case.
pub(crate) const LOOP_TASKS: u32 = 1_000_000;

/// Default number of tasks of the `dag` case (10 chains of 1,000).
pub(crate) const DAG_TASKS: u32 = 10_000;

/// How long the workers may take to report once the job finished.
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Case {
    /// Independent no-op tasks, handed out as fast as workers take them.
    Loop,
    /// Independent chains of dependent no-op tasks: each waits for the one before to be durable.
    Dag,
    /// The executor: single submit-to-result round trips, and a `map` of tiny tasks.
    Executor,
    /// `loop`, `dag`, then `executor`, each in a process of its own.
    All,
}

/// One case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Single {
    Loop,
    Dag,
}

/// The knobs of a run.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Which case.
    pub(crate) case: Case,
    /// Tasks per case; `None` for each case's default.
    pub(crate) tasks: Option<u32>,
    /// Worker processes.
    pub(crate) workers: u32,
    /// Chains of the `dag` case.
    pub(crate) chains: u32,
    /// Leases each worker asks for beyond the one it runs.
    pub(crate) prefetch: u32,
    /// Rounds of the `executor` case (its report gives their medians).
    pub(crate) rounds: u32,
}

/// What one case measured (the `--json` line).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    case: &'static str,
    tasks: u32,
    workers: u32,
    tasks_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    fsyncs: u64,
    server_rss_bytes_per_queued_task: f64,
    server_peak_rss_bytes_per_task: f64,
    create_ms: f64,
    first_item_ms: f64,
    run_s: f64,
    wall_s: f64,
    failed: u32,
}

/// What a bench worker prints when it exits: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerReport {
    stats: StatsSnapshot,
    lease_rtt: Histogram,
}

/// Runs the plan and prints its summary, then (with `json`) its JSON line.
///
/// A single case runs in this process. `all` runs each case in a fresh process of its own (this
/// program again), so one case's freed memory cannot hide the next one's growth.
///
/// # Errors
/// The server or a worker failed, or the job did not finish.
pub(crate) fn main(plan: &Plan, json: bool) -> Result<()> {
    let single = match plan.case {
        Case::Loop => Single::Loop,
        Case::Dag => Single::Dag,
        Case::Executor => return super::bench_executor::main(plan, json),
        Case::All => return run_each(plan, json),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = BenchDir::create(single)?;
    let report = runtime.block_on(run_case(plan, single, dir.path()));
    drop(dir);
    let report = report?;
    print!("{}", render(&report));
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Runs every case in a child process; prints their summaries and one JSON line,
/// `{"cases": [...]}`.
fn run_each(plan: &Plan, json: bool) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this program to run the cases")?;
    let mut reports = Vec::new();
    for case in ["loop", "dag", "executor"] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "--case", case, "--json"])
            .arg("--workers")
            .arg(plan.workers.to_string())
            .arg("--chains")
            .arg(plan.chains.to_string())
            .arg("--prefetch")
            .arg(plan.prefetch.to_string())
            .arg("--rounds")
            .arg(plan.rounds.to_string());
        if let Some(tasks) = plan.tasks {
            cmd.arg("--tasks").arg(tasks.to_string());
        }
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run the {case} case"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines: Vec<&str> = text.lines().collect();
        if !out.status.success() {
            bail!("the {case} case failed ({})", out.status);
        }
        let last = lines
            .pop()
            .ok_or_else(|| anyhow!("the {case} case printed nothing"))?;
        for line in lines {
            println!("{line}");
        }
        let report: serde_json::Value = serde_json::from_str(last)
            .with_context(|| format!("the {case} case printed an unreadable report"))?;
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::json!({ "cases": reports }));
    }
    Ok(())
}

/// A directory of its own for a case's checkpoint, removed on drop.
struct BenchDir(PathBuf);

impl BenchDir {
    fn create(case: Single) -> Result<BenchDir> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| anyhow!("no random directory name: {e}"))?;
        let name = format!(
            "colony-bench-{}-{}-{:016x}",
            case_name(case),
            std::process::id(),
            u64::from_le_bytes(nonce)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create bench directory {}", path.display()))?;
        Ok(BenchDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn case_name(case: Single) -> &'static str {
    match case {
        Single::Loop => "loop",
        Single::Dag => "dag",
    }
}

/// The job of a case: its inputs (empty: the tasks do nothing) and its edges.
fn workload(plan: &Plan, case: Single) -> Result<(Inputs, Vec<Edge>)> {
    match case {
        Single::Loop => {
            let tasks = plan.tasks.unwrap_or(LOOP_TASKS);
            let mut inputs = Inputs::with_capacity(tasks as usize, 0);
            for _ in 0..tasks {
                inputs.push(&[]);
            }
            Ok((inputs, Vec::new()))
        }
        Single::Dag => {
            let tasks = plan.tasks.unwrap_or(DAG_TASKS);
            let chains = plan.chains.max(1);
            if tasks < chains {
                bail!("--tasks {tasks} is fewer than --chains {chains}");
            }
            let len = tasks / chains;
            let tasks = len * chains;
            let mut inputs = Inputs::with_capacity(tasks as usize, 0);
            for _ in 0..tasks {
                inputs.push(&[]);
            }
            let mut edges = Vec::with_capacity((tasks - chains) as usize);
            for c in 0..chains {
                for i in 1..len {
                    let after = c * len + i;
                    edges.push(Edge {
                        before: TaskId(after - 1),
                        after: TaskId(after),
                    });
                }
            }
            Ok((inputs, edges))
        }
    }
}

async fn run_case(plan: &Plan, case: Single, dir: &Path) -> Result<Report> {
    let secret = Secret::random()?;
    let t0 = Instant::now();
    let config = ServerConfig::new(secret.clone())
        .listen((std::net::Ipv4Addr::LOCALHOST, 0).into())
        .checkpoint(dir.join("bench.ckpt"));
    let bound = Server::bind(config).context("cannot start the server")?;
    let addr = bound.local_addr();
    let handle = bound.handle();
    let server = bound.spawn();
    let result = drive(plan, case, &secret, &handle, addr, t0).await;
    let stopped = handle.shutdown().await;
    let ended = server.await;
    let report = result?;
    stopped.context("server shutdown")?;
    ended
        .context("server task")?
        .context("server stopped on a fault")?;
    Ok(report)
}

async fn drive(
    plan: &Plan,
    case: Single,
    secret: &Secret,
    handle: &ServerHandle,
    addr: std::net::SocketAddr,
    t0: Instant,
) -> Result<Report> {
    let rss_before = vm_rss()?;
    let (inputs, edges) = workload(plan, case)?;
    let tasks = u32::try_from(inputs.len()).unwrap_or(u32::MAX);
    let created = handle
        .create_job(format!("bench-{}", case_name(case)), KIND, inputs, edges, 3)
        .await
        .context("cannot create the job")?;
    let rss_after = vm_rss()?;
    let created_at = t0.elapsed();
    let mut progress = handle.progress(created.job).await?;

    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..plan.workers {
        workers.push(spawn_worker(addr, secret, i, plan.prefetch)?);
    }
    let bar = tokio::spawn(progress::follow(progress.clone(), ProgressBar::new(tasks)));

    let watched = async {
        progress
            .wait_for(|p| p.done + p.failed > 0 || p.finished)
            .await
            .map_err(|_| anyhow!("server stopped before the first completion"))?;
        let first = t0.elapsed();
        let last: Progress = *progress
            .wait_for(|p| p.finished)
            .await
            .map_err(|_| anyhow!("server stopped before the job finished"))?;
        Ok::<_, anyhow::Error>((first, last))
    };
    let (first, last) = tokio::select! {
        done = watched => done?,
        failed = watch_workers(&mut workers) => return Err(failed),
    };
    let run = started.elapsed();
    let wall = t0.elapsed();
    let fsyncs = handle.fsyncs();
    let peak = vm_hwm()?;
    let _ = bar.await;

    let mut rtt = Histogram::new();
    for (i, child) in workers.into_iter().enumerate() {
        let report = collect_worker(child)
            .await
            .with_context(|| format!("bench worker {i}"))?;
        rtt.merge(&report.lease_rtt);
    }
    let run_s = run.as_secs_f64();
    Ok(Report {
        case: case_name(case),
        tasks,
        workers: plan.workers,
        tasks_per_sec: round(f64::from(last.done + last.failed) / run_s, 0),
        p50_us: rtt.p50(),
        p99_us: rtt.p99(),
        max_us: rtt.max(),
        fsyncs,
        server_rss_bytes_per_queued_task: round(
            rss_after.saturating_sub(rss_before) as f64 / f64::from(tasks.max(1)),
            1,
        ),
        server_peak_rss_bytes_per_task: round(
            peak.saturating_sub(rss_before) as f64 / f64::from(tasks.max(1)),
            1,
        ),
        create_ms: round(created_at.as_secs_f64() * 1e3, 1),
        first_item_ms: round(first.as_secs_f64() * 1e3, 1),
        run_s: round(run_s, 3),
        wall_s: round(wall.as_secs_f64(), 3),
        failed: last.failed,
    })
}

/// Returns once a worker process exited before the job finished (the job cannot finish without
/// them); runs forever otherwise.
async fn watch_workers(workers: &mut [Child]) -> anyhow::Error {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        for (i, child) in workers.iter_mut().enumerate() {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    return anyhow!(
                        "bench worker {i} exited with {status} before the job finished"
                    );
                }
                Err(e) => return anyhow!("cannot watch bench worker {i}: {e}"),
            }
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

fn spawn_worker(
    addr: std::net::SocketAddr,
    secret: &Secret,
    i: u32,
    prefetch: u32,
) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    Command::new(exe)
        .arg("bench-worker")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--name")
        .arg(format!("bench-worker-{i}"))
        .arg("--prefetch")
        .arg(prefetch.to_string())
        .env(SECRET_ENV, secret.to_hex())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a bench worker process")
}

async fn collect_worker(child: Child) -> Result<WorkerReport> {
    let out = tokio::time::timeout(WORKER_EXIT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("did not exit within {WORKER_EXIT_TIMEOUT:?} of the job's end"))??;
    if !out.status.success() {
        bail!("exited with {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .ok_or_else(|| anyhow!("printed no report"))?;
    serde_json::from_str(line).context("printed an unreadable report")
}

/// The resident set size of this process, from `/proc/self/status`.
fn vm_rss() -> Result<u64> {
    proc_status_bytes("VmRSS:")
}

/// The peak resident set size of this process so far.
fn vm_hwm() -> Result<u64> {
    proc_status_bytes("VmHWM:")
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn proc_status_bytes(key: &str) -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow!("no {key} line in /proc/self/status"))
}

/// Renders a report for people.
pub(crate) fn render(r: &Report) -> String {
    format!(
        "{case}: {tasks} tasks over {workers} worker processes\n  \
         throughput      {rate} tasks/s ({run_s:.3} s from workers' start to the last durable completion)\n  \
         lease round trip p50 {p50} us, p99 {p99} us, max {max} us\n  \
         fsyncs          {fsyncs} ({per_sync:.0} tasks per fsync)\n  \
         server memory   {rss:.1} bytes per queued task (peak {peak:.1} bytes per task)\n  \
         job creation    {create:.1} ms; first item after {first:.1} ms; wall {wall:.3} s{failed}\n",
        case = r.case,
        tasks = r.tasks,
        workers = r.workers,
        rate = progress::format_rate(r.tasks_per_sec),
        run_s = r.run_s,
        p50 = r.p50_us,
        p99 = r.p99_us,
        max = r.max_us,
        fsyncs = r.fsyncs,
        per_sync = f64::from(r.tasks) / (r.fsyncs.max(1) as f64),
        rss = r.server_rss_bytes_per_queued_task,
        peak = r.server_peak_rss_bytes_per_task,
        create = r.create_ms,
        first = r.first_item_ms,
        wall = r.wall_s,
        failed = if r.failed > 0 {
            format!("\n  FAILED          {} tasks", r.failed)
        } else {
            String::new()
        },
    )
}

/// The hidden `bench-worker` subcommand: a std worker with a no-op handler; prints a
/// [`WorkerReport`] as one JSON line when the job ends.
///
/// # Errors
/// No secret in the environment, or the worker failed.
pub(crate) fn worker(addr: &str, name: &str, prefetch: u32) -> Result<()> {
    let secret = Secret::from_env(SECRET_ENV)?.ok_or_else(|| anyhow!("{SECRET_ENV} is not set"))?;
    let config = WorkerConfig::new(addr, secret)
        .with_name(name)
        .with_kinds([KIND])
        .with_slots(1)
        .with_prefetch(prefetch)
        .with_execution(Execution::Inline);
    let stats = config.stats();
    let noop = |_: &TaskCtx, _: &str, _: &[u8]| -> Result<Vec<u8>, TaskError> { Ok(Vec::new()) };
    match run_worker_blocking(config, noop)? {
        WorkerExit::JobFinished { .. } => {}
        other => bail!("stopped before the job finished: {other:?}"),
    }
    let report = WorkerReport {
        stats: stats.snapshot(),
        lease_rtt: stats.lease_rtt(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(case: Case, tasks: u32) -> Plan {
        Plan {
            case,
            tasks: Some(tasks),
            workers: 2,
            chains: 10,
            prefetch: 64,
            rounds: 1,
        }
    }

    #[test]
    fn dag_workload_is_independent_chains() {
        let (inputs, edges) = workload(&plan(Case::Dag, 35), Single::Dag).unwrap();
        // 35 tasks over 10 chains: chains of 3, 30 tasks.
        assert_eq!(inputs.len(), 30);
        assert_eq!(edges.len(), 20);
        assert_eq!(
            edges[0],
            Edge {
                before: TaskId(0),
                after: TaskId(1)
            }
        );
        assert!(
            edges
                .iter()
                .all(|e| e.after.0 == e.before.0 + 1 && e.after.0 % 3 != 0)
        );
        assert!(workload(&plan(Case::Dag, 5), Single::Dag).is_err());
    }

    #[test]
    fn loop_workload_has_no_edges() {
        let (inputs, edges) = workload(&plan(Case::Loop, 1000), Single::Loop).unwrap();
        assert_eq!(inputs.len(), 1000);
        assert!(edges.is_empty());
    }

    #[test]
    fn rss_reads() {
        let rss = vm_rss().unwrap();
        assert!(rss > 0);
        assert!(vm_hwm().unwrap() >= rss);
    }
}
