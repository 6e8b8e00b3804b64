//! The distributed for-loop: the same program runs on every node, and `for item in job` is
//! spread over all of them.
//!
//! ```no_run
//! use colony_tokio::forloop::Loop;
//!
//! let items: Vec<u64> = (0..1_000).collect();
//! let mut job = Loop::new("squares", items).checkpoint("squares.ckpt").start()?;
//! for item in job.iter() {
//!     item.produce(&(*item * *item))?;
//! }
//! // Only the serving process gets the product: every output, in item order.
//! if let Some(squares) = job.finish::<u64>()?.product {
//!     assert_eq!(squares[3], Some(9));
//! }
//! # Ok::<(), colony_tokio::forloop::LoopError>(())
//! ```
//!
//! - **Server election.** The first process to bind the address serves (and works through items
//!   too); every other process connects and works. It is a real bind, never a probe.
//! - **Checkpoint.** With a checkpoint path, a crashed or stopped run resumes where it was:
//!   only what was in flight is done again, and the product includes outputs recorded before.
//! - **Serial mode** runs the whole loop in this process with no network, still writing and
//!   resuming its checkpoint: for debugging.
//! - **Failures.** An item whose body fails or panics is retried up to the loop's attempts,
//!   then reported in [`Report::failures`]; it never hangs a process.
//! - **Same items everywhere.** Each process derives the job's fingerprint from its own items
//!   and edges; a process whose list differs is refused with a clear error.

mod functions;
mod item;
mod net;
mod remote;
mod serial;

pub use functions::Functions;
pub use item::Item;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use colony_core::TaskId;
use colony_core::proto::Edge;
use colony_core::sched::{CreateJobError, Inputs};
use serde::Serialize;
use serde::de::DeserializeOwned;

use item::{Outcome, Settle, decode_output};

/// The default address of a loop's server.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7700";

/// What this process is in the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It bound the address: it serves the job (and works on it too).
    Serving,
    /// Another process serves; this one works.
    Working,
    /// Serial mode: the whole loop in this process, no network.
    Serial,
}

/// Why a loop could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoopError {
    /// The checkpoint or another process's job has other items or edges than this process.
    #[error("{0}")]
    Mismatch(String),
    /// The dependency edges are bad (out of range or a cycle).
    #[error("{0}")]
    Dependencies(String),
    /// The checkpoint file could not be used.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A value could not be encoded or decoded.
    #[error("encoding: {0}")]
    Encode(String),
    /// An `execute` call failed.
    #[error("execute {name:?}: {message}")]
    Execute {
        /// The function.
        name: String,
        /// Its error.
        message: String,
    },
    /// The network side failed: the server was lost, the secret is wrong, …
    #[error("{0}")]
    Network(String),
    /// A bad option.
    #[error("{0}")]
    Config(String),
    /// Items failed for good (index, last error).
    #[error("{} items failed; the first, item {}: {}", .0.len(), .0.first().map_or(0, |f| f.0), .0.first().map_or("", |f| f.1.as_str()))]
    Failed(Vec<(usize, String)>),
}

impl From<CreateJobError> for LoopError {
    fn from(e: CreateJobError) -> Self {
        match e {
            CreateJobError::Mismatch(mut m) => {
                // A loop's kind carries the fingerprint of its items, so other items always
                // mean another kind: name what differs (the counts, or else the values), not
                // two hashes.
                let base = |kind: &str| kind.split_once('#').map(|(base, _)| base.to_owned());
                if base(&m.known.kind).is_some() && base(&m.known.kind) == base(&m.given.kind) {
                    m.given.kind.clone_from(&m.known.kind);
                }
                LoopError::Mismatch(CreateJobError::Mismatch(m).to_string())
            }
            CreateJobError::Dag(_) | CreateJobError::EdgesOnOpenJob => {
                LoopError::Dependencies(e.to_string())
            }
            other => LoopError::Config(other.to_string()),
        }
    }
}

/// How a loop ended, as seen by this process.
#[derive(Debug)]
pub struct Report<O> {
    /// What this process was.
    pub role: Role,
    /// Every item's output in item order (`None` where an item produced nothing or failed);
    /// only on the serving process (and in serial mode).
    pub product: Option<Vec<Option<O>>>,
    /// Items that failed for good, with their last error; only on the serving process.
    pub failures: Vec<(usize, String)>,
    /// Items done in all (including before a resume); only meaningful on the serving process.
    pub done: usize,
    /// Items found already done in the checkpoint when the loop started.
    pub resumed: usize,
    /// Items this process ran.
    pub ran_here: usize,
    /// Wall time of the loop in this process.
    pub elapsed: Duration,
}

