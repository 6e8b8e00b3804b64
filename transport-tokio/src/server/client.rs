//! A task client's connection on the server: its reader turns frames into engine events, and
//! [`ClientLimits`], the rules every task client is held to.
//!
//! The conversation (every reply below is sent only once the records it depends on are durable,
//! and replies come in the order of the requests they answer):
//!
//! ```text
//!  CreateJob(spec, edges = 0) ──► JobAccepted { job, already_done }, then a TaskDone or
//!                                 TaskFailed for every task of the job already settled
//!  AddTasks { job, inputs }  ──► Submitted { job, task }: the last of its tasks (ids consecutive)
//!  Submit { job, input }     ──► Submitted { job, task }
//!  SealJob { job }           ──► nothing; a spec with `open: false` closes the job
//!  CreateJob(spec, edges > 0), AddTasks*, AddEdges*, SealJob ──► JobAccepted (a DAG job; while
//!                                 it is built, the `job` field of those messages is not read)
//!  StatusQuery               ──► Status (at once; it may overtake a pending reply)
//!  Call { name: "colony/kinds" } ──► CallReturn: postcard `Vec<(String, u32)>`, every task kind
//!                                 a connected worker declares, with how many declare it
//!  Goodbye                   ──► the connection ends; the jobs no other client is attached to
//!                                 are closed (they finish once their tasks settle)
//! ```
//!
//! Jobs created without edges are open jobs of the scheduler: each task's input is in the
//! checkpoint, so a restarted server brings back every unfinished job on its own, and a client
//! that sends the same `CreateJob` again (same name and kind) is attached to it and given every
//! result already recorded. A connection that ends without `Goodbye` leaves its jobs open for such
//! a return.
//!
//! Invariants:
//! - The reader sends the engine one [`ClientEvent::Batch`] per read, in stream order, and after
//!   its last batch exactly one [`ClientEvent::Left`] (a `Goodbye` is itself the last item).
//! - Every frame is checked and decoded here before it reaches the engine; the engine decodes
//!   again only what it needs from frames known to be good.
//! - A client that breaks a rule (a message a client may not send, a job it is not attached to,
//!   more tasks in flight than allowed, silence past the idle timeout) is dropped with an `Error`
//!   and a logged reason.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use colony_core::JobId;
use colony_core::proto::{Message, decode_message};
use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::task::AbortHandle;

use super::engine::Event;
use super::outbox::Outbox;
use super::peer::{CallRunner, PeerCtx, ReadEnd, Refusal, drain, idle_expired, range_in};
use crate::conn::FrameReader;
use crate::net::Transport;

/// The built-in call naming every task kind a connected worker declares (see the module docs).
pub const KINDS_CALL: &str = "colony/kinds";

/// Spare room given to a reader's next buffer after it hands its frames to the engine.
const READ_BUFFER: usize = 64 * 1024;

/// The rules every task client is held to. Start from [`ClientLimits::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    max_in_flight: u32,
    max_job_tasks: u32,
    max_job_bytes: usize,
    max_name: usize,
}

impl Default for ClientLimits {
    /// 1,048,576 tasks in flight per connection; DAG jobs of at most 16,777,216 tasks and
    /// 1 GiB of inputs and edges; job and kind names of at most 256 bytes.
    fn default() -> Self {
        ClientLimits {
            max_in_flight: 1 << 20,
            max_job_tasks: 1 << 24,
            max_job_bytes: 1 << 30,
            max_name: 256,
        }
    }
}

impl ClientLimits {
    /// Tasks one connection may have submitted and not yet settled; a client that submits more
    /// is dropped.
    #[must_use]
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Tasks of one DAG job sent with `AddTasks` before `SealJob`.
    #[must_use]
    pub fn max_job_tasks(mut self, n: u32) -> Self {
        self.max_job_tasks = n;
        self
    }

    /// Bytes of inputs and edges of one DAG job held until `SealJob`.
    #[must_use]
    pub fn max_job_bytes(mut self, bytes: usize) -> Self {
        self.max_job_bytes = bytes;
        self
    }

    /// Bytes of a job's name or kind.
    #[must_use]
    pub fn max_name(mut self, bytes: usize) -> Self {
        self.max_name = bytes;
        self
    }

    /// Tasks in flight allowed per connection.
    pub fn in_flight_limit(&self) -> u32 {
        self.max_in_flight
    }

    pub(super) fn job_tasks_limit(&self) -> u32 {
        self.max_job_tasks
    }

    pub(super) fn job_bytes_limit(&self) -> usize {
        self.max_job_bytes
    }

    pub(super) fn name_limit(&self) -> usize {
        self.max_name
    }
}

/// A task client's connection number on this server (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ClientId(pub(super) u32);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {}", self.0)
    }
}

/// A task client's news for the engine.
#[derive(Debug)]
pub(super) enum ClientEvent {
    /// A client passed the handshake; its `Welcome` is in its outbox already.
    Joined(Box<ClientJoined>),
    /// What one read brought; ranges in `items` index `chunk`.
    Batch {
        client: ClientId,
        chunk: Vec<u8>,
        items: Vec<ClientIn>,
    },
    /// The connection ended (after its last batch).
    Left {
        client: ClientId,
        reason: Option<String>,
    },
}

/// A task client that passed the handshake.
#[derive(Debug)]
pub(super) struct ClientJoined {
    pub(super) name: String,
    pub(super) peer: SocketAddr,
    pub(super) transport: Transport,
    pub(super) max_frame: u32,
    pub(super) outbox: Arc<Outbox>,
    pub(super) reader: AbortHandle,
    pub(super) reply: oneshot::Sender<ClientId>,
}

