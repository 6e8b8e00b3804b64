//! A seeded, deterministic simulation of one Colony server and its workers.
//!
//! It drives the real [`Scheduler`](colony_core::sched::Scheduler) and real
//! [`Worker`](colony_core::worker::Worker) state machines through a simulated network, clock and
//! disk. The only code of its own is the glue a transport provides (framing, the handshake's
//! server side, turning frames into scheduler calls and actions into frames, dropping connections
//! silent for too long, writing and syncing the log), kept minimal here.
//!
//! Faults, all drawn from the seed: workers that die and come back as new processes, links that
//! drop, links that go half-open (traffic vanishes, neither end is told: the server keeps a
//! zombie connection), latency that varies and spikes (per-link order kept, segments split),
//! workers that join late or leave for good, workers that hang with their socket open, a server
//! process that stalls, tasks that fail (retryable; for good on poisoned inputs; or out of
//! attempts in jobs that allow few), slow fsyncs, and server crashes that lose all memory and the
//! un-synced tail of the log (or keep a torn or garbled part of it), followed by replay, repair
//! and resume.
//!
//! Invariants, checked after every step (see [`World::check_step`] and `check.rs`): no task is
//! lost (leases the scheduler counts are exactly the ones the glue sent and no one answered; every
//! task settles); none is recorded twice in the durable log; every output is right; no worker is
//! sent more leases than the credit it asked for; no dependent is granted before each
//! predecessor's completion is durable; no completion is acknowledged before it is durable; no
//! lease outlives its deadline on the server's clock; the job finishes within a time bound.
//! A failure names its seed so it replays exactly.

// The test and the example each use a part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;

use colony_core::log::CrashStorage;
use colony_core::{Duration, Instant, JobId};

/// Prints a trace line when the run traces (`SIM_TRACE=1`); costs nothing otherwise.
macro_rules! trace {
    ($world:expr, $($arg:tt)*) => {
        if $world.trace {
            eprintln!("[{:>10.3} ms] {}", $world.now as f64 / 1000.0, format!($($arg)*));
        }
    };
}

mod check;
mod faults;
mod job;
mod life;
mod net;
mod report;
mod rng;
mod server;
mod worker;

pub(crate) use check::Check;
pub(crate) use report::{Failure, Report, Stats};

use check::{Oracle, bail};
use faults::Plan;
use job::{KIND_HASH, KIND_MIX, SimJob};
use net::Link;
use rng::Rng;
use server::Server;
use worker::{Life, SimWorker, WorkerPlan};

/// The lease duration the server grants, in microseconds.
const LEASE_US: u64 = 400_000;
/// The heartbeat interval the server asks workers for, in microseconds.
const HEARTBEAT_US: u64 = 100_000;
/// The server drops a connection silent for this long (as a transport does), in microseconds:
/// longer than a lease, so silent workers' leases expire first, shorter than two.
const IDLE_US: u64 = 700_000;
/// The secret every simulated peer shares.
const SECRET: &[u8] = b"simulated colony secret: 32 byte";
/// Simulated time after which an unfinished run counts as stuck.
const TIME_LIMIT_US: u64 = 600_000_000;
/// Steps after which an unfinished run counts as stuck.
const STEP_LIMIT: u64 = 5_000_000;
/// Steps at one instant after which the run counts as spinning.
const SAME_TIME_LIMIT: u32 = 100_000;

/// What the glue does wrong on purpose, to prove that the checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The glue a transport should be.
    Correct,
    /// Tells the scheduler its log records are durable as soon as they are written, before the
    /// fsync completes.
    AckBeforeDurable,
    /// Skips the completions when it replays the log after a crash.
    ForgetDoneOnReplay,
    /// Passes the scheduler twice the credit each worker asks for.
    InflateCredit,
}

/// How to run one seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) mode: Mode,
    /// Print every event to stderr.
    pub(crate) trace: bool,
    /// Tasks per job, at least and at most.
    pub(crate) tasks: (u32, u32),
    /// Also compare the scheduler's own counters and task states with the durable log and the
    /// glue's lease table. Off, only the headline invariants judge (to prove that they bite).
    pub(crate) cross_checks: bool,
    /// Drop connections silent for [`IDLE_US`], as a transport does. Off, a half-open
    /// connection lives on at the server for ever.
    pub(crate) idle_drop: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Correct,
            trace: false,
            tasks: (100, 300),
            cross_checks: true,
            idle_drop: true,
        }
    }
}

