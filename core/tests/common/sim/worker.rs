//! Simulated workers: the real worker state machine, a task runner with simulated compute time,
//! and the glue that feeds it bytes and sends what it writes.
//!
//! Invariants: bytes a worker writes go out in the order it wrote them (answers before the
//! credit they free); a hung worker reads, runs and writes nothing until it wakes; a dead worker
//! comes back as a fresh state machine with nothing of its past.

use colony_core::Instant;
use colony_core::proto::{DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME, HEADER_LEN, Platform, Retry};
use colony_core::worker::{Action, Backoff, CloseReason, Config, Event, Received, Ticket, Worker};
use colony_core::{Duration, JobId};

use super::check::{Check, bail};
use super::job::{KIND_HASH, KIND_MIX, task_output};
use super::rng::Rng;
use super::{Dir, SECRET, World};

/// The most slots a simulated worker has.
pub(crate) const MAX_SLOTS: usize = 8;

/// The worker state machine as the simulation runs it.
pub(crate) type Machine = Worker<'static, MAX_SLOTS>;

const NAMES: [&str; 8] = [
    "anchor", "laptop", "rpi", "board-7", "server-2", "ipad", "esp32", "desktop",
];

/// Kind lists workers announce; some hold a kind no job has, to shift kind indices.
const KIND_SETS: [&[&str]; 6] = [
    &[KIND_HASH],
    &[KIND_MIX],
    &[KIND_HASH, KIND_MIX],
    &[KIND_MIX, KIND_HASH],
    &["gpu.render", KIND_HASH],
    &[KIND_MIX, "gpu.render", KIND_HASH],
];

/// Where a simulated worker process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    /// Joins at this time.
    NotYet(u64),
    /// Running.
    Active,
    /// Frozen (socket open, nothing read or written) until this time.
    Hung(u64),
    /// Its process is gone; a fresh one starts at this time.
    Dead(u64),
    /// Left for good.
    Retired,
}

/// What a simulated worker is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorkerPlan {
    pub(crate) name: &'static str,
    pub(crate) kinds: &'static [&'static str],
    pub(crate) slots: u32,
    pub(crate) max_frame: u32,
    pub(crate) join_at: u64,
    /// Runs every job's kind and never leaves for good, so every job can finish.
    pub(crate) anchor: bool,
    pub(crate) platform: Platform,
}

impl WorkerPlan {
    /// Worker `i` of a run with `jobs` jobs; worker 0 is the anchor.
    pub(crate) fn generate(rng: &mut Rng, i: usize, jobs: usize) -> WorkerPlan {
        let anchor = i == 0;
        let kinds = if anchor {
            let fitting: Vec<&[&str]> = KIND_SETS
                .iter()
                .copied()
                .filter(|set| {
                    [KIND_HASH, KIND_MIX][..jobs]
                        .iter()
                        .all(|k| set.contains(k))
                })
                .collect();
            fitting[rng.index(fitting.len())]
        } else {
            KIND_SETS[rng.index(KIND_SETS.len())]
        };
        let platforms = [
            Platform::Linux,
            Platform::Mcu,
            Platform::MacOs,
            Platform::Ios,
        ];
        WorkerPlan {
            name: NAMES[i % NAMES.len()],
            kinds,
            slots: rng.range(1, MAX_SLOTS as u64 + 1) as u32,
            max_frame: if rng.chance(250) {
                HANDSHAKE_MAX_FRAME
            } else {
                DEFAULT_MAX_FRAME
            },
            join_at: if anchor || rng.chance(600) {
                0
            } else {
                rng.range(0, 1_500_000)
            },
            anchor,
            platform: platforms[rng.index(platforms.len())],
        }
    }

    fn config(&self) -> Config<'static> {
        Config::new(self.name, SECRET, self.kinds)
            .with_platform(self.platform)
            .with_slots(self.slots)
            .with_max_frame(self.max_frame)
            .with_dead_after(4)
            .with_backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(400),
            ))
    }

    fn machine(&self) -> Machine {
        match Machine::new(self.config()) {
            Ok(m) => m,
            Err(e) => panic!("bad simulated worker config {self:?}: {e}"),
        }
    }
}

