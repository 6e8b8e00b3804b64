//! [`Record`]: the meaning of one log frame, and its hand-written little-endian encoding.
//!
//! A record borrows its strings and byte strings from the buffer it was decoded from. Encoding
//! writes exactly [`Record::encoded_len`] bytes; decoding checks every length against the body
//! and refuses trailing bytes, reserved flag bits and invalid UTF-8, so a body decodes to at most
//! one record and re-encodes to the same bytes.

use crate::crc::crc32c;
use crate::id::{Attempt, JobId, TaskId};

use super::{EncodeError, FRAME_PREFIX_LEN, MAX_BODY_LEN, StopReason};

const TYPE_JOB_HEADER: u8 = 1;
const TYPE_TASK_ADDED: u8 = 2;
const TYPE_TASK_DONE: u8 = 3;
const TYPE_TASK_FAILED: u8 = 4;
const TYPE_JOB_FINISHED: u8 = 5;

/// Bit 0 of a job header's flags: the job accepts more tasks after creation.
const FLAG_OPEN: u8 = 0x01;

/// Fixed part of a job header payload: job, fingerprint, tasks, edges, max attempts, flags.
const JOB_HEADER_FIXED: usize = 4 + 32 + 4 + 4 + 2 + 1;

/// One entry of the checkpoint log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Record<'a> {
    /// A job was created. Written once, before any other record of the job.
    JobHeader {
        /// The job.
        job: JobId,
        /// Hash of the job's kind, inputs and edges (see [`Fingerprint`](super::Fingerprint)).
        fingerprint: [u8; 32],
        /// The job's name.
        name: &'a str,
        /// The task kind every task of the job runs.
        kind: &'a str,
        /// Tasks given at creation.
        tasks: u32,
        /// Dependency edges given at creation.
        edges: u32,
        /// Leases a task may take before it fails.
        max_attempts: u16,
        /// Whether tasks may be added after creation (each then gets a [`Record::TaskAdded`]).
        open: bool,
    },
    /// A task was submitted to an open job after its creation.
    TaskAdded {
        /// The job.
        job: JobId,
        /// The new task's index.
        task: TaskId,
        /// The task's input.
        input: &'a [u8],
    },
    /// A task completed; the first completion of a task is the only one recorded.
    TaskDone {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// The attempt whose result this is.
        attempt: Attempt,
        /// The task's output.
        output: &'a [u8],
    },
    /// A task failed for good.
    TaskFailed {
        /// The job.
        job: JobId,
        /// The task.
        task: TaskId,
        /// How many attempts were made.
        attempts: u16,
        /// The last error.
        error: &'a str,
    },
    /// Every task of the job is done or failed; no further record of the job follows.
    JobFinished {
        /// The job.
        job: JobId,
    },
}

/// Where encoded bytes go: a slice (checked up front) or a `Vec`.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

struct SliceSink<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        // The caller checked the length up front, so this always matches.
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

#[cfg(feature = "alloc")]
impl Sink for alloc::vec::Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl<'a> Record<'a> {
    const fn type_byte(&self) -> u8 {
        match self {
            Record::JobHeader { .. } => TYPE_JOB_HEADER,
            Record::TaskAdded { .. } => TYPE_TASK_ADDED,
            Record::TaskDone { .. } => TYPE_TASK_DONE,
            Record::TaskFailed { .. } => TYPE_TASK_FAILED,
            Record::JobFinished { .. } => TYPE_JOB_FINISHED,
        }
    }

    /// The job the record belongs to.
    pub const fn job(&self) -> JobId {
        match self {
            Record::JobHeader { job, .. }
            | Record::TaskAdded { job, .. }
            | Record::TaskDone { job, .. }
            | Record::TaskFailed { job, .. }
            | Record::JobFinished { job } => *job,
        }
    }

