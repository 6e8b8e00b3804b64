//! [`TaskHandle`]: one submitted task's result, to await, to wait on with a timeout, or to hand
//! to a callback.
//!
//! The executor's connection task fills a [`Slot`] once; the handle reads it from any thread, in
//! async code (`.await`) or blocking code ([`TaskHandle::wait_timeout`]).
//!
//! Invariants:
//! - A slot is completed at most once; later completions are ignored.
//! - A done-callback runs exactly once: on the connection task when the result arrives, or at
//!   once on the caller's thread if it already has.
//! - Output bytes are decoded on the reader's side (the caller, or the callback), never on the
//!   connection task's hot path for awaited handles.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::error::ExecutorError;

/// A task's raw outcome: its output bytes or why there are none.
pub(super) type Raw = Result<Vec<u8>, ExecutorError>;

type Callback = Box<dyn FnOnce(Raw) + Send>;

#[derive(Default)]
struct SlotState {
    outcome: Option<Raw>,
    taken: bool,
    waker: Option<Waker>,
    callback: Option<Callback>,
}

/// Where a task's outcome lands. See the module docs.
#[derive(Default)]
pub(super) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the outcome and wakes whoever waits (or runs the callback).
    pub(super) fn complete(&self, outcome: Raw) {
        let mut state = self.lock();
        if state.outcome.is_some() || state.taken {
            return;
        }
        if let Some(callback) = state.callback.take() {
            state.taken = true;
            drop(state);
            callback(outcome);
            return;
        }
        state.outcome = Some(outcome);
        let waker = state.waker.take();
        drop(state);
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether an outcome arrived (taken or not).
    fn is_done(&self) -> bool {
        let state = self.lock();
        state.outcome.is_some() || state.taken
    }
}

/// A submitted task's result (see the module docs). Await it, or call
/// [`wait_timeout`](Self::wait_timeout) from blocking code; it gives its result once.
///
/// Dropping a handle does not cancel the task: it runs, and its result is dropped.
#[must_use = "a task handle does nothing unless its result is awaited or waited for"]
pub struct TaskHandle<Out> {
    slot: Arc<Slot>,
    kind: Arc<str>,
    _out: PhantomData<fn() -> Out>,
}

impl<Out> fmt::Debug for TaskHandle<Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("kind", &self.kind)
            .field("done", &self.slot.is_done())
            .finish()
    }
}

impl<Out: DeserializeOwned> TaskHandle<Out> {
    pub(super) fn new(slot: Arc<Slot>, kind: Arc<str>) -> Self {
        TaskHandle {
            slot,
            kind,
            _out: PhantomData,
        }
    }

    fn decode(kind: &str, raw: Raw) -> Result<Out, ExecutorError> {
        let bytes = raw?;
        postcard::from_bytes(&bytes).map_err(|e| ExecutorError::Decode {
            kind: kind.to_owned(),
            error: e.to_string(),
        })
    }

    /// The task's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Whether the result is there (waiting for it would not block).
    pub fn is_done(&self) -> bool {
        self.slot.is_done()
    }

    /// Blocks until the result is there or `timeout` passed. Not for async code (it blocks the
    /// thread): await the handle there.
    ///
    /// # Errors
    /// [`ExecutorError::Timeout`] if `timeout` passed (the task goes on; wait again later); the
    /// task's own error; [`ExecutorError::Taken`] if the result was taken already.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Out, ExecutorError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.slot.lock();
        loop {
            if let Some(raw) = state.outcome.take() {
                state.taken = true;
                drop(state);
                return Self::decode(&self.kind, raw);
            }
            if state.taken {
                return Err(ExecutorError::Taken);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ExecutorError::Timeout);
            }
            state = self
                .slot
                .ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Blocks until the result is there. It always comes: the executor turns a lost server or a
    /// missing worker into an error after its configured waits.
    ///
    /// # Errors
    /// The task's own error.
    pub fn wait(mut self) -> Result<Out, ExecutorError> {
        loop {
            match self.wait_timeout(Duration::from_secs(3600)) {
                Err(ExecutorError::Timeout) => {}
                other => return other,
            }
        }
    }
}

impl<Out: DeserializeOwned + 'static> TaskHandle<Out> {
    /// Calls `callback` with the result once it is there: at once on this thread if it is
    /// already, otherwise on the executor's connection task (keep the callback short; hand
    /// heavy work to another thread).
    pub fn on_done<F>(self, callback: F)
    where
        F: FnOnce(Result<Out, ExecutorError>) + Send + 'static,
    {
        let kind = Arc::clone(&self.kind);
        let mut state = self.slot.lock();
        if let Some(raw) = state.outcome.take() {
            state.taken = true;
            drop(state);
            callback(Self::decode(&kind, raw));
            return;
        }
        if state.taken {
            drop(state);
            callback(Err(ExecutorError::Taken));
            return;
        }
        state.callback = Some(Box::new(move |raw| callback(Self::decode(&kind, raw))));
    }
}

impl<Out: DeserializeOwned> Future for TaskHandle<Out> {
    type Output = Result<Out, ExecutorError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut state = this.slot.lock();
        if let Some(raw) = state.outcome.take() {
            state.taken = true;
            drop(state);
            return Poll::Ready(Self::decode(&this.kind, raw));
        }
        if state.taken {
            return Poll::Ready(Err(ExecutorError::Taken));
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> (Arc<Slot>, TaskHandle<u32>) {
        let slot = Arc::new(Slot::default());
        (Arc::clone(&slot), TaskHandle::new(slot, Arc::from("k")))
    }

    #[test]
    fn wait_timeout_then_result_then_taken() {
        let (slot, mut h) = handle();
        assert_eq!(
            h.wait_timeout(Duration::from_millis(1)),
            Err(ExecutorError::Timeout)
        );
        assert!(!h.is_done());
        let s = Arc::clone(&slot);
        let t = std::thread::spawn(move || s.complete(Ok(postcard::to_allocvec(&7u32).unwrap())));
        assert_eq!(h.wait_timeout(Duration::from_secs(20)), Ok(7));
        t.join().unwrap();
        assert!(h.is_done());
        assert_eq!(h.wait_timeout(Duration::ZERO), Err(ExecutorError::Taken));
        slot.complete(Ok(vec![1])); // ignored
    }

    #[test]
    fn callbacks_run_once_before_or_after() {
        let (slot, h) = handle();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        h.on_done(move |r| tx.send(r).unwrap());
        slot.complete(Err(ExecutorError::Shutdown));
        assert_eq!(rx.recv().unwrap(), Err(ExecutorError::Shutdown));
        let (slot, h) = handle();
        slot.complete(Ok(vec![0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]));
        h.on_done(move |r| tx2.send(r).unwrap());
        assert!(matches!(
            rx.recv().unwrap(),
            Err(ExecutorError::Decode { .. })
        ));
    }

    #[tokio::test]
    async fn handles_can_be_awaited() {
        let (slot, h) = handle();
        let waiter = tokio::spawn(h);
        tokio::task::yield_now().await;
        slot.complete(Ok(postcard::to_allocvec(&9u32).unwrap()));
        assert_eq!(waiter.await.unwrap(), Ok(9));
    }
}
