//! The worker's state machine: handshake, credit, leases, heartbeats and reconnect backoff, with
//! no allocator, no socket and no clock.
//!
//! A transport (tokio on a host, embassy on a microcontroller) owns the socket and the clock and
//! drives one [`Worker`]: it asks [`Worker::poll`] what to do (connect, close), hands in what it
//! reads ([`Worker::receive`] or [`Worker::handle_frame`]), sends what
//! [`Worker::poll_transmit`] writes into its buffer, and sleeps until [`Worker::poll_at`]. Tasks
//! arrive as [`Event::Granted`]; the caller answers each with [`Worker::complete`] or
//! [`Worker::fail`], or lets [`Worker::run`] call a [`TaskHandler`] and do both.
//!
//! ```
//! use colony_core::proto::{Message, Platform};
//! use colony_core::worker::{Action, Config, Status, Worker};
//! use colony_core::Instant;
//!
//! let config = Config::new("board-7", b"a shared secret of 32 bytes or so", &["square"])
//!     .with_platform(Platform::Mcu);
//! let mut worker: Worker<'_, 1> = Worker::new(config)?;
//! let now = Instant::ZERO;
//! assert_eq!(worker.poll(now), Some(Action::Connect));
//! worker.connected(now, [7; 16]); // a fresh random nonce in real life
//! let mut tx = [0u8; 2048];
//! let n = worker.poll_transmit(now, &mut tx)?.unwrap_or(0);
//! // tx[..n] holds the ClientHello frame, for the socket.
//! assert!(n > 0);
//! assert_eq!(worker.status(), Status::Handshaking);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Invariants:
//! - The worker never holds more leases than it was granted credit for, nor more than its
//!   configured slots: `held + outstanding credit + credit not yet sent == slots` while ready. A
//!   grant beyond the outstanding credit is a protocol error.
//! - Credit is sent only after the frames answering the leases it replaces: a `Complete` or
//!   `Fail` is written by [`Worker::complete`] / [`Worker::fail`] at once, the `Credit` by a later
//!   [`Worker::poll_transmit`], so a transport that sends in call order keeps them in order.
//! - Leases belong to one connection: losing it (or closing it) drops them all, since the server
//!   re-issues them. Answers for dropped leases are discarded ([`Ticket`]s fence them).
//! - Every input from the server is checked; a bad one is an error and closes the connection,
//!   never a panic. After any error the worker is closing: [`Worker::poll`] returns
//!   [`Action::Close`] until the transport calls [`Worker::disconnected`].
//! - Until `Welcome`, frames are bound by [`HANDSHAKE_MAX_FRAME`]; afterwards by the limit agreed
//!   in `ServerHello`, both ways.
//! - The reconnect delay grows by the backoff factor after each connection that ends before
//!   `Welcome`, and returns to its initial value with every `Welcome`.

mod config;
mod error;
mod event;
mod handler;

pub use config::{Backoff, Config, ConfigError};
pub use error::{CompleteError, TransmitError, WorkerError};
pub use event::{Action, CloseReason, Event, GrantIter, Grants, Received, Status, Task, Ticket};
pub use handler::{TaskError, TaskHandler};

use crate::id::{LeaseId, WorkerId};
use crate::proto::{
    Batch, ClientHandshake, Decoded, EncodeError, ErrorCode, FrameDecoder, HANDSHAKE_MAX_FRAME,
    HEADER_LEN, Join, LeaseGrant, Message, Nonce, Proof, Retry, Role, WorkerHello, decode_message,
    encode_frame, encoded_len,
};
use crate::time::{Duration, Instant};

/// The worker's state machine, holding up to `SLOTS` leases at once (see the module docs).
///
/// `'c` is the lifetime of the [`Config`]'s borrowed name, kinds and secret.
#[derive(Debug)]
pub struct Worker<'c, const SLOTS: usize> {
    config: Config<'c>,
    /// Bytes of the kinds batch inside the `Join`.
    kinds_len: usize,
    state: State,
    /// Counts connections, to fence tickets of earlier ones.
    session: u32,
    /// Connections in a row that ended before `Welcome`.
    failures: u32,
    held: heapless::Vec<LeaseId, SLOTS>,
    worker: Option<WorkerId>,
}

#[derive(Clone, Debug)]
enum State {
    Disconnected {
        reconnect_at: Instant,
    },
    Connecting,
    Connected(Link),
    Closing {
        reason: CloseReason,
        parting: Option<Parting>,
    },
}

#[derive(Clone, Debug)]
struct Link {
    last_rx: Instant,
    heartbeat: Duration,
    phase: Phase,
}

