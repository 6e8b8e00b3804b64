//! The std worker against a small fake server built from the core's protocol: the real
//! handshake (HMAC), grants within credit, acks, `JobFinished`; and the ways a server goes
//! away. Real sockets on 127.0.0.1, no fixed ports, every wait bounded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use colony_core::proto::{
    BatchBuf, DEFAULT_MAX_FRAME, Decoded, FrameDecoder, JobOutcome, LeaseGrant, Message, Retry,
    Role, ServerHandshake, Welcome, decode_message, encode_frame_into,
};
use colony_core::sched::Inputs;
use colony_core::{Attempt, JobId, LeaseId, TaskId, WorkerId};
use colony_tokio::secret::Secret;
use colony_tokio::server::{Server, ServerConfig, ServerHandle};
use colony_tokio::worker::{
    Execution, TaskCtx, TaskError, WorkerConfig, WorkerError, WorkerExit, run_worker,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const SECRET: [u8; 32] = [42; 32];
/// The bound on every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(20);

fn secret() -> Secret {
    Secret::from_bytes(&SECRET).unwrap()
}

// ---------------------------------------------------------------- the fake server

/// What the fake server does.
#[derive(Clone)]
struct Plan {
    secret: Vec<u8>,
    /// Task inputs: task `i` squares the `u64` `i`.
    tasks: u32,
    /// Close the first connection after this many completions (without acking the last one).
    drop_after: Option<usize>,
    /// Send `JobFinished` once every task is settled.
    finish: bool,
    heartbeat_ms: u32,
    /// Attempts per task before a retryable failure is final.
    max_attempts: u16,
}

impl Plan {
    fn new(tasks: u32) -> Self {
        Plan {
            secret: SECRET.to_vec(),
            tasks,
            drop_after: None,
            finish: true,
            heartbeat_ms: 5_000,
            max_attempts: 1,
        }
    }
}

/// What the fake server saw.
#[derive(Debug, PartialEq)]
enum Ev {
    Joined { name: String, slots: u32 },
    Heartbeat,
    Goodbye,
    Closed,
    Refused,
}

#[derive(Default)]
struct Book {
    ready: VecDeque<u32>,
    attempts: HashMap<u32, u16>,
    /// Output per task, and how many completions were recorded for it.
    done: BTreeMap<u32, (Vec<u8>, u32)>,
    /// Final failures: (task, retry, text).
    failed: Vec<(u32, Retry, String)>,
    completions: usize,
    dropped_once: bool,
}

impl Book {
    fn settled(&self, tasks: u32) -> bool {
        self.done.len() + self.failed.len() == tasks as usize
    }
}

struct Fake {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Ev>,
    book: Arc<Mutex<Book>>,
    server: JoinHandle<()>,
}

impl Fake {
    async fn start(plan: Plan) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let book = Arc::new(Mutex::new(Book {
            ready: (0..plan.tasks).collect(),
            ..Book::default()
        }));
        let server = tokio::spawn({
            let book = Arc::clone(&book);
            async move {
                let mut conns = tokio::task::JoinSet::new();
                let ids = AtomicU32::new(1);
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let id = WorkerId(ids.fetch_add(1, Ordering::Relaxed));
                    conns.spawn(serve(
                        stream,
                        plan.clone(),
                        Arc::clone(&book),
                        tx.clone(),
                        id,
                    ));
                }
            }
        });
        Fake {
            addr,
            events,
            book,
            server,
        }
    }

    async fn next(&mut self) -> Ev {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("the fake server saw nothing in time")
            .expect("the fake server stopped")
    }

    /// Waits for an event matching `pred`, skipping others.
    async fn wait_for(&mut self, pred: impl Fn(&Ev) -> bool) -> Ev {
        loop {
            let ev = self.next().await;
            if pred(&ev) {
                return ev;
            }
        }
    }

    /// Stops accepting and drops every connection.
    fn kill(&self) {
        self.server.abort();
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    plan: Plan,
    book: Arc<Mutex<Book>>,
    events: mpsc::UnboundedSender<Ev>,
    id: WorkerId,
) {
    stream.set_nodelay(true).unwrap();
    let mut conn = Conn {
        rbuf: Vec::new(),
        out: Vec::new(),
        max: colony_core::proto::HANDSHAKE_MAX_FRAME,
    };
    // Handshake.
    let mut hs = ServerHandshake::new(DEFAULT_MAX_FRAME);
    let Some(payload) = conn.read(&mut stream).await else {
        return;
    };
    let Ok(Message::ClientHello(hello)) = decode_message(&payload) else {
        return;
    };
    let server_hello = hs.hello(&plan.secret, &hello, [id.0 as u8; 16]).unwrap();
    conn.send(&Message::ServerHello(server_hello));
    if conn.flush(&mut stream).await.is_err() {
        return;
    }
    let Some(payload) = conn.read(&mut stream).await else {
        let _ = events.send(Ev::Refused);
        return;
    };
    let Ok(Message::Join(join)) = decode_message(&payload) else {
        return;
    };
    if hs.join(&plan.secret, &join).is_err() {
        let _ = events.send(Ev::Refused);
        return;
    }
    let Role::Worker(hello) = &join.role else {
        return;
    };
    let _ = events.send(Ev::Joined {
        name: hello.name.to_owned(),
        slots: hello.slots,
    });
    conn.max = hs.max_frame();
    conn.send(&Message::Welcome(Welcome {
        worker: id,
        lease_ms: 30_000,
        heartbeat_ms: plan.heartbeat_ms,
    }));
    let _ = conn.flush(&mut stream).await;

    // Leases held by this connection: lease -> task.
    let mut held: HashMap<u64, u32> = HashMap::new();
    let mut credit: u32 = 0;
    let mut next_lease = u64::from(id.0) << 32;
    let mut finished_sent = false;
    let mut grants = BatchBuf::new();
    let end = loop {
        let Some(()) = conn.fill(&mut stream).await else {
            break Ev::Closed;
        };
        let mut drop_now = false;
        let mut goodbye = false;
        {
            let mut book = book.lock().unwrap();
            while let Some(payload) = conn.next_frame() {
                match decode_message(&payload).unwrap() {
                    Message::Credit { count } => credit += count,
                    Message::Heartbeat => {
                        let _ = events.send(Ev::Heartbeat);
                        conn.send(&Message::Heartbeat);
                    }
                    Message::Complete { lease, output } => {
                        book.completions += 1;
                        if let Some(drop_after) = plan.drop_after
                            && !book.dropped_once
                            && book.completions >= drop_after
                        {
                            book.dropped_once = true;
                            drop_now = true;
                            break;
                        }
                        if let Some(task) = held.remove(&lease.0) {
                            let entry = book.done.entry(task).or_insert((Vec::new(), 0));
                            entry.0 = output.to_vec();
                            entry.1 += 1;
                        }
                        conn.send(&Message::Ack { lease });
                    }
                    Message::Fail {
                        lease,
                        retry,
                        error,
                    } => {
                        if let Some(task) = held.remove(&lease.0) {
                            let attempts = book.attempts.entry(task).or_insert(0);
                            *attempts += 1;
                            if retry == Retry::Retryable && *attempts < plan.max_attempts {
                                book.ready.push_back(task);
                            } else {
                                book.failed.push((task, retry, error.to_owned()));
                            }
                        }
                        conn.send(&Message::Ack { lease });
                    }
                    Message::Goodbye => {
                        goodbye = true;
                        break;
                    }
                    // The worker gave up on this link (it found the server too slow).
                    Message::Error { .. } => {
                        drop_now = true;
                        break;
                    }
                    other => panic!("unexpected {other:?} from the worker"),
                }
            }
            if drop_now || goodbye {
                // The connection's leases go back to the queue.
                book.ready.extend(held.drain().map(|(_, task)| task));
            } else {
                // Grant within credit.
                while credit > 0 && !book.ready.is_empty() {
                    grants.clear();
                    while credit > 0 && grants.len() < 1024 {
                        let Some(task) = book.ready.pop_front() else {
                            break;
                        };
                        next_lease += 1;
                        held.insert(next_lease, task);
                        let input = u64::from(task).to_le_bytes();
                        let attempt = book.attempts.get(&task).copied().unwrap_or(0);
                        grants
                            .push(&LeaseGrant {
                                lease: LeaseId(next_lease),
                                job: JobId(1),
                                task: TaskId(task),
                                attempt: Attempt(attempt),
                                kind: 0,
                                input: &input,
                            })
                            .unwrap();
                        credit -= 1;
                    }
                    conn.send(&Message::Grant(grants.as_batch()));
                }
                if plan.finish && !finished_sent && book.settled(plan.tasks) {
                    finished_sent = true;
                    conn.send(&Message::JobFinished {
                        job: JobId(1),
                        outcome: JobOutcome::Finished,
                    });
                }
            }
        }
        if goodbye {
            break Ev::Goodbye;
        }
        if drop_now {
            break Ev::Closed;
        }
        if conn.flush(&mut stream).await.is_err() {
            break Ev::Closed;
        }
    };
    book.lock()
        .unwrap()
        .ready
        .extend(held.drain().map(|(_, task)| task));
    let _ = events.send(end);
}

