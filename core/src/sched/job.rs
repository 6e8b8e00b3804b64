//! One job's tasks: states, inputs, outputs, errors and its ready frontier.
//!
//! Memory per task, beyond its input and output bytes: 4 bytes of state, 8 for the input's end
//! offset, 4 for the output's slot, plus the frontier's 8 bytes (only with edges) and 4 bytes
//! while queued (only with edges or after a retry). An edge-less job queues by cursor.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use crate::dag::Frontier;
use crate::id::{Attempt, JobId, TaskId};

/// The inputs of a job's tasks, in task order, packed in one buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    data: Vec<u8>,
    ends: Vec<u64>,
}

impl Inputs {
    /// No inputs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `tasks` inputs of `bytes` bytes in all.
    pub fn with_capacity(tasks: usize, bytes: usize) -> Self {
        Inputs {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(tasks),
        }
    }

    /// Appends the next task's input.
    pub fn push(&mut self, input: &[u8]) {
        self.data.extend_from_slice(input);
        self.ends.push(self.data.len() as u64);
    }

    /// Number of inputs.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Input `i`, if it exists.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i.checked_sub(1) {
            Some(p) => *self.ends.get(p)? as usize,
            None => 0,
        };
        self.data.get(start..end)
    }

    /// Iterates over the inputs in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.data.capacity() + 8 * self.ends.capacity()
    }
}

impl<B: AsRef<[u8]>> FromIterator<B> for Inputs {
    fn from_iter<I: IntoIterator<Item = B>>(iter: I) -> Self {
        let mut inputs = Inputs::new();
        for b in iter {
            inputs.push(b.as_ref());
        }
        inputs
    }
}

/// Outputs stored as they arrive (in any order), each findable by task.
#[derive(Clone, Debug, Default)]
pub(super) struct Outputs {
    /// Per task: index into `ends` of its output, or `NONE`.
    slot_of: Vec<u32>,
    data: Vec<u8>,
    ends: Vec<u64>,
}

const NONE: u32 = u32::MAX;

impl Outputs {
    pub(super) fn resize(&mut self, tasks: usize) {
        self.slot_of.resize(tasks, NONE);
    }

    pub(super) fn set(&mut self, task: TaskId, output: &[u8]) {
        let Some(slot) = self.slot_of.get_mut(task.index()) else {
            return;
        };
        if *slot != NONE {
            return;
        }
        *slot = self.ends.len() as u32;
        self.data.extend_from_slice(output);
        self.ends.push(self.data.len() as u64);
    }

    pub(super) fn get(&self, task: TaskId) -> Option<&[u8]> {
        let slot = *self.slot_of.get(task.index())?;
        if slot == NONE {
            return None;
        }
        let end = *self.ends.get(slot as usize)? as usize;
        let start = match (slot as usize).checked_sub(1) {
            Some(p) => *self.ends.get(p)? as usize,
            None => 0,
        };
        self.data.get(start..end)
    }

    pub(super) fn heap_bytes(&self) -> usize {
        4 * self.slot_of.capacity() + self.data.capacity() + 8 * self.ends.capacity()
    }
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TaskState {
    /// Waiting for a predecessor, or queued to be leased.
    Pending,
    /// Leased to a worker.
    Leased,
    /// Completed; its record is written but not yet durable.
    Recording,
    /// Completed and durable.
    Done,
    /// Failed for good; its record is written but not yet durable.
    Failing,
    /// Failed for good and durable.
    Failed,
}

impl TaskState {
    /// Done or failed, durable or not: the task will never be leased again.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            TaskState::Recording | TaskState::Done | TaskState::Failing | TaskState::Failed
        )
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct TaskSlot {
    pub(super) state: TaskState,
    /// Failed attempts (task errors and expired leases), towards the job's `max_attempts`.
    pub(super) failures: u8,
    pub(super) attempt: Attempt,
}

impl TaskSlot {
    const NEW: TaskSlot = TaskSlot {
        state: TaskState::Pending,
        failures: 0,
        attempt: Attempt(0),
    };
}

/// A job as the scheduler holds it.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) id: JobId,
    pub(super) name: String,
    pub(super) kind: u16,
    pub(super) fingerprint: [u8; 32],
    pub(super) max_attempts: u16,
    pub(super) open: bool,
    /// An open job was closed: it finishes once every task settles.
    pub(super) closed: bool,
    pub(super) tasks: Vec<TaskSlot>,
    pub(super) inputs: Inputs,
    pub(super) outputs: Outputs,
    pub(super) errors: BTreeMap<u32, String>,
    pub(super) frontier: Frontier,
    /// Tasks whose lease was lost, to be leased again before fresh ones.
    pub(super) retry: VecDeque<TaskId>,
    pub(super) done: u32,
    pub(super) failed: u32,
    pub(super) running: u32,
    /// Tasks whose done or failed record was written (durable or not).
    pub(super) settled_written: u32,
    /// Its `JobFinished` record was written.
    pub(super) finishing: bool,
    /// Its `JobFinished` record is durable.
    pub(super) finished: bool,
}

