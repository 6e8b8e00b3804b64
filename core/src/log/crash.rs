//! [`CrashStorage`]: an in-memory [`Storage`] that keeps written and durable bytes apart, so tests
//! can crash it at any moment and recover what a real disk might have kept.
//!
//! Model: the durable image is what the last [`Storage::sync`] saw. Since then, reads see every
//! append and truncation. A [`Crash`] keeps the durable image, and then, depending on the mode,
//! nothing of the later changes, or any prefix of the un-synced appends, or a prefix followed by
//! garbage. A truncation since the last sync is lost with [`Crash::LoseUnsynced`] and kept by the
//! other modes. Nothing durable is ever lost.

use alloc::vec::Vec;

use super::storage::{MemError, Storage, read_slice};

/// How a [`CrashStorage`] crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Crash {
    /// Everything since the last sync is lost.
    LoseUnsynced,
    /// The first `n` un-synced bytes survive (all of them if `n` is larger).
    KeepUnsynced(usize),
    /// The first `keep` un-synced bytes survive, followed by `len` bytes of garbage drawn from
    /// `seed`; the file never grows past what was written.
    Garbage {
        /// Un-synced bytes kept intact.
        keep: usize,
        /// Garbage bytes after them.
        len: usize,
        /// Seed of the garbage.
        seed: u64,
    },
}

/// An in-memory storage with a crash button, for tests.
///
/// The durable image is what the last [`Storage::sync`] saw; reads see every later append and
/// truncation. [`crash`](Self::crash) keeps the durable image and, depending on the [`Crash`]
/// mode, nothing of the later changes, a prefix of the un-synced appends, or a prefix followed by
/// garbage. Nothing durable is ever lost. [`fail_after`](Self::fail_after) injects I/O errors.
#[derive(Clone, Debug, Default)]
pub struct CrashStorage {
    /// What reads see.
    written: Vec<u8>,
    /// `written[..stable]` is durable and unchanged since the last sync.
    stable: usize,
    /// Durable bytes after `stable` that a truncation since the last sync removed from `written`.
    truncated: Vec<u8>,
    /// Mutating operations left before injected failures start.
    fail_after: Option<u64>,
    syncs: u64,
}

/// splitmix64: a tiny deterministic generator for crash choices and garbage.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CrashStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// What reads see now, synced or not.
    pub fn as_bytes(&self) -> &[u8] {
        &self.written
    }

    /// The bytes a crash is sure to keep.
    pub fn durable_bytes(&self) -> Vec<u8> {
        let mut v = self.written.get(..self.stable).unwrap_or_default().to_vec();
        v.extend_from_slice(&self.truncated);
        v
    }

    /// Bytes appended since the last sync that a crash may lose.
    pub fn unsynced_len(&self) -> usize {
        self.written.len() - self.stable
    }

    /// How many times [`Storage::sync`] has succeeded.
    pub const fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Makes every mutating operation (append, sync, truncate) after the next `ops` ones fail
    /// with [`MemError::Injected`]; `None` stops the failures. A failing append writes the first
    /// half of its bytes.
    pub fn fail_after(&mut self, ops: Option<u64>) {
        self.fail_after = ops;
    }

    /// Counts one mutating operation; `true` if it is to fail.
    fn inject(&mut self) -> bool {
        match &mut self.fail_after {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }

    /// Crashes and restarts: afterwards the storage holds what survived, as if reopened.
    pub fn crash(&mut self, mode: Crash) {
        let unsynced = self.unsynced_len();
        match mode {
            Crash::LoseUnsynced => {
                self.written.truncate(self.stable);
                self.written.extend_from_slice(&self.truncated);
            }
            Crash::KeepUnsynced(n) => {
                self.written.truncate(self.stable + n.min(unsynced));
            }
            Crash::Garbage { keep, len, seed } => {
                let keep = keep.min(unsynced);
                let len = len.min(unsynced - keep);
                self.written.truncate(self.stable + keep);
                let mut state = seed;
                self.written
                    .extend((0..len).map(|_| splitmix(&mut state) as u8));
            }
        }
        self.stable = self.written.len();
        self.truncated.clear();
        self.fail_after = None;
    }

    /// Crashes in a way drawn from `seed` (any of the [`Crash`] modes, any split); returns the
    /// mode used, so a failing seed can be explained.
    pub fn crash_random(&mut self, seed: u64) -> Crash {
        let mut state = seed;
        let unsynced = self.unsynced_len() as u64;
        let pick = |state: &mut u64| (splitmix(state) % (unsynced + 1)) as usize;
        let mode = match splitmix(&mut state) % 4 {
            0 => Crash::LoseUnsynced,
            1 => Crash::KeepUnsynced(usize::MAX),
            2 => Crash::KeepUnsynced(pick(&mut state)),
            _ => Crash::Garbage {
                keep: pick(&mut state),
                len: pick(&mut state),
                seed: splitmix(&mut state),
            },
        };
        self.crash(mode);
        mode
    }
}

