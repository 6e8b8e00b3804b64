//! `colony status`: a job's progress read from its checkpoint file, or asked of a live server.
//!
//! Invariants:
//! - The checkpoint file is opened read-only and never written, truncated or synced: the
//!   storage handed to the replay refuses every write.
//! - Counts come from the log's records alone: a task counts as done or failed once, at its first
//!   settling record, as the scheduler's own replay does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use colony_core::log::{Record, ReplayError, Storage, replay_alloc};
use colony_core::proto::{DEFAULT_MAX_FRAME, JobStatus, Message, Role};
use colony_tokio::conn::connect_and_handshake;
use colony_tokio::net::{self, Endpoint};
use colony_tokio::secret::{SECRET_ENV, Secret};
use colony_tokio::tls::ClientTls;
use serde::Serialize;
use tokio::time::timeout;

/// How long each step of a live query (connect, handshake, answer) may take.
const LIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A checkpoint file opened for reading only.
struct ReadOnlyFile {
    file: File,
}

/// Every write to a [`ReadOnlyFile`] is refused with this.
fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "checkpoint is opened read-only",
    )
}

impl Storage for ReadOnlyFile {
    type Error = io::Error;

    fn len(&mut self) -> Result<u64, io::Error> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), io::Error> {
        self.file.read_exact_at(buf, offset)
    }

    fn append(&mut self, _bytes: &[u8]) -> Result<(), io::Error> {
        Err(read_only())
    }

    fn sync(&mut self) -> Result<(), io::Error> {
        Err(read_only())
    }

    fn truncate(&mut self, _len: u64) -> Result<(), io::Error> {
        Err(read_only())
    }
}

/// How a task stands in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    No,
    Done,
    Failed,
}

/// One job as its records tell it.
#[derive(Debug, Serialize)]
pub(crate) struct JobSummary {
    /// The job's id in the log.
    job: u32,
    /// Its name.
    name: String,
    /// The task kind it runs; absent when asked of a server, which does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// Tasks in the job.
    total: u32,
    /// Tasks done.
    done: u32,
    /// Tasks failed for good.
    failed: u32,
    /// Tasks neither done nor failed.
    pending: u32,
    /// Tasks leased right now; only a live server knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    running: Option<u32>,
    /// Whether the job finished.
    finished: bool,
    #[serde(skip)]
    tasks: Vec<Settled>,
}

impl JobSummary {
    fn settle(&mut self, task: u32, how: Settled) -> bool {
        let Some(slot) = usize::try_from(task)
            .ok()
            .and_then(|t| self.tasks.get_mut(t))
        else {
            return false;
        };
        if *slot == Settled::No {
            *slot = how;
            match how {
                Settled::Done => self.done += 1,
                Settled::Failed => self.failed += 1,
                Settled::No => {}
            }
        }
        true
    }

    fn seal(&mut self) {
        self.pending = self.total.saturating_sub(self.done + self.failed);
    }

    /// A job as a live server reports it.
    fn live(job: &JobStatus<'_>) -> JobSummary {
        JobSummary {
            job: job.job.0,
            name: job.name.to_owned(),
            kind: None,
            total: job.total,
            done: job.done,
            failed: job.failed,
            pending: job
                .total
                .saturating_sub(job.done.saturating_add(job.failed)),
            running: Some(job.running),
            finished: job.finished,
            tasks: Vec::new(),
        }
    }
}

/// The end of the log: clean, or bytes that a resume would cut off.
#[derive(Debug, Serialize)]
pub(crate) struct Tail {
    /// Whether the log ends right after its last good record.
    clean: bool,
    /// Why replay stopped.
    reason: String,
    /// Length of the good prefix, where a resume truncates.
    valid_len: u64,
    /// Bytes after it, which a resume would remove.
    truncate_bytes: u64,
}

