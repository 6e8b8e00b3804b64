//! [`ServerHandle`]: the serving program's in-process line to the engine (create jobs, watch
//! progress, collect outputs, shut down).
//!
//! Every call is a message to the engine task and an answer back; none touches the scheduler
//! directly. Once the engine has stopped, every call fails with [`HandleError::Stopped`], carrying
//! the reason when it stopped on a fault.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use colony_core::proto::Edge;
use colony_core::sched::{CreateJobError, Created, Inputs, Progress};
use colony_core::{JobId, TaskId};
use tokio::sync::{mpsc, oneshot, watch};

use super::engine::Control;
use super::{ClientInfo, WorkerInfo};

/// A call on a [`ServerHandle`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The server is not running (any more).
    #[error("server stopped{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Stopped {
        /// Why, if it stopped on a fault.
        reason: Option<String>,
    },
    /// No job has this id.
    #[error("no {0} on this server")]
    UnknownJob(JobId),
    /// The job could not be created (or does not match its checkpoint).
    #[error(transparent)]
    Create(#[from] CreateJobError),
}

/// One job in a [`ServerStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// Its id.
    pub job: JobId,
    /// Its name.
    pub name: String,
    /// Its progress.
    pub progress: Progress,
}

/// A snapshot of the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// Every live job.
    pub jobs: Vec<JobInfo>,
    /// Workers connected now.
    pub workers: usize,
    /// Each connected worker, in join order.
    pub worker_list: Vec<WorkerInfo>,
    /// Each connected task client.
    pub clients: Vec<ClientInfo>,
}

/// Why the engine stopped, shared with every handle.
#[derive(Debug, Default)]
pub(super) struct StopState {
    reason: Mutex<Option<String>>,
}

impl StopState {
    pub(super) fn set(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    fn get(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What a handle asks of the engine.
#[derive(Debug)]
pub(super) enum Command {
    CreateJob {
        name: String,
        kind: String,
        inputs: Inputs,
        edges: Vec<Edge>,
        max_attempts: u16,
        reply: oneshot::Sender<Result<Created, CreateJobError>>,
    },
    Progress {
        job: JobId,
        reply: oneshot::Sender<Option<watch::Receiver<Progress>>>,
    },
    Outputs {
        job: JobId,
        reply: oneshot::Sender<Option<Vec<Option<Vec<u8>>>>>,
    },
    Failures {
        job: JobId,
        reply: oneshot::Sender<Option<Vec<(TaskId, String)>>>,
    },
    Status {
        reply: oneshot::Sender<ServerStatus>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The serving program's handle on a running server. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    tx: mpsc::UnboundedSender<Control>,
    local_addr: SocketAddr,
    fsyncs: Option<Arc<AtomicU64>>,
    stop: Arc<StopState>,
}

impl ServerHandle {
    pub(super) fn new(
        tx: mpsc::UnboundedSender<Control>,
        local_addr: SocketAddr,
        fsyncs: Option<Arc<AtomicU64>>,
        stop: Arc<StopState>,
    ) -> Self {
        ServerHandle {
            tx,
            local_addr,
            fsyncs,
            stop,
        }
    }

    fn stopped(&self) -> HandleError {
        HandleError::Stopped {
            reason: self.stop.get(),
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, HandleError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Control::Command(command(reply)))
            .map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())
    }

    /// The server's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Creates a job of `kind` with one task per input, dependency `edges` `(before, after)` and
    /// `max_attempts` per task, or resumes the job of the same `name` from the checkpoint (done
    /// tasks are not run again; [`Created::already_done`] counts them), or returns the live job
    /// of that name. With a checkpoint, it returns once the job's header record is durable, so
    /// the job survives a crash from then on.
    ///
    /// # Errors
    /// [`HandleError::Create`] if the job is invalid (a cycle, 0 attempts) or differs from the
    /// one of the same name in the checkpoint (a clear mismatch report);
    /// [`HandleError::Stopped`].
    pub async fn create_job(
        &self,
        name: impl Into<String>,
        kind: impl Into<String>,
        inputs: Inputs,
        edges: Vec<Edge>,
        max_attempts: u16,
    ) -> Result<Created, HandleError> {
        let (name, kind) = (name.into(), kind.into());
        let created = self
            .ask(|reply| Command::CreateJob {
                name,
                kind,
                inputs,
                edges,
                max_attempts,
                reply,
            })
            .await?;
        Ok(created?)
    }

    /// A live view of a job's progress; it changes whenever the progress does and closes when
    /// the server stops.
    ///
    /// # Errors
    /// [`HandleError::UnknownJob`], [`HandleError::Stopped`].
    pub async fn progress(&self, job: JobId) -> Result<watch::Receiver<Progress>, HandleError> {
        self.ask(|reply| Command::Progress { job, reply })
            .await?
            .ok_or(HandleError::UnknownJob(job))
    }

    /// Waits until the job finished (every task done or failed, durably) and returns its final
    /// progress.
    ///
    /// # Errors
    /// [`HandleError::UnknownJob`]; [`HandleError::Stopped`] if the server stops first.
    pub async fn wait_finished(&self, job: JobId) -> Result<Progress, HandleError> {
        let mut progress = self.progress(job).await?;
        progress
            .wait_for(|p| p.finished)
            .await
            .map(|p| *p)
            .map_err(|_| self.stopped())
    }

    /// Every task's output in task order, `None` where the task is not done (durably); outputs
    /// recorded before a restart are included.
    ///
    /// # Errors
    /// [`HandleError::UnknownJob`], [`HandleError::Stopped`].
    pub async fn outputs(&self, job: JobId) -> Result<Vec<Option<Vec<u8>>>, HandleError> {
        self.ask(|reply| Command::Outputs { job, reply })
            .await?
            .ok_or(HandleError::UnknownJob(job))
    }

    /// The tasks that failed for good, with their last error, in task order.
    ///
    /// # Errors
    /// [`HandleError::UnknownJob`], [`HandleError::Stopped`].
    pub async fn failures(&self, job: JobId) -> Result<Vec<(TaskId, String)>, HandleError> {
        self.ask(|reply| Command::Failures { job, reply })
            .await?
            .ok_or(HandleError::UnknownJob(job))
    }

    /// A snapshot of jobs and workers.
    ///
    /// # Errors
    /// [`HandleError::Stopped`].
    pub async fn status(&self) -> Result<ServerStatus, HandleError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// `fdatasync` calls made on the checkpoint so far (0 without a checkpoint).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
            .as_ref()
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Stops the server: tells every peer `ServerGoingAway`, makes every record durable, closes
    /// the checkpoint (releasing its lock) and returns once that is done. Calling it on a stopped
    /// server is not an error.
    ///
    /// # Errors
    /// [`HandleError::Stopped`] with a reason if the server had stopped on a fault.
    pub async fn shutdown(&self) -> Result<(), HandleError> {
        match self.ask(|reply| Command::Shutdown { reply }).await {
            Ok(()) => Ok(()),
            Err(HandleError::Stopped { reason: None }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
