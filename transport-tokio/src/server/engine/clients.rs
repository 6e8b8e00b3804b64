//! The engine's side of task clients: the jobs they create or attach to, their submissions, their
//! replies and results, and their limits. The conversation is specified in `server/client.rs`.
//!
//! Invariants:
//! - A reply (`JobAccepted`, `Submitted`) is staged only once every log record written before it
//!   is durable, and replies to one client are staged in the order of its requests: they wait in
//!   one queue, tagged with the LSN that must be durable first.
//! - A client is attached to a job (and gets its results) from the moment its `JobAccepted` is
//!   staged; the settled results it missed are staged right after that `JobAccepted`, the later
//!   ones as the scheduler reports them durable. A result may reach a client twice, never zero
//!   times while it stays connected.
//! - `in_flight` counts the tasks a client submitted on this connection that have not settled;
//!   each settled task is counted down once, for the client that submitted it.
//! - A client known here is in `conns` until it leaves or is dropped; ids are never reused, and
//!   events from a client that was removed are ignored.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant, SystemTime};

use colony_core::proto::{
    BatchBuf, Edge, ErrorCode, JobOutcome, JobSpec, Message, decode_message, encode_frame_into,
};
use colony_core::sched::{CreateJobError, Inputs, JobDef, TaskState};
use colony_core::{JobId, Lsn, TaskId, WorkerId};
use tokio::task::AbortHandle;

use super::Engine;
use crate::net::Transport;
use crate::server::ClientInfo;
use crate::server::client::{
    ClientEvent, ClientId, ClientIn, ClientJoined, ClientLimits, KINDS_CALL,
};
use crate::server::outbox::Outbox;

/// Bytes a `TaskDone` or `TaskFailed` frame's payload adds to its output or error text.
const RESULT_OVERHEAD: usize = 32;

/// How long a flush of nothing but client submissions may wait for a worker's news (typically
/// the completion of a task just submitted), so both share one sync: a quick task then costs its
/// caller one `fdatasync`, not two in a row.
const SUBMIT_HOLD: Duration = Duration::from_millis(1);

/// A task client, as the engine sees it.
#[derive(Debug)]
struct ClientConn {
    name: String,
    peer: SocketAddr,
    transport: Transport,
    /// When it connected (for the monitor).
    since: SystemTime,
    max_frame: u32,
    outbox: Arc<Outbox>,
    /// Frames for this client produced this turn.
    staged: Vec<u8>,
    dirty: bool,
    reader: AbortHandle,
    /// Tasks submitted on this connection and not settled.
    in_flight: u64,
    /// Jobs this connection created or attached to.
    jobs: Vec<Attached>,
    /// The DAG job being built, between its `CreateJob` and its `SealJob`.
    building: Option<Box<Building>>,
}

#[derive(Clone, Copy, Debug)]
struct Attached {
    job: JobId,
    /// The spec said `open: false`: `SealJob` closes the job.
    close_at_seal: bool,
}

/// A DAG job whose inputs and edges are arriving.
#[derive(Debug)]
struct Building {
    name: String,
    kind: String,
    tasks: u32,
    edges: u32,
    max_attempts: u16,
    inputs: Inputs,
    edge_list: Vec<Edge>,
    bytes: usize,
}

/// Who is attached to a job, and who submitted which of its tasks.
#[derive(Debug, Default)]
struct JobClients {
    attached: Vec<ClientId>,
    /// Runs of tasks by submitter: `(first task, client)`, in task order.
    owners: Vec<(u32, ClientId)>,
}

impl JobClients {
    fn owner(&self, task: TaskId) -> Option<ClientId> {
        let after = self.owners.partition_point(|(first, _)| *first <= task.0);
        self.owners.get(after.checked_sub(1)?).map(|(_, c)| *c)
    }

    fn submitted(&mut self, task: TaskId, client: ClientId) {
        if self.owners.last().is_none_or(|(_, c)| *c != client) {
            self.owners.push((task.0, client));
        }
    }
}

/// A reply waiting for durability.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Accepted {
        client: ClientId,
        job: JobId,
        already_done: u32,
    },
    Submitted {
        client: ClientId,
        job: JobId,
        task: TaskId,
    },
}

/// A client broke a rule: the code and the reason it is told (and that is logged).
#[derive(Debug)]
struct Violation {
    code: ErrorCode,
    detail: String,
}