/// What a checkpoint file holds.
#[derive(Debug, Serialize)]
pub(crate) struct FileStatus {
    /// The file.
    checkpoint: PathBuf,
    /// Its length in bytes.
    file_len: u64,
    /// Good records in it.
    records: u64,
    /// Records naming a job with no header before them, or a task out of range (ignored).
    stray_records: u64,
    /// How it ends.
    tail: Tail,
    /// Its jobs, in the order they were created.
    jobs: Vec<JobSummary>,
}

/// Reads the checkpoint at `path` without changing it.
///
/// # Errors
/// The file cannot be opened or read, or it is not a Colony log.
pub(crate) fn read_checkpoint(path: &Path) -> Result<FileStatus> {
    let file =
        File::open(path).with_context(|| format!("cannot open checkpoint {}", path.display()))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        bail!("checkpoint {} is a directory", path.display());
    }
    let mut storage = ReadOnlyFile { file };
    let mut jobs: Vec<JobSummary> = Vec::new();
    let mut stray = 0u64;
    let replayed = replay_alloc(&mut storage, |_, record| {
        if !apply(&mut jobs, &record) {
            stray += 1;
        }
    })
    .map_err(|e| match e {
        ReplayError::Header(h) => anyhow::anyhow!("{}: {h}", path.display()),
        other => anyhow::anyhow!("cannot read checkpoint {}: {other}", path.display()),
    })?;
    for j in &mut jobs {
        j.seal();
    }
    let truncate_bytes = replayed.file_len() - replayed.valid_len().min(replayed.file_len());
    Ok(FileStatus {
        checkpoint: path.to_owned(),
        file_len: replayed.file_len(),
        records: replayed.records(),
        stray_records: stray,
        tail: Tail {
            clean: truncate_bytes == 0,
            reason: replayed.stop().to_string(),
            valid_len: replayed.valid_len(),
            truncate_bytes,
        },
        jobs,
    })
}

fn find(jobs: &mut [JobSummary], id: u32) -> Option<&mut JobSummary> {
    jobs.iter_mut().find(|j| j.job == id)
}

/// Applies one record; `false` if it names no known job or task.
fn apply(jobs: &mut Vec<JobSummary>, record: &Record<'_>) -> bool {
    match *record {
        Record::JobHeader {
            job,
            name,
            kind,
            tasks,
            ..
        } => {
            if jobs.iter().any(|j| j.job == job.0) {
                return false;
            }
            jobs.push(JobSummary {
                job: job.0,
                name: name.to_owned(),
                kind: Some(kind.to_owned()),
                total: tasks,
                done: 0,
                failed: 0,
                pending: 0,
                running: None,
                finished: false,
                tasks: vec![Settled::No; usize::try_from(tasks).unwrap_or(0)],
            });
            true
        }
        Record::TaskAdded { job, task, .. } => {
            let Some(j) = find(jobs, job.0) else {
                return false;
            };
            if task.0 != j.total {
                return false;
            }
            j.total += 1;
            j.tasks.push(Settled::No);
            true
        }
        Record::TaskDone { job, task, .. } => {
            find(jobs, job.0).is_some_and(|j| j.settle(task.0, Settled::Done))
        }
        Record::TaskFailed { job, task, .. } => {
            find(jobs, job.0).is_some_and(|j| j.settle(task.0, Settled::Failed))
        }
        Record::JobFinished { job } => find(jobs, job.0).is_some_and(|j| {
            j.finished = true;
            true
        }),
    }
}

/// The secret from `file`, or else from the `COLONY_SECRET` environment variable.
///
/// # Errors
/// The file or variable holds no secret, or neither is given.
pub(crate) fn load_secret(file: Option<&Path>) -> Result<Secret> {
    if let Some(path) = file {
        return Ok(Secret::from_file(path)?);
    }
    Secret::from_env(SECRET_ENV)?
        .ok_or_else(|| anyhow!("no secret: pass --secret-file FILE or set {SECRET_ENV}"))
}

/// What a live server reports.
#[derive(Debug, Serialize)]
pub(crate) struct LiveStatus {
    server: String,
    jobs: Vec<JobSummary>,
}