/// Runs one seed to the end.
///
/// # Errors
/// The first invariant the run broke.
pub(crate) fn run(seed: u64, options: &Options) -> Result<Report, Failure> {
    let mut world = World::new(seed, options);
    match world.run() {
        Ok(()) => Ok(Report {
            seed,
            setup: world.setup(),
            stats: world.stats,
            events: world.events,
        }),
        Err(message) => Err(Failure {
            seed,
            step: world.step,
            time_us: world.now,
            message,
        }),
    }
}

/// Where a chunk of bytes goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToWorker,
}

/// Everything a run holds: the clock, the network, the disk, the server and the workers.
struct World {
    trace: bool,
    mode: Mode,
    cross_checks: bool,
    idle_drop: bool,
    now: u64,
    step: u64,
    rng: Rng,
    plan: Plan,
    storage: CrashStorage,
    server: Option<Server>,
    restart_at: Option<u64>,
    crash_at: Option<u64>,
    /// The server process is frozen (it reads, writes and polls nothing) until then.
    stalled_until: Option<u64>,
    /// After a crash until the restart: durable and unsynced log bytes at the crash.
    crashed: Option<(u64, u64)>,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    workers: Vec<SimWorker>,
    oracle: Oracle,
    /// The scheduler's id of each job, once created (stable across restarts).
    job_ids: Vec<Option<JobId>>,
    next_fault_at: u64,
    stats: Stats,
    events: Vec<String>,
    /// The run is over; the last crash and restart only verify the log.
    verifying: bool,
}

impl World {
    fn new(seed: u64, options: &Options) -> World {
        let mut rng = Rng::new(seed);
        let job_count = if rng.chance(350) { 2 } else { 1 };
        let mut jobs = Vec::new();
        for (j, kind) in [KIND_HASH, KIND_MIX]
            .into_iter()
            .take(job_count)
            .enumerate()
        {
            let tasks = rng.range(u64::from(options.tasks.0), u64::from(options.tasks.1) + 1);
            let poison = if rng.chance(200) { rng.range(1, 4) } else { 0 };
            jobs.push(SimJob::generate(
                &mut rng,
                j,
                kind,
                tasks as u32,
                poison as u32,
            ));
        }
        let worker_count = rng.range(2, 9) as usize;
        let workers: Vec<SimWorker> = (0..worker_count)
            .map(|i| SimWorker::new(WorkerPlan::generate(&mut rng, i, job_count)))
            .collect();
        let plan = Plan::generate(&mut rng);
        let mut stats = Stats {
            runs: 1,
            jobs: jobs.len() as u64,
            ..Stats::default()
        };
        for j in &jobs {
            stats.tasks += u64::from(j.tasks());
            stats.edges += j.edges.len() as u64;
            stats.dag_jobs += u64::from(!j.edges.is_empty());
            stats.doomed += j.doomed.iter().filter(|&&d| d).count() as u64;
        }
        let mut world = World {
            trace: options.trace,
            mode: options.mode,
            cross_checks: options.cross_checks,
            idle_drop: options.idle_drop,
            now: 0,
            step: 0,
            rng,
            plan,
            storage: CrashStorage::new(),
            server: None,
            restart_at: Some(0),
            crash_at: None,
            stalled_until: None,
            crashed: None,
            links: BTreeMap::new(),
            next_link: 1,
            workers,
            job_ids: vec![None; jobs.len()],
            oracle: Oracle::new(jobs),
            next_fault_at: u64::MAX,
            stats,
            events: Vec::new(),
            verifying: false,
        };
        world.next_fault_at = world.fault_gap();
        if world.trace {
            for (i, j) in world.oracle.jobs.iter().enumerate() {
                trace!(
                    world,
                    "job {i}: {} tasks of {:?}, {:?}, {} edges, {} doomed",
                    j.tasks(),
                    j.kind,
                    j.shape,
                    j.edges.len(),
                    j.doomed.iter().filter(|&&d| d).count()
                );
            }
            for w in &world.workers {
                trace!(world, "worker {:?}", w.plan);
            }
            trace!(world, "{:?}", world.plan);
        }
        world
    }

