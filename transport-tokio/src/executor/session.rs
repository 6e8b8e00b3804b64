//! The executor's connection task: one tokio task owns the connection to the server, every job
//! the executor created, and every task not yet settled.
//!
//! Per (kind, attempts) the executor has one open job on the server, named `{base}/{kind}` (or
//! `{base}/{kind}/{attempts}` for a non-default number of attempts). A job goes through three
//! phases on every connection: `Creating` (its `CreateJob` sent; the server answers `JobAccepted`
//! and then every result already recorded), `Querying` (a `StatusQuery` sent, to learn how many
//! tasks the job has) and `Ready` (tasks are sent in `AddTasks` batches, each answered by one
//! `Submitted` naming its last task).
//!
//! After a lost connection (a server restart included) the task reconnects with backoff for up
//! to the reconnect window and re-attaches every job by name. Tasks it had ids for get their
//! results from the server's replay; tasks sent without an answer are matched against the job's
//! task count (the server logs tasks in the order they were sent, so the first `total - known`
//! of them were recorded) and the rest are sent again. This relies on the executor being its
//! job's only submitter, which the unique default job names ensure.
//!
//! Invariants:
//! - Every task submitted gets exactly one outcome: its result, its error, `NoWorker` after the
//!   configured wait, or `ServerLost` when the reconnect window passes. Nothing waits for ever.
//! - Each in-flight permit taken by a submitter is given back once, when its task's outcome is
//!   delivered.
//! - `outstanding` counts tasks whose outcome is not delivered; a shutdown that waits ends once
//!   it is zero.
//! - Replies arrive in request order per connection: `JobAccepted` answers the oldest
//!   `CreateJob` not yet answered, and `Submitted` the oldest `AddTasks` of its job.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use colony_core::proto::{
    BatchBuf, ClientInfo, ErrorCode, HEADER_LEN, JobSpec, Message, Role, decode_message,
    encode_frame_into,
};
use colony_core::sched::Inputs;
use colony_core::{JobId, TaskId};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::RetryPolicy;
use super::error::ExecutorError;
use super::handle::{Raw, Slot};
use super::map::MapShared;
use crate::conn::{FrameReader, connect_and_handshake};
use crate::net::{self, Endpoint, ReadHalf, Stream, WriteHalf};
use crate::secret::Secret;
use crate::server::KINDS_CALL;
use crate::tls::ClientTls;

/// Bytes an `AddTasks` frame's payload adds besides its inputs (variant, job, count, length).
const ADD_TASKS_OVERHEAD: usize = 24;

/// Bytes an input adds to an `AddTasks` batch besides itself (its length varint).
const INPUT_OVERHEAD: usize = 5;

/// Bytes a task's input may not use of the frame limit.
pub(super) const FRAME_RESERVE: usize = ADD_TASKS_OVERHEAD + INPUT_OVERHEAD + HEADER_LEN;

/// How often the kinds of connected workers are asked for while a kind has no worker, and while
/// every kind has one.
const KINDS_POLL_FAST: Duration = Duration::from_millis(100);
const KINDS_POLL_SLOW: Duration = Duration::from_secs(1);

/// Commands taken per turn before the task sends what they produced.
const MAX_CMDS_PER_TURN: usize = 256;

/// Settings of the connection task.
#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) addr: String,
    pub(super) secret: Secret,
    pub(super) name: String,
    pub(super) job_base: String,
    pub(super) no_worker_wait: Option<Duration>,
    pub(super) reconnect_window: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) server_silence: Duration,
    pub(super) max_frame: u32,
    /// What to trust for `tls://` and `wss://` addresses.
    pub(super) tls: Option<ClientTls>,
}

/// What the executor's handles and the connection task share.
#[derive(Debug)]
pub(super) struct State {
    /// In-flight permits: a submitter takes (and forgets) one per task.
    pub(super) permits: Arc<Semaphore>,
    /// Why the connection task stopped for good, once it has.
    pub(super) fatal: Mutex<Option<ExecutorError>>,
    /// The largest task input a frame holds on the current connection.
    pub(super) max_input: AtomicUsize,
}

