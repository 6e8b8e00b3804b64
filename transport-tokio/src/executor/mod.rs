//! The executor: submit typed tasks to a standing Colony server and collect their results, in
//! the shape of Python's `concurrent.futures` (`submit`, `map`, done-callbacks, `shutdown`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use colony_tokio::executor::{Executor, Wait};
//! use colony_tokio::kind::TaskKind;
//! use colony_tokio::secret::Secret;
//!
//! let secret = Secret::from_file("data/secret")?;
//! let sum = TaskKind::<u64, u64>::declared("sum"); // a worker program registers its function
//! let exec = Executor::connect("tcp://127.0.0.1:7878", secret).await?;
//! let one = exec.submit(&sum, &20_000_000).await?;
//! println!("{}", one.await?);
//! let mut results = exec.map(&sum, vec![10u64; 20]);
//! while let Some(result) = results.next().await {
//!     println!("{}", result?);
//! }
//! exec.shutdown(Wait::Yes).await;
//! # Ok(())
//! # }
//! ```
//!
//! [`BlockingExecutor`] offers the same for programs that are not async: handles are waited on
//! with [`TaskHandle::wait_timeout`] and `map` returns an [`Iterator`].
//!
//! How it behaves:
//! - **Jobs.** Tasks of one kind go to one open job on the server, named
//!   `{job name}/{kind}` (the job name defaults to a fresh unique one; set it with
//!   [`ExecutorBuilder::job_name`]). The server logs every input and result, so its data folder
//!   brings the job back after a restart.
//! - **In flight.** At most [`ExecutorBuilder::max_in_flight`] tasks are submitted and not yet
//!   settled; `submit` waits for room. A `map` keeps at most its window in flight and yields
//!   results in input order (a [`futures_core::Stream`], or call [`MapStream::next`]).
//! - **No worker.** A task whose kind no connected worker declares stays queued on the server;
//!   if none comes within [`ExecutorBuilder::no_worker_wait`], its handle gives
//!   [`ExecutorError::NoWorker`] (the task stays queued, its result is dropped if it comes).
//! - **Server lost.** A lost connection is retried with backoff for
//!   [`ExecutorBuilder::reconnect_window`]; the executor then re-attaches its jobs by name and
//!   collects the results recorded meanwhile, so a server restarted on its data folder loses no
//!   task. Past the window every waiting handle gives [`ExecutorError::ServerLost`]: nothing
//!   waits for ever. The results stay on the server: an executor with the same
//!   [`job_name`](ExecutorBuilder::job_name), in any process, collects them with
//!   [`Executor::recorded`].
//! - **Retries.** [`RetryPolicy`]: attempts per task on the server (a worker that dies or hangs
//!   costs its task an attempt), then optional resubmissions from here with backoff.
//! - **Shutdown.** [`Executor::shutdown`] stops taking tasks, lets the outstanding ones finish and
//!   says goodbye (the server then closes the executor's jobs); with [`Wait::Yes`] it returns once
//!   that is done. Dropping the last [`Executor`] clone does the same without waiting, in the
//!   background; dropping a [`BlockingExecutor`] waits, like a Python `with` block.
//!
//! Invariants: every submitted task's handle gets exactly one outcome; no call blocks for longer
//! than the configured waits (no worker, reconnect window) plus the task's own run time.

mod blocking;
mod error;
mod handle;
mod map;
mod recorded;
mod session;

pub use blocking::BlockingExecutor;
pub use error::ExecutorError;
pub use handle::TaskHandle;
pub use map::{MapIter, MapStream};
pub use recorded::Recorded;

pub use crate::kind::TaskKind;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colony_core::proto::DEFAULT_MAX_FRAME;
use colony_core::sched::Inputs;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, oneshot};

use handle::Slot;
use map::MapShared;
use session::{Cmd, Config, Session, State, Submission, TargetSpec};

use crate::secret::Secret;
use crate::server::DEFAULT_PORT;
use crate::tls::ClientTls;