    /// One line per job and per worker.
    fn setup(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (j, job) in self.oracle.jobs.iter().enumerate() {
            let shape = match job.shape {
                job::Shape::Flat => "no dependencies".to_string(),
                job::Shape::Layered(n) => format!("a DAG of {n} layers, {} edges", job.edges.len()),
                job::Shape::Sparse => format!("a sparse DAG of {} edges", job.edges.len()),
            };
            let poisoned = job.poisoned.iter().filter(|&&p| p).count();
            lines.push(format!(
                "job {j}: {} tasks of {:?}, {shape}, {} attempts per task{}",
                job.tasks(),
                job.kind,
                job.max_attempts,
                if poisoned > 0 {
                    format!(", {poisoned} poisoned")
                } else {
                    String::new()
                }
            ));
        }
        for w in &self.workers {
            let p = &w.plan;
            lines.push(format!(
                "worker {:<9} ({:?}, {} slots) runs {:?}, frames up to {} B{}",
                p.name,
                p.platform,
                p.slots,
                p.kinds,
                p.max_frame,
                if p.join_at > 0 {
                    format!(", joins at {} ms", p.join_at / 1000)
                } else {
                    String::new()
                }
            ));
        }
        lines
    }

    fn instant(&self) -> Instant {
        Instant::from_micros(self.now)
    }

    fn event(&mut self, text: String) {
        trace!(self, "{text}");
        if self.events.len() < 64 {
            self.events
                .push(format!("{:>9.3} ms  {text}", self.now as f64 / 1000.0));
        }
    }

    /// A random delay added to a worker's reconnect backoff.
    fn jitter(&mut self) -> Duration {
        Duration::from_micros(self.rng.below(10_000))
    }

    /// Takes the server out for glue code that needs it and the rest of the world at once.
    fn with_server<R>(&mut self, f: impl FnOnce(&mut World, &mut Server) -> R) -> Option<R> {
        let mut server = self.server.take()?;
        let r = f(self, &mut server);
        self.server = Some(server);
        Some(r)
    }

    // ---- the loop ----

    fn run(&mut self) -> Check {
        let mut same_time = 0u32;
        loop {
            self.step += 1;
            self.stats.steps += 1;
            self.process_due()?;
            self.check_step()?;
            if self.all_finished() {
                self.stats.sim_time_us = self.now;
                self.stats.longest_us = self.now;
                return self.final_checks();
            }
            let next = self.next_time()?;
            if next > self.now {
                self.now = next;
                same_time = 0;
            } else {
                same_time += 1;
                if same_time > SAME_TIME_LIMIT {
                    bail!("simulation spins at one instant");
                }
            }
            if self.now > TIME_LIMIT_US || self.step > STEP_LIMIT {
                bail!("the job did not finish in time");
            }
        }
    }

