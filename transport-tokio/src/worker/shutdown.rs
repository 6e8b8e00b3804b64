//! [`ShutdownToken`]: stops a running worker from outside.
//!
//! Invariants:
//! - Once [`ShutdownToken::shutdown`] was called, it stays shut down; every clone sees it.
//! - A waiter never misses the request: it registers before it checks the flag.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Stops the workers it was given to: a connected worker says goodbye to the server (which
/// re-issues its leases at once) and [`run_worker`](super::run_worker) returns
/// [`WorkerExit::Shutdown`](super::WorkerExit::Shutdown). Cheap to clone; all clones are one.
#[derive(Clone, Default)]
pub struct ShutdownToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    requested: AtomicBool,
    notify: Notify,
}

impl ShutdownToken {
    /// A token not yet shut down.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every worker holding this token to stop. Returns at once; idempotent.
    pub fn shutdown(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`ShutdownToken::shutdown`] was called.
    pub fn is_shutdown(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Completes once [`ShutdownToken::shutdown`] is called (at once if it was).
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_shutdown() {
                return;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for ShutdownToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownToken")
            .field("shutdown", &self.is_shutdown())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_and_late_waiters_return_at_once() {
        let token = ShutdownToken::new();
        let waiter = tokio::spawn({
            let token = token.clone();
            async move { token.wait().await }
        });
        assert!(!token.is_shutdown());
        token.clone().shutdown();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(token.is_shutdown());
        token.wait().await;
    }
}
