//! The static table of task kinds a board runs: a name and a plain function per kind.
//!
//! Invariants:
//! - A kind's index in the table is its index in the worker's [`Config`](colony_core::worker::Config):
//!   the names announced to the server are exactly the table's names, in order
//!   ([`Worker::new`](crate::Worker::new) checks it, [`kind_names`] builds the list).
//! - A task function runs to the end on the caller's stack; it writes its output to the start of
//!   the buffer it is lent and returns the output's length. It may not keep anything between
//!   calls, so a task is a pure function of its input.

use colony_core::worker::{TaskError, TaskHandler};

/// A task function: input bytes in, output written to the start of the buffer, its length out.
///
/// # Errors
/// A [`TaskError`] with a static text: retryable (a transient fault) or permanent (bad input).
pub type TaskFn = fn(input: &[u8], output: &mut [u8]) -> Result<usize, TaskError<'static>>;

/// One kind of task the board runs.
#[derive(Clone, Copy)]
pub struct TaskKind {
    name: &'static str,
    run: TaskFn,
}

impl TaskKind {
    /// The kind called `name`, run by `run`. A name may carry a version after a `#`
    /// (`"crc32c#1"`); the server refuses a worker whose version differs from a running job's.
    pub const fn new(name: &'static str, run: TaskFn) -> Self {
        TaskKind { name, run }
    }

    /// The kind's name, as announced to the server.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the task function on `input`, writing to `output`.
    ///
    /// # Errors
    /// Whatever the task function returns.
    pub fn run(&self, input: &[u8], output: &mut [u8]) -> Result<usize, TaskError<'static>> {
        (self.run)(input, output)
    }
}

impl core::fmt::Debug for TaskKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TaskKind")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for TaskKind {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "TaskKind {{ name: {} }}", self.name)
    }
}

/// The names of a table of kinds, in order, for [`Config::new`](colony_core::worker::Config::new).
/// Usable in a `static`:
///
/// ```
/// use colony_embassy::{kind_names, TaskKind};
/// use colony_core::worker::TaskError;
///
/// fn echo(input: &[u8], output: &mut [u8]) -> Result<usize, TaskError<'static>> {
///     let out = output.get_mut(..input.len()).ok_or(TaskError::permanent("input too long"))?;
///     out.copy_from_slice(input);
///     Ok(input.len())
/// }
///
/// static KINDS: [TaskKind; 1] = [TaskKind::new("echo", echo)];
/// static NAMES: [&str; 1] = kind_names(&KINDS);
/// assert_eq!(NAMES, ["echo"]);
/// ```
pub const fn kind_names<const N: usize>(kinds: &[TaskKind; N]) -> [&'static str; N] {
    let mut names = [""; N];
    let mut i = 0;
    while i < N {
        // `i < N` bounds both arrays; const fns cannot use iterators.
        #[allow(clippy::indexing_slicing)]
        {
            names[i] = kinds[i].name;
        }
        i += 1;
    }
    names
}

/// A table of kinds as the core's [`TaskHandler`]: dispatches on the kind index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kinds<'k>(pub(crate) &'k [TaskKind]);

impl TaskHandler for Kinds<'_> {
    fn run<'a>(
        &'a mut self,
        kind: usize,
        input: &[u8],
        output: &'a mut [u8],
    ) -> Result<usize, TaskError<'a>> {
        // The core checked the index against the announced kinds, which are this table.
        let kind = self
            .0
            .get(kind)
            .ok_or(TaskError::permanent("unknown task kind"))?;
        kind.run(input, output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(input: &[u8], output: &mut [u8]) -> Result<usize, TaskError<'static>> {
        let bytes = (input.len() as u32).to_le_bytes();
        output
            .get_mut(..4)
            .ok_or(TaskError::permanent("short"))?
            .copy_from_slice(&bytes);
        Ok(4)
    }

    fn refuse(_: &[u8], _: &mut [u8]) -> Result<usize, TaskError<'static>> {
        Err(TaskError::retryable("busy"))
    }

    static TABLE: [TaskKind; 2] = [TaskKind::new("len", len), TaskKind::new("refuse#2", refuse)];

    #[test]
    fn names_follow_the_table() {
        static NAMES: [&str; 2] = kind_names(&TABLE);
        assert_eq!(NAMES, ["len", "refuse#2"]);
    }

    #[test]
    fn dispatch_by_index() {
        let mut kinds = Kinds(&TABLE);
        let mut out = [0u8; 8];
        assert_eq!(kinds.run(0, b"abc", &mut out), Ok(4));
        assert_eq!(out[..4], 3u32.to_le_bytes());
        assert_eq!(
            kinds.run(1, b"", &mut out),
            Err(TaskError::retryable("busy"))
        );
        assert_eq!(
            kinds.run(2, b"", &mut out),
            Err(TaskError::permanent("unknown task kind"))
        );
    }
}
