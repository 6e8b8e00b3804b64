//! The engine: the one task that owns the core [`Scheduler`].
//!
//! Each turn of its loop waits for something (a batch of events from a connection reader, a
//! command from a [`ServerHandle`](super::ServerHandle), a durable LSN from the group-commit
//! thread, or the scheduler's next deadline), takes whatever else is already queued, and then
//! [`step`](Engine::step)s: polls the scheduler, hands new log bytes to the group-commit thread,
//! turns the scheduler's actions into frames staged per worker (consecutive grants become one
//! `Grant` batch), moves each worker's staged frames to its outbox in one go, and publishes
//! progress.
//!
//! Invariants:
//! - At most one log flush is in flight; records gather in the scheduler meanwhile, so one
//!   `fdatasync` covers everything that arrived during the previous one (group commit).
//! - `Scheduler::durable` is called only with an LSN the group-commit thread reported synced
//!   (or at once when there is no checkpoint), so no `Ack`, `TaskDone` or released dependent
//!   ever precedes durability.
//! - A worker known here is known to the scheduler, and the other way round; removing one calls
//!   `worker_left` at once, so its leases return to the queue.
//! - Events from a worker that was removed are ignored (worker ids are never reused).

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant as StdInstant, SystemTime};

use colony_core::proto::{
    BatchBuf, ErrorCode, JobOutcome, LeaseGrant, Message, Platform, Retry, Welcome,
    encode_frame_into,
};
use colony_core::sched::{Action, Answer, CreateJobError, Created, ProtocolError, Scheduler};
use colony_core::{Attempt, Instant, JobId, LeaseId, Lsn, TaskId, WorkerId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};

mod clients;
mod commands;
mod info;

use super::front::Front;
use super::handle::{Command, StopState};
use super::outbox::Outbox;
use super::peer::{self, PeerCtx};
use super::{Progress, ServerConfig, ServerError};
use crate::logfile::{Flushed, GroupCommit};
use crate::net::Transport;

/// Capacity of the queue from connection readers to the engine, in batches.
pub(super) const EVENT_QUEUE: usize = 1024;

/// Batches taken per turn before the engine steps (so it steps, and sends, regularly).
const MAX_DRAIN: usize = 64;

/// Bytes of a `Grant` frame's payload besides its items (variant, count, length), rounded up.
const GRANT_OVERHEAD: usize = 16;

/// Upper bound of a grant item's encoding besides its input bytes (varints of lease, job, task,
/// attempt, kind and the input's length).
const GRANT_ITEM_OVERHEAD: usize = 32;

/// The least backlog a peer may have before it counts as not reading.
const MIN_OUTBOX_CAP: usize = 64 << 20;

/// Messages to the engine that are not connection events.
#[derive(Debug)]
pub(super) enum Control {
    /// The group-commit thread synced (or failed).
    Durable(io::Result<Flushed>),
    /// A handle's request.
    Command(Command),
}

/// A connection's news for the engine.
#[derive(Debug)]
pub(super) enum Event {
    /// A worker passed the handshake.
    Joined(Box<Joined>),
    /// What one read brought from a worker; ranges in `items` index `chunk`.
    Batch {
        worker: WorkerId,
        chunk: Vec<u8>,
        items: Vec<In>,
    },
    /// The worker's connection ended (after its last batch).
    Left {
        worker: WorkerId,
        reason: Option<String>,
    },
    /// A task client's news (see `server/client.rs`).
    Client(super::client::ClientEvent),
    /// An observer asks for status; answer into its outbox.
    Query {
        job: Option<JobId>,
        outbox: Arc<Outbox>,
        max_frame: u32,
    },
}

/// A worker that passed the handshake.
#[derive(Debug)]
pub(super) struct Joined {
    pub(super) name: String,
    pub(super) kinds: Vec<String>,
    pub(super) platform: Platform,
    pub(super) slots: u32,
    pub(super) transport: Transport,
    pub(super) peer: SocketAddr,
    pub(super) max_frame: u32,
    pub(super) outbox: Arc<Outbox>,
    pub(super) reader: AbortHandle,
    pub(super) writer: JoinHandle<()>,
    pub(super) reply: oneshot::Sender<WorkerId>,
}

