//! The driver loop: one core [`Worker`](CoreWorker) state machine, a [`Link`], a clock and
//! caller-owned buffers.
//!
//! The loop has no protocol logic: it asks the core what to do ([`poll`](CoreWorker::poll)),
//! connects and disconnects when told, hands in every byte it reads
//! ([`receive`](CoreWorker::receive)), runs granted tasks through the kind table
//! ([`run`](CoreWorker::run)), writes what the core encodes, and sleeps until the core's next
//! deadline ([`poll_at`](CoreWorker::poll_at)) or the next byte, whichever comes first.
//!
//! Invariants:
//! - Bytes go out in the order the core produced them: answers are appended to the transmit
//!   buffer as tasks finish, pending frames (credit, heartbeats) after them, and the buffer is
//!   written whole before anything else is appended to an emptied one.
//! - Nothing from the server can panic the board: a bad frame makes the core close the
//!   connection; a lost connection (read error, end of stream, write error or timeout) drops it.
//!   Either way the loop reconnects after the core's backoff, with fresh jitter and nonce.
//! - The receive buffer holds a whole frame of the largest size the core accepts, so a frame
//!   that is still incomplete can always be read to its end.

use colony_core::proto::{HANDSHAKE_MAX_FRAME, HEADER_LEN, JobOutcome};
use colony_core::worker::{
    Action, CloseReason, CompleteError, Config, ConfigError, Event, Received, Worker as CoreWorker,
};
use colony_core::{Instant, JobId};
use embassy_futures::select::{Either, select};
use embassy_time::{Timer, with_timeout};
use embedded_io_async::Write;

use crate::entropy::{Entropy, jitter, nonce};
use crate::kind::{Kinds, TaskKind};
use crate::link::{Connection, Link, Shutdown};

/// The worker's own buffers, lent for its whole life.
///
/// - `rx` holds bytes read from the server until they form a frame: at least
///   [`HEADER_LEN`] + the configured frame limit ([`Config::with_max_frame`]).
/// - `tx` collects frames for the server: at least [`HEADER_LEN`] + the larger of the frame
///   limit and twice [`HANDSHAKE_MAX_FRAME`] (the handshake's `Join` is encoded in two halves).
/// - `scratch` receives each task's output; an output that does not fit fails the task.
#[derive(Debug)]
pub struct Buffers<'b> {
    rx: &'b mut [u8],
    tx: &'b mut [u8],
    scratch: &'b mut [u8],
}

impl<'b> Buffers<'b> {
    /// The three buffers (see the type's docs for their sizes).
    pub fn new(rx: &'b mut [u8], tx: &'b mut [u8], scratch: &'b mut [u8]) -> Self {
        Buffers { rx, tx, scratch }
    }
}

/// The smallest receive buffer for a frame limit of `max_frame`.
pub const fn rx_len(max_frame: u32) -> usize {
    HEADER_LEN + max_frame as usize
}

/// The smallest transmit buffer for a frame limit of `max_frame`.
pub const fn tx_len(max_frame: u32) -> usize {
    let handshake = 2 * HANDSHAKE_MAX_FRAME as usize;
    let limit = max_frame as usize;
    HEADER_LEN + if limit > handshake { limit } else { handshake }
}

/// When [`Worker::run`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Until {
    /// After the server says a job finished: the worker says goodbye and returns. For boards
    /// that run one job and stop (tests, batch runs).
    JobFinished,
    /// Never: the worker serves job after job and reconnects forever.
    Forever,
}

/// A job the server said finished, which ended [`Worker::run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Finished {
    /// The job.
    pub job: JobId,
    /// How it ended.
    pub outcome: JobOutcome,
}

/// What the worker has done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    connects: u32,
    sessions: u32,
    answered: u32,
}

impl Stats {
    /// Connection attempts.
    pub const fn connects(&self) -> u32 {
        self.connects
    }

    /// Connections that opened (the handshake started).
    pub const fn sessions(&self) -> u32 {
        self.sessions
    }

    /// Tasks answered, with an output or a failure.
    pub const fn answered(&self) -> u32 {
        self.answered
    }
}

/// The worker cannot be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SetupError {
    /// The core refused the configuration.
    Config(ConfigError),
    /// The configuration's kind names are not the kind table's names, in order.
    KindsMismatch,
    /// The receive buffer cannot hold a frame of the configured limit.
    RxTooSmall {
        /// Its length.
        len: usize,
        /// The length needed ([`rx_len`]).
        needed: usize,
    },
    /// The transmit buffer cannot hold the largest frame the worker may send.
    TxTooSmall {
        /// Its length.
        len: usize,
        /// The length needed ([`tx_len`]).
        needed: usize,
    },
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::Config(err) => write!(f, "bad worker configuration: {err}"),
            SetupError::KindsMismatch => {
                f.write_str("configured kind names differ from the kind table")
            }
            SetupError::RxTooSmall { len, needed } => {
                write!(f, "receive buffer of {len} bytes, {needed} needed")
            }
            SetupError::TxTooSmall { len, needed } => {
                write!(f, "transmit buffer of {len} bytes, {needed} needed")
            }
        }
    }
}

