//! The checkpoint log: an append-only file of checksummed records that lets a crashed server
//! resume a job without losing completed work.
//!
//! A log is a 16-byte file header ([`FILE_HEADER`]) followed by frames. Each frame is a 4-byte
//! little-endian body length, a 4-byte CRC-32C of the body, and the body: a record type byte and
//! the record's payload. `docs/log-format.md` gives every byte.
//!
//! Invariants:
//! - Records are only ever appended. A record's [`Lsn`](crate::id::Lsn) is its position: the first
//!   record is `Lsn(1)`, the next `Lsn(2)`, and so on; the number is implied, not stored.
//! - Replay ([`replay`], [`Replayer`]) accepts a prefix of the file and nothing else: it stops at
//!   the first frame that is torn, too long, fails its checksum, has an unknown type or a payload
//!   that does not decode, and reports the length to truncate to. It never panics and never yields
//!   a record that was not wholly and correctly written.
//! - A file whose header is not ours (wrong magic, unknown version) is an error, never truncated.
//!   Only a file shorter than the header whose bytes are a prefix of [`FILE_HEADER`] (a torn
//!   creation) counts as empty.
//! - Durability comes only from [`Storage::sync`]: a record is durable once a sync that followed
//!   its append has returned. `LogWriter` batches many records into one append and one sync
//!   (group commit) and reports the highest durable LSN.
//!
//! Opening a log, writing to it, and recovering it after a crash:
//!
//! ```
//! use colony_core::id::{Attempt, JobId, Lsn, TaskId};
//! use colony_core::log::{Crash, CrashStorage, LogWriter, Record, Storage, repair, replay};
//!
//! let mut storage = CrashStorage::new();
//! let mut buf = [0u8; 4096];
//!
//! // Open: replay what is there (nothing), then repair (writes and syncs the file header).
//! let found = replay(&mut storage, &mut buf, |_, _| {})?;
//! repair(&mut storage, &found)?;
//! let mut writer = LogWriter::new(found.last_lsn());
//!
//! // Group commit: two records, one append, one sync.
//! let done = |task| Record::TaskDone {
//!     job: JobId(1),
//!     task: TaskId(task),
//!     attempt: Attempt(0),
//!     output: b"ok",
//! };
//! writer.append(&done(0))?;
//! writer.append(&done(1))?;
//! assert_eq!(writer.flush(&mut storage)?, Lsn(2));
//!
//! // A third record is appended but never synced, and the machine dies mid-write.
//! writer.append(&done(2))?;
//! let (batch, _) = writer.take_pending(Vec::new());
//! storage.append(&batch)?;
//! storage.crash(Crash::KeepUnsynced(5));
//!
//! // Recovery yields exactly the two durable records and truncates the torn one.
//! let mut tasks = Vec::new();
//! let found = replay(&mut storage, &mut buf, |lsn, rec| {
//!     if let Record::TaskDone { task, .. } = rec {
//!         tasks.push((lsn, task));
//!     }
//! })?;
//! assert_eq!(tasks, [(Lsn(1), TaskId(0)), (Lsn(2), TaskId(1))]);
//! assert!(found.needs_repair());
//! repair(&mut storage, &found)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Encoding and replay need no allocator; `LogWriter`, `MemStorage`, `CrashStorage`,
//! `replay_alloc` and `Record::append_to` need the `alloc` feature.

mod fingerprint;
mod record;
mod replay;
mod storage;

#[cfg(feature = "alloc")]
mod crash;
#[cfg(feature = "alloc")]
mod writer;

use core::fmt;

#[cfg(feature = "alloc")]
pub use crash::{Crash, CrashStorage};
pub use fingerprint::{Fingerprint, fingerprint};
pub use record::{Record, parse_frame};
#[cfg(feature = "alloc")]
pub use replay::replay_alloc;
pub use replay::{Replayed, Replayer, repair, replay};
pub use storage::Storage;
#[cfg(feature = "alloc")]
pub use storage::{MemError, MemStorage};
#[cfg(feature = "alloc")]
pub use writer::LogWriter;

/// The first eight bytes of every log file.
pub const MAGIC: [u8; 8] = *b"COLONYLG";

/// The format version this code writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;

/// Length of the file header in bytes.
pub const FILE_HEADER_LEN: usize = 16;

/// The file header of a version-1 log: [`MAGIC`], [`FORMAT_VERSION`] little-endian, six reserved
/// zero bytes.
pub const FILE_HEADER: [u8; FILE_HEADER_LEN] = {
    let v = FORMAT_VERSION.to_le_bytes();
    let m = MAGIC;
    [
        m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], v[0], v[1], 0, 0, 0, 0, 0, 0,
    ]
};

