//! Serial mode: the whole loop in this process, no network, same scheduler and checkpoint.
//!
//! The core scheduler runs in-process with one worker of one slot; every outcome is written to
//! the checkpoint and synced before the next item is handed out, so a crash loses at most the
//! item in flight.

use std::cell::RefCell;
use std::time::Instant as StdInstant;

use colony_core::log::Storage;
use colony_core::proto::{Edge, Retry};
use colony_core::sched::{Action, Inputs, JobDef, SchedConfig, Scheduler};
use colony_core::{Instant, JobId, LeaseId, TaskId, WorkerId};

use super::item::{Outcome, Settle};
use super::{Finished, Functions, Loop, LoopError, Role, Source};
use crate::logfile;

type BoxedStorage = Box<dyn Storage<Error = std::io::Error>>;

struct State {
    sched: Scheduler,
    storage: Option<BoxedStorage>,
    worker: WorkerId,
    job: JobId,
    log: Vec<u8>,
    epoch: StdInstant,
}

pub(super) struct SerialSource {
    state: RefCell<State>,
    functions: Functions,
    resumed: usize,
    error: RefCell<Option<LoopError>>,
}

impl SerialSource {
    pub(super) fn open<T>(
        config: &Loop<T>,
        kind: &str,
        inputs: Inputs,
        edges: &[Edge],
    ) -> Result<Self, LoopError> {
        let mut sched = Scheduler::new(SchedConfig::default());
        let storage: Option<BoxedStorage> = match &config.checkpoint {
            Some(path) => {
                let mut replay_error = None;
                let storage = logfile::open_log(path, |record| {
                    if replay_error.is_none() {
                        replay_error = sched.replay(&record).err();
                    }
                })
                .map_err(|e| LoopError::Checkpoint {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                if let Some(e) = replay_error {
                    return Err(LoopError::Checkpoint {
                        path: path.clone(),
                        message: e.to_string(),
                    });
                }
                Some(Box::new(storage))
            }
            None => None,
        };
        sched.replay_done();
        let created = sched.create_job(
            JobDef::new(&config.name, kind, inputs)
                .edges(edges)
                .max_attempts(config.max_attempts),
        )?;
        let worker = sched.worker_joined([kind]);
        let mut state = State {
            sched,
            storage,
            worker,
            job: created.job,
            log: Vec::new(),
            epoch: StdInstant::now(),
        };
        state.flush()?;
        super::note_resumed(
            &config.name,
            created.already_done as usize,
            config.items.len(),
        );
        Ok(SerialSource {
            state: RefCell::new(state),
            functions: config.functions.clone(),
            resumed: created.already_done as usize,
            error: RefCell::new(None),
        })
    }
}

impl State {
    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    /// Writes and syncs every logged record, then tells the scheduler they are durable.
    fn flush(&mut self) -> Result<(), LoopError> {
        self.log.clear();
        let Some(lsn) = self.sched.take_log(&mut self.log) else {
            return Ok(());
        };
        if let Some(storage) = &mut self.storage {
            storage
                .append(&self.log)
                .and_then(|()| storage.sync())
                .map_err(|e| LoopError::Checkpoint {
                    path: "(serial)".into(),
                    message: e.to_string(),
                })?;
        }
        self.sched.durable(lsn);
        Ok(())
    }
}

impl Settle for SerialSource {
    fn settle(&self, ticket: u64, outcome: Outcome) {
        let mut state = self.state.borrow_mut();
        let (worker, lease) = (state.worker, LeaseId(ticket));
        let answered = match &outcome {
            Outcome::Done(bytes) => state.sched.complete(worker, lease, bytes).map(drop),
            Outcome::Failed(error) => state
                .sched
                .fail(worker, lease, Retry::Retryable, error)
                .map(drop),
        };
        if let Err(e) = answered {
            *self.error.borrow_mut() = Some(LoopError::Config(format!("internal: {e}")));
        }
        if let Err(e) = state.flush() {
            *self.error.borrow_mut() = Some(e);
        }
    }

    fn execute(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
        self.functions.call_raw(name, args)
    }
}

impl Source for SerialSource {
    fn next(&self) -> Result<Option<(u64, usize, u16)>, LoopError> {
        if let Some(e) = self.error.borrow_mut().take() {
            return Err(e);
        }
        let mut state = self.state.borrow_mut();
        let worker = state.worker;
        if state.sched.credit_of(worker) == 0 && state.sched.held_by(worker) == 0 {
            state
                .sched
                .credit(worker, 1)
                .map_err(|e| LoopError::Config(format!("internal: {e}")))?;
        }
        loop {
            let now = state.now();
            state.sched.poll(now);
            let mut grant = None;
            while let Some(action) = state.sched.pop_action() {
                if let Action::Grant {
                    lease,
                    task,
                    attempt,
                    ..
                } = action
                {
                    grant = Some((lease.0, task.index(), attempt.0));
                }
            }
            if grant.is_some() {
                return Ok(grant);
            }
            if !state.sched.has_log() {
                return Ok(None);
            }
            state.flush()?;
        }
    }

    fn finish(self: Box<Self>) -> Result<Finished, LoopError> {
        let mut state = self.state.into_inner();
        state.flush()?;
        let job = state.job;
        let progress = state.sched.progress(job).unwrap_or_default();
        let outputs = (0..progress.total)
            .map(|t| state.sched.output(job, TaskId(t)).map(<[u8]>::to_vec))
            .collect();
        let failures = (0..progress.total)
            .filter_map(|t| {
                state
                    .sched
                    .error(job, TaskId(t))
                    .map(|e| (t as usize, e.to_string()))
            })
            .collect();
        Ok(Finished {
            outputs: Some(outputs),
            failures,
            done: progress.done as usize,
            resumed: self.resumed,
        })
    }

    fn role(&self) -> Role {
        Role::Serial
    }
}
