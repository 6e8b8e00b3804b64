//! Replay: read a log front to back, yield each good record, stop at the first damaged frame.
//!
//! Reads go through a caller-owned buffer in large chunks; a record is decoded in place and
//! borrows from that buffer. Frames longer than the buffer are checksummed in a streaming pass so
//! a short buffer never mistakes a good record for damage: it reports
//! [`ReplayError::BufferTooSmall`] instead (the alloc variant grows its buffer).
//!
//! Invariant: `pos` is the file offset just past the last good record, so when replay stops,
//! `pos` is where the log is to be truncated.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use crate::crc::{Crc32c, crc32c};
use crate::id::Lsn;

use super::record::{body_len_ok, split_prefix};
use super::{
    FILE_HEADER, FILE_HEADER_LEN, FORMAT_VERSION, FRAME_PREFIX_LEN, HeaderError, MAGIC, Record,
    ReplayError, StopReason, Storage,
};

/// Initial buffer of [`Replayer::new_alloc`] and [`replay_alloc`].
#[cfg(feature = "alloc")]
const ALLOC_BUF_LEN: usize = 64 * 1024;

enum Buf<'a> {
    Borrowed(&'a mut [u8]),
    #[cfg(feature = "alloc")]
    Owned(Vec<u8>),
}

fn bytes<'x>(buf: &'x Buf<'_>) -> &'x [u8] {
    match buf {
        Buf::Borrowed(b) => b,
        #[cfg(feature = "alloc")]
        Buf::Owned(v) => v,
    }
}

fn bytes_mut<'x>(buf: &'x mut Buf<'_>) -> &'x mut [u8] {
    match buf {
        Buf::Borrowed(b) => b,
        #[cfg(feature = "alloc")]
        Buf::Owned(v) => v,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Stopped(StopReason),
    Failed,
}

/// What replay found: how much of the log is good, and why it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Replayed {
    valid_len: u64,
    file_len: u64,
    last_lsn: Lsn,
    stop: StopReason,
}

impl Replayed {
    /// Length of the good prefix (header and whole, valid records): where to truncate.
    ///
    /// Zero if the file holds no complete header.
    pub const fn valid_len(&self) -> u64 {
        self.valid_len
    }

    /// Length of the file when replay began.
    pub const fn file_len(&self) -> u64 {
        self.file_len
    }

    /// LSN of the last good record, `Lsn(0)` if there is none. The next record appended gets the
    /// one after it.
    pub const fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// Number of good records.
    pub const fn records(&self) -> u64 {
        self.last_lsn.0
    }

    /// Why replay stopped.
    pub const fn stop(&self) -> StopReason {
        self.stop
    }

    /// Whether the file holds a complete, valid header.
    pub const fn has_header(&self) -> bool {
        self.valid_len >= FILE_HEADER_LEN as u64
    }

    /// Whether [`repair`] has anything to do: a missing or torn header, or bytes after the good
    /// prefix.
    pub const fn needs_repair(&self) -> bool {
        !self.has_header() || self.valid_len < self.file_len
    }
}

/// A pull-style replay: call [`next_record`](Self::next_record) until it returns `None`, then
/// read the [`outcome`](Self::outcome).
pub struct Replayer<'a, S: Storage + ?Sized> {
    storage: &'a mut S,
    buf: Buf<'a>,
    file_len: u64,
    /// File offset just past the last good record.
    pos: u64,
    /// `buf[start..end]` holds the file bytes from `pos` on.
    start: usize,
    end: usize,
    last_lsn: Lsn,
    state: State,
}