/// The fake server's side of one connection: framing over a buffer.
struct Conn {
    rbuf: Vec<u8>,
    out: Vec<u8>,
    max: u32,
}

impl Conn {
    fn send(&mut self, message: &Message<'_>) {
        encode_frame_into(message, &mut self.out).unwrap();
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        if !self.out.is_empty() {
            stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more bytes; `None` at end of stream or on error.
    async fn fill(&mut self, stream: &mut TcpStream) -> Option<()> {
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }

    /// The next whole frame's payload, if one is buffered.
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        match FrameDecoder::new(self.max).decode(&self.rbuf).unwrap() {
            Decoded::Incomplete { .. } => None,
            Decoded::Frame(frame) => {
                let payload = frame.payload().to_vec();
                let len = frame.frame_len();
                self.rbuf.drain(..len);
                Some(payload)
            }
        }
    }

    /// Reads until one frame is in.
    async fn read(&mut self, stream: &mut TcpStream) -> Option<Vec<u8>> {
        loop {
            if let Some(payload) = self.next_frame() {
                return Some(payload);
            }
            self.fill(stream).await?;
        }
    }
}

// ---------------------------------------------------------------- helpers

fn config(addr: SocketAddr) -> WorkerConfig {
    WorkerConfig::new(addr.to_string(), secret())
        .with_name("test-worker")
        .with_kinds(["square"])
        .with_slots(2)
        .with_prefetch(2)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .with_server_lost_after(Duration::from_secs(5))
}

fn square(_: &TaskCtx, kind: &str, input: &[u8]) -> Result<Vec<u8>, TaskError> {
    assert_eq!(kind, "square");
    let n = u64::from_le_bytes(
        input
            .try_into()
            .map_err(|_| TaskError::permanent("not a u64"))?,
    );
    Ok((n * n).to_le_bytes().to_vec())
}

fn assert_squares(book: &Book, tasks: u32) {
    assert_eq!(book.done.len(), tasks as usize, "every task done");
    for (task, (output, times)) in &book.done {
        let n = u64::from(*task);
        assert_eq!(output, &(n * n).to_le_bytes(), "output of task {task}");
        assert_eq!(*times, 1, "task {task} recorded once");
    }
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("bounded wait ran out")
}

/// An address where nothing listens (a port just released).
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_job_runs_to_its_end_and_the_worker_exits_ok() {
    let mut fake = Fake::start(Plan::new(300)).await;
    let config = config(fake.addr);
    let stats = config.stats();
    let exit = bounded(run_worker(config, square)).await.unwrap();
    assert_eq!(
        exit,
        WorkerExit::JobFinished {
            job: JobId(1),
            outcome: JobOutcome::Finished
        }
    );
    assert_eq!(
        fake.next().await,
        Ev::Joined {
            name: "test-worker".into(),
            slots: 4
        }
    );
    assert_eq!(fake.wait_for(|e| *e != Ev::Heartbeat).await, Ev::Goodbye);
    assert_squares(&fake.book.lock().unwrap(), 300);
    let snap = stats.snapshot();
    assert_eq!((snap.granted, snap.done, snap.failed), (300, 300, 0));
    assert_eq!(snap.connections, 1);
    // Every answer but those racing the goodbye was acked, and measured.
    assert!(snap.acked > 0 && snap.rtt_count == snap.acked, "{snap:?}");
    assert!(snap.rtt_p50_us <= snap.rtt_p99_us && snap.rtt_p99_us <= snap.rtt_max_us);
}

#[tokio::test]
async fn inline_execution_runs_the_same_job() {
    let fake = Fake::start(Plan::new(500)).await;
    let config = config(fake.addr)
        .with_execution(Execution::Inline)
        .with_slots(1)
        .with_prefetch(63);
    let exit = bounded(run_worker(config, square)).await.unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }), "{exit:?}");
    assert_squares(&fake.book.lock().unwrap(), 500);
}

