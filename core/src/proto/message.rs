//! Every message of the protocol, as serde types encoded with postcard.
//!
//! Messages borrow their byte and string fields from the frame they were decoded from, so a
//! worker without an allocator decodes a lease in place. Lists travel as a [`Batch`]: a count and
//! the concatenated postcard encodings of the items, decoded lazily one item at a time.
//!
//! The order of the variants of [`Message`] and of every enum here is part of the wire format
//! (postcard encodes a variant as its index): new variants go at the end, never in between. See
//! `docs/wire-format.md`.

use serde::{Deserialize, Serialize, Serializer};

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
        #[serde(borrow, serialize_with = "bytes")]
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
        #[serde(borrow, serialize_with = "bytes")]
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
        #[serde(borrow, serialize_with = "bytes")]
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

    // ---- remote calls (the for-loop's `execute`) ----
    /// Any authenticated peer → server: run the function registered on the serving process as
    /// `name` with `args`. Nothing from the wire runs as code: unknown names are refused.
    Call {
        /// The caller's number for this call, echoed in the answer.
        call: u32,
        /// The registered function's name.
        name: &'a str,
        /// Its postcard-encoded arguments.
        #[serde(borrow, serialize_with = "bytes")]
        args: &'a [u8],
    },
    /// Server → caller: the call returned `result` (postcard-encoded).
    CallReturn {
        /// The call answered.
        call: u32,
        /// The function's postcard-encoded result.
        #[serde(borrow, serialize_with = "bytes")]
        result: &'a [u8],
    },
    /// Server → caller: the call failed (unknown function, bad arguments, or the function's
    /// own error).
    CallError {
        /// The call answered.
        call: u32,
        /// Why.
        error: &'a str,
    },
}

/// Number of variants of [`Message`]; a payload whose leading varint is at least this is a
/// message from a newer protocol minor version.
pub(crate) const MESSAGE_VARIANTS: u32 = 29;

impl Message<'_> {
    /// The variant's name, for logs and error details.
    pub const fn name(&self) -> &'static str {
        match self {
            Message::ClientHello(_) => "ClientHello",
            Message::ServerHello(_) => "ServerHello",
            Message::Join(_) => "Join",
            Message::Welcome(_) => "Welcome",
            Message::Credit { .. } => "Credit",
            Message::Grant(_) => "Grant",
            Message::Heartbeat => "Heartbeat",
            Message::Complete { .. } => "Complete",
            Message::Fail { .. } => "Fail",
            Message::Ack { .. } => "Ack",
            Message::Revoke { .. } => "Revoke",
            Message::Goodbye => "Goodbye",
            Message::JobFinished { .. } => "JobFinished",
            Message::ServerGoingAway => "ServerGoingAway",
            Message::Error { .. } => "Error",
            Message::CreateJob(_) => "CreateJob",
            Message::AddTasks { .. } => "AddTasks",
            Message::AddEdges { .. } => "AddEdges",
            Message::SealJob { .. } => "SealJob",
            Message::JobAccepted { .. } => "JobAccepted",
            Message::Submit { .. } => "Submit",
            Message::Submitted { .. } => "Submitted",
            Message::TaskDone { .. } => "TaskDone",
            Message::TaskFailed { .. } => "TaskFailed",
            Message::StatusQuery { .. } => "StatusQuery",
            Message::Status(_) => "Status",
            Message::Call { .. } => "Call",
            Message::CallReturn { .. } => "CallReturn",
            Message::CallError { .. } => "CallError",
        }
    }

    /// Whether the message belongs to the handshake (and so is bound by
    /// [`HANDSHAKE_MAX_FRAME`](super::HANDSHAKE_MAX_FRAME) whenever it is sent).
    pub const fn is_handshake(&self) -> bool {
        matches!(
            self,
            Message::ClientHello(_)
                | Message::ServerHello(_)
                | Message::Join(_)
                | Message::Welcome(_)
        )
    }
}

