//! The worker's configuration: who it is, what it runs, its secret, and its timing.
//!
//! Invariants (checked by [`Worker::new`](super::Worker::new), see [`ConfigError`]):
//! - at least one slot, and no more than the worker's `SLOTS` capacity;
//! - at most 65,536 task kinds (a grant names its kind by a `u16` index);
//! - a non-zero heartbeat interval and at least one interval of silence before the link is dead;
//! - the [`Join`](crate::proto::Join) that describes the worker fits the handshake's frame limit,
//!   and the frame limit the worker announces is at least that limit.

use core::fmt;

use crate::proto::{DEFAULT_MAX_FRAME, Platform};
use crate::time::Duration;

/// How long to wait before reconnecting: `initial`, then multiplied by `factor` after each failed
/// connection, never more than `max`. A connection that reaches `Welcome` resets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: u32,
}

impl Backoff {
    /// Starts at `initial`, doubles after each failure, and stops growing at `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            factor: 2,
        }
    }

    /// Sets the growth factor (1 keeps the delay constant; 0 is read as 1).
    #[must_use]
    pub const fn with_factor(self, factor: u32) -> Self {
        Backoff { factor, ..self }
    }

    /// The delay before the first retry.
    pub const fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The growth factor.
    pub const fn factor(&self) -> u32 {
        self.factor
    }

    /// The delay after `failures` consecutive failed connections (0 for the first retry):
    /// `min(initial * factor^failures, max)`, without overflow.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = u64::from(self.factor.max(1));
        let mut delay = self.initial.min(self.max);
        for _ in 0..failures {
            if delay >= self.max || factor == 1 {
                break;
            }
            delay = delay.saturating_mul(factor).min(self.max);
        }
        delay
    }
}

impl Default for Backoff {
    /// 100 ms, doubling, up to 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// Everything a worker says about itself and how it keeps its link alive.
///
/// Built with [`Config::new`] and the `with_*` methods; borrowed strings and the secret live as
/// long as the worker (`'c`), so nothing is copied or allocated.
#[derive(Clone, Copy)]
pub struct Config<'c> {
    name: &'c str,
    platform: Platform,
    kinds: &'c [&'c str],
    slots: u32,
    secret: &'c [u8],
    heartbeat: Duration,
    dead_after: u32,
    backoff: Backoff,
    max_frame: u32,
}

impl<'c> Config<'c> {
    /// A worker called `name` that proves `secret` and runs tasks of `kinds` (a grant names its
    /// kind by index into this list).
    ///
    /// Defaults: platform [`Platform::Other`], 1 slot, heartbeat every 5 s until the server's
    /// `Welcome` says otherwise, the link declared dead after 3 silent intervals, the default
    /// [`Backoff`], and a frame limit of [`DEFAULT_MAX_FRAME`].
    pub const fn new(name: &'c str, secret: &'c [u8], kinds: &'c [&'c str]) -> Self {
        Config {
            name,
            platform: Platform::Other,
            kinds,
            slots: 1,
            secret,
            heartbeat: Duration::from_secs(5),
            dead_after: 3,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Sets the platform announced to the server.
    #[must_use]
    pub const fn with_platform(self, platform: Platform) -> Self {
        Config { platform, ..self }
    }

    /// Sets how many tasks the worker runs at once (its credit).
    #[must_use]
    pub const fn with_slots(self, slots: u32) -> Self {
        Config { slots, ..self }
    }

    /// Sets the heartbeat interval used until the server's `Welcome` gives its own.
    #[must_use]
    pub const fn with_heartbeat(self, heartbeat: Duration) -> Self {
        Config { heartbeat, ..self }
    }

    /// Sets after how many heartbeat intervals without a single frame from the server the link
    /// is declared dead (the handshake gets the same allowance).
    #[must_use]
    pub const fn with_dead_after(self, intervals: u32) -> Self {
        Config {
            dead_after: intervals,
            ..self
        }
    }

    /// Sets the reconnect backoff.
    #[must_use]
    pub const fn with_backoff(self, backoff: Backoff) -> Self {
        Config { backoff, ..self }
    }

    /// Sets the largest frame payload this worker accepts; the transport's receive buffer must
    /// hold [`HEADER_LEN`](crate::proto::HEADER_LEN) more than this.
    #[must_use]
    pub const fn with_max_frame(self, max_frame: u32) -> Self {
        Config { max_frame, ..self }
    }

    /// The worker's name.
    pub const fn name(&self) -> &'c str {
        self.name
    }

    /// The platform announced.
    pub const fn platform(&self) -> Platform {
        self.platform
    }

    /// The task kinds, in index order.
    pub const fn kinds(&self) -> &'c [&'c str] {
        self.kinds
    }

    /// Tasks run at once.
    pub const fn slots(&self) -> u32 {
        self.slots
    }

    /// The heartbeat interval until the server gives its own.
    pub const fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Silent heartbeat intervals before the link is dead.
    pub const fn dead_after(&self) -> u32 {
        self.dead_after
    }

    /// The reconnect backoff.
    pub const fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// The largest frame payload accepted.
    pub const fn max_frame(&self) -> u32 {
        self.max_frame
    }

    pub(super) const fn secret(&self) -> &'c [u8] {
        self.secret
    }
}

