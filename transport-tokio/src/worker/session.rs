//! The connection loop: one tokio task owns the stream and the core's worker state machine, and
//! does what the machine asks (connect, send, close, sleep until its next deadline).
//!
//! Invariants:
//! - No protocol decision is taken here: handshake, credit, heartbeats, lease bookkeeping and
//!   backoff are the core's; this loop moves bytes and time, and runs tasks.
//! - Bytes go out in the order the machine produced them (answers before the credit they free),
//!   through one buffer written as the stream takes it (and flushed, for TLS and WebSocket), so
//!   reading never waits on writing. The stream is any transport of [`crate::net`].
//! - The server counts as lost only after `server_lost_after` without a welcomed connection,
//!   measured from the moment the last welcomed connection ended (or from the start).
//! - Leases never outlive their connection: on disconnect the queue is emptied and answers of
//!   the old connection are dropped by the machine (its tickets are fenced).

use std::collections::HashMap;
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use colony_core::proto::{ErrorCode, HANDSHAKE_MAX_FRAME, HEADER_LEN, HandshakeError, Nonce};
use colony_core::worker::{
    Action, CloseReason, CompleteError, Event, Grants, Received, Ticket, Worker,
    WorkerError as ProtocolError,
};
use colony_core::{Instant as CoreInstant, LeaseId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{MAX_CREDIT, OnJobEnd, WorkerConfig};
use super::handler::{Handler, Outcome, TaskCtx, run_task};
use super::pool::{Item, Pool};
use super::shutdown::ShutdownToken;
use super::stats::WorkerStats;
use super::{WorkerError, WorkerExit};
use crate::net::{self, Endpoint, Stream};

/// The core state machine's lease capacity.
pub(super) const CAPACITY: usize = MAX_CREDIT as usize;

/// Room for any frame `poll_transmit` writes (the core's documented bound).
const TRANSMIT_ROOM: usize = HEADER_LEN + 2 * HANDSHAKE_MAX_FRAME as usize;

/// Bytes an answer's frame adds to its output or error text: header, variant, lease, length,
/// retry flag.
const ANSWER_OVERHEAD: usize = HEADER_LEN + 24;

/// The receive buffer's starting size; it grows to hold the largest frame seen.
const RECV_BUF: usize = 256 * 1024;

/// How long a closing connection may take to send its last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Where tasks run.
pub(super) enum Exec<H> {
    Threads(Pool),
    Inline { handler: Arc<H>, ctx: TaskCtx },
}

/// Everything the connection loop owns across connections.
pub(super) struct Driver<'c, H> {
    pub(super) config: &'c WorkerConfig,
    pub(super) sm: Box<Worker<'c, CAPACITY>>,
    pub(super) exec: Exec<H>,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) clock: Clock,
    pub(super) out: OutBuf,
    /// When each held lease was granted (clock micros), for the round-trip histogram.
    pub(super) granted_at: HashMap<LeaseId, u64, BuildHasherDefault<IdHasher>>,
    /// Round trips measured since they were last handed to the stats.
    pub(super) rtt: Vec<u64>,
    pub(super) acked: u64,
    /// Leases of the input being handled, pushed to the pool in one go.
    pub(super) pending: Vec<Item>,
    /// Why the worker is leaving, once it decided to.
    pub(super) exit: Option<WorkerExit>,
    /// The server's last error message, for the report if it refused the worker.
    pub(super) server_error: Option<(ErrorCode, String)>,
}

/// How one connection ended.
enum End {
    /// The link went away; reconnect.
    Lost { welcomed: bool, reason: String },
    /// The worker is done.
    Exit(WorkerExit),
    /// Reconnecting cannot help.
    Fatal(WorkerError),
}

/// The window in which the server must come back.
struct Lost {
    since: Instant,
    after: Duration,
    last_error: String,
}

impl Lost {
    fn deadline(&self) -> Instant {
        self.since + self.after
    }

    fn error(&self, addr: &str) -> WorkerError {
        WorkerError::ServerLost {
            addr: addr.to_owned(),
            waited: self.since.elapsed(),
            last_error: self.last_error.clone(),
        }
    }
}

