//! The resource pool end to end: the real server, pool workers registering typed kinds, and
//! executors submitting and mapping tasks. Real sockets on 127.0.0.1, no fixed ports, every wait
//! bounded.

mod common;

use std::time::Duration;

use colony_tokio::executor::{Executor, ExecutorError, RetryPolicy, Wait};
use colony_tokio::kind::TaskKind;
use colony_tokio::secret::Secret;
use colony_tokio::worker::{TaskError, Worker};

use common::{PATIENCE, bounded, config, start};

fn secret() -> Secret {
    Secret::from_bytes(&[9; 32]).unwrap()
}

fn sum_kind() -> TaskKind<u64, u64> {
    TaskKind::new("sum", |n: u64| Ok::<_, TaskError>((1..=n).sum()))
}

fn fail_kind() -> TaskKind<String, u8> {
    TaskKind::new("fail", |why: String| {
        Err::<u8, _>(TaskError::permanent(why))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_map_through_an_in_process_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, addr, server) = start(config(&secret()).checkpoint(dir.path().join("log")));
    let worker = Worker::builder()
        .kind(sum_kind())
        .kind(fail_kind())
        .slots(2)
        .connect(&addr.to_string(), secret())
        .unwrap();
    let stop = worker.shutdown_token();
    let worker = tokio::spawn(worker.run());

    let exec = bounded(Executor::connect(format!("tcp://{addr}"), secret()))
        .await
        .unwrap();
    let sum = sum_kind();
    let one = bounded(exec.submit(&sum, &100)).await.unwrap();
    assert_eq!(bounded(one).await, Ok(5050));

    let mut results = exec.map(&sum, 0..1000u64);
    let mut n = 0u64;
    while let Some(r) = bounded(results.next()).await {
        assert_eq!(r, Ok(n * (n + 1) / 2));
        n += 1;
    }
    assert_eq!(n, 1000);

    let fail = fail_kind();
    let bad = bounded(exec.submit_with(&fail, &"boom".to_owned(), RetryPolicy::attempts(2)))
        .await
        .unwrap();
    match bounded(bad).await {
        Err(ExecutorError::Remote { kind, error, .. }) => {
            assert_eq!((kind.as_str(), error.as_str()), ("fail", "boom"));
        }
        other => panic!("{other:?}"),
    }
    bounded(exec.shutdown(Wait::Yes)).await;
    assert!(matches!(
        exec.submit(&sum, &1).await,
        Err(ExecutorError::Shutdown)
    ));
    stop.shutdown();
    bounded(worker).await.unwrap().unwrap();
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
    let _ = PATIENCE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_for_a_kind_is_an_error_after_the_wait() {
    let (handle, addr, server) = start(config(&secret()));
    let exec = bounded(
        Executor::builder(addr.to_string(), secret())
            .no_worker_wait(Some(Duration::from_millis(300)))
            .connect(),
    )
    .await
    .unwrap();
    let h = exec.submit(&sum_kind(), &5).await.unwrap();
    match bounded(h).await {
        Err(ExecutorError::NoWorker { kind, .. }) => assert_eq!(kind, "sum"),
        other => panic!("{other:?}"),
    }
    drop(exec);
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

// ---------------------------------------------------------------- real processes

mod procs {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::process::Stdio;

    use colony_tokio::secret::{SECRET_ENV, Secret};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::{Child, Command};
    use tokio::sync::mpsc;

    use super::bounded;

    /// A child process of the `colony` program, killed when dropped, its stdout read line by line.
    pub(crate) struct Proc {
        pub(crate) child: Child,
        lines: mpsc::UnboundedReceiver<String>,
    }

    impl Proc {
        fn spawn(args: &[&str], secret: Option<&Secret>) -> Proc {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_colony"));
            cmd.args(args)
                .env_remove(SECRET_ENV)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if let Some(secret) = secret {
                cmd.env(SECRET_ENV, secret.to_hex());
            }
            let mut child = cmd.spawn().expect("spawn colony");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, lines) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            Proc { child, lines }
        }

        /// The next line the process prints (bounded wait); `None` once it closed stdout.
        pub(crate) async fn line(&mut self) -> Option<String> {
            bounded(self.lines.recv()).await
        }

        /// Waits for a line starting with `prefix`.
        pub(crate) async fn line_starting(&mut self, prefix: &str) -> String {
            loop {
                let line = self.line().await.expect("process ended");
                if line.starts_with(prefix) {
                    return line;
                }
            }
        }

        /// SIGKILL, and reap.
        pub(crate) async fn kill(&mut self) {
            self.child.start_kill().expect("kill");
            bounded(self.child.wait()).await.expect("wait");
        }
    }

    /// Starts `colony server` on `listen` over `data`; returns it and its address, and the
    /// second start-up line (`data: … (N jobs, M unfinished)`).
    pub(crate) async fn server(
        data: &Path,
        listen: SocketAddr,
        secret: &Secret,
    ) -> (Proc, SocketAddr, String) {
        let listen = listen.to_string();
        let mut p = Proc::spawn(
            &[
                "server",
                "--listen",
                &listen,
                "--data",
                data.to_str().expect("utf-8 path"),
                "--idle-secs",
                "30",
            ],
            Some(secret),
        );
        let first = p.line_starting("colony server listening on ").await;
        let addr = first
            .trim_start_matches("colony server listening on ")
            .parse()
            .expect("address");
        let data_line = p.line_starting("data: ").await;
        (p, addr, data_line)
    }

    /// Starts a demo pool worker (`sum`, `square`, `sleep`, `fail`, `noop`).
    pub(crate) fn worker(
        addr: SocketAddr,
        secret: Option<&Secret>,
        name: &str,
        slots: u32,
        extra: &[&str],
    ) -> Proc {
        let addr = addr.to_string();
        let slots = slots.to_string();
        let mut args = vec![
            "pool-worker",
            "--server",
            &addr,
            "--name",
            name,
            "--slots",
            &slots,
            "--server-lost-after",
            "60",
        ];
        args.extend_from_slice(extra);
        Proc::spawn(&args, secret)
    }

    /// `colony` with `args`, to completion: exit success, stdout, stderr.
    pub(crate) async fn run(args: &[&str], secret: Option<&Secret>) -> (bool, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_colony"));
        cmd.args(args)
            .env_remove(SECRET_ENV)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(secret) = secret {
            cmd.env(SECRET_ENV, secret.to_hex());
        }
        let out = bounded(cmd.output()).await.expect("run colony");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn loopback0() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn square_kind() -> TaskKind<u64, u64> {
    TaskKind::declared("square")
}

fn sleep_kind() -> TaskKind<u64, u64> {
    TaskKind::declared("sleep")
}

/// 4 executors × 10,000 tasks at once over 3 worker processes: every result correct, and in
/// order for `map`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_executors_share_three_worker_processes() {
    let data = tempfile::tempdir().unwrap();
    let secret = Secret::random().unwrap();
    let (_server, addr, _) = procs::server(data.path(), loopback0(), &secret).await;
    let _workers: Vec<_> = (0..3)
        .map(|i| {
            procs::worker(
                addr,
                Some(&secret),
                &format!("w{i}"),
                2,
                &["--prefetch", "64"],
            )
        })
        .collect();
    const N: u64 = 10_000;
    let mut runs = Vec::new();
    for e in 0..4u64 {
        let secret = secret.clone();
        runs.push(tokio::spawn(async move {
            let exec = Executor::builder(addr.to_string(), secret)
                .name(format!("executor-{e}"))
                .map_window(2_000)
                .connect()
                .await
                .unwrap();
            let base = e * 1_000_000;
            let square = square_kind();
            if e % 2 == 0 {
                let mut results = exec.map(&square, base..base + N);
                let mut i = base;
                while let Some(r) = results.next().await {
                    assert_eq!(r, Ok(i * i), "executor {e}: map out of order or wrong");
                    i += 1;
                }
                assert_eq!(i, base + N);
            } else {
                let mut handles = Vec::new();
                for i in base..base + N {
                    handles.push((i, exec.submit(&square, &i).await.unwrap()));
                }
                for (i, h) in handles {
                    assert_eq!(h.await, Ok(i * i), "executor {e}");
                }
            }
            exec.shutdown(Wait::Yes).await;
        }));
    }
    for run in runs {
        tokio::time::timeout(Duration::from_secs(180), run)
            .await
            .expect("an executor did not finish in time")
            .unwrap();
    }
}

/// A worker killed with SIGKILL while it runs a task: the task runs on another worker and its
/// caller gets the result, not an error (a lost connection costs the task no attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_task_runs_elsewhere() {
    let data = tempfile::tempdir().unwrap();
    let secret = Secret::random().unwrap();
    let (_server, addr, _) = procs::server(data.path(), loopback0(), &secret).await;
    let mut first = procs::worker(addr, Some(&secret), "doomed", 1, &["--announce"]);
    let exec = bounded(Executor::connect(addr.to_string(), secret.clone()))
        .await
        .unwrap();
    let handle = bounded(exec.submit_with(&sleep_kind(), &1_500, RetryPolicy::attempts(1)))
        .await
        .unwrap();
    assert_eq!(
        first.line_starting("running sleep").await,
        "running sleep 1500"
    );
    first.kill().await;
    let mut second = procs::worker(addr, Some(&secret), "rescuer", 1, &["--announce"]);
    assert_eq!(
        second.line_starting("running sleep").await,
        "running sleep 1500"
    );
    assert_eq!(bounded(handle).await, Ok(1_500));
    bounded(exec.shutdown(Wait::Yes)).await;
}

/// The server killed with SIGKILL and restarted on its data folder: an executor within its
/// reconnect window resumes its job and gets every result; one whose window passes gets
/// `ServerLost` (nothing hangs); the folder brings back every unfinished job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_restarts_on_its_data_folder() {
    let data = tempfile::tempdir().unwrap();
    let secret = Secret::random().unwrap();
    let (mut server, addr, _) = procs::server(data.path(), loopback0(), &secret).await;
    let _worker = procs::worker(addr, Some(&secret), "steady", 2, &[]);
    let exec = bounded(
        Executor::builder(addr.to_string(), secret.clone())
            .job_name("restart-test")
            .reconnect_window(Duration::from_secs(60))
            .connect(),
    )
    .await
    .unwrap();
    let sleep = sleep_kind();
    const TASKS: u64 = 60;
    let mut results = exec.map(&sleep, (0..TASKS).map(|i| 20 + i % 3));
    for i in 0..5 {
        assert_eq!(bounded(results.next()).await, Some(Ok(20 + i % 3)));
    }
    let single = bounded(exec.submit(&sleep, &7)).await.unwrap();
    server.kill().await;

    // While it is down, its checkpoint tells the job is unfinished.
    let ckpt = data.path().join("jobs.ckpt");
    let (ok, out, err) = procs::run(&["status", ckpt.to_str().unwrap(), "--json"], None).await;
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "restart-test/sleep")
        .expect("the job is in the checkpoint")
        .clone();
    assert_eq!(job["finished"], false);

    let (mut server, again, data_line) = procs::server(data.path(), addr, &secret).await;
    assert_eq!(again, addr);
    assert!(data_line.contains("1 unfinished"), "{data_line}");
    for i in 5..TASKS {
        assert_eq!(
            bounded(results.next()).await,
            Some(Ok(20 + i % 3)),
            "task {i}"
        );
    }
    assert_eq!(bounded(results.next()).await, None);
    assert_eq!(bounded(single).await, Ok(7));

    // An executor whose window passes while the server is down gets a clear error.
    let short = bounded(
        Executor::builder(addr.to_string(), secret.clone())
            .job_name("given-up")
            .reconnect_window(Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(1))
            .connect(),
    )
    .await
    .unwrap();
    let stuck = bounded(short.submit(&sleep, &3_000)).await.unwrap();
    let _ = bounded(exec.submit(&sleep, &1)).await.unwrap().await;
    server.kill().await;
    match bounded(stuck).await {
        Err(ExecutorError::ServerLost { .. }) => {}
        other => panic!("expected ServerLost, got {other:?}"),
    }
    assert!(matches!(
        short.submit(&sleep, &1).await,
        Err(ExecutorError::ServerLost { .. })
    ));
    // Its job is still in the data folder, unfinished, and comes back with the server.
    let (_server, _, data_line) = procs::server(data.path(), addr, &secret).await;
    assert!(data_line.contains("unfinished"), "{data_line}");
    assert!(!data_line.contains(" 0 unfinished"), "{data_line}");
    bounded(exec.shutdown(Wait::Yes)).await;
}

/// A wrong or missing secret is refused at the handshake: no job, no worker, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_secret_is_refused_before_any_state() {
    let data = tempfile::tempdir().unwrap();
    let secret = Secret::random().unwrap();
    let wrong = Secret::random().unwrap();
    let (_server, addr, _) = procs::server(data.path(), loopback0(), &secret).await;

    let err = bounded(Executor::connect(addr.to_string(), wrong.clone()))
        .await
        .unwrap_err();
    assert!(err.is_fatal(), "{err}");

    let mut bad_worker = procs::worker(addr, Some(&wrong), "intruder", 1, &[]);
    let status = bounded(bad_worker.child.wait()).await.unwrap();
    assert!(!status.success());
    let mut no_secret = procs::worker(addr, None, "anonymous", 1, &[]);
    let status = bounded(no_secret.child.wait()).await.unwrap();
    assert!(!status.success());

    let addr_text = addr.to_string();
    let (ok, out, err) =
        procs::run(&["status", "--server", &addr_text, "--json"], Some(&secret)).await;
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["jobs"].as_array().map(Vec::len), Some(0), "{out}");
    let (ok, _, _) = procs::run(&["status", "--server", &addr_text], Some(&wrong)).await;
    assert!(!ok);
}