impl core::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            SetupError::Config(err) => Some(err),
            _ => None,
        }
    }
}

impl From<ConfigError> for SetupError {
    fn from(err: ConfigError) -> Self {
        SetupError::Config(err)
    }
}

/// How a connection ended.
enum End {
    /// It failed under us (read or write error, end of stream, timeout).
    Lost,
    /// The core closed it (its reason).
    Closed(CloseReason),
    /// We said goodbye after the job finished.
    Finished(Finished),
}

/// A Colony worker for a board: the core state machine, the kind table and the buffers, driven
/// over any [`Link`] (see the crate docs for a whole firmware).
#[derive(Debug)]
pub struct Worker<'w, const SLOTS: usize> {
    core: CoreWorker<'w, SLOTS>,
    kinds: &'w [TaskKind],
    buffers: Buffers<'w>,
    stats: Stats,
    connect_timeout: embassy_time::Duration,
    write_timeout: embassy_time::Duration,
}

impl<'w, const SLOTS: usize> Worker<'w, SLOTS> {
    /// A worker announcing `config`, running `kinds` (whose names must be `config`'s kinds, in
    /// order: build them with [`kind_names`](crate::kind_names)), in `buffers`.
    ///
    /// Connection attempts time out after 5 s and a blocked write after 10 s; both count as a
    /// lost connection.
    ///
    /// # Errors
    /// [`SetupError`] if the core refuses the configuration, the names do not match the table,
    /// or a buffer is too small.
    pub fn new(
        config: Config<'w>,
        kinds: &'w [TaskKind],
        buffers: Buffers<'w>,
    ) -> Result<Self, SetupError> {
        let names = config.kinds();
        if names.len() != kinds.len() || names.iter().zip(kinds).any(|(n, k)| *n != k.name()) {
            return Err(SetupError::KindsMismatch);
        }
        let needed = rx_len(config.max_frame());
        if buffers.rx.len() < needed {
            return Err(SetupError::RxTooSmall {
                len: buffers.rx.len(),
                needed,
            });
        }
        let needed = tx_len(config.max_frame());
        if buffers.tx.len() < needed {
            return Err(SetupError::TxTooSmall {
                len: buffers.tx.len(),
                needed,
            });
        }
        Ok(Worker {
            core: CoreWorker::new(config)?,
            kinds,
            buffers,
            stats: Stats::default(),
            connect_timeout: embassy_time::Duration::from_secs(5),
            write_timeout: embassy_time::Duration::from_secs(10),
        })
    }

    /// Sets how long a connection attempt may take.
    #[must_use]
    pub fn with_connect_timeout(self, timeout: embassy_time::Duration) -> Self {
        Worker {
            connect_timeout: timeout,
            ..self
        }
    }

    /// Sets how long one write may block before the connection counts as lost.
    #[must_use]
    pub fn with_write_timeout(self, timeout: embassy_time::Duration) -> Self {
        Worker {
            write_timeout: timeout,
            ..self
        }
    }

