//! [`MapStream`] and [`MapIter`]: the results of `map`, in input order, with a bounded window of
//! tasks in flight.
//!
//! The stream (a [`futures_core::Stream`]) pulls inputs from the caller's iterator only as the
//! window has room, submits them in batches, and yields results strictly in input order (a result that arrives early waits in a
//! ring until those before it have been yielded).
//!
//! Invariants:
//! - At most `window` tasks of one map are submitted and not yet yielded; each holds one of the
//!   executor's in-flight permits, given back when its result arrives.
//! - Results are yielded in input order, each exactly once; the stream ends after the last input's
//!   result.
//! - Dropping the stream stops submitting; results still on their way are dropped when they
//!   arrive.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use colony_core::sched::Inputs;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, TryAcquireError};

use super::error::ExecutorError;
use super::handle::Raw;
use super::{Executor, RetryPolicy};

#[derive(Default)]
struct Ring {
    /// Outcomes of tasks `next..`, `None` where not arrived yet.
    slots: VecDeque<Option<Raw>>,
    next: u64,
    waker: Option<Waker>,
    closed: bool,
}

/// Where the connection task delivers a map's outcomes.
#[derive(Default)]
pub(super) struct MapShared {
    ring: Mutex<Ring>,
}

impl std::fmt::Debug for MapShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapShared").finish_non_exhaustive()
    }
}

impl MapShared {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the outcome of input `index`.
    pub(super) fn deliver(&self, index: u64, outcome: Raw) {
        let mut ring = self.lock();
        if ring.closed || index < ring.next {
            return;
        }
        let Ok(offset) = usize::try_from(index - ring.next) else {
            return;
        };
        while ring.slots.len() <= offset {
            ring.slots.push_back(None);
        }
        if let Some(slot) = ring.slots.get_mut(offset)
            && slot.is_none()
        {
            *slot = Some(outcome);
        }
        if offset == 0
            && let Some(waker) = ring.waker.take()
        {
            drop(ring);
            waker.wake();
        }
    }