impl Violation {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Violation {
            code,
            detail: detail.into(),
        }
    }
}

/// Every task client and what the engine keeps for them. See the module docs.
#[derive(Debug)]
pub(in crate::server) struct Clients {
    conns: Vec<Option<ClientConn>>,
    dirty: Vec<ClientId>,
    jobs: HashMap<JobId, JobClients>,
    /// Replies whose records are not yet handed to the log.
    unlogged: Vec<Reply>,
    /// Replies waiting for the LSN to become durable, in order.
    logged: VecDeque<(Lsn, Vec<Reply>)>,
    /// The last LSN handed to the log, and the last one durable.
    last_taken: Option<Lsn>,
    durable: Option<Lsn>,
    /// Task kinds of connected workers, with how many declare each.
    kinds: HashMap<String, u32>,
    worker_kinds: HashMap<WorkerId, Vec<String>>,
    limits: ClientLimits,
    /// Until when the log may hold back a flush of submissions only.
    hold: Option<StdInstant>,
}

impl Clients {
    /// Every connected client, for a status report.
    pub(super) fn infos(&self) -> Vec<ClientInfo> {
        self.conns
            .iter()
            .flatten()
            .map(|c| ClientInfo {
                name: c.name.clone(),
                address: c.peer,
                transport: c.transport,
                in_flight: c.in_flight,
                jobs: c.jobs.len(),
                connected_since: c.since,
            })
            .collect()
    }

    pub(in crate::server) fn new(limits: ClientLimits) -> Self {
        Clients {
            conns: Vec::new(),
            dirty: Vec::new(),
            jobs: HashMap::new(),
            unlogged: Vec::new(),
            logged: VecDeque::new(),
            last_taken: None,
            durable: None,
            kinds: HashMap::new(),
            worker_kinds: HashMap::new(),
            limits,
            hold: None,
        }
    }

    /// Whether a flush should wait: the log holds client submissions only, for a short while.
    pub(super) fn holds_flush(&self) -> bool {
        self.hold.is_some_and(|until| StdInstant::now() < until)
    }

    /// When a held flush must go out at the latest.
    pub(super) fn flush_hold(&self) -> Option<StdInstant> {
        self.hold
    }

    /// Stops holding a flush back.
    pub(super) fn release_flush(&mut self) {
        self.hold = None;
    }

    /// A worker joined declaring `kinds`.
    pub(super) fn worker_joined(&mut self, worker: WorkerId, kinds: &[String]) {
        for kind in kinds {
            *self.kinds.entry(kind.clone()).or_default() += 1;
        }
        self.worker_kinds.insert(worker, kinds.to_vec());
    }

    /// A worker left.
    pub(super) fn worker_left(&mut self, worker: WorkerId) {
        for kind in self.worker_kinds.remove(&worker).unwrap_or_default() {
            if let Some(n) = self.kinds.get_mut(&kind) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.kinds.remove(&kind);
                }
            }
        }
    }

    fn conn(&mut self, client: ClientId) -> Option<&mut ClientConn> {
        self.conns.get_mut(client.0 as usize)?.as_mut()
    }

    /// Encodes `message` into `client`'s staged frames (nothing if it is gone).
    fn stage(&mut self, client: ClientId, message: &Message<'_>) {
        let Some(Some(conn)) = self.conns.get_mut(client.0 as usize) else {
            return;
        };
        if let Err(e) = encode_frame_into(message, &mut conn.staged) {
            log::error!("cannot encode {} for {client}: {e}", message.name());
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(client);
        }
    }

    /// Records up to `lsn` were handed to the log: replies queued so far wait for it.
    pub(super) fn logged(&mut self, lsn: Lsn) {
        self.hold = None;
        self.last_taken = Some(lsn);
        if !self.unlogged.is_empty() {
            let replies = std::mem::take(&mut self.unlogged);
            self.logged.push_back((lsn, replies));
        }
    }
}

impl Engine {
    // ---- hooks called by the engine ----

    /// Records up to `lsn` are durable: stages the replies that waited for them. Called before
    /// the scheduler hears of it, so results it then reports are not also replayed.
    pub(super) fn clients_durable(&mut self, lsn: Lsn) {
        self.clients.durable = Some(lsn);
        while let Some((at, _)) = self.clients.logged.front() {
            if *at > lsn {
                break;
            }
            if let Some((_, replies)) = self.clients.logged.pop_front() {
                for reply in replies {
                    self.release(reply);
                }
            }
        }
    }

