//! The simulated network: one link per connection, two byte pipes per link.
//!
//! Invariants: a pipe delivers its chunks in the order they were sent (it is TCP): a chunk is
//! never due before the one sent ahead of it, whatever its own latency. Dropping a link loses
//! everything still in flight on it.

use std::collections::VecDeque;

use super::rng::Rng;
use super::{Dir, World};

/// One direction of a link: chunks of bytes, each due at a time.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    queue: VecDeque<(u64, Vec<u8>)>,
    last: u64,
}

impl Pipe {
    /// Queues `bytes` for delivery at `at`, or after the chunk ahead of it if that is later.
    pub(crate) fn push(&mut self, at: u64, bytes: Vec<u8>) {
        let at = at.max(self.last);
        self.last = at;
        self.queue.push_back((at, bytes));
    }

    /// When the next chunk is due.
    pub(crate) fn next_at(&self) -> Option<u64> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// The next chunk, if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<Vec<u8>> {
        if self.next_at()? <= now {
            self.queue.pop_front().map(|(_, bytes)| bytes)
        } else {
            None
        }
    }

    /// Loses everything in flight.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Whether nothing is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// One connection between a worker and the server.
#[derive(Debug)]
pub(crate) struct Link {
    /// The simulated worker at the far end.
    pub(crate) worker: usize,
    pub(crate) to_server: Pipe,
    pub(crate) to_worker: Pipe,
    /// Typical one-way latency, in microseconds.
    pub(crate) latency: u64,
    /// The worker closed its end after its last bytes: the server sees the close once the
    /// pipe towards it is empty.
    pub(crate) worker_closed: bool,
    /// Half-open: everything sent either way vanishes, and neither end is told.
    pub(crate) black_hole: bool,
}

impl Link {
    /// A fresh link to worker `worker`.
    pub(crate) fn new(worker: usize, latency: u64) -> Link {
        Link {
            worker,
            to_server: Pipe::default(),
            to_worker: Pipe::default(),
            latency,
            worker_closed: false,
            black_hole: false,
        }
    }
}

impl World {
    /// Sends `bytes` on `link`, possibly split into segments, each after a random latency but
    /// never before the bytes sent ahead of it.
    pub(super) fn send(&mut self, link: u64, dir: Dir, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let now = self.now;
        let spike = self.plan.spike_per_mille;
        let Some(l) = self.links.get_mut(&link).filter(|l| !l.black_hole) else {
            return;
        };
        self.stats.net_bytes += bytes.len() as u64;
        let latency = |rng: &mut Rng| {
            let mut d = 20 + l.latency + rng.below(l.latency + 1);
            if rng.chance(spike) {
                d += rng.range(10_000, 150_000);
            }
            d
        };
        let split = if bytes.len() > 1 && self.rng.chance(150) {
            1 + self.rng.index(bytes.len() - 1)
        } else {
            bytes.len()
        };
        let (head, tail) = bytes.split_at(split);
        for part in [head, tail] {
            if part.is_empty() {
                continue;
            }
            let at = now + latency(&mut self.rng);
            match dir {
                Dir::ToServer => l.to_server.push(at, part.to_vec()),
                Dir::ToWorker => l.to_worker.push(at, part.to_vec()),
            }
        }
    }

    /// A new connection from worker `i`; the server accepts it at once.
    pub(super) fn open_link(&mut self, i: usize) -> u64 {
        let id = self.next_link;
        self.next_link += 1;
        let latency = if self.rng.chance(100) {
            self.rng.range(2_000, 8_000)
        } else {
            self.rng.range(30, 1_500)
        };
        self.links.insert(id, Link::new(i, latency));
        if let Some(s) = self.server.as_mut() {
            s.accept(id, self.now);
        }
        self.stats.connections += 1;
        id
    }

    /// Cuts `link` at both ends at once: the server drops the connection, the worker notices
    /// that its connection is gone. On a half-open link the server is not told.
    pub(super) fn cut_link(&mut self, link: u64) {
        if !self.links.get(&link).is_some_and(|l| l.black_hole) {
            self.with_server(|w, s| w.server_close(s, link));
        }
        self.forget_link(link);
    }

    /// Removes `link`; if its worker still uses it, tells the worker it is gone.
    pub(super) fn forget_link(&mut self, link: u64) {
        let at = self.instant();
        if let Some(l) = self.links.remove(&link) {
            let jitter = self.jitter();
            let w = &mut self.workers[l.worker];
            if w.link == Some(link) {
                w.link = None;
                w.rx.clear();
                w.machine.disconnected(at, jitter);
            }
        }
    }
}
