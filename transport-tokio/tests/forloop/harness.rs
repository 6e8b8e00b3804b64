//! Running `colony-loop-fixture` processes and reading what they leave behind: stdout lines,
//! the report JSON, the runs log and the checkpoint.
//!
//! Every wait is bounded by [`PATIENCE`]; a process still running when its [`Proc`] is dropped
//! is killed, so a failing test leaves nothing behind.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use colony_core::log::Record;
use colony_tokio::logfile::read_log;

/// The bound on every wait.
pub(crate) const PATIENCE: Duration = Duration::from_secs(45);

const FIXTURE: &str = env!("CARGO_BIN_EXE_colony-loop-fixture");

/// A fresh secret in hex, so tests never touch the per-user secret file.
fn fresh_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("random secret");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test's folder and secret; the files its processes share.
/// With `LOOP_TEST_KEEP` set, the folder is kept (and named on stderr) for a post-mortem.
pub(crate) struct Scene {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    secret: String,
}

impl Scene {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_owned();
        let dir = if std::env::var_os("LOOP_TEST_KEEP").is_some() {
            eprintln!("keeping {}", dir.keep().display());
            None
        } else {
            Some(dir)
        };
        Scene {
            dir,
            path,
            secret: fresh_secret(),
        }
    }

    /// A path in the test's folder.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A fixture command with `args`.
    pub(crate) fn fixture<S: AsRef<str>>(&self, args: &[S]) -> Fixture {
        Fixture {
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
            envs: Vec::new(),
            secret: self.secret.clone(),
        }
    }
}

/// The arguments of one fixture process.
#[derive(Clone)]
pub(crate) struct Fixture {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    secret: String,
}

impl Fixture {
    /// Adds arguments.
    pub(crate) fn with<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Sets an environment variable of the process.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the process.
    pub(crate) fn spawn(&self) -> Proc {
        let mut child = Command::new(FIXTURE)
            .args(&self.args)
            .env("COLONY_SECRET", &self.secret)
            .env_remove("COLONY_ADDR")
            .env_remove("COLONY_SERIAL")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the fixture");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let err_text = Arc::new(Mutex::new(String::new()));
        let err_reader = {
            let err_text = err_text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut buf) {
                    err_text
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        Proc {
            pid: child.id(),
            child,
            lines,
            stdout: Vec::new(),
            closed: false,
            stderr: err_text,
            err_reader: Some(err_reader),
            status: None,
        }
    }
}

/// A running fixture process.
pub(crate) struct Proc {
    pub(crate) pid: u32,
    child: Child,
    lines: Receiver<String>,
    stdout: Vec<String>,
    closed: bool,
    stderr: Arc<Mutex<String>>,
    err_reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// How a process ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<String>,
    pub(crate) stderr: String,
}

impl Ended {
    /// The stdout line starting with `prefix`.
    pub(crate) fn line(&self, prefix: &str) -> Option<&str> {
        self.stdout
            .iter()
            .find(|l| l.starts_with(prefix))
            .map(String::as_str)
    }

    /// `key=value` from the `finished` line.
    pub(crate) fn finished(&self, key: &str) -> String {
        let line = self
            .line("finished")
            .unwrap_or_else(|| panic!("no finished line: {self:?}"));
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_string()
    }

    /// Asserts a clean exit.
    pub(crate) fn assert_ok(&self) -> &Self {
        assert!(self.status.success(), "the fixture failed: {self:#?}");
        self
    }
}

impl Proc {
    /// Waits for a stdout line starting with `prefix`; returns it.
    pub(crate) fn wait_line(&mut self, prefix: &str) -> String {
        if let Some(line) = self.stdout.iter().find(|l| l.starts_with(prefix)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line {prefix:?} from {} in {PATIENCE:?}: {:?}",
                        self.pid, self.stdout
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let ended = self.wait();
                    panic!("the fixture ended before printing {prefix:?}: {ended:#?}");
                }
            }
        }
    }

    /// The address a serving process printed.
    pub(crate) fn serving_addr(&mut self) -> String {
        let line = self.wait_line("role ");
        match line.strip_prefix("role serving ") {
            Some(addr) => addr.to_string(),
            None => panic!("{} does not serve: {line:?}", self.pid),
        }
    }

    /// What it wrote to stderr so far.
    pub(crate) fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the process has exited (without waiting).
    pub(crate) fn exited(&mut self) -> bool {
        self.status.is_some() || matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends a signal by name (`STOP`, `CONT`) with the `kill` command.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.pid);
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        self.status = Some(self.child.wait().expect("reap"));
    }

    /// Waits (bounded) for the process to exit on its own; its exit status and output.
    pub(crate) fn wait(&mut self) -> Ended {
        let deadline = Instant::now() + PATIENCE;
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "fixture {} still running after {PATIENCE:?}; stdout {:?}, stderr {}",
                        self.pid,
                        self.stdout,
                        self.stderr.lock().unwrap()
                    );
                }
            }
        }
        let status = match self.status {
            Some(status) => status,
            None => {
                // Stdout closed: the process is exiting.
                let status = self.child.wait().expect("reap");
                self.status = Some(status);
                status
            }
        };
        if let Some(reader) = self.err_reader.take() {
            let _ = reader.join();
        }
        Ended {
            status,
            stdout: self.stdout.clone(),
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill();
        }
    }
}