/// One message from a worker, decoded by its reader.
#[derive(Clone, Debug)]
pub(super) enum In {
    Credit(u32),
    Heartbeat,
    Complete {
        lease: LeaseId,
        output: Range<usize>,
    },
    Fail {
        lease: LeaseId,
        retry: Retry,
        error: Range<usize>,
    },
    Goodbye,
    Query(Option<JobId>),
}

impl In {
    /// Whether the item refers to bytes of its batch's chunk.
    pub(super) fn borrows(&self) -> bool {
        matches!(self, In::Complete { .. } | In::Fail { .. })
    }
}

/// A connected worker, as the engine sees it.
#[derive(Debug)]
struct WorkerConn {
    name: String,
    peer: SocketAddr,
    /// What it announced and how it came, for status reports.
    platform: Platform,
    slots: u32,
    kinds: Vec<String>,
    transport: Transport,
    since: SystemTime,
    last_heartbeat: Option<StdInstant>,
    /// Completions and failures it sent that the scheduler accepted.
    done: u64,
    failed: u64,
    max_frame: u32,
    outbox: Arc<Outbox>,
    /// Frames for this worker produced this turn.
    staged: Vec<u8>,
    /// Grants gathered into the next `Grant` batch.
    grants: BatchBuf,
    /// In the engine's dirty list this turn.
    dirty: bool,
    reader: AbortHandle,
}

impl WorkerConn {
    /// Encodes the gathered grants, if any, as one `Grant` frame into `staged`.
    fn seal_grants(&mut self) {
        if self.grants.is_empty() {
            return;
        }
        let message = Message::Grant(self.grants.as_batch());
        if let Err(e) = encode_frame_into(&message, &mut self.staged) {
            log::error!("cannot encode a grant batch: {e}");
        }
        self.grants.clear();
    }
}

/// How a worker goes away.
enum Removal<'a> {
    /// Its connection ended.
    Left,
    /// It said goodbye.
    Goodbye,
    /// The engine drops it for breaking a rule.
    Dropped { code: ErrorCode, detail: &'a str },
}

/// See the module docs.
pub(super) struct Engine {
    sched: Scheduler,
    config: Arc<ServerConfig>,
    epoch: StdInstant,
    log: Option<GroupCommit>,
    in_flight: bool,
    log_spare: Vec<u8>,
    control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    shutdown: watch::Sender<bool>,
    stop: Arc<StopState>,
    workers: Vec<Option<WorkerConn>>,
    live_workers: usize,
    dirty: Vec<WorkerId>,
    writers: Vec<JoinHandle<()>>,
    progress: Vec<Option<watch::Sender<Progress>>>,
    linger_at: Option<StdInstant>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    fault: Option<io::Error>,
    /// Leases whose input cannot fit in their worker's frames: (worker, lease, input bytes).
    oversized: Vec<(WorkerId, LeaseId, usize)>,
    /// Jobs created whose records are not durable yet: answered once they are. `None` until the
    /// records are handed to the log, then the LSN that must become durable.
    creating: Vec<Creating>,
    /// Task clients, their jobs and their pending replies.
    clients: clients::Clients,
    /// TLS, the monitor and the WebSocket upgrade, for every connection.
    front: Arc<Front>,
}

/// A `create_job` answer waiting for its records to be durable.
#[derive(Debug)]
struct Creating {
    lsn: Option<Lsn>,
    created: Created,
    reply: oneshot::Sender<Result<Created, CreateJobError>>,
}