impl<H: Handler> Driver<'_, H> {
    /// Connects, serves, reconnects, until the job ends, the worker is stopped, or the server
    /// is lost.
    pub(super) async fn run(mut self) -> Result<WorkerExit, WorkerError> {
        let shutdown = self.config.shutdown_token();
        let addr = self.config.addr();
        let endpoint = Endpoint::parse(addr)?;
        let mut lost = Lost {
            since: Instant::now(),
            after: self.config.server_lost_after(),
            last_error: "never connected".to_owned(),
        };
        loop {
            if shutdown.is_shutdown() {
                return Ok(WorkerExit::Shutdown);
            }
            match self.sm.poll(self.clock.now()) {
                Some(Action::Connect) => {}
                Some(Action::Close(_)) => {
                    self.connection_ended();
                    continue;
                }
                None => {
                    if Instant::now() >= lost.deadline() {
                        return Err(lost.error(addr));
                    }
                    let until = self
                        .sm
                        .poll_at()
                        .map_or(lost.deadline(), |at| self.clock.at(at).min(lost.deadline()));
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = shutdown.wait() => return Ok(WorkerExit::Shutdown),
                    }
                    continue;
                }
            }
            if Instant::now() >= lost.deadline() {
                return Err(lost.error(addr));
            }
            let connecting = net::connect(&endpoint, self.config.tls());
            let attempt = tokio::select! {
                r = tokio::time::timeout_at(lost.deadline(), connecting) => r,
                () = shutdown.wait() => return Ok(WorkerExit::Shutdown),
            };
            let mut stream = match attempt {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) if err.is_permanent() => {
                    return Err(WorkerError::Connect {
                        addr: addr.to_owned(),
                        error: err,
                    });
                }
                Ok(Err(err)) => {
                    log::debug!("worker: cannot connect to {addr}: {err}");
                    lost.last_error = err.to_string();
                    self.connection_ended();
                    continue;
                }
                Err(_) => {
                    lost.last_error = "connection attempt timed out".to_owned();
                    self.connection_ended();
                    continue;
                }
            };
            self.sm.connected(self.clock.now(), nonce()?);
            let end = self.session(&mut stream, &lost, &shutdown).await;
            drop(stream);
            self.connection_ended();
            match end {
                End::Lost { welcomed, reason } => {
                    log::info!("worker: lost the connection to {addr}: {reason}");
                    if welcomed {
                        lost.since = Instant::now();
                    }
                    lost.last_error = reason;
                }
                End::Exit(exit) => return Ok(exit),
                End::Fatal(err) => return Err(err),
            }
        }
    }

    /// Serves one connection until it ends.
    async fn session(&mut self, stream: &mut Stream, lost: &Lost, shutdown: &ShutdownToken) -> End {
        let mut recv = RecvBuf::new();
        self.out.clear();
        let mut welcomed = false;
        let mut leaving = false;
        let waker: Option<Arc<Notify>> = match &self.exec {
            Exec::Threads(pool) => Some(pool.waker()),
            Exec::Inline { .. } => None,
        };
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            let now = self.clock.now();
            self.take_answers();
            if let Some(Action::Close(reason)) = self.sm.poll(now) {
                self.transmit(now);
                if tokio::time::timeout(FLUSH_TIMEOUT, self.out.flush(stream))
                    .await
                    .is_err()
                {
                    log::debug!("worker: could not send the last frames in time");
                }
                return self.classify(reason, welcomed);
            }
            self.transmit(now);
            if let Err(err) = self.out.write_now(stream) {
                return End::Lost {
                    welcomed,
                    reason: format!("write failed: {err}"),
                };
            }
            let wake = self
                .sm
                .poll_at()
                .map_or_else(far_future, |at| self.clock.at(at));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                io = transfer(stream, &mut recv, &mut self.out) => match io {
                    Ok(0) => {
                        return End::Lost {
                            welcomed,
                            reason: "the server closed the connection".to_owned(),
                        };
                    }
                    Ok(_) => self.handle_input(&mut recv, &mut welcomed),
                    Err(err) => {
                        return End::Lost { welcomed, reason: format!("connection failed: {err}") };
                    }
                },
                () = notified(waker.as_deref()) => {}
                () = &mut timer => {}
                () = shutdown.wait(), if !leaving => {
                    leaving = true;
                    self.exit.get_or_insert(WorkerExit::Shutdown);
                    self.sm.goodbye();
                }
                () = tokio::time::sleep_until(lost.deadline()), if !welcomed => {
                    let mut lost = lost.error(self.config.addr());
                    if let WorkerError::ServerLost { last_error, .. } = &mut lost {
                        *last_error = "connected, but the handshake never completed".to_owned();
                    }
                    return End::Fatal(lost);
                }
            }
        }
    }

    /// Handles every whole frame received.
    fn handle_input(&mut self, recv: &mut RecvBuf, welcomed: &mut bool) {
        let now = self.clock.now();
        loop {
            let data = recv.data();
            if data.is_empty() {
                break;
            }
            match self.sm.receive(now, data) {
                Ok(Received::Incomplete { needed }) => {
                    recv.reserve(needed);
                    break;
                }
                Ok(Received::Frame { len, event }) => {
                    if let Some(event) = event {
                        self.on_event(event, now, welcomed);
                    }
                    recv.consume(len);
                }
                Err(err) => {
                    // The machine is closing; the next poll says so.
                    log::warn!("worker: bad input from {}: {err}", self.config.addr());
                    break;
                }
            }
        }
        recv.compact();
        if let Exec::Threads(pool) = &self.exec {
            pool.push(&mut self.pending);
        }
        if self.acked > 0 {
            self.stats.add_acked(self.acked, &self.rtt);
            self.acked = 0;
            self.rtt.clear();
        }
    }

    fn on_event(&mut self, event: Event<'_>, now: CoreInstant, welcomed: &mut bool) {
        match event {
            Event::Ready { worker } => {
                *welcomed = true;
                self.stats.add_connection();
                log::info!(
                    "worker: {} joined {} as {worker}",
                    self.config.name(),
                    self.config.addr()
                );
            }
            Event::Granted(grants) => self.on_grants(grants, now),
            Event::Revoked(ticket) => {
                self.granted_at.remove(&ticket.lease());
                if let Exec::Threads(pool) = &self.exec {
                    self.pending.retain(|item| item.ticket != ticket);
                    pool.revoke(ticket);
                }
            }
            Event::Acked(ticket) => {
                self.acked += 1;
                if let Some(at) = self.granted_at.remove(&ticket.lease()) {
                    self.rtt.push(now.as_micros().saturating_sub(at));
                }
            }
            Event::JobFinished { job, outcome } => {
                log::info!("worker: {job} ended ({outcome:?})");
                if self.config.on_job_end() == OnJobEnd::Exit && self.exit.is_none() {
                    self.exit = Some(WorkerExit::JobFinished { job, outcome });
                    self.sm.goodbye();
                }
            }
            Event::ServerGoingAway => log::info!("worker: the server is going away"),
            Event::ServerGoodbye => log::info!("worker: the server said goodbye"),
            Event::ServerError { code, detail } => {
                log::warn!("worker: the server closes the connection: {code:?}: {detail}");
                self.server_error = Some((code, detail.to_owned()));
            }
            _ => {}
        }
    }

    fn on_grants(&mut self, grants: Grants<'_>, now: CoreInstant) {
        self.stats.add_granted(grants.len() as u64);
        for task in &grants {
            self.granted_at.insert(task.lease(), now.as_micros());
        }
        match &mut self.exec {
            Exec::Inline { handler, ctx } => {
                for task in &grants {
                    ctx.set(task.job(), task.task(), task.attempt(), task.lease());
                    let outcome = run_task(&**handler, ctx, task.kind_name(), task.input());
                    answer(
                        &mut self.sm,
                        &mut self.out,
                        &self.stats,
                        task.ticket(),
                        outcome,
                    );
                }
            }
            Exec::Threads(_) => {
                // One allocation for the inputs of the whole grant.
                let total = grants.iter().map(|t| t.input().len()).sum();
                let mut arena = Vec::with_capacity(total);
                for task in &grants {
                    arena.extend_from_slice(task.input());
                }
                let arena = Arc::new(arena);
                let mut at = 0;
                for task in &grants {
                    let end = at + task.input().len();
                    self.pending.push(Item {
                        ticket: task.ticket(),
                        job: task.job(),
                        task: task.task(),
                        attempt: task.attempt(),
                        kind: u16::try_from(task.kind()).unwrap_or(u16::MAX),
                        input: at..end,
                        arena: Arc::clone(&arena),
                    });
                    at = end;
                }
            }
        }
    }

    /// Sends the answers the pool has ready.
    fn take_answers(&mut self) {
        let Exec::Threads(pool) = &self.exec else {
            return;
        };
        pool.begin_drain();
        while let Some(a) = pool.try_answer() {
            answer(
                &mut self.sm,
                &mut self.out,
                &self.stats,
                a.ticket,
                a.outcome,
            );
        }
    }

    /// Moves every frame the machine has pending into the output buffer.
    fn transmit(&mut self, now: CoreInstant) {
        while let Ok(Some(n)) = self.sm.poll_transmit(now, self.out.spare(TRANSMIT_ROOM)) {
            self.out.commit(n);
        }
    }

    /// What a closed connection means for the worker.
    fn classify(&mut self, reason: CloseReason, welcomed: bool) -> End {
        let addr = self.config.addr().to_owned();
        match reason {
            CloseReason::Goodbye => End::Exit(self.exit.take().unwrap_or(WorkerExit::Shutdown)),
            CloseReason::Protocol(ProtocolError::Handshake(
                source @ (HandshakeError::Auth(_) | HandshakeError::VersionMismatch { .. }),
            )) => End::Fatal(WorkerError::Handshake { addr, source }),
            CloseReason::ServerError(
                code @ (ErrorCode::AuthFailed
                | ErrorCode::VersionMismatch
                | ErrorCode::FingerprintMismatch),
            ) => {
                let detail = self
                    .server_error
                    .take()
                    .map(|(_, detail)| detail)
                    .unwrap_or_default();
                End::Fatal(WorkerError::Rejected { addr, code, detail })
            }
            other => End::Lost {
                welcomed,
                reason: other.to_string(),
            },
        }
    }

    /// Forgets the connection: leases, queued tasks, and schedules the next attempt.
    fn connection_ended(&mut self) {
        if let Exec::Threads(pool) = &self.exec {
            pool.clear();
        }
        self.pending.clear();
        self.granted_at.clear();
        self.out.clear();
        self.server_error = None;
        let (initial, _) = self.config.backoff();
        self.sm.disconnected(self.clock.now(), jitter(initial));
    }
}

