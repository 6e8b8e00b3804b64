//! One connection's life on the server: accept, handshake (with a timeout), then a reader task
//! that turns frames into engine events and a writer task that drains the connection's outbox.
//!
//! Invariants:
//! - Nothing reaches the engine from a peer that has not proved the secret.
//! - Until the handshake ends, frames are bound by the handshake limit; afterwards by the agreed
//!   one. A frame is checked (length, CRC) before it is decoded, and decoded before it becomes an
//!   event.
//! - A reader sends the engine one [`Event::Batch`] per read, in stream order, and after its last
//!   batch exactly one [`Event::Left`] (or nothing after a `Goodbye`, which is itself a leave).
//! - A misbehaving peer gets an `Error` frame with a reason code where possible, is closed, and
//!   is logged with its address; the server carries on.

use std::net::SocketAddr;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use colony_core::proto::{
    ErrorCode, Message, NONCE_LEN, Platform, Role, ServerHandshake, Welcome, decode_message,
};
use colony_core::{JobId, WorkerId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::CallHandler;
use super::engine::{Event, In, Joined};
use super::outbox::Outbox;
use crate::conn::{ConnError, FrameReader, FramedConn};
use crate::net::Transport;
use crate::secret::Secret;

/// Spare room given to a reader's next buffer after it hands its frames to the engine.
const READ_BUFFER: usize = 64 * 1024;

/// How long a closing connection keeps reading (and discarding) so its peer gets our last frame
/// before the socket goes away, and how much it reads at most.
const LINGER_CLOSE: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// Remote calls one connection may have running at once; more are answered with an error.
const MAX_CALLS_IN_FLIGHT: usize = 64;

/// What every connection task needs.
pub(super) struct PeerCtx {
    pub(super) secret: Secret,
    pub(super) max_frame: u32,
    pub(super) handshake_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) lease_ms: u32,
    pub(super) heartbeat_ms: u32,
    pub(super) outbox_cap: usize,
    pub(super) max_connections: usize,
    pub(super) calls: Option<CallHandler>,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// What else arrives on the port: TLS, HTTP (the monitor), WebSocket.
    pub(super) front: Arc<super::front::Front>,
}

/// Accepts connections for ever (the engine aborts this task on shutdown).
pub(super) async fn accept_loop(listener: TcpListener, ctx: Arc<PeerCtx>) {
    let limit = Arc::new(Semaphore::new(ctx.max_connections));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match Arc::clone(&limit).try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(super::front::route(stream, peer, Arc::clone(&ctx), permit));
                    }
                    Err(_) => {
                        log::warn!(
                            "connection from {peer} refused: {} connections are open already",
                            ctx.max_connections
                        );
                        tokio::spawn(async move {
                            let mut conn = FramedConn::new(stream);
                            let refusal = Message::Error {
                                code: ErrorCode::LimitExceeded,
                                detail: "too many connections",
                            };
                            let _ = conn.queue(&refusal);
                            close_gracefully(conn).await;
                        });
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a little, then go on.
                log::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What the handshake admitted.
#[derive(Debug)]
enum Admitted {
    Worker {
        name: String,
        kinds: Vec<String>,
        slots: u32,
        platform: Platform,
    },
    Observer,
    Client {
        name: String,
    },
}

/// Why a connection is dropped: the reason for the log, and the code to tell the peer.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) code: Option<ErrorCode>,
    pub(super) reason: String,
    /// A peer that simply went away is no fault; log it quietly.
    pub(super) quiet: bool,
}

impl Refusal {
    pub(super) fn conn(e: ConnError) -> Self {
        let quiet = matches!(e, ConnError::Closed | ConnError::Io(_));
        Refusal {
            code: e.code(),
            reason: e.to_string(),
            quiet,
        }
    }

    pub(super) fn unexpected(expected: &str, got: &str) -> Self {
        Refusal {
            code: Some(ErrorCode::BadMessage),
            reason: format!("expected {expected}, got {got}"),
            quiet: false,
        }
    }

