//! [`Storage`]: where a log's bytes live (a file, flash, memory), and [`MemStorage`].
//!
//! The log asks little of its storage, and `docs/log-format.md` states it: reads return what was
//! appended; an append may be torn at any byte by a crash; [`Storage::sync`] is a barrier after
//! which everything appended (and any truncation) survives a crash. Nothing else is assumed.

/// A byte store the log appends to and replays from.
///
/// Offsets are bytes from the start of the log, header included.
pub trait Storage {
    /// What the storage reports when an operation fails.
    type Error: core::fmt::Debug;

    /// The current length of the log in bytes, counting appends not yet synced.
    ///
    /// # Errors
    /// The storage cannot tell its length.
    fn len(&mut self) -> Result<u64, Self::Error>;

    /// Whether the log is empty (no header yet).
    ///
    /// # Errors
    /// The storage cannot tell its length.
    fn is_empty(&mut self) -> Result<bool, Self::Error> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    ///
    /// # Errors
    /// The range reaches past [`len`](Self::len), or the storage failed.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Appends `bytes` at the end.
    ///
    /// After an error, any prefix of `bytes` may have been appended: the caller must find the
    /// log's end again by replaying it.
    ///
    /// # Errors
    /// The storage failed or is full.
    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;

    /// Durability barrier: returns once every append and truncation before it survives a crash.
    ///
    /// # Errors
    /// The storage failed; what is durable is then unknown.
    fn sync(&mut self) -> Result<(), Self::Error>;

    /// Shortens the log to `len` bytes (a no-op if it is not longer). Durable after the next
    /// [`sync`](Self::sync).
    ///
    /// # Errors
    /// The storage failed.
    fn truncate(&mut self, len: u64) -> Result<(), Self::Error>;
}

impl<S: Storage + ?Sized> Storage for &mut S {
    type Error = S::Error;
    fn len(&mut self) -> Result<u64, Self::Error> {
        (**self).len()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read_at(offset, buf)
    }
    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        (**self).append(bytes)
    }
    fn sync(&mut self) -> Result<(), Self::Error> {
        (**self).sync()
    }
    fn truncate(&mut self, len: u64) -> Result<(), Self::Error> {
        (**self).truncate(len)
    }
}

#[cfg(feature = "alloc")]
pub(super) use mem::read_slice;
#[cfg(feature = "alloc")]
pub use mem::{MemError, MemStorage};

#[cfg(feature = "alloc")]
mod mem {
    use alloc::vec::Vec;
    use core::fmt;

    use super::Storage;

    /// A [`MemStorage`] or [`CrashStorage`](crate::log::CrashStorage) operation failed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[cfg_attr(feature = "defmt", derive(defmt::Format))]
    #[non_exhaustive]
    pub enum MemError {
        /// A read reached past the end of the log.
        OutOfBounds,
        /// A failure injected by the test (see [`CrashStorage::fail_after`](crate::log::CrashStorage::fail_after)).
        Injected,
    }

    impl fmt::Display for MemError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                MemError::OutOfBounds => "read past the end of the log",
                MemError::Injected => "injected storage failure",
            })
        }
    }

    impl core::error::Error for MemError {}

    /// Reads `buf.len()` bytes of `bytes` at `offset`.
    pub(in crate::log) fn read_slice(
        bytes: &[u8],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), MemError> {
        let start = usize::try_from(offset).map_err(|_| MemError::OutOfBounds)?;
        let end = start.checked_add(buf.len()).ok_or(MemError::OutOfBounds)?;
        let src = bytes.get(start..end).ok_or(MemError::OutOfBounds)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// A log held in memory; every append is durable at once. For tests and benchmarks.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct MemStorage {
        bytes: Vec<u8>,
    }

    impl MemStorage {
        /// An empty storage.
        pub const fn new() -> Self {
            MemStorage { bytes: Vec::new() }
        }

        /// A storage holding `bytes`.
        pub const fn from_bytes(bytes: Vec<u8>) -> Self {
            MemStorage { bytes }
        }

        /// The stored bytes.
        pub fn as_bytes(&self) -> &[u8] {
            &self.bytes
        }

        /// The stored bytes, by value.
        pub fn into_bytes(self) -> Vec<u8> {
            self.bytes
        }
    }

    impl Storage for MemStorage {
        type Error = MemError;

        fn len(&mut self) -> Result<u64, MemError> {
            Ok(self.bytes.len() as u64)
        }

        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), MemError> {
            read_slice(&self.bytes, offset, buf)
        }

        fn append(&mut self, bytes: &[u8]) -> Result<(), MemError> {
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }

        fn sync(&mut self) -> Result<(), MemError> {
            Ok(())
        }

        fn truncate(&mut self, len: u64) -> Result<(), MemError> {
            if let Ok(len) = usize::try_from(len) {
                self.bytes.truncate(len);
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_appends_truncates() {
            let mut s = MemStorage::new();
            s.append(b"hello").unwrap();
            s.append(b" world").unwrap();
            assert_eq!(s.len().unwrap(), 11);
            let mut buf = [0u8; 5];
            s.read_at(6, &mut buf).unwrap();
            assert_eq!(&buf, b"world");
            assert_eq!(s.read_at(7, &mut buf), Err(MemError::OutOfBounds));
            assert_eq!(s.read_at(u64::MAX, &mut buf), Err(MemError::OutOfBounds));
            s.read_at(11, &mut []).unwrap();
            s.truncate(5).unwrap();
            s.truncate(50).unwrap();
            s.sync().unwrap();
            assert_eq!(s.as_bytes(), b"hello");
            assert_eq!(s.into_bytes(), b"hello".to_vec());
        }
    }
}