/// Asks the server at `addr` for every job's status, as an observer.
///
/// # Errors
/// The server cannot be reached, refuses the handshake, or does not answer in time.
pub(crate) async fn query_server(
    addr: &str,
    secret: &Secret,
    tls: Option<&ClientTls>,
) -> Result<LiveStatus> {
    let endpoint = Endpoint::parse(addr)?;
    let stream = timeout(LIVE_TIMEOUT, net::connect(&endpoint, tls))
        .await
        .map_err(|_| anyhow!("timed out connecting to {addr}"))?
        .with_context(|| format!("cannot connect to {addr}"))?;
    let handshake = connect_and_handshake(stream, secret, Role::Observer, DEFAULT_MAX_FRAME);
    let (mut conn, _welcome) = timeout(LIVE_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("{addr}: timed out in the handshake"))?
        .with_context(|| format!("{addr}: handshake failed"))?;
    conn.send(&Message::StatusQuery { job: None })
        .await
        .with_context(|| format!("{addr}: cannot send the status query"))?;
    loop {
        let message = timeout(LIVE_TIMEOUT, conn.read_message())
            .await
            .map_err(|_| anyhow!("{addr}: no status answer in time"))?
            .with_context(|| format!("{addr}: connection failed"))?;
        match message {
            Message::Status(batch) => {
                let mut jobs = Vec::new();
                for job in batch.iter() {
                    let job = job.map_err(|e| anyhow!("{addr}: bad status entry: {e}"))?;
                    jobs.push(JobSummary::live(&job));
                }
                return Ok(LiveStatus {
                    server: addr.to_owned(),
                    jobs,
                });
            }
            Message::Error { code, detail } => {
                bail!("{addr}: server refused the query ({code:?}): {detail}")
            }
            Message::ServerGoingAway => bail!("{addr}: server is going away"),
            // Anything else (a heartbeat) is not the answer.
            _ => {}
        }
    }
}

/// Renders a live server's status for people.
pub(crate) fn render_live(s: &LiveStatus) -> String {
    let mut out = format!("server {}\n", s.server);
    if s.jobs.is_empty() {
        out.push_str("no jobs\n");
    } else {
        out.push_str(&table(&s.jobs));
    }
    out
}

