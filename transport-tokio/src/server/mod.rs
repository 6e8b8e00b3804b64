//! The std server: TCP, the authenticated handshake, one task owning the core scheduler, and the
//! checkpoint log on a file with group commit.
//!
//! ```text
//!  accept ──► peer task: handshake (timeout) ──► reader task ─┐ events, in batches
//!                                              └► writer task ◄┼── outbox (whole frames)
//!  ServerHandle ── commands ─────────────────────────────────►│
//!  GroupCommit thread ── durable LSN ────────────────────────►│
//!                                                        engine task: owns the Scheduler
//! ```
//!
//! - [`Server::bind`] binds for real (with `SO_REUSEADDR`, so a restart right after a crash
//!   works), and fails with [`std::io::ErrorKind::AddrInUse`] when another process serves: the
//!   for-loop's server election rests on that. It then opens the checkpoint, replays it into the
//!   scheduler and starts the group-commit thread, all before a connection is accepted.
//! - The engine task is the only owner of the [`Scheduler`]: no
//!   lock on the hot path. Each reader decodes what one `read` brought and sends the engine one
//!   batch of events; the engine applies them, polls the scheduler, hands new log bytes to the
//!   group-commit thread (one flush in flight at a time; records gather meanwhile), and encodes
//!   the resulting frames per connection (consecutive grants to a worker become one `Grant`
//!   batch) into that connection's outbox, which its writer task writes whole.
//! - A completion is acknowledged only once its record is durable (the scheduler holds the `Ack`
//!   back until the engine reports the group commit's LSN).
//! - A bad peer (garbage, oversized frame, wrong secret, wrong version, a handshake that never
//!   ends, a protocol violation) gets an `Error` frame where possible, is closed, and is logged
//!   with its address; nothing else is disturbed. A worker that disconnects is removed at once
//!   and its leases go back to the queue.
//!
//! One port carries everything: the Colony protocol over TCP, over TLS
//! ([`ServerConfig::tls`]) and over WebSocket (plain or TLS), told apart by their first bytes,
//! and the monitor's HTTP (a live page at `/`, `/api/status`, `/metrics`; open on loopback,
//! behind the [`monitor_token`] elsewhere). Every Colony connection, whatever its transport,
//! passes the same authenticated handshake.
//!
//! Remote calls (`execute`): a peer's `Call` is handled by its connection's reader, never the
//! engine. The function ([`ServerConfig::call_handler`]) runs on a blocking thread and its
//! `CallReturn` or `CallError` goes straight into that connection's outbox, so a slow function
//! stalls neither scheduling nor the connection.

mod client;
mod engine;
mod front;
mod handle;
mod info;
mod monitor;
mod outbox;
mod peer;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use colony_core::proto::{DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
use colony_core::sched::{ReplayError, SchedConfig, Scheduler};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;

pub use client::{ClientLimits, KINDS_CALL};
pub use colony_core::sched::{Created, Progress};
pub use handle::{HandleError, JobInfo, ServerHandle, ServerStatus};
pub use info::{ClientInfo, WorkerInfo};
pub use monitor::monitor_token;

use crate::logfile::{GroupCommit, OpenLogError, Recovery, open_log};
use crate::secret::Secret;
use crate::tls::{ServerTls, TlsError};

/// The default port of a Colony server.
pub const DEFAULT_PORT: u16 = 7878;

/// A function table for remote calls: `(name, postcard-encoded args)` to the postcard-encoded
/// result, or an error text (unknown name, arguments that do not decode, the function's error).
/// It runs on a blocking thread, so it may block.
pub type CallHandler = Arc<dyn Fn(&str, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// [`CallHandler`] with a `Debug` impl, so the config stays `Debug`.
#[derive(Clone)]
struct Calls(CallHandler);

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallHandler")
    }
}

/// Settings of a [`Server`]. Start from [`ServerConfig::new`] and change what you need.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    listen: SocketAddr,
    secret: Secret,
    checkpoint: Option<PathBuf>,
    lease: Duration,
    heartbeat: Duration,
    max_frame: u32,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    linger: Option<Duration>,
    max_outstanding: u32,
    calls: Option<Calls>,
    clients: ClientLimits,
    /// Certificate and key files, loaded by `Server::bind`.
    tls: Option<(PathBuf, PathBuf)>,
    plain: front::Plain,
}

