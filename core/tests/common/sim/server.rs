//! The server's side of the glue: the part of a transport that turns worker frames into
//! scheduler calls and scheduler actions into frames (the log lives in `life.rs`).
//!
//! Invariants it checks as it goes: a grant goes only to a connected worker, within the credit it
//! asked for, with the task's real input and kind, never for a durably settled task and never
//! before every predecessor's completion is durable; an acknowledgement of a completion, and a
//! result reported to clients, only once its record is durable; an answer is accepted exactly
//! when the glue still counts its lease live; no lease outlives its deadline and none ends
//! before it without an answer or a disconnect.

use std::collections::BTreeMap;

use colony_core::proto::{
    BatchBuf, Decoded, FrameDecoder, HEADER_LEN, JobOutcome, LeaseGrant, Message, Role,
    ServerHandshake, Welcome, decode_message, encode_frame_into,
};
use colony_core::sched::{Action, Answer, Scheduler, TaskState};
use colony_core::{Attempt, JobId, LeaseId, Lsn, TaskId, WorkerId};

use super::check::{Check, Oracle, bail};
use super::{Dir, HEARTBEAT_US, IDLE_US, LEASE_US, Mode, SECRET, World};

/// A lease the glue sent and nobody answered yet.
#[derive(Clone, Copy, Debug)]
struct Live {
    job: usize,
    task: u32,
    attempt: Attempt,
    granted_at: u64,
}

/// What a worker answered for a lease, waiting for its `Ack`.
#[derive(Clone, Copy, Debug)]
enum Answered {
    Done { job: usize, task: u32 },
    Failed { job: usize, task: u32 },
    Stale,
}

/// One connection as the server sees it.
#[derive(Debug)]
pub(crate) struct Conn {
    handshake: ServerHandshake,
    rx: Vec<u8>,
    worker: Option<WorkerId>,
    kinds: Vec<String>,
    slots: u32,
    max_frame: u32,
    /// Credit the worker asked for, in all.
    credit_in: u64,
    /// Leases sent to it, in all.
    granted_out: u64,
    /// When its last heartbeat was handled.
    last_heartbeat: u64,
    /// When its last frame arrived (or it connected).
    last_rx: u64,
    /// No live lease of it has a deadline before this (a lower bound).
    next_deadline: u64,
    live: BTreeMap<LeaseId, Live>,
    answered: BTreeMap<LeaseId, Answered>,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            handshake: ServerHandshake::new(colony_core::proto::DEFAULT_MAX_FRAME),
            rx: Vec::new(),
            worker: None,
            kinds: Vec::new(),
            slots: 0,
            max_frame: 0,
            credit_in: 0,
            granted_out: 0,
            last_heartbeat: 0,
            last_rx: 0,
            next_deadline: u64::MAX,
            live: BTreeMap::new(),
            answered: BTreeMap::new(),
        }
    }
}

/// The server process: everything here is lost in a crash.
pub(crate) struct Server {
    pub(crate) sched: Scheduler,
    conns: BTreeMap<u64, Conn>,
    by_worker: BTreeMap<WorkerId, u64>,
    /// Log bytes taken from the scheduler and not yet written (an fsync is in flight).
    pub(super) log_buf: Vec<u8>,
    pub(super) log_lsn: Option<Lsn>,
    /// The fsync in flight: the last record it covers, and when it completes.
    pub(super) fsync: Option<(Lsn, u64)>,
}

impl Server {
    pub(super) fn new(sched: Scheduler) -> Server {
        Server {
            sched,
            conns: BTreeMap::new(),
            by_worker: BTreeMap::new(),
            log_buf: Vec::new(),
            log_lsn: None,
            fsync: None,
        }
    }

    /// A connection arrives at `now`.
    pub(crate) fn accept(&mut self, link: u64, now: u64) {
        let mut conn = Conn::new();
        conn.last_rx = now;
        self.conns.insert(link, conn);
    }

