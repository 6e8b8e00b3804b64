//! What runs a task: the [`Handler`] trait, the [`TaskCtx`] it is given, and [`TaskError`].
//!
//! Invariants:
//! - A handler's panic never escapes: [`run_task`] catches it and turns it into a retryable
//!   failure carrying the panic message.
//! - A [`TaskCtx`] is made once per thread and refilled for each task: running a task allocates
//!   nothing beyond what the handler itself does.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use colony_core::proto::Retry;
use colony_core::{Attempt, JobId, LeaseId, TaskId};

use super::shutdown::ShutdownToken;

/// Runs tasks: given the task's context, its kind (one of the configured kinds) and its input
/// bytes, returns its output bytes or a [`TaskError`]. Called from many threads at once.
///
/// Closures `Fn(&TaskCtx, &str, &[u8]) -> Result<Vec<u8>, TaskError>` implement it.
pub trait Handler: Send + Sync + 'static {
    /// Runs one task.
    ///
    /// # Errors
    /// A [`TaskError`], reported to the server as the task's failure.
    fn run(&self, ctx: &TaskCtx, kind: &str, input: &[u8]) -> Result<Vec<u8>, TaskError>;
}

impl<F> Handler for F
where
    F: Fn(&TaskCtx, &str, &[u8]) -> Result<Vec<u8>, TaskError> + Send + Sync + 'static,
{
    fn run(&self, ctx: &TaskCtx, kind: &str, input: &[u8]) -> Result<Vec<u8>, TaskError> {
        self(ctx, kind, input)
    }
}

/// Which task a handler runs, and a link back to the worker running it.
pub struct TaskCtx {
    job: JobId,
    task: TaskId,
    attempt: Attempt,
    lease: LeaseId,
    link: Arc<Link>,
}

/// What every task of one worker shares: today the shutdown token; later the connection's
/// outgoing side (for calls to the serving process).
#[derive(Debug)]
pub(super) struct Link {
    pub(super) shutdown: ShutdownToken,
}

impl TaskCtx {
    pub(super) fn new(link: Arc<Link>) -> Self {
        TaskCtx {
            job: JobId(0),
            task: TaskId(0),
            attempt: Attempt(0),
            lease: LeaseId(0),
            link,
        }
    }

    pub(super) fn set(&mut self, job: JobId, task: TaskId, attempt: Attempt, lease: LeaseId) {
        self.job = job;
        self.task = task;
        self.attempt = attempt;
        self.lease = lease;
    }

    /// The task's job.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The task, as its index in the job.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// Which attempt this is (0 for the first).
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The lease the task runs under.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Whether the worker is shutting down: a long task may stop early, its answer is dropped
    /// anyway and the server runs it again elsewhere.
    pub fn is_shutting_down(&self) -> bool {
        self.link.shutdown.is_shutdown()
    }
}

impl fmt::Debug for TaskCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCtx")
            .field("job", &self.job)
            .field("task", &self.task)
            .field("attempt", &self.attempt)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// A task failed: whether another attempt may succeed, and why.
///
/// Any [`std::error::Error`] converts into a retryable `TaskError` with `?`, which is why
/// `TaskError` itself does not implement that trait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskError {
    retry: Retry,
    message: String,
}

impl TaskError {
    /// A failure another attempt may not repeat (a transient error).
    pub fn retryable(message: impl Into<String>) -> Self {
        TaskError {
            retry: Retry::Retryable,
            message: message.into(),
        }
    }

    /// A failure every attempt would repeat (bad input): the task is not tried again.
    pub fn permanent(message: impl Into<String>) -> Self {
        TaskError {
            retry: Retry::Permanent,
            message: message.into(),
        }
    }

    /// Whether another attempt may succeed.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// The error text sent to the server.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.retry {
            Retry::Retryable => "retryable",
            Retry::Permanent => "permanent",
        };
        write!(f, "task failed ({kind}): {}", self.message)
    }
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(err: E) -> Self {
        TaskError::retryable(err.to_string())
    }
}

/// How one task ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Done(Vec<u8>),
    Failed(TaskError),
    Panicked(TaskError),
}

/// Runs one task through `handler`, catching a panic.
pub(super) fn run_task<H: Handler + ?Sized>(
    handler: &H,
    ctx: &TaskCtx,
    kind: &str,
    input: &[u8],
) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| handler.run(ctx, kind, input))) {
        Ok(Ok(output)) => Outcome::Done(output),
        Ok(Err(err)) => Outcome::Failed(err),
        Err(payload) => Outcome::Panicked(TaskError::retryable(format!(
            "task panicked: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic without a message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TaskCtx {
        TaskCtx::new(Arc::new(Link {
            shutdown: ShutdownToken::new(),
        }))
    }

    #[test]
    fn closures_are_handlers_and_errors_convert() {
        let h = |ctx: &TaskCtx, kind: &str, input: &[u8]| -> Result<Vec<u8>, TaskError> {
            match kind {
                "len" => Ok(vec![u8::try_from(input.len())?]),
                "task" => Ok(ctx.task().get().to_le_bytes().to_vec()),
                _ => Err(TaskError::permanent(format!("no kind {kind}"))),
            }
        };
        let mut c = ctx();
        c.set(JobId(1), TaskId(9), Attempt(2), LeaseId(3));
        assert!(matches!(run_task(&h, &c, "len", b"abc"), Outcome::Done(v) if v == [3]));
        assert!(matches!(run_task(&h, &c, "task", b""), Outcome::Done(v) if v == [9, 0, 0, 0]));
        let big = vec![0; 300];
        let Outcome::Failed(err) = run_task(&h, &c, "len", &big) else {
            panic!()
        };
        assert_eq!(err.retry(), Retry::Retryable);
        let Outcome::Failed(err) = run_task(&h, &c, "nope", b"") else {
            panic!()
        };
        assert_eq!(err.to_string(), "task failed (permanent): no kind nope");
        assert_eq!(
            (c.job(), c.attempt(), c.lease()),
            (JobId(1), Attempt(2), LeaseId(3))
        );
        assert!(!c.is_shutting_down());
    }

    #[test]
    fn panics_become_retryable_failures_with_their_message() {
        let h = |_: &TaskCtx, _: &str, input: &[u8]| -> Result<Vec<u8>, TaskError> {
            match input {
                b"str" => panic!("static text"),
                b"fmt" => panic!("formatted {}", 42),
                _ => std::panic::panic_any(7u32),
            }
        };
        let c = ctx();
        for (input, text) in [
            (&b"str"[..], "task panicked: static text"),
            (b"fmt", "task panicked: formatted 42"),
            (b"any", "task panicked: (a panic without a message)"),
        ] {
            let Outcome::Panicked(err) = run_task(&h, &c, "k", input) else {
                panic!()
            };
            assert_eq!(err.message(), text);
            assert_eq!(err.retry(), Retry::Retryable);
        }
    }
}