impl State {
    pub(super) fn fatal(&self) -> Option<ExecutorError> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A request to the connection task.
#[derive(Debug)]
pub(super) enum Cmd {
    Submit(Submission),
    /// Stop taking tasks, finish the outstanding ones, say goodbye; then answer `done`.
    Shutdown {
        done: Option<oneshot::Sender<()>>,
    },
}

/// Tasks to submit, with where their outcomes go.
#[derive(Debug)]
pub(super) struct Submission {
    pub(super) kind: Arc<str>,
    pub(super) policy: RetryPolicy,
    pub(super) inputs: Arc<Inputs>,
    pub(super) target: TargetSpec,
}

/// Where a submission's outcomes go.
#[derive(Debug)]
pub(super) enum TargetSpec {
    One(Arc<Slot>),
    Map { shared: Arc<MapShared>, first: u64 },
}

#[derive(Debug)]
enum Target {
    Slot(Arc<Slot>),
    Map(Arc<MapShared>, u64),
}

/// One task not yet settled.
#[derive(Debug)]
struct Pending {
    inputs: Arc<Inputs>,
    index: u32,
    /// `None` once the caller was given an outcome (no worker, say) while the task goes on.
    target: Option<Target>,
    resubmits_left: u16,
    delay: Duration,
    max_delay: Duration,
}

impl Pending {
    fn input(&self) -> &[u8] {
        self.inputs.get(self.index as usize).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Creating,
    Querying,
    Ready,
}

/// A result that came before the task's id was known (while re-attaching).
#[derive(Debug)]
enum Early {
    Done(Vec<u8>),
    Failed { error: String, attempts: u16 },
}

/// One job of the executor (see the module docs).
#[derive(Debug)]
struct JobState {
    kind: Arc<str>,
    attempts: u16,
    name: String,
    id: Option<JobId>,
    phase: Phase,
    /// Not sent yet.
    queued: VecDeque<Pending>,
    /// Sent, not yet answered by `Submitted`; `groups` holds each `AddTasks`' size.
    unacked: VecDeque<Pending>,
    groups: VecDeque<u32>,
    /// Tasks with ids `base..`, waiting for results (`None`: settled, or not ours).
    waiting: VecDeque<Option<Pending>>,
    base: u32,
    /// One past the highest task id known to be this executor's.
    next_id: Option<u32>,
    early: HashMap<u32, Early>,
    /// Tasks whose caller still waits (target set).
    live: u64,
}

impl JobState {
    fn insert_waiting(&mut self, id: u32, p: Pending) {
        // A task whose caller was answered already (no worker) needs no place: its result,
        // if it ever comes, is dropped.
        let p = p.target.is_some().then_some(p);
        if p.is_none() && (self.waiting.is_empty() || id < self.base) {
            return;
        }
        if self.waiting.is_empty() {
            self.base = id;
        }
        while id < self.base {
            self.waiting.push_front(None);
            self.base -= 1;
        }
        let offset = (id - self.base) as usize;
        while self.waiting.len() < offset {
            self.waiting.push_back(None);
        }
        if self.waiting.len() == offset {
            self.waiting.push_back(p);
        } else if let Some(slot) = self.waiting.get_mut(offset) {
            *slot = p;
        }
        self.trim_front();
    }

    /// Drops the settled ids at the front.
    fn trim_front(&mut self) {
        while let Some(None) = self.waiting.front() {
            self.waiting.pop_front();
            self.base += 1;
        }
    }

    fn take_waiting(&mut self, id: u32) -> Option<Pending> {
        let offset = id.checked_sub(self.base)? as usize;
        let taken = self.waiting.get_mut(offset)?.take();
        self.trim_front();
        taken
    }

