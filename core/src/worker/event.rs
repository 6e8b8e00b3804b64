//! What the worker hands its caller: events from frames, actions from the clock, and tasks.
//!
//! Invariants:
//! - A [`Task`] borrows its input from the frame it arrived in (`'f`); nothing is copied. The
//!   caller runs it, or copies the input, before it reuses that frame's buffer.
//! - A [`Ticket`] names one lease on one connection: a ticket from an earlier connection never
//!   matches a lease of a later one, even if the server reuses the lease id after a restart.
//! - Every task of a [`Grants`] was validated (kind known, lease new, within credit) and is held
//!   by the worker before the caller sees it.

use core::fmt;

use super::error::WorkerError;
use crate::id::{Attempt, JobId, LeaseId, TaskId, WorkerId};
use crate::proto::{Batch, ErrorCode, JobOutcome, LeaseGrant};

/// One lease on one connection; the handle for answering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ticket {
    lease: LeaseId,
    session: u32,
}

impl Ticket {
    pub(super) const fn new(lease: LeaseId, session: u32) -> Self {
        Ticket { lease, session }
    }

    /// The lease, as the server names it.
    pub const fn lease(&self) -> LeaseId {
        self.lease
    }

    /// The connection the lease was granted on (counts connections since the worker was made).
    pub const fn session(&self) -> u32 {
        self.session
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.lease, self.session)
    }
}

/// One granted task, borrowing its input from the frame it arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Task<'f> {
    ticket: Ticket,
    job: JobId,
    task: TaskId,
    attempt: Attempt,
    kind: u16,
    kind_name: &'f str,
    input: &'f [u8],
}

impl<'f> Task<'f> {
    /// The handle to answer the task with.
    pub const fn ticket(&self) -> Ticket {
        self.ticket
    }

    /// The lease.
    pub const fn lease(&self) -> LeaseId {
        self.ticket.lease
    }

    /// The task's job.
    pub const fn job(&self) -> JobId {
        self.job
    }

    /// The task within its job.
    pub const fn task(&self) -> TaskId {
        self.task
    }

    /// Which attempt this is (0 for the first).
    pub const fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The task's kind, as an index into the configured kinds.
    pub const fn kind(&self) -> usize {
        self.kind as usize
    }

    /// The task's kind, by name.
    pub const fn kind_name(&self) -> &'f str {
        self.kind_name
    }

    /// The task's input bytes.
    pub const fn input(&self) -> &'f [u8] {
        self.input
    }
}

/// The leases of one grant, all already held by the worker. The caller must answer every one of
/// them ([`complete`](super::Worker::complete), [`fail`](super::Worker::fail) or
/// [`run`](super::Worker::run)), or the slot stays taken until the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Grants<'f> {
    batch: Batch<'f, LeaseGrant<'f>>,
    kinds: &'f [&'f str],
    session: u32,
}

impl<'f> Grants<'f> {
    pub(super) const fn new(
        batch: Batch<'f, LeaseGrant<'f>>,
        kinds: &'f [&'f str],
        session: u32,
    ) -> Self {
        Grants {
            batch,
            kinds,
            session,
        }
    }

    /// How many tasks the grant holds.
    pub const fn len(&self) -> usize {
        self.batch.len() as usize
    }

    /// Whether the grant is empty.
    pub const fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The tasks, in the order the server sent them.
    pub fn iter(&self) -> GrantIter<'f> {
        GrantIter {
            items: self.batch.iter(),
            kinds: self.kinds,
            session: self.session,
        }
    }
}

impl<'f> IntoIterator for Grants<'f> {
    type Item = Task<'f>;
    type IntoIter = GrantIter<'f>;

    fn into_iter(self) -> GrantIter<'f> {
        self.iter()
    }
}

impl<'f> IntoIterator for &Grants<'f> {
    type Item = Task<'f>;
    type IntoIter = GrantIter<'f>;

    fn into_iter(self) -> GrantIter<'f> {
        self.iter()
    }
}

/// Iterator over the tasks of a [`Grants`].
pub struct GrantIter<'f> {
    items: crate::proto::BatchIter<'f, LeaseGrant<'f>>,
    kinds: &'f [&'f str],
    session: u32,
}