    /// When the next connection turns idle, if idle connections are dropped.
    pub(crate) fn idle_at(&self) -> Option<u64> {
        self.conns.values().map(|c| c.last_rx + IDLE_US).min()
    }

    /// When the fsync in flight completes.
    pub(crate) fn fsync_at(&self) -> Option<u64> {
        self.fsync.map(|(_, at)| at)
    }

    /// The earliest deadline of a lease the glue counts live, by the glue's own reckoning.
    pub(crate) fn lease_deadline(&self) -> Option<u64> {
        self.conns
            .values()
            .map(|c| c.next_deadline)
            .min()
            .filter(|&t| t < u64::MAX)
    }

    /// The cheap invariants: credit and lease counts; with `cross`, the scheduler's counters
    /// against the durable log too.
    pub(crate) fn check(&self, oracle: &Oracle, ids: &[Option<JobId>], cross: bool) -> Check {
        let mut held_total = 0u64;
        for c in self.conns.values() {
            let Some(w) = c.worker else { continue };
            if c.granted_out > c.credit_in {
                bail!(
                    "{w} was sent {} leases but asked for {}",
                    c.granted_out,
                    c.credit_in
                );
            }
            let (held, credit) = (self.sched.held_by(w), self.sched.credit_of(w));
            if cross && u64::from(held) + u64::from(credit) > u64::from(c.slots) {
                bail!(
                    "{w} holds {held} leases plus {credit} credit, beyond its {} slots",
                    c.slots
                );
            }
            if held as usize != c.live.len() {
                bail!(
                    "the scheduler says {w} holds {held} leases; {} were sent and not answered",
                    c.live.len()
                );
            }
            held_total += u64::from(held);
        }
        let mut running = 0u64;
        for (j, id) in ids.iter().enumerate() {
            let Some(id) = *id else { continue };
            let Some(p) = self.sched.progress(id) else {
                bail!("job {j} ({id}) is unknown to the scheduler");
            };
            running += u64::from(p.running);
            if !cross {
                continue;
            }
            let d = &oracle.durable;
            if p.done != d.done_count[j] || p.failed != d.failed_count[j] {
                bail!(
                    "job {j}: the scheduler counts {} done and {} failed, the durable log {} and {}",
                    p.done,
                    p.failed,
                    d.done_count[j],
                    d.failed_count[j]
                );
            }
            if p.finished != d.finished[j] {
                bail!(
                    "job {j}: finished is {} but the durable log says {}",
                    p.finished,
                    d.finished[j]
                );
            }
        }
        if running != held_total {
            bail!("{running} tasks run, but connected workers hold {held_total} leases");
        }
        Ok(())
    }

    /// Every task's state against the durable log, and done outputs against the truth.
    pub(crate) fn check_tasks(&self, oracle: &Oracle, ids: &[Option<JobId>]) -> Check {
        for (j, id) in ids.iter().enumerate() {
            let Some(id) = *id else { continue };
            let job = &oracle.jobs[j];
            let mut leased = 0;
            for t in 0..job.tasks() {
                let state = self.sched.task_state(id, TaskId(t));
                if oracle.done(j, t) != (state == Some(TaskState::Done)) {
                    bail!(
                        "job {j} task {t} is {state:?}; durably done: {}",
                        oracle.done(j, t)
                    );
                }
                if oracle.failed(j, t) != (state == Some(TaskState::Failed)) {
                    bail!(
                        "job {j} task {t} is {state:?}; durably failed: {}",
                        oracle.failed(j, t)
                    );
                }
                if state == Some(TaskState::Done)
                    && self.sched.output(id, TaskId(t)) != job.expected(t)
                {
                    bail!("job {j} task {t} holds a wrong output");
                }
                leased += u32::from(state == Some(TaskState::Leased));
            }
            let running = self.sched.progress(id).map_or(0, |p| p.running);
            if leased != running {
                bail!("job {j}: {leased} tasks are leased but {running} run");
            }
        }
        Ok(())
    }
}

