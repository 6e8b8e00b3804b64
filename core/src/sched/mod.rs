//! The server's job scheduler: jobs, workers, leases, the frontier and the log, sans-IO.
//!
//! The transport feeds events in (a worker joined, asked for credit, completed or failed a
//! lease, sent a heartbeat, left), calls [`Scheduler::poll`] with the time, writes out the log
//! bytes from [`Scheduler::take_log`], and once they are durable calls [`Scheduler::durable`].
//! It then drains [`Action`]s: leases to send, acknowledgements, results for task clients.
//!
//! Invariants (checked by the deterministic simulation in `tests/sim.rs`):
//! - A worker never holds more leases than the credit it asked for.
//! - A task is recorded done at most once: the first completion of its current lease wins, a
//!   completion of a lease that expired or was revoked is acknowledged and dropped.
//! - A completion is acknowledged, reported to task clients and releases its dependents only once
//!   its log record is durable. A task is never leased again once completed.
//! - A lost lease (expiry, disconnect) puts its task back in the queue with the next attempt
//!   number; task errors and expiries count towards the job's `max_attempts`, disconnects do not.
//! - A task that fails for good fails its dependents too, so every job finishes.
//! - Rebuilding from a replayed log ([`Scheduler::replay`]) restores every recorded outcome; done
//!   tasks are never leased again and their outputs are kept.

mod job;

pub use job::{Inputs, TaskState};

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use job::Job;

use crate::dag::{DagError, Frontier};
use crate::id::{Attempt, JobId, LeaseId, Lsn, TaskId, WorkerId};
use crate::lease::{LeaseError, LeaseTable};
use crate::log::{Fingerprint, Record};
use crate::proto::{Edge, Retry};
use crate::time::{Duration, Instant};

/// Scheduler settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedConfig {
    lease_duration: Duration,
    max_outstanding: u32,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            lease_duration: Duration::from_secs(30),
            max_outstanding: 65_536,
        }
    }
}

impl SchedConfig {
    /// How long a lease lasts without a heartbeat (default 30 s).
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease_duration = d;
        self
    }

    /// The most leases plus unused credit one worker may have (default 65,536); asking for
    /// more is a protocol violation.
    pub fn max_outstanding(mut self, n: u32) -> Self {
        self.max_outstanding = n;
        self
    }

    /// The configured lease duration.
    pub fn lease(&self) -> Duration {
        self.lease_duration
    }
}

/// Something the transport must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action {
    /// Send a lease to a worker. Consecutive grants to one worker may go in one batch.
    /// The input is [`Scheduler::input`]`(job, task)`.
    Grant {
        /// The worker.
        worker: WorkerId,
        /// The new lease.
        lease: LeaseId,
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// The attempt number.
        attempt: Attempt,
        /// Index of the task's kind in the worker's own list of kinds.
        kind: u16,
    },
    /// Tell a worker its result for `lease` is settled (durable, or dropped as late).
    Ack {
        /// The worker.
        worker: WorkerId,
        /// The lease it answered.
        lease: LeaseId,
    },
    /// A task's output is durable: tell task clients ([`Scheduler::output`]).
    TaskDone {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
    },
    /// A task failed for good and that is durable ([`Scheduler::error`] gives the text).
    TaskFailed {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
    },
    /// Every task of the job settled and that is durable.
    JobFinished {
        /// The job.
        job: JobId,
    },
}

/// Why a job could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateJobError {
    /// The dependency edges are out of range or form a cycle.
    Dag(DagError),
    /// `max_attempts` was 0.
    ZeroAttempts,
    /// An open job was given dependency edges.
    EdgesOnOpenJob,
    /// The log (or a live job) has a job of this name with another fingerprint.
    Mismatch(JobMismatch),
    /// More than `u32::MAX` tasks, or more than `u16::MAX` kinds.
    TooLarge,
}

/// How a job differs from the one of the same name already known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobMismatch {
    /// The job's name.
    pub name: String,
    /// Kind, tasks and edges of the known job.
    pub known: JobShape,
    /// Kind, tasks and edges of the job given now.
    pub given: JobShape,
}

/// The countable shape of a job, for mismatch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobShape {
    /// The task kind.
    pub kind: String,
    /// Tasks.
    pub tasks: u32,
    /// Edges.
    pub edges: u32,
    /// Whether tasks may be added.
    pub open: bool,
}

impl fmt::Display for CreateJobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateJobError::Dag(e) => write!(f, "bad dependencies: {e}"),
            CreateJobError::ZeroAttempts => f.write_str("max_attempts must be at least 1"),
            CreateJobError::EdgesOnOpenJob => {
                f.write_str("an open job cannot have dependency edges")
            }
            CreateJobError::Mismatch(m) => {
                let (k, g) = (&m.known, &m.given);
                write!(f, "job {:?} does not match its checkpoint: ", m.name)?;
                if k.kind != g.kind {
                    write!(
                        f,
                        "the checkpoint's kind is {:?}, this run's is {:?}",
                        k.kind, g.kind
                    )
                } else if k.open != g.open {
                    f.write_str("one is an open job and the other is not")
                } else if k.tasks != g.tasks {
                    write!(
                        f,
                        "the checkpoint has {} items, this run has {}",
                        k.tasks, g.tasks
                    )
                } else if k.edges != g.edges {
                    write!(
                        f,
                        "the checkpoint has {} dependency edges, this run has {}",
                        k.edges, g.edges
                    )
                } else {
                    write!(
                        f,
                        "same kind and counts ({} items, {} edges) but other item inputs or edges",
                        g.tasks, g.edges
                    )
                }
            }
            CreateJobError::TooLarge => f.write_str("job too large"),
        }
    }
}