    /// Does everything due now, in a fixed order.
    fn process_due(&mut self) -> Check {
        let now = self.now;
        if self.server.is_none() && self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            self.start_server()?;
        }
        self.plan_crash();
        if self.crash_at.is_some_and(|t| t <= now) {
            self.crash_at = None;
            self.crash_server();
        }
        if self.next_fault_at <= now {
            self.fault();
            self.next_fault_at = self.fault_gap();
        }
        self.wake_workers();
        if self.stalled_until.is_some_and(|t| t <= now) {
            self.stalled_until = None;
            trace!(self, "the server wakes up");
        }
        let server_runs = self.stalled_until.is_none();
        if server_runs {
            self.fsync_due()?;
            self.deliver_to_server()?;
        }
        self.deliver_to_workers()?;
        for i in 0..self.workers.len() {
            if self.workers[i].life == Life::Active {
                self.finish_tasks(i)?;
                self.drive_worker(i)?;
            }
        }
        if server_runs {
            self.server_phase()?;
        }
        Ok(())
    }

    /// The earliest instant at which something is due.
    fn next_time(&self) -> Check<u64> {
        let mut t = self.next_fault_at;
        for x in [self.restart_at, self.crash_at, self.stalled_until]
            .into_iter()
            .flatten()
        {
            t = t.min(x);
        }
        let server_runs = self.stalled_until.is_none();
        if let Some(s) = self.server.as_ref().filter(|_| server_runs) {
            let deadline = s.sched.poll_at().map(Instant::as_micros);
            let idle = s.idle_at().filter(|_| self.idle_drop);
            for x in [s.fsync_at(), deadline, s.lease_deadline(), idle]
                .into_iter()
                .flatten()
            {
                t = t.min(x);
            }
        }
        for link in self.links.values() {
            if server_runs && let Some(x) = link.to_server.next_at() {
                t = t.min(x);
            }
            if self.workers[link.worker].life == Life::Active
                && let Some(x) = link.to_worker.next_at()
            {
                t = t.min(x);
            }
        }
        for w in &self.workers {
            match w.life {
                Life::NotYet(x) | Life::Hung(x) | Life::Dead(x) => t = t.min(x),
                Life::Active => {
                    if let Some(x) = w.machine.poll_at() {
                        t = t.min(x.as_micros());
                    }
                    for r in &w.running {
                        t = t.min(r.done_at);
                    }
                }
                Life::Retired => {}
            }
        }
        if t == u64::MAX {
            bail!("simulation stalled: nothing is due");
        }
        Ok(t)
    }

    fn all_finished(&self) -> bool {
        let Some(s) = &self.server else { return false };
        self.job_ids.iter().all(|id| {
            id.and_then(|id| s.sched.progress(id))
                .is_some_and(|p| p.finished)
        })
    }

    // ---- invariants ----

    /// The invariants that must hold between any two steps.
    fn check_step(&self) -> Check {
        for w in &self.workers {
            let (held, credit) = (w.machine.held() as u64, u64::from(w.machine.credit()));
            if held + credit > u64::from(w.plan.slots) {
                bail!(
                    "{} holds {held} leases with {credit} credit out, beyond its {} slots",
                    w.plan.name,
                    w.plan.slots
                );
            }
        }
        let Some(s) = &self.server else {
            return Ok(());
        };
        s.check(&self.oracle, &self.job_ids, self.cross_checks)
    }

    /// At the end: every task settled as it must, with the right output, durably; and a
    /// scheduler rebuilt from the log after one more crash agrees.
    fn final_checks(&mut self) -> Check {
        let Some(s) = &self.server else {
            bail!("finished without a server");
        };
        for (j, job) in self.oracle.jobs.iter().enumerate() {
            let Some(id) = self.job_ids[j] else {
                bail!("job {j} was never created");
            };
            for t in 0..job.tasks() {
                let task = colony_core::TaskId(t);
                match job.expected(t) {
                    Some(_) if !job.strict() && self.oracle.failed(j, t) => {}
                    Some(want) => {
                        if !self.oracle.done(j, t) {
                            bail!("job {j} task {t} is not durably done at the end");
                        }
                        if s.sched.output(id, task) != Some(want) {
                            bail!("job {j} task {t} ends with a wrong output");
                        }
                    }
                    None => {
                        if !self.oracle.failed(j, t) {
                            bail!("doomed job {j} task {t} is not durably failed at the end");
                        }
                    }
                }
            }
            if !self.oracle.durable.finished[j] {
                bail!("job {j} has no durable end");
            }
        }
        self.stats.failed = self
            .oracle
            .durable
            .failed_count
            .iter()
            .map(|&c| u64::from(c))
            .sum();
        self.stats.poisoned = self.oracle.durable.poisoned;
        self.stats.exhausted = self.oracle.durable.exhausted;
        self.stats.cascaded = self.oracle.durable.cascaded;
        // One more crash: a fresh scheduler must find everything done, and lease nothing.
        self.verifying = true;
        self.crash_server();
        self.start_server()?;
        let Some(s) = &self.server else {
            bail!("no server after the final restart");
        };
        for (j, id) in self.job_ids.iter().enumerate() {
            let progress = id.and_then(|id| s.sched.progress(id));
            let total = self.oracle.jobs[j].tasks();
            match progress {
                Some(p) if p.finished && p.done + p.failed == total => {}
                other => bail!("after the final restart job {j} shows {other:?}"),
            }
        }
        self.event(format!(
            "check: after one more crash, a new server finds all {} tasks settled",
            self.stats.tasks
        ));
        Ok(())
    }
}
