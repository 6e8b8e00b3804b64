//! The checkpoint log on a file: [`FileStorage`] (the core's [`Storage`] over a `std::fs::File`),
//! [`open_log`] (create, or replay and repair), [`read_log`] (inspect without changing), and
//! [`GroupCommit`] (a thread that makes batches of records durable with one `fdatasync` each).
//!
//! Invariants:
//! - A new log is created with [`FILE_HEADER`], and the file and its directory are synced before
//!   [`open_log`] returns, so the log's existence survives a crash.
//! - An existing log is replayed in full before anything is appended. A torn or corrupt tail is
//!   truncated (with a warning giving the byte counts); a file whose header is not a Colony log's
//!   is an error and is never modified.
//! - One process at a time: [`open_log`] takes an exclusive advisory lock on the file and holds it
//!   as long as the [`FileStorage`] lives.
//! - [`GroupCommit`] reports an LSN durable only after an `fdatasync` that followed the write of
//!   every byte up to it. After a storage error it reports the error and stops: what is on disk
//!   is then unknown until the log is replayed again.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use colony_core::Lsn;
use colony_core::log::{
    FILE_HEADER, HeaderError, Record, ReplayError, Replayed, StopReason, Storage, repair,
    replay_alloc,
};

/// A checkpoint log file, opened by [`open_log`]. Appends go to the end; [`Storage::sync`] is
/// `fdatasync`.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    len: u64,
    path: PathBuf,
    recovery: Recovery,
}

/// What [`open_log`] found in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Whether the file was created now.
    pub created: bool,
    /// Good records replayed.
    pub records: u64,
    /// Length of the good prefix, header included.
    pub valid_len: u64,
    /// Bytes cut off the end (a torn or corrupt tail); for [`read_log`], bytes that would be.
    pub truncated: u64,
    /// Why replay stopped.
    pub stop: StopReason,
}

/// A checkpoint log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenLogError {
    /// The file could not be created, read, locked or repaired.
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not a Colony log this version reads; it was left untouched.
    #[error("checkpoint {} is not a colony log this version can read ({reason}); it was left untouched", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong with its header.
        reason: HeaderError,
    },
    /// Another process (or another handle in this one) has the log open.
    #[error("checkpoint {} is in use by another process", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
}

impl FileStorage {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening the log found.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }
}

impl Storage for FileStorage {
    type Error = io::Error;

    fn len(&mut self) -> Result<u64, io::Error> {
        Ok(self.len)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), io::Error> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read past the log"))?;
        if end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the log",
            ));
        }
        self.file.read_exact_at(buf, offset)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), io::Error> {
        let written = self.file.write_all_at(bytes, self.len);
        if written.is_ok() {
            self.len += bytes.len() as u64;
        } else {
            // Some prefix may be on disk; learn where the file ends now.
            self.len = self.file.metadata()?.len();
        }
        written
    }

    fn sync(&mut self) -> Result<(), io::Error> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> Result<(), io::Error> {
        if len < self.len {
            self.file.set_len(len)?;
            self.len = len;
        }
        Ok(())
    }
}

