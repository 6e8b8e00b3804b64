//! Synchronous task dispatch: the [`TaskHandler`] trait that microcontroller workers implement.
//!
//! A handler runs one task to the end, writing its output into a buffer the caller lends, and
//! returns the output's length or a [`TaskError`]. [`Worker::run`](super::Worker::run) calls it
//! and turns the outcome into a `Complete` or `Fail` frame; it is sugar over the event path.

use core::fmt;

use crate::proto::Retry;

/// Runs tasks synchronously.
///
/// Closures `FnMut(usize, &[u8], &mut [u8]) -> Result<usize, TaskError<'static>>` implement it.
pub trait TaskHandler {
    /// Runs one task of kind `kind` (an index into the configured kinds) on `input`, writes its
    /// output to the start of `output`, and returns the output's length.
    ///
    /// # Errors
    /// A [`TaskError`] whose text may borrow from the handler or from `output`.
    fn run<'a>(
        &'a mut self,
        kind: usize,
        input: &[u8],
        output: &'a mut [u8],
    ) -> Result<usize, TaskError<'a>>;
}

impl<F> TaskHandler for F
where
    F: FnMut(usize, &[u8], &mut [u8]) -> Result<usize, TaskError<'static>>,
{
    fn run<'a>(
        &'a mut self,
        kind: usize,
        input: &[u8],
        output: &'a mut [u8],
    ) -> Result<usize, TaskError<'a>> {
        self(kind, input, output)
    }
}

/// A task failed: whether another attempt may succeed, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TaskError<'a> {
    retry: Retry,
    message: &'a str,
}

impl<'a> TaskError<'a> {
    /// A failure another attempt may not repeat (a transient error).
    pub const fn retryable(message: &'a str) -> Self {
        TaskError {
            retry: Retry::Retryable,
            message,
        }
    }

    /// A failure every attempt would repeat (bad input).
    pub const fn permanent(message: &'a str) -> Self {
        TaskError {
            retry: Retry::Permanent,
            message,
        }
    }

    /// Whether another attempt may succeed.
    pub const fn retry(&self) -> Retry {
        self.retry
    }

    /// The error text sent to the server.
    pub const fn message(&self) -> &'a str {
        self.message
    }
}

impl fmt::Display for TaskError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.retry {
            Retry::Retryable => "retryable",
            Retry::Permanent => "permanent",
        };
        write!(f, "task failed ({kind}): {}", self.message)
    }
}

impl core::error::Error for TaskError<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    struct Upper;

    impl TaskHandler for Upper {
        fn run<'a>(
            &'a mut self,
            _kind: usize,
            input: &[u8],
            output: &'a mut [u8],
        ) -> Result<usize, TaskError<'a>> {
            let out = output
                .get_mut(..input.len())
                .ok_or(TaskError::permanent("too long"))?;
            for (o, i) in out.iter_mut().zip(input) {
                *o = i.to_ascii_uppercase();
            }
            Ok(input.len())
        }
    }

    #[test]
    fn struct_and_closure_handlers() {
        let mut out = [0u8; 4];
        assert_eq!(Upper.run(0, b"abc", &mut out), Ok(3));
        assert_eq!(&out[..3], b"ABC");
        assert_eq!(
            Upper.run(0, b"abcdef", &mut out),
            Err(TaskError::permanent("too long"))
        );

        let mut calls = 0;
        let mut closure = |kind: usize, input: &[u8], _out: &mut [u8]| {
            calls += 1;
            if kind == 0 {
                Ok(input.len())
            } else {
                Err(TaskError::retryable("no such kind"))
            }
        };
        assert_eq!(closure.run(0, b"xy", &mut out), Ok(2));
        assert_eq!(
            closure.run(1, b"xy", &mut out).map_err(|e| e.retry()),
            Err(Retry::Retryable)
        );
        assert_eq!(calls, 2);
    }

    #[test]
    fn error_text_may_borrow_the_output_buffer() {
        struct Writes;
        impl TaskHandler for Writes {
            fn run<'a>(
                &'a mut self,
                _kind: usize,
                _input: &[u8],
                output: &'a mut [u8],
            ) -> Result<usize, TaskError<'a>> {
                let msg = b"code 7";
                let dst = output
                    .get_mut(..msg.len())
                    .ok_or(TaskError::permanent("buffer"))?;
                dst.copy_from_slice(msg);
                let text = core::str::from_utf8(dst).unwrap_or("?");
                Err(TaskError::retryable(text))
            }
        }
        let mut out = [0u8; 16];
        let mut handler = Writes;
        let err = handler.run(0, b"", &mut out).unwrap_err();
        assert_eq!(err.message(), "code 7");
        assert_eq!(err.to_string(), "task failed (retryable): code 7");
    }
}
