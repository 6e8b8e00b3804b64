//! The worker's counters and its lease round-trip [`Histogram`], for `colony bench` and
//! monitoring.
//!
//! Invariants:
//! - Counters only grow; they are updated by the worker with relaxed atomics, so a reader sees
//!   each counter exact but not necessarily all of them at the same instant.
//! - A histogram bucket spans at most 1/16 of its lower bound (about 6 %): quantiles are exact
//!   below 16 µs and within 6 % above.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Buckets needed for every `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-linear histogram of microsecond samples (see the module docs for its precision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Sparse", into = "Sparse")]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u64,
    max: u64,
}

/// The serialized form: only the buckets that hold samples.
#[derive(Serialize, Deserialize)]
struct Sparse {
    /// `(bucket, count)` pairs.
    buckets: Vec<(u32, u64)>,
    sum: u64,
    max: u64,
}

impl From<Histogram> for Sparse {
    fn from(h: Histogram) -> Sparse {
        let buckets = h
            .counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (u32::try_from(i).unwrap_or(u32::MAX), *n))
            .collect();
        Sparse {
            buckets,
            sum: h.sum,
            max: h.max,
        }
    }
}

impl From<Sparse> for Histogram {
    fn from(s: Sparse) -> Histogram {
        let mut h = Histogram::new();
        for (i, n) in s.buckets {
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| h.counts.get_mut(i)) {
                *slot += n;
                h.count += n;
            }
        }
        h.sum = s.sum;
        h.max = s.max;
        h
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, micros: u64) {
        if let Some(slot) = self.counts.get_mut(bucket(micros)) {
            *slot += 1;
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(micros);
        self.max = self.max.max(micros);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest sample, 0 if none.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean sample, 0 if none.
    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }

    /// The sample at quantile `q` (0.0 to 1.0): the upper end of its bucket, never above the
    /// largest sample; 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // The rank of the wanted sample, from 1.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank within 1..=count, rounded up"
        )]
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }

    /// The median.
    pub fn p50(&self) -> u64 {
        self.quantile(0.5)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> u64 {
        self.quantile(0.99)
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    (shift as usize + 1) * SUB + ((v >> shift) as usize & (SUB - 1))
}

/// The largest value of bucket `i`.
fn upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = (i / SUB - 1) as u32;
    let lower = ((SUB + i % SUB) as u64) << shift;
    lower.saturating_add((1u64 << shift) - 1)
}

/// What a std worker counts. Shared between the worker and whoever reads it (see
/// [`WorkerConfig::stats`](super::WorkerConfig::stats)).
#[derive(Debug, Default)]
pub struct WorkerStats {
    granted: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    dropped: AtomicU64,
    acked: AtomicU64,
    connections: AtomicU64,
    lease_rtt: Mutex<Histogram>,
}

/// The counters at one moment, for printing or JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Leases received.
    pub granted: u64,
    /// Tasks that succeeded and whose output was sent.
    pub done: u64,
    /// Tasks whose failure was sent (panics included).
    pub failed: u64,
    /// Of the failures, tasks that panicked.
    pub panicked: u64,
    /// Answers dropped because their lease was gone (revoked, or its connection lost).
    pub dropped: u64,
    /// Answers the server acknowledged as durable.
    pub acked: u64,
    /// Connections that completed the handshake.
    pub connections: u64,
    /// Lease round trips measured (grant received to its answer's ack received).
    pub rtt_count: u64,
    /// Median lease round trip, microseconds.
    pub rtt_p50_us: u64,
    /// 99th-percentile lease round trip, microseconds.
    pub rtt_p99_us: u64,
    /// Longest lease round trip, microseconds.
    pub rtt_max_us: u64,
}

impl WorkerStats {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leases received.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Tasks that succeeded and whose output was sent.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Tasks whose failure was sent (panics included).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Tasks that panicked.
    pub fn panicked(&self) -> u64 {
        self.panicked.load(Ordering::Relaxed)
    }

    /// Answers dropped because their lease was gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Answers acknowledged by the server.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Connections that completed the handshake.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// A copy of the lease round-trip histogram (microseconds from receiving a grant to
    /// receiving the ack of its answer).
    pub fn lease_rtt(&self) -> Histogram {
        self.lease_rtt
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Every counter, and the round trip's quantiles.
    pub fn snapshot(&self) -> StatsSnapshot {
        let rtt = self.lease_rtt();
        StatsSnapshot {
            granted: self.granted(),
            done: self.done(),
            failed: self.failed(),
            panicked: self.panicked(),
            dropped: self.dropped(),
            acked: self.acked(),
            connections: self.connections(),
            rtt_count: rtt.count(),
            rtt_p50_us: rtt.p50(),
            rtt_p99_us: rtt.p99(),
            rtt_max_us: rtt.max(),
        }
    }

    pub(super) fn add_granted(&self, n: u64) {
        self.granted.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn add_panicked(&self, n: u64) {
        self.panicked.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Records acked round trips (one lock for the lot).
    pub(super) fn add_acked(&self, acked: u64, rtt_micros: &[u64]) {
        self.acked.fetch_add(acked, Ordering::Relaxed);
        if rtt_micros.is_empty() {
            return;
        }
        let mut h = self
            .lease_rtt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &s in rtt_micros {
            h.record(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bound_their_values() {
        let mut last = 0;
        for v in (0..5_000u64).chain([1 << 20, (1 << 20) + 12_345, u64::MAX / 3, u64::MAX]) {
            let b = bucket(v);
            assert!(b < BUCKETS, "{v}");
            assert!(upper(b) >= v, "{v}");
            if b > 0 {
                assert!(upper(b - 1) < v, "{v}");
            }
            if v < 5_000 {
                assert!(b == last || b == last + 1, "{v}");
                last = b;
            }
        }
        assert_eq!(bucket(15), 15);
        assert_eq!(bucket(16), 16);
    }

    #[test]
    fn quantiles_within_a_bucket() {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1000);
        assert_eq!(h.mean(), 500);
        let p50 = h.p50();
        assert!((500..=532).contains(&p50), "{p50}");
        let p99 = h.p99();
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 1000);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(Histogram::new().p99(), 0);
    }

    #[test]
    fn merge_and_serde_round_trip() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(3);
        b.record(70_000);
        b.record(3);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 70_000);
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.len() < 100, "{json}");
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn snapshot_reads_the_counters() {
        let s = WorkerStats::new();
        s.add_granted(4);
        s.add_done(2);
        s.add_failed(1);
        s.add_panicked(1);
        s.add_acked(3, &[10, 20, 30]);
        let snap = s.snapshot();
        assert_eq!(
            (snap.granted, snap.done, snap.failed, snap.acked),
            (4, 2, 1, 3)
        );
        assert_eq!(snap.rtt_count, 3);
        assert_eq!(snap.rtt_p50_us, 20);
        assert_eq!(snap.rtt_max_us, 30);
    }
}