/// How a task attempt ends.
#[derive(Clone, Debug)]
enum Outcome {
    Output(Vec<u8>),
    Fail(Retry, &'static str),
}

/// A task the worker is running.
#[derive(Clone, Debug)]
pub(crate) struct Running {
    ticket: Ticket,
    pub(crate) done_at: u64,
    outcome: Outcome,
}

/// One simulated worker process and its connection.
pub(crate) struct SimWorker {
    pub(crate) plan: WorkerPlan,
    pub(crate) machine: Machine,
    pub(crate) life: Life,
    pub(crate) link: Option<u64>,
    /// Bytes received and not yet made into frames.
    pub(crate) rx: Vec<u8>,
    pub(crate) running: Vec<Running>,
    /// Said goodbye; retires once its connection closes.
    pub(crate) retiring: bool,
}

impl SimWorker {
    pub(crate) fn new(plan: WorkerPlan) -> SimWorker {
        SimWorker {
            machine: plan.machine(),
            life: Life::NotYet(plan.join_at),
            plan,
            link: None,
            rx: Vec::new(),
            running: Vec::new(),
            retiring: false,
        }
    }

    /// The process died: a fresh one starts at `at`.
    pub(crate) fn restart(&mut self, at: u64) {
        self.machine = self.plan.machine();
        self.life = Life::Dead(at);
        self.link = None;
        self.rx.clear();
        self.running.clear();
    }
}

/// A server event, owned, so the receive buffer can be reused.
enum Owned {
    Nothing,
    Granted(Vec<Grant>),
}

struct Grant {
    ticket: Ticket,
    job: JobId,
    task: u32,
    kind: String,
    input: Vec<u8>,
}

/// Everything the worker wants to send now.
fn transmit(machine: &mut Machine, at: Instant) -> Check<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; HEADER_LEN + 2 * HANDSHAKE_MAX_FRAME as usize];
    loop {
        match machine.poll_transmit(at, &mut buf) {
            Ok(Some(n)) => out.extend_from_slice(&buf[..n]),
            Ok(None) => return Ok(out),
            Err(e) => bail!("worker transmit failed: {e}"),
        }
    }
}

