//! Colony's worker for microcontrollers: the core's worker state machine driven over
//! [embassy-net](embassy_net) TCP, with no allocator.
//!
//! ```text
//!   firmware (board crate, main)     network driver, time driver, RNG, the task functions
//!         |
//!   colony-embassy                   Worker: connect, read, run tasks, write, sleep, reconnect
//!         |                          TcpLink: one embassy-net TcpSocket at a time
//!   colony-core::worker              handshake, credit, leases, heartbeats, backoff (sans-IO)
//! ```
//!
//! This crate holds no protocol logic: framing, the HMAC handshake, credit, heartbeats and the
//! reconnect backoff all live in [`colony_core::worker`]. It adds what a board needs around it:
//! a static table of task kinds ([`TaskKind`]), buffers the caller owns ([`Buffers`]), the clock
//! (embassy-time), the socket ([`TcpLink`]), and randomness from the board ([`Entropy`]).
//!
//! ```no_run
//! use colony_core::proto::Platform;
//! use colony_core::worker::{Config, TaskError};
//! use colony_embassy::{kind_names, rx_len, tx_len, Buffers, TaskKind, TcpLink, Until, Worker};
//! use embassy_net::{Ipv4Address, Stack};
//!
//! fn crc(input: &[u8], output: &mut [u8]) -> Result<usize, TaskError<'static>> {
//!     let out = output.get_mut(..4).ok_or(TaskError::permanent("no room"))?;
//!     out.copy_from_slice(&colony_core::crc::crc32c(input).to_le_bytes());
//!     Ok(4)
//! }
//!
//! static KINDS: [TaskKind; 1] = [TaskKind::new("crc32c", crc)];
//! static NAMES: [&str; 1] = kind_names(&KINDS);
//! const MAX_FRAME: u32 = 1024;
//!
//! async fn work(stack: Stack<'_>, rng: &mut impl FnMut(&mut [u8])) {
//!     let (mut rx, mut tx, mut scratch) = ([0; rx_len(MAX_FRAME)], [0; tx_len(MAX_FRAME)], [0; 64]);
//!     let (mut socket_rx, mut socket_tx) = ([0; 1024], [0; 1024]);
//!     let config = Config::new("board-1", b"the colony's shared secret", &NAMES)
//!         .with_platform(Platform::Mcu)
//!         .with_slots(4)
//!         .with_max_frame(MAX_FRAME);
//!     let buffers = Buffers::new(&mut rx, &mut tx, &mut scratch);
//!     let Ok(mut worker) = Worker::<4>::new(config, &KINDS, buffers) else { return };
//!     let server = (Ipv4Address::new(10, 0, 2, 2), 7878);
//!     let mut link = TcpLink::new(stack, server, &mut socket_rx, &mut socket_tx);
//!     let finished = worker.run(&mut link, rng, Until::JobFinished).await;
//! }
//! ```
//!
//! # Features
//! - `defmt`: logging and `defmt::Format` impls through defmt (and defmt in the core and
//!   embassy-net).
//! - `log`: logging through the `log` crate. Exclusive with `defmt`.
//!
//! # Panics
//! Nothing here panics on input from the server or on a failing link; clippy's `unwrap_used`,
//! `expect_used`, `panic` and `indexing_slicing` are denied outside tests.
#![cfg_attr(not(test), no_std)]
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

#[macro_use]
mod fmt;

mod entropy;
mod kind;
mod link;
mod tcp;
mod worker;

pub use entropy::Entropy;
pub use kind::{TaskFn, TaskKind, kind_names};
pub use link::{Connection, Link, Shutdown};
pub use tcp::TcpLink;
pub use worker::{Buffers, Finished, SetupError, Stats, Until, Worker, rx_len, tx_len};
