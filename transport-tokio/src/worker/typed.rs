//! [`Worker`]: a pool worker program's entry point. Register typed [`TaskKind`]s, pick the slots,
//! connect, run.
//!
//! ```no_run
//! use colony_tokio::kind::TaskKind;
//! use colony_tokio::secret::Secret;
//! use colony_tokio::worker::{TaskError, Worker};
//!
//! let sum = TaskKind::<u64, u64>::new("sum", |n: u64| Ok::<_, TaskError>((1..=n).sum()));
//! let secret = Secret::from_file("data/secret")?;
//! Worker::builder()
//!     .kind(sum)
//!     .slots(4)
//!     .connect("tcp://127.0.0.1:7878", secret)?
//!     .run_blocking()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A pool worker serves every client and every job whose kind it declared, and carries on when a
//! job finishes ([`OnJobEnd::Continue`]); it stops on its [`ShutdownToken`], or with
//! [`WorkerError::ServerLost`] when the server stays away past its patience.
//!
//! Invariant: the worker runs only the functions registered here, by kind name; a task of a kind
//! it did not register cannot reach it (the server leases by declared kind), and would fail for
//! good if one did.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{
    OnJobEnd, ShutdownToken, TaskCtx, TaskError, WorkerConfig, WorkerError, WorkerExit,
    WorkerStats, run_worker,
};
use crate::executor::{ExecutorError, server_addr};
use crate::kind::{ErasedFn, TaskKind};
use crate::secret::Secret;
use crate::tls::ClientTls;

/// Entry point: see [`Worker::builder`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// A builder with no kinds, one slot per core, and a prefetch equal to the slots.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            kinds: Vec::new(),
            slots: None,
            prefetch: None,
            name: None,
            server_lost_after: None,
            tls: None,
        }
    }
}

/// Kinds and settings of a pool worker, before it connects.
#[derive(Clone)]
pub struct WorkerBuilder {
    kinds: Vec<(String, Option<ErasedFn>)>,
    slots: Option<u32>,
    prefetch: Option<u32>,
    name: Option<String>,
    server_lost_after: Option<Duration>,
    tls: Option<ClientTls>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field(
                "kinds",
                &self.kinds.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("slots", &self.slots)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Registers `kind`: the worker declares its name and runs its function. A kind made with
    /// [`TaskKind::declared`] (no function) is refused when the worker starts.
    #[must_use]
    pub fn kind<In, Out>(mut self, kind: TaskKind<In, Out>) -> Self {
        let name = kind.name().to_owned();
        let run = kind.erased();
        self.kinds.retain(|(k, _)| *k != name);
        self.kinds.push((name, run));
        self
    }

    /// Tasks run at once, each on a thread of its own (default: the number of cores).
    #[must_use]
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = Some(slots);
        self
    }

    /// Leases held beyond the running ones, so a fast worker never waits a round trip for work
    /// (default: as many as the slots).
    #[must_use]
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// The name the server shows (default `hostname-pid`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long to keep trying to reach a server that went away before giving up (default
    /// 10 s).
    #[must_use]
    pub fn server_lost_after(mut self, after: Duration) -> Self {
        self.server_lost_after = Some(after);
        self
    }

    /// What to trust for a `tls://` or `wss://` server URL (a CA file or a pinned certificate).
    #[must_use]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the server (`host:port`, `tcp://`, `tls://`, `ws://` or `wss://`, see
    /// [`server_addr`]) and the secret; nothing connects until
    /// [`ReadyWorker::run`].
    ///
    /// # Errors
    /// [`ExecutorError::Url`] if the URL names no server this worker can reach.
    pub fn connect(self, url: &str, secret: Secret) -> Result<ReadyWorker, ExecutorError> {
        let addr = server_addr(url)?;
        let mut config = WorkerConfig::new(addr, secret)
            .with_kinds(self.kinds.iter().map(|(k, _)| k.clone()))
            .with_on_job_end(OnJobEnd::Continue);
        if let Some(slots) = self.slots {
            config = config.with_slots(slots).with_prefetch(slots);
        }
        if let Some(prefetch) = self.prefetch {
            config = config.with_prefetch(prefetch);
        }
        if let Some(name) = self.name {
            config = config.with_name(name);
        }
        if let Some(after) = self.server_lost_after {
            config = config.with_server_lost_after(after);
        }
        if let Some(tls) = self.tls {
            config = config.with_tls(tls);
        }
        Ok(ReadyWorker {
            config,
            kinds: self.kinds,
        })
    }
}