impl<'a, S: Storage + ?Sized> Replayer<'a, S> {
    /// Starts a replay of `storage` through `buf`, checking the file header.
    ///
    /// A buffer of 64 KiB reads efficiently; it must hold at least [`FILE_HEADER_LEN`] bytes, and
    /// any record longer than it is refused with [`ReplayError::BufferTooSmall`].
    ///
    /// # Errors
    /// [`ReplayError::Header`] if the file does not start with (a prefix of) a header this code
    /// reads; [`ReplayError::BufferTooSmall`] if `buf` is shorter than the header;
    /// [`ReplayError::Storage`] if the storage fails.
    pub fn new(storage: &'a mut S, buf: &'a mut [u8]) -> Result<Self, ReplayError<S::Error>> {
        Self::start(storage, Buf::Borrowed(buf))
    }

    /// Like [`new`](Self::new), with a buffer of its own that grows to fit any record.
    ///
    /// # Errors
    /// As [`new`](Self::new), except that [`ReplayError::BufferTooSmall`] never happens.
    #[cfg(feature = "alloc")]
    pub fn new_alloc(storage: &'a mut S) -> Result<Self, ReplayError<S::Error>> {
        Self::start(storage, Buf::Owned(alloc::vec![0; ALLOC_BUF_LEN]))
    }

    fn start(storage: &'a mut S, mut buf: Buf<'a>) -> Result<Self, ReplayError<S::Error>> {
        let file_len = storage.len().map_err(ReplayError::Storage)?;
        let have = usize::try_from(file_len.min(FILE_HEADER_LEN as u64)).unwrap_or(0);
        let dst =
            bytes_mut(&mut buf)
                .get_mut(..FILE_HEADER_LEN)
                .ok_or(ReplayError::BufferTooSmall {
                    needed: FILE_HEADER_LEN,
                })?;
        // Bytes the file lacks are taken from our own header, so a torn header passes the check.
        dst.copy_from_slice(&FILE_HEADER);
        if let Some(head) = dst.get_mut(..have) {
            storage.read_at(0, head).map_err(ReplayError::Storage)?;
        }
        let mut header = FILE_HEADER;
        header.copy_from_slice(dst);
        check_header(&header)?;
        let mut r = Replayer {
            storage,
            buf,
            file_len,
            pos: FILE_HEADER_LEN as u64,
            start: 0,
            end: 0,
            last_lsn: Lsn(0),
            state: State::Reading,
        };
        if file_len < FILE_HEADER_LEN as u64 {
            r.pos = 0;
            r.state = State::Stopped(if file_len == 0 {
                StopReason::End
            } else {
                StopReason::Torn
            });
        }
        Ok(r)
    }

