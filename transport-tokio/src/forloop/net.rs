//! Distributed mode: server election by a real bind, then this process works through items as a
//! worker of whichever process serves (itself included).
//!
//! The serving process runs the [`Server`] and a local [`run_worker`] connected to it over
//! loopback, so every item, local or remote, takes the same path through the scheduler and the
//! checkpoint. Items reach the loop body either through a channel to the iterating thread (the
//! `for item in job.iter()` form) or by running the body right on the worker's task threads
//! ([`Loop::run`]).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colony_core::JobId;
use colony_core::proto::{Edge, ErrorCode};
use colony_core::sched::Inputs;
use tokio::runtime::Runtime;

use super::item::{Outcome, Settle};
use super::remote::Caller;
use super::{Finished, Loop, LoopError, Role, Source};
use crate::progress::ProgressBar;
use crate::secret::Secret;
use crate::server::{HandleError, Server, ServerConfig, ServerHandle};
use crate::worker::{
    Execution, Handler, TaskCtx, TaskError, WorkerConfig, WorkerError, WorkerExit, run_worker,
};

/// One leased item on its way to the iterating thread, with where its outcome goes.
struct Leased {
    index: usize,
    attempt: u16,
    reply: SyncSender<Outcome>,
}

enum Msg {
    Item(Leased),
    /// The local worker stopped: the job finished, or the server was lost.
    End(Result<WorkerExit, WorkerError>),
}

/// The serving side of this process, when it serves.
struct Serving {
    handle: ServerHandle,
    job: JobId,
    resumed: usize,
}

pub(super) struct NetSource {
    role: Role,
    runtime: Runtime,
    serving: Option<Serving>,
    items: Mutex<Receiver<Msg>>,
    replies: Mutex<HashMap<u64, SyncSender<Outcome>>>,
    next_ticket: AtomicU64,
    execute: Execute,
    end: Mutex<Option<Result<WorkerExit, WorkerError>>>,
    progress: Option<tokio::task::JoinHandle<()>>,
}

/// How the local worker runs the loop body.
pub(super) enum Body {
    /// Hand each item to the iterating thread and wait for its outcome.
    Iterate,
    /// Run this function on the worker's task threads: index, attempt, settle → outcome.
    Direct(DirectBody),
}

/// The loop body as the worker's task threads run it: index, attempt, where the outcome goes.
pub(super) type DirectBody = Arc<dyn Fn(usize, u16, &dyn Settle) + Send + Sync>;

/// The loop's shared secret: a given secret file, else `COLONY_SECRET` (hex) when set; else, for
/// a loopback address, a per-user token file created on first use in an owner-only folder,
/// which every process of this user on this machine reads.
pub(super) fn resolve_secret(
    addr: SocketAddr,
    file: Option<&PathBuf>,
) -> Result<Secret, LoopError> {
    let config = |e: crate::secret::SecretError| LoopError::Config(e.to_string());
    if let Some(path) = file {
        return Secret::from_file(path).map_err(config);
    }
    if let Some(secret) = Secret::from_env("COLONY_SECRET").map_err(config)? {
        return Ok(secret);
    }
    if !addr.ip().is_loopback() {
        return Err(LoopError::Config(format!(
            "{addr} is not a loopback address: set COLONY_SECRET (64 hex digits, the same on every \
             process) or give a secret file, so that only your processes can join"
        )));
    }
    let dir = std::env::temp_dir().join(format!("colony-{}", current_uid()));
    create_private_dir(&dir).map_err(|e| {
        LoopError::Config(format!(
            "cannot create the secret folder {}: {e}",
            dir.display()
        ))
    })?;
    // One secret for all of this user's loopback loops: the port may be chosen by the kernel
    // (port 0), and only this user can read the folder anyway.
    Secret::from_file_or_create(dir.join("loopback.secret")).map_err(config)
}