/// One message from a task client, checked by its reader.
#[derive(Clone, Debug)]
pub(super) enum ClientIn {
    /// `Submit`, the hot path: decoded here.
    Submit { job: JobId, input: Range<usize> },
    /// `CreateJob`, `AddTasks`, `AddEdges`, `SealJob` or `StatusQuery`: the payload, decoded
    /// again by the engine.
    Frame(Range<usize>),
    /// A call of a built-in function.
    Builtin { call: u32, name: Range<usize> },
    /// The client leaves on purpose.
    Goodbye,
}

/// Decodes every frame buffered in `reader` into `items`.
fn decode_buffered<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    items: &mut Vec<ClientIn>,
    calls: &CallRunner,
) -> ReadEnd {
    loop {
        let range = match reader.next_buffered() {
            Ok(Some(range)) => range,
            Ok(None) => return ReadEnd::More,
            Err(e) => return ReadEnd::Over(Refusal::conn(e)),
        };
        let buffer = reader.buffer();
        let message = match decode_message(buffer.get(range.clone()).unwrap_or_default()) {
            Ok(message) => message,
            Err(e) => return ReadEnd::Over(Refusal::conn(e.into())),
        };
        match message {
            Message::Submit { job, input } => items.push(ClientIn::Submit {
                job,
                input: range_in(buffer, input),
            }),
            Message::CreateJob(_)
            | Message::AddTasks { .. }
            | Message::AddEdges { .. }
            | Message::SealJob { .. }
            | Message::StatusQuery { .. } => items.push(ClientIn::Frame(range)),
            Message::Heartbeat => {
                if let Err(overflow) = calls.outbox().push(&Message::Heartbeat) {
                    return ReadEnd::Over(Refusal::not_reading(overflow.backlog));
                }
            }
            Message::Call { call, name, .. } if name.starts_with("colony/") => {
                items.push(ClientIn::Builtin {
                    call,
                    name: range_in(buffer, name.as_bytes()),
                });
            }
            Message::Call { call, name, args } => calls.start(call, name, args),
            Message::Goodbye => {
                items.push(ClientIn::Goodbye);
                return ReadEnd::Goodbye;
            }
            Message::Error { code, detail } => {
                return ReadEnd::Over(Refusal {
                    code: None,
                    reason: format!("peer closed with {code:?}: {detail}"),
                    quiet: true,
                });
            }
            other => {
                return ReadEnd::Over(Refusal::unexpected("a task client's message", other.name()));
            }
        }
    }
}

/// Registers a task client with the engine and reads it until it leaves. Its `Welcome` must be in
/// `outbox` already.
pub(super) async fn serve_client<R: AsyncRead + Send + Unpin + 'static>(
    reader: FrameReader<R>,
    name: String,
    (peer, transport): (SocketAddr, Transport),
    calls: CallRunner,
    ctx: Arc<PeerCtx>,
    permit: OwnedSemaphorePermit,
) {
    let outbox = Arc::clone(calls.outbox());
    let max_frame = calls.max_frame();
    let (reply, id) = oneshot::channel();
    let task = tokio::spawn(read_client(
        reader,
        id,
        calls,
        Arc::clone(&ctx),
        peer,
        permit,
    ));
    log::info!("task client {name:?} connected from {transport}://{peer}");
    let joined = ClientJoined {
        name,
        peer,
        transport,
        max_frame,
        outbox,
        reader: task.abort_handle(),
        reply,
    };
    if let Err(refused) = ctx
        .events
        .send(Event::Client(ClientEvent::Joined(Box::new(joined))))
        .await
    {
        // The engine stopped meanwhile.
        if let Event::Client(ClientEvent::Joined(joined)) = refused.0 {
            joined.outbox.close(Some(&Message::ServerGoingAway));
        }
        task.abort();
    }
}

/// A task client's reader: waits for its id, then turns each read into one batch of events.
async fn read_client<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    id: oneshot::Receiver<ClientId>,
    calls: CallRunner,
    ctx: Arc<PeerCtx>,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let Ok(client) = id.await else { return };
    let events = ctx.events.clone();
    let idle: Duration = ctx.idle_timeout;
    let mut shutdown = ctx.shutdown.clone();
    let mut items = Vec::new();
    let mut last_read = tokio::time::Instant::now();
    let idle_check = tokio::time::sleep(idle);
    tokio::pin!(idle_check);
    loop {
        let read = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopping| *stopping) => {
                calls.outbox().close(Some(&Message::ServerGoingAway));
                return;
            }
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
            let chunk = reader.split_consumed(Vec::with_capacity(READ_BUFFER));
            let room = items.len();
            let batch = std::mem::replace(&mut items, Vec::with_capacity(room));
            let event = Event::Client(ClientEvent::Batch {
                client,
                chunk,
                items: batch,
            });
            if events.send(event).await.is_err() {
                return;
            }
        }
        match end {
            ReadEnd::More => {}
            ReadEnd::Goodbye => {
                drain(reader.into_inner()).await;
                return;
            }
            ReadEnd::Over(refusal) => {
                refusal.log(peer, &format!("({client})"));
                if let Some(code) = refusal.code {
                    calls.outbox().close(Some(&Message::Error {
                        code,
                        detail: &refusal.reason,
                    }));
                }
                let reason = (!refusal.quiet).then_some(refusal.reason);
                let _ = events
                    .send(Event::Client(ClientEvent::Left { client, reason }))
                    .await;
                drain(reader.into_inner()).await;
                return;
            }
        }
    }
}
