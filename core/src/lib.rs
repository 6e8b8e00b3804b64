//! Colony's core: the wire protocol, the lease table, the DAG frontier, the checkpoint log, the
//! server's scheduler and the worker's state machine, with no I/O and no clock.
//!
//! ```text
//!   examples/ , hil-tests/          how people use it, and the proof on emulated boards
//!         |
//!   transport-tokio  (std)          server, worker, Loop + Executor APIs, `colony` CLI, monitor
//!   transport-embassy (no_std)      worker over embassy-net TCP (smoltcp), for microcontrollers
//!         |
//!   core (no_std, sans-IO)          wire protocol, lease table, DAG frontier, checkpoint log,
//!                                   job scheduler, worker state machine
//! ```
//!
//! Every state machine here takes `now` and bytes in and gives actions, bytes and
//! `poll_at() -> Option<Instant>` out, in the manner of smoltcp's `Interface::poll`. Transports
//! own sockets, clocks, files and threads, and nothing else.
//!
//! # Features
//! - `std` (default): implies `alloc`; std conveniences.
//! - `alloc`: the server side (scheduler, DAG, lease table, log replay into memory).
//! - `defmt` / `log`: internal logging and `defmt::Format` impls (mutually exclusive).
//!
//! Without `alloc` the crate holds the protocol, the log's record format and the worker state
//! machine, which need no allocator.
//!
//! # Panics
//! Nothing in this crate panics on input from a peer or from storage; clippy's `unwrap_used`,
//! `expect_used`, `panic` and `indexing_slicing` are denied outside tests.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[macro_use]
mod fmt;

pub mod crc;
#[cfg(feature = "alloc")]
pub mod dag;
pub mod id;
#[cfg(feature = "alloc")]
pub mod lease;
pub mod log;
pub mod proto;
#[cfg(feature = "alloc")]
pub mod sched;
pub mod time;
pub mod worker;

pub use id::{Attempt, JobId, LeaseId, Lsn, TaskId, WorkerId};
pub use time::{Duration, Instant};