/// A loop over `items`, configured with builder methods, then run with [`Loop::start`] (for the
/// `for item in job.iter()` form) or [`Loop::run`] (a closure over items, on several threads).
#[derive(Debug)]
pub struct Loop<T> {
    name: String,
    items: Vec<T>,
    edges: Vec<(usize, usize)>,
    addr: String,
    checkpoint: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    serial: bool,
    max_attempts: u16,
    slots: usize,
    functions: Functions,
    progress: bool,
    server_lost_after: Option<Duration>,
}

impl<T> Loop<T>
where
    T: Serialize + Send + Sync + 'static,
{
    /// A loop named `name` over `items`. The name identifies the job in its checkpoint.
    pub fn new(name: &str, items: impl IntoIterator<Item = T>) -> Self {
        Loop {
            name: name.to_string(),
            items: items.into_iter().collect(),
            edges: Vec::new(),
            addr: std::env::var("COLONY_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_string()),
            checkpoint: None,
            secret_file: None,
            serial: std::env::var_os("COLONY_SERIAL").is_some_and(|v| v != "0"),
            max_attempts: 3,
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            functions: Functions::new(),
            progress: true,
            server_lost_after: None,
        }
    }

    /// The address the serving process binds and the others connect to (default
    /// [`DEFAULT_ADDR`], or the `COLONY_ADDR` environment variable).
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// Writes and resumes a checkpoint at `path` (on the serving process).
    pub fn checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// Reads the shared secret from this token file (hex, owner-only), instead of the
    /// `COLONY_SECRET` environment variable or, on loopback, a per-user file made on first use.
    pub fn secret_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.secret_file = Some(path.into());
        self
    }

    /// Serial mode: the whole loop in this process, no network (also set by `COLONY_SERIAL=1`).
    pub fn serial(mut self, serial: bool) -> Self {
        self.serial = serial;
        self
    }

    /// Dependency edges `(a, b)`: item `a` runs (and is recorded) before item `b` starts.
    pub fn dependencies(mut self, edges: impl IntoIterator<Item = (usize, usize)>) -> Self {
        self.edges = edges.into_iter().collect();
        self
    }

    /// Runs of an item before it fails for good (default 3; at least 1).
    pub fn max_attempts(mut self, n: u16) -> Self {
        self.max_attempts = n;
        self
    }

    /// Threads [`Loop::run`] uses in this process (default: the number of cores).
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = n.max(1);
        self
    }

    /// Functions the loop body may [`execute`](Item::execute) on the serving process.
    pub fn functions(mut self, functions: Functions) -> Self {
        self.functions = functions;
        self
    }

    /// Whether the serving process draws a progress bar on a terminal (default true).
    pub fn progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// How long a working process keeps trying to reach a vanished server before it gives up
    /// with [`LoopError::Network`] (default 10 s). A server that comes back within it (restarted
    /// on the same checkpoint, say) finds its workers again.
    pub fn server_lost_after(mut self, after: Duration) -> Self {
        self.server_lost_after = Some(after);
        self
    }

    /// The job's inputs (each item's postcard encoding) and edges, checked.
    fn job_parts(&self) -> Result<(Inputs, Vec<Edge>), LoopError> {
        let mut inputs = Inputs::with_capacity(self.items.len(), 0);
        let mut buf = Vec::new();
        for item in &self.items {
            buf.clear();
            postcard::to_io(item, &mut buf).map_err(|e| LoopError::Encode(e.to_string()))?;
            inputs.push(&buf);
        }
        let n = self.items.len();
        let mut edges = Vec::with_capacity(self.edges.len());
        for &(a, b) in &self.edges {
            if a >= n || b >= n {
                return Err(LoopError::Dependencies(format!(
                    "dependency ({a}, {b}) names an item beyond the {n} items"
                )));
            }
            edges.push(Edge {
                before: TaskId(a as u32),
                after: TaskId(b as u32),
            });
        }
        if u32::try_from(n).is_err() {
            return Err(LoopError::Config(format!(
                "{n} items: at most {} fit in one loop",
                u32::MAX
            )));
        }
        Ok((inputs, edges))
    }

    /// The task kind of this loop: its name and its fingerprint, so that only processes with the
    /// same items and edges run its tasks.
    fn kind(&self, inputs: &Inputs, edges: &[Edge]) -> String {
        let fp = colony_core::log::fingerprint(
            &self.name,
            inputs.iter(),
            edges.iter().map(|e| (e.before, e.after)),
        );
        let hex: String = fp.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("loop:{}#{}", self.name, hex)
    }

    /// Starts the loop in this process: serial, serving or working.
    ///
    /// # Errors
    /// A [`LoopError`] if the checkpoint or the network cannot be used, or the items do not
    /// match the checkpoint's or the serving process's.
    pub fn start(self) -> Result<Running<T>, LoopError> {
        if self.max_attempts == 0 {
            return Err(LoopError::Config("max_attempts must be at least 1".into()));
        }
        let (inputs, edges) = self.job_parts()?;
        let kind = self.kind(&inputs, &edges);
        let source: Box<dyn Source> = if self.serial {
            Box::new(serial::SerialSource::open(&self, &kind, inputs, &edges)?)
        } else {
            Box::new(net::NetSource::start(
                &self,
                &kind,
                inputs,
                edges,
                net::Body::Iterate,
            )?)
        };
        Ok(Running::new(Arc::new(self.items), source))
    }

    /// Runs `body` over every item this process is given, on [`slots`](Loop::slots) threads in
    /// a worker and sequentially in serial mode, and returns the report.
    ///
    /// # Errors
    /// As [`Loop::start`].
    pub fn run<O, F>(self, body: F) -> Result<Report<O>, LoopError>
    where
        O: Serialize + DeserializeOwned,
        F: Fn(&Item<'_, T>) -> Result<O, LoopError> + Send + Sync + 'static,
    {
        if self.serial {
            let mut running = self.start()?;
            for item in running.iter() {
                run_body(&body, &item);
            }
            return running.finish();
        }
        if self.max_attempts == 0 {
            return Err(LoopError::Config("max_attempts must be at least 1".into()));
        }
        let (inputs, edges) = self.job_parts()?;
        let kind = self.kind(&inputs, &edges);
        let mut config = self;
        let items = Arc::new(std::mem::take(&mut config.items));
        let ran = Arc::new(AtomicUsize::new(0));
        let direct = {
            let (items, ran) = (items.clone(), ran.clone());
            Arc::new(move |index: usize, attempt: u16, settle: &dyn Settle| {
                let Some(value) = items.get(index) else {
                    settle.settle(
                        0,
                        Outcome::Failed(format!("item {index} is beyond this process's items")),
                    );
                    return;
                };
                ran.fetch_add(1, Ordering::Relaxed);
                run_body(&body, &Item::new(index, attempt, value, 0, settle));
            })
        };
        let source =
            net::NetSource::start(&config, &kind, inputs, edges, net::Body::Direct(direct))?;
        let running = Running::new(items, Box::new(source));
        running.ran_here.set(0);
        let mut report = running.finish()?;
        report.ran_here = ran.load(Ordering::Relaxed);
        Ok(report)
    }
}

