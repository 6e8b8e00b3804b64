//! Every message of the protocol, as serde types encoded with postcard.
//!
//! Messages borrow their byte and string fields from the frame they were decoded from, so a
//! worker without an allocator decodes a lease in place. Lists travel as a [`Batch`]: a count and
//! the concatenated postcard encodings of the items, decoded lazily one item at a time.
//!
//! The order of the variants of [`Message`] and of every enum here is part of the wire format
//! (postcard encodes a variant as its index): new variants go at the end, never in between. See
//! `docs/wire-format.md`.

use serde::{Deserialize, Serialize};

use super::batch::Batch;
use crate::id::{Attempt, JobId, LeaseId, TaskId, WorkerId};

/// The protocol version this crate speaks. Bumped on any incompatible change of the wire format.
pub const PROTOCOL_VERSION: u16 = 1;

/// Length of a handshake nonce, in bytes.
pub const NONCE_LEN: usize = 16;

/// Length of an HMAC-SHA256 proof, in bytes.
pub const PROOF_LEN: usize = 32;

/// A fresh random challenge, chosen by each side of a handshake.
pub type Nonce = [u8; NONCE_LEN];

/// An HMAC-SHA256 tag proving knowledge of the shared secret.
pub type Proof = [u8; PROOF_LEN];

/// One protocol message. See the module docs for the stability rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Message<'a> {
    // ---- handshake (every connection, either role) ----
    /// Connector → server: first message on a connection.
    ClientHello(ClientHello),
    /// Server → connector: the server's challenge, and its proof over the connector's nonce.
    ServerHello(ServerHello),
    /// Connector → server: proof over the server's nonce, and what the connector is.
    #[serde(borrow)]
    Join(Join<'a>),
    /// Server → connector: the handshake succeeded.
    Welcome(Welcome),

    // ---- worker ↔ server ----
    /// Worker → server: "you may send me up to `count` more leases".
    Credit {
        /// Additional leases the worker can take now, on top of those it already holds.
        count: u32,
    },
    /// Server → worker: a batch of leases; never more than the worker's outstanding credit.
    #[serde(borrow)]
    Grant(Batch<'a, LeaseGrant<'a>>),
    /// Either way: "I am alive". From a worker it renews every lease it holds; the server echoes
    /// one back so the worker can tell a live server from a hung link.
    Heartbeat,
    /// Worker → server: the task of `lease` produced `output`.
    Complete {
        /// The lease this completion answers.
        lease: LeaseId,
        /// The task's output bytes.
        #[serde(borrow)]
        output: &'a [u8],
    },
    /// Worker → server: the task of `lease` failed.
    Fail {
        /// The lease this failure answers.
        lease: LeaseId,
        /// Whether another attempt may succeed.
        retry: Retry,
        /// Human-readable error text from the task.
        #[serde(borrow)]
        error: &'a str,
    },
    /// Server → worker: the result for `lease` is durable; the worker may forget it.
    Ack {
        /// The lease whose result is recorded.
        lease: LeaseId,
    },
    /// Server → worker: the lease was revoked (the task finished elsewhere or its job ended);
    /// the worker should stop the task if it can and send nothing for it.
    Revoke {
        /// The revoked lease.
        lease: LeaseId,
    },
    /// Either way: the sender is leaving on purpose; the receiver should close the connection.
    Goodbye,
    /// Server → any peer: a job ended. A for-loop worker exits when the job it serves ends.
    JobFinished {
        /// The job that ended.
        job: JobId,
        /// How it ended.
        outcome: JobOutcome,
    },
    /// Server → any peer: the server is shutting down; reconnect later.
    ServerGoingAway,
    /// Either way: the sender closes the connection because of `code`.
    Error {
        /// Why.
        code: ErrorCode,
        /// Free-form detail for humans, possibly empty.
        #[serde(borrow)]
        detail: &'a str,
    },

    // ---- task client ↔ server ----
    /// Client → server: create (or resume) a job. Its inputs and edges follow in
    /// [`Message::AddTasks`] and [`Message::AddEdges`] chunks, then [`Message::SealJob`].
    #[serde(borrow)]
    CreateJob(JobSpec<'a>),
    /// Client → server: a chunk of task inputs, in task order.
    AddTasks {
        /// The job being created.
        job: JobId,
        /// One input per task.
        #[serde(borrow)]
        inputs: Batch<'a, &'a [u8]>,
    },
    /// Client → server: a chunk of dependency edges `(before, after)`.
    AddEdges {
        /// The job being created.
        job: JobId,
        /// The edges.
        #[serde(borrow)]
        edges: Batch<'a, Edge>,
    },
    /// Client → server: every input and edge was sent; check the fingerprint and start.
    SealJob {
        /// The job being created.
        job: JobId,
    },
    /// Server → client: the job exists (new, or resumed from its log).
    JobAccepted {
        /// The server's id for the job.
        job: JobId,
        /// Tasks already done when the job was resumed from its log (0 for a new job).
        already_done: u32,
    },
    /// Client → server: add one task to an open job (the executor's `submit`).
    Submit {
        /// The open job.
        job: JobId,
        /// The task's input.
        #[serde(borrow)]
        input: &'a [u8],
    },
    /// Server → client: the task was queued under `task`.
    Submitted {
        /// The job.
        job: JobId,
        /// The new task's id.
        task: TaskId,
    },
    /// Server → client: a task finished; its output is durable.
    TaskDone {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// Its output.
        #[serde(borrow)]
        output: &'a [u8],
    },
    /// Server → client: a task failed for good (attempts exhausted or not retryable).
    TaskFailed {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// How many attempts were made.
        attempts: u16,
        /// The last error text.
        #[serde(borrow)]
        error: &'a str,
    },
    /// Client → server: ask for the status of one job, or of all jobs.
    StatusQuery {
        /// `None` for every job.
        job: Option<JobId>,
    },
    /// Server → client: the answer to [`Message::StatusQuery`].
    #[serde(borrow)]
    Status(Batch<'a, JobStatus<'a>>),
}

/// The connector's opening message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientHello {
    /// The protocol version the connector speaks.
    pub version: u16,
    /// The connector's challenge to the server.
    pub nonce: Nonce,
    /// The largest frame the connector accepts.
    pub max_frame: u32,
}

