//! The std worker: connects to a Colony server (TCP, TLS or WebSocket: see [`crate::net`]) and
//! runs its tasks, driving the core's worker state machine ([`colony_core::worker::Worker`]).
//!
//! ```no_run
//! use colony_tokio::secret::Secret;
//! use colony_tokio::worker::{TaskCtx, TaskError, WorkerConfig, WorkerExit, run_worker_blocking};
//!
//! let secret = Secret::from_hex(&std::env::var("COLONY_SECRET")?)?;
//! let config = WorkerConfig::new("127.0.0.1:7700", secret).with_kinds(["square"]);
//! let square = |_ctx: &TaskCtx, _kind: &str, input: &[u8]| -> Result<Vec<u8>, TaskError> {
//!     let n = u64::from_le_bytes(input.try_into().map_err(|_| TaskError::permanent("not a u64"))?);
//!     Ok((n * n).to_le_bytes().to_vec())
//! };
//! match run_worker_blocking(config, square)? {
//!     WorkerExit::JobFinished { job, .. } => println!("{job} finished"),
//!     other => println!("stopped: {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - **Tasks** run on `slots` dedicated OS threads ([`Execution::Threads`]), or inline on the
//!   connection's task for tiny bodies ([`Execution::Inline`]). A panic fails the task
//!   (retryable, with the panic message) and the worker carries on.
//! - **Credit.** The worker asks for `slots + prefetch` leases, so tasks are queued before a
//!   thread frees up and a fast worker never waits a round trip for work.
//! - **Reconnect.** A lost connection drops every lease (the server re-issues them) and the
//!   worker reconnects with backoff; only after `server_lost_after` without a server does it
//!   give up with [`WorkerError::ServerLost`]. A wrong secret or protocol version is fatal at
//!   once.
//! - **Exit.** [`WorkerExit::JobFinished`] when the server says the job ended (exit 0), and
//!   [`WorkerExit::Shutdown`] when stopped by its [`ShutdownToken`]; both say goodbye.
//! - **Counters** in [`WorkerStats`]: tasks done and failed, and a histogram of lease round
//!   trips (grant received to its answer's ack received).
//!
//! Invariants:
//! - The protocol is the core's: this module owns the socket, the clock, the threads and
//!   nothing else.
//! - A handler's panic never reaches the worker; an error or panic is always answered.

mod config;
mod handler;
mod pool;
mod session;
mod shutdown;
mod stats;
mod typed;

pub use colony_core::proto::{JobOutcome, Retry};
pub use colony_core::{Attempt, JobId, LeaseId, TaskId};
pub use config::{Execution, MAX_CREDIT, OnJobEnd, WorkerConfig};
pub use handler::{Handler, TaskCtx, TaskError};
pub use shutdown::ShutdownToken;
pub use stats::{Histogram, StatsSnapshot, WorkerStats};
pub use typed::{ReadyWorker, Worker, WorkerBuilder};

use std::sync::Arc;
use std::time::Duration;

use colony_core::proto::{ErrorCode, HandshakeError};
use colony_core::worker::{Backoff, Config, ConfigError, Worker as Machine};

use handler::Link;
use pool::Pool;
use session::{CAPACITY, Clock, Driver, Exec, OutBuf};

/// Why a worker stopped without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerExit {
    /// The server said the job ended (only with [`OnJobEnd::Exit`]).
    JobFinished {
        /// The job.
        job: JobId,
        /// How it ended.
        outcome: JobOutcome,
    },
    /// The worker was stopped by its [`ShutdownToken`].
    Shutdown,
}