    /// A task of `job` is settled durably: tells the clients attached to it, and counts it down
    /// for the client that submitted it.
    pub(super) fn client_result(&mut self, job: JobId, task: TaskId) {
        let Some(entry) = self.clients.jobs.get(&job) else {
            return;
        };
        if let Some(owner) = entry.owner(task)
            && let Some(conn) = self.clients.conn(owner)
        {
            conn.in_flight = conn.in_flight.saturating_sub(1);
        }
        let Some(entry) = self.clients.jobs.get(&job) else {
            return;
        };
        match entry.attached.as_slice() {
            [] => {}
            [one] => {
                let one = *one;
                self.stage_result(one, job, task);
            }
            many => {
                let many = many.to_owned();
                for client in many {
                    self.stage_result(client, job, task);
                }
            }
        }
    }

    /// A job finished: tells the clients attached to it.
    pub(super) fn client_job_finished(&mut self, job: JobId) {
        let Some(entry) = self.clients.jobs.get(&job) else {
            return;
        };
        let message = Message::JobFinished {
            job,
            outcome: JobOutcome::Finished,
        };
        for client in entry.attached.clone() {
            self.clients.stage(client, &message);
        }
    }

    /// Releases replies that wait on nothing more, then moves every client's staged frames to
    /// its outbox, dropping a client that does not read.
    pub(super) fn send_client_staged(&mut self) {
        if !self.clients.unlogged.is_empty() && !self.sched.has_log() {
            // Every record the replies depend on was handed to the log already.
            let pending = self
                .clients
                .last_taken
                .filter(|taken| self.log.is_some() && Some(*taken) > self.clients.durable);
            match pending {
                Some(taken) => self.clients.logged(taken),
                None => {
                    let replies = std::mem::take(&mut self.clients.unlogged);
                    for reply in replies {
                        self.release(reply);
                    }
                }
            }
        }
        let mut slow = Vec::new();
        for client in std::mem::take(&mut self.clients.dirty) {
            let Some(conn) = self.clients.conn(client) else {
                continue;
            };
            conn.dirty = false;
            if let Err(overflow) = conn.outbox.push_staged(&mut conn.staged) {
                slow.push((client, overflow.backlog));
            }
        }
        for (client, backlog) in slow {
            let detail = format!("not reading: {backlog} bytes waiting to be sent");
            self.drop_client(client, Violation::new(ErrorCode::LimitExceeded, detail));
        }
    }

    /// The engine stops: every client's staged frames go out, then `ServerGoingAway`.
    pub(super) fn close_clients(&mut self) {
        self.clients.release_flush();
        for conn in self.clients.conns.iter_mut().filter_map(Option::take) {
            let _ = conn.outbox.push_staged(&mut { conn.staged });
            conn.outbox.close(Some(&Message::ServerGoingAway));
            conn.reader.abort();
        }
        self.clients.dirty.clear();
    }

    // ---- events ----