/// The server's answer to [`ClientHello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerHello {
    /// The protocol version the server speaks.
    pub version: u16,
    /// The server's challenge to the connector.
    pub nonce: Nonce,
    /// The agreed maximum frame size: the smaller of both sides' limits. Binds both directions.
    pub max_frame: u32,
    /// HMAC-SHA256 of the connector's nonce (see `handshake`): the server knows the secret.
    pub proof: Proof,
}

/// The connector's proof and its role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Join<'a> {
    /// HMAC-SHA256 of the server's nonce (see `handshake`): the connector knows the secret.
    pub proof: Proof,
    /// What the connector is.
    #[serde(borrow)]
    pub role: Role<'a>,
}

/// What a connector is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Role<'a> {
    /// A worker that runs tasks.
    #[serde(borrow)]
    Worker(WorkerHello<'a>),
    /// A task client that creates jobs and collects results.
    #[serde(borrow)]
    Client(ClientInfo<'a>),
    /// A read-only observer (status queries only).
    Observer,
}

/// A worker's self-description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WorkerHello<'a> {
    /// A human-readable name (host name and process, board id, …).
    pub name: &'a str,
    /// What the worker runs on.
    pub platform: Platform,
    /// The task kinds it can run. A [`LeaseGrant`] names its kind by index into this list.
    #[serde(borrow)]
    pub kinds: Batch<'a, &'a str>,
    /// How many tasks it runs at once.
    pub slots: u32,
}

/// A task client's self-description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientInfo<'a> {
    /// A human-readable name.
    pub name: &'a str,
}

/// The platform a worker runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Platform {
    /// Linux.
    Linux,
    /// macOS.
    MacOs,
    /// Windows.
    Windows,
    /// A microcontroller.
    Mcu,
    /// A web browser.
    Browser,
    /// An iOS or iPadOS app.
    Ios,
    /// Anything else.
    Other,
}

/// The server's acceptance of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Welcome {
    /// The id the server gave this worker (0 for clients and observers).
    pub worker: WorkerId,
    /// How long a lease lasts without renewal, in milliseconds.
    pub lease_ms: u32,
    /// How often the peer should send a heartbeat, in milliseconds.
    pub heartbeat_ms: u32,
}

/// One lease in a [`Message::Grant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LeaseGrant<'a> {
    /// The lease; the worker answers with it.
    pub lease: LeaseId,
    /// The job of the task.
    pub job: JobId,
    /// The task within its job.
    pub task: TaskId,
    /// Which attempt this is (0 for the first).
    pub attempt: Attempt,
    /// Index of the task's kind in the worker's [`WorkerHello::kinds`].
    pub kind: u16,
    /// The task's input bytes.
    pub input: &'a [u8],
}

/// Whether a failed task may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Retry {
    /// Another attempt may succeed (a panic, a transient error).
    Retryable,
    /// Another attempt would fail the same way (bad input).
    Permanent,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum JobOutcome {
    /// Every task is done or failed; the job's results are final.
    Finished,
    /// The job was cancelled before it finished.
    Cancelled,
}

/// Why a peer closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The handshake proof was wrong: the peer does not know the secret.
    AuthFailed,
    /// A frame could not be decoded, or came at the wrong time.
    BadMessage,
    /// A frame was larger than the agreed maximum.
    FrameTooLarge,
    /// The peer sent more than its limits allow (leases beyond credit, too many tasks, …).
    LimitExceeded,
    /// The handshake did not finish in time, or a peer went silent.
    Timeout,
    /// A resumed job does not match its log (other inputs, edges or kind).
    FingerprintMismatch,
    /// The job named does not exist.
    UnknownJob,
    /// A job's dependency edges form a cycle.
    Cycle,
    /// Anything else; see the detail text.
    Other,
}

/// A job's description, as sent by a task client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct JobSpec<'a> {
    /// The job's name; with a data folder, names the job's log so it resumes after a restart.
    pub name: &'a str,
    /// The task kind every task of the job runs.
    pub kind: &'a str,
    /// Number of tasks that will follow in [`Message::AddTasks`]. 0 for an open job (`submit`).
    pub tasks: u32,
    /// Number of edges that will follow in [`Message::AddEdges`].
    pub edges: u32,
    /// Attempts per task before it fails for good (at least 1).
    pub max_attempts: u16,
    /// Whether more tasks may be added with [`Message::Submit`] after sealing.
    pub open: bool,
}

/// A dependency edge: `before` runs (and is recorded) before `after` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Edge {
    /// The predecessor.
    pub before: TaskId,
    /// The dependent.
    pub after: TaskId,
}

/// One job's progress in a [`Message::Status`] reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct JobStatus<'a> {
    /// The job.
    pub job: JobId,
    /// Its name.
    pub name: &'a str,
    /// Tasks in the job.
    pub total: u32,
    /// Tasks done.
    pub done: u32,
    /// Tasks failed for good.
    pub failed: u32,
    /// Tasks leased right now.
    pub running: u32,
    /// Whether the job has ended.
    pub finished: bool,
}
