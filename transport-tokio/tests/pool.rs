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

    // The same as a `futures_core::Stream`, with a window of 3.
    let mut stream = exec.map_with(&sum, 1..=10u64, RetryPolicy::default(), 3);
    let mut sums = Vec::new();
    while let Some(r) = bounded(std::future::poll_fn(|cx| {
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
    }))
    .await
    {
        sums.push(r.unwrap());
    }
    assert_eq!(sums, [1, 3, 6, 10, 15, 21, 28, 36, 45, 55]);

    // One task in flight at a time: the map waits for each permit to come back.
    let narrow = bounded(
        Executor::builder(addr.to_string(), secret())
            .max_in_flight(1)
            .connect(),
    )
    .await
    .unwrap();
    let mut results = narrow.map(&sum, 0..50u64);
    let mut n = 0u64;
    while let Some(r) = bounded(results.next()).await {
        assert_eq!(r, Ok(n * (n + 1) / 2));
        n += 1;
    }
    assert_eq!(n, 50);
    drop(results);
    bounded(narrow.shutdown(Wait::Yes)).await;

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

/// A raw task client speaking the protocol by hand.
struct RawClient {
    conn: colony_tokio::conn::FramedConn<tokio::net::TcpStream>,
}

impl RawClient {
    async fn connect(addr: std::net::SocketAddr, secret: &Secret) -> RawClient {
        use colony_core::proto::{ClientInfo, DEFAULT_MAX_FRAME, Role};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let role = Role::Client(ClientInfo { name: "raw" });
        let (conn, _) =
            colony_tokio::conn::connect_and_handshake(stream, secret, role, DEFAULT_MAX_FRAME)
                .await
                .unwrap();
        RawClient { conn }
    }

    async fn send(&mut self, message: &colony_core::proto::Message<'_>) {
        self.conn.send(message).await.unwrap();
    }

    /// The next message other than a heartbeat, as its name and a debug rendering.
    async fn recv(&mut self) -> (String, String) {
        loop {
            let message = bounded(self.conn.read_message()).await.unwrap();
            if message.name() != "Heartbeat" {
                return (message.name().to_owned(), format!("{message:?}"));
            }
        }
    }

    async fn create(&mut self, name: &str, kind: &str, tasks: u32, edges: u32, open: bool) {
        use colony_core::proto::{JobSpec, Message};
        self.send(&Message::CreateJob(JobSpec {
            name,
            kind,
            tasks,
            edges,
            max_attempts: 2,
            open,
        }))
        .await;
    }
}

fn u64_bytes(n: u64) -> Vec<u8> {
    postcard::to_allocvec(&n).unwrap()
}

/// A client that breaks a rule is dropped with a reason: tasks for a job it did not create,
/// more tasks in flight than allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_breaking_rules_are_dropped_with_a_reason() {
    use colony_core::JobId;
    use colony_core::proto::{BatchBuf, Message};
    use colony_tokio::server::ClientLimits;

    let (handle, addr, server) =
        start(config(&secret()).client_limits(ClientLimits::default().max_in_flight(10)));
    let mut raw = RawClient::connect(addr, &secret()).await;
    raw.send(&Message::Submit {
        job: JobId(7),
        input: b"x",
    })
    .await;
    let (name, text) = raw.recv().await;
    assert_eq!(name, "Error", "{text}");
    assert!(text.contains("UnknownJob"), "{text}");

    let mut raw = RawClient::connect(addr, &secret()).await;
    raw.create("limited", "sum", 0, 0, true).await;
    let (name, text) = raw.recv().await;
    assert_eq!(name, "JobAccepted", "{text}");
    let job = handle.status().await.unwrap().jobs[0].job;
    let mut inputs = BatchBuf::new();
    for i in 0..11u64 {
        inputs.push_bytes(&u64_bytes(i)).unwrap();
    }
    raw.send(&Message::AddTasks {
        job,
        inputs: inputs.as_batch(),
    })
    .await;
    let (name, text) = raw.recv().await;
    assert_eq!(name, "Error", "{text}");
    assert!(
        text.contains("LimitExceeded") && text.contains("in flight"),
        "{text}"
    );
    assert_eq!(
        handle.status().await.unwrap().jobs[0].progress.total,
        0,
        "nothing was added"
    );

    // A frame above the agreed limit.
    let raw = RawClient::connect(addr, &secret()).await;
    let mut stream = raw.conn.into_inner();
    let too_big = colony_core::proto::DEFAULT_MAX_FRAME + 1;
    tokio::io::AsyncWriteExt::write_all(&mut stream, &too_big.to_le_bytes())
        .await
        .unwrap();
    let mut conn = colony_tokio::conn::FramedConn::new(stream);
    let message = bounded(conn.read_message()).await.unwrap();
    let text = format!("{message:?}");
    assert!(text.contains("FrameTooLarge"), "{text}");
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