/// How a task is retried: attempts on the server, then resubmissions from the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u16,
    resubmits: u16,
    backoff: Duration,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts on the server, no resubmission.
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            resubmits: 0,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Runs each task up to `attempts` times on the server (the job's `max_attempts`): a task
    /// error, a panic or a worker that hangs past its lease each cost one; a worker that
    /// disconnects costs none. At least 1.
    pub fn attempts(attempts: u16) -> Self {
        RetryPolicy {
            attempts: attempts.max(1),
            ..RetryPolicy::default()
        }
    }

    /// After the server gave up on a task, submits it again up to `times` more times, waiting
    /// `backoff` before the first, doubling up to `max_backoff`.
    #[must_use]
    pub fn resubmit(mut self, times: u16, backoff: Duration, max_backoff: Duration) -> Self {
        self.resubmits = times;
        self.backoff = backoff;
        self.max_backoff = max_backoff.max(backoff);
        self
    }

    /// Attempts per task on the server.
    pub fn attempts_per_task(&self) -> u16 {
        self.attempts
    }

    fn resubmit_plan(&self) -> (u16, Duration, Duration) {
        (self.resubmits, self.backoff, self.max_backoff)
    }
}

/// Whether [`Executor::shutdown`] waits for the outstanding tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Return once every outstanding task has its outcome and the executor said goodbye.
    Yes,
    /// Return at once; the outstanding tasks finish in the background.
    No,
}

/// Settings of an executor; from [`Executor::builder`].
#[derive(Clone, Debug)]
pub struct ExecutorBuilder {
    url: String,
    secret: Secret,
    name: Option<String>,
    job_name: Option<String>,
    max_in_flight: u32,
    map_window: u32,
    retry: RetryPolicy,
    no_worker_wait: Option<Duration>,
    reconnect_window: Duration,
    connect_timeout: Duration,
    server_silence: Duration,
    max_frame: u32,
    tls: Option<ClientTls>,
}

impl ExecutorBuilder {
    /// What to trust for a `tls://` or `wss://` server URL (a CA file or a pinned certificate).
    #[must_use]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The name the server shows for this client (default `hostname-pid`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The base of this executor's job names (default: the client name and a random suffix).
    /// Give a fixed one to collect a job's results by name from another process.
    #[must_use]
    pub fn job_name(mut self, name: impl Into<String>) -> Self {
        self.job_name = Some(name.into());
        self
    }

    /// Tasks submitted and not yet settled, at most (default 65,536; keep it within the server's
    /// per-client limit).
    #[must_use]
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Tasks one `map` keeps in flight (default 16,384).
    #[must_use]
    pub fn map_window(mut self, n: u32) -> Self {
        self.map_window = n.max(1);
        self
    }

    /// The retry policy of `submit` and `map` (default [`RetryPolicy::default`]).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long a task waits for a worker of its kind to connect before its handle gives
    /// [`ExecutorError::NoWorker`] (default 60 s; `None`: wait for ever).
    #[must_use]
    pub fn no_worker_wait(mut self, wait: Option<Duration>) -> Self {
        self.no_worker_wait = wait;
        self
    }

    /// How long to keep trying to reach the server after losing it (default 30 s), and to reach
    /// it at all in [`connect`](Self::connect).
    #[must_use]
    pub fn reconnect_window(mut self, window: Duration) -> Self {
        self.reconnect_window = window;
        self
    }

    /// How long one connection attempt (connect and handshake) may take (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server may stay silent (it echoes heartbeats) before the connection counts
    /// as lost (default 10 s, and at least three heartbeat intervals).
    #[must_use]
    pub fn server_silence(mut self, silence: Duration) -> Self {
        self.server_silence = silence;
        self
    }

