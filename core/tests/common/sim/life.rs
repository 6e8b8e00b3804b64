//! The server's life on its disk: start (replay, repair, resume the jobs), crash (memory and
//! connections lost, the un-synced log tail at risk), and the log's group commit.
//!
//! Invariants: one fsync is in flight at a time and covers exactly the bytes appended before it
//! started, so the scheduler hears `durable(lsn)` for nothing that is not durable; a restarted
//! server's view (settled counts, task states) matches the durable log it replayed; job ids stay
//! the same across restarts.

use colony_core::log::{Record, Storage, repair, replay_alloc};
use colony_core::sched::{JobDef, SchedConfig, Scheduler, TaskState};
use colony_core::{Duration, TaskId};

use super::check::{Check, bail};
use super::server::Server;
use super::{LEASE_US, Mode, World};

impl World {
    /// Starts a server on what the disk holds: replay, repair, resume the jobs.
    pub(super) fn start_server(&mut self) -> Check {
        let config = SchedConfig::default().lease_duration(Duration::from_micros(LEASE_US));
        let mut sched = Scheduler::new(config);
        let forget = self.mode == Mode::ForgetDoneOnReplay;
        let mut refused = None;
        let replayed = replay_alloc(&mut self.storage, |_, record| {
            if refused.is_some() || forget && matches!(record, Record::TaskDone { .. }) {
                return;
            }
            if let Err(e) = sched.replay(&record) {
                refused = Some(e);
            }
        })
        .map_err(|e| format!("log replay failed: {e}"))?;
        if let Some(e) = refused {
            bail!("the scheduler refused a replayed record: {e}");
        }
        repair(&mut self.storage, &replayed).map_err(|e| format!("log repair failed: {e}"))?;
        sched.replay_done();
        if let Some((durable, unsynced)) = self.crashed.take().filter(|_| !self.verifying) {
            let kept = replayed.valid_len().saturating_sub(durable);
            self.stats.tail_bytes_kept += kept;
            self.stats.tail_bytes_lost += unsynced.saturating_sub(kept);
        }
        self.oracle.rescan(self.storage.as_bytes())?;
        let mut resumed = 0;
        for (j, job) in self.oracle.jobs.iter().enumerate() {
            let def = JobDef::new(&job.name, job.kind, job.inputs.clone())
                .edges(&job.edges)
                .max_attempts(job.max_attempts);
            let created = sched
                .create_job(def)
                .map_err(|e| format!("job {j} could not be created: {e}"))?;
            let d = &self.oracle.durable;
            if self.cross_checks && created.already_done != d.done_count[j] + d.failed_count[j] {
                bail!(
                    "job {j} resumed with {} tasks settled; the durable log has {}",
                    created.already_done,
                    d.done_count[j] + d.failed_count[j]
                );
            }
            if let Some(id) = self.job_ids[j]
                && id != created.job
            {
                bail!("job {j} came back as {} (was {id})", created.job);
            }
            self.job_ids[j] = Some(created.job);
            resumed += created.already_done;
        }
        let server = Server::new(sched);
        if self.cross_checks {
            server.check_tasks(&self.oracle, &self.job_ids)?;
        }
        self.server = Some(server);
        if !self.verifying && (self.stats.fsyncs > 0 || self.stats.server_crashes > 0) {
            self.stats.resumed_settled += u64::from(resumed);
            self.event(format!(
                "server starts on a {}-byte log: {} records, {resumed} tasks already settled",
                replayed.valid_len(),
                self.oracle.durable.records
            ));
        }
        Ok(())
    }

    /// The server process dies: memory, connections and the unsynced log tail are at risk.
    pub(super) fn crash_server(&mut self) {
        if self.server.take().is_none() {
            return;
        }
        let links: Vec<u64> = self.links.keys().copied().collect();
        for link in links {
            self.forget_link(link);
        }
        let durable = self.storage.durable_bytes().len() as u64;
        let unsynced = self.storage.unsynced_len() as u64;
        let how = self.storage.crash_random(self.rng.next_u64());
        self.crashed = Some((durable, unsynced));
        let down = self.rng.range(1_000, 600_000);
        self.restart_at = Some(self.now + down);
        if self.verifying {
            return;
        }
        self.stats.server_crashes += 1;
        self.event(format!(
            "SERVER CRASHES with {unsynced} log bytes unsynced ({how:?}); back in {} ms",
            down / 1000
        ));
    }

    /// Completes the fsync in flight if it is due: the written records become durable.
    pub(super) fn fsync_due(&mut self) -> Check {
        let now = self.now;
        let Some((lsn, _)) = self
            .server
            .as_ref()
            .and_then(|s| s.fsync)
            .filter(|&(_, at)| at <= now)
        else {
            return Ok(());
        };
        self.storage
            .sync()
            .map_err(|e| format!("fsync failed: {e}"))?;
        self.stats.fsyncs += 1;
        let fresh = self.oracle.scan(self.storage.as_bytes())?;
        let Some(s) = self.server.as_mut() else {
            return Ok(());
        };
        s.fsync = None;
        s.sched.durable(lsn);
        trace!(
            self,
            "fsync done up to {lsn}: {} tasks newly settled",
            fresh.len()
        );
        if !self.cross_checks {
            return Ok(());
        }
        for (j, t) in fresh {
            let Some(id) = self.job_ids[j] else {
                bail!("job {j} is durable before it was created");
            };
            let state = s.sched.task_state(id, TaskId(t));
            if !matches!(state, Some(TaskState::Done | TaskState::Failed)) {
                bail!("job {j} task {t} is durably settled but the scheduler has it {state:?}");
            }
        }
        Ok(())
    }

    /// Moves new log bytes to the disk and starts an fsync, one at a time (group commit).
    pub(super) fn pump_log(&mut self, s: &mut Server) -> Check {
        let mut bytes = Vec::new();
        if let Some(lsn) = s.sched.take_log(&mut bytes) {
            s.log_buf.extend_from_slice(&bytes);
            s.log_lsn = Some(lsn);
        }
        if s.fsync.is_none()
            && let Some(lsn) = s.log_lsn.take()
        {
            self.storage
                .append(&s.log_buf)
                .map_err(|e| format!("log append failed: {e}"))?;
            self.stats.log_bytes += s.log_buf.len() as u64;
            s.log_buf.clear();
            let delay = if self.rng.chance(self.plan.slow_sync_per_mille) {
                self.rng.range(20_000, 200_000)
            } else {
                self.rng.range(200, 5_000)
            };
            s.fsync = Some((lsn, self.now + delay));
            if self.mode == Mode::AckBeforeDurable {
                s.sched.durable(lsn);
            }
        }
        Ok(())
    }
}
