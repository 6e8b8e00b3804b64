//! [`Executor::recorded`]: every result the server has recorded for a job, by the job's name.
//!
//! It opens a connection of its own, attaches to the job (the server then sends every result
//! already recorded, right after `JobAccepted`), asks for the job's status (whose answer comes
//! after those results), and leaves without `Goodbye`, so the job stays open for its executor.
//! A process that lost its executor (the server was away past the reconnect window, or the
//! process restarted) collects its results this way, with the same job name.
//!
//! Invariant: each task appears once, with its durable outcome; tasks not yet settled are absent.

use std::collections::BTreeMap;

use colony_core::TaskId;
use colony_core::proto::{JobSpec, Message, decode_message, encode_frame_into};
use serde::de::DeserializeOwned;

use super::error::ExecutorError;
use super::session::{self, Connected};
use super::{Executor, TaskKind};

/// One recorded outcome, before decoding.
enum Outcome {
    Done(Vec<u8>),
    Failed { error: String, attempts: u16 },
}

impl Executor {
    /// Every result recorded on the server for this executor's job of `kind` (named
    /// `{job name}/{kind}`, see [`ExecutorBuilder::job_name`](super::ExecutorBuilder::job_name);
    /// the job of the executor's default retry policy), in task order, with the total number of
    /// tasks the job has: task ids count the job's tasks in the order they were submitted (a task
    /// sent again after a reconnect counts where it was recorded). Tasks not yet settled are
    /// absent.
    ///
    /// # Errors
    /// The server cannot be reached, or refuses (a job of that name with another kind).
    pub async fn recorded<In, Out>(
        &self,
        kind: &TaskKind<In, Out>,
    ) -> Result<Recorded<Out>, ExecutorError>
    where
        Out: DeserializeOwned,
    {
        let config = &self.shared.config;
        let attempts = self.shared.retry.attempts_per_task();
        let name = session::job_name(&self.shared.job_base, kind.name(), attempts);
        let Connected {
            mut reader,
            wire,
            writer,
            ..
        } = session::connect(config).await?;
        let lost = |reason: String| ExecutorError::ServerLost {
            addr: config.addr.clone(),
            waited: std::time::Duration::ZERO,
            last_error: reason,
        };
        let mut out = Vec::new();
        let spec = JobSpec {
            name: &name,
            kind: kind.name(),
            tasks: 0,
            edges: 0,
            max_attempts: attempts,
            open: true,
        };
        let _ = encode_frame_into(&Message::CreateJob(spec), &mut out);
        wire.push(&mut out);
        let mut outcomes = BTreeMap::new();
        let mut job = None;
        let total = 'read: loop {
            let read = tokio::time::timeout(config.server_silence, reader.fill()).await;
            match read {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(lost(e.to_string())),
                Err(_) => return Err(lost("the server did not answer".to_owned())),
            }
            while let Some(range) = reader.next_buffered().map_err(|e| lost(e.to_string()))? {
                let payload = reader.buffer().get(range).unwrap_or_default();
                match decode_message(payload).map_err(|e| lost(e.to_string()))? {
                    Message::JobAccepted { job: id, .. } => {
                        job = Some(id);
                        let _ =
                            encode_frame_into(&Message::StatusQuery { job: Some(id) }, &mut out);
                        wire.push(&mut out);
                    }
                    Message::TaskDone { task, output, .. } => {
                        outcomes.insert(task, Outcome::Done(output.to_vec()));
                    }
                    Message::TaskFailed {
                        task,
                        attempts,
                        error,
                        ..
                    } => {
                        let error = error.to_owned();
                        outcomes.insert(task, Outcome::Failed { error, attempts });
                    }
                    Message::Status(statuses) => {
                        for status in statuses.iter().flatten() {
                            if Some(status.job) == job {
                                break 'read status.total;
                            }
                        }
                    }
                    Message::Error { code, detail } => {
                        return Err(ExecutorError::Refused {
                            code,
                            detail: detail.to_owned(),
                        });
                    }
                    _ => {}
                }
            }
        };
        wire.close();
        writer.abort();
        let kind_name = kind.name().to_owned();
        let results = outcomes
            .into_iter()
            .map(|(task, outcome)| {
                let result = match outcome {
                    Outcome::Done(bytes) => {
                        postcard::from_bytes(&bytes).map_err(|e| ExecutorError::Decode {
                            kind: kind_name.clone(),
                            error: e.to_string(),
                        })
                    }
                    Outcome::Failed { error, attempts } => Err(ExecutorError::Remote {
                        kind: kind_name.clone(),
                        error,
                        attempts,
                    }),
                };
                (task, result)
            })
            .collect();
        Ok(Recorded {
            job: name,
            total,
            results,
        })
    }
}

/// What [`Executor::recorded`] found.
#[derive(Debug)]
pub struct Recorded<Out> {
    /// The job's name.
    pub job: String,
    /// Tasks the job has (settled or not).
    pub total: u32,
    /// Each settled task's outcome, in task order.
    pub results: Vec<(TaskId, Result<Out, ExecutorError>)>,
}
