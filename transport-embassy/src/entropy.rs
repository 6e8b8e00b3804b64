//! Where the worker's randomness comes from: handshake nonces and reconnect jitter.
//!
//! The crate has no random source of its own. A board passes one: its hardware random number
//! generator on real silicon (the RP2040's ROSC random bit, the ESP32-C3's RNG fed by the radio,
//! an STM32's RNG peripheral). A nonce must never repeat under one secret, or a recorded
//! handshake could be replayed; an emulator has no true source, so its board support derives
//! one from timer noise and a counter, which is fit for tests only.

use colony_core::Duration;
use colony_core::proto::{NONCE_LEN, Nonce};

/// A source of random bytes.
///
/// Closures `FnMut(&mut [u8])` implement it, so a hardware RNG plugs in as
/// `|buf: &mut [u8]| rng.fill_bytes(buf)`.
pub trait Entropy {
    /// Fills `dest` with random bytes.
    fn fill_bytes(&mut self, dest: &mut [u8]);
}

impl<F: FnMut(&mut [u8])> Entropy for F {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self(dest);
    }
}

/// A fresh handshake nonce.
pub(crate) fn nonce<E: Entropy + ?Sized>(entropy: &mut E) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    entropy.fill_bytes(&mut nonce);
    nonce
}

/// A random delay in `[0, below)`, added to the reconnect backoff so that boards restarted
/// together do not reconnect in lockstep.
pub(crate) fn jitter<E: Entropy + ?Sized>(entropy: &mut E, below: Duration) -> Duration {
    let below = below.as_micros();
    if below == 0 {
        return Duration::ZERO;
    }
    let mut bytes = [0u8; 8];
    entropy.fill_bytes(&mut bytes);
    Duration::from_micros(u64::from_le_bytes(bytes) % below)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closures_are_sources() {
        let mut next = 0u8;
        let mut counter = |buf: &mut [u8]| {
            for b in buf {
                *b = next;
                next = next.wrapping_add(1);
            }
        };
        assert_eq!(nonce(&mut counter)[..4], [0, 1, 2, 3]);
        assert_eq!(nonce(&mut counter)[0], 16);
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let mut ones = |buf: &mut [u8]| buf.fill(0xff);
        let bound = Duration::from_millis(100);
        assert!(jitter(&mut ones, bound) < bound);
        assert_eq!(jitter(&mut ones, Duration::ZERO), Duration::ZERO);
    }
}