    /// Length of the body: the type byte plus the payload. Saturates instead of overflowing.
    fn body_len(&self) -> usize {
        let payload = match self {
            Record::JobHeader { name, kind, .. } => (JOB_HEADER_FIXED + 4)
                .saturating_add(name.len())
                .saturating_add(kind.len()),
            Record::TaskAdded { input, .. } => 8usize.saturating_add(input.len()),
            Record::TaskDone { output, .. } => 10usize.saturating_add(output.len()),
            Record::TaskFailed { error, .. } => 10usize.saturating_add(error.len()),
            Record::JobFinished { .. } => 4,
        };
        payload.saturating_add(1)
    }

    /// The number of bytes [`encode`](Self::encode) writes: the frame prefix and the body.
    ///
    /// Saturates at `usize::MAX` for absurdly large records (which do not encode).
    pub fn encoded_len(&self) -> usize {
        self.body_len().saturating_add(FRAME_PREFIX_LEN)
    }

    /// Checks the limits of the format; returns the body length.
    fn check(&self) -> Result<u32, EncodeError> {
        if let Record::JobHeader { name, kind, .. } = self
            && (name.len() > usize::from(u16::MAX) || kind.len() > usize::from(u16::MAX))
        {
            return Err(EncodeError::FieldTooLong);
        }
        match u32::try_from(self.body_len()) {
            Ok(len) if len <= MAX_BODY_LEN => Ok(len),
            _ => Err(EncodeError::TooLarge),
        }
    }

    /// Writes the body (type byte and payload). Lengths were checked by [`check`](Self::check).
    fn write_body<S: Sink>(&self, s: &mut S) {
        s.put(&[self.type_byte()]);
        match *self {
            Record::JobHeader {
                job,
                ref fingerprint,
                name,
                kind,
                tasks,
                edges,
                max_attempts,
                open,
            } => {
                s.put(&job.0.to_le_bytes());
                s.put(fingerprint);
                s.put(&tasks.to_le_bytes());
                s.put(&edges.to_le_bytes());
                s.put(&max_attempts.to_le_bytes());
                s.put(&[if open { FLAG_OPEN } else { 0 }]);
                // Both fit: checked against u16::MAX before any byte is written.
                s.put(&(name.len() as u16).to_le_bytes());
                s.put(name.as_bytes());
                s.put(&(kind.len() as u16).to_le_bytes());
                s.put(kind.as_bytes());
            }
            Record::TaskAdded { job, task, input } => {
                s.put(&job.0.to_le_bytes());
                s.put(&task.0.to_le_bytes());
                s.put(input);
            }
            Record::TaskDone {
                job,
                task,
                attempt,
                output,
            } => {
                s.put(&job.0.to_le_bytes());
                s.put(&task.0.to_le_bytes());
                s.put(&attempt.0.to_le_bytes());
                s.put(output);
            }
            Record::TaskFailed {
                job,
                task,
                attempts,
                error,
            } => {
                s.put(&job.0.to_le_bytes());
                s.put(&task.0.to_le_bytes());
                s.put(&attempts.to_le_bytes());
                s.put(error.as_bytes());
            }
            Record::JobFinished { job } => s.put(&job.0.to_le_bytes()),
        }
    }