/// A pool worker ready to run: see [`Worker`].
#[derive(Clone)]
pub struct ReadyWorker {
    config: WorkerConfig,
    kinds: Vec<(String, Option<ErasedFn>)>,
}

impl std::fmt::Debug for ReadyWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyWorker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs registered kinds by name.
struct Kinds(HashMap<String, ErasedFn>);

impl super::Handler for Kinds {
    fn run(&self, _ctx: &TaskCtx, kind: &str, input: &[u8]) -> Result<Vec<u8>, TaskError> {
        match self.0.get(kind) {
            Some(run) => run(input),
            None => Err(TaskError::permanent(format!(
                "this worker has no function for kind {kind:?}"
            ))),
        }
    }
}

impl ReadyWorker {
    /// The worker's settings, to adjust anything the builder does not offer.
    pub fn config_mut(&mut self) -> &mut WorkerConfig {
        &mut self.config
    }

    /// A token that stops the worker (it says goodbye; its leases go back to the server).
    pub fn shutdown_token(&self) -> ShutdownToken {
        self.config.shutdown_token()
    }

    /// The worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.config.stats()
    }

    fn handler(&self) -> Result<Kinds, WorkerError> {
        let mut table = HashMap::new();
        for (name, run) in &self.kinds {
            match run {
                Some(run) => {
                    table.insert(name.clone(), Arc::clone(run));
                }
                None => return Err(WorkerError::NoFunction { kind: name.clone() }),
            }
        }
        Ok(Kinds(table))
    }

    /// Runs until stopped by its token, or until the server is lost (see [`run_worker`]).
    ///
    /// # Errors
    /// As [`run_worker`]; [`WorkerError::NoFunction`] for a kind registered without a function.
    pub async fn run(self) -> Result<WorkerExit, WorkerError> {
        let handler = self.handler()?;
        run_worker(self.config, handler).await
    }

    /// [`run`](Self::run) on a runtime of its own, for programs that are not async.
    ///
    /// # Errors
    /// As [`run`](Self::run), and [`WorkerError::Runtime`].
    pub fn run_blocking(self) -> Result<WorkerExit, WorkerError> {
        let handler = self.handler()?;
        super::run_worker_blocking(self.config, handler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_bytes(&[3; 32]).unwrap()
    }

    #[test]
    fn builder_sets_the_config() {
        let sum = TaskKind::<u64, u64>::new("sum", |n: u64| Ok::<_, TaskError>(n));
        let ready = Worker::builder()
            .kind(sum.clone())
            .kind(sum)
            .slots(3)
            .name("w")
            .connect("tcp://127.0.0.1:9", secret())
            .unwrap();
        assert_eq!(ready.config.kinds(), ["sum"]);
        assert_eq!((ready.config.slots(), ready.config.prefetch()), (3, 3));
        assert_eq!(ready.config.on_job_end(), OnJobEnd::Continue);
        assert_eq!(ready.config.addr(), "127.0.0.1:9");
        assert!(Worker::builder().connect("http://x", secret()).is_err());
    }

    #[test]
    fn declared_kinds_cannot_be_run() {
        let ready = Worker::builder()
            .kind(TaskKind::<u8, u8>::declared("remote"))
            .connect("127.0.0.1:9", secret())
            .unwrap();
        let err = ready.run_blocking().unwrap_err();
        assert!(matches!(err, WorkerError::NoFunction { .. }), "{err}");
    }
}