    pub(super) fn not_reading(backlog: usize) -> Self {
        Refusal {
            code: Some(ErrorCode::LimitExceeded),
            reason: format!("not reading: {backlog} bytes waiting to be sent"),
            quiet: false,
        }
    }

    pub(super) fn log(&self, peer: SocketAddr, stage: &str) {
        if self.quiet {
            log::debug!("connection from {peer} closed {stage}: {}", self.reason);
        } else {
            log::warn!("connection from {peer} dropped {stage}: {}", self.reason);
        }
    }
}

/// The server's side of the handshake over a fresh connection.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut FramedConn<S>,
    ctx: &PeerCtx,
) -> Result<Admitted, Refusal> {
    let secret = ctx.secret.as_bytes();
    let mut server = ServerHandshake::new(ctx.max_frame);
    let hello = match conn.read_message().await.map_err(Refusal::conn)? {
        Message::ClientHello(hello) => hello,
        other => return Err(Refusal::unexpected("ClientHello", other.name())),
    };
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| Refusal {
        code: Some(ErrorCode::Other),
        reason: format!("cannot draw a random nonce: {e}"),
        quiet: false,
    })?;
    let handshake_error = |e: colony_core::proto::HandshakeError| Refusal {
        code: Some(e.code()),
        reason: e.to_string(),
        quiet: false,
    };
    let server_hello = server
        .hello(secret, &hello, nonce)
        .map_err(handshake_error)?;
    conn.send(&Message::ServerHello(server_hello))
        .await
        .map_err(Refusal::conn)?;
    let join = match conn.read_message().await.map_err(Refusal::conn)? {
        Message::Join(join) => join,
        Message::Error { code, detail } => {
            return Err(Refusal {
                code: None,
                reason: format!("peer gave up with {code:?}: {detail}"),
                quiet: false,
            });
        }
        other => return Err(Refusal::unexpected("Join", other.name())),
    };
    server.join(secret, &join).map_err(handshake_error)?;
    let admitted = match join.role {
        Role::Worker(hello) => {
            let kinds = hello
                .kinds
                .iter()
                .map(|k| k.map(str::to_owned))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Refusal {
                    code: Some(ErrorCode::BadMessage),
                    reason: format!("bad list of task kinds: {e}"),
                    quiet: false,
                })?;
            Admitted::Worker {
                name: hello.name.to_owned(),
                kinds,
                slots: hello.slots,
                platform: hello.platform,
            }
        }
        Role::Observer => Admitted::Observer,
        Role::Client(info) => Admitted::Client {
            name: info.name.to_owned(),
        },
    };
    conn.set_max_frame(server.max_frame());
    Ok(admitted)
}

/// Writes what is queued, shuts the write side down, then reads and discards for a moment so
/// the peer reads our last frame before the socket closes (closing with unread input would
/// reset the connection and might destroy it).
pub(super) async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(conn: FramedConn<S>) {
    let (reader, mut writer) = conn.split_with(tokio::io::split);
    let _ = tokio::time::timeout(LINGER_CLOSE, writer.shutdown()).await;
    drain(reader.into_inner()).await;
}

