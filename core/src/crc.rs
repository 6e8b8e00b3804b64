//! CRC-32C (Castagnoli), the checksum of frames and log records.
//!
//! Table-driven, slicing by 8 (8 KiB of tables); on bare-metal targets (`target_os = "none"`)
//! byte by byte from one 1 KiB table instead, since flash is scarce there and frames are small.
//! No unsafe, no allocation. Check value: `crc32c(b"123456789")` is `0xE306_9283`.

const POLY: u32 = 0x82F6_3B78; // reflected Castagnoli polynomial

#[cfg(not(target_os = "none"))]
const TABLES: [[u32; 256]; 8] = build_tables();

/// The byte-at-a-time table (the first of the eight).
const TABLE: [u32; 256] = build_tables()[0];

// Evaluated at compile time only: an out-of-bounds index would fail the build, not a run.
#[allow(clippy::indexing_slicing)]
const fn build_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut t = 1;
    while t < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[t - 1][i];
            tables[t][i] = (prev >> 8) ^ tables[0][(prev & 0xFF) as usize];
            i += 1;
        }
        t += 1;
    }
    tables
}

/// A running CRC-32C, for checksums over several slices.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// A fresh checksum.
    pub const fn new() -> Self {
        Crc32c(!0)
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        #[cfg(not(target_os = "none"))]
        self.update_sliced(bytes);
        #[cfg(target_os = "none")]
        self.update_bytewise(bytes);
    }

    // Every table index is masked to a byte, into a 256-entry table.
    #[allow(clippy::indexing_slicing)]
    fn update_bytewise(&mut self, bytes: &[u8]) {
        let mut crc = self.0;
        for &b in bytes {
            crc = (crc >> 8) ^ TABLE[((crc ^ u32::from(b)) & 0xFF) as usize];
        }
        self.0 = crc;
    }

    // Every table index is a byte (or masked to one) into a 256-entry table, and every chunk
    // from `chunks_exact(8)` has 8 bytes: no index here can be out of bounds.
    #[cfg(not(target_os = "none"))]
    #[allow(clippy::indexing_slicing)]
    fn update_sliced(&mut self, bytes: &[u8]) {
        let [t0, t1, t2, t3, t4, t5, t6, t7] = &TABLES;
        let mut crc = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
            crc = t7[(lo & 0xFF) as usize]
                ^ t6[((lo >> 8) & 0xFF) as usize]
                ^ t5[((lo >> 16) & 0xFF) as usize]
                ^ t4[(lo >> 24) as usize]
                ^ t3[c[4] as usize]
                ^ t2[c[5] as usize]
                ^ t1[c[6] as usize]
                ^ t0[c[7] as usize];
        }
        self.0 = crc;
        self.update_bytewise(chunks.remainder());
    }

    /// The checksum of everything fed so far.
    pub const fn finish(self) -> u32 {
        !self.0
    }
}

/// CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(bytes);
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn incremental_matches_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
            let mut crc = Crc32c::new();
            crc.update(&data[..split]);
            crc.update(&data[split..]);
            assert_eq!(crc.finish(), crc32c(&data), "split at {split}");
        }
    }

    #[test]
    fn bytewise_matches_sliced() {
        let data: Vec<u8> = (0..777u32).map(|i| (i * 13 + 5) as u8).collect();
        for len in [0, 1, 7, 8, 9, 64, 777] {
            let (mut bytewise, mut sliced) = (Crc32c::new(), Crc32c::new());
            bytewise.update_bytewise(&data[..len]);
            sliced.update_sliced(&data[..len]);
            assert_eq!(bytewise.finish(), sliced.finish(), "{len} bytes");
        }
    }
}