/// A DAG job sent by a client (CreateJob announcing edges, AddTasks, AddEdges, SealJob) runs in
/// dependency order, and a client attaching to a job later is given every result recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_dag_jobs_run_and_attaching_replays_results() {
    use colony_core::proto::{BatchBuf, Edge, Message};
    use colony_core::{JobId, TaskId};

    let (handle, addr, server) = start(config(&secret()));
    let worker = Worker::builder()
        .kind(sum_kind())
        .slots(2)
        .connect(&addr.to_string(), secret())
        .unwrap();
    let stop = worker.shutdown_token();
    let worker = tokio::spawn(worker.run());

    let mut raw = RawClient::connect(addr, &secret()).await;
    raw.create("chain", "sum", 3, 2, false).await;
    let mut inputs = BatchBuf::new();
    for n in [1u64, 2, 3] {
        inputs.push_bytes(&u64_bytes(n)).unwrap();
    }
    raw.send(&Message::AddTasks {
        job: JobId(0),
        inputs: inputs.as_batch(),
    })
    .await;
    let mut edges = BatchBuf::new();
    for (a, b) in [(0, 1), (1, 2)] {
        edges
            .push(&Edge {
                before: TaskId(a),
                after: TaskId(b),
            })
            .unwrap();
    }
    raw.send(&Message::AddEdges {
        job: JobId(0),
        edges: edges.as_batch(),
    })
    .await;
    raw.send(&Message::SealJob { job: JobId(0) }).await;
    let (name, text) = raw.recv().await;
    assert_eq!(name, "JobAccepted", "{text}");
    let mut order = Vec::new();
    while order.len() < 3 {
        let (name, text) = raw.recv().await;
        if name == "TaskDone" {
            order.push(text);
        }
    }
    for (i, text) in order.iter().enumerate() {
        assert!(text.contains(&format!("task: TaskId({i})")), "{order:?}");
    }

    // An executor-style open job, attached to by a second connection: it gets the results.
    let exec = bounded(
        Executor::builder(addr.to_string(), secret())
            .job_name("shared")
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(
        bounded(bounded(exec.submit(&sum_kind(), &4)).await.unwrap()).await,
        Ok(10)
    );
    let mut late = RawClient::connect(addr, &secret()).await;
    late.create("shared/sum", "sum", 0, 0, true).await;
    let (name, text) = late.recv().await;
    assert_eq!(name, "JobAccepted", "{text}");
    assert!(text.contains("already_done: 1"), "{text}");
    let (name, text) = late.recv().await;
    assert_eq!(name, "TaskDone", "{text}");
    // A name that exists with another kind is refused.
    let mut wrong = RawClient::connect(addr, &secret()).await;
    wrong.create("shared/sum", "square", 0, 0, true).await;
    let (name, text) = wrong.recv().await;
    assert_eq!(name, "Error", "{text}");
    assert!(text.contains("FingerprintMismatch"), "{text}");

    drop(exec);
    stop.shutdown();
    bounded(worker).await.unwrap().unwrap();
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

/// A task that fails on the server is submitted again by the executor, with backoff, as its
/// policy says; the caller sees the eventual result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmission_policy_retries_from_the_client() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    let (handle, addr, server) = start(config(&secret()));
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let flaky = TaskKind::<u32, u32>::new("flaky", move |n: u32| {
        if counter.fetch_add(1, Ordering::SeqCst) < 2 {
            Err(TaskError::permanent("not yet"))
        } else {
            Ok(n + 1)
        }
    });
    let worker = Worker::builder()
        .kind(flaky.clone())
        .slots(1)
        .connect(&addr.to_string(), secret())
        .unwrap();
    let stop = worker.shutdown_token();
    let worker = tokio::spawn(worker.run());
    let exec = bounded(Executor::connect(addr.to_string(), secret()))
        .await
        .unwrap();
    let once = RetryPolicy::attempts(1);
    let h = bounded(exec.submit_with(&flaky, &1, once)).await.unwrap();
    assert!(matches!(
        bounded(h).await,
        Err(ExecutorError::Remote { .. })
    ));
    let patient = once.resubmit(3, Duration::from_millis(10), Duration::from_millis(40));
    let h = bounded(exec.submit_with(&flaky, &41, patient))
        .await
        .unwrap();
    assert_eq!(bounded(h).await, Ok(42));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    bounded(exec.shutdown(Wait::Yes)).await;
    stop.shutdown();
    bounded(worker).await.unwrap().unwrap();
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

/// An executor that finds no server gives up after its window with `ServerLost`.
#[tokio::test]
async fn connecting_to_nothing_gives_server_lost_after_the_window() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let started = std::time::Instant::now();
    let err = bounded(
        Executor::builder(addr.to_string(), secret())
            .reconnect_window(Duration::from_millis(300))
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecutorError::ServerLost { .. }), "{err}");
    assert!(started.elapsed() < PATIENCE);
}