    /// Every pending task of the job, wherever it is.
    fn all_pending(&mut self) -> impl Iterator<Item = &mut Pending> {
        self.queued
            .iter_mut()
            .chain(self.unacked.iter_mut())
            .chain(self.waiting.iter_mut().flatten())
    }
}

/// The connection's outgoing side: frames appended by the session, written by a writer task.
#[derive(Debug, Default)]
pub(super) struct Wire {
    buf: Mutex<Vec<u8>>,
    notify: Notify,
    closing: std::sync::atomic::AtomicBool,
}

impl Wire {
    pub(super) fn push(&self, frames: &mut Vec<u8>) {
        if frames.is_empty() {
            return;
        }
        let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        if buf.is_empty() {
            std::mem::swap(&mut *buf, frames);
        } else {
            buf.extend_from_slice(frames);
            frames.clear();
        }
        drop(buf);
        self.notify.notify_one();
    }

    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    async fn run(self: Arc<Self>, mut io: WriteHalf) -> std::io::Result<()> {
        let mut spare = Vec::new();
        loop {
            {
                let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
                std::mem::swap(&mut *buf, &mut spare);
            }
            if !spare.is_empty() {
                io.write_all(&spare).await?;
                // TLS and WebSocket streams buffer; on TCP this does nothing.
                io.flush().await?;
                spare.clear();
                continue;
            }
            if self.closing.load(Ordering::Acquire) {
                return io.shutdown().await;
            }
            self.notify.notified().await;
        }
    }
}

/// A welcomed connection.
pub(super) struct Connected {
    pub(super) reader: FrameReader<ReadHalf>,
    pub(super) wire: Arc<Wire>,
    pub(super) writer: JoinHandle<std::io::Result<()>>,
    max_frame: u32,
    heartbeat: Duration,
}

/// The name of the job an executor whose job name is `base` uses for `kind` with `attempts`.
pub(super) fn job_name(base: &str, kind: &str, attempts: u16) -> String {
    if attempts == RetryPolicy::default().attempts_per_task() {
        format!("{base}/{kind}")
    } else {
        format!("{base}/{kind}/{attempts}")
    }
}

/// Connects and runs the handshake as a task client.
pub(super) async fn connect(config: &Config) -> Result<Connected, ExecutorError> {
    let attempt = async {
        let endpoint = Endpoint::parse(&config.addr).map_err(|e| (true, e.to_string()))?;
        let stream: Stream = net::connect(&endpoint, config.tls.as_ref())
            .await
            .map_err(|e| (e.is_permanent(), e.to_string()))?;
        let role = Role::Client(ClientInfo { name: &config.name });
        connect_and_handshake(stream, &config.secret, role, config.max_frame)
            .await
            .map_err(|e| {
                // A full server (too many connections) or a slow handshake may pass; a wrong
                // secret or protocol version will not.
                let fatal = e.is_auth()
                    || matches!(e, crate::conn::HandshakeError::Protocol(_))
                    || matches!(
                        e,
                        crate::conn::HandshakeError::Refused { code, .. }
                            if !matches!(code, ErrorCode::LimitExceeded | ErrorCode::Timeout)
                    );
                if fatal {
                    (
                        true,
                        ExecutorError::from_handshake(&config.addr, &e).to_string(),
                    )
                } else {
                    (false, e.to_string())
                }
            })
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(Ok((conn, welcome))) => {
            let max_frame = conn.max_frame();
            let (reader, writer) = conn.split_with(Stream::into_split);
            let wire = Arc::new(Wire::default());
            let writer = tokio::spawn(Arc::clone(&wire).run(writer.into_inner()));
            Ok(Connected {
                reader,
                wire,
                writer,
                max_frame,
                heartbeat: Duration::from_millis(u64::from(welcome.heartbeat_ms.max(50))),
            })
        }
        Ok(Err((true, text))) => Err(ExecutorError::Handshake {
            addr: config.addr.clone(),
            error: text,
        }),
        Ok(Err((false, text))) => Err(ExecutorError::ServerLost {
            addr: config.addr.clone(),
            waited: Duration::ZERO,
            last_error: text,
        }),
        Err(_) => Err(ExecutorError::ServerLost {
            addr: config.addr.clone(),
            waited: config.connect_timeout,
            last_error: format!("no handshake within {:?}", config.connect_timeout),
        }),
    }
}

/// Connects until it works, a fatal error, or `window` passes.
pub(super) async fn connect_within(
    config: &Config,
    window: Duration,
) -> Result<(Connected, Duration), ExecutorError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match connect(config).await {
            Ok(c) => return Ok((c, started.elapsed())),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                let waited = started.elapsed();
                if waited + delay >= window {
                    let last_error = match e {
                        ExecutorError::ServerLost { last_error, .. } => last_error,
                        other => other.to_string(),
                    };
                    return Err(ExecutorError::ServerLost {
                        addr: config.addr.clone(),
                        waited,
                        last_error,
                    });
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// How a connection ended.
enum End {
    /// Shut down on request; every task settled.
    Done,
    /// The connection is gone; reconnect.
    Lost(String),
    /// Nothing more can be done.
    Fatal(ExecutorError),
}

/// The connection task. See the module docs.
pub(super) struct Session {
    config: Arc<Config>,
    state: Arc<State>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    cmds_open: bool,
    jobs: Vec<JobState>,
    by_key: HashMap<(Arc<str>, u16), usize>,
    by_id: HashMap<JobId, usize>,
    accepts: VecDeque<usize>,
    outstanding: u64,
    shutting_down: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// Failed tasks to submit again, with when.
    delayed: Vec<(Instant, usize, Pending)>,
    /// Frames produced this turn.
    out: Vec<u8>,
    max_frame: u32,
    /// Permits to give back at the end of the turn.
    freed: usize,
    // -- the kinds of connected workers --
    served: HashSet<String>,
    kinds_known: bool,
    kinds_call: Option<u32>,
    next_call: u32,
    next_kinds_poll: Instant,
    unserved_since: HashMap<Arc<str>, Instant>,
}

impl Session {
    pub(super) fn new(
        config: Arc<Config>,
        state: Arc<State>,
        cmds: mpsc::UnboundedReceiver<Cmd>,
    ) -> Self {
        Session {
            config,
            state,
            cmds,
            cmds_open: true,
            jobs: Vec::new(),
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            accepts: VecDeque::new(),
            outstanding: 0,
            shutting_down: false,
            shutdown_waiters: Vec::new(),
            delayed: Vec::new(),
            out: Vec::new(),
            max_frame: colony_core::proto::DEFAULT_MAX_FRAME,
            freed: 0,
            served: HashSet::new(),
            kinds_known: false,
            kinds_call: None,
            next_call: 1,
            next_kinds_poll: Instant::now(),
            unserved_since: HashMap::new(),
        }
    }

    /// Runs over `first` and every later connection until shut down or lost for good.
    pub(super) async fn run(mut self, first: Connected) {
        let mut conn = first;
        let end = loop {
            match self.serve(conn).await {
                End::Done => break None,
                End::Fatal(e) => break Some(e),
                End::Lost(reason) => {
                    log::warn!(
                        "executor lost the server at {}: {reason}; reconnecting",
                        self.config.addr
                    );
                    match self.reconnect().await {
                        Ok(c) => conn = c,
                        Err(e) => break e,
                    }
                }
            }
        };
        match end {
            Some(e) => {
                log::warn!("executor stopped: {e}");
                *self
                    .state
                    .fatal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
                self.fail_everything(&e);
            }
            None => self.fail_everything(&ExecutorError::Shutdown),
        }
        self.finish_waiters();
    }

    /// Reconnects within the window, taking commands meanwhile. `Err(None)`: nothing is left to
    /// do (shut down meanwhile); `Err(Some(_))`: the server is lost for good.
    async fn reconnect(&mut self) -> Result<Connected, Option<ExecutorError>> {
        let started = Instant::now();
        let window = self.config.reconnect_window;
        let mut delay = Duration::from_millis(50);
        loop {
            if self.shutting_down && self.outstanding == 0 {
                return Err(None);
            }
            let last_error = match connect(&self.config).await {
                Ok(c) => {
                    log::info!("executor reconnected to {}", self.config.addr);
                    return Ok(c);
                }
                Err(e) if e.is_fatal() => return Err(Some(e)),
                Err(ExecutorError::ServerLost { last_error, .. }) => last_error,
                Err(e) => e.to_string(),
            };
            let waited = started.elapsed();
            if waited >= window {
                return Err(Some(ExecutorError::ServerLost {
                    addr: self.config.addr.clone(),
                    waited,
                    last_error,
                }));
            }
            let sleep = tokio::time::sleep(delay.min(window - waited));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    cmd = self.cmds.recv(), if self.cmds_open => self.on_cmd(cmd),
                }
            }
            self.give_back();
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    // ---- one connection ----

    async fn serve(&mut self, conn: Connected) -> End {
        let Connected {
            mut reader,
            wire,
            mut writer,
            max_frame,
            heartbeat,
        } = conn;
        self.max_frame = max_frame;
        self.state.max_input.store(
            (max_frame as usize).saturating_sub(FRAME_RESERVE),
            Ordering::Relaxed,
        );
        self.by_id.clear();
        self.accepts.clear();
        self.kinds_call = None;
        // Whatever was encoded while there was no connection is stale: every job is created
        // again below, and queued tasks go out once their job is ready.
        self.out.clear();
        for i in 0..self.jobs.len() {
            self.start_job(i);
        }
        let silence = self.config.server_silence.max(3 * heartbeat);
        let mut last_heard = Instant::now();
        let mut next_heartbeat = Instant::now() + heartbeat;
        let end = loop {
            let wake = self.next_wake(next_heartbeat);
            let outcome = tokio::select! {
                read = reader.fill() => match read {
                    Ok(()) => {
                        last_heard = Instant::now();
                        self.on_frames(&mut reader)
                    }
                    Err(e) => Some(End::Lost(e.to_string())),
                },
                cmd = self.cmds.recv(), if self.cmds_open => {
                    self.on_cmd(cmd);
                    for _ in 0..MAX_CMDS_PER_TURN {
                        match self.cmds.try_recv() {
                            Ok(cmd) => self.on_cmd(Some(cmd)),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                self.on_cmd(None);
                                break;
                            }
                        }
                    }
                    None
                }
                () = tokio::time::sleep_until(wake) => None,
                written = &mut writer => Some(End::Lost(match written {
                    Ok(Err(e)) => format!("write failed: {e}"),
                    _ => "the connection's writer stopped".to_owned(),
                })),
            };
            if let Some(end) = outcome {
                break end;
            }
            let now = Instant::now();
            if now >= next_heartbeat {
                if now.duration_since(last_heard) > silence {
                    break End::Lost(format!("the server was silent for {silence:?}"));
                }
                let _ = encode_frame_into(&Message::Heartbeat, &mut self.out);
                next_heartbeat = now + heartbeat;
            }
            self.on_time(now);
            self.pump();
            wire.push(&mut self.out);
            self.give_back();
            if self.shutting_down && self.outstanding == 0 {
                let _ = encode_frame_into(&Message::Goodbye, &mut self.out);
                wire.push(&mut self.out);
                wire.close();
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
                return End::Done;
            }
        };
        wire.close();
        writer.abort();
        end
    }

    /// When the loop must wake on its own.
    fn next_wake(&self, heartbeat: Instant) -> Instant {
        let mut wake = heartbeat;
        if self.kinds_call.is_none() && self.jobs.iter().any(|j| j.live > 0) {
            wake = wake.min(self.next_kinds_poll.max(Instant::now()));
        }
        for (at, _, _) in &self.delayed {
            wake = wake.min(*at);
        }
        wake
    }

    /// Sends `CreateJob` for job `i` on this connection.
    fn start_job(&mut self, i: usize) {
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        job.phase = Phase::Creating;
        job.id = None;
        job.groups.clear();
        job.early.clear();
        let spec = JobSpec {
            name: &job.name,
            kind: &job.kind,
            tasks: 0,
            edges: 0,
            max_attempts: job.attempts,
            open: true,
        };
        let _ = encode_frame_into(&Message::CreateJob(spec), &mut self.out);
        self.accepts.push_back(i);
    }

    // ---- commands ----

    fn on_cmd(&mut self, cmd: Option<Cmd>) {
        match cmd {
            None => {
                self.cmds_open = false;
                self.shutting_down = true;
            }
            Some(Cmd::Shutdown { done }) => {
                self.shutting_down = true;
                if let Some(done) = done {
                    self.shutdown_waiters.push(done);
                }
            }
            Some(Cmd::Submit(submission)) => self.on_submit(submission),
        }
    }

    fn job_for(&mut self, kind: &Arc<str>, attempts: u16) -> usize {
        if let Some(&i) = self.by_key.get(&(Arc::clone(kind), attempts)) {
            return i;
        }
        let name = job_name(&self.config.job_base, kind, attempts);
        let i = self.jobs.len();
        self.jobs.push(JobState {
            kind: Arc::clone(kind),
            attempts,
            name,
            id: None,
            phase: Phase::Creating,
            queued: VecDeque::new(),
            unacked: VecDeque::new(),
            groups: VecDeque::new(),
            waiting: VecDeque::new(),
            base: 0,
            next_id: None,
            early: HashMap::new(),
            live: 0,
        });
        self.by_key.insert((Arc::clone(kind), attempts), i);
        self.start_job(i);
        i
    }

    fn on_submit(&mut self, s: Submission) {
        let attempts = s.policy.attempts_per_task();
        let i = self.job_for(&s.kind, attempts);
        let count = s.inputs.len();
        let (resubmits_left, delay, max_delay) = s.policy.resubmit_plan();
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        if job.live == 0 {
            // The wait for a worker starts now.
            self.unserved_since.remove(&job.kind);
            self.next_kinds_poll = Instant::now();
        }
        job.live += count as u64;
        self.outstanding += count as u64;
        match s.target {
            TargetSpec::One(slot) => job.queued.push_back(Pending {
                inputs: s.inputs,
                index: 0,
                target: Some(Target::Slot(slot)),
                resubmits_left,
                delay,
                max_delay,
            }),
            TargetSpec::Map { shared, first } => {
                for k in 0..count {
                    job.queued.push_back(Pending {
                        inputs: Arc::clone(&s.inputs),
                        index: k as u32,
                        target: Some(Target::Map(Arc::clone(&shared), first + k as u64)),
                        resubmits_left,
                        delay,
                        max_delay,
                    });
                }
            }
        }
    }

    // ---- sending ----

    /// Sends the queued tasks of every ready job in `AddTasks` batches within the frame limit.
    fn pump(&mut self) {
        let room = (self.max_frame as usize).saturating_sub(ADD_TASKS_OVERHEAD);
        let mut batch = BatchBuf::new();
        for job in &mut self.jobs {
            if job.phase != Phase::Ready || job.queued.is_empty() {
                continue;
            }
            let Some(id) = job.id else { continue };
            while let Some(p) = job.queued.pop_front() {
                if p.target.is_none() {
                    continue;
                }
                let input = p.input();
                if !batch.is_empty() && batch.encoded_len() + input.len() + INPUT_OVERHEAD > room {
                    let _ = encode_frame_into(
                        &Message::AddTasks {
                            job: id,
                            inputs: batch.as_batch(),
                        },
                        &mut self.out,
                    );
                    job.groups.push_back(batch.len());
                    batch.clear();
                }
                let _ = batch.push_bytes(input);
                job.unacked.push_back(p);
            }
            if !batch.is_empty() {
                let _ = encode_frame_into(
                    &Message::AddTasks {
                        job: id,
                        inputs: batch.as_batch(),
                    },
                    &mut self.out,
                );
                job.groups.push_back(batch.len());
                batch.clear();
            }
        }
    }

    fn give_back(&mut self) {
        if self.freed > 0 {
            self.state.permits.add_permits(self.freed);
            self.freed = 0;
        }
    }

    // ---- receiving ----

    fn on_frames(&mut self, reader: &mut FrameReader<ReadHalf>) -> Option<End> {
        loop {
            let range = match reader.next_buffered() {
                Ok(Some(range)) => range,
                Ok(None) => return None,
                Err(e) => return Some(End::Lost(e.to_string())),
            };
            let message = match decode_message(reader.buffer().get(range).unwrap_or_default()) {
                Ok(message) => message,
                Err(e) => return Some(End::Lost(format!("bad message from the server: {e}"))),
            };
            if let Some(end) = self.on_message(message) {
                return Some(end);
            }
        }
    }

    fn on_message(&mut self, message: Message<'_>) -> Option<End> {
        match message {
            Message::TaskDone { job, task, output } => {
                self.on_result(job, task, Early::Done(output.to_vec()));
            }
            Message::TaskFailed {
                job,
                task,
                attempts,
                error,
            } => self.on_result(
                job,
                task,
                Early::Failed {
                    error: error.to_owned(),
                    attempts,
                },
            ),
            Message::Submitted { job, task } => return self.on_submitted(job, task),
            Message::JobAccepted { job, .. } => {
                let Some(i) = self.accepts.pop_front() else {
                    return Some(End::Lost("a JobAccepted nobody asked for".to_owned()));
                };
                self.on_accepted(i, job);
            }
            Message::Status(statuses) => {
                for status in statuses.iter() {
                    let Ok(status) = status else {
                        return Some(End::Lost("a bad status from the server".to_owned()));
                    };
                    if let Some(&i) = self.by_id.get(&status.job) {
                        // The job's name confirms which `CreateJob` its `JobAccepted` answered.
                        if self.jobs.get(i).is_some_and(|j| j.name != status.name) {
                            return Some(End::Lost(format!(
                                "{} is {:?}, not the job expected",
                                status.job, status.name
                            )));
                        }
                        self.on_total(i, status.total);
                    }
                }
            }
            Message::CallReturn { call, result } if Some(call) == self.kinds_call => {
                self.kinds_call = None;
                match postcard::from_bytes::<Vec<(String, u32)>>(result) {
                    Ok(kinds) => self.on_kinds(kinds),
                    Err(e) => log::warn!("unreadable list of worker kinds: {e}"),
                }
            }
            Message::CallError { call, error } if Some(call) == self.kinds_call => {
                // An older server without the built-in: no worker check.
                log::warn!("the server cannot list worker kinds: {error}");
                self.kinds_call = Some(u32::MAX);
            }
            Message::Heartbeat
            | Message::JobFinished { .. }
            | Message::CallReturn { .. }
            | Message::CallError { .. } => {}
            Message::ServerGoingAway => return Some(End::Lost("the server is going away".into())),
            Message::Error { code, detail } => {
                return Some(if code == ErrorCode::Timeout {
                    End::Lost(format!("the server timed us out: {detail}"))
                } else {
                    End::Fatal(ExecutorError::Refused {
                        code,
                        detail: detail.to_owned(),
                    })
                });
            }
            other => {
                return Some(End::Lost(format!(
                    "unexpected {} from the server",
                    other.name()
                )));
            }
        }
        None
    }

    fn on_accepted(&mut self, i: usize, id: JobId) {
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        if job.next_id.is_some() && job.id.is_some_and(|old| old != id) {
            log::warn!("job {:?} came back as {id}", job.name);
        }
        job.id = Some(id);
        job.phase = Phase::Querying;
        self.by_id.insert(id, i);
        let _ = encode_frame_into(&Message::StatusQuery { job: Some(id) }, &mut self.out);
    }

    /// The job has `total` tasks on the server: matches the tasks sent without an answer.
    fn on_total(&mut self, i: usize, total: u32) {
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        if job.phase != Phase::Querying {
            return;
        }
        let start = job.next_id.unwrap_or(total);
        if total < start {
            // The server lost tasks it had confirmed (its data folder was replaced, say): send
            // again every task it no longer has, oldest first.
            log::warn!(
                "job {:?} has {total} tasks on the server, fewer than the {start} it had; \
                 sending the missing ones again",
                job.name
            );
            let mut lost = Vec::new();
            while job.base + (job.waiting.len() as u32) > total {
                match job.waiting.pop_back() {
                    Some(Some(p)) => lost.push(p),
                    Some(None) => {}
                    None => break,
                }
            }
            job.base = job.base.min(total);
            job.trim_front();
            while let Some(p) = job.unacked.pop_back() {
                job.queued.push_front(p);
            }
            for p in lost {
                job.queued.push_front(p);
            }
            job.next_id = Some(total);
        }
        let start = job.next_id.unwrap_or(total);
        let recorded = total.saturating_sub(start);
        let mut id = start;
        while id - start < recorded {
            let Some(p) = job.unacked.pop_front() else {
                break;
            };
            job.insert_waiting(id, p);
            id += 1;
        }
        job.next_id = Some(total.max(start));
        while let Some(p) = job.unacked.pop_back() {
            job.queued.push_front(p);
        }
        job.groups.clear();
        job.phase = Phase::Ready;
        let early: Vec<(u32, Early)> = job.early.drain().collect();
        for (task, result) in early {
            self.settle(i, task, result);
        }
    }

    fn on_submitted(&mut self, id: JobId, last: TaskId) -> Option<End> {
        let &i = self.by_id.get(&id)?;
        let job = self.jobs.get_mut(i)?;
        let Some(n) = job.groups.pop_front() else {
            return Some(End::Lost(format!("a Submitted for {id} nobody asked for")));
        };
        let first = (last.0 + 1).saturating_sub(n);
        for k in 0..n {
            let Some(p) = job.unacked.pop_front() else {
                break;
            };
            job.insert_waiting(first + k, p);
        }
        job.next_id = Some(job.next_id.unwrap_or(0).max(last.0 + 1));
        None
    }

    fn on_result(&mut self, id: JobId, task: TaskId, result: Early) {
        let Some(&i) = self.by_id.get(&id) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        if job.phase != Phase::Ready
            && !job.unacked.is_empty()
            && job.next_id.is_none_or(|n| task.0 >= n)
        {
            job.early.insert(task.0, result);
            return;
        }
        self.settle(i, task.0, result);
    }

    /// Gives task `task` of job `i` its outcome (or submits it again after a failure, if its
    /// policy allows).
    fn settle(&mut self, i: usize, task: u32, result: Early) {
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        let Some(mut p) = job.take_waiting(task) else {
            return;
        };
        let raw = match result {
            Early::Done(output) => Ok(output),
            Early::Failed { error, attempts } => {
                if p.resubmits_left > 0 && p.target.is_some() {
                    p.resubmits_left -= 1;
                    let at = Instant::now() + p.delay;
                    p.delay = (p.delay * 2).min(p.max_delay);
                    log::debug!(
                        "{} task {task} failed ({error}); submitting it again",
                        job.kind
                    );
                    self.delayed.push((at, i, p));
                    return;
                }
                Err(ExecutorError::Remote {
                    kind: job.kind.to_string(),
                    error,
                    attempts,
                })
            }
        };
        self.deliver(i, &mut p, raw);
    }

    /// Delivers `raw` to `p`'s caller, if it still waits.
    fn deliver(&mut self, i: usize, p: &mut Pending, raw: Raw) {
        let Some(target) = p.target.take() else {
            return;
        };
        match target {
            Target::Slot(slot) => slot.complete(raw),
            Target::Map(shared, index) => shared.deliver(index, raw),
        }
        self.freed += 1;
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Some(job) = self.jobs.get_mut(i) {
            job.live = job.live.saturating_sub(1);
        }
    }

    // ---- time: kinds, no worker, resubmits ----

    fn on_time(&mut self, now: Instant) {
        if !self.delayed.is_empty() {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
                .into_iter()
                .partition(|(at, _, _)| *at <= now);
            self.delayed = later;
            for (_, i, p) in due {
                if let Some(job) = self.jobs.get_mut(i) {
                    job.queued.push_back(p);
                }
            }
        }
        let live = self.jobs.iter().any(|j| j.live > 0);
        if live && self.kinds_call.is_none() && now >= self.next_kinds_poll {
            let call = self.next_call;
            self.next_call = self.next_call.wrapping_add(1).max(1);
            self.kinds_call = Some(call);
            let _ = encode_frame_into(
                &Message::Call {
                    call,
                    name: KINDS_CALL,
                    args: &[],
                },
                &mut self.out,
            );
        }
    }

    fn on_kinds(&mut self, kinds: Vec<(String, u32)>) {
        let now = Instant::now();
        self.served = kinds
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, _)| k)
            .collect();
        self.kinds_known = true;
        let mut all_served = true;
        let mut expired = Vec::new();
        for (i, job) in self.jobs.iter().enumerate() {
            if job.live == 0 {
                continue;
            }
            if self.served.contains(&*job.kind) {
                self.unserved_since.remove(&job.kind);
                continue;
            }
            all_served = false;
            let since = *self
                .unserved_since
                .entry(Arc::clone(&job.kind))
                .or_insert(now);
            if let Some(wait) = self.config.no_worker_wait
                && now.duration_since(since) >= wait
            {
                expired.push((i, wait));
            }
        }
        for (i, waited) in expired {
            let Some(job) = self.jobs.get(i) else {
                continue;
            };
            let error = ExecutorError::NoWorker {
                kind: job.kind.to_string(),
                waited,
            };
            log::warn!("{error}");
            self.abandon_job(i, &error);
        }
        self.next_kinds_poll = now
            + if all_served {
                KINDS_POLL_SLOW
            } else {
                KINDS_POLL_FAST
            };
    }