impl core::error::Error for CreateJobError {}

#[cfg(feature = "defmt")]
impl defmt::Format for CreateJobError {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Display2Format(self));
    }
}

impl From<DagError> for CreateJobError {
    fn from(e: DagError) -> Self {
        CreateJobError::Dag(e)
    }
}

/// A worker broke a rule of the protocol; the transport should drop it with this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ProtocolError {
    /// The worker id is not connected.
    UnknownWorker(WorkerId),
    /// Credit plus held leases would exceed the configured maximum.
    CreditLimit {
        /// What the worker would have.
        requested: u64,
        /// The limit.
        limit: u32,
    },
    /// The worker answered a lease another worker holds.
    NotHolder(LeaseId),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownWorker(w) => write!(f, "{w} is not connected"),
            ProtocolError::CreditLimit { requested, limit } => {
                write!(
                    f,
                    "credit of {requested} exceeds the limit of {limit} outstanding leases"
                )
            }
            ProtocolError::NotHolder(l) => write!(f, "answered {l}, which another worker holds"),
        }
    }
}

impl core::error::Error for ProtocolError {}

/// A worker declared another version of a kind a live job runs (see
/// [`Scheduler::check_kinds`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindConflict {
    /// What the worker declared.
    pub declared: String,
    /// What the job runs.
    pub running: String,
    /// The job's name.
    pub job: String,
}

impl fmt::Display for KindConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this worker runs {:?} but job {:?} runs {:?}: its items, edges or code differ from the serving process's",
            self.declared, self.job, self.running
        )
    }
}

impl core::error::Error for KindConflict {}

/// A replayed record does not fit the scheduler's state (the log is inconsistent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReplayError {
    /// A record names a job with no header before it.
    UnknownJob(JobId),
    /// A record names a task beyond its job.
    UnknownTask(JobId, TaskId),
    /// A task was added to a job that is not open.
    NotOpen(JobId),
    /// Two headers for one job id.
    DuplicateJob(JobId),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::UnknownJob(j) => write!(f, "log names {j} before its header"),
            ReplayError::UnknownTask(j, t) => write!(f, "log names {t} beyond the tasks of {j}"),
            ReplayError::NotOpen(j) => write!(f, "log adds a task to {j}, which is not open"),
            ReplayError::DuplicateJob(j) => write!(f, "log has two headers for {j}"),
        }
    }
}

impl core::error::Error for ReplayError {}

/// A job to create: name, kind, inputs, and options.
#[derive(Clone, Debug)]
pub struct JobDef<'a> {
    name: &'a str,
    kind: &'a str,
    inputs: Inputs,
    edges: &'a [Edge],
    max_attempts: u16,
    open: bool,
}

impl<'a> JobDef<'a> {
    /// A job named `name` whose tasks run `kind`, one per input. Defaults: no edges, 3 attempts,
    /// closed (no tasks added later).
    pub fn new(name: &'a str, kind: &'a str, inputs: Inputs) -> Self {
        JobDef {
            name,
            kind,
            inputs,
            edges: &[],
            max_attempts: 3,
            open: false,
        }
    }

    /// Dependency edges `(before, after)`.
    pub fn edges(mut self, edges: &'a [Edge]) -> Self {
        self.edges = edges;
        self
    }

    /// Attempts per task before it fails for good (task errors and expired leases count).
    pub fn max_attempts(mut self, n: u16) -> Self {
        self.max_attempts = n;
        self
    }

    /// An open job: tasks may be added with [`Scheduler::add_task`] until it is closed, and
    /// every task's input is written to the log, so the job survives a server restart on its own.
    pub fn open(mut self) -> Self {
        self.open = true;
        self
    }
}

/// A job was created or resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    /// Its id.
    pub job: JobId,
    /// Tasks already settled (done or failed) from an earlier run.
    pub already_done: u32,
}

/// Progress of one job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Progress {
    /// Tasks in the job.
    pub total: u32,
    /// Tasks done (durably).
    pub done: u32,
    /// Tasks failed for good (durably).
    pub failed: u32,
    /// Tasks leased right now.
    pub running: u32,
    /// Whether the job finished (durably).
    pub finished: bool,
}

/// The result of a worker's `Complete` or `Fail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Recorded; the `Ack` follows once durable.
    Accepted,
    /// The lease was not live (expired, revoked, or already answered); an `Ack` was queued at
    /// once and the result dropped.
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leased {
    job: JobId,
    task: TaskId,
    attempt: Attempt,
}