#[tokio::test]
async fn a_panic_or_an_error_fails_its_task_and_the_worker_goes_on() {
    let plan = Plan {
        max_attempts: 2,
        ..Plan::new(50)
    };
    let fake = Fake::start(plan).await;
    let config = config(fake.addr);
    let stats = config.stats();
    let handler = |ctx: &TaskCtx, kind: &str, input: &[u8]| -> Result<Vec<u8>, TaskError> {
        match ctx.task().0 {
            7 => panic!("boom at {} (attempt {})", ctx.task().0, ctx.attempt().0),
            9 => Err(TaskError::permanent("nine is not welcome")),
            _ => square(ctx, kind, input),
        }
    };
    let exit = bounded(run_worker(config, handler)).await.unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }), "{exit:?}");
    let book = fake.book.lock().unwrap();
    assert_eq!(book.done.len(), 48);
    let mut failed = book.failed.clone();
    failed.sort_by_key(|f| f.0);
    assert_eq!(
        failed,
        [
            (
                7,
                Retry::Retryable,
                "task panicked: boom at 7 (attempt 1)".to_owned()
            ),
            (9, Retry::Permanent, "nine is not welcome".to_owned()),
        ]
    );
    // Task 7 panicked twice (the fake retries once), task 9 failed once.
    let snap = stats.snapshot();
    assert_eq!((snap.panicked, snap.failed, snap.done), (2, 3, 48));
}

