//! [`TaskKind`]: a named, typed task that workers run and task clients submit.
//!
//! A kind is a name plus serde input and output types; its values travel as postcard bytes. A
//! worker program registers kinds built with [`TaskKind::new`] (the name and the function); a
//! task client needs only the name and the types, so it may use the same value or one made with
//! [`TaskKind::declared`]. Nothing but a kind's name crosses the wire: a worker runs only the
//! functions it registered.
//!
//! ```
//! use colony_tokio::kind::TaskKind;
//! use colony_tokio::worker::TaskError;
//!
//! // 1 + 2 + … + n
//! let sum = TaskKind::<u64, u64>::new("sum", |n: u64| Ok::<_, TaskError>(n * (n + 1) / 2));
//! let output = sum.run_bytes(&postcard::to_allocvec(&10u64).unwrap()).unwrap();
//! assert_eq!(postcard::from_bytes::<u64>(&output).unwrap(), 55);
//! assert_eq!(sum.name(), "sum");
//! ```
//!
//! Invariants: a kind's function never sees bytes that did not decode as its input type (they
//! fail the task for good, naming the kind), and a panic inside it is caught by the worker like
//! any other task's.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::worker::TaskError;

/// The type-erased function of a kind: input bytes to output bytes.
pub(crate) type ErasedFn = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, TaskError> + Send + Sync>;

/// A named task with serde input `In` and output `Out`. See the module docs.
pub struct TaskKind<In, Out> {
    name: Arc<str>,
    run: Option<ErasedFn>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Clone for TaskKind<In, Out> {
    fn clone(&self) -> Self {
        TaskKind {
            name: Arc::clone(&self.name),
            run: self.run.clone(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> fmt::Debug for TaskKind<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskKind")
            .field("name", &self.name)
            .field("runnable", &self.run.is_some())
            .finish()
    }
}

impl<In, Out> TaskKind<In, Out>
where
    In: Serialize + DeserializeOwned + 'static,
    Out: Serialize + DeserializeOwned + 'static,
{
    /// A kind named `name` that runs `f`. An error `f` returns fails the task (see
    /// [`TaskError`] for retryable and permanent failures); any `std::error::Error` converts.
    pub fn new<F, E>(name: &str, f: F) -> Self
    where
        F: Fn(In) -> Result<Out, E> + Send + Sync + 'static,
        E: Into<TaskError>,
    {
        let label: Arc<str> = Arc::from(name);
        let kind = Arc::clone(&label);
        let run: ErasedFn = Arc::new(move |bytes: &[u8]| {
            let input: In = postcard::from_bytes(bytes).map_err(|e| {
                TaskError::permanent(format!(
                    "the input of a {kind:?} task does not decode as {}: {e}",
                    std::any::type_name::<In>()
                ))
            })?;
            let output = f(input).map_err(Into::into)?;
            postcard::to_allocvec(&output).map_err(|e| {
                TaskError::permanent(format!(
                    "the output of a {kind:?} task does not encode: {e}"
                ))
            })
        });
        TaskKind {
            name: label,
            run: Some(run),
            _types: PhantomData,
        }
    }

    /// A kind known by name and types only, for a task client that submits it but does not run
    /// it.
    pub fn declared(name: &str) -> Self {
        TaskKind {
            name: Arc::from(name),
            run: None,
            _types: PhantomData,
        }
    }

    /// Runs the kind's function on postcard-encoded input, as a worker does.
    ///
    /// # Errors
    /// The function's error; a permanent [`TaskError`] if the input does not decode, the output
    /// does not encode, or the kind was only [`declared`](Self::declared).
    pub fn run_bytes(&self, input: &[u8]) -> Result<Vec<u8>, TaskError> {
        match &self.run {
            Some(run) => run(input),
            None => Err(TaskError::permanent(format!(
                "kind {:?} has no function in this process",
                self.name
            ))),
        }
    }
}

impl<In, Out> TaskKind<In, Out> {
    /// The kind's name, as workers declare it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// The type-erased function, if this kind has one.
    pub(crate) fn erased(&self) -> Option<ErasedFn> {
        self.run.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::proto::Retry;

    #[test]
    fn runs_typed_functions_on_bytes() {
        let split = TaskKind::<String, Vec<String>>::new("split", |s: String| {
            if s.is_empty() {
                Err(TaskError::permanent("empty"))
            } else {
                Ok(s.split(' ').map(str::to_owned).collect())
            }
        });
        let out = split
            .run_bytes(&postcard::to_allocvec("a b").unwrap())
            .unwrap();
        assert_eq!(
            postcard::from_bytes::<Vec<String>>(&out).unwrap(),
            ["a", "b"]
        );
        let err = split
            .run_bytes(&postcard::to_allocvec("").unwrap())
            .unwrap_err();
        assert_eq!(err.message(), "empty");
        let err = split.run_bytes(&[0xFF, 0xFF]).unwrap_err();
        assert_eq!(err.retry(), Retry::Permanent);
        assert!(err.message().contains("\"split\""), "{err}");
        let clone = split.clone();
        assert_eq!(clone.name(), "split");
        assert!(format!("{clone:?}").contains("runnable: true"));
    }

    #[test]
    fn declared_kinds_do_not_run() {
        let k = TaskKind::<u8, u8>::declared("remote");
        assert!(k.erased().is_none());
        assert_eq!(k.run_bytes(&[1]).unwrap_err().retry(), Retry::Permanent);
    }

    #[test]
    fn std_errors_convert() {
        let parse = TaskKind::<String, u32>::new("parse", |s: String| s.parse::<u32>());
        let err = parse
            .run_bytes(&postcard::to_allocvec("x").unwrap())
            .unwrap_err();
        assert_eq!(err.retry(), Retry::Retryable);
    }
}