#[derive(Clone, Debug)]
enum Phase {
    Hello {
        handshake: ClientHandshake,
        hello_sent: bool,
    },
    Joining {
        handshake: ClientHandshake,
        proof: Proof,
        join_sent: bool,
    },
    Ready {
        max_frame: u32,
        credit: u32,
        next_heartbeat: Instant,
    },
}

/// The last frame sent on a connection the worker closes.
#[derive(Clone, Copy, Debug)]
enum Parting {
    Error(ErrorCode),
    Goodbye,
}

/// A frame waiting for [`Worker::poll_transmit`].
#[derive(Clone, Copy, Debug)]
enum Out {
    Hello,
    Join(Proof),
    Credit(u32),
    Heartbeat,
    Parting(Parting),
}

impl<'c, const SLOTS: usize> Worker<'c, SLOTS> {
    /// A disconnected worker; its first [`Worker::poll`] asks for a connection.
    ///
    /// # Errors
    /// [`ConfigError`] if the configuration breaks one of its invariants (see [`Config`]).
    pub fn new(config: Config<'c>) -> Result<Self, ConfigError> {
        let slots = config.slots();
        if slots == 0 || usize::try_from(slots).map_or(true, |s| s > SLOTS) {
            return Err(ConfigError::Slots {
                slots,
                capacity: SLOTS,
            });
        }
        if config.kinds().len() > usize::from(u16::MAX) + 1 {
            return Err(ConfigError::TooManyKinds);
        }
        if config.heartbeat() == Duration::ZERO || config.dead_after() == 0 {
            return Err(ConfigError::Heartbeat);
        }
        if config.max_frame() < HANDSHAKE_MAX_FRAME {
            return Err(ConfigError::MaxFrame {
                max_frame: config.max_frame(),
            });
        }
        let kinds_len = config.kinds().iter().fold(0usize, |sum, kind| {
            sum.saturating_add(varint_len(kind.len()))
                .saturating_add(kind.len())
        });
        let worker = Worker {
            config,
            kinds_len,
            state: State::Disconnected {
                reconnect_at: Instant::ZERO,
            },
            session: 0,
            failures: 0,
            held: heapless::Vec::new(),
            worker: None,
        };
        let len = worker.join_len();
        if len > HANDSHAKE_MAX_FRAME as usize {
            return Err(ConfigError::JoinTooLarge {
                len,
                max: HANDSHAKE_MAX_FRAME,
            });
        }
        Ok(worker)
    }