/// Maps `f` over `items` across every process of the loop named `name` (with the default
/// settings; use [`Loop`] for more), and returns the outputs in input order on the serving
/// process, `None` on the others.
///
/// # Errors
/// As [`Loop::run`], and [`LoopError::Failed`] naming the items that failed for good.
pub fn map<T, O, F>(
    name: &str,
    items: impl IntoIterator<Item = T>,
    f: F,
) -> Result<Option<Vec<O>>, LoopError>
where
    T: Serialize + Send + Sync + 'static,
    O: Serialize + DeserializeOwned,
    F: Fn(&T) -> O + Send + Sync + 'static,
{
    let report = Loop::new(name, items).run(move |item| Ok(f(item.value())))?;
    if !report.failures.is_empty() {
        return Err(LoopError::Failed(report.failures));
    }
    let Some(product) = report.product else {
        return Ok(None);
    };
    let total = product.len();
    let outputs: Vec<O> = product.into_iter().flatten().collect();
    if outputs.len() != total {
        return Err(LoopError::Failed(vec![(
            total,
            "an item has no output".into(),
        )]));
    }
    Ok(Some(outputs))
}

/// Says what a resumed checkpoint held: a job found already finished is worth a word (the run
/// does nothing but hand back the recorded product), a partial one only at the info level.
fn note_resumed(name: &str, resumed: usize, total: usize) {
    if total > 0 && resumed == total {
        log::warn!(
            "{name}: the job had already finished (all {total} items are settled in its \
             checkpoint); nothing to run"
        );
    } else if resumed > 0 {
        log::info!("resumed {name} from its checkpoint: {resumed} of {total} items already done");
    }
}