pub(super) async fn drain<R: AsyncRead + Unpin>(mut io: R) {
    let mut scratch = [0u8; 4096];
    let mut seen = 0;
    let _ = tokio::time::timeout(LINGER_CLOSE, async {
        while seen < LINGER_BYTES {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
}

/// Serves one Colony connection on any byte stream, `split` into halves for its reader and
/// writer tasks once the handshake is done.
pub(super) async fn serve_stream<S, R, W>(
    stream: S,
    split: fn(S) -> (R, W),
    (peer, transport): (SocketAddr, Transport),
    ctx: Arc<PeerCtx>,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut conn = FramedConn::new(stream);
    let admitted =
        match tokio::time::timeout(ctx.handshake_timeout, handshake(&mut conn, &ctx)).await {
            Ok(Ok(admitted)) => admitted,
            Ok(Err(refusal)) => {
                refusal.log(peer, "during the handshake");
                if let Some(code) = refusal.code {
                    let _ = conn.queue(&Message::Error {
                        code,
                        detail: &refusal.reason,
                    });
                }
                close_gracefully(conn).await;
                return;
            }
            Err(_) => {
                log::warn!(
                    "connection from {peer} dropped: handshake not finished within {:?}",
                    ctx.handshake_timeout
                );
                let _ = conn.queue(&Message::Error {
                    code: ErrorCode::Timeout,
                    detail: "handshake not finished in time",
                });
                close_gracefully(conn).await;
                return;
            }
        };
    let max_frame = conn.max_frame();
    let (reader, writer) = conn.split_with(split);
    let outbox = Arc::new(Outbox::new(ctx.outbox_cap));
    let writer = {
        let outbox = Arc::clone(&outbox);
        let io = writer.into_inner();
        tokio::spawn(async move { outbox.run_writer(io).await })
    };
    match admitted {
        Admitted::Worker {
            name,
            kinds,
            slots,
            platform,
        } => {
            log::info!(
                "worker {name:?} joined from {transport}://{peer} ({platform:?}, {slots} slots, \
                 kinds {kinds:?})"
            );
            let (reply, id) = oneshot::channel();
            let reader = tokio::spawn(read_worker(
                reader,
                id,
                CallRunner::new(&ctx, &outbox, max_frame),
                ctx.events.clone(),
                (peer, ctx.idle_timeout),
                permit,
            ));
            let joined = Joined {
                name,
                kinds,
                platform,
                slots,
                transport,
                peer,
                max_frame,
                outbox,
                reader: reader.abort_handle(),
                writer,
                reply,
            };
            if let Err(refused) = ctx.events.send(Event::Joined(Box::new(joined))).await {
                // The engine stopped meanwhile.
                if let Event::Joined(joined) = refused.0 {
                    joined.outbox.close(Some(&Message::ServerGoingAway));
                }
                reader.abort();
            }
        }
        Admitted::Client { name } => {
            let _ = outbox.push(&Message::Welcome(Welcome {
                worker: WorkerId(0),
                lease_ms: ctx.lease_ms,
                heartbeat_ms: ctx.heartbeat_ms,
            }));
            let calls = CallRunner::new(&ctx, &outbox, max_frame);
            super::client::serve_client(
                reader,
                name,
                (peer, transport),
                calls,
                Arc::clone(&ctx),
                permit,
            )
            .await;
            let _ = writer.await;
        }
        Admitted::Observer => {
            log::debug!("observer connected from {peer}");
            let _ = outbox.push(&Message::Welcome(Welcome {
                worker: WorkerId(0),
                lease_ms: ctx.lease_ms,
                heartbeat_ms: ctx.heartbeat_ms,
            }));
            let calls = CallRunner::new(&ctx, &outbox, max_frame);
            read_client(reader, calls, &ctx, peer).await;
            let _ = writer.await;
            drop(permit);
        }
    }
}

/// Runs one connection's remote calls: each on a blocking thread, answered into the outbox.
pub(super) struct CallRunner {
    handler: Option<CallHandler>,
    outbox: Arc<Outbox>,
    in_flight: Arc<AtomicUsize>,
    max_frame: u32,
}

impl CallRunner {
    pub(super) fn new(ctx: &PeerCtx, outbox: &Arc<Outbox>, max_frame: u32) -> Self {
        CallRunner {
            handler: ctx.calls.clone(),
            outbox: Arc::clone(outbox),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_frame,
        }
    }

    /// The connection's outbox.
    pub(super) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The connection's agreed frame limit.
    pub(super) fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Starts `name(args)`; the answer goes to the outbox when it is done.
    pub(super) fn start(&self, call: u32, name: &str, args: &[u8]) {
        let refuse = |error: &str| {
            let _ = self.outbox.push(&Message::CallError { call, error });
        };
        let Some(handler) = self.handler.clone() else {
            return refuse("this server has no functions to call");
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_CALLS_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return refuse("too many calls in flight on this connection");
        }
        let (name, args) = (name.to_owned(), args.to_vec());
        let outbox = Arc::clone(&self.outbox);
        let in_flight = Arc::clone(&self.in_flight);
        // Room for the answer's other fields.
        let room = (self.max_frame as usize).saturating_sub(32);
        tokio::task::spawn_blocking(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| handler(&name, &args)))
                .unwrap_or_else(|_| Err(format!("function {name:?} panicked")));
            let _ = match result {
                Ok(result) if result.len() <= room => outbox.push(&Message::CallReturn {
                    call,
                    result: &result,
                }),
                Ok(result) => outbox.push(&Message::CallError {
                    call,
                    error: &format!(
                        "the result of {name:?} ({} bytes) does not fit in a frame",
                        result.len()
                    ),
                }),
                Err(error) => outbox.push(&Message::CallError {
                    call,
                    error: clip(&error, room),
                }),
            };
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// How a read ended (for workers here, and for task clients in `client.rs`).
pub(super) enum ReadEnd {
    /// More may come.
    More,
    /// The peer said goodbye (for a worker, an [`In::Goodbye`] was queued).
    Goodbye,
    /// The connection is over; the reason for the log and, if the peer is at fault, the code.
    Over(Refusal),
}

/// The idle limit of a reader, kept with one timer pushed back lazily (a read only notes the
/// time): when the timer fires, either the peer read since (the timer moves to the new due time,
/// `None`) or it has been silent for `idle` (the refusal to drop it with).
pub(super) fn idle_expired(
    idle: Duration,
    last_read: tokio::time::Instant,
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Option<Refusal> {
    let due = last_read + idle;
    if due > tokio::time::Instant::now() {
        timer.reset(due);
        return None;
    }
    Some(Refusal {
        code: Some(ErrorCode::Timeout),
        reason: format!("silent for {idle:?}, taken for dead"),
        quiet: false,
    })
}

/// The byte range of `inner` within `outer` (`inner` is a subslice of it).
pub(super) fn range_in(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

/// Decodes every frame buffered in `reader` into `items`.
fn decode_buffered<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    items: &mut Vec<In>,
    calls: &CallRunner,
) -> ReadEnd {
    loop {
        let range = match reader.next_buffered() {
            Ok(Some(range)) => range,
            Ok(None) => return ReadEnd::More,
            Err(e) => return ReadEnd::Over(Refusal::conn(e)),
        };
        let buffer = reader.buffer();
        let message = match decode_message(buffer.get(range).unwrap_or_default()) {
            Ok(message) => message,
            Err(e) => return ReadEnd::Over(Refusal::conn(e.into())),
        };
        match message {
            Message::Credit { count } => items.push(In::Credit(count)),
            Message::Heartbeat => {
                items.push(In::Heartbeat);
                if let Err(overflow) = calls.outbox.push(&Message::Heartbeat) {
                    return ReadEnd::Over(Refusal::not_reading(overflow.backlog));
                }
            }
            Message::Call { call, name, args } => calls.start(call, name, args),
            Message::Complete { lease, output } => items.push(In::Complete {
                lease,
                output: range_in(buffer, output),
            }),
            Message::Fail {
                lease,
                retry,
                error,
            } => items.push(In::Fail {
                lease,
                retry,
                error: range_in(buffer, error.as_bytes()),
            }),
            Message::StatusQuery { job } => items.push(In::Query(job)),
            Message::Goodbye => {
                items.push(In::Goodbye);
                return ReadEnd::Goodbye;
            }
            Message::Error { code, detail } => {
                return ReadEnd::Over(Refusal {
                    code: None,
                    reason: format!("peer closed with {code:?}: {detail}"),
                    quiet: false,
                });
            }
            other => {
                return ReadEnd::Over(Refusal {
                    code: Some(ErrorCode::BadMessage),
                    reason: format!("unexpected {} from a worker", other.name()),
                    quiet: false,
                });
            }
        }
    }
}

/// A worker's reader: waits for its id, then turns each read into one batch of events.
async fn read_worker<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    id: oneshot::Receiver<WorkerId>,
    calls: CallRunner,
    events: mpsc::Sender<Event>,
    (peer, idle): (SocketAddr, Duration),
    _permit: OwnedSemaphorePermit,
) {
    let Ok(worker) = id.await else { return };
    let mut items = Vec::new();
    // One timer for the idle limit, pushed back lazily: a read only notes the time.
    let mut last_read = tokio::time::Instant::now();
    let idle_check = tokio::time::sleep(idle);
    tokio::pin!(idle_check);
    loop {
        let read = tokio::select! {
            biased;
            read = reader.fill() => Some(read),
            () = &mut idle_check => None,
        };
        let end = match read {
            Some(Ok(())) => {
                last_read = tokio::time::Instant::now();
                decode_buffered(&mut reader, &mut items, &calls)
            }
            Some(Err(e)) => ReadEnd::Over(Refusal::conn(e)),
            None => match idle_expired(idle, last_read, idle_check.as_mut()) {
                Some(refusal) => ReadEnd::Over(refusal),
                None => continue,
            },
        };
        if !items.is_empty() {
            let chunk = if items.iter().any(In::borrows) {
                reader.split_consumed(Vec::with_capacity(READ_BUFFER))
            } else {
                Vec::new()
            };
            let room = items.len();
            let batch = std::mem::replace(&mut items, Vec::with_capacity(room));
            let event = Event::Batch {
                worker,
                chunk,
                items: batch,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
        match end {
            ReadEnd::More => {}
            ReadEnd::Goodbye => {
                log::info!("{worker} at {peer} said goodbye");
                drain(reader.into_inner()).await;
                return;
            }
            ReadEnd::Over(refusal) => {
                refusal.log(peer, &format!("({worker})"));
                if let Some(code) = refusal.code {
                    calls.outbox.close(Some(&Message::Error {
                        code,
                        detail: &refusal.reason,
                    }));
                }
                let reason = (!refusal.quiet).then_some(refusal.reason);
                let _ = events.send(Event::Left { worker, reason }).await;
                drain(reader.into_inner()).await;
                return;
            }
        }
    }
}

/// An observer's or task client's reader: answers status queries (through the engine) and
/// remote calls until the peer leaves or the server shuts down.
async fn read_client<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    calls: CallRunner,
    ctx: &PeerCtx,
    peer: SocketAddr,
) {
    let outbox = Arc::clone(&calls.outbox);
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let query: Result<Option<JobId>, Option<Refusal>> = tokio::select! {
            read = reader.read_message() => match read {
                Ok(Message::StatusQuery { job }) => Ok(job),
                Ok(Message::Call { call, name, args }) => {
                    calls.start(call, name, args);
                    continue;
                }
                Ok(Message::Heartbeat) => match outbox.push(&Message::Heartbeat) {
                    Ok(()) => continue,
                    Err(overflow) => Err(Some(Refusal::not_reading(overflow.backlog))),
                },
                Ok(Message::Goodbye) => Err(None),
                Ok(Message::Error { code, detail }) => Err(Some(Refusal {
                    code: None,
                    reason: format!("peer closed with {code:?}: {detail}"),
                    quiet: true,
                })),
                Ok(other) => Err(Some(Refusal::unexpected("StatusQuery or Call", other.name()))),
                Err(e) => Err(Some(Refusal::conn(e))),
            },
            _ = shutdown.wait_for(|stopping| *stopping) => {
                outbox.close(Some(&Message::ServerGoingAway));
                return;
            }
        };
        match query {
            Ok(_) if outbox.is_closed() => {
                log::warn!("connection from {peer} dropped: not reading its replies");
                drain(reader.into_inner()).await;
                return;
            }
            Ok(job) => {
                let query = Event::Query {
                    job,
                    outbox: Arc::clone(&outbox),
                    max_frame: calls.max_frame,
                };
                if ctx.events.send(query).await.is_err() {
                    outbox.close(Some(&Message::ServerGoingAway));
                    return;
                }
            }
            Err(refusal) => {
                let mut last = None;
                if let Some(refusal) = &refusal {
                    refusal.log(peer, "(client)");
                    last = refusal.code.map(|code| (code, refusal.reason.as_str()));
                }
                outbox.close(
                    last.map(|(code, detail)| Message::Error { code, detail })
                        .as_ref(),
                );
                drain(reader.into_inner()).await;
                return;
            }
        }
    }
}