fn current_uid() -> u32 {
    // `getuid` is an FFI call and the workspace denies unsafe code: the owner of our own /proc
    // entry is the same number.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)?;
            if !meta.is_dir()
                || meta.uid() != current_uid()
                || meta.permissions().mode() & 0o077 != 0
            {
                return Err(std::io::Error::other(
                    "it exists but is not a private folder of this user",
                ));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn resolve_addr(addr: &str) -> Result<SocketAddr, LoopError> {
    addr.to_socket_addrs()
        .map_err(|e| LoopError::Config(format!("address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| LoopError::Config(format!("address {addr:?} resolves to nothing")))
}

fn handle_error(e: HandleError) -> LoopError {
    match e {
        HandleError::Create(c) => c.into(),
        other => LoopError::Network(other.to_string()),
    }
}

fn worker_error(e: WorkerError) -> LoopError {
    match e {
        WorkerError::Rejected {
            code: ErrorCode::FingerprintMismatch,
            detail,
            ..
        } => LoopError::Mismatch(detail),
        other => LoopError::Network(other.to_string()),
    }
}

impl NetSource {
    pub(super) fn start<T>(
        config: &Loop<T>,
        kind: &str,
        inputs: Inputs,
        edges: Vec<Edge>,
        body: Body,
    ) -> Result<Self, LoopError> {
        // `Loop::run` has taken the items out of `config` by now; the inputs are all there.
        let total = inputs.len();
        let addr = resolve_addr(&config.addr)?;
        let secret = resolve_secret(addr, config.secret_file.as_ref())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("colony-loop")
            .build()
            .map_err(|e| LoopError::Config(format!("cannot start the runtime: {e}")))?;

        let mut server_config = ServerConfig::new(secret.clone())
            .listen(addr)
            .call_handler({
                let functions = config.functions.clone();
                Arc::new(move |name: &str, args: &[u8]| functions.call_raw(name, args))
            });
        if let Some(path) = &config.checkpoint {
            server_config = server_config.checkpoint(path.clone());
        }
        let bound = {
            let _guard = runtime.enter();
            Server::bind(server_config)
        };
        let (role, serving, worker_addr) = match bound {
            Ok(bound) => {
                let handle = bound.handle();
                let local = bound.local_addr();
                let _server = runtime.spawn(async move {
                    if let Err(e) = bound.run().await {
                        log::error!("the loop's server stopped: {e}");
                    }
                });
                let created = runtime
                    .block_on(handle.create_job(
                        config.name.clone(),
                        kind.to_string(),
                        inputs,
                        edges,
                        config.max_attempts,
                    ))
                    .map_err(handle_error)?;
                let serving = Serving {
                    handle,
                    job: created.job,
                    resumed: created.already_done as usize,
                };
                (Role::Serving, Some(serving), local.to_string())
            }
            Err(e) if e.is_addr_in_use() => (Role::Working, None, addr.to_string()),
            Err(e) => {
                return Err(LoopError::Checkpoint {
                    path: config.checkpoint.clone().unwrap_or_default(),
                    message: e.to_string(),
                });
            }
        };

        let caller = match role {
            Role::Working => Some(Arc::new(Caller::new(
                runtime.handle().clone(),
                addr,
                secret.clone(),
            ))),
            _ => None,
        };
        let execute: Execute = match &caller {
            Some(caller) => {
                let caller = caller.clone();
                Arc::new(move |name: &str, args: &[u8]| caller.call(name, args))
            }
            None => {
                let functions = config.functions.clone();
                Arc::new(move |name: &str, args: &[u8]| functions.call_raw(name, args))
            }
        };
        let (tx, rx) = sync_channel::<Msg>(64);
        let slots = match body {
            Body::Iterate => 1,
            Body::Direct(_) => config.slots as u32,
        };
        let handler = LoopHandler {
            body,
            tx: tx.clone(),
            execute: execute.clone(),
        };
        let mut worker_config = WorkerConfig::new(worker_addr, secret.clone())
            .with_kinds([kind.to_string()])
            .with_slots(slots)
            .with_prefetch(slots.max(2))
            .with_execution(Execution::Threads);
        if let Some(after) = config.server_lost_after {
            worker_config = worker_config.with_server_lost_after(after);
        }
        runtime.spawn(async move {
            let result = run_worker(worker_config, handler).await;
            let _ = tx.send(Msg::End(result));
        });

        let progress = match (&serving, config.progress) {
            (Some(s), true) => Some(spawn_progress(&runtime, s.handle.clone(), s.job)),
            _ => None,
        };
        if let Some(s) = &serving {
            super::note_resumed(&config.name, s.resumed, total);
        }
        Ok(NetSource {
            role,
            runtime,
            serving,
            items: Mutex::new(rx),
            replies: Mutex::new(HashMap::new()),
            next_ticket: AtomicU64::new(1),
            execute,
            end: Mutex::new(None),
            progress,
        })
    }

    /// Waits until the local worker stopped; its result.
    fn wait_end(&self) -> Result<WorkerExit, LoopError> {
        loop {
            if let Some(end) = self.end.lock().map_err(|_| poisoned())?.take() {
                return end.map_err(worker_error);
            }
            let msg = self.items.lock().map_err(|_| poisoned())?.recv();
            match msg {
                Ok(Msg::End(result)) => return result.map_err(worker_error),
                // The body runs on worker threads here (or the iterator stopped early): refuse.
                Ok(Msg::Item(leased)) => drop(leased.reply),
                Err(_) => return Err(LoopError::Network("the local worker vanished".into())),
            }
        }
    }
}

fn poisoned() -> LoopError {
    LoopError::Network("a loop thread panicked while holding a lock".into())
}

fn spawn_progress(
    runtime: &Runtime,
    handle: ServerHandle,
    job: JobId,
) -> tokio::task::JoinHandle<()> {
    runtime.spawn(async move {
        let Ok(mut rx) = handle.progress(job).await else {
            return;
        };
        let mut bar = ProgressBar::new(rx.borrow().total);
        loop {
            let p = *rx.borrow_and_update();
            bar.update(p);
            if p.finished {
                bar.finish();
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(200)) => bar.tick(),
            }
        }
    })
}

/// Runs a registered function, here or on the serving process.
type Execute = Arc<dyn Fn(&str, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

struct LoopHandler {
    body: Body,
    tx: SyncSender<Msg>,
    execute: Execute,
}

impl Handler for LoopHandler {
    fn run(&self, ctx: &TaskCtx, _kind: &str, _input: &[u8]) -> Result<Vec<u8>, TaskError> {
        let (index, attempt) = (ctx.task().index(), ctx.attempt().0);
        let outcome = match &self.body {
            Body::Direct(body) => {
                let local = LocalSettle {
                    outcome: Mutex::new(None),
                    execute: self.execute.clone(),
                };
                body(index, attempt, &local);
                local.take()
            }
            Body::Iterate => {
                let (reply, outcome) = sync_channel(1);
                if self
                    .tx
                    .send(Msg::Item(Leased {
                        index,
                        attempt,
                        reply,
                    }))
                    .is_err()
                {
                    return Err(TaskError::retryable("the loop in this process stopped"));
                }
                outcome.recv().ok()
            }
        };
        match outcome {
            Some(Outcome::Done(bytes)) => Ok(bytes),
            Some(Outcome::Failed(error)) => Err(TaskError::retryable(error)),
            None => Err(TaskError::retryable(
                "the loop in this process stopped before the item ended",
            )),
        }
    }
}

/// Collects the outcome of one item run on a worker thread.
struct LocalSettle {
    outcome: Mutex<Option<Outcome>>,
    execute: Execute,
}

impl LocalSettle {
    fn take(&self) -> Option<Outcome> {
        self.outcome.lock().ok()?.take()
    }
}

impl Settle for LocalSettle {
    fn settle(&self, _ticket: u64, outcome: Outcome) {
        if let Ok(mut slot) = self.outcome.lock() {
            *slot = Some(outcome);
        }
    }

    fn execute(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
        (self.execute)(name, args)
    }
}

impl Settle for NetSource {
    fn settle(&self, ticket: u64, outcome: Outcome) {
        let reply = self.replies.lock().ok().and_then(|mut r| r.remove(&ticket));
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }

    fn execute(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
        (self.execute)(name, args)
    }
}

impl Source for NetSource {
    fn next(&self) -> Result<Option<(u64, usize, u16)>, LoopError> {
        if self.end.lock().map_err(|_| poisoned())?.is_some() {
            return Ok(None);
        }
        let msg = self.items.lock().map_err(|_| poisoned())?.recv();
        match msg {
            Ok(Msg::Item(leased)) => {
                let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
                self.replies
                    .lock()
                    .map_err(|_| poisoned())?
                    .insert(ticket, leased.reply);
                Ok(Some((ticket, leased.index, leased.attempt)))
            }
            Ok(Msg::End(result)) => {
                let ended = result.map(|_| ()).map_err(worker_error);
                *self.end.lock().map_err(|_| poisoned())? = Some(Ok(WorkerExit::Shutdown));
                ended.map(|()| None)
            }
            Err(_) => Err(LoopError::Network("the local worker vanished".into())),
        }
    }

    fn finish(self: Box<Self>) -> Result<Finished, LoopError> {
        let this = *self;
        this.wait_end()?;
        let Some(serving) = &this.serving else {
            return Ok(Finished {
                outputs: None,
                failures: Vec::new(),
                done: 0,
                resumed: 0,
            });
        };
        let (handle, job) = (&serving.handle, serving.job);
        let result = this.runtime.block_on(async {
            let progress = handle.wait_finished(job).await?;
            let outputs = handle.outputs(job).await?;
            let failures = handle.failures(job).await?;
            handle.shutdown().await?;
            Ok::<_, HandleError>((progress, outputs, failures))
        });
        if let Some(p) = this.progress {
            let _ = this.runtime.block_on(p);
        }
        let (progress, outputs, failures) = result.map_err(handle_error)?;
        Ok(Finished {
            outputs: Some(outputs),
            failures: failures.into_iter().map(|(t, e)| (t.index(), e)).collect(),
            done: progress.done as usize,
            resumed: serving.resumed,
        })
    }

    fn role(&self) -> Role {
        self.role
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.serving.as_ref().map(|s| s.handle.local_addr())
    }
}