    /// Gives every waiting caller of job `i` `error`; the tasks themselves go on.
    fn abandon_job(&mut self, i: usize, error: &ExecutorError) {
        let Some(job) = self.jobs.get_mut(i) else {
            return;
        };
        let mut targets = Vec::new();
        for p in job.all_pending() {
            if let Some(t) = p.target.take() {
                targets.push(t);
            }
        }
        job.queued.clear();
        for slot in &mut job.waiting {
            if slot.as_ref().is_some_and(|p| p.target.is_none()) {
                *slot = None;
            }
        }
        job.trim_front();
        for (_, j, p) in &mut self.delayed {
            if *j == i
                && let Some(t) = p.target.take()
            {
                targets.push(t);
            }
        }
        self.delayed.retain(|(_, _, p)| p.target.is_some());
        let n = targets.len();
        for t in targets {
            match t {
                Target::Slot(slot) => slot.complete(Err(error.clone())),
                Target::Map(shared, index) => shared.deliver(index, Err(error.clone())),
            }
        }
        self.freed += n;
        self.outstanding = self.outstanding.saturating_sub(n as u64);
        if let Some(job) = self.jobs.get_mut(i) {
            job.live = job.live.saturating_sub(n as u64);
        }
    }

    // ---- the end ----

    /// Gives every waiting caller `error` (submissions that raced with the end included) and
    /// refuses later submissions.
    fn fail_everything(&mut self, error: &ExecutorError) {
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            self.on_cmd(Some(cmd));
        }
        for i in 0..self.jobs.len() {
            self.abandon_job(i, error);
        }
        self.state.permits.close();
    }