    /// Encodes the whole frame (length, CRC-32C, body) into the front of `out`; returns the bytes
    /// written, always [`encoded_len`](Self::encoded_len).
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] if `out` is shorter than the frame (nothing is written);
    /// [`EncodeError::TooLarge`] or [`EncodeError::FieldTooLong`] if the record breaks a limit of
    /// the format.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let body_len = self.check()?;
        let total = self.encoded_len();
        let Some((prefix, rest)) = out.split_first_chunk_mut::<FRAME_PREFIX_LEN>() else {
            return Err(EncodeError::BufferTooSmall { needed: total });
        };
        let Some(body) = rest.get_mut(..total - FRAME_PREFIX_LEN) else {
            return Err(EncodeError::BufferTooSmall { needed: total });
        };
        self.write_body(&mut SliceSink { buf: body, pos: 0 });
        let crc = crc32c(body);
        *prefix = join_prefix(body_len, crc);
        Ok(total)
    }

    /// Appends the whole frame to `out`; returns the bytes appended.
    ///
    /// This is the fast path for writers that gather records in their own buffer: one
    /// reservation, one pass to copy, one to checksum.
    ///
    /// # Errors
    /// [`EncodeError::TooLarge`] or [`EncodeError::FieldTooLong`] if the record breaks a limit of
    /// the format; `out` is then left as it was.
    #[cfg(feature = "alloc")]
    pub fn append_to(&self, out: &mut alloc::vec::Vec<u8>) -> Result<usize, EncodeError> {
        let body_len = self.check()?;
        let total = self.encoded_len();
        let start = out.len();
        out.reserve(total);
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        self.write_body(out);
        let crc = out.get(start + FRAME_PREFIX_LEN..).map_or(0, crc32c);
        if let Some(slot) = out.get_mut(start + 4..start + FRAME_PREFIX_LEN) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
        Ok(total)
    }

    /// Decodes a body (type byte and payload) whose checksum has been verified.
    ///
    /// # Errors
    /// [`StopReason::UnknownType`] or [`StopReason::Malformed`].
    pub(super) fn decode_body(body: &'a [u8]) -> Result<Self, StopReason> {
        let Some((&ty, payload)) = body.split_first() else {
            return Err(StopReason::Malformed);
        };
        let mut r = Reader(payload);
        let record = match ty {
            TYPE_JOB_HEADER => {
                let job = JobId(r.u32()?);
                let fingerprint = r.array::<32>()?;
                let tasks = r.u32()?;
                let edges = r.u32()?;
                let max_attempts = r.u16()?;
                let flags = r.u8()?;
                if flags & !FLAG_OPEN != 0 {
                    return Err(StopReason::Malformed);
                }
                let name_len = r.u16()?;
                let name = r.str(usize::from(name_len))?;
                let kind_len = r.u16()?;
                let kind = r.str(usize::from(kind_len))?;
                r.end()?;
                Record::JobHeader {
                    job,
                    fingerprint,
                    name,
                    kind,
                    tasks,
                    edges,
                    max_attempts,
                    open: flags & FLAG_OPEN != 0,
                }
            }
            TYPE_TASK_ADDED => Record::TaskAdded {
                job: JobId(r.u32()?),
                task: TaskId(r.u32()?),
                input: r.0,
            },
            TYPE_TASK_DONE => Record::TaskDone {
                job: JobId(r.u32()?),
                task: TaskId(r.u32()?),
                attempt: Attempt(r.u16()?),
                output: r.0,
            },
            TYPE_TASK_FAILED => {
                let job = JobId(r.u32()?);
                let task = TaskId(r.u32()?);
                let attempts = r.u16()?;
                let error = core::str::from_utf8(r.0).map_err(|_| StopReason::Malformed)?;
                Record::TaskFailed {
                    job,
                    task,
                    attempts,
                    error,
                }
            }
            TYPE_JOB_FINISHED => {
                let job = JobId(r.u32()?);
                r.end()?;
                Record::JobFinished { job }
            }
            other => return Err(StopReason::UnknownType(other)),
        };
        Ok(record)
    }
}

/// Reads little-endian fields off the front of a payload; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StopReason> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(StopReason::Malformed)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, StopReason> {
        self.array::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Result<u16, StopReason> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, StopReason> {
        self.array().map(u32::from_le_bytes)
    }
    fn str(&mut self, len: usize) -> Result<&'a str, StopReason> {
        if len > self.0.len() {
            return Err(StopReason::Malformed);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        core::str::from_utf8(head).map_err(|_| StopReason::Malformed)
    }
    fn end(&self) -> Result<(), StopReason> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(StopReason::Malformed)
        }
    }
}

/// Splits a frame prefix into the body length and the body's CRC-32C.
pub(super) fn split_prefix(prefix: &[u8; FRAME_PREFIX_LEN]) -> (u32, u32) {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *prefix;
    (
        u32::from_le_bytes([l0, l1, l2, l3]),
        u32::from_le_bytes([c0, c1, c2, c3]),
    )
}

/// A frame prefix from the body length and the body's CRC-32C.
pub(super) fn join_prefix(len: u32, crc: u32) -> [u8; FRAME_PREFIX_LEN] {
    let [l0, l1, l2, l3] = len.to_le_bytes();
    let [c0, c1, c2, c3] = crc.to_le_bytes();
    [l0, l1, l2, l3, c0, c1, c2, c3]
}