#[tokio::test]
async fn an_output_over_the_frame_limit_is_a_permanent_failure() {
    let fake = Fake::start(Plan::new(3)).await;
    let config = config(fake.addr).with_max_frame(2048);
    let handler = |ctx: &TaskCtx, kind: &str, input: &[u8]| -> Result<Vec<u8>, TaskError> {
        if ctx.task().0 == 1 {
            Ok(vec![0; 4096])
        } else {
            square(ctx, kind, input)
        }
    };
    let exit = bounded(run_worker(config, handler)).await.unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }), "{exit:?}");
    let book = fake.book.lock().unwrap();
    assert_eq!(book.done.len(), 2);
    let [(1, Retry::Permanent, text)] = &book.failed[..] else {
        panic!("{:?}", book.failed)
    };
    assert!(text.contains("exceeds the frame limit of 2048"), "{text}");
}

#[tokio::test]
async fn tasks_run_in_parallel_on_the_slots() {
    let fake = Fake::start(Plan::new(8)).await;
    // Every task waits for another one: with fewer than 2 tasks at once this would hang.
    let barrier = Arc::new(Barrier::new(2));
    let handler = move |ctx: &TaskCtx, kind: &str, input: &[u8]| {
        barrier.wait();
        square(ctx, kind, input)
    };
    let exit = bounded(run_worker(config(fake.addr), handler))
        .await
        .unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }), "{exit:?}");
    assert_squares(&fake.book.lock().unwrap(), 8);
}