/// Writes the answer of `ticket` into `out`.
fn answer<const N: usize>(
    sm: &mut Worker<'_, N>,
    out: &mut OutBuf,
    stats: &WorkerStats,
    ticket: Ticket,
    outcome: Outcome,
) {
    let (result, failed) = match outcome {
        Outcome::Done(output) => {
            let mut room = ANSWER_OVERHEAD + output.len();
            let result = loop {
                match sm.complete(ticket, &output, out.spare(room)) {
                    Err(CompleteError::BufferTooSmall { needed, .. }) if needed > room => {
                        room = needed;
                    }
                    Err(CompleteError::OutputTooLarge { len, max }) => {
                        let text =
                            format!("task output of {len} bytes exceeds the frame limit of {max}");
                        break sm.fail(
                            ticket,
                            colony_core::proto::Retry::Permanent,
                            &text,
                            out.spare(ANSWER_OVERHEAD + text.len()),
                        );
                    }
                    other => break other,
                }
            };
            (result, None)
        }
        Outcome::Failed(err) => (
            sm.fail(
                ticket,
                err.retry(),
                err.message(),
                out.spare(ANSWER_OVERHEAD + err.message().len()),
            ),
            Some(false),
        ),
        Outcome::Panicked(err) => (
            sm.fail(
                ticket,
                err.retry(),
                err.message(),
                out.spare(ANSWER_OVERHEAD + err.message().len()),
            ),
            Some(true),
        ),
    };
    match result {
        Ok(0) => stats.add_dropped(1),
        Ok(n) => {
            out.commit(n);
            match failed {
                None => stats.add_done(1),
                Some(panicked) => {
                    stats.add_failed(1);
                    if panicked {
                        stats.add_panicked(1);
                    }
                }
            }
        }
        Err(err) => {
            // Room was made for the frame; only a limit below the handshake's could do this.
            log::error!("worker: cannot encode the answer of {ticket}: {err}");
            stats.add_dropped(1);
        }
    }
}