/// Length of a frame's prefix: the body length (`u32`) and the body's CRC-32C (`u32`).
pub const FRAME_PREFIX_LEN: usize = 8;

/// The largest body (type byte plus payload) a frame may hold: 16 MiB.
///
/// A frame that claims a longer body is corrupt by definition; encoding refuses such records.
pub const MAX_BODY_LEN: u32 = 1 << 24;

/// Why replay stopped reading. Everything before the stop point is valid; everything from it on
/// is to be truncated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum StopReason {
    /// The log ends exactly after its last record (or after its header): nothing to truncate.
    End,
    /// The file ends inside the header, inside a frame's prefix, or before the end of the body the
    /// frame's length announces: an append was torn by a crash.
    Torn,
    /// A frame's length is zero or above [`MAX_BODY_LEN`].
    BadLength(u32),
    /// A body does not match its CRC-32C.
    Checksum,
    /// A body's checksum holds but its type byte names no record of this format version.
    UnknownType(u8),
    /// A body's checksum holds but its payload does not decode as its record type.
    Malformed,
}

impl StopReason {
    /// Whether replay reached the end of the file without meeting a damaged frame.
    pub const fn is_clean(self) -> bool {
        matches!(self, StopReason::End)
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::End => f.write_str("end of log"),
            StopReason::Torn => f.write_str("torn record at end of log"),
            StopReason::BadLength(len) => write!(f, "record length {len} out of range"),
            StopReason::Checksum => f.write_str("record checksum mismatch"),
            StopReason::UnknownType(ty) => write!(f, "unknown record type {ty}"),
            StopReason::Malformed => f.write_str("malformed record payload"),
        }
    }
}

/// The file does not start with the header of a log this code can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum HeaderError {
    /// The first eight bytes are not [`MAGIC`]: this is not a Colony log.
    BadMagic,
    /// The file is a Colony log of another format version.
    UnsupportedVersion(u16),
    /// The reserved header bytes are not zero.
    Reserved,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::BadMagic => f.write_str("not a colony log (bad magic)"),
            HeaderError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported log format version {v} (expected {FORMAT_VERSION})"
                )
            }
            HeaderError::Reserved => f.write_str("reserved log header bytes are not zero"),
        }
    }
}

impl core::error::Error for HeaderError {}

/// Replay could not go on. Unlike a [`StopReason`], nothing here says the log is damaged, so the
/// caller must not truncate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReplayError<E> {
    /// The storage failed.
    Storage(E),
    /// The file header is not one this code reads.
    Header(HeaderError),
    /// A frame with a good checksum is longer than the caller's buffer.
    BufferTooSmall {
        /// The buffer length that frame needs.
        needed: usize,
    },
}

impl<E: fmt::Display> fmt::Display for ReplayError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Storage(e) => write!(f, "log storage error: {e}"),
            ReplayError::Header(e) => write!(f, "bad log header: {e}"),
            ReplayError::BufferTooSmall { needed } => {
                write!(f, "replay buffer too small: a record needs {needed} bytes")
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for ReplayError<E> {}

impl<E> From<HeaderError> for ReplayError<E> {
    fn from(e: HeaderError) -> Self {
        ReplayError::Header(e)
    }
}

/// A record could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is shorter than [`Record::encoded_len`].
    BufferTooSmall {
        /// The bytes the record needs.
        needed: usize,
    },
    /// The record's body would exceed [`MAX_BODY_LEN`].
    TooLarge,
    /// A job header's name or kind is longer than 65,535 bytes.
    FieldTooLong,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: record needs {needed} bytes")
            }
            EncodeError::TooLarge => f.write_str("record exceeds the maximum body length"),
            EncodeError::FieldTooLong => f.write_str("job name or kind longer than 65535 bytes"),
        }
    }
}

impl core::error::Error for EncodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_bytes() {
        assert_eq!(&FILE_HEADER, b"COLONYLG\x01\x00\x00\x00\x00\x00\x00\x00");
    }

    #[test]
    fn errors_display_lowercase_without_period() {
        let texts = [
            StopReason::Torn.to_string(),
            StopReason::BadLength(0).to_string(),
            HeaderError::UnsupportedVersion(7).to_string(),
            ReplayError::<&str>::BufferTooSmall { needed: 9 }.to_string(),
            ReplayError::Storage("disk gone").to_string(),
            EncodeError::TooLarge.to_string(),
        ];
        for t in texts {
            assert!(t.chars().next().is_some_and(|c| c.is_lowercase()), "{t}");
            assert!(!t.ends_with('.'), "{t}");
        }
    }
}