#[tokio::test]
async fn the_worker_reconnects_when_the_server_drops_the_link() {
    let plan = Plan {
        drop_after: Some(40),
        ..Plan::new(200)
    };
    let mut fake = Fake::start(plan).await;
    let config = config(fake.addr).with_prefetch(30);
    let stats = config.stats();
    let exit = bounded(run_worker(config, square)).await.unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }), "{exit:?}");
    assert_squares(&fake.book.lock().unwrap(), 200);
    assert_eq!(stats.connections(), 2);
    assert!(matches!(fake.next().await, Ev::Joined { .. }));
    assert_eq!(fake.wait_for(|e| *e != Ev::Heartbeat).await, Ev::Closed);
    assert!(matches!(fake.next().await, Ev::Joined { .. }));
}

#[tokio::test]
async fn no_server_at_all_is_server_lost_after_the_configured_time() {
    let addr = dead_addr().await;
    let lost_after = Duration::from_millis(300);
    let config = config(addr).with_server_lost_after(lost_after);
    let started = Instant::now();
    let err = bounded(run_worker(config, square)).await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= lost_after, "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let WorkerError::ServerLost { addr: lost, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(lost, &addr.to_string());
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("lost the server at {addr}")),
        "{text}"
    );
    assert!(text.contains("cannot connect"), "{text}");
}