async fn notified(waker: Option<&Notify>) {
    match waker {
        Some(waker) => waker.notified().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// A fresh handshake nonce from the OS.
fn nonce() -> Result<Nonce, WorkerError> {
    let mut nonce = Nonce::default();
    getrandom::fill(&mut nonce).map_err(|err| WorkerError::Random(err.to_string()))?;
    Ok(nonce)
}

/// A random delay below `max`, so restarted workers do not reconnect in lockstep.
fn jitter(max: Duration) -> colony_core::Duration {
    let max = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    let r = getrandom::u64().unwrap_or(0);
    colony_core::Duration::from_micros(r.checked_rem(max).unwrap_or(0))
}

/// The core's clock: microseconds since the worker started.
pub(super) struct Clock {
    base: Instant,
}

impl Clock {
    pub(super) fn new() -> Self {
        Clock {
            base: Instant::now(),
        }
    }

    fn now(&self) -> CoreInstant {
        CoreInstant::from_micros(u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn at(&self, at: CoreInstant) -> Instant {
        self.base
            .checked_add(Duration::from_micros(at.as_micros()))
            .unwrap_or_else(far_future)
    }
}

/// A hasher for lease ids: one multiply, high bits well mixed.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Frames waiting for the socket, written without blocking.
pub(super) struct OutBuf {
    /// Always initialized up to its length; `start..end` is pending.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes were written since the stream was last flushed (TLS and WebSocket streams buffer).
    unflushed: bool,
}

impl OutBuf {
    pub(super) fn new() -> Self {
        OutBuf {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            unflushed: false,
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.unflushed = false;
    }

    fn has_pending(&self) -> bool {
        self.end > self.start
    }

    /// Whether bytes wait to be written or flushed.
    fn busy(&self) -> bool {
        self.has_pending() || self.unflushed
    }

    /// At least `min` writable bytes after the pending ones.
    fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.buf.len() - self.end < min {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < min {
                self.buf.resize(self.end + min, 0);
            }
        }
        self.buf.get_mut(self.end..).unwrap_or_default()
    }

    fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Writes and flushes what the stream takes: ready once nothing is left, pending (with
    /// `cx` woken when it may take more) otherwise.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.has_pending() {
            let pending = self.buf.get(self.start..self.end).unwrap_or_default();
            match ready!(Pin::new(&mut *stream).poll_write(cx, pending)) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.start += n;
                    self.unflushed = true;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        if self.unflushed {
            ready!(Pin::new(&mut *stream).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what the stream takes now, without waiting.
    fn write_now<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_write(stream, &mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }

    /// Writes everything pending, waiting as needed.
    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        poll_fn(|cx| self.poll_write(stream, cx)).await
    }
}

/// Writes what `out` holds as the stream takes it, and reads into `recv`: returns the bytes
/// read (0 at the end of the stream).
async fn transfer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    recv: &mut RecvBuf,
    out: &mut OutBuf,
) -> std::io::Result<usize> {
    poll_fn(|cx| {
        if out.busy()
            && let Poll::Ready(Err(err)) = out.poll_write(stream, cx)
        {
            return Poll::Ready(Err(err));
        }
        recv.poll_read(stream, cx)
    })
    .await
}

/// Bytes received and not yet handled.
struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    fn new() -> Self {
        RecvBuf {
            buf: vec![0; RECV_BUF],
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room for `needed` more bytes after the unhandled ones.
    fn reserve(&mut self, needed: usize) {
        let want = self.end - self.start + needed;
        if self.buf.len() - self.start < want {
            self.compact();
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
        }
    }

    /// Moves the unhandled bytes to the front.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Reads what the stream has: 0 bytes at its end.
    fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        if self.end == self.buf.len() {
            self.compact();
            if self.end == self.buf.len() {
                // A frame larger than the buffer: `reserve` grows it once its length is known.
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let mut free = ReadBuf::new(self.buf.get_mut(self.end..).unwrap_or_default());
        ready!(Pin::new(stream).poll_read(cx, &mut free))?;
        let n = free.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }
}