    pub(super) fn on_client_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Joined(joined) => self.client_joined(*joined),
            ClientEvent::Batch {
                client,
                chunk,
                items,
            } => self.client_batch(client, &chunk, items),
            ClientEvent::Left { client, reason } => {
                if let Some(conn) = self.clients.conn(client) {
                    log::info!(
                        "{client} {:?} at {} left{}; its jobs stay open",
                        conn.name,
                        conn.peer,
                        reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    );
                    self.remove_client(client, false);
                }
            }
        }
    }

    fn client_joined(&mut self, joined: ClientJoined) {
        let Ok(index) = u32::try_from(self.clients.conns.len()) else {
            joined.outbox.close(Some(&Message::Error {
                code: ErrorCode::LimitExceeded,
                detail: "no more client ids",
            }));
            joined.reader.abort();
            return;
        };
        let client = ClientId(index);
        self.clients.conns.push(Some(ClientConn {
            name: joined.name,
            peer: joined.peer,
            transport: joined.transport,
            since: SystemTime::now(),
            max_frame: joined.max_frame,
            outbox: joined.outbox,
            staged: Vec::new(),
            dirty: false,
            reader: joined.reader,
            in_flight: 0,
            jobs: Vec::new(),
            building: None,
        }));
        let _ = joined.reply.send(client);
    }

    fn client_batch(&mut self, client: ClientId, chunk: &[u8], items: Vec<ClientIn>) {
        for item in items {
            if self.clients.conn(client).is_none() {
                return;
            }
            let result = match item {
                ClientIn::Submit { job, input } => {
                    let input = chunk.get(input).unwrap_or_default();
                    self.client_submit(client, job, std::iter::once(input), 1)
                }
                ClientIn::Frame(range) => {
                    match decode_message(chunk.get(range).unwrap_or_default()) {
                        Ok(message) => self.client_message(client, message),
                        Err(e) => Err(Violation::new(ErrorCode::BadMessage, e.to_string())),
                    }
                }
                ClientIn::Builtin { call, name } => {
                    let name = chunk
                        .get(name)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .unwrap_or_default();
                    self.client_builtin(client, call, name);
                    Ok(())
                }
                ClientIn::Goodbye => {
                    if let Some(conn) = self.clients.conn(client) {
                        log::info!("{client} {:?} at {} said goodbye", conn.name, conn.peer);
                    }
                    self.remove_client(client, true);
                    return;
                }
            };
            if let Err(violation) = result {
                self.drop_client(client, violation);
                return;
            }
        }
    }

    fn client_message(&mut self, client: ClientId, message: Message<'_>) -> Result<(), Violation> {
        match message {
            Message::CreateJob(spec) => self.client_create(client, &spec),
            Message::AddTasks { job, inputs } => {
                let count = inputs.len();
                let mut items = Vec::with_capacity(count.min(4096) as usize);
                for input in inputs.iter() {
                    items.push(
                        input.map_err(|e| Violation::new(ErrorCode::BadMessage, e.to_string()))?,
                    );
                }
                if self.building(client) {
                    self.build_tasks(client, &items)
                } else if items.is_empty() {
                    Ok(())
                } else {
                    let n = items.len() as u64;
                    self.client_submit(client, job, items.into_iter(), n)
                }
            }
            Message::AddEdges { edges, .. } => {
                if !self.building(client) {
                    return Err(Violation::new(
                        ErrorCode::BadMessage,
                        "AddEdges outside a job being built (a CreateJob announcing edges)",
                    ));
                }
                let mut list = Vec::with_capacity(edges.len().min(4096) as usize);
                for edge in edges.iter() {
                    list.push(
                        edge.map_err(|e| Violation::new(ErrorCode::BadMessage, e.to_string()))?,
                    );
                }
                self.build_edges(client, &list)
            }
            Message::SealJob { job } => self.client_seal(client, job),
            Message::StatusQuery { job } => {
                let max = self
                    .clients
                    .conn(client)
                    .map_or(0, |c| c.max_frame as usize);
                let mut statuses = BatchBuf::new();
                self.fill_status(job, &mut statuses, max);
                self.clients
                    .stage(client, &Message::Status(statuses.as_batch()));
                Ok(())
            }
            other => Err(Violation::new(
                ErrorCode::BadMessage,
                format!("unexpected {} from a task client", other.name()),
            )),
        }
    }

    fn building(&mut self, client: ClientId) -> bool {
        self.clients
            .conn(client)
            .is_some_and(|c| c.building.is_some())
    }

    // ---- jobs ----

    fn client_create(&mut self, client: ClientId, spec: &JobSpec<'_>) -> Result<(), Violation> {
        let limits = self.clients.limits;
        if spec.name.is_empty() || spec.kind.is_empty() {
            return Err(Violation::new(
                ErrorCode::BadMessage,
                "a job needs a name and a kind",
            ));
        }
        if spec.name.len() > limits.name_limit() || spec.kind.len() > limits.name_limit() {
            return Err(Violation::new(
                ErrorCode::LimitExceeded,
                format!("job name or kind longer than {} bytes", limits.name_limit()),
            ));
        }
        if spec.max_attempts == 0 {
            return Err(Violation::new(
                ErrorCode::BadMessage,
                "max_attempts must be at least 1",
            ));
        }
        if self.building(client) {
            return Err(Violation::new(
                ErrorCode::BadMessage,
                "CreateJob while another job is being built",
            ));
        }
        if spec.edges > 0 {
            if spec.open {
                return Err(Violation::new(
                    ErrorCode::BadMessage,
                    "an open job cannot have dependency edges",
                ));
            }
            if spec.tasks > limits.job_tasks_limit() {
                return Err(Violation::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "a job of {} tasks is more than the {} allowed",
                        spec.tasks,
                        limits.job_tasks_limit()
                    ),
                ));
            }
            let building = Building {
                name: spec.name.to_owned(),
                kind: spec.kind.to_owned(),
                tasks: spec.tasks,
                edges: spec.edges,
                max_attempts: spec.max_attempts,
                inputs: Inputs::new(),
                edge_list: Vec::new(),
                bytes: 0,
            };
            if let Some(conn) = self.clients.conn(client) {
                conn.building = Some(Box::new(building));
            }
            return Ok(());
        }
        let def = JobDef::new(spec.name, spec.kind, Inputs::new())
            .open()
            .max_attempts(spec.max_attempts);
        let created = self.sched.create_job(def).map_err(create_violation)?;
        log::info!(
            "{client}: {} {:?} of kind {:?} ({} tasks already settled)",
            created.job,
            spec.name,
            spec.kind,
            created.already_done
        );
        self.attach(client, created.job, !spec.open);
        self.clients.unlogged.push(Reply::Accepted {
            client,
            job: created.job,
            already_done: created.already_done,
        });
        Ok(())
    }

    fn attach(&mut self, client: ClientId, job: JobId, close_at_seal: bool) {
        if let Some(conn) = self.clients.conn(client)
            && !conn.jobs.iter().any(|a| a.job == job)
        {
            conn.jobs.push(Attached { job, close_at_seal });
        }
        self.clients.jobs.entry(job).or_default();
    }

    fn build_tasks(&mut self, client: ClientId, inputs: &[&[u8]]) -> Result<(), Violation> {
        let limit = self.clients.limits.job_bytes_limit();
        let Some(b) = self
            .clients
            .conn(client)
            .and_then(|c| c.building.as_deref_mut())
        else {
            return Ok(());
        };
        for input in inputs {
            if b.inputs.len() >= b.tasks as usize {
                return Err(Violation::new(
                    ErrorCode::BadMessage,
                    format!("more task inputs than the {} announced", b.tasks),
                ));
            }
            b.bytes += input.len() + 8;
            if b.bytes > limit {
                return Err(Violation::new(
                    ErrorCode::LimitExceeded,
                    format!("a job of more than {limit} bytes"),
                ));
            }
            b.inputs.push(input);
        }
        Ok(())
    }

    fn build_edges(&mut self, client: ClientId, edges: &[Edge]) -> Result<(), Violation> {
        let limit = self.clients.limits.job_bytes_limit();
        let Some(b) = self
            .clients
            .conn(client)
            .and_then(|c| c.building.as_deref_mut())
        else {
            return Ok(());
        };
        if b.edge_list.len() + edges.len() > b.edges as usize {
            return Err(Violation::new(
                ErrorCode::BadMessage,
                format!("more edges than the {} announced", b.edges),
            ));
        }
        b.bytes += 8 * edges.len();
        if b.bytes > limit {
            return Err(Violation::new(
                ErrorCode::LimitExceeded,
                format!("a job of more than {limit} bytes"),
            ));
        }
        b.edge_list.extend_from_slice(edges);
        Ok(())
    }

    fn client_seal(&mut self, client: ClientId, job: JobId) -> Result<(), Violation> {
        let Some(conn) = self.clients.conn(client) else {
            return Ok(());
        };
        if let Some(b) = conn.building.take() {
            if b.inputs.len() != b.tasks as usize || b.edge_list.len() != b.edges as usize {
                return Err(Violation::new(
                    ErrorCode::BadMessage,
                    format!(
                        "sealed with {} inputs and {} edges, {} and {} announced",
                        b.inputs.len(),
                        b.edge_list.len(),
                        b.tasks,
                        b.edges
                    ),
                ));
            }
            let def = JobDef::new(&b.name, &b.kind, b.inputs)
                .edges(&b.edge_list)
                .max_attempts(b.max_attempts);
            let created = self.sched.create_job(def).map_err(create_violation)?;
            log::info!(
                "{client}: {} {:?} of kind {:?}: {} tasks, {} edges, {} already settled",
                created.job,
                b.name,
                b.kind,
                b.tasks,
                b.edges,
                created.already_done
            );
            self.attach(client, created.job, false);
            self.clients.unlogged.push(Reply::Accepted {
                client,
                job: created.job,
                already_done: created.already_done,
            });
            if self.sched.progress(created.job).is_some_and(|p| p.finished) {
                self.broadcast_finished(created.job);
            }
            return Ok(());
        }
        let Some(attached) = conn.jobs.iter().find(|a| a.job == job).copied() else {
            return Err(Violation::new(
                ErrorCode::UnknownJob,
                format!("SealJob for {job}, which this connection did not create"),
            ));
        };
        if attached.close_at_seal {
            self.sched.close_job(job);
        }
        Ok(())
    }

    /// Adds `inputs` (`count` of them) to `job` for `client`.
    fn client_submit<'i>(
        &mut self,
        client: ClientId,
        job: JobId,
        inputs: impl Iterator<Item = &'i [u8]>,
        count: u64,
    ) -> Result<(), Violation> {
        let limit = self.clients.limits.in_flight_limit();
        let Some(conn) = self.clients.conn(client) else {
            return Ok(());
        };
        if !conn.jobs.iter().any(|a| a.job == job) {
            return Err(Violation::new(
                ErrorCode::UnknownJob,
                format!("tasks for {job}, which this connection did not create or attach to"),
            ));
        }
        if conn.in_flight + count > u64::from(limit) {
            return Err(Violation::new(
                ErrorCode::LimitExceeded,
                format!("more than {limit} tasks in flight"),
            ));
        }
        conn.in_flight += count;
        // Submissions into an empty log may wait a little for their completions (see
        // `SUBMIT_HOLD`); anything else written meanwhile releases the hold.
        let fresh = self.log.is_some() && !self.sched.has_log();
        let mut last = None;
        for input in inputs {
            let Some(task) = self.sched.add_task(job, input) else {
                return Err(Violation::new(
                    ErrorCode::Other,
                    format!("{job} takes no more tasks (it was closed)"),
                ));
            };
            if last.is_none()
                && let Some(entry) = self.clients.jobs.get_mut(&job)
            {
                entry.submitted(task, client);
            }
            last = Some(task);
        }
        if let Some(task) = last {
            self.clients
                .unlogged
                .push(Reply::Submitted { client, job, task });
            if fresh {
                self.clients.hold = Some(StdInstant::now() + SUBMIT_HOLD);
            }
        }
        Ok(())
    }

    fn client_builtin(&mut self, client: ClientId, call: u32, name: &str) {
        if name != KINDS_CALL {
            let error = format!("no built-in function {name:?}");
            self.clients.stage(
                client,
                &Message::CallError {
                    call,
                    error: &error,
                },
            );
            return;
        }
        let max = self
            .clients
            .conn(client)
            .map_or(0, |c| c.max_frame as usize)
            .saturating_sub(64);
        let mut kinds: Vec<(&str, u32)> = self
            .clients
            .kinds
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .collect();
        kinds.sort_unstable();
        let mut result = postcard::to_allocvec(&kinds).unwrap_or_default();
        while result.len() > max && !kinds.is_empty() {
            kinds.pop();
            result = postcard::to_allocvec(&kinds).unwrap_or_default();
        }
        self.clients.stage(
            client,
            &Message::CallReturn {
                call,
                result: &result,
            },
        );
    }

    // ---- replies and results ----

    fn release(&mut self, reply: Reply) {
        match reply {
            Reply::Submitted { client, job, task } => {
                self.clients
                    .stage(client, &Message::Submitted { job, task });
            }
            Reply::Accepted {
                client,
                job,
                already_done,
            } => {
                if self.clients.conn(client).is_none() {
                    return;
                }
                self.clients
                    .stage(client, &Message::JobAccepted { job, already_done });
                let entry = self.clients.jobs.entry(job).or_default();
                if !entry.attached.contains(&client) {
                    entry.attached.push(client);
                }
                let total = self.sched.progress(job).map_or(0, |p| p.total);
                for t in 0..total {
                    let task = TaskId(t);
                    if matches!(
                        self.sched.task_state(job, task),
                        Some(TaskState::Done | TaskState::Failed)
                    ) {
                        self.stage_result(client, job, task);
                    }
                }
            }
        }
    }

    /// Stages `task`'s durable outcome for `client`.
    fn stage_result(&mut self, client: ClientId, job: JobId, task: TaskId) {
        let Some(Some(conn)) = self.clients.conns.get_mut(client.0 as usize) else {
            return;
        };
        let room = (conn.max_frame as usize).saturating_sub(RESULT_OVERHEAD);
        let message = match self.sched.task_state(job, task) {
            Some(TaskState::Done) => {
                let output = self.sched.output(job, task).unwrap_or_default();
                if output.len() <= room {
                    Message::TaskDone { job, task, output }
                } else {
                    let error = format!(
                        "the task's output of {} bytes does not fit in this connection's frames of {} bytes",
                        output.len(),
                        conn.max_frame
                    );
                    return self.clients.stage(
                        client,
                        &Message::TaskFailed {
                            job,
                            task,
                            attempts: 1,
                            error: &error,
                        },
                    );
                }
            }
            Some(TaskState::Failed) => {
                let error = self.sched.error(job, task).unwrap_or_default();
                let attempts = self.sched.attempt(job, task).map_or(0, |a| a.0);
                Message::TaskFailed {
                    job,
                    task,
                    attempts,
                    error: clip(error, room),
                }
            }
            _ => return,
        };
        if let Err(e) = encode_frame_into(&message, &mut conn.staged) {
            log::error!("cannot encode a result for {client}: {e}");
        }
        if !conn.dirty {
            conn.dirty = true;
            self.clients.dirty.push(client);
        }
    }

    // ---- leaving ----

    /// Drops `client` for breaking a rule: tells it why, logs it, and stops its reader.
    fn drop_client(&mut self, client: ClientId, violation: Violation) {
        let Some(conn) = self.clients.conn(client) else {
            return;
        };
        log::warn!(
            "{client} {:?} at {} dropped: {}",
            conn.name,
            conn.peer,
            violation.detail
        );
        let _ = conn.outbox.push_staged(&mut conn.staged);
        conn.outbox.close(Some(&Message::Error {
            code: violation.code,
            detail: &violation.detail,
        }));
        conn.reader.abort();
        self.remove_client(client, false);
    }

    /// Forgets `client`. With `goodbye`, closes the jobs no other client is attached to.
    fn remove_client(&mut self, client: ClientId, goodbye: bool) {
        let Some(conn) = self
            .clients
            .conns
            .get_mut(client.0 as usize)
            .and_then(Option::take)
        else {
            return;
        };
        let _ = conn.outbox.push_staged(&mut { conn.staged });
        conn.outbox.close(None);
        for attached in conn.jobs {
            let job = attached.job;
            let Some(entry) = self.clients.jobs.get_mut(&job) else {
                continue;
            };
            entry.attached.retain(|c| *c != client);
            if entry.attached.is_empty() {
                self.clients.jobs.remove(&job);
                if goodbye {
                    self.sched.close_job(job);
                }
            }
        }
    }
}