impl ServerConfig {
    /// Defaults: listen on `127.0.0.1:7878` (loopback only), no checkpoint, leases of 30 s,
    /// heartbeats every second, a worker silent for 10 s is dropped, frames of up to 1 MiB, 5 s
    /// to finish a handshake, 1,024 connections, run until shut down.
    pub fn new(secret: Secret) -> Self {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            secret,
            checkpoint: None,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_connections: 1024,
            linger: None,
            max_outstanding: 65_536,
            calls: None,
            clients: ClientLimits::default(),
            tls: None,
            plain: front::Plain::Allowed,
        }
    }

    /// The address to listen on (port 0 picks a free port; see [`BoundServer::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The checkpoint log file: created if missing, resumed from if present.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// How long a lease lasts without a heartbeat (default 30 s).
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// How often workers are told to send heartbeats (default 1 s). Keep it well below the lease.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// The largest frame payload accepted after the handshake (default 1 MiB; at least
    /// [`HANDSHAKE_MAX_FRAME`]). Task inputs and outputs must fit in it.
    pub fn max_frame(mut self, bytes: u32) -> Self {
        self.max_frame = bytes.max(HANDSHAKE_MAX_FRAME);
        self
    }

    /// How long a connection may take to finish its handshake (default 5 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// How long a worker may send nothing before it is taken for dead and disconnected (its
    /// leases go back to the queue at once, without counting as a failed attempt). Default 10 s;
    /// keep it several heartbeat intervals long.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Connections open at once, handshaking or not (default 1,024); more are refused.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Stop on its own this long after every job finished (and its records are durable), so
    /// late workers still learn the job ended. Default: run until [`ServerHandle::shutdown`].
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = Some(d);
        self
    }

    /// The most leases plus unused credit one worker may have (default 65,536).
    pub fn max_outstanding(mut self, n: u32) -> Self {
        self.max_outstanding = n;
        self
    }

    /// The functions authenticated peers may call (`Message::Call`); without one every call is
    /// answered with an error.
    pub fn call_handler(mut self, handler: CallHandler) -> Self {
        self.calls = Some(Calls(handler));
        self
    }

    /// The rules task clients are held to (tasks in flight per connection, job sizes).
    pub fn client_limits(mut self, limits: ClientLimits) -> Self {
        self.clients = limits;
        self
    }

    /// The rules task clients are held to.
    pub fn limits_for_clients(&self) -> ClientLimits {
        self.clients
    }

    /// Accepts TLS (`tls://`, `wss://`, `https://` for the monitor) on the same port, with this
    /// PEM certificate chain and private key (loaded by [`Server::bind`]). Plain connections
    /// are still served unless [`require_tls`](Self::require_tls) is set.
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Refuses plain-text connections (Colony and HTTP alike): only TLS is served. Needs
    /// [`tls`](Self::tls).
    pub fn require_tls(mut self) -> Self {
        self.plain = front::Plain::Refused;
        self
    }

    /// The certificate and key files, if TLS is on.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        self.tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The checkpoint path, if any.
    pub fn checkpoint_path(&self) -> Option<&Path> {
        self.checkpoint.as_deref()
    }

    /// The shared secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

/// [`Server::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The address could not be bound ([`io::ErrorKind::AddrInUse`]: another process serves).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error, its kind untouched.
        source: io::Error,
    },
    /// The checkpoint could not be opened.
    #[error(transparent)]
    Checkpoint(#[from] OpenLogError),
    /// The checkpoint's records contradict each other.
    #[error("checkpoint {} is inconsistent: {source}", path.display())]
    Replay {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        source: ReplayError,
    },
    /// The group-commit thread could not be started.
    #[error("cannot start the checkpoint writer thread: {0}")]
    Thread(io::Error),
    /// The TLS certificate or key could not be used, or TLS is required without them.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl BindError {
    /// Whether another process already listens on the address (this process should be a
    /// worker, then).
    pub fn is_addr_in_use(&self) -> bool {
        matches!(self, BindError::Listen { source, .. } if source.kind() == io::ErrorKind::AddrInUse)
    }
}

impl From<BindError> for io::Error {
    /// Keeps the kind of a listen error (so `AddrInUse` stays `AddrInUse`); anything else
    /// becomes [`io::ErrorKind::Other`] carrying the message.
    fn from(e: BindError) -> io::Error {
        match e {
            BindError::Listen { source, .. } => source,
            other => io::Error::other(other),
        }
    }
}

/// The server stopped on a fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The checkpoint could not be written; nothing after the last durable record is safe, so
    /// the server stopped.
    #[error("checkpoint write failed: {0}")]
    Log(io::Error),
    /// The listener could not be used.
    #[error("cannot accept connections: {0}")]
    Listen(io::Error),
}