    fn finish_waiters(&mut self) {
        for waiter in self.shutdown_waiters.drain(..) {
            let _ = waiter.send(());
        }
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Pending {
        Pending {
            inputs: Arc::new(Inputs::new()),
            index: 0,
            target: Some(Target::Slot(Arc::new(Slot::default()))),
            resubmits_left: 0,
            delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    fn job() -> JobState {
        JobState {
            kind: Arc::from("k"),
            attempts: 3,
            name: "n".into(),
            id: None,
            phase: Phase::Ready,
            queued: VecDeque::new(),
            unacked: VecDeque::new(),
            groups: VecDeque::new(),
            waiting: VecDeque::new(),
            base: 0,
            next_id: None,
            early: HashMap::new(),
            live: 0,
        }
    }

    #[test]
    fn waiting_tasks_are_found_by_id_and_the_front_advances() {
        let mut j = job();
        j.insert_waiting(10, pending());
        j.insert_waiting(13, pending());
        j.insert_waiting(8, pending());
        assert_eq!(j.base, 8);
        assert_eq!(j.waiting.len(), 6);
        assert!(j.take_waiting(9).is_none());
        assert!(j.take_waiting(10).is_some());
        assert!(j.take_waiting(10).is_none());
        assert!(j.take_waiting(8).is_some());
        assert_eq!(j.base, 13, "the front skips settled ids");
        assert!(j.take_waiting(13).is_some());
        assert!(j.waiting.is_empty());
        assert!(j.take_waiting(2).is_none());
        // A task whose caller was answered already takes no place.
        let mut answered = pending();
        answered.target = None;
        j.insert_waiting(20, answered);
        assert!(j.waiting.is_empty());
        j.insert_waiting(21, pending());
        answered = pending();
        answered.target = None;
        j.insert_waiting(22, answered);
        assert_eq!((j.base, j.waiting.len()), (21, 2));
    }
}