impl Engine {
    pub(super) fn new(
        sched: Scheduler,
        config: Arc<ServerConfig>,
        log: Option<GroupCommit>,
        control: mpsc::UnboundedReceiver<Control>,
        stop: Arc<StopState>,
        front: Arc<Front>,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (shutdown, _) = watch::channel(false);
        let clients = clients::Clients::new(config.limits_for_clients());
        Engine {
            sched,
            config,
            epoch: StdInstant::now(),
            log,
            in_flight: false,
            log_spare: Vec::new(),
            control,
            events,
            events_tx,
            shutdown,
            stop,
            workers: Vec::new(),
            live_workers: 0,
            dirty: Vec::new(),
            writers: Vec::new(),
            progress: Vec::new(),
            linger_at: None,
            shutdown_waiters: Vec::new(),
            fault: None,
            oversized: Vec::new(),
            creating: Vec::new(),
            clients,
            front,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn to_std(&self, at: Instant) -> Option<StdInstant> {
        self.epoch
            .checked_add(StdDuration::from_micros(at.as_micros()))
    }

    /// Runs until shut down (or a fault), then closes everything cleanly.
    pub(super) async fn run(mut self, listener: TcpListener) -> Result<(), ServerError> {
        let config = &self.config;
        let millis = |d: StdDuration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let ctx = Arc::new(PeerCtx {
            secret: config.secret.clone(),
            max_frame: config.max_frame,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            lease_ms: millis(config.lease),
            heartbeat_ms: millis(config.heartbeat),
            outbox_cap: MIN_OUTBOX_CAP.max(4 * config.max_frame as usize),
            max_connections: config.max_connections,
            calls: config.calls.as_ref().map(|c| c.0.clone()),
            events: self.events_tx.clone(),
            shutdown: self.shutdown.subscribe(),
            front: Arc::clone(&self.front),
        });
        let acceptor = tokio::spawn(peer::accept_loop(listener, ctx));

        self.step();
        let sleep = tokio::time::sleep(StdDuration::from_secs(3600));
        tokio::pin!(sleep);
        while !self.stopping() {
            let deadline = self.deadline();
            if let Some(at) = deadline {
                sleep.as_mut().reset(at.into());
            }
            tokio::select! {
                biased;
                Some(control) = self.control.recv() => self.on_control(control),
                Some(event) = self.events.recv() => self.on_event(event),
                () = &mut sleep, if deadline.is_some() => {}
            }
            for _ in 0..MAX_DRAIN {
                match self.events.try_recv() {
                    Ok(event) => self.on_event(event),
                    Err(_) => break,
                }
            }
            while let Ok(control) = self.control.try_recv() {
                self.on_control(control);
            }
            self.step();
        }
        acceptor.abort();
        self.finish().await
    }

    fn stopping(&self) -> bool {
        self.fault.is_some()
            || !self.shutdown_waiters.is_empty()
            || self.linger_at.is_some_and(|at| at <= StdInstant::now())
    }

    /// The next time the loop must wake on its own.
    fn deadline(&self) -> Option<StdInstant> {
        let lease = self.sched.poll_at().and_then(|at| self.to_std(at));
        let lease = match (lease, self.clients.flush_hold()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (lease, self.linger_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- one turn ----

    fn step(&mut self) {
        let now = self.now();
        loop {
            self.sched.poll(now);
            if !self.flush_log() {
                break;
            }
        }
        self.drain_actions();
        self.send_staged();
        self.send_client_staged();
        self.publish_progress();
        self.update_linger();
    }

    /// Hands new log bytes on. Without a checkpoint they are durable at once: returns `true`
    /// then, as the scheduler may have released work to dispatch.
    fn flush_log(&mut self) -> bool {
        if !self.sched.has_log() {
            return false;
        }
        let Some(commit) = &self.log else {
            self.log_spare.clear();
            if let Some(lsn) = self.sched.take_log(&mut self.log_spare) {
                self.clients.logged(lsn);
                self.clients_durable(lsn);
                self.sched.durable(lsn);
            }
            self.log_spare.clear();
            return true;
        };
        if self.in_flight || self.fault.is_some() || self.clients.holds_flush() {
            return false;
        }
        let mut bytes = std::mem::take(&mut self.log_spare);
        bytes.clear();
        let Some(lsn) = self.sched.take_log(&mut bytes) else {
            self.log_spare = bytes;
            return false;
        };
        for waiting in &mut self.creating {
            waiting.lsn.get_or_insert(lsn);
        }
        self.clients.logged(lsn);
        match commit.submit(bytes, lsn) {
            Ok(()) => self.in_flight = true,
            Err(_) => {
                self.fail(io::Error::other("the checkpoint writer thread stopped"));
            }
        }
        false
    }

    fn fail(&mut self, e: io::Error) {
        log::error!("checkpoint write failed, stopping the server: {e}");
        self.stop.set(format!("checkpoint write failed: {e}"));
        self.fault = Some(e);
    }

    fn on_durable(&mut self, flushed: io::Result<Flushed>) {
        self.in_flight = false;
        match flushed {
            Ok(f) => {
                self.log_spare = f.spare;
                self.clients_durable(f.lsn);
                self.sched.durable(f.lsn);
                let (ready, waiting) = std::mem::take(&mut self.creating)
                    .into_iter()
                    .partition(|c| c.lsn.is_some_and(|lsn| lsn <= f.lsn));
                self.creating = waiting;
                for c in ready {
                    let _ = c.reply.send(Ok(c.created));
                }
            }
            Err(e) => self.fail(e),
        }
    }

    fn mark_dirty(dirty: &mut Vec<WorkerId>, worker: WorkerId, conn: &mut WorkerConn) {
        if !conn.dirty {
            conn.dirty = true;
            dirty.push(worker);
        }
    }

    /// Encodes `message` into `worker`'s staged frames.
    fn stage(&mut self, worker: WorkerId, message: &Message<'_>) {
        let Some(Some(conn)) = self.workers.get_mut(worker.0 as usize) else {
            return;
        };
        conn.seal_grants();
        if let Err(e) = encode_frame_into(message, &mut conn.staged) {
            log::error!("cannot encode {}: {e}", message.name());
        }
        Self::mark_dirty(&mut self.dirty, worker, conn);
    }

    fn drain_actions(&mut self) {
        loop {
            while let Some(action) = self.sched.pop_action() {
                match action {
                    Action::Grant {
                        worker,
                        lease,
                        job,
                        task,
                        attempt,
                        kind,
                    } => self.grant(worker, lease, job, task, attempt, kind),
                    Action::Ack { worker, lease } => self.stage(worker, &Message::Ack { lease }),
                    Action::TaskDone { job, task } | Action::TaskFailed { job, task } => {
                        self.client_result(job, task);
                    }
                    Action::JobFinished { job } => {
                        if let Some(p) = self.sched.progress(job) {
                            log::info!(
                                "{job} ({:?}) finished: {} done, {} failed",
                                self.sched.job_name(job).unwrap_or_default(),
                                p.done,
                                p.failed
                            );
                        }
                        self.broadcast_finished(job);
                        self.client_job_finished(job);
                    }
                }
            }
            if self.oversized.is_empty() {
                return;
            }
            for (worker, lease, len) in std::mem::take(&mut self.oversized) {
                let max = self
                    .workers
                    .get(worker.0 as usize)
                    .and_then(Option::as_ref)
                    .map_or(0, |c| c.max_frame);
                let error = format!(
                    "the task's input of {len} bytes does not fit in the worker's frames of {max} bytes"
                );
                log::warn!("{worker}: {error}");
                let _ = self.sched.fail(worker, lease, Retry::Permanent, &error);
            }
        }
    }

    fn grant(
        &mut self,
        worker: WorkerId,
        lease: LeaseId,
        job: JobId,
        task: TaskId,
        attempt: Attempt,
        kind: u16,
    ) {
        let Some(Some(conn)) = self.workers.get_mut(worker.0 as usize) else {
            return;
        };
        let input = self.sched.input(job, task).unwrap_or_default();
        let limit = (conn.max_frame as usize).saturating_sub(GRANT_OVERHEAD);
        let item = GRANT_ITEM_OVERHEAD + input.len();
        if item > limit {
            self.oversized.push((worker, lease, input.len()));
            return;
        }
        if conn.grants.encoded_len() + item > limit {
            conn.seal_grants();
        }
        let pushed = conn.grants.push(&LeaseGrant {
            lease,
            job,
            task,
            attempt,
            kind,
            input,
        });
        if let Err(e) = pushed {
            log::error!("cannot encode a grant: {e}");
        }
        Self::mark_dirty(&mut self.dirty, worker, conn);
    }

    fn broadcast_finished(&mut self, job: JobId) {
        let message = Message::JobFinished {
            job,
            outcome: JobOutcome::Finished,
        };
        for i in 0..self.workers.len() {
            if self.workers.get(i).is_some_and(Option::is_some) {
                self.stage(WorkerId(i as u32), &message);
            }
        }
    }

    /// Moves every dirty worker's staged frames to its outbox.
    fn send_staged(&mut self) {
        let mut slow = Vec::new();
        for worker in std::mem::take(&mut self.dirty) {
            let Some(Some(conn)) = self.workers.get_mut(worker.0 as usize) else {
                continue;
            };
            conn.dirty = false;
            conn.seal_grants();
            if let Err(overflow) = conn.outbox.push_staged(&mut conn.staged) {
                slow.push((worker, overflow.backlog));
            }
        }
        for (worker, backlog) in slow {
            let detail = format!("not reading: {backlog} bytes waiting to be sent");
            self.remove_worker(
                worker,
                Removal::Dropped {
                    code: ErrorCode::LimitExceeded,
                    detail: &detail,
                },
            );
        }
    }

    fn publish_progress(&mut self) {
        for (i, sender) in self.progress.iter().enumerate() {
            let Some(sender) = sender else { continue };
            let Some(now) = self.sched.progress(JobId(i as u32)) else {
                continue;
            };
            sender.send_if_modified(|p| {
                let changed = *p != now;
                *p = now;
                changed
            });
        }
    }

    fn update_linger(&mut self) {
        let Some(linger) = self.config.linger else {
            return;
        };
        let settled = self.sched.all_finished() && !self.in_flight && !self.sched.has_log();
        if !settled {
            self.linger_at = None;
        } else if self.linger_at.is_none() {
            log::info!("every job finished; stopping in {linger:?}");
            self.linger_at = Some(StdInstant::now() + linger);
        }
    }

    // ---- inputs ----

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Durable(flushed) => self.on_durable(flushed),
            Control::Command(command) => self.on_command(command),
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Joined(joined) => self.on_joined(*joined),
            Event::Batch {
                worker,
                chunk,
                items,
            } => self.on_batch(worker, &chunk, items),
            Event::Left { worker, reason } => {
                if let Some(Some(conn)) = self.workers.get(worker.0 as usize) {
                    let held = self.sched.held_by(worker);
                    log::info!(
                        "{worker} {:?} at {} left{}; {held} leases go back to the queue",
                        conn.name,
                        conn.peer,
                        reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    );
                    self.remove_worker(worker, Removal::Left);
                }
            }
            Event::Client(event) => self.on_client_event(event),
            Event::Query {
                job,
                outbox,
                max_frame,
            } => {
                let mut statuses = BatchBuf::new();
                self.fill_status(job, &mut statuses, max_frame as usize);
                if let Err(overflow) = outbox.push(&Message::Status(statuses.as_batch())) {
                    let detail =
                        format!("not reading: {} bytes waiting to be sent", overflow.backlog);
                    outbox.close(Some(&Message::Error {
                        code: ErrorCode::LimitExceeded,
                        detail: &detail,
                    }));
                }
            }
        }
    }

    fn on_joined(&mut self, joined: Joined) {
        // A worker built from other items or code than a running job's is refused before it
        // touches the scheduler: it would otherwise idle for ever, waiting for tasks it never gets.
        if let Err(conflict) = self
            .sched
            .check_kinds(joined.kinds.iter().map(String::as_str))
        {
            log::warn!(
                "worker {:?} at {} refused: {conflict}",
                joined.name,
                joined.peer
            );
            let detail = conflict.to_string();
            joined.outbox.close(Some(&Message::Error {
                code: ErrorCode::FingerprintMismatch,
                detail: &detail,
            }));
            self.writers.push(joined.writer);
            return;
        }
        let worker = self
            .sched
            .worker_joined(joined.kinds.iter().map(String::as_str));
        self.clients.worker_joined(worker, &joined.kinds);
        let index = worker.0 as usize;
        if self.workers.len() <= index {
            self.workers.resize_with(index + 1, || None);
        }
        let millis = |d: StdDuration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let mut conn = WorkerConn {
            name: joined.name,
            peer: joined.peer,
            platform: joined.platform,
            slots: joined.slots,
            kinds: joined.kinds,
            transport: joined.transport,
            since: SystemTime::now(),
            last_heartbeat: None,
            done: 0,
            failed: 0,
            max_frame: joined.max_frame,
            outbox: joined.outbox,
            staged: Vec::new(),
            grants: BatchBuf::new(),
            dirty: false,
            reader: joined.reader,
        };
        let welcome = Message::Welcome(Welcome {
            worker,
            lease_ms: millis(self.config.lease),
            heartbeat_ms: millis(self.config.heartbeat),
        });
        // Straight to the outbox, before the reader learns the id and may echo a heartbeat:
        // `Welcome` must be the first frame after the handshake.
        let _ = encode_frame_into(&welcome, &mut conn.staged);
        if self.sched.all_finished() {
            for job in self.sched.job_ids() {
                let finished = Message::JobFinished {
                    job,
                    outcome: JobOutcome::Finished,
                };
                let _ = encode_frame_into(&finished, &mut conn.staged);
            }
        }
        let _ = conn.outbox.push_staged(&mut conn.staged);
        if let Some(slot) = self.workers.get_mut(index) {
            *slot = Some(conn);
        }
        self.live_workers += 1;
        if self.writers.len() > 2 * self.live_workers + 16 {
            self.writers.retain(|w| !w.is_finished());
        }
        self.writers.push(joined.writer);
        let _ = joined.reply.send(worker);
    }

    fn on_batch(&mut self, worker: WorkerId, chunk: &[u8], items: Vec<In>) {
        // A worker's news may be a completion: no reason to hold a flush back any more.
        self.clients.release_flush();
        if !self
            .workers
            .get(worker.0 as usize)
            .is_some_and(Option::is_some)
        {
            return;
        }
        let now = self.now();
        let (mut done, mut failed, mut beat) = (0, 0, false);
        for item in items {
            let result = match item {
                In::Credit(count) => self.sched.credit(worker, count),
                In::Heartbeat => {
                    self.sched.heartbeat(now, worker);
                    beat = true;
                    Ok(())
                }
                In::Complete { lease, output } => self
                    .sched
                    .complete(worker, lease, chunk.get(output).unwrap_or_default())
                    .map(|answer| done += u64::from(answer == Answer::Accepted)),
                In::Fail {
                    lease,
                    retry,
                    error,
                } => {
                    let text = chunk
                        .get(error)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .unwrap_or("(unreadable error text)");
                    self.sched
                        .fail(worker, lease, retry, text)
                        .map(|answer| failed += u64::from(answer == Answer::Accepted))
                }
                In::Goodbye => {
                    self.remove_worker(worker, Removal::Goodbye);
                    return;
                }
                In::Query(job) => {
                    let max = self
                        .workers
                        .get(worker.0 as usize)
                        .and_then(Option::as_ref)
                        .map_or(0, |c| c.max_frame as usize);
                    let mut statuses = BatchBuf::new();
                    self.fill_status(job, &mut statuses, max);
                    self.stage(worker, &Message::Status(statuses.as_batch()));
                    Ok(())
                }
            };
            match result {
                Ok(()) => {}
                Err(ProtocolError::UnknownWorker(_)) => return,
                Err(e) => {
                    let code = match e {
                        ProtocolError::CreditLimit { .. } => ErrorCode::LimitExceeded,
                        _ => ErrorCode::BadMessage,
                    };
                    let detail = e.to_string();
                    if let Some(Some(conn)) = self.workers.get(worker.0 as usize) {
                        log::warn!(
                            "{worker} {:?} at {} dropped: {detail}",
                            conn.name,
                            conn.peer
                        );
                    }
                    self.remove_worker(
                        worker,
                        Removal::Dropped {
                            code,
                            detail: &detail,
                        },
                    );
                    return;
                }
            }
        }
        if let Some(Some(conn)) = self.workers.get_mut(worker.0 as usize) {
            conn.done += done;
            conn.failed += failed;
            if beat {
                conn.last_heartbeat = Some(StdInstant::now());
            }
        }
    }

    fn remove_worker(&mut self, worker: WorkerId, how: Removal<'_>) {
        let Some(conn) = self
            .workers
            .get_mut(worker.0 as usize)
            .and_then(Option::take)
        else {
            return;
        };
        self.live_workers = self.live_workers.saturating_sub(1);
        self.sched.worker_left(worker);
        self.clients.worker_left(worker);
        match how {
            Removal::Left | Removal::Goodbye => conn.outbox.close(None),
            Removal::Dropped { code, detail } => {
                conn.outbox.close(Some(&Message::Error { code, detail }));
                conn.reader.abort();
            }
        }
    }

    // ---- the end ----

    /// Says goodbye to every peer, makes every record durable and closes the log.
    async fn finish(mut self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        // Stop reading, then apply what workers sent before that, so completions that arrived
        // are recorded.
        for conn in self.workers.iter().flatten() {
            conn.reader.abort();
        }
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Joined(joined) => {
                    joined.outbox.close(Some(&Message::ServerGoingAway));
                    joined.reader.abort();
                    self.writers.push(joined.writer);
                }
                other => self.on_event(other),
            }
        }
        self.drain_actions();
        for i in 0..self.workers.len() {
            let Some(mut conn) = self.workers.get_mut(i).and_then(Option::take) else {
                continue;
            };
            conn.seal_grants();
            let _ = conn.outbox.push_staged(&mut conn.staged);
            conn.outbox.close(Some(&Message::ServerGoingAway));
            conn.reader.abort();
        }
        self.live_workers = 0;
        self.close_clients();

        while self.fault.is_none() && (self.in_flight || self.sched.has_log()) {
            self.flush_log();
            if !self.in_flight {
                continue;
            }
            match self.control.recv().await {
                Some(Control::Durable(flushed)) => self.on_durable(flushed),
                Some(Control::Command(Command::Shutdown { reply })) => {
                    self.shutdown_waiters.push(reply);
                }
                // Dropping the reply tells the caller the server stopped.
                Some(Control::Command(_)) => {}
                None => break,
            }
            while self.sched.pop_action().is_some() {}
        }
        self.publish_progress();
        if let Some(commit) = self.log.take() {
            let fsyncs = commit.fsyncs();
            let _ = tokio::task::spawn_blocking(move || commit.close()).await;
            log::info!("checkpoint closed after {fsyncs} syncs");
        }
        let deadline = tokio::time::Instant::now() + StdDuration::from_secs(1);
        for writer in std::mem::take(&mut self.writers) {
            let _ = tokio::time::timeout_at(deadline, writer).await;
        }
        self.progress.clear();
        match self.fault.take() {
            Some(e) => Err(ServerError::Log(e)),
            None => {
                for waiter in self.shutdown_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                log::info!("server stopped");
                Ok(())
            }
        }
    }
}