    /// The largest frame accepted (default 1 MiB); the server may agree on less. Inputs and
    /// outputs must fit in it.
    #[must_use]
    pub fn max_frame(mut self, bytes: u32) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Connects (retrying within the reconnect window) and starts the executor's connection
    /// task on the current tokio runtime.
    ///
    /// # Errors
    /// [`ExecutorError::Url`]; [`ExecutorError::Handshake`] or [`ExecutorError::Refused`] if the
    /// secret is wrong; [`ExecutorError::ServerLost`] if no server answered within the window.
    pub async fn connect(self) -> Result<Executor, ExecutorError> {
        let addr = server_addr(&self.url)?;
        let name = self.name.unwrap_or_else(default_name);
        let job_base = match self.job_name {
            Some(job) => job,
            None => format!("{name}-{:08x}", random_u32()),
        };
        let config = Arc::new(Config {
            addr,
            secret: self.secret,
            name,
            job_base: job_base.clone(),
            no_worker_wait: self.no_worker_wait,
            reconnect_window: self.reconnect_window,
            connect_timeout: self.connect_timeout,
            server_silence: self.server_silence,
            max_frame: self.max_frame,
            tls: self.tls,
        });
        let (first, _) = session::connect_within(&config, self.reconnect_window).await?;
        let permits = Arc::new(Semaphore::new(self.max_in_flight as usize));
        let state = Arc::new(State {
            permits,
            fatal: Mutex::new(None),
            max_input: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Session::new(Arc::clone(&config), Arc::clone(&state), rx);
        tokio::spawn(session.run(first));
        Ok(Executor {
            shared: Arc::new(Shared {
                cmds: tx,
                config,
                closed: AtomicBool::new(false),
                state,
                job_base,
                retry: self.retry,
                map_window: self.map_window,
            }),
        })
    }

    /// [`connect`](Self::connect) for blocking code: the executor runs on a runtime of its own.
    ///
    /// # Errors
    /// As [`connect`](Self::connect), and [`ExecutorError::Runtime`].
    pub fn connect_blocking(self) -> Result<BlockingExecutor, ExecutorError> {
        BlockingExecutor::from_builder(self)
    }
}

/// What every clone of an [`Executor`] shares.
#[derive(Debug)]
struct Shared {
    cmds: mpsc::UnboundedSender<Cmd>,
    /// The connection settings, for side connections ([`Executor::recorded`]).
    config: Arc<Config>,
    /// `shutdown` was called: no more submissions.
    closed: AtomicBool,
    state: Arc<State>,
    job_base: String,
    retry: RetryPolicy,
    map_window: u32,
}

/// A connection to a Colony server for submitting tasks (see the module docs). Cheap to clone;
/// the executor stops (without waiting) when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Executor {
    shared: Arc<Shared>,
}

impl Executor {
    /// Settings for an executor of the server at `url` (`tcp://host:port`, or `host:port`), proving
    /// `secret`.
    pub fn builder(url: impl Into<String>, secret: Secret) -> ExecutorBuilder {
        ExecutorBuilder {
            url: url.into(),
            secret,
            name: None,
            job_name: None,
            max_in_flight: 65_536,
            map_window: 16_384,
            retry: RetryPolicy::default(),
            no_worker_wait: Some(Duration::from_secs(60)),
            reconnect_window: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            server_silence: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            tls: None,
        }
    }

    /// Connects with the default settings ([`Executor::builder`]).
    ///
    /// # Errors
    /// As [`ExecutorBuilder::connect`].
    pub async fn connect(
        url: impl Into<String>,
        secret: Secret,
    ) -> Result<Executor, ExecutorError> {
        Executor::builder(url, secret).connect().await
    }

    /// The base of this executor's job names: a kind's tasks go to job `{base}/{kind}`.
    pub fn job_name(&self) -> &str {
        &self.shared.job_base
    }

    /// The error for a submission the connection task can no longer take.
    fn stopped(&self) -> ExecutorError {
        self.shared.state.fatal().unwrap_or(ExecutorError::Shutdown)
    }

    /// Whether submissions are refused.
    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.shared.cmds.is_closed()
    }

