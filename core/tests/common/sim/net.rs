//! The simulated network: one link per connection, two byte pipes per link.
//!
//! Invariants: a pipe delivers its chunks in the order they were sent (it is TCP): a chunk is
//! never due before the one sent ahead of it, whatever its own latency. Dropping a link loses
//! everything still in flight on it.

use std::collections::VecDeque;

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
