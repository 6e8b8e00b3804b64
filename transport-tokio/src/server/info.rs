//! Who is connected, as a [`ServerStatus`](super::ServerStatus) reports it: one
//! [`WorkerInfo`] per worker and one [`ClientInfo`] per task client.
//!
//! These are snapshots taken by the engine; times are wall-clock for "since" (to show to people)
//! and elapsed durations for "how long ago" (immune to clock steps).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use colony_core::WorkerId;
use colony_core::proto::Platform;

use crate::net::Transport;

/// One connected worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its id on this server.
    pub id: WorkerId,
    /// The name it announced.
    pub name: String,
    /// The platform it announced.
    pub platform: Platform,
    /// Its address.
    pub address: SocketAddr,
    /// How its bytes travel.
    pub transport: Transport,
    /// How many tasks it runs at once (the credit it announced).
    pub slots: u32,
    /// The task kinds it runs.
    pub kinds: Vec<String>,
    /// Leases it holds now.
    pub running: u32,
    /// Completions it sent on this connection.
    pub done: u64,
    /// Failures it reported on this connection.
    pub failed: u64,
    /// How long ago its last heartbeat arrived (`None`: none yet).
    pub last_heartbeat: Option<Duration>,
    /// When it joined.
    pub connected_since: SystemTime,
}

/// One connected task client.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The name it announced.
    pub name: String,
    /// Its address.
    pub address: SocketAddr,
    /// How its bytes travel.
    pub transport: Transport,
    /// Tasks it submitted that have not settled.
    pub in_flight: u64,
    /// Jobs it created or is attached to.
    pub jobs: usize,
    /// When it connected.
    pub connected_since: SystemTime,
}
