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
mod input;
mod output;

pub use config::{Backoff, Config, ConfigError};
pub use error::{CompleteError, TransmitError, WorkerError};
pub use event::{Action, CloseReason, Event, GrantIter, Grants, Received, Status, Task, Ticket};
pub use handler::{TaskError, TaskHandler};

use crate::id::{LeaseId, WorkerId};
use crate::proto::{ClientHandshake, ErrorCode, HANDSHAKE_MAX_FRAME, Nonce, Proof};
use crate::time::{Duration, Instant};

use output::varint_len;

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
    /// [`FrameDecoder`](crate::proto::FrameDecoder) with it before each frame; [`Worker::receive`] does so already.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::WorkerId;
    use crate::proto::{
        DEFAULT_MAX_FRAME, Decoded, FrameDecoder, HEADER_LEN, Message, ServerHandshake, Welcome,
        decode_message, encode_frame,
    };

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