impl World {
    fn job_index(&self, id: JobId) -> Check<usize> {
        match self.job_ids.iter().position(|j| *j == Some(id)) {
            Some(j) => Ok(j),
            None => bail!("the scheduler names {id}, which no job has"),
        }
    }

    // ---- connections ----

    /// The server drops connection `link` (the worker's leases go back to the queue).
    pub(super) fn server_close(&mut self, s: &mut Server, link: u64) {
        if let Some(c) = s.conns.remove(&link)
            && let Some(w) = c.worker
        {
            s.sched.worker_left(w);
            s.by_worker.remove(&w);
            trace!(self, "server drops {w} (link {link})");
        }
    }

    /// Delivers due bytes to the server, and closes connections the workers closed.
    pub(super) fn deliver_to_server(&mut self) -> Check {
        self.with_server(|w, s| {
            let ids: Vec<u64> = w.links.keys().copied().collect();
            for id in ids {
                let now = w.now;
                while let Some(bytes) = w.links.get_mut(&id).and_then(|l| l.to_server.pop_due(now))
                {
                    w.server_receive(s, id, &bytes)?;
                }
                if w.links
                    .get(&id)
                    .is_some_and(|l| l.worker_closed && l.to_server.is_empty() && !l.black_hole)
                {
                    w.server_close(s, id);
                    w.forget_link(id);
                }
            }
            Ok(())
        })
        .unwrap_or(Ok(()))
    }

    fn server_receive(&mut self, s: &mut Server, link: u64, bytes: &[u8]) -> Check {
        let Some(c) = s.conns.get_mut(&link) else {
            return Ok(());
        };
        c.rx.extend_from_slice(bytes);
        loop {
            let Some(c) = s.conns.get_mut(&link) else {
                return Ok(());
            };
            let (len, payload) = match FrameDecoder::new(c.handshake.max_frame()).decode(&c.rx) {
                Ok(Decoded::Incomplete { .. }) => return Ok(()),
                Ok(Decoded::Frame(frame)) => (frame.frame_len(), frame.payload().to_vec()),
                Err(e) => bail!("server: bad frame on link {link}: {e}"),
            };
            c.rx.drain(..len);
            c.last_rx = self.now;
            let message = decode_message(&payload)
                .map_err(|e| format!("server: undecodable frame on link {link}: {e}"))?;
            self.server_message(s, link, &message)?;
        }
    }