    /// The next good record and its LSN, or `None` once replay has stopped (see
    /// [`outcome`](Self::outcome)).
    ///
    /// # Errors
    /// [`ReplayError::Storage`] if the storage fails, [`ReplayError::BufferTooSmall`] if a record
    /// with a good checksum does not fit the buffer. After an error this replayer is spent: it
    /// yields `None` and has no outcome, and the log must not be truncated on its account.
    pub fn next_record(&mut self) -> Result<Option<(Lsn, Record<'_>)>, ReplayError<S::Error>> {
        if self.state != State::Reading {
            return Ok(None);
        }
        match self.next_frame() {
            Ok(Ok(frame_len)) => {
                // The frame is in `buf[start..start + frame_len]` and its checksum holds.
                let body = bytes(&self.buf)
                    .get(self.start + FRAME_PREFIX_LEN..self.start + frame_len)
                    .unwrap_or_default();
                match Record::decode_body(body) {
                    Ok(record) => {
                        self.start += frame_len;
                        self.pos += frame_len as u64;
                        self.last_lsn = Lsn(self.last_lsn.0 + 1);
                        Ok(Some((self.last_lsn, record)))
                    }
                    Err(reason) => {
                        self.state = State::Stopped(reason);
                        Ok(None)
                    }
                }
            }
            Ok(Err(reason)) => {
                self.state = State::Stopped(reason);
                Ok(None)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// Brings the next frame into the buffer and checks its length and checksum; returns its
    /// length, or why replay stops here.
    fn next_frame(&mut self) -> Result<Result<usize, StopReason>, ReplayError<S::Error>> {
        let remaining = self.file_len - self.pos;
        if remaining == 0 {
            return Ok(Err(StopReason::End));
        }
        if remaining < FRAME_PREFIX_LEN as u64 {
            return Ok(Err(StopReason::Torn));
        }
        self.fill(FRAME_PREFIX_LEN).map_err(ReplayError::Storage)?;
        let prefix = bytes(&self.buf)
            .get(self.start..)
            .and_then(<[u8]>::first_chunk::<FRAME_PREFIX_LEN>)
            .copied()
            .unwrap_or_default();
        let (len, crc) = split_prefix(&prefix);
        if !body_len_ok(len) {
            return Ok(Err(StopReason::BadLength(len)));
        }
        let frame_len = FRAME_PREFIX_LEN as u64 + u64::from(len);
        if frame_len > remaining {
            return Ok(Err(StopReason::Torn));
        }
        let frame_len = usize::try_from(frame_len).unwrap_or(usize::MAX);
        if frame_len > bytes(&self.buf).len() && !self.grow(frame_len) {
            return self.check_oversized(len, crc, frame_len);
        }
        self.fill(frame_len).map_err(ReplayError::Storage)?;
        let body = bytes(&self.buf)
            .get(self.start + FRAME_PREFIX_LEN..self.start + frame_len)
            .unwrap_or_default();
        if crc32c(body) != crc {
            return Ok(Err(StopReason::Checksum));
        }
        Ok(Ok(frame_len))
    }

    /// Makes the buffer at least `len` long if it is ours; `false` if it cannot grow.
    fn grow(&mut self, len: usize) -> bool {
        match &mut self.buf {
            Buf::Borrowed(_) => {
                let _ = len;
                false
            }
            #[cfg(feature = "alloc")]
            Buf::Owned(v) => {
                if len == usize::MAX {
                    return false;
                }
                v.resize(len, 0);
                true
            }
        }
    }

    /// Checksums a frame longer than the buffer chunk by chunk. A bad checksum stops replay as
    /// damage; a good one means the buffer is too small, which is an error.
    fn check_oversized(
        &mut self,
        len: u32,
        crc: u32,
        frame_len: usize,
    ) -> Result<Result<usize, StopReason>, ReplayError<S::Error>> {
        let buf = bytes_mut(&mut self.buf);
        let mut sum = Crc32c::new();
        // The buffer holds the prefix and the start of the body, never the whole frame.
        sum.update(
            buf.get(self.start + FRAME_PREFIX_LEN..self.end)
                .unwrap_or_default(),
        );
        let mut at = self.pos + (self.end - self.start) as u64;
        let body_end = self.pos + FRAME_PREFIX_LEN as u64 + u64::from(len);
        while at < body_end {
            let n = usize::try_from(body_end - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let chunk = buf.get_mut(..n).unwrap_or_default();
            self.storage
                .read_at(at, chunk)
                .map_err(ReplayError::Storage)?;
            sum.update(chunk);
            at += n as u64;
        }
        self.start = 0;
        self.end = 0;
        if sum.finish() != crc {
            return Ok(Err(StopReason::Checksum));
        }
        Err(ReplayError::BufferTooSmall { needed: frame_len })
    }

    /// Makes `buf[start..end]` hold at least `need` bytes, reading as much as fits. The caller
    /// guarantees that `need` bytes remain in the file from `pos` and fit in the buffer.
    fn fill(&mut self, need: usize) -> Result<(), S::Error> {
        let avail = self.end - self.start;
        if avail >= need {
            return Ok(());
        }
        let buf = bytes_mut(&mut self.buf);
        if self.start + need > buf.len() {
            buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = avail;
        }
        let unread = self.file_len - self.pos - avail as u64;
        let room = buf.len() - self.end;
        let n = usize::try_from(unread).map_or(room, |u| u.min(room));
        let dst = buf.get_mut(self.end..self.end + n).unwrap_or_default();
        self.storage.read_at(self.pos + avail as u64, dst)?;
        self.end += n;
        Ok(())
    }

    /// LSN of the last record yielded so far, `Lsn(0)` before the first.
    pub const fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// What replay found, once [`next_record`](Self::next_record) has returned `None`; `None`
    /// before that or after an error.
    pub const fn outcome(&self) -> Option<Replayed> {
        match self.state {
            State::Stopped(stop) => Some(Replayed {
                valid_len: self.pos,
                file_len: self.file_len,
                last_lsn: self.last_lsn,
                stop,
            }),
            State::Reading | State::Failed => None,
        }
    }
}

fn check_header(header: &[u8; FILE_HEADER_LEN]) -> Result<(), HeaderError> {
    let (magic, rest) = header
        .split_first_chunk::<8>()
        .ok_or(HeaderError::BadMagic)?;
    if *magic != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let (version, reserved) = rest.split_first_chunk::<2>().ok_or(HeaderError::BadMagic)?;
    let version = u16::from_le_bytes(*version);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    if reserved.iter().any(|&b| b != 0) {
        return Err(HeaderError::Reserved);
    }
    Ok(())
}

/// Replays `storage` through `buf`, calling `f` with each good record in order; returns what it
/// found. See [`Replayer::new`] for the buffer.
///
/// # Errors
/// As [`Replayer::new`] and [`Replayer::next_record`]. On error, do not truncate the log.
pub fn replay<S, F>(
    storage: &mut S,
    buf: &mut [u8],
    f: F,
) -> Result<Replayed, ReplayError<S::Error>>
where
    S: Storage + ?Sized,
    F: FnMut(Lsn, Record<'_>),
{
    drive(Replayer::new(storage, buf)?, f)
}

/// [`replay`] with a buffer of its own that grows to fit any record.
///
/// # Errors
/// As [`replay`], except that [`ReplayError::BufferTooSmall`] never happens.
#[cfg(feature = "alloc")]
pub fn replay_alloc<S, F>(storage: &mut S, f: F) -> Result<Replayed, ReplayError<S::Error>>
where
    S: Storage + ?Sized,
    F: FnMut(Lsn, Record<'_>),
{
    drive(Replayer::new_alloc(storage)?, f)
}

fn drive<S, F>(mut r: Replayer<'_, S>, mut f: F) -> Result<Replayed, ReplayError<S::Error>>
where
    S: Storage + ?Sized,
    F: FnMut(Lsn, Record<'_>),
{
    while let Some((lsn, record)) = r.next_record()? {
        f(lsn, record);
    }
    // `next_record` returned `None` without an error, so replay has stopped.
    Ok(r.outcome().unwrap_or(Replayed {
        valid_len: r.pos,
        file_len: r.file_len,
        last_lsn: r.last_lsn,
        stop: StopReason::End,
    }))
}

/// Makes the log ready to append after `replayed`: truncates it to its good prefix, writes the
/// file header if it had none, and syncs. Does nothing if there is nothing to repair.
///
/// A fresh, empty storage is opened the same way: replay it, then repair it.
///
/// # Errors
/// The storage failed; the log is then to be replayed again before use.
pub fn repair<S: Storage + ?Sized>(storage: &mut S, replayed: &Replayed) -> Result<(), S::Error> {
    if !replayed.has_header() {
        storage.truncate(0)?;
        storage.append(&FILE_HEADER)?;
        return storage.sync();
    }
    if storage.len()? > replayed.valid_len() {
        storage.truncate(replayed.valid_len())?;
        return storage.sync();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::id::{Attempt, JobId, TaskId};
    use crate::log::MemStorage;

    fn done(task: u32, output: &[u8]) -> Record<'_> {
        Record::TaskDone {
            job: JobId(1),
            task: TaskId(task),
            attempt: Attempt(0),
            output,
        }
    }

    /// A log with a header and `n` task-done records whose outputs have `task` bytes each.
    fn log_of(n: u32) -> (MemStorage, Vec<Vec<u8>>) {
        let mut bytes = FILE_HEADER.to_vec();
        let mut outputs = Vec::new();
        for t in 0..n {
            let out = vec![t as u8; t as usize];
            done(t, &out).append_to(&mut bytes).unwrap();
            outputs.push(out);
        }
        (MemStorage::from_bytes(bytes), outputs)
    }

    fn collect(s: &mut MemStorage, buf: &mut [u8]) -> (Vec<(Lsn, Vec<u8>)>, Replayed) {
        let mut got = Vec::new();
        let r = replay(s, buf, |lsn, rec| {
            let Record::TaskDone { output, .. } = rec else {
                panic!("unexpected {rec:?}")
            };
            got.push((lsn, output.to_vec()));
        })
        .unwrap();
        (got, r)
    }

    #[test]
    fn replays_everything_with_any_buffer() {
        let (s, outputs) = log_of(40);
        for buf_len in [16, 17, 18, 31, 64, 100, 1000, 1 << 16] {
            let mut s = s.clone();
            let mut buf = vec![0; buf_len];
            // Records longer than the buffer need a bigger one; replay only what fits.
            let mut got = Vec::new();
            let res = replay(&mut s, &mut buf, |lsn, rec| {
                got.push((lsn, rec.encoded_len()))
            });
            let fits = outputs
                .iter()
                .take_while(|o| o.len() + 19 <= buf_len)
                .count();
            match res {
                Ok(r) => {
                    assert_eq!(fits, 40, "buf {buf_len}");
                    assert_eq!(r.stop(), StopReason::End);
                    assert_eq!(r.records(), 40);
                    assert_eq!(r.valid_len(), s.as_bytes().len() as u64);
                    assert!(!r.needs_repair());
                }
                Err(ReplayError::BufferTooSmall { needed }) => {
                    assert_eq!(got.len(), fits, "buf {buf_len}");
                    assert_eq!(needed, fits + 19);
                }
                Err(e) => panic!("{e:?}"),
            }
            for (i, (lsn, len)) in got.iter().enumerate() {
                assert_eq!(*lsn, Lsn(i as u64 + 1));
                assert_eq!(*len, outputs[i].len() + 19);
            }
        }
    }

    #[test]
    fn outputs_and_lsns_are_exact() {
        let (mut s, outputs) = log_of(30);
        let (got_all, r) = collect(&mut s, &mut [0; 4096]);
        assert_eq!(got_all.len(), 30);
        for (i, (lsn, out)) in got_all.iter().enumerate() {
            assert_eq!(*lsn, Lsn(i as u64 + 1));
            assert_eq!(out, &outputs[i]);
        }
        assert_eq!(r.last_lsn(), Lsn(30));
    }

    #[test]
    fn alloc_buffer_grows_for_big_records() {
        let mut bytes = FILE_HEADER.to_vec();
        let big = vec![9u8; 200_000];
        done(0, &big).append_to(&mut bytes).unwrap();
        done(1, b"x").append_to(&mut bytes).unwrap();
        let mut s = MemStorage::from_bytes(bytes);
        let mut lens = Vec::new();
        let r = replay_alloc(&mut s, |_, rec| lens.push(rec.encoded_len())).unwrap();
        assert_eq!(lens, vec![200_019, 20]);
        assert_eq!(r.stop(), StopReason::End);
    }

    #[test]
    fn oversized_corrupt_frame_is_damage_not_error() {
        let mut bytes = FILE_HEADER.to_vec();
        done(0, b"ok").append_to(&mut bytes).unwrap();
        let good_len = bytes.len() as u64;
        done(1, &[5u8; 300]).append_to(&mut bytes).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut s = MemStorage::from_bytes(bytes);
        let mut n = 0;
        let r = replay(&mut s, &mut [0; 64], |_, _| n += 1).unwrap();
        assert_eq!(
            (n, r.stop(), r.valid_len()),
            (1, StopReason::Checksum, good_len)
        );
    }

    #[test]
    fn empty_and_torn_headers_count_as_empty() {
        for len in 0..FILE_HEADER_LEN {
            let mut s = MemStorage::from_bytes(FILE_HEADER[..len].to_vec());
            let r = replay(&mut s, &mut [0; 64], |_, _| panic!("no records")).unwrap();
            assert_eq!(r.valid_len(), 0);
            assert!(!r.has_header());
            assert!(r.needs_repair());
            let want = if len == 0 {
                StopReason::End
            } else {
                StopReason::Torn
            };
            assert_eq!(r.stop(), want);
            repair(&mut s, &r).unwrap();
            assert_eq!(s.as_bytes(), &FILE_HEADER);
        }
    }

    #[test]
    fn foreign_headers_are_errors() {
        let mut v2 = FILE_HEADER;
        v2[8] = 2;
        let mut reserved = FILE_HEADER;
        reserved[15] = 1;
        let cases: [(&[u8], HeaderError); 5] = [
            (b"NOTALOG!", HeaderError::BadMagic),
            (b"CX", HeaderError::BadMagic),
            (b"COLONYLG\x02", HeaderError::UnsupportedVersion(2)),
            (&v2, HeaderError::UnsupportedVersion(2)),
            (&reserved, HeaderError::Reserved),
        ];
        for (bytes, want) in cases {
            let mut s = MemStorage::from_bytes(bytes.to_vec());
            let got = replay(&mut s, &mut [0; 64], |_, _| {});
            assert_eq!(got, Err(ReplayError::Header(want)), "{bytes:?}");
            assert_eq!(s.as_bytes(), bytes);
        }
        let mut s = MemStorage::from_bytes(b"x".to_vec());
        assert_eq!(
            replay(&mut s, &mut [0; 15], |_, _| {}),
            Err(ReplayError::BufferTooSmall { needed: 16 })
        );
    }

    #[test]
    fn repair_truncates_damage_once() {
        let (s, _) = log_of(5);
        let mut bytes = s.into_bytes();
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&[0xFF; 7]);
        let mut s = MemStorage::from_bytes(bytes);
        let r = replay(&mut s, &mut [0; 64], |_, _| {}).unwrap();
        assert_eq!(
            (r.stop(), r.valid_len(), r.records()),
            (StopReason::Torn, good, 5)
        );
        repair(&mut s, &r).unwrap();
        assert_eq!(s.as_bytes().len() as u64, good);
        let r = replay(&mut s, &mut [0; 64], |_, _| {}).unwrap();
        assert!(!r.needs_repair());
        repair(&mut s, &r).unwrap();
        assert_eq!(s.as_bytes().len() as u64, good);
    }

    #[test]
    fn pull_style_and_outcome() {
        let (mut s, _) = log_of(3);
        let mut buf = [0u8; 64];
        let mut r = Replayer::new(&mut s, &mut buf).unwrap();
        assert_eq!(r.outcome(), None);
        let mut n = 0;
        while let Some((lsn, _)) = r.next_record().unwrap() {
            n += 1;
            assert_eq!(lsn, r.last_lsn());
        }
        assert_eq!(n, 3);
        assert_eq!(r.next_record().unwrap(), None);
        assert_eq!(r.outcome().unwrap().stop(), StopReason::End);
    }

    #[test]
    fn zeroed_tail_stops_at_bad_length() {
        let (s, _) = log_of(2);
        let mut bytes = s.into_bytes();
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 4096]);
        let mut s = MemStorage::from_bytes(bytes);
        let r = replay(&mut s, &mut [0; 64], |_, _| {}).unwrap();
        assert_eq!((r.stop(), r.valid_len()), (StopReason::BadLength(0), good));
    }
}
