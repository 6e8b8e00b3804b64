//! Fault injection: which fault strikes when, and server crashes timed by progress.
//!
//! Invariants: every choice comes from the run's generator; the anchor worker may die, hang or
//! lose its link but never leaves for good, so every job can finish; a planned server crash
//! strikes once enough of the work is durably settled, so crashes land mid-job.

use std::collections::VecDeque;

use super::World;
use super::rng::Rng;
use super::worker::Life;

/// The seed's choices that shape the run.
#[derive(Debug)]
pub(super) struct Plan {
    /// Mean time between faults, if any happen.
    pub(super) fault_gap: Option<u64>,
    /// Server crashes, each when this many per mille of all tasks are durably settled.
    pub(super) crash_points: VecDeque<u64>,
    /// Chance per mille that a task attempt fails with a retryable error.
    pub(super) fail_per_mille: u64,
    /// Chance per mille that a task runs for longer than a lease.
    pub(super) slow_per_mille: u64,
    /// Chance per mille that one message is delayed by tens of milliseconds.
    pub(super) spike_per_mille: u64,
    /// Chance per mille that an fsync takes tens of milliseconds.
    pub(super) slow_sync_per_mille: u64,
}

impl Plan {
    /// The plan of a run, from its generator.
    pub(super) fn generate(rng: &mut Rng) -> Plan {
        let crashes = match rng.below(100) {
            0..35 => 0,
            35..70 => 1,
            70..90 => 2,
            _ => 3,
        };
        let mut points: Vec<u64> = (0..crashes).map(|_| rng.below(1001)).collect();
        points.sort_unstable();
        Plan {
            fault_gap: (!rng.chance(100)).then(|| rng.range(60_000, 600_000)),
            crash_points: points.into(),
            fail_per_mille: rng.range(0, 60),
            slow_per_mille: rng.range(0, 30),
            spike_per_mille: rng.range(0, 20),
            slow_sync_per_mille: rng.range(0, 50),
        }
    }
}

impl World {
    /// The time until the next fault, drawn around the plan's mean.
    pub(super) fn fault_gap(&mut self) -> u64 {
        match self.plan.fault_gap {
            Some(mean) => self.now + 1 + self.rng.below(2 * mean),
            None => u64::MAX,
        }
    }

    pub(super) fn fault(&mut self) {
        let active: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].life == Life::Active)
            .collect();
        if active.is_empty() {
            return;
        }
        let i = active[self.rng.index(active.len())];
        let name = self.workers[i].plan.name;
        match self.rng.below(100) {
            0..30 => {
                let down = self.rng.range(5_000, 800_000);
                self.kill_worker(i, down);
                self.stats.worker_kills += 1;
                self.event(format!("{name} dies; back in {} ms", down / 1000));
            }
            30..50 => {
                if let Some(link) = self.workers[i].link {
                    self.cut_link(link);
                    self.stats.link_drops += 1;
                    self.event(format!("the link of {name} drops"));
                }
            }
            50..60 => {
                if let Some(l) = self.workers[i].link.and_then(|id| self.links.get_mut(&id)) {
                    l.black_hole = true;
                    l.to_server.clear();
                    l.to_worker.clear();
                    self.stats.half_open += 1;
                    self.event(format!(
                        "the link of {name} goes half-open: traffic vanishes, nobody is told"
                    ));
                }
            }
            60..80 => {
                let until = self.now + self.rng.range(100_000, 1_200_000);
                self.workers[i].life = Life::Hung(until);
                self.stats.hangs += 1;
                self.event(format!(
                    "{name} hangs for {} ms, its socket open",
                    (until - self.now) / 1000
                ));
            }
            80..85 => {
                if self.server.is_some() && self.stalled_until.is_none() {
                    let until = self.now + self.rng.range(50_000, 1_000_000);
                    self.stalled_until = Some(until);
                    self.event(format!(
                        "the server process stalls for {} ms",
                        (until - self.now) / 1000
                    ));
                }
            }
            85..92 => {
                if !self.workers[i].plan.anchor {
                    let w = &mut self.workers[i];
                    w.retiring = true;
                    w.machine.goodbye();
                    if w.link.is_none() {
                        w.life = Life::Retired;
                    }
                    self.stats.goodbyes += 1;
                    self.event(format!("{name} says goodbye for good"));
                }
            }
            _ => {
                if let Some(l) = self.workers[i].link.and_then(|id| self.links.get_mut(&id)) {
                    l.latency = self.rng.range(10_000, 60_000);
                    self.stats.slow_links += 1;
                    trace!(self, "the link of {name} slows down");
                }
            }
        }
    }

    /// Worker `i`'s process dies: its connection drops, its state is lost, and a fresh process
    /// starts after `down` microseconds.
    fn kill_worker(&mut self, i: usize, down: u64) {
        if let Some(link) = self.workers[i].link {
            self.cut_link(link);
        }
        let until = self.now + down;
        self.workers[i].restart(until);
    }

    /// Schedules the next planned server crash once enough tasks are durably settled.
    pub(super) fn plan_crash(&mut self) {
        if self.server.is_none() || self.crash_at.is_some() {
            return;
        }
        let total = self.stats.tasks.max(1);
        let settled = self.oracle.settled_total();
        if let Some(&point) = self.plan.crash_points.front()
            && settled * 1000 >= point * total
        {
            self.plan.crash_points.pop_front();
            self.crash_at = Some(self.now + self.rng.below(5_000));
        }
    }
}