/// Whether a frame's announced body length is within the format's bounds.
pub(super) const fn body_len_ok(len: u32) -> bool {
    len != 0 && len <= MAX_BODY_LEN
}

/// Parses the frame at the front of `bytes` (records only: no file header); returns the record
/// and the frame's length.
///
/// This is replay's per-frame check for callers that hold the records in memory.
///
/// # Errors
/// The [`StopReason`] that makes replay stop here: [`StopReason::End`] if `bytes` is empty,
/// [`StopReason::Torn`] if it ends inside the frame, and otherwise the damage found.
pub fn parse_frame(bytes: &[u8]) -> Result<(Record<'_>, usize), StopReason> {
    if bytes.is_empty() {
        return Err(StopReason::End);
    }
    let (prefix, rest) = bytes
        .split_first_chunk::<FRAME_PREFIX_LEN>()
        .ok_or(StopReason::Torn)?;
    let (len, crc) = split_prefix(prefix);
    if !body_len_ok(len) {
        return Err(StopReason::BadLength(len));
    }
    let body = rest.get(..len as usize).ok_or(StopReason::Torn)?;
    if crc32c(body) != crc {
        return Err(StopReason::Checksum);
    }
    let record = Record::decode_body(body)?;
    Ok((record, FRAME_PREFIX_LEN + len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> [Record<'static>; 7] {
        [
            Record::JobHeader {
                job: JobId(7),
                fingerprint: [0xAB; 32],
                name: "resize",
                kind: "image.resize",
                tasks: 1000,
                edges: 3,
                max_attempts: 5,
                open: true,
            },
            Record::JobHeader {
                job: JobId(u32::MAX),
                fingerprint: [0; 32],
                name: "",
                kind: "",
                tasks: 0,
                edges: 0,
                max_attempts: 0,
                open: false,
            },
            Record::TaskAdded {
                job: JobId(7),
                task: TaskId(1000),
                input: b"input bytes",
            },
            Record::TaskDone {
                job: JobId(7),
                task: TaskId(3),
                attempt: Attempt(2),
                output: &[1, 2, 3, 4, 5, 6, 7, 8],
            },
            Record::TaskDone {
                job: JobId(7),
                task: TaskId(4),
                attempt: Attempt(0),
                output: &[],
            },
            Record::TaskFailed {
                job: JobId(7),
                task: TaskId(9),
                attempts: 5,
                error: "división by zero",
            },
            Record::JobFinished { job: JobId(7) },
        ]
    }

    #[test]
    fn round_trip_every_kind() {
        for rec in samples() {
            let mut buf = [0u8; 128];
            let n = rec.encode(&mut buf).unwrap();
            assert_eq!(n, rec.encoded_len());
            let (back, used) = parse_frame(&buf[..n]).unwrap();
            assert_eq!(back, rec);
            assert_eq!(used, n);
            // Extra bytes after the frame are the next frame's business.
            let (back, used) = parse_frame(&buf[..n + 5]).unwrap();
            assert_eq!((back, used), (rec, n));
        }
    }

    #[test]
    fn append_to_matches_encode() {
        let mut v = vec![0xEE];
        for rec in samples() {
            let mut buf = [0u8; 128];
            let n = rec.encode(&mut buf).unwrap();
            let before = v.len();
            assert_eq!(rec.append_to(&mut v).unwrap(), n);
            assert_eq!(&v[before..], &buf[..n]);
        }
    }

    #[test]
    fn golden_bytes_task_done() {
        let rec = Record::TaskDone {
            job: JobId(0x0102_0304),
            task: TaskId(0x0A0B_0C0D),
            attempt: Attempt(0x0201),
            output: b"hi",
        };
        let mut buf = [0u8; 32];
        let n = rec.encode(&mut buf).unwrap();
        let body = [3, 4, 3, 2, 1, 0x0D, 0x0C, 0x0B, 0x0A, 1, 2, b'h', b'i'];
        let mut want = vec![13, 0, 0, 0];
        want.extend_from_slice(&crc32c(&body).to_le_bytes());
        want.extend_from_slice(&body);
        assert_eq!(&buf[..n], &want[..]);
    }

    /// The example frame of `docs/log-format.md`, byte for byte.
    #[test]
    fn golden_frame_of_the_docs() {
        let rec = Record::TaskDone {
            job: JobId(1),
            task: TaskId(2),
            attempt: Attempt(0),
            output: b"hi",
        };
        let mut buf = [0u8; 32];
        let n = rec.encode(&mut buf).unwrap();
        let want = [
            0x0d, 0x00, 0x00, 0x00, 0x25, 0x6d, 0xd8, 0x4a, 0x03, 0x01, 0x00, 0x00, 0x00, 0x02,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x68, 0x69,
        ];
        assert_eq!(&buf[..n], &want);
    }

    #[test]
    fn golden_bytes_job_header() {
        let rec = Record::JobHeader {
            job: JobId(1),
            fingerprint: [0x11; 32],
            name: "n",
            kind: "kk",
            tasks: 2,
            edges: 1,
            max_attempts: 3,
            open: true,
        };
        let mut buf = [0u8; 128];
        let n = rec.encode(&mut buf).unwrap();
        let mut body = vec![1, 1, 0, 0, 0];
        body.extend_from_slice(&[0x11; 32]);
        body.extend_from_slice(&[
            2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 1, 0, b'n', 2, 0, b'k', b'k',
        ]);
        assert_eq!(&buf[..4], &(body.len() as u32).to_le_bytes());
        assert_eq!(&buf[4..8], &crc32c(&body).to_le_bytes());
        assert_eq!(&buf[8..n], &body[..]);
    }

    #[test]
    fn encode_refuses_short_buffer_and_oversize() {
        let rec = samples()[0];
        let mut buf = vec![0u8; rec.encoded_len() - 1];
        assert_eq!(
            rec.encode(&mut buf),
            Err(EncodeError::BufferTooSmall {
                needed: rec.encoded_len()
            })
        );
        assert!(buf.iter().all(|&b| b == 0));
        let big = vec![0u8; MAX_BODY_LEN as usize];
        let rec = Record::TaskAdded {
            job: JobId(1),
            task: TaskId(1),
            input: &big,
        };
        assert_eq!(rec.encode(&mut [0; 8]), Err(EncodeError::TooLarge));
        let mut v = Vec::new();
        assert_eq!(rec.append_to(&mut v), Err(EncodeError::TooLarge));
        assert!(v.is_empty());
        let long = "x".repeat(70_000);
        let rec = Record::JobHeader {
            job: JobId(1),
            fingerprint: [0; 32],
            name: &long,
            kind: "k",
            tasks: 0,
            edges: 0,
            max_attempts: 1,
            open: false,
        };
        assert_eq!(rec.append_to(&mut v), Err(EncodeError::FieldTooLong));
    }

    #[test]
    fn largest_body_round_trips() {
        let input = vec![7u8; MAX_BODY_LEN as usize - 9];
        let rec = Record::TaskAdded {
            job: JobId(1),
            task: TaskId(2),
            input: &input,
        };
        let mut v = Vec::new();
        rec.append_to(&mut v).unwrap();
        assert_eq!(parse_frame(&v).unwrap().0, rec);
    }

    /// Frames a body with a correct length and checksum.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&crc32c(body).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn parse_stops_on_damage() {
        assert_eq!(parse_frame(&[]), Err(StopReason::End));
        assert_eq!(parse_frame(&[1, 0, 0]), Err(StopReason::Torn));
        assert_eq!(parse_frame(&[0; 8]), Err(StopReason::BadLength(0)));
        let too_long = (MAX_BODY_LEN + 1).to_le_bytes();
        assert_eq!(
            parse_frame(&[
                too_long[0],
                too_long[1],
                too_long[2],
                too_long[3],
                0,
                0,
                0,
                0
            ]),
            Err(StopReason::BadLength(MAX_BODY_LEN + 1))
        );
        let good = frame(&[5, 1, 0, 0, 0]);
        assert_eq!(parse_frame(&good[..good.len() - 1]), Err(StopReason::Torn));
        let mut bad = good.clone();
        bad[9] ^= 0x40;
        assert_eq!(parse_frame(&bad), Err(StopReason::Checksum));
        assert_eq!(
            parse_frame(&frame(&[0, 1, 0, 0, 0])),
            Err(StopReason::UnknownType(0))
        );
        assert_eq!(parse_frame(&frame(&[6])), Err(StopReason::UnknownType(6)));
    }

    #[test]
    fn malformed_payloads() {
        let cases: &[&[u8]] = &[
            &[5, 1, 0, 0],                            // job finished, short
            &[5, 1, 0, 0, 0, 0],                      // job finished, trailing byte
            &[3, 1, 0, 0, 0, 2, 0, 0, 0, 1],          // task done, attempt cut
            &[2, 1, 0, 0, 0, 2, 0, 0],                // task added, task id cut
            &[4, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0xFF], // task failed, bad UTF-8
        ];
        for body in cases {
            assert_eq!(
                parse_frame(&frame(body)),
                Err(StopReason::Malformed),
                "{body:?}"
            );
        }
        // Job header: reserved flag bit, name overrunning the body, trailing byte, bad UTF-8.
        let mut v = Vec::new();
        samples()[0].append_to(&mut v).unwrap();
        let body = v[8..].to_vec();
        let flags_at = 1 + 46;
        let mut b = body.clone();
        b[flags_at] = 0x02;
        assert_eq!(parse_frame(&frame(&b)), Err(StopReason::Malformed));
        let mut b = body.clone();
        b[flags_at + 1] = 0xFF;
        assert_eq!(parse_frame(&frame(&b)), Err(StopReason::Malformed));
        let mut b = body.clone();
        b.push(0);
        assert_eq!(parse_frame(&frame(&b)), Err(StopReason::Malformed));
        let mut b = body.clone();
        b[flags_at + 3] = 0xC0;
        assert_eq!(parse_frame(&frame(&b)), Err(StopReason::Malformed));
        assert_eq!(parse_frame(&frame(&body)).unwrap().0, samples()[0]);
    }

    proptest::proptest! {
        /// Every record re-parses to itself, and every strict prefix of its frame is torn.
        #[test]
        fn any_record_round_trips(
            ty in 1u8..=5,
            job in proptest::prelude::any::<u32>(),
            task in proptest::prelude::any::<u32>(),
            small in proptest::prelude::any::<u16>(),
            fingerprint in proptest::prelude::any::<[u8; 32]>(),
            text in ".{0,40}",
            text2 in ".{0,40}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            open in proptest::prelude::any::<bool>(),
        ) {
            let rec = match ty {
                1 => Record::JobHeader {
                    job: JobId(job), fingerprint, name: &text, kind: &text2,
                    tasks: task, edges: job ^ task, max_attempts: small, open,
                },
                2 => Record::TaskAdded { job: JobId(job), task: TaskId(task), input: &bytes },
                3 => Record::TaskDone {
                    job: JobId(job), task: TaskId(task), attempt: Attempt(small), output: &bytes,
                },
                4 => Record::TaskFailed {
                    job: JobId(job), task: TaskId(task), attempts: small, error: &text,
                },
                _ => Record::JobFinished { job: JobId(job) },
            };
            let mut v = Vec::new();
            rec.append_to(&mut v).unwrap();
            proptest::prop_assert_eq!(v.len(), rec.encoded_len());
            proptest::prop_assert_eq!(parse_frame(&v), Ok((rec, v.len())));
            for cut in 0..v.len() {
                let want = if cut == 0 { StopReason::End } else { StopReason::Torn };
                proptest::prop_assert_eq!(parse_frame(&v[..cut]), Err(want));
            }
        }
    }

    #[test]
    fn job_of_every_record() {
        for rec in samples() {
            assert!(rec.job() == JobId(7) || rec.job() == JobId(u32::MAX));
        }
    }
}
