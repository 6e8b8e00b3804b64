//! [`BlockingExecutor`]: the executor for programs that are not async.
//!
//! It owns a small tokio runtime (one worker thread) on which the executor's connection task
//! runs; its methods block the calling thread. Handles are waited on with
//! [`TaskHandle::wait_timeout`] or [`TaskHandle::wait`]; `map` returns an [`Iterator`].
//!
//! Invariant: dropping it shuts the executor down and waits for the outstanding tasks (bounded by
//! the no-worker wait and the reconnect window), like leaving a Python `with` block; only then is
//! the runtime stopped.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    Executor, ExecutorBuilder, ExecutorError, MapIter, RetryPolicy, TaskHandle, TaskKind, Wait,
};
use crate::secret::Secret;

/// An [`Executor`] with blocking methods (see the module docs). Call it from plain threads,
/// never from inside an async runtime.
#[derive(Debug)]
pub struct BlockingExecutor {
    exec: Executor,
    runtime: tokio::runtime::Runtime,
    stopped: bool,
}

impl BlockingExecutor {
    /// Connects with the default settings ([`Executor::builder`]).
    ///
    /// # Errors
    /// As [`ExecutorBuilder::connect`], and [`ExecutorError::Runtime`].
    pub fn connect(url: impl Into<String>, secret: Secret) -> Result<Self, ExecutorError> {
        Executor::builder(url, secret).connect_blocking()
    }

    pub(super) fn from_builder(builder: ExecutorBuilder) -> Result<Self, ExecutorError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("colony-executor")
            .enable_all()
            .build()
            .map_err(|e| ExecutorError::Runtime(e.to_string()))?;
        let exec = runtime.block_on(builder.connect())?;
        Ok(BlockingExecutor {
            exec,
            runtime,
            stopped: false,
        })
    }

    /// The async executor inside, for code that mixes both.
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Submits one task; blocks while the executor has its maximum in flight.
    ///
    /// # Errors
    /// As [`Executor::submit`].
    pub fn submit<In, Out>(
        &self,
        kind: &TaskKind<In, Out>,
        input: &In,
    ) -> Result<TaskHandle<Out>, ExecutorError>
    where
        In: Serialize,
        Out: DeserializeOwned,
    {
        self.runtime().block_on(self.executor().submit(kind, input))
    }

    /// [`submit`](Self::submit) with its own retry policy.
    ///
    /// # Errors
    /// As [`Executor::submit`].
    pub fn submit_with<In, Out>(
        &self,
        kind: &TaskKind<In, Out>,
        input: &In,
        policy: RetryPolicy,
    ) -> Result<TaskHandle<Out>, ExecutorError>
    where
        In: Serialize,
        Out: DeserializeOwned,
    {
        self.runtime()
            .block_on(self.executor().submit_with(kind, input, policy))
    }

    /// Runs `kind` on every input; the results come in input order from the returned iterator
    /// (see [`Executor::map`]).
    pub fn map<In, Out, I>(
        &self,
        kind: &TaskKind<In, Out>,
        inputs: I,
    ) -> MapIter<In, Out, I::IntoIter>
    where
        In: Serialize,
        Out: DeserializeOwned,
        I: IntoIterator<Item = In>,
    {
        MapIter::new(
            self.executor().map(kind, inputs),
            self.runtime().handle().clone(),
        )
    }

    /// Shuts the executor down (see [`Executor::shutdown`]) and stops its runtime. With
    /// [`Wait::No`] the outstanding tasks are abandoned here (they still run on the server).
    pub fn shutdown(mut self, wait: Wait) {
        self.stop(wait);
    }

    fn stop(&mut self, wait: Wait) {
        if !std::mem::replace(&mut self.stopped, true) {
            self.runtime.block_on(self.exec.shutdown(wait));
        }
    }
}

impl Drop for BlockingExecutor {
    fn drop(&mut self) {
        self.stop(Wait::Yes);
    }
}