    fn max_input(&self) -> usize {
        match self.shared.state.max_input.load(Ordering::Relaxed) {
            0 => DEFAULT_MAX_FRAME as usize - session::FRAME_RESERVE,
            n => n,
        }
    }

    /// Submits one task of `kind` with `input`; waits while
    /// [`max_in_flight`](ExecutorBuilder::max_in_flight) tasks are outstanding.
    ///
    /// # Errors
    /// [`ExecutorError::Input`] if the input does not encode or is larger than a frame;
    /// [`ExecutorError::Shutdown`] after [`shutdown`](Self::shutdown); the reason the executor
    /// stopped ([`ExecutorError::ServerLost`], say).
    pub async fn submit<In, Out>(
        &self,
        kind: &TaskKind<In, Out>,
        input: &In,
    ) -> Result<TaskHandle<Out>, ExecutorError>
    where
        In: Serialize,
        Out: DeserializeOwned,
    {
        self.submit_with(kind, input, self.shared.retry).await
    }

    /// [`submit`](Self::submit) with its own retry policy.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub async fn submit_with<In, Out>(
        &self,
        kind: &TaskKind<In, Out>,
        input: &In,
        policy: RetryPolicy,
    ) -> Result<TaskHandle<Out>, ExecutorError>
    where
        In: Serialize,
        Out: DeserializeOwned,
    {
        let name = kind.shared_name();
        let bytes = postcard::to_allocvec(input).map_err(|e| ExecutorError::Input {
            kind: name.to_string(),
            error: e.to_string(),
        })?;
        let max = self.max_input();
        if bytes.len() > max {
            return Err(ExecutorError::Input {
                kind: name.to_string(),
                error: format!(
                    "its input of {} bytes is more than the {max} a frame holds",
                    bytes.len()
                ),
            });
        }
        if self.is_closed() {
            return Err(self.stopped());
        }
        self.shared
            .state
            .permits
            .acquire()
            .await
            .map_err(|_| self.stopped())?
            .forget();
        let slot = Arc::new(Slot::default());
        let mut inputs = Inputs::with_capacity(1, bytes.len());
        inputs.push(&bytes);
        let submission = Submission {
            kind: Arc::clone(&name),
            policy,
            inputs: Arc::new(inputs),
            target: TargetSpec::One(Arc::clone(&slot)),
        };
        if self.shared.cmds.send(Cmd::Submit(submission)).is_err() {
            self.shared.state.permits.add_permits(1);
            return Err(self.stopped());
        }
        Ok(TaskHandle::new(slot, name))
    }

    /// Runs `kind` on every input and returns the results in input order, as a stream that keeps
    /// at most [`map_window`](ExecutorBuilder::map_window) tasks in flight. Inputs are taken from
    /// the iterator only as the window has room.
    pub fn map<In, Out, I>(
        &self,
        kind: &TaskKind<In, Out>,
        inputs: I,
    ) -> MapStream<In, Out, I::IntoIter>
    where
        In: Serialize,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
    {
        self.map_with(kind, inputs, self.shared.retry, self.shared.map_window)
    }

    /// [`map`](Self::map) with its own retry policy and window.
    pub fn map_with<In, Out, I>(
        &self,
        kind: &TaskKind<In, Out>,
        inputs: I,
        policy: RetryPolicy,
        window: u32,
    ) -> MapStream<In, Out, I::IntoIter>
    where
        In: Serialize,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
    {
        MapStream::new(
            self.clone(),
            kind.shared_name(),
            policy,
            inputs.into_iter(),
            window,
        )
    }

    /// Hands a map's batch to the connection task (its permits are taken).
    fn send_map(
        &self,
        kind: &Arc<str>,
        policy: RetryPolicy,
        inputs: Inputs,
        shared: &Arc<MapShared>,
        first: u64,
    ) -> Result<(), ExecutorError> {
        if self.is_closed() {
            return Err(self.stopped());
        }
        let submission = Submission {
            kind: Arc::clone(kind),
            policy,
            inputs: Arc::new(inputs),
            target: TargetSpec::Map {
                shared: Arc::clone(shared),
                first,
            },
        };
        self.shared
            .cmds
            .send(Cmd::Submit(submission))
            .map_err(|_| self.stopped())
    }

    /// Stops taking tasks; the outstanding ones finish (or fail: no worker, server lost), then the
    /// executor says goodbye and the server closes its jobs. With [`Wait::Yes`] this returns once
    /// that is done; with [`Wait::No`] at once. Later submissions fail with
    /// [`ExecutorError::Shutdown`].
    pub async fn shutdown(&self, wait: Wait) {
        self.shared.closed.store(true, Ordering::Release);
        let (done, finished) = oneshot::channel();
        let sent = self
            .shared
            .cmds
            .send(Cmd::Shutdown { done: Some(done) })
            .is_ok();
        if sent && wait == Wait::Yes {
            let _ = finished.await;
        }
    }
}