    /// The configuration.
    pub const fn config(&self) -> &Config<'c> {
        &self.config
    }

    /// Where the connection stands.
    pub const fn status(&self) -> Status {
        match &self.state {
            State::Disconnected { .. } => Status::Disconnected,
            State::Connecting => Status::Connecting,
            State::Connected(Link {
                phase: Phase::Ready { .. },
                ..
            }) => Status::Ready,
            State::Connected(_) => Status::Handshaking,
            State::Closing { .. } => Status::Closing,
        }
    }

    /// The id the server gave this worker on the current connection, once welcomed.
    pub const fn worker_id(&self) -> Option<WorkerId> {
        self.worker
    }

    /// Leases held now (granted and not yet answered).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Credit the server has been sent and not yet used: leases it may still grant.
    pub const fn credit(&self) -> u32 {
        match &self.state {
            State::Connected(Link {
                phase: Phase::Ready { credit, .. },
                ..
            }) => *credit,
            _ => 0,
        }
    }

    /// Whether `ticket` names a lease the worker holds now.
    pub fn holds(&self, ticket: Ticket) -> bool {
        self.position(ticket).is_some()
    }

    /// The name of task kind `kind`.
    pub fn kind_name(&self, kind: usize) -> Option<&'c str> {
        self.config.kinds().get(kind).copied()
    }

    /// The payload limit for frames from the server right now: [`HANDSHAKE_MAX_FRAME`] during
    /// the handshake, the agreed limit once ready. A transport that de-frames itself builds its
    /// [`FrameDecoder`] with it before each frame; [`Worker::receive`] does so already.
    pub const fn max_frame(&self) -> u32 {
        match &self.state {
            State::Connected(Link {
                phase: Phase::Ready { max_frame, .. },
                ..
            }) => *max_frame,
            State::Connected(_) => HANDSHAKE_MAX_FRAME,
            _ => self.config.max_frame(),
        }
    }

    /// The heartbeat interval in force: the server's once welcomed, the configured one before.
    pub const fn heartbeat_interval(&self) -> Duration {
        match &self.state {
            State::Connected(link) => link.heartbeat,
            _ => self.config.heartbeat(),
        }
    }

    // ---- time ----

    /// What the transport must do now, if anything: connect once the backoff has passed, or
    /// close a connection the worker gave up on (an error, a goodbye, or a server silent for too
    /// long). A `Close` repeats until [`Worker::disconnected`] is called.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        match &self.state {
            State::Disconnected { reconnect_at } if now >= *reconnect_at => {
                self.state = State::Connecting;
                Some(Action::Connect)
            }
            State::Connected(link) if now >= self.dead_at(link) => {
                debug!("worker: server silent, closing");
                self.close(CloseReason::Silent);
                Some(Action::Close(CloseReason::Silent))
            }
            State::Closing { reason, .. } => Some(Action::Close(*reason)),
            _ => None,
        }
    }

    /// When the worker next needs [`Worker::poll`] and [`Worker::poll_transmit`]: the end of
    /// the backoff, the next heartbeat, or the moment the server counts as silent.
    /// [`Instant::ZERO`] when closing (act now); `None` while a connection attempt is pending.
    ///
    /// Frames that input made pending (credit, handshake replies) are not deadlines: call
    /// [`Worker::poll_transmit`] after every call that hands the worker something.
    pub fn poll_at(&self) -> Option<Instant> {
        match &self.state {
            State::Disconnected { reconnect_at } => Some(*reconnect_at),
            State::Connecting => None,
            State::Connected(link) => {
                let dead_at = self.dead_at(link);
                Some(match link.phase {
                    Phase::Ready { next_heartbeat, .. } => dead_at.min(next_heartbeat),
                    _ => dead_at,
                })
            }
            State::Closing { .. } => Some(Instant::ZERO),
        }
    }

    fn dead_at(&self, link: &Link) -> Instant {
        link.last_rx
            + link
                .heartbeat
                .saturating_mul(u64::from(self.config.dead_after()))
    }

    // ---- connection lifecycle ----

    /// The transport connected to the server. `nonce` must be fresh from a cryptographic random
    /// source. Starts the handshake: the `ClientHello` is pending for
    /// [`Worker::poll_transmit`].
    pub fn connected(&mut self, now: Instant, nonce: Nonce) {
        self.session = self.session.wrapping_add(1);
        self.held.clear();
        self.worker = None;
        self.state = State::Connected(Link {
            last_rx: now,
            heartbeat: self.config.heartbeat(),
            phase: Phase::Hello {
                handshake: ClientHandshake::new(nonce, self.config.max_frame()),
                hello_sent: false,
            },
        });
    }

    /// The connection is gone (or never came up). Drops every held lease, which the server
    /// re-issues, and schedules the next connection after the backoff plus `jitter` (a random
    /// delay from the caller, or [`Duration::ZERO`]). Does nothing if already disconnected.
    pub fn disconnected(&mut self, now: Instant, jitter: Duration) {
        if matches!(self.state, State::Disconnected { .. }) {
            return;
        }
        self.held.clear();
        self.worker = None;
        let delay = self.config.backoff().delay(self.failures) + jitter;
        self.failures = self.failures.saturating_add(1);
        debug!("worker: disconnected, reconnecting in {}", delay);
        self.state = State::Disconnected {
            reconnect_at: now + delay,
        };
    }

    /// Leaves on purpose: drops every held lease, queues a `Goodbye` for
    /// [`Worker::poll_transmit`], and asks the transport to close. Does nothing unless
    /// connected.
    pub fn goodbye(&mut self) {
        if matches!(self.state, State::Connected(_)) {
            self.close(CloseReason::Goodbye);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        let parting = match reason {
            CloseReason::Silent => Some(Parting::Error(ErrorCode::Timeout)),
            CloseReason::Protocol(err) => Some(Parting::Error(err.code())),
            CloseReason::Goodbye => Some(Parting::Goodbye),
            _ => None,
        };
        self.held.clear();
        self.state = State::Closing { reason, parting };
    }

    // ---- input ----

    /// Finds the first frame in `received` (bytes read from the socket, oldest first) and
    /// handles it, checking it against the limit in force. The caller drops the frame's bytes
    /// from its buffer once done with the event.
    ///
    /// # Errors
    /// A [`WorkerError`] if the frame is bad or breaks the protocol; the worker is then closing.
    pub fn receive<'f>(
        &mut self,
        now: Instant,
        received: &'f [u8],
    ) -> Result<Received<'f>, WorkerError>
    where
        'c: 'f,
    {
        match FrameDecoder::new(self.max_frame()).decode(received) {
            Ok(Decoded::Incomplete { needed }) => Ok(Received::Incomplete { needed }),
            Ok(Decoded::Frame(frame)) => {
                let event = self.handle_frame(now, frame.payload())?;
                Ok(Received::Frame {
                    len: frame.frame_len(),
                    event,
                })
            }
            Err(err) => Err(self.protocol_error(WorkerError::Frame(err))),
        }
    }

    /// Handles one frame's payload (the transport checked the frame's length and CRC). Frames
    /// arriving while no connection is up, or while closing, are ignored.
    ///
    /// # Errors
    /// A [`WorkerError`] if the payload is too large, does not decode, or breaks the protocol;
    /// the worker is then closing.
    pub fn handle_frame<'f>(
        &mut self,
        now: Instant,
        payload: &'f [u8],
    ) -> Result<Option<Event<'f>>, WorkerError>
    where
        'c: 'f,
    {
        let max = self.max_frame();
        let State::Connected(link) = &mut self.state else {
            return Ok(None);
        };
        link.last_rx = link.last_rx.max(now);
        if payload.len() > max as usize {
            let err = WorkerError::FrameTooLarge {
                len: payload.len(),
                max,
            };
            return Err(self.protocol_error(err));
        }
        let result = match decode_message(payload) {
            Ok(message) => self.on_message(now, message),
            Err(err) => Err(WorkerError::Decode(err)),
        };
        result.map_err(|err| self.protocol_error(err))
    }

    fn protocol_error(&mut self, err: WorkerError) -> WorkerError {
        if matches!(self.state, State::Connected(_)) {
            warn!("worker: closing: {}", err);
            self.close(CloseReason::Protocol(err));
        }
        err
    }

    fn on_message<'f>(
        &mut self,
        now: Instant,
        message: Message<'f>,
    ) -> Result<Option<Event<'f>>, WorkerError>
    where
        'c: 'f,
    {
        let config = self.config;
        let session = self.session;
        let State::Connected(link) = &mut self.state else {
            return Ok(None);
        };
        match (message, &mut link.phase) {
            (Message::Heartbeat, _) => Ok(None),
            (
                Message::ServerHello(hello),
                Phase::Hello {
                    handshake,
                    hello_sent: true,
                },
            ) => {
                // The role is built again when the `Join` is encoded; only the proof is kept.
                let join = handshake.server_hello(config.secret(), &hello, Role::Observer)?;
                link.phase = Phase::Joining {
                    handshake: handshake.clone(),
                    proof: join.proof,
                    join_sent: false,
                };
                Ok(None)
            }
            (
                Message::Welcome(welcome),
                Phase::Joining {
                    handshake,
                    join_sent: true,
                    ..
                },
            ) => {
                let max_frame = handshake.welcomed()?;
                if welcome.heartbeat_ms > 0 {
                    link.heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms));
                }
                link.phase = Phase::Ready {
                    max_frame,
                    credit: 0,
                    next_heartbeat: now + link.heartbeat,
                };
                self.failures = 0;
                self.worker = Some(welcome.worker);
                debug!("worker: welcomed as {}", welcome.worker);
                Ok(Some(Event::Ready {
                    worker: welcome.worker,
                }))
            }
            (Message::Grant(batch), Phase::Ready { credit, .. }) => {
                let granted = batch.len();
                if granted > *credit {
                    return Err(WorkerError::CreditExceeded {
                        granted,
                        credit: *credit,
                    });
                }
                take_grant(&mut self.held, batch, config.kinds(), *credit)?;
                *credit -= granted;
                Ok((!batch.is_empty())
                    .then(|| Event::Granted(Grants::new(batch, config.kinds(), session))))
            }
            (Message::Revoke { lease }, Phase::Ready { .. }) => {
                let Some(pos) = self.held.iter().position(|held| *held == lease) else {
                    return Ok(None);
                };
                self.held.swap_remove(pos);
                Ok(Some(Event::Revoked(Ticket::new(lease, session))))
            }
            (Message::Ack { lease }, Phase::Ready { .. }) => {
                Ok(Some(Event::Acked(Ticket::new(lease, session))))
            }
            (Message::JobFinished { job, outcome }, Phase::Ready { .. }) => {
                Ok(Some(Event::JobFinished { job, outcome }))
            }
            (Message::ServerGoingAway, _) => {
                self.close(CloseReason::ServerGoingAway);
                Ok(Some(Event::ServerGoingAway))
            }
            (Message::Goodbye, _) => {
                self.close(CloseReason::ServerGoodbye);
                Ok(Some(Event::ServerGoodbye))
            }
            (Message::Error { code, detail }, _) => {
                self.close(CloseReason::ServerError(code));
                Ok(Some(Event::ServerError { code, detail }))
            }
            (other, _) => Err(WorkerError::Unexpected {
                message: other.name(),
            }),
        }
    }

    // ---- output ----

    /// Writes pending frames (handshake, credit, heartbeat, a parting error or goodbye) into
    /// `buf`, as many whole frames as fit, and returns their total length; `None` if nothing
    /// is pending. Call it after every input and whenever [`Worker::poll_at`] passes, and send
    /// the bytes in order.
    ///
    /// # Errors
    /// [`TransmitError::BufferTooSmall`] if not even the next frame fits; nothing is lost.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<usize>, TransmitError> {
        let mut used = 0;
        while let Some(out) = self.next_out(now) {
            let rest = buf.get_mut(used..).unwrap_or_default();
            match self.encode_out(out, rest) {
                Ok(n) => {
                    self.mark_sent(out, now);
                    used += n;
                }
                Err(_) if used > 0 => break,
                Err(_) => return Err(TransmitError::BufferTooSmall { len: buf.len() }),
            }
        }
        Ok((used > 0).then_some(used))
    }

    fn next_out(&self, now: Instant) -> Option<Out> {
        match &self.state {
            State::Connected(link) => match &link.phase {
                Phase::Hello {
                    hello_sent: false, ..
                } => Some(Out::Hello),
                Phase::Joining {
                    proof,
                    join_sent: false,
                    ..
                } => Some(Out::Join(*proof)),
                Phase::Ready {
                    credit,
                    next_heartbeat,
                    ..
                } => {
                    let pending = self.unsent_credit(*credit);
                    if pending > 0 {
                        Some(Out::Credit(pending))
                    } else if now >= *next_heartbeat {
                        Some(Out::Heartbeat)
                    } else {
                        None
                    }
                }
                _ => None,
            },
            State::Closing {
                parting: Some(parting),
                ..
            } => Some(Out::Parting(*parting)),
            _ => None,
        }
    }

    /// Credit neither held as a lease nor outstanding at the server.
    fn unsent_credit(&self, credit: u32) -> u32 {
        let held = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
        self.config
            .slots()
            .saturating_sub(held)
            .saturating_sub(credit)
    }

    fn encode_out(&self, out: Out, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match out {
            Out::Hello => match &self.state {
                State::Connected(Link {
                    phase: Phase::Hello { handshake, .. },
                    ..
                }) => encode_frame(&Message::ClientHello(handshake.hello()), buf),
                _ => Err(EncodeError::Serialize),
            },
            Out::Join(proof) => self.encode_join(proof, buf),
            Out::Credit(count) => encode_frame(&Message::Credit { count }, buf),
            Out::Heartbeat => encode_frame(&Message::Heartbeat, buf),
            Out::Parting(Parting::Goodbye) => encode_frame(&Message::Goodbye, buf),
            Out::Parting(Parting::Error(code)) => {
                encode_frame(&Message::Error { code, detail: "" }, buf)
            }
        }
    }

    fn mark_sent(&mut self, out: Out, now: Instant) {
        match (&mut self.state, out) {
            (State::Connected(link), Out::Hello) => {
                if let Phase::Hello { hello_sent, .. } = &mut link.phase {
                    *hello_sent = true;
                }
            }
            (State::Connected(link), Out::Join(_)) => {
                if let Phase::Joining { join_sent, .. } = &mut link.phase {
                    *join_sent = true;
                }
            }
            (State::Connected(link), Out::Credit(count)) => {
                if let Phase::Ready { credit, .. } = &mut link.phase {
                    *credit = credit.saturating_add(count);
                }
            }
            (State::Connected(link), Out::Heartbeat) => {
                let interval = link.heartbeat;
                if let Phase::Ready { next_heartbeat, .. } = &mut link.phase {
                    *next_heartbeat = now + interval;
                }
            }
            (State::Closing { parting, .. }, Out::Parting(_)) => *parting = None,
            _ => {}
        }
    }

    /// The `Join`, with the kinds batch encoded at the end of `buf` and the frame at its start.
    fn encode_join(&self, proof: Proof, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let split = buf
            .len()
            .checked_sub(self.kinds_len)
            .ok_or(EncodeError::BufferFull)?;
        let (head, tail) = buf.split_at_mut(split);
        let kinds = Batch::<&str>::encode(self.config.kinds(), tail)?;
        encode_frame(&self.join(proof, kinds), head)
    }

    fn join<'a>(&self, proof: Proof, kinds: Batch<'a, &'a str>) -> Message<'a>
    where
        'c: 'a,
    {
        Message::Join(Join {
            proof,
            role: Role::Worker(WorkerHello {
                name: self.config.name(),
                platform: self.config.platform(),
                kinds,
                slots: self.config.slots(),
            }),
        })
    }

    /// The `Join` payload's length, computed without a buffer.
    fn join_len(&self) -> usize {
        let count = u32::try_from(self.config.kinds().len()).unwrap_or(u32::MAX);
        let empty = self.join([0; 32], Batch::from_encoded(count, &[]));
        // An empty byte string is one length byte; the real one is its length varint and bytes.
        encoded_len(&empty)
            .unwrap_or(usize::MAX)
            .saturating_sub(1)
            .saturating_add(varint_len(self.kinds_len))
            .saturating_add(self.kinds_len)
    }

    // ---- answers ----

    fn position(&self, ticket: Ticket) -> Option<usize> {
        if ticket.session() != self.session {
            return None;
        }
        self.held.iter().position(|lease| *lease == ticket.lease())
    }

    /// The payload limit for frames to the server.
    fn send_limit(&self) -> u32 {
        match &self.state {
            State::Connected(Link {
                phase: Phase::Ready { max_frame, .. },
                ..
            }) => *max_frame,
            _ => HANDSHAKE_MAX_FRAME,
        }
    }

    /// Answers `ticket` with its task's `output`: writes the `Complete` frame into `buf`,
    /// releases the lease, and makes its credit pending. Returns the frame's length, or 0 if the
    /// worker no longer holds the lease (revoked, or its connection lost): the output is then
    /// discarded and nothing is to be sent.
    ///
    /// Send the frame before anything [`Worker::poll_transmit`] writes afterwards.
    ///
    /// # Errors
    /// [`CompleteError`] if the frame does not fit `buf` or the agreed limit; the lease is still
    /// held.
    pub fn complete(
        &mut self,
        ticket: Ticket,
        output: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CompleteError> {
        let Some(pos) = self.position(ticket) else {
            return Ok(0);
        };
        let message = Message::Complete {
            lease: ticket.lease(),
            output,
        };
        let len = encoded_len(&message).unwrap_or(usize::MAX);
        let max = self.send_limit();
        if len > max as usize {
            return Err(CompleteError::OutputTooLarge { len, max });
        }
        let n = encode_answer(&message, len, buf)?;
        self.held.swap_remove(pos);
        Ok(n)
    }

    /// Answers `ticket` with a failure: writes the `Fail` frame into `buf` (the error text cut,
    /// at a character boundary, to what fits `buf` and the agreed limit), releases the lease, and
    /// makes its credit pending. Returns the frame's length, or 0 if the worker no longer holds
    /// the lease.
    ///
    /// Send the frame before anything [`Worker::poll_transmit`] writes afterwards.
    ///
    /// # Errors
    /// [`CompleteError::BufferTooSmall`] if `buf` cannot hold even the frame with an empty error
    /// text; the lease is still held.
    pub fn fail(
        &mut self,
        ticket: Ticket,
        retry: Retry,
        error: &str,
        buf: &mut [u8],
    ) -> Result<usize, CompleteError> {
        let Some(pos) = self.position(ticket) else {
            return Ok(0);
        };
        let lease = ticket.lease();
        let bare = encoded_len(&Message::Fail {
            lease,
            retry,
            error: "",
        })
        .unwrap_or(usize::MAX);
        let room = (self.send_limit() as usize).min(buf.len().saturating_sub(HEADER_LEN));
        // `bare` holds a one-byte length; the text adds its bytes and a possibly longer length.
        let budget = room.saturating_sub(bare.saturating_sub(1));
        let mut keep = error.len().min(budget);
        keep = keep.min(budget.saturating_sub(varint_len(keep)));
        while !error.is_char_boundary(keep) {
            keep -= 1;
        }
        let message = Message::Fail {
            lease,
            retry,
            error: error.get(..keep).unwrap_or_default(),
        };
        let len = encoded_len(&message).unwrap_or(usize::MAX);
        let n = encode_answer(&message, len, buf)?;
        self.held.swap_remove(pos);
        Ok(n)
    }

    /// Runs `task` through `handler` and answers it: its output as a `Complete`, its error as a
    /// `Fail`, written into `buf` (see [`Worker::complete`] and [`Worker::fail`]). `scratch`
    /// receives the output; an output over the agreed frame limit, or a length beyond `scratch`,
    /// is reported as a permanent failure. Returns 0 without running the task if the worker no
    /// longer holds its lease.
    ///
    /// This is the synchronous path microcontrollers use: handle the [`Event::Granted`], then
    /// for each task call `run` and send the frame before the next.
    ///
    /// # Errors
    /// [`CompleteError::BufferTooSmall`] if the answer does not fit `buf`; the lease is still
    /// held, so the caller may [`Worker::fail`] it with a larger buffer.
    pub fn run<H: TaskHandler + ?Sized>(
        &mut self,
        task: &Task<'_>,
        handler: &mut H,
        scratch: &mut [u8],
        buf: &mut [u8],
    ) -> Result<usize, CompleteError> {
        let ticket = task.ticket();
        if !self.holds(ticket) {
            return Ok(0);
        }
        let len = match handler.run(task.kind(), task.input(), scratch) {
            Ok(len) => len,
            Err(err) => return self.fail(ticket, err.retry(), err.message(), buf),
        };
        let Some(output) = scratch.get(..len) else {
            return self.fail(
                ticket,
                Retry::Permanent,
                "task output overflows its buffer",
                buf,
            );
        };
        match self.complete(ticket, output, buf) {
            Err(CompleteError::OutputTooLarge { .. }) => self.fail(
                ticket,
                Retry::Permanent,
                "task output exceeds the frame limit",
                buf,
            ),
            other => other,
        }
    }
}