/// Why a worker failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration breaks one of the core's rules (name and kinds too long, ...).
    #[error("worker configuration: {0}")]
    Config(#[from] ConfigError),
    /// No task kinds were configured.
    #[error("worker configuration: no task kinds to run")]
    NoKinds,
    /// A kind was registered without a function ([`TaskKind::declared`](crate::kind::TaskKind::declared)).
    #[error("worker configuration: kind {kind:?} has no function to run")]
    NoFunction {
        /// The kind.
        kind: String,
    },
    /// Slots or prefetch out of range.
    #[error(
        "worker configuration: {slots} slots and {prefetch} prefetch; slots must be at least 1 \
         and both together at most {MAX_CREDIT}"
    )]
    Credit {
        /// The configured slots.
        slots: u32,
        /// The configured prefetch.
        prefetch: u32,
    },
    /// No server answered for `server_lost_after`.
    #[error("lost the server at {addr}: no connection for {:.1} s (last error: {last_error})", waited.as_secs_f64())]
    ServerLost {
        /// The server's address.
        addr: String,
        /// How long the worker tried.
        waited: Duration,
        /// What the last attempt ran into.
        last_error: String,
    },
    /// The server does not know the shared secret, or speaks another protocol version.
    #[error("the server at {addr} failed the handshake: {source}")]
    Handshake {
        /// The server's address.
        addr: String,
        /// What failed.
        source: HandshakeError,
    },
    /// The server refused this worker (wrong secret, other protocol version).
    #[error("the server at {addr} refused this worker ({code:?}): {detail}")]
    Rejected {
        /// The server's address.
        addr: String,
        /// The server's reason.
        code: ErrorCode,
        /// The server's detail text.
        detail: String,
    },
    /// The server address is not a valid URL (see [`crate::net::Endpoint::parse`]).
    #[error("worker configuration: {0}")]
    Address(#[from] crate::net::EndpointError),
    /// Connecting failed in a way retrying cannot mend: TLS without settings, an untrusted or
    /// mismatched certificate.
    #[error("cannot reach the server at {addr}: {error}")]
    Connect {
        /// The server's address.
        addr: String,
        /// What failed.
        error: crate::net::ConnectError,
    },
    /// The OS's random source failed (handshake nonces need it).
    #[error("no random numbers for the handshake: {0}")]
    Random(String),
    /// The task threads could not be started.
    #[error("cannot start the task threads: {0}")]
    Threads(#[source] std::io::Error),
    /// [`run_worker_blocking`] could not build its runtime.
    #[error("cannot start the worker's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs a worker until the job ends, it is stopped, or the server is lost (see the module
/// docs). Tasks are run by `handler`.
///
/// # Errors
/// [`WorkerError::ServerLost`] if no server answered for the configured time; a
/// configuration error; [`WorkerError::Handshake`] or [`WorkerError::Rejected`] if the server
/// and the worker do not share the secret or the protocol version.
pub async fn run_worker<H: Handler>(
    config: WorkerConfig,
    handler: H,
) -> Result<WorkerExit, WorkerError> {
    if config.kinds().is_empty() {
        return Err(WorkerError::NoKinds);
    }
    let credit = config
        .slots()
        .checked_add(config.prefetch())
        .filter(|c| config.slots() > 0 && *c <= MAX_CREDIT)
        .ok_or(WorkerError::Credit {
            slots: config.slots(),
            prefetch: config.prefetch(),
        })?;
    let kinds: Vec<&str> = config.kinds().iter().map(String::as_str).collect();
    let (initial, max) = config.backoff();
    let core = Config::new(config.name(), config.secret().as_bytes(), &kinds)
        .with_platform(config::platform())
        .with_slots(credit)
        .with_backoff(Backoff::new(core_duration(initial), core_duration(max)))
        .with_max_frame(config.max_frame());
    let sm: Box<Machine<'_, CAPACITY>> = Box::new(Machine::new(core)?);
    let handler = Arc::new(handler);
    let link = Arc::new(Link {
        shutdown: config.shutdown_token(),
    });
    let exec = match config.execution() {
        Execution::Inline => Exec::Inline {
            handler,
            ctx: handler::TaskCtx::new(link),
        },
        Execution::Threads => {
            let owned: Arc<[String]> = config.kinds().into();
            let threads = usize::try_from(config.slots()).unwrap_or(1);
            Exec::Threads(
                Pool::start(threads, &handler, &owned, &link).map_err(WorkerError::Threads)?,
            )
        }
    };
    let driver = Driver {
        config: &config,
        sm,
        exec,
        stats: config.stats(),
        clock: Clock::new(),
        out: OutBuf::new(),
        granted_at: Default::default(),
        rtt: Vec::new(),
        acked: 0,
        pending: Vec::new(),
        exit: None,
        server_error: None,
    };
    driver.run().await
}

/// [`run_worker`] on a runtime of its own (one thread for the connection; tasks run on the
/// worker's threads as usual). For programs that are not async.
///
/// # Errors
/// As [`run_worker`], and [`WorkerError::Runtime`] if the runtime cannot be built.
pub fn run_worker_blocking<H: Handler>(
    config: WorkerConfig,
    handler: H,
) -> Result<WorkerExit, WorkerError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)?
        .block_on(run_worker(config, handler))
}

fn core_duration(d: Duration) -> colony_core::Duration {
    colony_core::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn config() -> WorkerConfig {
        WorkerConfig::new("127.0.0.1:9", Secret::from_bytes(&[1; 32]).unwrap())
    }

    fn noop(_: &TaskCtx, _: &str, _: &[u8]) -> Result<Vec<u8>, TaskError> {
        Ok(Vec::new())
    }

    #[test]
    fn bad_configurations_are_refused_before_connecting() {
        let err = run_worker_blocking(config(), noop).unwrap_err();
        assert!(matches!(err, WorkerError::NoKinds), "{err}");
        let err = run_worker_blocking(config().with_kinds(["k"]).with_slots(0), noop).unwrap_err();
        assert!(matches!(err, WorkerError::Credit { .. }), "{err}");
        let err = run_worker_blocking(
            config()
                .with_kinds(["k"])
                .with_slots(1)
                .with_prefetch(MAX_CREDIT),
            noop,
        )
        .unwrap_err();
        assert!(matches!(err, WorkerError::Credit { .. }), "{err}");
        let long = "k".repeat(2000);
        let err = run_worker_blocking(config().with_kinds([long]), noop).unwrap_err();
        assert!(matches!(err, WorkerError::Config(_)), "{err}");
    }

    #[test]
    fn errors_read_well() {
        let err = WorkerError::ServerLost {
            addr: "10.0.0.1:7700".into(),
            waited: Duration::from_millis(10_040),
            last_error: "cannot connect: connection refused".into(),
        };
        assert_eq!(
            err.to_string(),
            "lost the server at 10.0.0.1:7700: no connection for 10.0 s (last error: cannot \
             connect: connection refused)"
        );
    }
}
