//! Colony's std transport: the server, the worker, the distributed for-loop, on tokio.
//!
//! - [`server`]: the TCP server that owns the core scheduler, the checkpoint log on a file with
//!   group commit, and the in-process handle the serving program uses.
//! - [`worker`]: the std worker, driving the core's worker state machine over TCP, TLS or
//!   WebSocket.
//! - [`forloop`]: the distributed for-loop (`for item in job`), built on both.
//! - [`executor`]: submit typed tasks ([`kind`]) to a standing server and collect their results.
//! - [`progress`]: the terminal progress bar.
//! - [`net`] and [`tls`]: the transports (TCP, TLS, WebSocket) a connector reaches a server by.
#![deny(missing_docs)]

pub mod conn;
pub mod executor;
pub mod forloop;
pub mod kind;
pub mod logfile;
pub mod net;
pub mod progress;
pub mod secret;
pub mod server;
pub mod tls;
pub mod worker;
