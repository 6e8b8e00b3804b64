//! Randomness for handshake nonces on the emulator, which has no random number generator:
//! timer noise mixed with a counter. NOT cryptographic.
//!
//! Every call folds the free-running 25 MHz counter (read at a moment set by network traffic)
//! and a call counter into a SplitMix64 state seeded by the caller (say, the worker's name), so
//! nonces differ between calls and between boards. An emulator is largely deterministic,
//! though, and an observer could predict these bytes: that is fine for tests, and wrong for
//! anything else. Real boards must use their hardware RNG (RP2040: the ROSC random bit through
//! `embassy_rp::clocks::RoscRng`; ESP32-C3: `esp_hal::rng::Rng`, fed by the radio).

use crate::time;

/// The emulator's stand-in for a hardware RNG (see the module docs).
#[derive(Debug)]
pub struct TimerNoise {
    state: u64,
    calls: u64,
}

impl TimerNoise {
    /// A generator seeded with `seed` (e.g. the worker's name and MAC address).
    pub fn new(seed: &[u8]) -> Self {
        let mut state = 0x243f_6a88_85a3_08d3; // digits of pi
        for &byte in seed {
            state = mix(state ^ u64::from(byte));
        }
        TimerNoise { state, calls: 0 }
    }

    /// Fills `dest` with bytes from the generator.
    pub fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.calls = self.calls.wrapping_add(1);
        self.state ^= u64::from(time::raw_counter()) ^ (self.calls << 32);
        for chunk in dest.chunks_mut(8) {
            self.state = mix(self.state);
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// SplitMix64's step and finalizer.
fn mix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
