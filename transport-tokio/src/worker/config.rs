//! [`WorkerConfig`]: where the worker connects, what it runs, how many at once, and how long it
//! keeps trying when the server is away.
//!
//! Invariants (checked when the worker starts, see [`WorkerError`](super::WorkerError)):
//! - at least one task kind and at least one slot;
//! - `slots + prefetch` (the credit the worker asks for) is at most [`MAX_CREDIT`];
//! - the name and kinds fit the handshake's frame limit (checked by the core's state machine).

use std::sync::Arc;
use std::time::Duration;

use colony_core::proto::{DEFAULT_MAX_FRAME, Platform};

use super::shutdown::ShutdownToken;
use super::stats::WorkerStats;
use crate::secret::Secret;
use crate::tls::ClientTls;

/// The most leases (running plus prefetched) one std worker holds at once.
pub const MAX_CREDIT: u32 = 4096;

/// Where tasks run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Execution {
    /// On a pool of `slots` dedicated OS threads, so CPU-bound bodies never block the runtime
    /// and the connection keeps heartbeating while tasks run. The default.
    #[default]
    Threads,
    /// One at a time on the connection's own task, as grants arrive: no thread hop at all.
    /// Only for tiny tasks (microseconds): a long task delays heartbeats and, past the server's
    /// patience, loses the connection. Use it with one slot and a generous prefetch.
    Inline,
}

/// What the worker does when the server says a job finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnJobEnd {
    /// Say goodbye and return [`WorkerExit::JobFinished`](super::WorkerExit::JobFinished): a
    /// for-loop worker serves one job. The default.
    #[default]
    Exit,
    /// Carry on for the next job: a pool worker.
    Continue,
}

/// How a std worker runs (see the module docs). Built with [`WorkerConfig::new`] and the
/// `with_*` methods.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// A URL of [`crate::net::Endpoint::parse`] (`host:port`, `tls://`, `ws://`, `wss://`),
    /// resolved again on every connection attempt.
    addr: String,
    /// What to trust for `tls://` and `wss://`.
    tls: Option<ClientTls>,
    secret: Secret,
    name: String,
    kinds: Vec<String>,
    slots: u32,
    /// Leases asked for beyond `slots`, so a fast worker never waits a round trip for work.
    prefetch: u32,
    execution: Execution,
    on_job_end: OnJobEnd,
    backoff_initial: Duration,
    backoff_max: Duration,
    server_lost_after: Duration,
    max_frame: u32,
    /// Shared with the caller, who may stop the worker with it.
    shutdown: ShutdownToken,
    /// Shared with the caller, who reads the counters.
    stats: Arc<WorkerStats>,
}