    fn poll_front(&self, cx: &mut Context<'_>) -> Poll<Raw> {
        let mut ring = self.lock();
        if let Some(Some(_)) = ring.slots.front()
            && let Some(Some(outcome)) = ring.slots.pop_front()
        {
            ring.next += 1;
            return Poll::Ready(outcome);
        }
        ring.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn close(&self) {
        let mut ring = self.lock();
        ring.closed = true;
        ring.slots.clear();
        ring.waker = None;
    }
}

/// Waiting for an in-flight permit when the map has nothing in flight.
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The results of [`Executor::map`], in input order (see the module docs): a
/// [`futures_core::Stream`], or call [`next`](Self::next).
pub struct MapStream<In, Out, I> {
    exec: Executor,
    kind: Arc<str>,
    policy: RetryPolicy,
    inputs: I,
    window: u64,
    submitted: u64,
    yielded: u64,
    exhausted: bool,
    shared: Arc<MapShared>,
    scratch: Vec<u8>,
    /// A permit being waited for, and one obtained that way and not yet used.
    acquiring: Option<Acquiring>,
    spare: usize,
    /// Why no more inputs can be submitted (the executor stopped).
    error: Option<ExecutorError>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out, I> std::fmt::Debug for MapStream<In, Out, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStream")
            .field("kind", &self.kind)
            .field("window", &self.window)
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

impl<In, Out, I> MapStream<In, Out, I>
where
    In: Serialize,
    Out: DeserializeOwned,
    I: Iterator<Item = In>,
{
    pub(super) fn new(
        exec: Executor,
        kind: Arc<str>,
        policy: RetryPolicy,
        inputs: I,
        window: u32,
    ) -> Self {
        MapStream {
            exec,
            kind,
            policy,
            inputs,
            window: u64::from(window.max(1)),
            submitted: 0,
            yielded: 0,
            exhausted: false,
            shared: Arc::new(MapShared::default()),
            scratch: Vec::new(),
            acquiring: None,
            spare: 0,
            error: None,
            _types: PhantomData,
        }
    }

    /// Submits inputs while the window has room and the executor has permits. Returns `true`
    /// when it started waiting for a permit (nothing is in flight and none is free): poll
    /// `acquiring` then.
    fn fill(&mut self) -> Result<bool, ExecutorError> {
        let permits = Arc::clone(&self.exec.shared.state.permits);
        while !self.exhausted {
            let in_flight = self.submitted - self.yielded;
            let room = usize::try_from(self.window - in_flight).unwrap_or(usize::MAX);
            if room == 0 {
                return Ok(false);
            }
            let mut granted = std::mem::take(&mut self.spare).min(room);
            let wanted = permits.available_permits().min(room - granted);
            if wanted > 0 {
                match permits.try_acquire_many(u32::try_from(wanted).unwrap_or(u32::MAX)) {
                    Ok(permit) => {
                        permit.forget();
                        granted += wanted;
                    }
                    Err(TryAcquireError::NoPermits) => {}
                    Err(TryAcquireError::Closed) => return Err(self.exec.stopped()),
                }
            }
            if granted == 0 {
                if in_flight == 0 {
                    self.acquiring = Some(Box::pin(Arc::clone(&permits).acquire_owned()));
                    return Ok(true);
                }
                return Ok(false);
            }
            let sent = self.submit_up_to(granted)?;
            if granted > sent {
                permits.add_permits(granted - sent);
            }
        }
        Ok(false)
    }

    /// Takes up to `granted` inputs and submits them; returns how many were sent (inputs that
    /// cannot be encoded take their place among the results with their error, and no permit).
    fn submit_up_to(&mut self, granted: usize) -> Result<usize, ExecutorError> {
        let max_input = self.exec.max_input();
        let mut run = Inputs::with_capacity(granted, 16 * granted);
        let mut run_first = self.submitted;
        let mut sent = 0usize;
        let mut taken = 0usize;
        while taken < granted {
            let Some(input) = self.inputs.next() else {
                self.exhausted = true;
                break;
            };
            let index = self.submitted;
            self.submitted += 1;
            taken += 1;
            self.scratch.clear();
            let encoded = postcard::to_extend(&input, std::mem::take(&mut self.scratch));
            let error = match encoded {
                Ok(bytes) => {
                    let len = bytes.len();
                    if len <= max_input {
                        if run.is_empty() {
                            run_first = index;
                        }
                        run.push(&bytes);
                    }
                    self.scratch = bytes;
                    (len > max_input).then(|| {
                        format!(
                            "its input of {len} bytes is more than the {max_input} a frame holds"
                        )
                    })
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = error {
                if !run.is_empty() {
                    sent += run.len();
                    let run = std::mem::take(&mut run);
                    self.exec
                        .send_map(&self.kind, self.policy, run, &self.shared, run_first)?;
                }
                let kind = self.kind.to_string();
                self.shared
                    .deliver(index, Err(ExecutorError::Input { kind, error }));
            }
        }
        if !run.is_empty() {
            sent += run.len();
            self.exec
                .send_map(&self.kind, self.policy, run, &self.shared, run_first)?;
        }
        Ok(sent)
    }

    /// One step of the stream: tops the window up, then takes the next result in order.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Out, ExecutorError>>> {
        loop {
            if let Some(acquiring) = self.acquiring.as_mut() {
                match acquiring.as_mut().poll(cx) {
                    Poll::Ready(Ok(permit)) => {
                        permit.forget();
                        self.acquiring = None;
                        self.spare += 1;
                    }
                    Poll::Ready(Err(_)) => {
                        self.acquiring = None;
                        self.error = Some(self.exec.stopped());
                    }
                    Poll::Pending => break,
                }
            }
            if self.error.is_some() {
                break;
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
        }
        if self.yielded == self.submitted {
            if let Some(e) = self.error.take() {
                // Report it once, in place of the inputs that could not be submitted.
                self.exhausted = true;
                if self.inputs.next().is_some() {
                    self.submitted += 1;
                    self.yielded += 1;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if self.exhausted {
                return Poll::Ready(None);
            }
            // Waiting for a permit.
            return Poll::Pending;
        }
        let raw = std::task::ready!(self.shared.poll_front(cx));
        self.yielded += 1;
        Poll::Ready(Some(raw.and_then(|bytes| {
            postcard::from_bytes(&bytes).map_err(|e| ExecutorError::Decode {
                kind: self.kind.to_string(),
                error: e.to_string(),
            })
        })))
    }

    /// The next result, in input order; `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Out, ExecutorError>> {
        poll_fn(|cx| self.poll_step(cx)).await
    }

    /// Tasks submitted whose results were not yet yielded.
    pub fn in_flight(&self) -> u64 {
        self.submitted - self.yielded
    }
}

impl<In, Out, I> futures_core::Stream for MapStream<In, Out, I>
where
    In: Serialize,
    Out: DeserializeOwned,
    I: Iterator<Item = In> + Unpin,
{
    type Item = Result<Out, ExecutorError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_step(cx)
    }
}

impl<In, Out, I> Drop for MapStream<In, Out, I> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// [`MapStream`] for blocking code: an [`Iterator`] of results in input order (from
/// [`BlockingExecutor::map`](super::BlockingExecutor::map)).
pub struct MapIter<In, Out, I> {
    stream: MapStream<In, Out, I>,
    runtime: tokio::runtime::Handle,
}

impl<In, Out, I> std::fmt::Debug for MapIter<In, Out, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapIter")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl<In, Out, I> MapIter<In, Out, I>
where
    In: Serialize,
    Out: DeserializeOwned,
    I: Iterator<Item = In>,
{
    pub(super) fn new(stream: MapStream<In, Out, I>, runtime: tokio::runtime::Handle) -> Self {
        MapIter { stream, runtime }
    }

    /// The next result, waiting at most `timeout` for it: `Some(Err(Timeout))` if it did not
    /// come in time (it is not lost: the next call waits for it again).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<Out, ExecutorError>> {
        let stream = &mut self.stream;
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, stream.next()).await })
            .unwrap_or(Some(Err(ExecutorError::Timeout)))
    }
}

impl<In, Out, I> Iterator for MapIter<In, Out, I>
where
    In: Serialize,
    Out: DeserializeOwned,
    I: Iterator<Item = In>,
{
    type Item = Result<Out, ExecutorError>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = &mut self.stream;
        self.runtime.block_on(stream.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ring_yields_in_order() {
        let shared = Arc::new(MapShared::default());
        shared.deliver(2, Ok(vec![2]));
        shared.deliver(0, Ok(vec![0]));
        shared.deliver(0, Ok(vec![9])); // duplicate, ignored
        let first = poll_fn(|cx| shared.poll_front(cx)).await;
        assert_eq!(first, Ok(vec![0]));
        let s = Arc::clone(&shared);
        let waiter = tokio::spawn(async move { poll_fn(|cx| s.poll_front(cx)).await });
        tokio::task::yield_now().await;
        shared.deliver(1, Err(ExecutorError::Timeout));
        assert_eq!(waiter.await.unwrap(), Err(ExecutorError::Timeout));
        assert_eq!(poll_fn(|cx| shared.poll_front(cx)).await, Ok(vec![2]));
        shared.close();
        shared.deliver(3, Ok(vec![3]));
        assert!(shared.lock().slots.is_empty());
    }
}