    fn server_message(&mut self, s: &mut Server, link: u64, message: &Message<'_>) -> Check {
        let now = self.now;
        let Some(c) = s.conns.get_mut(&link) else {
            return Ok(());
        };
        match (message, c.worker) {
            (Message::ClientHello(hello), None) => {
                let nonce = self.rng.bytes();
                let reply = c
                    .handshake
                    .hello(SECRET, hello, nonce)
                    .map_err(|e| format!("server: handshake on link {link}: {e}"))?;
                self.send_msg(link, &Message::ServerHello(reply))?;
            }
            (Message::Join(join), None) => {
                c.handshake
                    .join(SECRET, join)
                    .map_err(|e| format!("server: join on link {link}: {e}"))?;
                let Role::Worker(hello) = &join.role else {
                    bail!("server: link {link} joined as {:?}", join.role);
                };
                let kinds = hello
                    .kinds
                    .iter()
                    .collect::<Result<Vec<&str>, _>>()
                    .map_err(|e| format!("server: bad kinds on link {link}: {e}"))?;
                let w = s.sched.worker_joined(kinds.iter().copied());
                c.worker = Some(w);
                c.kinds = kinds.iter().map(|k| (*k).to_string()).collect();
                c.slots = hello.slots;
                c.max_frame = c.handshake.max_frame();
                c.last_heartbeat = now;
                s.by_worker.insert(w, link);
                self.stats.handshakes += 1;
                trace!(
                    self,
                    "server welcomes {:?} as {w} on link {link}", hello.name
                );
                let welcome = Welcome {
                    worker: w,
                    lease_ms: (LEASE_US / 1000) as u32,
                    heartbeat_ms: (HEARTBEAT_US / 1000) as u32,
                };
                self.send_msg(link, &Message::Welcome(welcome))?;
            }
            (Message::Credit { count }, Some(w)) => {
                let given = if self.mode == Mode::InflateCredit {
                    count.saturating_mul(2)
                } else {
                    *count
                };
                s.sched
                    .credit(w, given)
                    .map_err(|e| format!("server refused credit from {w}: {e}"))?;
                c.credit_in += u64::from(*count);
            }
            (Message::Heartbeat, Some(w)) => {
                s.sched.heartbeat(self.instant(), w);
                c.last_heartbeat = now;
                self.send_msg(link, &Message::Heartbeat)?;
            }
            (Message::Complete { lease, output }, Some(w)) => {
                let live = c.live.remove(lease);
                let answer = s
                    .sched
                    .complete(w, *lease, output)
                    .map_err(|e| format!("server refused a completion from {w}: {e}"))?;
                let answered = match (live, answer) {
                    (Some(l), Answer::Accepted) => {
                        if self.oracle.jobs[l.job].expected(l.task) != Some(*output) {
                            bail!(
                                "{w} completed job {} task {} with a wrong output",
                                l.job,
                                l.task
                            );
                        }
                        Answered::Done {
                            job: l.job,
                            task: l.task,
                        }
                    }
                    (None, Answer::Stale) => {
                        self.stats.stale_answers += 1;
                        Answered::Stale
                    }
                    (live, answer) => bail!(
                        "completion of {lease}: live for the glue: {}, the scheduler says {answer:?}",
                        live.is_some()
                    ),
                };
                c.answered.insert(*lease, answered);
            }
            (
                Message::Fail {
                    lease,
                    retry,
                    error,
                },
                Some(w),
            ) => {
                let live = c.live.remove(lease);
                let answer = s
                    .sched
                    .fail(w, *lease, *retry, error)
                    .map_err(|e| format!("server refused a failure from {w}: {e}"))?;
                let answered = match (live, answer) {
                    (Some(l), Answer::Accepted) => Answered::Failed {
                        job: l.job,
                        task: l.task,
                    },
                    (None, Answer::Stale) => {
                        self.stats.stale_answers += 1;
                        Answered::Stale
                    }
                    (live, answer) => bail!(
                        "failure of {lease}: live for the glue: {}, the scheduler says {answer:?}",
                        live.is_some()
                    ),
                };
                c.answered.insert(*lease, answered);
            }
            (Message::Goodbye | Message::Error { .. }, _) => {
                self.server_close(s, link);
            }
            (other, _) => bail!("server: unexpected {} on link {link}", other.name()),
        }
        Ok(())
    }

    fn send_msg(&mut self, link: u64, message: &Message<'_>) -> Check {
        let mut frame = Vec::new();
        encode_frame_into(message, &mut frame)
            .map_err(|e| format!("server: cannot encode {}: {e}", message.name()))?;
        self.stats.frames += 1;
        self.send(link, Dir::ToWorker, frame);
        Ok(())
    }

    // ---- time and actions ----

    /// The server's turn: drop idle connections, expire leases, hand out work, send actions,
    /// write the log.
    pub(super) fn server_phase(&mut self) -> Check {
        let idle = self
            .with_server(|w, s| {
                let idle = w.drop_idle(s);
                s.sched.poll(w.instant());
                w.scan_leases(s)?;
                w.drain_actions(s)?;
                w.pump_log(s)?;
                Ok::<_, String>(idle)
            })
            .unwrap_or(Ok(Vec::new()))?;
        for link in idle {
            // The worker learns of the close (unless the link is half-open: it finds out itself).
            if self.links.get(&link).is_some_and(|l| !l.black_hole) {
                self.forget_link(link);
            }
        }
        Ok(())
    }