/// Never prints the secret, only its length.
impl fmt::Debug for Config<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("platform", &self.platform)
            .field("kinds", &self.kinds)
            .field("slots", &self.slots)
            .field("secret_len", &self.secret.len())
            .field("heartbeat", &self.heartbeat)
            .field("dead_after", &self.dead_after)
            .field("backoff", &self.backoff)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

/// Never prints the secret, only its length.
#[cfg(feature = "defmt")]
impl defmt::Format for Config<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Config {{ name: {}, platform: {}, kinds: {}, slots: {}, secret_len: {}, heartbeat: {}, dead_after: {}, backoff: {}, max_frame: {} }}",
            self.name,
            self.platform,
            self.kinds,
            self.slots,
            self.secret.len(),
            self.heartbeat,
            self.dead_after,
            self.backoff,
            self.max_frame
        )
    }
}

/// A [`Config`] the worker cannot run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// `slots` is 0, or more than the worker's `SLOTS` capacity.
    Slots {
        /// The configured slots.
        slots: u32,
        /// The worker's capacity.
        capacity: usize,
    },
    /// More task kinds than a `u16` index can name.
    TooManyKinds,
    /// The heartbeat interval is zero, or the dead-link allowance is zero intervals.
    Heartbeat,
    /// The worker's `Join` (name and kinds) is larger than the handshake's frame limit allows.
    JoinTooLarge {
        /// The `Join` payload's length.
        len: usize,
        /// The handshake's limit.
        max: u32,
    },
    /// The frame limit is below the handshake's limit, which every peer must accept.
    MaxFrame {
        /// The configured limit.
        max_frame: u32,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Slots { slots, capacity } => {
                write!(
                    f,
                    "{slots} slots configured, the worker holds 1 to {capacity}"
                )
            }
            ConfigError::TooManyKinds => f.write_str("more than 65536 task kinds"),
            ConfigError::Heartbeat => {
                f.write_str("heartbeat interval and dead-link allowance must be non-zero")
            }
            ConfigError::JoinTooLarge { len, max } => {
                write!(
                    f,
                    "join message of {len} bytes exceeds the handshake limit of {max}"
                )
            }
            ConfigError::MaxFrame { max_frame } => {
                write!(
                    f,
                    "frame limit of {max_frame} bytes is below the handshake limit"
                )
            }
        }
    }
}

impl core::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u64> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn backoff_factor_one_and_zero_is_constant() {
        for factor in [0, 1] {
            let b =
                Backoff::new(Duration::from_millis(50), Duration::from_secs(1)).with_factor(factor);
            assert_eq!(b.delay(10), Duration::from_millis(50));
        }
    }

    #[test]
    fn backoff_initial_above_max_is_capped() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1)).with_factor(3);
        assert_eq!(b.delay(0), Duration::from_secs(1));
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = Config::new("w", b"hunter2-hunter2", &["sq"]);
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("secret_len: 15"), "{text}");
    }
}