/// Entry point: see [`Server::bind`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds `config`'s address (`SO_REUSEADDR`, a real bind), then opens and replays the
    /// checkpoint, if any, into a fresh scheduler. Accepts nothing until
    /// [`BoundServer::run`] or [`BoundServer::spawn`]. Replay is synchronous file I/O.
    ///
    /// # Errors
    /// [`BindError::Listen`] (with [`io::ErrorKind::AddrInUse`] if another process serves: the
    /// checkpoint is then not touched), [`BindError::Checkpoint`], [`BindError::Replay`],
    /// [`BindError::Thread`].
    pub fn bind(config: ServerConfig) -> Result<BoundServer, BindError> {
        let listener = listen(config.listen).map_err(|source| BindError::Listen {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| BindError::Listen {
            addr: config.listen,
            source,
        })?;
        let tls = match &config.tls {
            Some((cert, key)) => Some(ServerTls::from_pem_files(cert, key)?),
            None if config.plain == front::Plain::Refused => {
                return Err(TlsError::Config(tokio_rustls::rustls::Error::General(
                    "TLS is required but no certificate and key were given".into(),
                ))
                .into());
            }
            None => None,
        };
        let serves = match (&tls, config.plain) {
            (None, _) => "tcp, ws, http",
            (Some(_), front::Plain::Allowed) => "tcp, tls, ws, wss, http, https",
            (Some(_), front::Plain::Refused) => "tls, wss, https only",
        };
        let sched_config = SchedConfig::default()
            .lease_duration(config.lease.into())
            .max_outstanding(config.max_outstanding);
        let mut sched = Scheduler::new(sched_config);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let mut recovery = None;
        let log = match &config.checkpoint {
            Some(path) => {
                let mut failed = None;
                let storage = open_log(path, |record| {
                    if failed.is_none() {
                        failed = sched.replay(&record).err();
                    }
                })?;
                if let Some(source) = failed {
                    return Err(BindError::Replay {
                        path: path.clone(),
                        source,
                    });
                }
                let found = storage.recovery();
                if found.created {
                    log::info!("checkpoint {} created", path.display());
                } else {
                    log::info!(
                        "checkpoint {}: {} records replayed",
                        path.display(),
                        found.records
                    );
                }
                recovery = Some(found);
                let tx = control_tx.clone();
                let commit = GroupCommit::spawn(storage, move |flushed| {
                    let _ = tx.send(engine::Control::Durable(flushed));
                })
                .map_err(BindError::Thread)?;
                Some(commit)
            }
            None => None,
        };
        sched.replay_done();
        let stop = Arc::new(handle::StopState::default());
        let handle = ServerHandle::new(
            control_tx,
            local_addr,
            log.as_ref().map(GroupCommit::fsync_counter),
            Arc::clone(&stop),
        );
        let front = Arc::new(front::Front {
            monitor: monitor::Monitor::new(
                handle.clone(),
                &config.secret,
                local_addr.ip().is_loopback(),
                tls.is_some(),
            ),
            tls,
            plain: config.plain,
        });
        Ok(BoundServer {
            listener,
            local_addr,
            serves,
            handle,
            recovery,
            engine: engine::Engine::new(sched, Arc::new(config), log, control_rx, stop, front),
        })
    }
}

/// Creates the listening socket: `SO_REUSEADDR`, bind, listen, non-blocking.
fn listen(addr: SocketAddr) -> io::Result<StdTcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A server whose address is bound and whose checkpoint is replayed, not yet accepting.
pub struct BoundServer {
    listener: StdTcpListener,
    local_addr: SocketAddr,
    /// The transports served, for the log.
    serves: &'static str,
    handle: ServerHandle,
    recovery: Option<Recovery>,
    engine: engine::Engine,
}

impl std::fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addr", &self.local_addr)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl BoundServer {
    /// The address actually bound (with the port chosen if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for the serving program; commands sent before [`run`](Self::run) wait for it.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// What opening the checkpoint found, if there is one.
    pub fn recovery(&self) -> Option<Recovery> {
        self.recovery
    }

    /// Accepts connections and runs the engine until [`ServerHandle::shutdown`] (or the
    /// configured linger after every job finished). Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ServerError::Log`] if the checkpoint could not be written.
    pub async fn run(self) -> Result<(), ServerError> {
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(ServerError::Listen)?;
        log::info!(
            "colony server listening on {} ({}; the monitor page at /)",
            self.local_addr,
            self.serves
        );
        self.engine.run(listener).await
    }

    /// [`run`](Self::run) on a task of its own.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn spawn(self) -> tokio::task::JoinHandle<Result<(), ServerError>> {
        tokio::spawn(self.run())
    }
}