/// Renders jobs as an aligned table.
pub(crate) fn table(jobs: &[JobSummary]) -> String {
    let live = jobs.iter().any(|j| j.running.is_some());
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["JOB", "NAME"];
    if !live {
        head.push("KIND");
    }
    head.extend(["TOTAL", "DONE", "FAILED", "PENDING"]);
    if live {
        head.push("RUNNING");
    }
    head.push("FINISHED");
    rows.push(head.into_iter().map(str::to_owned).collect());
    for j in jobs {
        let mut row = vec![j.job.to_string(), j.name.clone()];
        if !live {
            row.push(j.kind.clone().unwrap_or_default());
        }
        row.extend([
            j.total.to_string(),
            j.done.to_string(),
            j.failed.to_string(),
            j.pending.to_string(),
        ]);
        if live {
            row.push(j.running.unwrap_or(0).to_string());
        }
        row.push(if j.finished { "yes" } else { "no" }.to_owned());
        rows.push(row);
    }
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let w = widths.get(c).copied().unwrap_or(0);
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders a checkpoint's status for people.
pub(crate) fn render_file(s: &FileStatus) -> String {
    let mut out = format!(
        "checkpoint {}: {} bytes, {} records\n",
        s.checkpoint.display(),
        s.file_len,
        s.records
    );
    if s.jobs.is_empty() {
        out.push_str("no jobs\n");
    } else {
        out.push_str(&table(&s.jobs));
    }
    if s.stray_records > 0 {
        out.push_str(&format!(
            "warning: {} records name no known job or task and were ignored\n",
            s.stray_records
        ));
    }
    if s.file_len == 0 {
        out.push_str("tail: empty file (a resume writes the log header)\n");
    } else if !s.tail.clean {
        out.push_str(&format!(
            "tail: {}: a resume would truncate {} bytes after offset {}\n",
            s.tail.reason, s.tail.truncate_bytes, s.tail.valid_len
        ));
    } else {
        out.push_str("tail: clean\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::log::FILE_HEADER;
    use colony_core::{Attempt, JobId, TaskId};

    fn header(job: u32, tasks: u32, open: bool) -> Record<'static> {
        Record::JobHeader {
            job: JobId(job),
            fingerprint: [0; 32],
            name: "squares",
            kind: "square",
            tasks,
            edges: 0,
            max_attempts: 3,
            open,
        }
    }

    fn done(job: u32, task: u32) -> Record<'static> {
        Record::TaskDone {
            job: JobId(job),
            task: TaskId(task),
            attempt: Attempt(0),
            output: b"out",
        }
    }

    fn write(records: &[Record<'_>], extra: &[u8]) -> tempfile::NamedTempFile {
        let mut bytes = FILE_HEADER.to_vec();
        for r in records {
            r.append_to(&mut bytes).unwrap();
        }
        bytes.extend_from_slice(extra);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &bytes).unwrap();
        f
    }

    #[test]
    fn counts_each_task_once_and_leaves_the_file_alone() {
        let records = [
            header(1, 4, false),
            done(1, 0),
            done(1, 0),
            Record::TaskFailed {
                job: JobId(1),
                task: TaskId(1),
                attempts: 3,
                error: "boom",
            },
            done(1, 9),
            done(7, 0),
            header(2, 1, true),
            Record::TaskAdded {
                job: JobId(2),
                task: TaskId(1),
                input: b"",
            },
            done(2, 1),
            done(2, 0),
            Record::JobFinished { job: JobId(2) },
        ];
        let f = write(&records, &[1, 2, 3]);
        let before = std::fs::read(f.path()).unwrap();
        let s = read_checkpoint(f.path()).unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
        assert_eq!(s.records, records.len() as u64);
        assert_eq!(s.stray_records, 2);
        let j = &s.jobs[0];
        assert_eq!((j.total, j.done, j.failed, j.pending), (4, 1, 1, 2));
        assert!(!j.finished);
        let j = &s.jobs[1];
        assert_eq!((j.total, j.done, j.failed, j.pending), (2, 2, 0, 0));
        assert!(j.finished);
        assert!(!s.tail.clean);
        assert_eq!(s.tail.truncate_bytes, 3);
        assert_eq!(s.tail.valid_len, before.len() as u64 - 3);
        let text = render_file(&s);
        assert!(text.contains("a resume would truncate 3 bytes"), "{text}");
    }

    #[test]
    fn clean_and_empty_logs() {
        let f = write(&[header(1, 2, false), done(1, 1)], &[]);
        let s = read_checkpoint(f.path()).unwrap();
        assert!(s.tail.clean);
        assert!(render_file(&s).contains("tail: clean"));

        let f = tempfile::NamedTempFile::new().unwrap();
        let s = read_checkpoint(f.path()).unwrap();
        assert!(s.jobs.is_empty());
        assert!(render_file(&s).contains("empty file"));
    }

    #[test]
    fn not_a_log_is_an_error() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"hello, this is not a log at all").unwrap();
        let err = read_checkpoint(f.path()).unwrap_err();
        assert!(err.to_string().contains("not a colony log"), "{err}");
        let err = read_checkpoint(Path::new("/nonexistent/ckpt")).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot open checkpoint"),
            "{err:#}"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let f = write(&[header(1, 1000, false), done(1, 1)], &[]);
        let s = read_checkpoint(f.path()).unwrap();
        let t = table(&s.jobs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "JOB  NAME     KIND    TOTAL  DONE  FAILED  PENDING  FINISHED"
        );
        assert_eq!(
            lines[1],
            "1    squares  square  1000   1     0       999      no"
        );
    }
}