impl<'f> Iterator for GrantIter<'f> {
    type Item = Task<'f>;

    fn next(&mut self) -> Option<Task<'f>> {
        // The batch was decoded in full when it arrived, so no item fails here; stop if one did.
        let grant = self.items.next()?.ok()?;
        let kind_name = self.kinds.get(usize::from(grant.kind)).copied()?;
        Some(Task {
            ticket: Ticket::new(grant.lease, self.session),
            job: grant.job,
            task: grant.task,
            attempt: grant.attempt,
            kind: grant.kind,
            kind_name,
            input: grant.input,
        })
    }
}

impl fmt::Debug for GrantIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantIter")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// What a frame from the server meant, when the caller has something to do or know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event<'f> {
    /// The handshake completed; the worker is ready and asks for work.
    Ready {
        /// The id the server gave the worker.
        worker: WorkerId,
    },
    /// New tasks to run.
    Granted(Grants<'f>),
    /// The server took a lease back (its task finished elsewhere or its job ended). The worker
    /// no longer holds it; stop the task if possible. Answering it later sends nothing.
    Revoked(Ticket),
    /// The server recorded the result of a lease durably.
    Acked(Ticket),
    /// A job ended. A for-loop worker says [`goodbye`](super::Worker::goodbye) and exits; a pool
    /// worker carries on.
    JobFinished {
        /// The job.
        job: JobId,
        /// How it ended.
        outcome: JobOutcome,
    },
    /// The server is shutting down. The worker is closing and will reconnect with backoff.
    ServerGoingAway,
    /// The server said goodbye. The worker is closing and will reconnect with backoff.
    ServerGoodbye,
    /// The server closes the connection because of `code`. The worker is closing and will
    /// reconnect with backoff.
    ServerError {
        /// Why.
        code: ErrorCode,
        /// The server's detail text, possibly empty.
        detail: &'f str,
    },
}

/// Result of [`Worker::receive`](super::Worker::receive): how much of the receive buffer was
/// used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Received<'f> {
    /// The buffer holds only part of a frame: read at least `needed` more bytes.
    Incomplete {
        /// Bytes still missing, at least 1.
        needed: usize,
    },
    /// One frame was handled; drop its `len` bytes from the front of the buffer once `event` is
    /// no longer needed.
    Frame {
        /// The frame's length, header included.
        len: usize,
        /// What it meant, if anything.
        event: Option<Event<'f>>,
    },
}

/// Something the transport must do, from [`Worker::poll`](super::Worker::poll).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Action {
    /// Open a connection to the server, then call [`connected`](super::Worker::connected) (or
    /// [`disconnected`](super::Worker::disconnected) if it failed).
    Connect,
    /// Send what [`poll_transmit`](super::Worker::poll_transmit) still gives, close the
    /// connection, then call [`disconnected`](super::Worker::disconnected).
    Close(CloseReason),
}

/// Why the worker closes its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CloseReason {
    /// Nothing came from the server for the configured number of heartbeat intervals.
    Silent,
    /// The server broke the protocol.
    Protocol(WorkerError),
    /// The server sent an error.
    ServerError(ErrorCode),
    /// The server is shutting down.
    ServerGoingAway,
    /// The server said goodbye.
    ServerGoodbye,
    /// The worker said goodbye.
    Goodbye,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Silent => f.write_str("server went silent"),
            CloseReason::Protocol(err) => write!(f, "protocol error: {err}"),
            CloseReason::ServerError(code) => write!(f, "server error: {code:?}"),
            CloseReason::ServerGoingAway => f.write_str("server going away"),
            CloseReason::ServerGoodbye => f.write_str("server said goodbye"),
            CloseReason::Goodbye => f.write_str("worker said goodbye"),
        }
    }
}

/// Where the worker is in its connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Status {
    /// No connection; waiting out the backoff.
    Disconnected,
    /// Asked the transport to connect, waiting for it.
    Connecting,
    /// Connected; the handshake is under way.
    Handshaking,
    /// Welcomed: asking for, receiving and answering leases.
    Ready,
    /// Waiting for the transport to close the connection.
    Closing,
}