impl WorkerConfig {
    /// A worker for the server at `addr` that proves `secret`. `addr` is `host:port` (TCP) or a
    /// URL: `tls://host:port`, `ws://host:port/path`, `wss://host:port/path` (TLS needs
    /// [`WorkerConfig::with_tls`]).
    ///
    /// Defaults: named `hostname-pid`; no task kinds (add them with
    /// [`WorkerConfig::with_kinds`]); one slot per core
    /// ([`std::thread::available_parallelism`]); a prefetch equal to the slots; tasks on
    /// [`Execution::Threads`]; [`OnJobEnd::Exit`]; reconnect backoff from 50 ms doubling to 2 s;
    /// the server declared lost after 10 s without a connection; frames up to 1 MiB.
    pub fn new(addr: impl Into<String>, secret: Secret) -> Self {
        let slots = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(MAX_CREDIT / 2))
            .min(MAX_CREDIT / 2);
        WorkerConfig {
            addr: addr.into(),
            tls: None,
            secret,
            name: default_name(),
            kinds: Vec::new(),
            slots,
            prefetch: slots,
            execution: Execution::default(),
            on_job_end: OnJobEnd::default(),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            server_lost_after: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            shutdown: ShutdownToken::new(),
            stats: Arc::new(WorkerStats::new()),
        }
    }

    /// Sets what the worker trusts when `addr` is `tls://` or `wss://` (a CA file or a pinned
    /// certificate).
    #[must_use]
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the name the server shows for this worker.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the task kinds this worker runs; the handler is called with one of them.
    #[must_use]
    pub fn with_kinds<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.kinds = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// Sets how many tasks run at once (threads in the pool). The prefetch is left as it is.
    #[must_use]
    pub fn with_slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// Sets how many leases the worker asks for beyond its slots. Tiny tasks need a prefetch of
    /// a few hundred to keep the worker busy across the round trip to the server.
    #[must_use]
    pub fn with_prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets where tasks run.
    #[must_use]
    pub fn with_execution(mut self, execution: Execution) -> Self {
        self.execution = execution;
        self
    }

    /// Sets what the worker does when a job finishes.
    #[must_use]
    pub fn with_on_job_end(mut self, on_job_end: OnJobEnd) -> Self {
        self.on_job_end = on_job_end;
        self
    }

    /// Sets the reconnect backoff: `initial`, doubling after each failed attempt, at most `max`
    /// (plus a random jitter of up to `initial`).
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Sets how long the worker keeps trying to reach the server, from the moment it lost it
    /// (or started), before it gives up with
    /// [`WorkerError::ServerLost`](super::WorkerError::ServerLost).
    #[must_use]
    pub fn with_server_lost_after(mut self, after: Duration) -> Self {
        self.server_lost_after = after;
        self
    }

    /// Sets the largest frame payload the worker accepts (the server may agree on less).
    #[must_use]
    pub fn with_max_frame(mut self, max_frame: u32) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Uses `token` to stop the worker, instead of the config's own (see
    /// [`WorkerConfig::shutdown_token`]); one token may stop many workers.
    #[must_use]
    pub fn with_shutdown_token(mut self, token: ShutdownToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Counts into `stats` instead of the config's own (see [`WorkerConfig::stats`]); many
    /// workers may share one.
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<WorkerStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A handle that stops the worker, saying goodbye to the server: keep a clone before
    /// handing the config to [`run_worker`](super::run_worker).
    pub fn shutdown_token(&self) -> ShutdownToken {
        self.shutdown.clone()
    }

    /// The worker's counters: keep a clone before handing the config to
    /// [`run_worker`](super::run_worker).
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The TLS settings, if any.
    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task kinds.
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }

    /// Tasks run at once.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Leases asked for beyond the slots.
    pub fn prefetch(&self) -> u32 {
        self.prefetch
    }

    /// Where tasks run.
    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// What the worker does when a job finishes.
    pub fn on_job_end(&self) -> OnJobEnd {
        self.on_job_end
    }

    /// The first and the longest reconnect delay.
    pub fn backoff(&self) -> (Duration, Duration) {
        (self.backoff_initial, self.backoff_max)
    }

    /// How long the worker keeps trying to reach the server.
    pub fn server_lost_after(&self) -> Duration {
        self.server_lost_after
    }

    /// The largest frame payload accepted.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    pub(super) fn secret(&self) -> &Secret {
        &self.secret
    }
}

/// `hostname-pid`, or `worker-pid` where the host name cannot be read.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The platform this process runs on, as announced to the server.
pub(super) fn platform() -> Platform {
    if cfg!(target_os = "linux") {
        Platform::Linux
    } else if cfg!(target_os = "macos") {
        Platform::MacOs
    } else if cfg!(target_os = "windows") {
        Platform::Windows
    } else if cfg!(target_os = "ios") {
        Platform::Ios
    } else {
        Platform::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_bytes(&[7; 32]).unwrap()
    }

    #[test]
    fn defaults_follow_the_machine() {
        let c = WorkerConfig::new("127.0.0.1:1", secret());
        assert!(c.slots() >= 1);
        assert_eq!(c.prefetch(), c.slots());
        assert!(c.name().ends_with(&format!("-{}", std::process::id())));
        assert!(c.kinds().is_empty());
        assert_eq!(c.execution(), Execution::Threads);
        assert_eq!(c.on_job_end(), OnJobEnd::Exit);
        assert_eq!(c.server_lost_after(), Duration::from_secs(10));
    }

    #[test]
    fn builders_set_and_handles_are_shared() {
        let c = WorkerConfig::new("h:1", secret())
            .with_name("w")
            .with_kinds(["a", "b"])
            .with_slots(3)
            .with_prefetch(7)
            .with_execution(Execution::Inline);
        assert_eq!(c.kinds(), ["a", "b"]);
        assert_eq!((c.slots(), c.prefetch()), (3, 7));
        let token = c.shutdown_token();
        let clone = c.clone();
        token.shutdown();
        assert!(clone.shutdown_token().is_shutdown());
        assert!(Arc::ptr_eq(&c.stats(), &clone.stats()));
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = WorkerConfig::new("h:1", secret());
        let text = format!("{c:?}");
        assert!(!text.contains("0707"), "{text}");
    }
}
