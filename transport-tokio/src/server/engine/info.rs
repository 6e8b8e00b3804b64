//! The engine's report of connected workers and task clients, for
//! [`ServerStatus`](crate::server::ServerStatus) (and so for the monitor).

use std::time::Instant as StdInstant;

use colony_core::WorkerId;

use super::Engine;
use crate::server::{ClientInfo, WorkerInfo};

impl Engine {
    /// Every connected worker, in join order.
    pub(super) fn worker_infos(&self) -> Vec<WorkerInfo> {
        let now = StdInstant::now();
        self.workers
            .iter()
            .enumerate()
            .filter_map(|(i, conn)| {
                let conn = conn.as_ref()?;
                let id = WorkerId(u32::try_from(i).ok()?);
                Some(WorkerInfo {
                    id,
                    name: conn.name.clone(),
                    platform: conn.platform,
                    address: conn.peer,
                    transport: conn.transport,
                    slots: conn.slots,
                    kinds: conn.kinds.clone(),
                    running: self.sched.held_by(id),
                    done: conn.done,
                    failed: conn.failed,
                    last_heartbeat: conn
                        .last_heartbeat
                        .map(|at| now.saturating_duration_since(at)),
                    connected_since: conn.since,
                })
            })
            .collect()
    }

    /// Every connected task client.
    pub(super) fn client_infos(&self) -> Vec<ClientInfo> {
        self.clients.infos()
    }
}