/// Records the leases of a grant within credit; fails on the first bad item.
fn take_grant<const SLOTS: usize>(
    held: &mut heapless::Vec<LeaseId, SLOTS>,
    batch: Batch<'_, LeaseGrant<'_>>,
    kinds: &[&str],
    credit: u32,
) -> Result<(), WorkerError> {
    for item in batch.iter() {
        let grant = item?;
        if usize::from(grant.kind) >= kinds.len() {
            return Err(WorkerError::UnknownKind { kind: grant.kind });
        }
        if held.contains(&grant.lease) {
            return Err(WorkerError::DuplicateLease { lease: grant.lease });
        }
        held.push(grant.lease)
            .map_err(|_| WorkerError::CreditExceeded {
                granted: batch.len(),
                credit,
            })?;
    }
    Ok(())
}

/// Encodes an answer whose payload is `len` bytes, or says how much room it needs.
fn encode_answer(
    message: &Message<'_>,
    len: usize,
    buf: &mut [u8],
) -> Result<usize, CompleteError> {
    let needed = HEADER_LEN.saturating_add(len);
    if needed > buf.len() {
        return Err(CompleteError::BufferTooSmall {
            needed,
            len: buf.len(),
        });
    }
    encode_frame(message, buf).map_err(|_| CompleteError::BufferTooSmall {
        needed,
        len: buf.len(),
    })
}