/// The violation a refused job creation is.
fn create_violation(e: CreateJobError) -> Violation {
    let code = match &e {
        CreateJobError::Mismatch(_) => ErrorCode::FingerprintMismatch,
        CreateJobError::Dag(colony_core::dag::DagError::Cycle { .. }) => ErrorCode::Cycle,
        CreateJobError::TooLarge => ErrorCode::LimitExceeded,
        _ => ErrorCode::BadMessage,
    };
    Violation::new(code, e.to_string())
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_found_by_run() {
        let mut jobs = JobClients::default();
        jobs.submitted(TaskId(0), ClientId(1));
        jobs.submitted(TaskId(5), ClientId(1));
        jobs.submitted(TaskId(10), ClientId(2));
        jobs.submitted(TaskId(12), ClientId(1));
        assert_eq!(jobs.owners.len(), 3);
        assert_eq!(jobs.owner(TaskId(0)), Some(ClientId(1)));
        assert_eq!(jobs.owner(TaskId(9)), Some(ClientId(1)));
        assert_eq!(jobs.owner(TaskId(10)), Some(ClientId(2)));
        assert_eq!(jobs.owner(TaskId(11)), Some(ClientId(2)));
        assert_eq!(jobs.owner(TaskId(400)), Some(ClientId(1)));
        assert_eq!(JobClients::default().owner(TaskId(0)), None);
    }

    #[test]
    fn clip_keeps_characters_whole() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
    }
}