impl Storage for CrashStorage {
    type Error = MemError;

    fn len(&mut self) -> Result<u64, MemError> {
        Ok(self.written.len() as u64)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), MemError> {
        read_slice(&self.written, offset, buf)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), MemError> {
        if self.inject() {
            self.written
                .extend_from_slice(bytes.get(..bytes.len() / 2).unwrap_or_default());
            return Err(MemError::Injected);
        }
        self.written.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), MemError> {
        if self.inject() {
            return Err(MemError::Injected);
        }
        self.stable = self.written.len();
        self.truncated.clear();
        self.syncs += 1;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), MemError> {
        if self.inject() {
            return Err(MemError::Injected);
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < self.stable {
            let mut cut = self
                .written
                .get(len..self.stable)
                .unwrap_or_default()
                .to_vec();
            cut.extend_from_slice(&self.truncated);
            self.truncated = cut;
            self.stable = len;
        }
        self.written.truncate(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> CrashStorage {
        let mut s = CrashStorage::new();
        s.append(b"durable").unwrap();
        s.sync().unwrap();
        s.append(b"+tail").unwrap();
        s
    }

    #[test]
    fn lose_unsynced_keeps_durable() {
        let mut s = storage();
        assert_eq!(s.as_bytes(), b"durable+tail");
        assert_eq!(s.unsynced_len(), 5);
        s.crash(Crash::LoseUnsynced);
        assert_eq!(s.as_bytes(), b"durable");
        assert_eq!(s.unsynced_len(), 0);
    }

    #[test]
    fn keep_prefix_of_tail() {
        let mut s = storage();
        s.crash(Crash::KeepUnsynced(2));
        assert_eq!(s.as_bytes(), b"durable+t");
        let mut s = storage();
        s.crash(Crash::KeepUnsynced(99));
        assert_eq!(s.as_bytes(), b"durable+tail");
    }

    #[test]
    fn garbage_stays_within_written_length() {
        let mut s = storage();
        s.crash(Crash::Garbage {
            keep: 1,
            len: 100,
            seed: 3,
        });
        assert_eq!(s.as_bytes().len(), 12);
        assert_eq!(&s.as_bytes()[..8], b"durable+");
    }

    #[test]
    fn unsynced_truncate_is_undone_by_losing_crash() {
        let mut s = storage();
        s.truncate(3).unwrap();
        s.append(b"XY").unwrap();
        assert_eq!(s.as_bytes(), b"durXY");
        assert_eq!(s.durable_bytes(), b"durable");
        let mut lost = s.clone();
        lost.crash(Crash::LoseUnsynced);
        assert_eq!(lost.as_bytes(), b"durable");
        s.crash(Crash::KeepUnsynced(1));
        assert_eq!(s.as_bytes(), b"durX");
    }

    #[test]
    fn synced_truncate_is_durable() {
        let mut s = storage();
        s.truncate(3).unwrap();
        s.sync().unwrap();
        s.append(b"!").unwrap();
        s.crash(Crash::LoseUnsynced);
        assert_eq!(s.as_bytes(), b"dur");
        assert_eq!(s.syncs(), 2);
    }

    #[test]
    fn random_crashes_keep_durable_prefix() {
        for seed in 0..200 {
            let mut s = storage();
            let mode = s.crash_random(seed);
            assert!(s.as_bytes().starts_with(b"durable"), "{mode:?}");
            assert!(s.as_bytes().len() <= 12, "{mode:?}");
        }
    }

    #[test]
    fn injected_failures() {
        let mut s = CrashStorage::new();
        s.fail_after(Some(1));
        s.append(b"ok").unwrap();
        assert_eq!(s.append(b"abcd"), Err(MemError::Injected));
        assert_eq!(s.as_bytes(), b"okab");
        assert_eq!(s.sync(), Err(MemError::Injected));
        assert_eq!(s.truncate(0), Err(MemError::Injected));
        s.fail_after(None);
        s.sync().unwrap();
        assert_eq!(s.durable_bytes(), b"okab");
    }
}