#[derive(Debug)]
struct WorkerSlot {
    /// (kind id, index in the worker's own list)
    kinds: Vec<(u16, u16)>,
    credit: u32,
    held: u32,
    hungry: bool,
    /// One of its leases expired: it gets no new lease until it shows it is alive (a heartbeat,
    /// an answer or new credit), so a hung connection cannot soak up re-issued tasks.
    suspect: bool,
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Done {
        job: JobId,
        task: TaskId,
        ack: Option<(WorkerId, LeaseId)>,
    },
    Failed {
        job: JobId,
        task: TaskId,
        ack: Option<(WorkerId, LeaseId)>,
    },
    JobFinished {
        job: JobId,
    },
}

/// A job known from the log whose inputs the log does not hold (a for-loop job): it waits for
/// [`Scheduler::create_job`] to supply them.
#[derive(Debug)]
struct Resume {
    id: JobId,
    name: String,
    kind: String,
    fingerprint: [u8; 32],
    tasks: u32,
    edges: u32,
    done: Vec<(TaskId, Vec<u8>)>,
    failed: Vec<(TaskId, u16, String)>,
    finished: bool,
}

/// The server's scheduler. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedConfig,
    jobs: Vec<Option<Job>>,
    resumes: Vec<Resume>,
    kinds: Vec<String>,
    workers: Vec<Option<WorkerSlot>>,
    leases: LeaseTable<Leased>,
    hungry: VecDeque<WorkerId>,
    log: Vec<u8>,
    next_lsn: u64,
    pending: VecDeque<(Lsn, Pending)>,
    actions: VecDeque<Action>,
    /// Round-robin position over jobs when several have work.
    next_job: usize,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedConfig) -> Self {
        Scheduler {
            config,
            jobs: Vec::new(),
            resumes: Vec::new(),
            kinds: Vec::new(),
            workers: Vec::new(),
            leases: LeaseTable::new(config.lease_duration),
            hungry: VecDeque::new(),
            log: Vec::new(),
            next_lsn: 1,
            pending: VecDeque::new(),
            actions: VecDeque::new(),
            next_job: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SchedConfig {
        &self.config
    }

    fn kind_id(&mut self, kind: &str) -> Option<u16> {
        if let Some(i) = self.kinds.iter().position(|k| k == kind) {
            return u16::try_from(i).ok();
        }
        let id = u16::try_from(self.kinds.len()).ok()?;
        self.kinds.push(kind.to_string());
        Some(id)
    }

    fn next_job_id(&self) -> JobId {
        let live = self.jobs.len() as u32;
        let resumed = self.resumes.iter().map(|r| r.id.0 + 1).max().unwrap_or(0);
        JobId(live.max(resumed))
    }

    fn job(&self, job: JobId) -> Option<&Job> {
        self.jobs.get(job.0 as usize)?.as_ref()
    }

    fn job_mut(&mut self, job: JobId) -> Option<&mut Job> {
        self.jobs.get_mut(job.0 as usize)?.as_mut()
    }

    fn append(&mut self, record: &Record<'_>) -> Lsn {
        // Records built here always fit the format's limits (inputs and outputs are bounded by
        // the frame size long before the log's 16 MiB); an oversized one is dropped from the
        // log, and only costs a re-run after a crash.
        if record.append_to(&mut self.log).is_err() {
            error!("log record too large; not logged");
            return Lsn(self.next_lsn - 1);
        }
        let lsn = Lsn(self.next_lsn);
        self.next_lsn += 1;
        lsn
    }

    // ---- jobs ----

    /// Creates a job, or resumes the job of the same name known from the log, or attaches to
    /// the live job of the same name.
    ///
    /// # Errors
    /// See [`CreateJobError`]; a name whose known job has another fingerprint is
    /// [`CreateJobError::Mismatch`], naming how they differ.
    pub fn create_job(&mut self, def: JobDef<'_>) -> Result<Created, CreateJobError> {
        if def.max_attempts == 0 {
            return Err(CreateJobError::ZeroAttempts);
        }
        if def.open && !def.edges.is_empty() {
            return Err(CreateJobError::EdgesOnOpenJob);
        }
        let tasks = u32::try_from(def.inputs.len()).map_err(|_| CreateJobError::TooLarge)?;
        let edges = u32::try_from(def.edges.len()).map_err(|_| CreateJobError::TooLarge)?;
        let fingerprint = job_fingerprint(&def);
        let given = JobShape {
            kind: def.kind.to_string(),
            tasks,
            edges,
            open: def.open,
        };

        if let Some(job) = self.jobs.iter().flatten().find(|j| j.name == def.name) {
            if job.fingerprint != fingerprint {
                let known = JobShape {
                    kind: self
                        .kinds
                        .get(job.kind as usize)
                        .cloned()
                        .unwrap_or_default(),
                    tasks: if job.open { given.tasks } else { job.total() },
                    edges: if job.open { 0 } else { job.frontier_edges() },
                    open: job.open,
                };
                return Err(CreateJobError::Mismatch(JobMismatch {
                    name: job.name.clone(),
                    known,
                    given,
                }));
            }
            let (id, settled) = (job.id, job.done + job.failed);
            if job.open {
                for input in def.inputs.iter() {
                    self.add_task(id, input);
                }
            }
            return Ok(Created {
                job: id,
                already_done: settled,
            });
        }

        let frontier = Frontier::new(if def.open { 0 } else { tasks }, def.edges)?;
        let kind = self.kind_id(def.kind).ok_or(CreateJobError::TooLarge)?;

        if let Some(pos) = self.resumes.iter().position(|r| r.name == def.name) {
            let r = self.resumes.get(pos).ok_or(CreateJobError::TooLarge)?;
            if r.fingerprint != fingerprint {
                let known = JobShape {
                    kind: r.kind.clone(),
                    tasks: r.tasks,
                    edges: r.edges,
                    open: false,
                };
                return Err(CreateJobError::Mismatch(JobMismatch {
                    name: r.name.clone(),
                    known,
                    given,
                }));
            }
            let r = self.resumes.swap_remove(pos);
            let mut job = Job::new(
                r.id,
                r.name,
                kind,
                fingerprint,
                def.max_attempts,
                false,
                def.inputs,
                frontier,
            );
            for (task, output) in &r.done {
                job.restore_done(*task, output);
            }
            for (task, attempts, error) in r.failed {
                job.restore_failed(task, attempts, error);
            }
            if r.finished {
                job.closed = true;
                job.finishing = true;
                job.finished = true;
            }
            let already_done = job.done + job.failed;
            let id = job.id;
            self.install(job);
            self.after_resume(id);
            return Ok(Created {
                job: id,
                already_done,
            });
        }

        let id = self.next_job_id();
        let name = def.name.to_string();
        self.append(&Record::JobHeader {
            job: id,
            fingerprint,
            name: def.name,
            kind: def.kind,
            tasks,
            edges,
            max_attempts: def.max_attempts,
            open: def.open,
        });
        let open = def.open;
        let (initial, added) = if open {
            (Inputs::new(), Some(def.inputs))
        } else {
            (def.inputs, None)
        };
        let job = Job::new(
            id,
            name,
            kind,
            fingerprint,
            def.max_attempts,
            open,
            initial,
            frontier,
        );
        self.install(job);
        for input in added.iter().flat_map(Inputs::iter) {
            self.add_task(id, input);
        }
        self.check_finished(id);
        Ok(Created {
            job: id,
            already_done: 0,
        })
    }

    fn install(&mut self, job: Job) {
        let i = job.id.0 as usize;
        if self.jobs.len() <= i {
            self.jobs.resize_with(i + 1, || None);
        }
        if let Some(slot) = self.jobs.get_mut(i) {
            *slot = Some(job);
        }
    }

    /// Adds one task to an open job and logs its input; returns its id, or `None` if the job
    /// does not exist, is not open, or was closed.
    pub fn add_task(&mut self, job: JobId, input: &[u8]) -> Option<TaskId> {
        let j = self.job_mut(job)?;
        if !j.open || j.closed {
            return None;
        }
        let task = j.push_task(input)?;
        self.append(&Record::TaskAdded { job, task, input });
        Some(task)
    }

    /// Closes an open job: it finishes once every task it has settled.
    pub fn close_job(&mut self, job: JobId) {
        if let Some(j) = self.job_mut(job) {
            j.closed = true;
        }
        self.check_finished(job);
    }

    /// The id of the live job called `name`.
    pub fn job_by_name(&self, name: &str) -> Option<JobId> {
        self.jobs
            .iter()
            .flatten()
            .find(|j| j.name == name)
            .map(|j| j.id)
    }

    /// Ids of every live job.
    pub fn job_ids(&self) -> impl Iterator<Item = JobId> + '_ {
        self.jobs.iter().flatten().map(|j| j.id)
    }

    /// A job's name.
    pub fn job_name(&self, job: JobId) -> Option<&str> {
        self.job(job).map(|j| j.name.as_str())
    }

    /// A job's progress.
    pub fn progress(&self, job: JobId) -> Option<Progress> {
        let j = self.job(job)?;
        Some(Progress {
            total: j.total(),
            done: j.done,
            failed: j.failed,
            running: j.running,
            finished: j.finished,
        })
    }

    /// The input of a task.
    pub fn input(&self, job: JobId, task: TaskId) -> Option<&[u8]> {
        self.job(job)?.inputs.get(task.index())
    }

    /// The output of a completed task (also before its record is durable).
    pub fn output(&self, job: JobId, task: TaskId) -> Option<&[u8]> {
        self.job(job)?.outputs.get(task)
    }

    /// The last error of a task that failed for good.
    pub fn error(&self, job: JobId, task: TaskId) -> Option<&str> {
        self.job(job)?.errors.get(&task.0).map(String::as_str)
    }

    /// Where a task is.
    pub fn task_state(&self, job: JobId, task: TaskId) -> Option<TaskState> {
        self.job(job)?.state(task)
    }

    /// The attempt number the task's next (or current) lease carries.
    pub fn attempt(&self, job: JobId, task: TaskId) -> Option<Attempt> {
        self.job(job)?.tasks.get(task.index()).map(|t| t.attempt)
    }

    // ---- workers ----

    /// Checks a joining worker's kinds against the live jobs' kinds.
    ///
    /// A kind may carry a version after a `#` (`"loop:squares#1f2e…"`: the for-loop puts its
    /// job's fingerprint there). A worker that declares `base#v1` while a job runs `base#v2` was
    /// built from other items or code: it is refused with a [`KindConflict`] rather than left
    /// idle, waiting for tasks it will never get.
    ///
    /// # Errors
    /// The first conflicting kind.
    pub fn check_kinds<'k>(
        &self,
        kinds: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), KindConflict> {
        for declared in kinds {
            let Some((base, _)) = declared.split_once('#') else {
                continue;
            };
            for job in self.jobs.iter().flatten().filter(|j| !j.finished) {
                let Some(running) = self.kinds.get(job.kind as usize) else {
                    continue;
                };
                if running != declared && running.split_once('#').is_some_and(|(b, _)| b == base) {
                    return Err(KindConflict {
                        declared: declared.to_string(),
                        running: running.clone(),
                        job: job.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// A worker finished its handshake. `kinds` are the task kinds it runs, in its own order.
    pub fn worker_joined<'k>(&mut self, kinds: impl IntoIterator<Item = &'k str>) -> WorkerId {
        let mut ids = Vec::new();
        for (i, k) in kinds.into_iter().enumerate() {
            if let (Some(id), Ok(i)) = (self.kind_id(k), u16::try_from(i)) {
                ids.push((id, i));
            }
        }
        let id = WorkerId(self.workers.len() as u32);
        self.workers.push(Some(WorkerSlot {
            kinds: ids,
            credit: 0,
            held: 0,
            hungry: false,
            suspect: false,
        }));
        id
    }

    fn worker_mut(&mut self, worker: WorkerId) -> Result<&mut WorkerSlot, ProtocolError> {
        self.workers
            .get_mut(worker.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(ProtocolError::UnknownWorker(worker))
    }

    /// The worker asks for up to `count` more leases.
    ///
    /// # Errors
    /// [`ProtocolError::CreditLimit`] if its credit and held leases would pass the limit (the
    /// credit is not granted); [`ProtocolError::UnknownWorker`].
    pub fn credit(&mut self, worker: WorkerId, count: u32) -> Result<(), ProtocolError> {
        let limit = self.config.max_outstanding;
        let w = self.worker_mut(worker)?;
        let requested = u64::from(w.credit) + u64::from(w.held) + u64::from(count);
        if requested > u64::from(limit) {
            return Err(ProtocolError::CreditLimit { requested, limit });
        }
        w.credit += count;
        w.suspect = false;
        if w.credit > 0 && !w.hungry {
            w.hungry = true;
            self.hungry.push_back(worker);
        }
        Ok(())
    }

    /// The worker is alive: renews every lease it holds.
    pub fn heartbeat(&mut self, now: Instant, worker: WorkerId) {
        self.leases.renew_holder(now, worker);
        if let Ok(w) = self.worker_mut(worker) {
            w.suspect = false;
        }
    }

    /// The worker disconnected or said goodbye: its leases return to their queues at once
    /// (with the next attempt number; this does not count as a failed attempt).
    pub fn worker_left(&mut self, worker: WorkerId) {
        while let Some(ended) = self.leases.release_one_of(worker) {
            self.lost(ended.item, None);
        }
        if let Some(w) = self.workers.get_mut(worker.0 as usize) {
            *w = None;
        }
    }

    /// Leases `worker` holds right now.
    pub fn held_by(&self, worker: WorkerId) -> u32 {
        self.workers
            .get(worker.0 as usize)
            .and_then(Option::as_ref)
            .map_or(0, |w| w.held)
    }

    /// Unused credit of `worker`.
    pub fn credit_of(&self, worker: WorkerId) -> u32 {
        self.workers
            .get(worker.0 as usize)
            .and_then(Option::as_ref)
            .map_or(0, |w| w.credit)
    }

    fn release(
        &mut self,
        worker: WorkerId,
        lease: LeaseId,
    ) -> Result<Option<Leased>, ProtocolError> {
        self.worker_mut(worker)?;
        match self.leases.release(lease, Some(worker)) {
            Ok(ended) => {
                if let Ok(w) = self.worker_mut(worker) {
                    w.held = w.held.saturating_sub(1);
                    w.suspect = false;
                }
                if let Some(j) = self.job_mut(ended.item.job) {
                    j.running = j.running.saturating_sub(1);
                }
                Ok(Some(ended.item))
            }
            Err(LeaseError::Unknown(_)) => {
                self.actions.push_back(Action::Ack { worker, lease });
                Ok(None)
            }
            Err(LeaseError::NotHolder { .. }) => Err(ProtocolError::NotHolder(lease)),
        }
    }

    /// The worker completed `lease` with `output`.
    ///
    /// # Errors
    /// A [`ProtocolError`] if the worker is unknown or answers another worker's lease.
    pub fn complete(
        &mut self,
        worker: WorkerId,
        lease: LeaseId,
        output: &[u8],
    ) -> Result<Answer, ProtocolError> {
        let Some(l) = self.release(worker, lease)? else {
            return Ok(Answer::Stale);
        };
        let Some(j) = self.job_mut(l.job) else {
            return Ok(Answer::Stale);
        };
        let Some(slot) = j.slot(l.task) else {
            return Ok(Answer::Stale);
        };
        slot.state = TaskState::Recording;
        j.settled_written += 1;
        j.outputs.set(l.task, output);
        let lsn = self.append(&Record::TaskDone {
            job: l.job,
            task: l.task,
            attempt: l.attempt,
            output,
        });
        self.pending.push_back((
            lsn,
            Pending::Done {
                job: l.job,
                task: l.task,
                ack: Some((worker, lease)),
            },
        ));
        self.check_finished(l.job);
        Ok(Answer::Accepted)
    }

    /// The worker reports that the task of `lease` failed with `error`.
    ///
    /// # Errors
    /// A [`ProtocolError`] if the worker is unknown or answers another worker's lease.
    pub fn fail(
        &mut self,
        worker: WorkerId,
        lease: LeaseId,
        retry: Retry,
        error: &str,
    ) -> Result<Answer, ProtocolError> {
        let Some(l) = self.release(worker, lease)? else {
            return Ok(Answer::Stale);
        };
        let give_up = retry == Retry::Permanent;
        self.failed_attempt(l, error, give_up, Some((worker, lease)));
        Ok(Answer::Accepted)
    }

    /// A lease ended without an answer: requeue the task, or fail it if it ran out of attempts.
    fn lost(&mut self, l: Leased, failure: Option<&str>) {
        match failure {
            Some(error) => self.failed_attempt(l, error, false, None),
            None => {
                let Some(j) = self.job_mut(l.job) else { return };
                j.running = j.running.saturating_sub(1);
                if let Some(slot) = j.slot(l.task) {
                    slot.state = TaskState::Pending;
                    slot.attempt = slot.attempt.next();
                    j.retry.push_back(l.task);
                }
            }
        }
    }

    fn failed_attempt(
        &mut self,
        l: Leased,
        error: &str,
        give_up: bool,
        ack: Option<(WorkerId, LeaseId)>,
    ) {
        let Some(j) = self.job_mut(l.job) else { return };
        let max = j.max_attempts;
        let Some(slot) = j.slot(l.task) else { return };
        slot.failures = slot.failures.saturating_add(1);
        slot.attempt = slot.attempt.next();
        if give_up || u16::from(slot.failures) >= max {
            let attempts = u16::from(slot.failures);
            self.fail_task(l.job, l.task, attempts, error, ack);
        } else {
            slot.state = TaskState::Pending;
            j.retry.push_back(l.task);
            if let Some((worker, lease)) = ack {
                self.actions.push_back(Action::Ack { worker, lease });
            }
        }
    }

    /// Records that `task` failed for good, and fails every task that depends on it.
    fn fail_task(
        &mut self,
        job: JobId,
        task: TaskId,
        attempts: u16,
        error: &str,
        ack: Option<(WorkerId, LeaseId)>,
    ) {
        let mut stack = alloc::vec![(task, attempts, None::<String>)];
        let mut first = true;
        while let Some((t, attempts, cascaded)) = stack.pop() {
            let Some(j) = self.job_mut(job) else { return };
            let Some(slot) = j.slot(t) else { continue };
            if slot.state.is_settled() || slot.state == TaskState::Leased && !first {
                continue;
            }
            slot.state = TaskState::Failing;
            j.settled_written += 1;
            let text = cascaded.unwrap_or_else(|| error.to_string());
            for &s in j.frontier.successors(t) {
                stack.push((
                    TaskId(s),
                    0,
                    Some(alloc::format!("depends on task {} which failed", t.0)),
                ));
            }
            j.errors.insert(t.0, text.clone());
            let lsn = self.append(&Record::TaskFailed {
                job,
                task: t,
                attempts,
                error: &text,
            });
            let ack = if first { ack } else { None };
            first = false;
            self.pending
                .push_back((lsn, Pending::Failed { job, task: t, ack }));
        }
        self.check_finished(job);
    }

    // ---- replay ----

    /// Applies one record replayed from the log, in log order. Call before creating jobs and
    /// before any worker joins; then call [`Scheduler::replay_done`].
    ///
    /// # Errors
    /// A [`ReplayError`] if the record contradicts the ones before it.
    pub fn replay(&mut self, record: &Record<'_>) -> Result<(), ReplayError> {
        match *record {
            Record::JobHeader {
                job,
                fingerprint,
                name,
                kind,
                tasks,
                edges,
                max_attempts,
                open,
            } => {
                if self.job(job).is_some() || self.resumes.iter().any(|r| r.id == job) {
                    return Err(ReplayError::DuplicateJob(job));
                }
                if open {
                    let kind_id = self.kind_id(kind).unwrap_or(0);
                    let job = Job::new(
                        job,
                        name.to_string(),
                        kind_id,
                        fingerprint,
                        max_attempts.max(1),
                        true,
                        Inputs::new(),
                        Frontier::default(),
                    );
                    self.install(job);
                } else {
                    self.resumes.push(Resume {
                        id: job,
                        name: name.to_string(),
                        kind: kind.to_string(),
                        fingerprint,
                        tasks,
                        edges,
                        done: Vec::new(),
                        failed: Vec::new(),
                        finished: false,
                    });
                }
            }
            Record::TaskAdded { job, task, input } => {
                let j = self.job_mut(job).ok_or(ReplayError::UnknownJob(job))?;
                if !j.open {
                    return Err(ReplayError::NotOpen(job));
                }
                if j.push_task(input) != Some(task) {
                    return Err(ReplayError::UnknownTask(job, task));
                }
            }
            Record::TaskDone {
                job, task, output, ..
            } => {
                if let Some(j) = self.job_mut(job) {
                    if j.state(task).is_none() {
                        return Err(ReplayError::UnknownTask(job, task));
                    }
                    j.restore_done(task, output);
                } else {
                    let r = self.resume_mut(job)?;
                    if task.0 >= r.tasks {
                        return Err(ReplayError::UnknownTask(job, task));
                    }
                    r.done.push((task, output.to_vec()));
                }
            }
            Record::TaskFailed {
                job,
                task,
                attempts,
                error,
            } => {
                if let Some(j) = self.job_mut(job) {
                    if j.state(task).is_none() {
                        return Err(ReplayError::UnknownTask(job, task));
                    }
                    j.restore_failed(task, attempts, error.to_string());
                } else {
                    let r = self.resume_mut(job)?;
                    if task.0 >= r.tasks {
                        return Err(ReplayError::UnknownTask(job, task));
                    }
                    r.failed.push((task, attempts, error.to_string()));
                }
            }
            Record::JobFinished { job } => {
                if let Some(j) = self.job_mut(job) {
                    j.closed = true;
                    j.finishing = true;
                    j.finished = true;
                } else {
                    self.resume_mut(job)?.finished = true;
                }
            }
        }
        Ok(())
    }

    fn resume_mut(&mut self, job: JobId) -> Result<&mut Resume, ReplayError> {
        self.resumes
            .iter_mut()
            .find(|r| r.id == job)
            .ok_or(ReplayError::UnknownJob(job))
    }

    /// Ends replay: rebuilds the queues of the jobs the log brought back on its own (open jobs).
    pub fn replay_done(&mut self) {
        let ids: Vec<JobId> = self.job_ids().collect();
        for id in ids {
            self.after_resume(id);
        }
    }

    fn after_resume(&mut self, job: JobId) {
        let Some(j) = self.job_mut(job) else { return };
        let states: Vec<TaskState> = j.tasks.iter().map(|t| t.state).collect();
        // Failed tasks do not release their successors; they fail them (again, if the cascade's
        // records were lost in a crash).
        j.frontier
            .resume(|t| states.get(t.index()) == Some(&TaskState::Done));
        let failed: Vec<(TaskId, String)> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == TaskState::Failed)
            .map(|(i, _)| (TaskId(i as u32), String::new()))
            .collect();
        for (t, _) in failed {
            let succ: Vec<u32> = self
                .job(job)
                .map(|j| j.frontier.successors(t).to_vec())
                .unwrap_or_default();
            for s in succ {
                if self.task_state(job, TaskId(s)) == Some(TaskState::Pending) {
                    let text = alloc::format!("depends on task {} which failed", t.0);
                    self.fail_task(job, TaskId(s), 0, &text, None);
                }
            }
        }
        self.check_finished(job);
    }

    // ---- time and durability ----

    /// Expires leases whose deadline passed and hands ready tasks to workers with credit.
    pub fn poll(&mut self, now: Instant) {
        while let Some(ended) = self.leases.expire_next(now) {
            if let Ok(w) = self.worker_mut(ended.holder) {
                w.held = w.held.saturating_sub(1);
                w.suspect = true;
            }
            if let Some(j) = self.job_mut(ended.item.job) {
                j.running = j.running.saturating_sub(1);
            }
            warn!("lease of task {} expired", ended.item.task.0);
            self.lost(
                ended.item,
                Some("lease expired (worker hung or unreachable)"),
            );
        }
        self.dispatch(now);
    }

    /// When [`poll`](Self::poll) next has work to do on its own (a lease deadline).
    pub fn poll_at(&self) -> Option<Instant> {
        self.leases.poll_at()
    }

    /// Hands ready tasks to hungry workers. Workers that got leases go to the back of the queue
    /// and the ones that got none keep their place, so scarce tasks spread over workers rather
    /// than all going to the head of the queue.
    fn dispatch(&mut self, now: Instant) {
        let mut rounds = self.hungry.len();
        let mut passed_over = Vec::new();
        while rounds > 0 {
            rounds -= 1;
            let Some(worker) = self.hungry.pop_front() else {
                break;
            };
            let Some(Some(w)) = self.workers.get(worker.0 as usize) else {
                continue;
            };
            if w.suspect {
                passed_over.push(worker);
                continue;
            }
            let mut credit = w.credit;
            let kinds = &w.kinds;
            let jobs = self.jobs.len();
            let mut granted = 0u32;
            let mut idle_jobs = 0;
            while credit > 0 && idle_jobs < jobs {
                let ji = self.next_job % jobs.max(1);
                let Some(Some(job)) = self.jobs.get_mut(ji) else {
                    self.next_job = ji + 1;
                    idle_jobs += 1;
                    continue;
                };
                let Some(&(_, kind_index)) = kinds.iter().find(|(k, _)| *k == job.kind) else {
                    self.next_job = ji + 1;
                    idle_jobs += 1;
                    continue;
                };
                let Some(task) = job.next_ready() else {
                    self.next_job = ji + 1;
                    idle_jobs += 1;
                    continue;
                };
                idle_jobs = 0;
                let job_id = job.id;
                job.running += 1;
                let Some(slot) = job.slot(task) else { continue };
                slot.state = TaskState::Leased;
                let attempt = slot.attempt;
                let leased = Leased {
                    job: job_id,
                    task,
                    attempt,
                };
                let lease = self.leases.grant(now, worker, leased);
                self.actions.push_back(Action::Grant {
                    worker,
                    lease,
                    job: job_id,
                    task,
                    attempt,
                    kind: kind_index,
                });
                credit -= 1;
                granted += 1;
                self.next_job = ji + 1;
            }
            if let Some(Some(w)) = self.workers.get_mut(worker.0 as usize) {
                w.credit = credit;
                w.held += granted;
                if credit == 0 {
                    w.hungry = false;
                } else if granted == 0 {
                    passed_over.push(worker);
                } else {
                    self.hungry.push_back(worker);
                }
            }
        }
        for worker in passed_over.into_iter().rev() {
            self.hungry.push_front(worker);
        }
    }

    /// Moves the log bytes written since the last call into `out` (appending), and returns the
    /// LSN of the last record among them, or `None` if there were none. Once those bytes are
    /// durable, call [`durable`](Self::durable) with that LSN.
    pub fn take_log(&mut self, out: &mut Vec<u8>) -> Option<Lsn> {
        if self.log.is_empty() {
            return None;
        }
        if out.is_empty() {
            core::mem::swap(out, &mut self.log);
        } else {
            out.append(&mut self.log);
        }
        Some(Lsn(self.next_lsn - 1))
    }

    /// Whether log bytes wait for [`take_log`](Self::take_log).
    pub fn has_log(&self) -> bool {
        !self.log.is_empty()
    }

    /// Records up to `lsn` are durable: acknowledge them, release dependents, report results.
    pub fn durable(&mut self, lsn: Lsn) {
        while let Some(&(at, effect)) = self.pending.front() {
            if at > lsn {
                break;
            }
            self.pending.pop_front();
            match effect {
                Pending::Done { job, task, ack } => {
                    if let Some(j) = self.job_mut(job) {
                        if let Some(slot) = j.slot(task) {
                            slot.state = TaskState::Done;
                        }
                        j.done += 1;
                        j.frontier.finish(task, |_| {});
                    }
                    if let Some((worker, lease)) = ack {
                        self.actions.push_back(Action::Ack { worker, lease });
                    }
                    self.actions.push_back(Action::TaskDone { job, task });
                }
                Pending::Failed { job, task, ack } => {
                    if let Some(j) = self.job_mut(job) {
                        if let Some(slot) = j.slot(task) {
                            slot.state = TaskState::Failed;
                        }
                        j.failed += 1;
                    }
                    if let Some((worker, lease)) = ack {
                        self.actions.push_back(Action::Ack { worker, lease });
                    }
                    self.actions.push_back(Action::TaskFailed { job, task });
                }
                Pending::JobFinished { job } => {
                    if let Some(j) = self.job_mut(job) {
                        j.finished = true;
                    }
                    self.actions.push_back(Action::JobFinished { job });
                }
            }
        }
    }

    fn check_finished(&mut self, job: JobId) {
        let Some(j) = self.job_mut(job) else { return };
        if j.finishing || !j.all_settled() {
            return;
        }
        j.finishing = true;
        let lsn = self.append(&Record::JobFinished { job });
        self.pending.push_back((lsn, Pending::JobFinished { job }));
    }

    /// Takes the next action for the transport.
    pub fn pop_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether every live job finished durably (and at least one exists).
    pub fn all_finished(&self) -> bool {
        let mut any = false;
        for j in self.jobs.iter().flatten() {
            if !j.finished {
                return false;
            }
            any = true;
        }
        any && self.resumes.is_empty()
    }

    /// Approximate heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.jobs
            .iter()
            .flatten()
            .map(Job::heap_bytes)
            .sum::<usize>()
            + self.log.capacity()
            + 24 * self.pending.capacity()
            + 32 * self.actions.capacity()
    }
}

impl Job {
    fn frontier_edges(&self) -> u32 {
        (0..self.total())
            .map(|t| self.frontier.successors(TaskId(t)).len() as u32)
            .sum()
    }
}

/// The fingerprint of a job: its kind, and for a closed job its inputs and edges. An open job's
/// tasks come and go, so its fingerprint covers its name and kind only.
fn job_fingerprint(def: &JobDef<'_>) -> [u8; 32] {
    let mut fp = Fingerprint::new(def.kind);
    if def.open {
        fp.add_input(def.name.as_bytes());
    } else {
        for input in def.inputs.iter() {
            fp.add_input(input);
        }
        for e in def.edges {
            fp.add_edge(e.before, e.after);
        }
    }
    fp.finish()
}

#[cfg(test)]
mod tests;