/// Waits (bounded) until `done` holds, checking every few milliseconds.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Opens `gate` once process `pid` ran an item: the serving process (held by the gate) cannot
/// finish the job before that worker joined. A worker that only arrives while the server shuts
/// down learns nothing of the job's end and reports the server lost.
pub(crate) fn open_gate_once_working(gate: &Path, runs: &Path, pid: u32) {
    wait_until("the worker runs items", || {
        read_runs(runs).iter().any(|e| e.pid == pid)
    });
    std::fs::write(gate, b"").expect("open the gate");
}

/// One line of the runs log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    /// `S` (a body started), `E` (it ended well), `F` (a planned failure).
    pub(crate) tag: char,
    pub(crate) index: usize,
    pub(crate) attempt: u16,
    pub(crate) pid: u32,
    pub(crate) run: u64,
}

/// The runs log, in the order its lines were appended.
pub(crate) fn read_runs(path: &Path) -> Vec<Event> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("runs log: {e}"),
    };
    text.lines()
        // A line being written right now may be cut short.
        .filter(|l| !l.is_empty())
        .map_while(|line| {
            let mut f = line.split(' ');
            let tag = f.next()?.chars().next()?;
            Some(Event {
                tag,
                index: f.next()?.parse().ok()?,
                attempt: f.next()?.parse().ok()?,
                pid: f.next()?.parse().ok()?,
                run: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Counts the complete lines of the runs log (cheap enough to poll).
pub(crate) fn count_runs(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// The report the serving process wrote.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LoopReport {
    pub(crate) role: String,
    pub(crate) done: usize,
    pub(crate) resumed: usize,
    pub(crate) ran_here: usize,
    pub(crate) failures: Vec<(usize, String)>,
    pub(crate) product: Vec<Option<(u64, u64)>>,
}

pub(crate) fn read_report(path: &Path) -> LoopReport {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("report JSON")
}

/// Decodes a stored output: `[1]` then the postcard encoding of `(digest, run)`.
pub(crate) fn decode_output(bytes: &[u8]) -> Option<(u64, u64)> {
    match bytes.split_first() {
        Some((1, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// What a checkpoint holds: every `TaskDone` in log order (task, output), and the tasks that
/// failed for good.
#[derive(Debug, Default)]
pub(crate) struct Checkpoint {
    pub(crate) done: Vec<(usize, (u64, u64))>,
    pub(crate) failed: Vec<usize>,
    pub(crate) finished: bool,
}

impl Checkpoint {
    /// Outputs by task; panics if a task is recorded twice.
    pub(crate) fn outputs(&self) -> BTreeMap<usize, (u64, u64)> {
        let mut map = BTreeMap::new();
        for &(task, out) in &self.done {
            assert!(
                map.insert(task, out).is_none(),
                "task {task} recorded twice in the checkpoint"
            );
        }
        map
    }
}

pub(crate) fn read_checkpoint(path: &Path) -> Checkpoint {
    let mut cp = Checkpoint::default();
    if !path.exists() {
        return cp;
    }
    read_log(path, |record| match record {
        Record::TaskDone { task, output, .. } => {
            let out = decode_output(output).expect("a fixture output");
            cp.done.push((task.index(), out));
        }
        Record::TaskFailed { task, .. } => cp.failed.push(task.index()),
        Record::JobFinished { .. } => cp.finished = true,
        _ => {}
    })
    .expect("read the checkpoint");
    cp
}

/// Asserts the product is complete, in order and correct for `n` items of `salt`; returns it.
pub(crate) fn assert_product(report: &LoopReport, n: usize, salt: u64) -> Vec<(u64, u64)> {
    assert_eq!(report.product.len(), n, "product length");
    report
        .product
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let out = out.unwrap_or_else(|| panic!("item {i} has no output"));
            assert_eq!(
                out.0,
                super::shape::digest(super::shape::value(i, salt)),
                "item {i}"
            );
            out
        })
        .collect()
}

/// Asserts the checkpoint records each of the `n` tasks exactly once, with the product's output.
pub(crate) fn assert_checkpoint_matches(cp: &Checkpoint, product: &[(u64, u64)]) {
    let outputs = cp.outputs();
    assert_eq!(
        outputs.len(),
        product.len(),
        "tasks recorded in the checkpoint"
    );
    for (i, out) in product.iter().enumerate() {
        assert_eq!(
            outputs.get(&i),
            Some(out),
            "item {i}: checkpoint vs product"
        );
    }
    assert!(cp.finished, "the checkpoint ends with JobFinished");
}

/// Per item, the positions in the runs log of its events.
pub(crate) fn by_item(events: &[Event]) -> HashMap<usize, Vec<(usize, Event)>> {
    let mut map: HashMap<usize, Vec<(usize, Event)>> = HashMap::new();
    for (pos, e) in events.iter().enumerate() {
        map.entry(e.index).or_default().push((pos, *e));
    }
    map
}

/// Asserts every dependent started only after the run of its predecessor that was recorded
/// (the product's run id) had ended: dependents are released by durable completions only.
pub(crate) fn assert_order(events: &[Event], edges: &[(usize, usize)], product: &[(u64, u64)]) {
    let mut end_of_run = HashMap::new();
    for (pos, e) in events.iter().enumerate() {
        if e.tag == 'E' {
            end_of_run.insert(e.run, pos);
        }
    }
    let items = by_item(events);
    for &(before, after) in edges {
        let recorded = product[before].1;
        let ended = *end_of_run
            .get(&recorded)
            .unwrap_or_else(|| panic!("the recorded run of item {before} has no end line"));
        for (pos, e) in items.get(&after).into_iter().flatten() {
            assert!(
                e.tag != 'S' || *pos > ended,
                "item {after} started (line {pos}) before its predecessor {before}'s recorded run \
                 ended (line {ended})"
            );
        }
    }
}