/// Serializes a byte field as one byte string. The bytes on the wire are what serde's default
/// (a sequence of `u8`) gives, but they are copied in one go rather than byte by byte.
fn bytes<S: Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
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
    #[serde(borrow, serialize_with = "bytes")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BatchBuf, HEADER_LEN, decode_message, encode_frame_into};

    /// Encodes and decodes `message` through a frame, checking it comes back equal and that its
    /// leading byte is its variant index.
    fn round_trip(index: u8, message: &Message<'_>) {
        let mut frame = Vec::new();
        encode_frame_into(message, &mut frame).unwrap();
        let payload = &frame[HEADER_LEN..];
        assert_eq!(payload[0], index, "{}", message.name());
        assert_eq!(&decode_message(payload).unwrap(), message);
    }

    #[test]
    fn every_message_round_trips() {
        let mut kinds = BatchBuf::new();
        kinds.push("sum").unwrap();
        kinds.push("square").unwrap();
        let mut grants = BatchBuf::new();
        for i in 0..4u32 {
            let input = [i as u8; 5];
            grants
                .push(&LeaseGrant {
                    lease: LeaseId(u64::MAX - u64::from(i)),
                    job: JobId(7),
                    task: TaskId(i),
                    attempt: Attempt(u16::MAX),
                    kind: 1,
                    input: &input,
                })
                .unwrap();
        }
        let mut inputs = BatchBuf::new();
        inputs.push_bytes(b"first").unwrap();
        inputs.push_bytes(b"").unwrap();
        let mut edges = BatchBuf::new();
        edges
            .push(&Edge {
                before: TaskId(0),
                after: TaskId(1),
            })
            .unwrap();
        let mut statuses = BatchBuf::new();
        statuses
            .push(&JobStatus {
                job: JobId(1),
                name: "squares",
                total: 100,
                done: 50,
                failed: 1,
                running: 4,
                finished: false,
            })
            .unwrap();
        let nonce = [0x5A; NONCE_LEN];
        let proof = [0xC3; PROOF_LEN];
        let messages = [
            Message::ClientHello(ClientHello {
                version: PROTOCOL_VERSION,
                nonce,
                max_frame: 4096,
            }),
            Message::ServerHello(ServerHello {
                version: 1,
                nonce,
                max_frame: 1024,
                proof,
            }),
            Message::Join(Join {
                proof,
                role: Role::Worker(WorkerHello {
                    name: "pico-1",
                    platform: Platform::Mcu,
                    kinds: kinds.as_batch(),
                    slots: 1,
                }),
            }),
            Message::Welcome(Welcome {
                worker: WorkerId(3),
                lease_ms: 30_000,
                heartbeat_ms: 5_000,
            }),
            Message::Credit { count: u32::MAX },
            Message::Grant(grants.as_batch()),
            Message::Heartbeat,
            Message::Complete {
                lease: LeaseId(1 << 40),
                output: &[0, 1, 2, 3, 4, 5, 6, 7],
            },
            Message::Fail {
                lease: LeaseId(2),
                retry: Retry::Retryable,
                error: "panicked: ünïcode",
            },
            Message::Ack { lease: LeaseId(0) },
            Message::Revoke {
                lease: LeaseId(127),
            },
            Message::Goodbye,
            Message::JobFinished {
                job: JobId(9),
                outcome: JobOutcome::Cancelled,
            },
            Message::ServerGoingAway,
            Message::Error {
                code: ErrorCode::Other,
                detail: "",
            },
            Message::CreateJob(JobSpec {
                name: "job",
                kind: "square",
                tasks: 2,
                edges: 1,
                max_attempts: 3,
                open: true,
            }),
            Message::AddTasks {
                job: JobId(4),
                inputs: inputs.as_batch(),
            },
            Message::AddEdges {
                job: JobId(4),
                edges: edges.as_batch(),
            },
            Message::SealJob { job: JobId(4) },
            Message::JobAccepted {
                job: JobId(4),
                already_done: 17,
            },
            Message::Submit {
                job: JobId(4),
                input: &[0xFF; 300],
            },
            Message::Submitted {
                job: JobId(4),
                task: TaskId(300),
            },
            Message::TaskDone {
                job: JobId(4),
                task: TaskId(1),
                output: b"out",
            },
            Message::TaskFailed {
                job: JobId(4),
                task: TaskId(2),
                attempts: 3,
                error: "boom",
            },
            Message::StatusQuery { job: None },
            Message::Status(statuses.as_batch()),
            Message::Call {
                call: 7,
                name: "save",
                args: b"\x01\x02",
            },
            Message::CallReturn {
                call: 7,
                result: b"ok",
            },
            Message::CallError {
                call: 7,
                error: "no such function",
            },
        ];
        assert_eq!(messages.len(), MESSAGE_VARIANTS as usize);
        for (index, message) in messages.iter().enumerate() {
            round_trip(index as u8, message);
            assert_eq!(message.is_handshake(), index < 4);
        }
        round_trip(
            24,
            &Message::StatusQuery {
                job: Some(JobId(u32::MAX)),
            },
        );
        for role in [Role::Client(ClientInfo { name: "cli" }), Role::Observer] {
            round_trip(2, &Message::Join(Join { proof, role }));
        }
        for platform in [
            Platform::Linux,
            Platform::MacOs,
            Platform::Windows,
            Platform::Browser,
        ] {
            let role = Role::Worker(WorkerHello {
                name: "",
                platform,
                kinds: Batch::empty(),
                slots: 0,
            });
            round_trip(2, &Message::Join(Join { proof, role }));
        }
    }

    #[test]
    fn batches_decode_their_items() {
        let mut grants = BatchBuf::new();
        let grant = LeaseGrant {
            lease: LeaseId(5),
            job: JobId(1),
            task: TaskId(2),
            attempt: Attempt(1),
            kind: 0,
            input: b"abc",
        };
        grants.push(&grant).unwrap();
        grants
            .push(&LeaseGrant {
                task: TaskId(3),
                ..grant
            })
            .unwrap();
        let mut frame = Vec::new();
        encode_frame_into(&Message::Grant(grants.as_batch()), &mut frame).unwrap();
        let Message::Grant(batch) = decode_message(&frame[HEADER_LEN..]).unwrap() else {
            panic!("not a grant")
        };
        let tasks: Vec<_> = batch.iter().map(|g| g.unwrap().task).collect();
        assert_eq!(tasks, [TaskId(2), TaskId(3)]);
        assert_eq!(batch.iter().next().unwrap().unwrap().input, b"abc");
    }

    #[test]
    fn names_are_distinct() {
        let names = [
            Message::Heartbeat.name(),
            Message::Goodbye.name(),
            Message::ServerGoingAway.name(),
            Message::Credit { count: 0 }.name(),
        ];
        assert_eq!(names, ["Heartbeat", "Goodbye", "ServerGoingAway", "Credit"]);
    }
}