#[tokio::test]
async fn a_server_that_vanishes_mid_job_is_lost_after_the_configured_time() {
    let plan = Plan {
        finish: false,
        ..Plan::new(0)
    };
    let mut fake = Fake::start(plan).await;
    let lost_after = Duration::from_millis(400);
    let config = config(fake.addr).with_server_lost_after(lost_after);
    let worker = tokio::spawn(run_worker(config, square));
    assert!(matches!(fake.next().await, Ev::Joined { .. }));
    fake.kill();
    let killed = Instant::now();
    let err = bounded(worker).await.unwrap().unwrap_err();
    let took = killed.elapsed();
    assert!(matches!(err, WorkerError::ServerLost { .. }), "{err}");
    assert!(took >= lost_after, "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn the_shutdown_token_says_goodbye() {
    let plan = Plan {
        finish: false,
        ..Plan::new(0)
    };
    let mut fake = Fake::start(plan).await;
    let config = config(fake.addr);
    let token = config.shutdown_token();
    let worker = tokio::spawn(run_worker(config, square));
    assert!(matches!(fake.next().await, Ev::Joined { .. }));
    token.shutdown();
    assert_eq!(fake.wait_for(|e| *e != Ev::Heartbeat).await, Ev::Goodbye);
    assert_eq!(
        bounded(worker).await.unwrap().unwrap(),
        WorkerExit::Shutdown
    );
}

#[tokio::test]
async fn the_shutdown_token_stops_a_worker_waiting_for_its_server() {
    let config = config(dead_addr().await).with_server_lost_after(Duration::from_secs(60));
    let token = config.shutdown_token();
    let worker = tokio::spawn(run_worker(config, square));
    token.shutdown();
    assert_eq!(
        bounded(worker).await.unwrap().unwrap(),
        WorkerExit::Shutdown
    );
}

#[tokio::test]
async fn a_server_without_the_secret_is_refused_at_once() {
    let plan = Plan {
        secret: vec![0; 32],
        ..Plan::new(10)
    };
    let fake = Fake::start(plan).await;
    let config = config(fake.addr).with_server_lost_after(Duration::from_secs(60));
    let err = bounded(run_worker(config, square)).await.unwrap_err();
    let WorkerError::Handshake { addr, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(addr, &fake.addr.to_string());
    assert!(err.to_string().contains("authentication failed"), "{err}");
}

#[tokio::test]
async fn heartbeats_follow_the_servers_interval() {
    let plan = Plan {
        finish: false,
        heartbeat_ms: 50,
        ..Plan::new(0)
    };
    let mut fake = Fake::start(plan).await;
    let config = config(fake.addr);
    let token = config.shutdown_token();
    let worker = tokio::spawn(run_worker(config, square));
    assert!(matches!(fake.next().await, Ev::Joined { .. }));
    let started = Instant::now();
    for _ in 0..3 {
        fake.wait_for(|e| *e == Ev::Heartbeat).await;
    }
    // A heartbeat comes an interval after the welcome or the one before.
    assert!(started.elapsed() >= Duration::from_millis(100));
    token.shutdown();
    assert_eq!(
        bounded(worker).await.unwrap().unwrap(),
        WorkerExit::Shutdown
    );
}

// ---------------------------------------------------------------- the real server

fn real_server(
    checkpoint: &std::path::Path,
    listen: SocketAddr,
) -> (ServerHandle, SocketAddr, ServerTask) {
    let bound = Server::bind(
        ServerConfig::new(secret())
            .listen(listen)
            .checkpoint(checkpoint)
            .heartbeat_interval(Duration::from_millis(200)),
    )
    .expect("bind");
    let handle = bound.handle();
    let addr = bound.local_addr();
    (handle, addr, bound.spawn())
}

type ServerTask = JoinHandle<Result<(), colony_tokio::server::ServerError>>;

fn squares_inputs(n: u64) -> Inputs {
    (0..n).map(u64::to_le_bytes).collect()
}

fn assert_square_outputs(outputs: &[Option<Vec<u8>>], n: u64) {
    assert_eq!(outputs.len(), n as usize);
    for (i, output) in outputs.iter().enumerate() {
        let i = i as u64;
        assert_eq!(
            output.as_deref(),
            Some(&(i * i).to_le_bytes()[..]),
            "task {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_job_through_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, addr, server) = real_server(
        &dir.path().join("squares.log"),
        "127.0.0.1:0".parse().unwrap(),
    );
    let n = 5_000;
    let created = handle
        .create_job("squares", "square", squares_inputs(n), Vec::new(), 3)
        .await
        .unwrap();
    let threads = tokio::spawn(run_worker(config(addr).with_prefetch(64), square));
    let inline = tokio::spawn(run_worker(
        config(addr)
            .with_execution(Execution::Inline)
            .with_slots(1)
            .with_prefetch(64),
        square,
    ));
    let finished = WorkerExit::JobFinished {
        job: created.job,
        outcome: JobOutcome::Finished,
    };
    assert_eq!(bounded(threads).await.unwrap().unwrap(), finished);
    assert_eq!(bounded(inline).await.unwrap().unwrap(), finished);
    let progress = bounded(handle.wait_finished(created.job)).await.unwrap();
    assert_eq!((progress.done, progress.failed), (n as u32, 0));
    assert_square_outputs(&handle.outputs(created.job).await.unwrap(), n);

    // A worker that comes after the job ended learns it at once, and exits without error.
    let late = bounded(run_worker(config(addr), square)).await.unwrap();
    assert_eq!(late, finished);

    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_rides_out_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("squares.log");
    let (handle, addr, server) = real_server(&log, "127.0.0.1:0".parse().unwrap());
    let n = 400;
    let created = handle
        .create_job("squares", "square", squares_inputs(n), Vec::new(), 3)
        .await
        .unwrap();
    // Tasks from 100 on wait at a gate, opened once the server has restarted: the job is
    // mid-way when the server goes, and the tasks running then finish on a dead connection.
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let handler = {
        let gate = Arc::clone(&gate);
        move |ctx: &TaskCtx, kind: &str, input: &[u8]| {
            if ctx.task().0 >= 100 {
                let (open, cv) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            }
            square(ctx, kind, input)
        }
    };
    let config = config(addr).with_prefetch(8);
    let stats = config.stats();
    let worker = tokio::spawn(run_worker(config, handler));

    let mut progress = handle.progress(created.job).await.unwrap();
    bounded(progress.wait_for(|p| p.done >= 100)).await.unwrap();
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();

    let (handle, _, server) = real_server(&log, addr);
    let resumed = handle
        .create_job("squares", "square", squares_inputs(n), Vec::new(), 3)
        .await
        .unwrap();
    assert_eq!(resumed.already_done, 100);
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    let exit = bounded(worker).await.unwrap().unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }), "{exit:?}");
    assert_square_outputs(&handle.outputs(resumed.job).await.unwrap(), n);
    assert_eq!(stats.connections(), 2);
    // The two tasks held at the gate when the server went were answered into a dead
    // connection: dropped, and run again after the restart.
    assert!(stats.dropped() >= 1, "{:?}", stats.snapshot());
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

/// Throughput of one worker on tiny tasks against the fake server. Run with
/// `cargo test --release -p colony-tokio --test worker -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark"]
fn bench_tiny_tasks() {
    let tasks = 1_000_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = runtime.block_on(Fake::start(Plan::new(tasks)));
    for (execution, slots, prefetch) in [
        (Execution::Inline, 1, 511),
        (Execution::Threads, 1, 511),
        (Execution::Threads, 2, 510),
        (Execution::Threads, 2, 2),
    ] {
        fake.book.lock().unwrap().ready = (0..tasks).collect();
        fake.book.lock().unwrap().done.clear();
        let config = config(fake.addr)
            .with_execution(execution)
            .with_slots(slots)
            .with_prefetch(prefetch);
        let stats = config.stats();
        let started = Instant::now();
        let noop = |_: &TaskCtx, _: &str, _: &[u8]| Ok(Vec::new());
        let exit = colony_tokio::worker::run_worker_blocking(config, noop).unwrap();
        let took = started.elapsed();
        assert!(matches!(exit, WorkerExit::JobFinished { .. }));
        let snap = stats.snapshot();
        println!(
            "{execution:?} slots={slots} prefetch={prefetch}: {:.0} tasks/s, rtt p50 {} us p99 {} us",
            f64::from(tasks) / took.as_secs_f64(),
            snap.rtt_p50_us,
            snap.rtt_p99_us,
        );
    }
}

/// End to end through the real server (durable log on) with two in-process workers, each on
/// its own runtime. Run with
/// `cargo test --release -p colony-tokio --test worker bench_real -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark"]
fn bench_real_server_tiny_tasks() {
    let n: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for (execution, slots, prefetch) in [
        (Execution::Inline, 1, 1023),
        (Execution::Threads, 1, 1023),
        (Execution::Inline, 1, 255),
        (Execution::Threads, 1, 255),
        (Execution::Threads, 2, 62),
    ] {
        let log = dir
            .path()
            .join(format!("bench-{execution:?}-{slots}-{prefetch}.log"));
        let (handle, addr, server) =
            runtime.block_on(async { real_server(&log, "127.0.0.1:0".parse().unwrap()) });
        let inputs: Inputs = (0..n).map(|_| [0u8; 0]).collect();
        let started = Instant::now();
        let created = runtime
            .block_on(handle.create_job("noop", "square", inputs, Vec::new(), 3))
            .unwrap();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let config = config(addr)
                    .with_execution(execution)
                    .with_slots(slots)
                    .with_prefetch(prefetch);
                let stats = config.stats();
                let noop = |_: &TaskCtx, _: &str, _: &[u8]| Ok(Vec::new());
                let thread = std::thread::spawn(move || {
                    colony_tokio::worker::run_worker_blocking(config, noop)
                });
                (thread, stats)
            })
            .collect();
        let mut rtt = colony_tokio::worker::Histogram::new();
        for (thread, stats) in workers {
            let exit = thread.join().unwrap().unwrap();
            assert!(matches!(exit, WorkerExit::JobFinished { .. }));
            rtt.merge(&stats.lease_rtt());
        }
        let took = started.elapsed();
        let fsyncs = handle.fsyncs();
        let done = runtime
            .block_on(handle.wait_finished(created.job))
            .unwrap()
            .done;
        assert_eq!(u64::from(done), n);
        runtime.block_on(handle.shutdown()).unwrap();
        runtime.block_on(server).unwrap().unwrap();
        println!(
            "real server, 2 workers {execution:?} slots={slots} prefetch={prefetch}: {:.0} tasks/s, \
             rtt p50 {} us p99 {} us, {fsyncs} fsyncs",
            n as f64 / took.as_secs_f64(),
            rtt.p50(),
            rtt.p99(),
        );
    }
}