/// Runs the loop body on one item and records its result in the item.
fn run_body<T, O: Serialize>(
    body: &impl Fn(&Item<'_, T>) -> Result<O, LoopError>,
    item: &Item<'_, T>,
) {
    match body(item) {
        Ok(out) => {
            if let Err(e) = item.produce(&out) {
                item.fail(e);
            }
        }
        Err(e) => item.fail(e),
    }
}

/// The source of a running loop's items: serial, or the network worker.
pub(crate) trait Source: Settle {
    /// The next item for this process: `(ticket, index, attempt)`, or `None` once the job is
    /// finished (or this process should stop).
    fn next(&self) -> Result<Option<(u64, usize, u16)>, LoopError>;
    /// The job's end, on the serving process: outputs in item order, failures, resumed count.
    fn finish(self: Box<Self>) -> Result<Finished, LoopError>;
    /// What this process is.
    fn role(&self) -> Role;
    /// The address this process serves on, when it serves.
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

/// What a source hands back when the loop ends.
pub(crate) struct Finished {
    pub(crate) outputs: Option<Vec<Option<Vec<u8>>>>,
    pub(crate) failures: Vec<(usize, String)>,
    pub(crate) done: usize,
    pub(crate) resumed: usize,
}

/// A loop started in this process. Iterate with [`Running::iter`], then call
/// [`Running::finish`].
pub struct Running<T> {
    items: Arc<Vec<T>>,
    source: Box<dyn Source>,
    started: std::time::Instant,
    ran_here: Cell<usize>,
    error: RefCell<Option<LoopError>>,
}

impl<T> fmt::Debug for Running<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("role", &self.source.role())
            .field("ran_here", &self.ran_here.get())
            .finish()
    }
}

impl<T> Running<T> {
    fn new(items: Arc<Vec<T>>, source: Box<dyn Source>) -> Self {
        Running {
            items,
            source,
            started: std::time::Instant::now(),
            ran_here: Cell::new(0),
            error: RefCell::new(None),
        }
    }

    /// What this process is in the loop.
    pub fn role(&self) -> Role {
        self.source.role()
    }

    /// The address this process serves the loop on, when it serves (useful with port 0: start
    /// the other processes with this address).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.source.local_addr()
    }

    /// The items handed to this process, one at a time, until the job is finished.
    pub fn iter(&mut self) -> Items<'_, T> {
        Items {
            items: &self.items,
            source: &*self.source,
            error: &self.error,
            ran_here: &self.ran_here,
        }
    }

    /// Ends the loop in this process: on the serving process (and in serial mode) the report
    /// carries the product, every output in item order, including outputs recorded before a
    /// resume.
    ///
    /// # Errors
    /// An error met while iterating (the server was lost, …), or [`LoopError::Encode`] if an
    /// output does not decode as `O`.
    pub fn finish<O: DeserializeOwned>(self) -> Result<Report<O>, LoopError> {
        if let Some(e) = self.error.into_inner() {
            return Err(e);
        }
        let role = self.source.role();
        let finished = self.source.finish()?;
        let product = match finished.outputs {
            Some(outputs) => Some(
                outputs
                    .iter()
                    .map(|o| match o {
                        Some(bytes) => {
                            decode_output(bytes).map_err(|e| LoopError::Encode(e.to_string()))
                        }
                        None => Ok(None),
                    })
                    .collect::<Result<Vec<Option<O>>, _>>()?,
            ),
            None => None,
        };
        Ok(Report {
            role,
            product,
            failures: finished.failures,
            done: finished.done,
            resumed: finished.resumed,
            ran_here: self.ran_here.get(),
            elapsed: self.started.elapsed(),
        })
    }
}

/// Iterator over the items handed to this process.
pub struct Items<'a, T> {
    items: &'a [T],
    source: &'a dyn Source,
    error: &'a RefCell<Option<LoopError>>,
    ran_here: &'a Cell<usize>,
}

impl<'a, T> Iterator for Items<'a, T> {
    type Item = Item<'a, T>;

    fn next(&mut self) -> Option<Item<'a, T>> {
        if self.error.borrow().is_some() {
            return None;
        }
        match self.source.next() {
            Ok(Some((ticket, index, attempt))) => {
                let Some(value) = self.items.get(index) else {
                    *self.error.borrow_mut() = Some(LoopError::Mismatch(format!(
                        "the server handed out item {index}, beyond this process's {} items",
                        self.items.len()
                    )));
                    return None;
                };
                self.ran_here.set(self.ran_here.get() + 1);
                let settle: &'a dyn Settle = self.source;
                Some(Item::new(index, attempt, value, ticket, settle))
            }
            Ok(None) => None,
            Err(e) => {
                *self.error.borrow_mut() = Some(e);
                None
            }
        }
    }
}