impl World {
    /// Workers whose time to join, wake or come back has come.
    pub(super) fn wake_workers(&mut self) {
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            let (name, life) = (w.plan.name, w.life);
            match life {
                Life::NotYet(t) if t <= self.now => {
                    self.workers[i].life = Life::Active;
                    self.stats.workers += 1;
                    if t > 0 {
                        self.event(format!("{name} joins late"));
                    }
                }
                Life::Hung(t) if t <= self.now => {
                    self.workers[i].life = Life::Active;
                    trace!(self, "{name} wakes up");
                }
                Life::Dead(t) if t <= self.now => {
                    self.workers[i].life = Life::Active;
                    trace!(self, "{name} starts again");
                }
                _ => {}
            }
        }
    }

    /// Delivers due bytes to every active worker.
    pub(super) fn deliver_to_workers(&mut self) -> Check {
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            loop {
                let now = self.now;
                let Some(l) = self.links.get_mut(&id) else {
                    break;
                };
                let i = l.worker;
                if self.workers[i].life != Life::Active {
                    break;
                }
                let Some(bytes) = l.to_worker.pop_due(now) else {
                    break;
                };
                if self.workers[i].link == Some(id) {
                    self.worker_receive(i, &bytes)?;
                }
            }
        }
        Ok(())
    }

    fn worker_receive(&mut self, i: usize, bytes: &[u8]) -> Check {
        let at = self.instant();
        self.workers[i].rx.extend_from_slice(bytes);
        loop {
            let w = &mut self.workers[i];
            let (len, owned) = match w.machine.receive(at, &w.rx) {
                Ok(Received::Incomplete { .. }) => return Ok(()),
                Ok(Received::Frame { len, event }) => (len, own(event)),
                Err(e) => bail!("{} refused a frame from the server: {e}", w.plan.name),
            };
            w.rx.drain(..len);
            if let Owned::Granted(grants) = owned {
                self.start_tasks(i, grants)?;
            }
        }
    }

    /// Starts the granted tasks, after checking that each is what the job says.
    fn start_tasks(&mut self, i: usize, grants: Vec<Grant>) -> Check {
        for g in grants {
            let Some(j) = self.job_ids.iter().position(|id| *id == Some(g.job)) else {
                bail!(
                    "{} was granted a task of unknown {}",
                    self.workers[i].plan.name,
                    g.job
                );
            };
            let job = &self.oracle.jobs[j];
            if g.task >= job.tasks() || job.input(g.task) != &g.input[..] || job.kind != g.kind {
                bail!(
                    "{} was granted job {j} task {} with the wrong input or kind",
                    self.workers[i].plan.name,
                    g.task
                );
            }
            let outcome = match task_output(&g.kind, &g.input) {
                Err(text) => Outcome::Fail(Retry::Permanent, text),
                Ok(_) if self.rng.chance(self.plan.fail_per_mille) => {
                    Outcome::Fail(Retry::Retryable, "transient failure")
                }
                Ok(output) => Outcome::Output(output),
            };
            let compute = if self.rng.chance(self.plan.slow_per_mille) {
                self.rng.range(300_000, 1_500_000)
            } else {
                self.rng.range(100, 20_000)
            };
            self.workers[i].running.push(Running {
                ticket: g.ticket,
                done_at: self.now + compute,
                outcome,
            });
        }
        Ok(())
    }

    /// Answers the tasks whose compute time is over, oldest first.
    pub(super) fn finish_tasks(&mut self, i: usize) -> Check {
        let now = self.now;
        loop {
            let w = &mut self.workers[i];
            let Some(pos) = (0..w.running.len())
                .filter(|&k| w.running[k].done_at <= now)
                .min_by_key(|&k| (w.running[k].done_at, k))
            else {
                return Ok(());
            };
            let r = w.running.remove(pos);
            let mut buf = vec![0u8; HEADER_LEN + HANDSHAKE_MAX_FRAME as usize];
            let written = match &r.outcome {
                Outcome::Output(out) => w.machine.complete(r.ticket, out, &mut buf),
                Outcome::Fail(retry, text) => w.machine.fail(r.ticket, *retry, text, &mut buf),
            };
            let n = match written {
                Ok(n) => n,
                Err(e) => bail!("{} could not answer {}: {e}", w.plan.name, r.ticket),
            };
            if n == 0 {
                // The lease belonged to a connection that is gone: nothing to send.
                self.stats.fenced_answers += 1;
                continue;
            }
            let Some(link) = w.link else {
                bail!("{} answered {} with no connection", w.plan.name, r.ticket);
            };
            match r.outcome {
                Outcome::Fail(Retry::Retryable, _) => self.stats.retryable_failures += 1,
                Outcome::Fail(Retry::Permanent, _) => self.stats.permanent_failures += 1,
                Outcome::Output(_) => {}
            }
            buf.truncate(n);
            self.send(link, Dir::ToServer, buf);
        }
    }

    /// Lets worker `i`'s state machine act (connect, close) and sends what it writes.
    pub(super) fn drive_worker(&mut self, i: usize) -> Check {
        let at = self.instant();
        loop {
            let name = self.workers[i].plan.name;
            match self.workers[i].machine.poll(at) {
                None => break,
                Some(Action::Connect) => {
                    if self.server.is_some() {
                        let link = self.open_link(i);
                        let nonce = self.rng.bytes();
                        let w = &mut self.workers[i];
                        w.link = Some(link);
                        w.rx.clear();
                        w.machine.connected(at, nonce);
                        trace!(self, "{name} connects on link {link}");
                    } else {
                        let jitter = self.jitter();
                        self.workers[i].machine.disconnected(at, jitter);
                        trace!(self, "{name} finds no server");
                    }
                }
                Some(Action::Close(reason)) => {
                    if let CloseReason::Protocol(e) = reason {
                        bail!("{name} closed its connection: the server broke the protocol: {e}");
                    }
                    if reason == CloseReason::Silent {
                        self.stats.silent_closes += 1;
                    }
                    trace!(self, "{name} closes its connection: {reason}");
                    let parting = transmit(&mut self.workers[i].machine, at)?;
                    if let Some(link) = self.workers[i].link.take() {
                        self.send(link, Dir::ToServer, parting);
                        if let Some(l) = self.links.get_mut(&link) {
                            l.worker_closed = true;
                        }
                    }
                    let jitter = self.jitter();
                    let w = &mut self.workers[i];
                    w.rx.clear();
                    w.machine.disconnected(at, jitter);
                    if w.retiring {
                        w.life = Life::Retired;
                    }
                }
            }
        }
        if let Some(link) = self.workers[i].link {
            let bytes = transmit(&mut self.workers[i].machine, at)?;
            self.send(link, Dir::ToServer, bytes);
        }
        Ok(())
    }
}

fn own(event: Option<Event<'_>>) -> Owned {
    match event {
        Some(Event::Granted(grants)) => Owned::Granted(
            grants
                .iter()
                .map(|t| Grant {
                    ticket: t.ticket(),
                    job: t.job(),
                    task: t.task().0,
                    kind: t.kind_name().to_string(),
                    input: t.input().to_vec(),
                })
                .collect(),
        ),
        _ => Owned::Nothing,
    }
}