/// Bytes of the postcard varint of `n`.
const fn varint_len(n: usize) -> usize {
    let mut len = 1;
    let mut rest = n >> 7;
    while rest > 0 {
        len += 1;
        rest >>= 7;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DEFAULT_MAX_FRAME, ServerHandshake, Welcome};

    const SECRET: &[u8] = b"unit-test secret, 32 bytes long!";

    fn ready<'c, const N: usize>(config: Config<'c>) -> Worker<'c, N> {
        let mut w = Worker::new(config).unwrap();
        assert_eq!(w.poll(Instant::ZERO), Some(Action::Connect));
        w.connected(Instant::ZERO, [1; 16]);
        let mut buf = [0u8; 4096];
        w.poll_transmit(Instant::ZERO, &mut buf).unwrap();
        let Phase::Hello { handshake, .. } = phase(&w) else {
            panic!()
        };
        let mut server = ServerHandshake::new(DEFAULT_MAX_FRAME);
        let hello = server.hello(SECRET, &handshake.hello(), [2; 16]).unwrap();
        let mut frame = [0u8; 256];
        let n = encode_frame(&Message::ServerHello(hello), &mut frame).unwrap();
        w.handle_frame(Instant::ZERO, &frame[HEADER_LEN..n])
            .unwrap();
        w.poll_transmit(Instant::ZERO, &mut buf).unwrap();
        let welcome = Welcome {
            worker: WorkerId(1),
            lease_ms: 1_000,
            heartbeat_ms: 100,
        };
        let n = encode_frame(&Message::Welcome(welcome), &mut frame).unwrap();
        w.handle_frame(Instant::ZERO, &frame[HEADER_LEN..n])
            .unwrap();
        w
    }

    fn phase<const N: usize>(w: &Worker<'_, N>) -> Phase {
        match &w.state {
            State::Connected(link) => link.phase.clone(),
            other => panic!("not connected: {other:?}"),
        }
    }

    #[test]
    fn varint_lengths() {
        for (n, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (usize::MAX, 10),
        ] {
            assert_eq!(varint_len(n), len, "{n}");
        }
        let mut buf = [0u8; 16];
        for n in [0usize, 127, 128, 300, 16_384, 1 << 30] {
            assert_eq!(
                postcard::to_slice(&n, &mut buf).unwrap().len(),
                varint_len(n),
                "{n}"
            );
        }
    }

    #[test]
    fn join_length_is_computed_exactly() {
        let long: &[&str] = &["a-rather-long-kind-name-number-one", "k2", "", "ünïcödé"];
        let many: Vec<&str> = (0..150).map(|_| "x").collect();
        for kinds in [&[][..], &["square"][..], long, &many] {
            let w: Worker<'_, 2> = Worker::new(Config::new("name", SECRET, kinds)).unwrap();
            let mut buf = [0u8; 4096];
            let n = w.encode_join([9; 32], &mut buf).unwrap();
            assert_eq!(n - HEADER_LEN, w.join_len(), "{kinds:?}");
            // The frame decodes back to the kinds.
            let Message::Join(join) = decode_message(&buf[HEADER_LEN..n]).unwrap() else {
                panic!()
            };
            let Role::Worker(hello) = join.role else {
                panic!()
            };
            let decoded: Vec<&str> = hello.kinds.iter().map(Result::unwrap).collect();
            assert_eq!(decoded, kinds);
        }
    }

    #[test]
    fn join_fits_a_buffer_of_frame_plus_kinds() {
        let w: Worker<'_, 1> = Worker::new(Config::new("n", SECRET, &["abc", "de"])).unwrap();
        let exact = HEADER_LEN + w.join_len() + w.kinds_len;
        let mut buf = vec![0u8; exact];
        assert_eq!(
            w.encode_join([0; 32], &mut buf),
            Ok(HEADER_LEN + w.join_len())
        );
        assert_eq!(
            w.encode_join([0; 32], &mut buf[..exact - 1]),
            Err(EncodeError::BufferFull)
        );
    }

    #[test]
    fn credit_accounting_holds_through_grants_and_answers() {
        let mut w: Worker<'_, 3> = ready(Config::new("n", SECRET, &["k"]).with_slots(3));
        let Phase::Ready { credit: 0, .. } = phase(&w) else {
            panic!()
        };
        assert_eq!(w.unsent_credit(0), 3);
        let mut buf = [0u8; 64];
        let n = w.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
        assert_eq!(
            decode_message(&buf[HEADER_LEN..n]),
            Ok(Message::Credit { count: 3 })
        );
        assert_eq!(w.credit(), 3);
        assert_eq!(w.poll_transmit(Instant::ZERO, &mut buf), Ok(None));
    }

    #[test]
    fn several_frames_share_one_buffer() {
        let mut w: Worker<'_, 2> = ready(Config::new("n", SECRET, &["k"]).with_slots(2));
        // Credit is pending and, 100 ms later, a heartbeat too: both in one call.
        let mut buf = [0u8; 64];
        let n = w
            .poll_transmit(Instant::from_millis(100), &mut buf)
            .unwrap()
            .unwrap();
        let decoder = FrameDecoder::new(64);
        let Ok(Decoded::Frame(first)) = decoder.decode(&buf[..n]) else {
            panic!()
        };
        assert_eq!(first.message(), Ok(Message::Credit { count: 2 }));
        let Ok(Decoded::Frame(second)) = decoder.decode(&buf[first.frame_len()..n]) else {
            panic!()
        };
        assert_eq!(second.message(), Ok(Message::Heartbeat));
        assert_eq!(first.frame_len() + second.frame_len(), n);
    }

    #[test]
    fn a_full_buffer_keeps_the_rest_pending() {
        let mut w: Worker<'_, 2> = ready(Config::new("n", SECRET, &["k"]).with_slots(2));
        // Room for the credit frame (10 bytes) but not the heartbeat after it.
        let mut buf = [0u8; 11];
        assert_eq!(
            w.poll_transmit(Instant::from_millis(100), &mut buf),
            Ok(Some(10))
        );
        assert_eq!(
            w.poll_transmit(Instant::from_millis(100), &mut buf),
            Ok(Some(9))
        );
        assert_eq!(
            w.poll_transmit(Instant::from_millis(100), &mut buf),
            Ok(None)
        );
    }

    #[test]
    fn goodbye_when_not_connected_does_nothing() {
        let mut w: Worker<'_, 1> = Worker::new(Config::new("n", SECRET, &["k"])).unwrap();
        w.goodbye();
        assert_eq!(w.status(), Status::Disconnected);
        assert_eq!(w.poll_at(), Some(Instant::ZERO));
        assert_eq!(
            w.handle_frame(Instant::ZERO, &[6]),
            Ok(None),
            "ignored while disconnected"
        );
    }
}