    /// Drops connections silent for too long, as a transport does; returns their links.
    fn drop_idle(&mut self, s: &mut Server) -> Vec<u64> {
        if !self.idle_drop {
            return Vec::new();
        }
        let now = self.now;
        let idle: Vec<u64> = s
            .conns
            .iter()
            .filter(|(_, c)| c.last_rx + IDLE_US <= now)
            .map(|(l, _)| *l)
            .collect();
        for &link in &idle {
            self.server_close(s, link);
            self.stats.idle_drops += 1;
            trace!(self, "server drops link {link}: silent for too long");
        }
        idle
    }

    /// Finds leases that ended without an answer (expired), and checks every deadline.
    fn scan_leases(&mut self, s: &mut Server) -> Check {
        let now = self.now;
        for (link, c) in &mut s.conns {
            // Only a deadline that passed, or a lease count that changed, can end a lease; the
            // count is compared after every step, so nothing ends unseen.
            let held = c.worker.map_or(0, |w| s.sched.held_by(w) as usize);
            if now < c.next_deadline && held == c.live.len() {
                continue;
            }
            c.next_deadline = u64::MAX;
            let mut ended = Vec::new();
            for (lease, l) in &c.live {
                let Some(id) = self.job_ids[l.job] else {
                    bail!("a lease of job {} before the job exists", l.job);
                };
                let task = TaskId(l.task);
                let live = s.sched.task_state(id, task) == Some(TaskState::Leased)
                    && s.sched.attempt(id, task) == Some(l.attempt);
                let deadline = l.granted_at.max(c.last_heartbeat) + LEASE_US;
                if live && deadline <= now {
                    bail!(
                        "{lease} (job {} task {}) outlived its deadline by {} us",
                        l.job,
                        l.task,
                        now - deadline
                    );
                }
                if !live && deadline > now {
                    bail!(
                        "{lease} (job {} task {}, link {link}) ended {} us before its deadline",
                        l.job,
                        l.task,
                        deadline - now
                    );
                }
                if live {
                    c.next_deadline = c.next_deadline.min(deadline);
                } else {
                    ended.push(*lease);
                }
            }
            for lease in ended {
                c.live.remove(&lease);
                self.stats.expiries += 1;
                trace!(self, "{lease} on link {link} expired");
            }
        }
        Ok(())
    }