impl Job {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: JobId,
        name: String,
        kind: u16,
        fingerprint: [u8; 32],
        max_attempts: u16,
        open: bool,
        inputs: Inputs,
        frontier: Frontier,
    ) -> Self {
        let n = inputs.len();
        let mut outputs = Outputs::default();
        outputs.resize(n);
        Job {
            id,
            name,
            kind,
            fingerprint,
            max_attempts,
            open,
            closed: !open,
            tasks: alloc::vec![TaskSlot::NEW; n],
            inputs,
            outputs,
            errors: BTreeMap::new(),
            frontier,
            retry: VecDeque::new(),
            done: 0,
            failed: 0,
            running: 0,
            settled_written: 0,
            finishing: false,
            finished: false,
        }
    }

    pub(super) fn total(&self) -> u32 {
        self.tasks.len() as u32
    }

    pub(super) fn slot(&mut self, task: TaskId) -> Option<&mut TaskSlot> {
        self.tasks.get_mut(task.index())
    }

    pub(super) fn state(&self, task: TaskId) -> Option<TaskState> {
        self.tasks.get(task.index()).map(|t| t.state)
    }

    /// Restores a task recorded done in the log; the first record of a task wins.
    pub(super) fn restore_done(&mut self, task: TaskId, output: &[u8]) {
        if let Some(slot) = self.tasks.get_mut(task.index())
            && slot.state == TaskState::Pending
        {
            slot.state = TaskState::Done;
            self.done += 1;
            self.settled_written += 1;
            self.outputs.set(task, output);
        }
    }

    /// Restores a task recorded failed in the log; the first record of a task wins.
    pub(super) fn restore_failed(&mut self, task: TaskId, attempts: u16, error: String) {
        if let Some(slot) = self.tasks.get_mut(task.index())
            && slot.state == TaskState::Pending
        {
            slot.state = TaskState::Failed;
            slot.attempt = Attempt(attempts);
            self.failed += 1;
            self.settled_written += 1;
            self.errors.insert(task.0, error);
        }
    }

    /// Adds a task to an open job.
    pub(super) fn push_task(&mut self, input: &[u8]) -> Option<TaskId> {
        let task = self.frontier.push_task()?;
        self.inputs.push(input);
        self.tasks.push(TaskSlot::NEW);
        self.outputs.resize(self.tasks.len());
        Some(task)
    }

    /// The next task to lease: a retried one first, then the frontier's next.
    pub(super) fn next_ready(&mut self) -> Option<TaskId> {
        loop {
            let task = match self.retry.pop_front() {
                Some(t) => t,
                None => self.frontier.pop_ready()?,
            };
            if self.state(task) == Some(TaskState::Pending) {
                return Some(task);
            }
        }
    }

    /// Every task's outcome is written and the job takes no more tasks.
    pub(super) fn all_settled(&self) -> bool {
        self.closed && self.settled_written == self.total()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        4 * self.tasks.capacity()
            + self.inputs.heap_bytes()
            + self.outputs.heap_bytes()
            + self.frontier.heap_bytes()
            + 4 * self.retry.capacity()
            + self
                .errors
                .values()
                .map(|e| e.capacity() + 32)
                .sum::<usize>()
    }
}