/// A server that is full (every connection slot taken) is tried again within the window, not
/// taken for a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_tried_again() {
    let (handle, addr, server) = start(
        config(&secret())
            .max_connections(1)
            .handshake_timeout(Duration::from_millis(400)),
    );
    // Takes the only slot until the server drops it for not finishing its handshake.
    let hog = tokio::net::TcpStream::connect(addr).await.unwrap();
    let exec = bounded(
        Executor::builder(addr.to_string(), secret())
            .reconnect_window(PATIENCE)
            .connect(),
    )
    .await
    .unwrap();
    drop(hog);
    drop(exec);
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

/// The blocking API: handles waited on with a timeout, done-callbacks, `map` as an iterator,
/// and a drop that waits for the outstanding tasks.
#[test]
fn the_blocking_executor_waits_with_timeouts() {
    use colony_tokio::executor::BlockingExecutor;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (handle, addr, server) = runtime.block_on(async { start(config(&secret())) });
    let slow = TaskKind::<u64, u64>::new("slow", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, TaskError>(ms)
    });
    let worker = Worker::builder()
        .kind(slow.clone())
        .kind(sum_kind())
        .slots(2)
        .connect(&addr.to_string(), secret())
        .unwrap();
    let stop = worker.shutdown_token();
    let worker = runtime.spawn(worker.run());

    let exec = BlockingExecutor::connect(addr.to_string(), secret()).unwrap();
    let mut h = exec.submit(&slow, &300).unwrap();
    assert_eq!(
        h.wait_timeout(Duration::from_millis(1)),
        Err(ExecutorError::Timeout)
    );
    assert_eq!(h.wait_timeout(PATIENCE), Ok(300));
    assert_eq!(h.wait_timeout(Duration::ZERO), Err(ExecutorError::Taken));

    let (tx, rx) = std::sync::mpsc::channel();
    exec.submit(&sum_kind(), &10)
        .unwrap()
        .on_done(move |r| tx.send(r).unwrap());
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), Ok(55));

    let sums: Vec<u64> = exec
        .map(&sum_kind(), 1..=100u64)
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        sums,
        (1..=100u64).map(|n| n * (n + 1) / 2).collect::<Vec<_>>()
    );

    // Dropping the executor waits for the task still running.
    let last = exec.submit(&slow, &200).unwrap();
    drop(exec);
    assert!(last.is_done(), "the drop waited for the outstanding task");

    stop.shutdown();
    runtime.block_on(async {
        bounded(worker).await.unwrap().unwrap();
        handle.shutdown().await.unwrap();
        bounded(server).await.unwrap().unwrap();
    });
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
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "warn");
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

        /// SIGTERM, and its exit status.
        pub(crate) async fn terminate(&mut self) -> std::process::ExitStatus {
            let pid = self.child.id().expect("running") as libc::pid_t;
            // SAFETY: sending a signal to our own child process; no memory is involved.
            #[allow(unsafe_code)]
            let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
            assert_eq!(sent, 0, "kill failed");
            bounded(self.child.wait()).await.expect("wait")
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
    let (mut server, addr, _) = procs::server(data.path(), loopback0(), &secret).await;
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

    // SIGTERM stops the server cleanly: its checkpoint holds the four jobs, finished (their
    // executors said goodbye once every task settled).
    assert!(server.terminate().await.success());
    let ckpt = data.path().join("jobs.ckpt");
    let (ok, out, err) = procs::run(&["status", ckpt.to_str().unwrap(), "--json"], None).await;
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let jobs = status["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4, "{out}");
    for job in jobs {
        assert_eq!(job["done"], N, "{job}");
        assert_eq!(job["finished"], true, "{job}");
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
    let mut worker = procs::worker(addr, Some(&secret), "steady", 2, &["--announce"]);
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

    // A task of a kind new to the executor, submitted while the server is down.
    let new_kind = bounded(exec.submit(&square_kind(), &12)).await.unwrap();

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
    assert_eq!(bounded(new_kind).await, Ok(144));

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
    let stuck = bounded(short.submit(&sleep, &2_000)).await.unwrap();
    worker.line_starting("running sleep 2000").await;
    // A result made durable after that task's record: the record is durable too.
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
    // Its job is still in the data folder, unfinished, and comes back with the server; a new
    // executor with the same job name collects its result once a worker ran it.
    let (_server, _, data_line) = procs::server(data.path(), addr, &secret).await;
    assert!(data_line.contains("unfinished"), "{data_line}");
    assert!(!data_line.contains(" 0 unfinished"), "{data_line}");
    let late = bounded(
        Executor::builder(addr.to_string(), secret.clone())
            .job_name("given-up")
            .connect(),
    )
    .await
    .unwrap();
    let recorded = bounded(async {
        loop {
            let recorded = late.recorded(&sleep).await.unwrap();
            if !recorded.results.is_empty() {
                return recorded;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(recorded.job, "given-up/sleep");
    assert_eq!(recorded.total, 1);
    assert_eq!(recorded.results.len(), 1);
    assert_eq!(recorded.results[0].1, Ok(2_000));
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