    /// Turns the scheduler's actions into frames, checking each against the durable log.
    fn drain_actions(&mut self, s: &mut Server) -> Check {
        let now = self.now;
        let mut batch: Option<(u64, BatchBuf)> = None;
        while let Some(action) = s.sched.pop_action() {
            match action {
                Action::Grant {
                    worker,
                    lease,
                    job,
                    task,
                    attempt,
                    kind,
                } => {
                    let j = self.job_index(job)?;
                    let t = task.0;
                    let sim = &self.oracle.jobs[j];
                    if let Some(&p) = sim.preds[t as usize]
                        .iter()
                        .find(|&&p| !self.oracle.done(j, p))
                    {
                        bail!(
                            "job {j} task {t} granted before its predecessor {p} was durably done"
                        );
                    }
                    if self.oracle.done(j, t) || self.oracle.failed(j, t) {
                        bail!("job {j} task {t} granted again after it durably settled");
                    }
                    let Some(&link) = s.by_worker.get(&worker) else {
                        bail!("{lease} granted to {worker}, which is not connected");
                    };
                    let Some(c) = s.conns.get_mut(&link) else {
                        bail!("{worker} has no connection");
                    };
                    c.granted_out += 1;
                    if c.granted_out > c.credit_in {
                        bail!(
                            "{worker} is sent lease {} but asked for {}",
                            c.granted_out,
                            c.credit_in
                        );
                    }
                    if c.kinds.get(usize::from(kind)).map(String::as_str) != Some(sim.kind) {
                        bail!(
                            "grant of job {j} names kind #{kind} of {worker}'s {:?}",
                            c.kinds
                        );
                    }
                    let input = s.sched.input(job, task).unwrap_or_default();
                    if input != sim.input(t) {
                        bail!("the scheduler gives job {j} task {t} a wrong input");
                    }
                    c.next_deadline = c.next_deadline.min(now + LEASE_US);
                    c.live.insert(
                        lease,
                        Live {
                            job: j,
                            task: t,
                            attempt,
                            granted_at: now,
                        },
                    );
                    self.stats.grants += 1;
                    self.stats.reissued += u64::from(attempt.0 > 0);
                    let item = LeaseGrant {
                        lease,
                        job,
                        task,
                        attempt,
                        kind,
                        input,
                    };
                    let room = c.max_frame as usize;
                    let full = batch.as_ref().is_some_and(|(l, b)| {
                        *l != link || b.encoded_len() + input.len() + 64 > room
                    });
                    if full && let Some((l, b)) = batch.take() {
                        self.send_grant(l, &b)?;
                    }
                    batch
                        .get_or_insert_with(|| (link, BatchBuf::new()))
                        .1
                        .push(&item)
                        .map_err(|e| format!("server: cannot encode a grant: {e}"))?;
                }
                Action::Ack { worker, lease } => {
                    if let Some((l, b)) = batch.take() {
                        self.send_grant(l, &b)?;
                    }
                    let Some(&link) = s.by_worker.get(&worker) else {
                        continue; // it left; the ack goes nowhere
                    };
                    let Some(c) = s.conns.get_mut(&link) else {
                        continue;
                    };
                    match c.answered.remove(&lease) {
                        None => bail!("ack of {lease} to {worker}, which never answered it"),
                        Some(Answered::Done { job, task }) => {
                            if !self.oracle.done(job, task) {
                                bail!(
                                    "completion of job {job} task {task} acknowledged before it was durable"
                                );
                            }
                        }
                        Some(Answered::Failed { job, task }) => {
                            let id = self.job_ids[job].unwrap_or_default();
                            if s.sched.task_state(id, TaskId(task)) == Some(TaskState::Failing) {
                                bail!(
                                    "failure of job {job} task {task} acknowledged before it was durable"
                                );
                            }
                        }
                        Some(Answered::Stale) => {}
                    }
                    self.send_msg(link, &Message::Ack { lease })?;
                }
                Action::TaskDone { job, task } => {
                    let j = self.job_index(job)?;
                    if !self.oracle.done(j, task.0) {
                        bail!(
                            "job {j} task {} reported done before it was durable",
                            task.0
                        );
                    }
                    if s.sched.output(job, task) != self.oracle.jobs[j].expected(task.0) {
                        bail!("job {j} task {} reported done with a wrong output", task.0);
                    }
                }
                Action::TaskFailed { job, task } => {
                    let j = self.job_index(job)?;
                    if !self.oracle.failed(j, task.0) {
                        bail!(
                            "job {j} task {} reported failed before it was durable",
                            task.0
                        );
                    }
                }
                Action::JobFinished { job } => {
                    if let Some((l, b)) = batch.take() {
                        self.send_grant(l, &b)?;
                    }
                    let j = self.job_index(job)?;
                    if !self.oracle.durable.finished[j] {
                        bail!("job {j} reported finished before it was durable");
                    }
                    self.event(format!("job {j} finished"));
                    let links: Vec<u64> = s
                        .conns
                        .iter()
                        .filter(|(_, c)| c.worker.is_some())
                        .map(|(l, _)| *l)
                        .collect();
                    for link in links {
                        let outcome = JobOutcome::Finished;
                        self.send_msg(link, &Message::JobFinished { job, outcome })?;
                    }
                }
            }
        }
        if let Some((l, b)) = batch.take() {
            self.send_grant(l, &b)?;
        }
        Ok(())
    }

    fn send_grant(&mut self, link: u64, batch: &BatchBuf) -> Check {
        let mut frame = Vec::new();
        encode_frame_into(&Message::Grant(batch.as_batch()), &mut frame)
            .map_err(|e| format!("server: cannot encode a grant: {e}"))?;
        debug_assert!(frame.len() > HEADER_LEN);
        self.stats.frames += 1;
        self.send(link, Dir::ToWorker, frame);
        Ok(())
    }
}