/// Opens the checkpoint log at `path`, creating it if it does not exist, and calls `replayed`
/// with every good record in log order before returning.
///
/// A torn or corrupt tail is truncated after a warning; [`FileStorage::recovery`] says what was
/// found. The caller rebuilds its state from the records (typically with the scheduler's
/// `replay`) and then appends through the returned storage.
///
/// # Errors
/// [`OpenLogError::Foreign`] if the file is not a Colony log (it is not modified),
/// [`OpenLogError::Locked`] if it is in use, [`OpenLogError::Io`] otherwise.
pub fn open_log<F>(path: impl AsRef<Path>, mut replayed: F) -> Result<FileStorage, OpenLogError>
where
    F: FnMut(Record<'_>),
{
    let path = path.as_ref();
    let io_error = |source| OpenLogError::Io {
        path: path.to_owned(),
        source,
    };
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path);
    let (file, created) = match created {
        Ok(file) => (file, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_error)?,
            false,
        ),
        Err(e) => return Err(io_error(e)),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(OpenLogError::Locked {
                path: path.to_owned(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io_error(e)),
    }
    let len = file.metadata().map_err(io_error)?.len();
    let mut storage = FileStorage {
        file,
        len,
        path: path.to_owned(),
        recovery: Recovery {
            created,
            records: 0,
            valid_len: 0,
            truncated: 0,
            stop: StopReason::End,
        },
    };

    if created {
        storage.append(&FILE_HEADER).map_err(io_error)?;
        storage.file.sync_all().map_err(io_error)?;
        sync_parent_dir(path).map_err(io_error)?;
        storage.recovery.valid_len = FILE_HEADER.len() as u64;
        return Ok(storage);
    }

    let outcome: Replayed = match replay_alloc(&mut storage, |_, record| replayed(record)) {
        Ok(outcome) => outcome,
        Err(ReplayError::Header(reason)) => {
            return Err(OpenLogError::Foreign {
                path: path.to_owned(),
                reason,
            });
        }
        Err(ReplayError::Storage(e)) => return Err(io_error(e)),
        Err(e) => return Err(io_error(io::Error::other(e.to_string()))),
    };
    let truncated = outcome.file_len() - outcome.valid_len().min(outcome.file_len());
    if outcome.needs_repair() {
        if outcome.has_header() {
            log::warn!(
                "checkpoint {}: truncating {truncated} bytes of a damaged tail ({}) after {} good bytes ({} records)",
                path.display(),
                outcome.stop(),
                outcome.valid_len(),
                outcome.records()
            );
        } else if outcome.file_len() > 0 {
            log::warn!(
                "checkpoint {}: rewriting a torn header ({} of {} bytes were written)",
                path.display(),
                outcome.file_len(),
                FILE_HEADER.len()
            );
        }
        repair(&mut storage, &outcome).map_err(io_error)?;
    }
    storage.recovery = Recovery {
        created,
        records: outcome.records(),
        valid_len: storage.len,
        truncated,
        stop: outcome.stop(),
    };
    Ok(storage)
}

/// Reads the checkpoint log at `path` without changing it (no lock, no repair), calling
/// `replayed` with every good record: for tools that inspect a log another process may be
/// writing. A damaged tail is reported in the result, not truncated.
///
/// # Errors
/// [`OpenLogError::Foreign`] if the file is not a Colony log, [`OpenLogError::Io`] if it cannot
/// be read.
pub fn read_log<F>(path: impl AsRef<Path>, mut replayed: F) -> Result<Recovery, OpenLogError>
where
    F: FnMut(Record<'_>),
{
    let path = path.as_ref();
    let io_error = |source| OpenLogError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    let mut storage = FileStorage {
        file,
        len,
        path: path.to_owned(),
        recovery: Recovery {
            created: false,
            records: 0,
            valid_len: 0,
            truncated: 0,
            stop: StopReason::End,
        },
    };
    let outcome = match replay_alloc(&mut storage, |_, record| replayed(record)) {
        Ok(outcome) => outcome,
        Err(ReplayError::Header(reason)) => {
            return Err(OpenLogError::Foreign {
                path: path.to_owned(),
                reason,
            });
        }
        Err(ReplayError::Storage(e)) => return Err(io_error(e)),
        Err(e) => return Err(io_error(io::Error::other(e.to_string()))),
    };
    Ok(Recovery {
        created: false,
        records: outcome.records(),
        valid_len: outcome.valid_len(),
        truncated: outcome.file_len() - outcome.valid_len().min(outcome.file_len()),
        stop: outcome.stop(),
    })
}

/// Syncs the directory holding `path`, so a newly created entry survives a crash.
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// A batch of records made durable by [`GroupCommit`].
#[derive(Debug)]
pub struct Flushed {
    /// Every record up to this LSN is durable.
    pub lsn: Lsn,
    /// A buffer the thread is done with (cleared), for the next batch.
    pub spare: Vec<u8>,
}

/// Group commit on its own thread: each wake-up writes every batch submitted so far, then
/// syncs once. See the module docs.
#[derive(Debug)]
pub struct GroupCommit {
    tx: Option<mpsc::Sender<(Vec<u8>, Lsn)>>,
    fsyncs: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the thread over `storage`. It calls `report` once per sync with the highest
    /// durable LSN, or once with the error that stopped it.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn<S, R>(mut storage: S, mut report: R) -> io::Result<GroupCommit>
    where
        S: Storage<Error = io::Error> + Send + 'static,
        R: FnMut(Result<Flushed, io::Error>) + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<(Vec<u8>, Lsn)>();
        let fsyncs = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&fsyncs);
        let thread = thread::Builder::new()
            .name("colony-log".into())
            .spawn(move || {
                while let Ok((first, lsn)) = rx.recv() {
                    let mut spare = first;
                    let mut last = lsn;
                    let mut result = storage.append(&spare);
                    while result.is_ok() {
                        let Ok((more, lsn)) = rx.try_recv() else {
                            break;
                        };
                        result = storage.append(&more);
                        last = last.max(lsn);
                        spare = more;
                    }
                    let result = result.and_then(|()| storage.sync());
                    counter.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(()) => {
                            spare.clear();
                            report(Ok(Flushed { lsn: last, spare }));
                        }
                        Err(e) => {
                            // Refuse further batches before reporting, so a caller that saw
                            // the error sees every later `submit` fail.
                            drop(rx);
                            report(Err(e));
                            return;
                        }
                    }
                }
            })?;
        Ok(GroupCommit {
            tx: Some(tx),
            fsyncs,
            thread: Some(thread),
        })
    }

    /// Hands `bytes` (whole records, up to and including `lsn`) to the thread.
    ///
    /// # Errors
    /// The thread stopped (after a storage error); the bytes come back.
    pub fn submit(&self, bytes: Vec<u8>, lsn: Lsn) -> Result<(), Vec<u8>> {
        match &self.tx {
            Some(tx) => tx.send((bytes, lsn)).map_err(|e| e.0.0),
            None => Err(bytes),
        }
    }

    /// Syncs done so far (each covering one or more batches).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// A shared view of the sync counter.
    pub fn fsync_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.fsyncs)
    }

    /// Lets the thread write and sync what was submitted, then waits for it to end (it drops the
    /// storage, releasing the file's lock). Blocks the calling thread.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::log::MemStorage;
    use colony_core::{Attempt, JobId, TaskId};

    fn done(task: u32) -> Record<'static> {
        Record::TaskDone {
            job: JobId(0),
            task: TaskId(task),
            attempt: Attempt(0),
            output: b"output",
        }
    }

    fn collect(path: &Path) -> Result<(FileStorage, Vec<u32>), OpenLogError> {
        let mut tasks = Vec::new();
        let storage = open_log(path, |r| {
            if let Record::TaskDone { task, .. } = r {
                tasks.push(task.0);
            }
        })?;
        Ok((storage, tasks))
    }

    #[test]
    fn creates_appends_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt");
        let (mut s, tasks) = collect(&path).unwrap();
        assert!(s.recovery().created);
        assert!(tasks.is_empty());
        let mut bytes = Vec::new();
        for t in 0..3 {
            done(t).append_to(&mut bytes).unwrap();
        }
        s.append(&bytes).unwrap();
        s.sync().unwrap();
        drop(s);
        let (s, tasks) = collect(&path).unwrap();
        assert_eq!(tasks, [0, 1, 2]);
        let r = s.recovery();
        assert!(!r.created);
        assert_eq!((r.records, r.truncated), (3, 0));
    }

    #[test]
    fn torn_tail_is_truncated_and_foreign_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt");
        let (mut s, _) = collect(&path).unwrap();
        let mut bytes = Vec::new();
        done(0).append_to(&mut bytes).unwrap();
        let good = bytes.len();
        done(1).append_to(&mut bytes).unwrap();
        s.append(&bytes[..good + 5]).unwrap();
        s.sync().unwrap();
        drop(s);
        let (s, tasks) = collect(&path).unwrap();
        assert_eq!(tasks, [0]);
        assert_eq!(s.recovery().truncated, 5);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (FILE_HEADER.len() + good) as u64
        );
        drop(s);

        let foreign = dir.path().join("notes.txt");
        std::fs::write(&foreign, b"dear diary, today I wrote a log").unwrap();
        let err = collect(&foreign).unwrap_err();
        assert!(matches!(err, OpenLogError::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
        assert_eq!(
            std::fs::read(&foreign).unwrap(),
            b"dear diary, today I wrote a log"
        );
    }

    #[test]
    fn read_log_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt");
        let (mut s, _) = collect(&path).unwrap();
        let mut bytes = Vec::new();
        done(0).append_to(&mut bytes).unwrap();
        done(1).append_to(&mut bytes).unwrap();
        s.append(&bytes[..bytes.len() - 3]).unwrap();
        s.sync().unwrap();
        let before = std::fs::read(&path).unwrap();
        // Works while the log is open (and locked) elsewhere.
        let mut seen = 0;
        let r = read_log(&path, |_| seen += 1).unwrap();
        assert_eq!((seen, r.records), (1, 1));
        assert_eq!(r.truncated, bytes.len() as u64 / 2 - 3);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt");
        let (first, _) = collect(&path).unwrap();
        let err = collect(&path).unwrap_err();
        assert!(matches!(err, OpenLogError::Locked { .. }), "{err}");
        drop(first);
        collect(&path).unwrap();
    }

    #[test]
    fn group_commit_reports_durable_lsns_in_order() {
        let (tx, rx) = mpsc::channel();
        let commit = GroupCommit::spawn(
            MemStorage::from_bytes(FILE_HEADER.to_vec()).into_io(),
            move |r| {
                tx.send(r.map(|f| f.lsn).map_err(|e| e.to_string()))
                    .unwrap();
            },
        )
        .unwrap();
        for lsn in 1..=50u64 {
            let mut bytes = Vec::new();
            done(lsn as u32).append_to(&mut bytes).unwrap();
            commit.submit(bytes, Lsn(lsn)).unwrap();
        }
        let mut last = Lsn(0);
        while last < Lsn(50) {
            let lsn = rx.recv().unwrap().unwrap();
            assert!(lsn > last);
            last = lsn;
        }
        assert!(commit.fsyncs() >= 1 && commit.fsyncs() <= 50);
        commit.close();
    }

    #[test]
    fn group_commit_reports_a_failed_sync_and_stops() {
        let (tx, rx) = mpsc::channel();
        let mut storage = MemStorage::new().into_io();
        storage.1 = true;
        let commit = GroupCommit::spawn(storage, move |r| {
            tx.send(r.map(|f| f.lsn).map_err(|e| e.to_string()))
                .unwrap();
        })
        .unwrap();
        commit.submit(b"bytes".to_vec(), Lsn(1)).unwrap();
        assert_eq!(rx.recv().unwrap(), Err("disk on fire".to_owned()));
        // The thread stopped taking batches: a later one comes back.
        assert_eq!(
            commit.submit(b"more".to_vec(), Lsn(2)),
            Err(b"more".to_vec())
        );
        assert!(rx.recv().is_err(), "no report after the failure");
        commit.close();
    }

    /// `MemStorage` with `io::Error`, as `GroupCommit` wants; syncs fail if the flag is set.
    trait IntoIo {
        fn into_io(self) -> IoMem;
    }
    impl IntoIo for MemStorage {
        fn into_io(self) -> IoMem {
            IoMem(self, false)
        }
    }
    struct IoMem(MemStorage, bool);
    impl Storage for IoMem {
        type Error = io::Error;
        fn len(&mut self) -> io::Result<u64> {
            Ok(self.0.len().unwrap())
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.0
                .read_at(offset, buf)
                .map_err(|e| io::Error::other(e.to_string()))
        }
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.0
                .append(bytes)
                .map_err(|e| io::Error::other(e.to_string()))
        }
        fn sync(&mut self) -> io::Result<()> {
            if self.1 {
                return Err(io::Error::other("disk on fire"));
            }
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.0
                .truncate(len)
                .map_err(|e| io::Error::other(e.to_string()))
        }
    }
}
