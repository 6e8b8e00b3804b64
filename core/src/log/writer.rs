//! [`LogWriter`]: group commit. Records gather in a pending buffer; one append and one sync make
//! them all durable together.
//!
//! Invariants: LSNs are handed out consecutively from `durable + 1`; every LSN up to
//! [`durable_lsn`](LogWriter::durable_lsn) was followed by a successful sync; the pending buffer
//! holds exactly the frames of LSNs `durable + 1 ..= last`.

use alloc::vec::Vec;

use crate::id::Lsn;

use super::{EncodeError, Record, Storage};

/// Gathers encoded records and makes them durable in batches.
///
/// Open a log by [`replay`](super::replay)ing it and [`repair`](super::repair)ing it, then start a
/// writer at the replay's [`last_lsn`](super::Replayed::last_lsn). Acknowledge a record to anyone
/// only once [`flush`](Self::flush) (or [`mark_durable`](Self::mark_durable)) has covered its LSN.
#[derive(Clone, Debug, Default)]
pub struct LogWriter {
    pending: Vec<u8>,
    last: Lsn,
    /// Highest LSN handed to storage, by `flush` or `take_pending`.
    taken: Lsn,
    durable: Lsn,
}

impl LogWriter {
    /// A writer for a log whose last durable record is `last_lsn` (`Lsn(0)` for an empty log).
    pub const fn new(last_lsn: Lsn) -> Self {
        LogWriter {
            pending: Vec::new(),
            last: last_lsn,
            taken: last_lsn,
            durable: last_lsn,
        }
    }

    /// Encodes `record` into the pending buffer; returns its LSN. Nothing is written yet.
    ///
    /// # Errors
    /// The record breaks a limit of the format ([`EncodeError::TooLarge`],
    /// [`EncodeError::FieldTooLong`]); it then takes no LSN and nothing is buffered.
    pub fn append(&mut self, record: &Record<'_>) -> Result<Lsn, EncodeError> {
        record.append_to(&mut self.pending)?;
        self.last = Lsn(self.last.0 + 1);
        Ok(self.last)
    }

    /// Bytes waiting for the next flush.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// The frames waiting for the next flush.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// LSN of the last record appended, durable or not.
    pub const fn last_lsn(&self) -> Lsn {
        self.last
    }

    /// LSN of the last record known durable.
    pub const fn durable_lsn(&self) -> Lsn {
        self.durable
    }

    /// Writes the pending records with one append and one sync; returns the highest durable LSN.
    /// With nothing pending, touches nothing.
    ///
    /// # Errors
    /// The storage failed. The pending records stay buffered and not durable, but the storage
    /// may hold any prefix of them: replay and repair the log before writing to it again.
    pub fn flush<S: Storage + ?Sized>(&mut self, storage: &mut S) -> Result<Lsn, S::Error> {
        if self.pending.is_empty() {
            return Ok(self.durable);
        }
        storage.append(&self.pending)?;
        storage.sync()?;
        self.pending.clear();
        self.taken = self.last;
        self.durable = self.last;
        Ok(self.durable)
    }

    /// Hands the pending frames to a caller that writes them elsewhere (on another thread, say)
    /// and returns the highest LSN among them; `spare` (cleared) becomes the new pending buffer,
    /// so two buffers can take turns without allocating.
    ///
    /// Once the bytes are appended and synced, report it with [`mark_durable`](Self::mark_durable).
    /// Batches must reach the storage in the order they were taken; do not mix this with
    /// [`flush`](Self::flush) while a taken batch is still unwritten.
    pub fn take_pending(&mut self, mut spare: Vec<u8>) -> (Vec<u8>, Lsn) {
        spare.clear();
        self.taken = self.last;
        (core::mem::replace(&mut self.pending, spare), self.last)
    }

    /// Records that every LSN up to `lsn` is durable (after a [`take_pending`](Self::take_pending)
    /// batch was synced). Never moves the durable LSN backwards, nor past the last LSN handed out.
    pub fn mark_durable(&mut self, lsn: Lsn) {
        self.durable = self.durable.max(lsn.min(self.taken));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Attempt, JobId, TaskId};
    use crate::log::{Crash, CrashStorage, MemError, repair, replay};

    fn done(task: u32) -> Record<'static> {
        Record::TaskDone {
            job: JobId(1),
            task: TaskId(task),
            attempt: Attempt(0),
            output: b"out",
        }
    }

    fn open(s: &mut CrashStorage) -> LogWriter {
        let r = replay(s, &mut [0; 256], |_, _| {}).unwrap();
        repair(s, &r).unwrap();
        LogWriter::new(r.last_lsn())
    }

    #[test]
    fn group_commit_one_sync_per_flush() {
        let mut s = CrashStorage::new();
        let mut w = open(&mut s);
        assert_eq!(s.syncs(), 1); // the header
        for t in 0..10 {
            assert_eq!(w.append(&done(t)).unwrap(), Lsn(u64::from(t) + 1));
        }
        assert_eq!(w.pending_bytes(), 10 * done(0).encoded_len());
        assert_eq!(w.durable_lsn(), Lsn(0));
        assert_eq!(w.flush(&mut s).unwrap(), Lsn(10));
        assert_eq!(s.syncs(), 2);
        assert_eq!(w.flush(&mut s).unwrap(), Lsn(10));
        assert_eq!(s.syncs(), 2);
        assert_eq!(w.pending_bytes(), 0);
        s.crash(Crash::LoseUnsynced);
        let w = open(&mut s);
        assert_eq!(w.last_lsn(), Lsn(10));
    }

    #[test]
    fn failed_flush_keeps_records_pending() {
        let mut s = CrashStorage::new();
        let mut w = open(&mut s);
        w.append(&done(0)).unwrap();
        s.fail_after(Some(1)); // the append succeeds, the sync fails
        assert_eq!(w.flush(&mut s), Err(MemError::Injected));
        assert_eq!(w.durable_lsn(), Lsn(0));
        assert_eq!(w.pending_bytes(), done(0).encoded_len());
    }

    #[test]
    fn take_pending_and_mark_durable() {
        let mut w = LogWriter::new(Lsn(5));
        w.append(&done(1)).unwrap();
        w.append(&done(2)).unwrap();
        let (batch, upto) = w.take_pending(Vec::with_capacity(64));
        assert_eq!(upto, Lsn(7));
        assert_eq!(batch.len(), 2 * done(0).encoded_len());
        assert_eq!(w.pending_bytes(), 0);
        w.append(&done(3)).unwrap();
        w.mark_durable(upto);
        assert_eq!(w.durable_lsn(), Lsn(7));
        w.mark_durable(Lsn(3));
        assert_eq!(w.durable_lsn(), Lsn(7));
        w.mark_durable(Lsn(100));
        assert_eq!(w.durable_lsn(), Lsn(7));
    }

    #[test]
    fn oversized_record_takes_no_lsn() {
        let big = vec![0u8; crate::log::MAX_BODY_LEN as usize];
        let mut w = LogWriter::new(Lsn(0));
        let rec = Record::TaskAdded {
            job: JobId(1),
            task: TaskId(0),
            input: &big,
        };
        assert_eq!(w.append(&rec), Err(EncodeError::TooLarge));
        assert_eq!(w.last_lsn(), Lsn(0));
        assert_eq!(w.pending_bytes(), 0);
    }
}