    /// The core state machine, to read its status, worker id or held leases.
    pub const fn core(&self) -> &CoreWorker<'w, SLOTS> {
        &self.core
    }

    /// What the worker has done so far.
    pub const fn stats(&self) -> Stats {
        self.stats
    }

    /// Connects, serves tasks and reconnects after every failure, until `until` says stop.
    /// With [`Until::Forever`] it never returns.
    ///
    /// `entropy` gives each connection's handshake nonce and each reconnect's jitter; see
    /// [`Entropy`] for what a board must use.
    pub async fn run<L: Link, E: Entropy + ?Sized>(
        &mut self,
        link: &mut L,
        entropy: &mut E,
        until: Until,
    ) -> Finished {
        loop {
            match self.core.poll(now()) {
                Some(Action::Connect) => {
                    self.stats.connects = self.stats.connects.saturating_add(1);
                    debug!("colony: connecting");
                    let end = match with_timeout(self.connect_timeout, link.connect()).await {
                        Ok(Ok(mut conn)) => {
                            self.stats.sessions = self.stats.sessions.saturating_add(1);
                            self.core.connected(now(), nonce(entropy));
                            let end = self.session(&mut conn, until).await;
                            let how = match end {
                                End::Lost | End::Closed(CloseReason::Protocol(_)) => {
                                    Shutdown::Abort
                                }
                                _ => Shutdown::Graceful,
                            };
                            conn.close(how).await;
                            Some(end)
                        }
                        Ok(Err(_)) | Err(_) => {
                            warn!("colony: connection attempt failed");
                            None
                        }
                    };
                    let jitter = jitter(entropy, self.core.config().backoff().initial());
                    self.core.disconnected(now(), jitter);
                    match end {
                        Some(End::Finished(finished)) => return finished,
                        Some(End::Lost) => warn!("colony: connection lost"),
                        Some(End::Closed(reason)) => info!("colony: connection closed: {}", reason),
                        None => {}
                    }
                }
                Some(Action::Close(_)) => {
                    // Only a live session closes; outside one there is nothing to close.
                    let jitter = jitter(entropy, self.core.config().backoff().initial());
                    self.core.disconnected(now(), jitter);
                }
                None => {
                    // Outside a session the core always has a deadline (the end of the backoff).
                    let at = self.core.poll_at().unwrap_or(Instant::ZERO);
                    Timer::at(to_embassy(at)).await;
                }
            }
        }
    }

    /// Serves one open connection until it ends.
    async fn session<C: Connection>(&mut self, conn: &mut C, until: Until) -> End {
        let Worker {
            core,
            kinds,
            buffers: Buffers { rx, tx, scratch },
            stats,
            write_timeout,
            ..
        } = self;
        let write_timeout = *write_timeout;
        let mut kinds = Kinds(kinds);
        let mut rx_len = 0usize;
        let mut tx_len = 0usize;
        let mut finished = None;
        loop {
            let t = now();
            if let Some(Action::Close(reason)) = core.poll(t) {
                // The parting frame (an error code or a goodbye), then the connection ends.
                if let Ok(Some(n)) = core.poll_transmit(t, tx.get_mut(tx_len..).unwrap_or_default())
                {
                    tx_len += n;
                }
                let _ = send(conn, tx, &mut tx_len, write_timeout).await;
                return match (finished, reason) {
                    (Some(finished), CloseReason::Goodbye) => End::Finished(finished),
                    _ => End::Closed(reason),
                };
            }
            loop {
                let rest = tx.get_mut(tx_len..).unwrap_or_default();
                match core.poll_transmit(t, rest) {
                    Ok(Some(n)) => tx_len += n,
                    Ok(None) => break,
                    // The buffer fills up: send it and encode the rest into the emptied one.
                    Err(_) if tx_len > 0 => {
                        if send(conn, tx, &mut tx_len, write_timeout).await.is_err() {
                            return End::Lost;
                        }
                    }
                    // Cannot happen with a buffer of `tx_len(max_frame)`, checked in `new`.
                    Err(_) => return End::Lost,
                }
            }
            if send(conn, tx, &mut tx_len, write_timeout).await.is_err() {
                return End::Lost;
            }

            let deadline = to_embassy(core.poll_at().unwrap_or(Instant::MAX));
            let free = rx.get_mut(rx_len..).unwrap_or_default();
            match select(conn.read(free), Timer::at(deadline)).await {
                Either::First(Ok(0) | Err(_)) => return End::Lost,
                Either::First(Ok(n)) => rx_len += n,
                Either::Second(()) => continue,
            }

            // Every whole frame read so far, oldest first.
            let mut start = 0;
            while start < rx_len {
                let received = rx.get(start..rx_len).unwrap_or_default();
                let (len, event) = match core.receive(now(), received) {
                    Ok(Received::Frame { len, event }) => (len, event),
                    Ok(Received::Incomplete { .. }) => break,
                    // The core is closing now; its next `poll` says so.
                    Err(_) => break,
                };
                start += len;
                match event {
                    Some(Event::Granted(grants)) => {
                        for task in grants {
                            loop {
                                let out = tx.get_mut(tx_len..).unwrap_or_default();
                                match core.run(&task, &mut kinds, scratch, out) {
                                    Ok(n) => {
                                        tx_len += n;
                                        if n > 0 {
                                            stats.answered = stats.answered.saturating_add(1);
                                        }
                                        break;
                                    }
                                    Err(CompleteError::BufferTooSmall { .. }) if tx_len > 0 => {
                                        if send(conn, tx, &mut tx_len, write_timeout).await.is_err()
                                        {
                                            return End::Lost;
                                        }
                                    }
                                    // Cannot happen with a buffer of `tx_len(max_frame)`: an
                                    // answer is cut to the agreed limit. Leave rather than
                                    // hold a lease forever.
                                    Err(_) => {
                                        core.goodbye();
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Some(Event::Ready { worker }) => info!("colony: welcomed as {}", worker),
                    Some(Event::JobFinished { job, outcome }) => {
                        info!("colony: {} finished", job);
                        if until == Until::JobFinished && finished.is_none() {
                            finished = Some(Finished { job, outcome });
                            core.goodbye();
                        }
                    }
                    _ => {}
                }
            }
            rx.copy_within(start..rx_len, 0);
            rx_len -= start;
            if rx_len == rx.len() {
                // Cannot happen with a buffer of `rx_len(max_frame)`: the core rejects a longer
                // frame from its header.
                return End::Lost;
            }
        }
    }
}

/// Writes `tx[..*len]` whole and empties it.
async fn send<C: Write>(
    conn: &mut C,
    tx: &[u8],
    len: &mut usize,
    timeout: embassy_time::Duration,
) -> Result<(), ()> {
    if *len == 0 {
        return Ok(());
    }
    let bytes = tx.get(..*len).unwrap_or_default();
    *len = 0;
    match with_timeout(timeout, conn.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The core's clock: embassy-time's, in microseconds since boot.
fn now() -> Instant {
    Instant::from_micros(embassy_time::Instant::now().as_micros())
}

fn to_embassy(at: Instant) -> embassy_time::Instant {
    if at == Instant::MAX {
        return embassy_time::Instant::MAX;
    }
    embassy_time::Instant::from_micros(at.as_micros())
}
