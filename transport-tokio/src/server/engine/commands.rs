//! The engine's answers to [`ServerHandle`](crate::server::ServerHandle) commands and status
//! queries: read-only views of the scheduler, except job creation.
//!
//! Invariant: a `create_job` with a checkpoint is answered only once its records are durable
//! (see `Engine::creating`).

use colony_core::proto::{BatchBuf, JobStatus};
use colony_core::sched::{JobDef, TaskState};
use colony_core::{JobId, TaskId};
use tokio::sync::watch;

use super::{Creating, Engine, GRANT_OVERHEAD};
use crate::server::Progress;
use crate::server::handle::{Command, JobInfo, ServerStatus};

impl Engine {
    /// Job statuses for a `Status` reply, within `max` bytes.
    pub(super) fn fill_status(&self, job: Option<JobId>, out: &mut BatchBuf, max: usize) {
        let ids: Vec<JobId> = match job {
            Some(job) => vec![job],
            None => self.sched.job_ids().collect(),
        };
        for id in ids {
            let (Some(p), Some(name)) = (self.sched.progress(id), self.sched.job_name(id)) else {
                continue;
            };
            if out.encoded_len() + name.len() + 64 > max.saturating_sub(GRANT_OVERHEAD) {
                break;
            }
            let _ = out.push(&JobStatus {
                job: id,
                name,
                total: p.total,
                done: p.done,
                failed: p.failed,
                running: p.running,
                finished: p.finished,
            });
        }
    }

    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::CreateJob {
                name,
                kind,
                inputs,
                edges,
                max_attempts,
                reply,
            } => {
                let total = inputs.len();
                let def = JobDef::new(&name, &kind, inputs)
                    .edges(&edges)
                    .max_attempts(max_attempts);
                let result = self.sched.create_job(def);
                match &result {
                    Ok(created) => {
                        log::info!(
                            "{} {name:?}: {total} tasks of kind {kind:?}, {} edges, {} already settled",
                            created.job,
                            edges.len(),
                            created.already_done
                        );
                        self.watch(created.job);
                        if self.sched.progress(created.job).is_some_and(|p| p.finished) {
                            self.broadcast_finished(created.job);
                        }
                    }
                    Err(e) => log::warn!("job {name:?} refused: {e}"),
                }
                match result {
                    // Answer once the job's header (and whatever else is logged) is durable,
                    // so a crash right after `create_job` returns cannot lose the job.
                    Ok(created) if self.log.is_some() && self.sched.has_log() => {
                        self.creating.push(Creating {
                            lsn: None,
                            created,
                            reply,
                        });
                    }
                    result => {
                        let _ = reply.send(result);
                    }
                }
            }
            Command::Progress { job, reply } => {
                let _ = reply.send(self.watch(job));
            }
            Command::Outputs { job, reply } => {
                let outputs = self.sched.progress(job).map(|p| {
                    (0..p.total)
                        .map(|t| {
                            let task = TaskId(t);
                            (self.sched.task_state(job, task) == Some(TaskState::Done))
                                .then(|| self.sched.output(job, task).map(<[u8]>::to_vec))
                                .flatten()
                        })
                        .collect()
                });
                let _ = reply.send(outputs);
            }
            Command::Failures { job, reply } => {
                let failures = self.sched.progress(job).map(|p| {
                    (0..p.total)
                        .map(TaskId)
                        .filter(|&t| self.sched.task_state(job, t) == Some(TaskState::Failed))
                        .map(|t| (t, self.sched.error(job, t).unwrap_or_default().to_owned()))
                        .collect()
                });
                let _ = reply.send(failures);
            }
            Command::Status { reply } => {
                let jobs = self
                    .sched
                    .job_ids()
                    .filter_map(|job| {
                        Some(JobInfo {
                            job,
                            name: self.sched.job_name(job)?.to_owned(),
                            progress: self.sched.progress(job)?,
                        })
                    })
                    .collect();
                let _ = reply.send(ServerStatus {
                    jobs,
                    workers: self.live_workers,
                    worker_list: self.worker_infos(),
                    clients: self.client_infos(),
                });
            }
            Command::Shutdown { reply } => self.shutdown_waiters.push(reply),
        }
    }

    /// A receiver of `job`'s progress, creating its sender on first use.
    fn watch(&mut self, job: JobId) -> Option<watch::Receiver<Progress>> {
        let now = self.sched.progress(job)?;
        let index = job.0 as usize;
        if self.progress.len() <= index {
            self.progress.resize_with(index + 1, || None);
        }
        let slot = self.progress.get_mut(index)?;
        Some(
            slot.get_or_insert_with(|| watch::channel(now).0)
                .subscribe(),
        )
    }
}