/// The address to connect to for a server URL: the `host:port` of `tcp://host:port`,
/// `colony://host:port` or `host:port` (the port defaults to [`DEFAULT_PORT`]), or a
/// `tls://`, `ws://` or `wss://` URL kept whole (see [`crate::net::Endpoint`]; TLS needs
/// [`ExecutorBuilder::tls`]).
///
/// # Errors
/// [`ExecutorError::Url`] for another scheme, or no host.
pub fn server_addr(url: &str) -> Result<String, ExecutorError> {
    let bad = |reason: &str| ExecutorError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = match url.split_once("://") {
        Some(("tcp" | "colony", rest)) => rest,
        Some(("tls" | "ws" | "wss", _)) => {
            return crate::net::Endpoint::parse(url)
                .map(|_| url.to_owned())
                .map_err(|e| bad(&e.to_string()));
        }
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "scheme {scheme:?} is not supported here (use tcp://, tls://, ws:// or wss://)"
            )));
        }
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(bad("expected host:port"));
    }
    let has_port = match rest.rsplit_once(':') {
        Some((host, port)) => {
            if host.is_empty() {
                return Err(bad("no host"));
            }
            // An IPv6 literal without a port ("[::1]") has its last colon inside the brackets.
            (host.ends_with(']') || !host.starts_with('[')) && port.parse::<u16>().is_ok()
        }
        None => false,
    };
    Ok(if has_port {
        rest.to_owned()
    } else {
        format!("{rest}:{DEFAULT_PORT}")
    })
}

/// `hostname-pid`.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "client".to_owned());
    format!("{host}-{}", std::process::id())
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        // Only the job name's uniqueness suffers; mix in the time instead.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return nanos ^ std::process::id();
    }
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_and_port() {
        assert_eq!(server_addr("tcp://10.0.0.1:7000").unwrap(), "10.0.0.1:7000");
        assert_eq!(server_addr("colony://h:1/").unwrap(), "h:1");
        assert_eq!(server_addr("localhost").unwrap(), "localhost:7878");
        assert_eq!(server_addr("[::1]:9").unwrap(), "[::1]:9");
        assert_eq!(server_addr("[::1]").unwrap(), "[::1]:7878");
        assert!(server_addr("http://h:1").is_err());
        assert!(server_addr("tcp://").is_err());
        assert!(server_addr(":80").is_err());
        assert!(server_addr("h:1/path").is_err());
        assert_eq!(server_addr("wss://h:1/c").unwrap(), "wss://h:1/c");
        assert!(server_addr("tls://h:1/path").is_err());
    }

    #[test]
    fn retry_policies() {
        let p = RetryPolicy::attempts(0);
        assert_eq!(p.attempts_per_task(), 1);
        let p = RetryPolicy::attempts(5).resubmit(
            2,
            Duration::from_millis(10),
            Duration::from_millis(5),
        );
        assert_eq!(
            p.resubmit_plan(),
            (2, Duration::from_millis(10), Duration::from_millis(10))
        );
    }
}
