//! A seeded, deterministic simulation of one Colony server and its workers.
//!
//! It drives the real [`Scheduler`](colony_core::sched::Scheduler) and real
//! [`Worker`](colony_core::worker::Worker) state machines through a simulated network, clock and
//! disk. The only code of its own is the glue a transport provides (framing, the handshake's
//! server side, turning frames into scheduler calls and actions into frames, writing and syncing
//! the log), kept minimal here.
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

use std::collections::{BTreeMap, VecDeque};

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
mod job;
mod net;
mod rng;
mod server;
mod worker;

pub(crate) use check::Check;
use check::{Oracle, bail};
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

/// Counts of what happened in one run (or, added up, in many).
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) runs: u64,
    pub(crate) jobs: u64,
    pub(crate) dag_jobs: u64,
    pub(crate) tasks: u64,
    pub(crate) edges: u64,
    pub(crate) doomed: u64,
    pub(crate) workers: u64,
    pub(crate) connections: u64,
    pub(crate) handshakes: u64,
    pub(crate) grants: u64,
    pub(crate) reissued: u64,
    pub(crate) expiries: u64,
    pub(crate) stale_answers: u64,
    pub(crate) fenced_answers: u64,
    pub(crate) retryable_failures: u64,
    pub(crate) permanent_failures: u64,
    pub(crate) failed: u64,
    pub(crate) poisoned: u64,
    pub(crate) exhausted: u64,
    pub(crate) cascaded: u64,
    pub(crate) worker_kills: u64,
    pub(crate) link_drops: u64,
    pub(crate) half_open: u64,
    pub(crate) hangs: u64,
    pub(crate) goodbyes: u64,
    pub(crate) slow_links: u64,
    pub(crate) silent_closes: u64,
    pub(crate) idle_drops: u64,
    pub(crate) server_crashes: u64,
    pub(crate) tail_bytes_lost: u64,
    pub(crate) tail_bytes_kept: u64,
    pub(crate) resumed_settled: u64,
    pub(crate) fsyncs: u64,
    pub(crate) log_bytes: u64,
    pub(crate) frames: u64,
    pub(crate) net_bytes: u64,
    pub(crate) sim_time_us: u64,
    /// The longest run's simulated time (a maximum, not a sum).
    pub(crate) longest_us: u64,
    pub(crate) steps: u64,
}

impl Stats {
    /// Adds `other` into `self`, field by field.
    pub(crate) fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            runs,
            jobs,
            dag_jobs,
            tasks,
            edges,
            doomed,
            workers,
            connections,
            handshakes,
            grants,
            reissued,
            expiries,
            stale_answers,
            fenced_answers,
            retryable_failures,
            permanent_failures,
            failed,
            poisoned,
            exhausted,
            cascaded,
            worker_kills,
            link_drops,
            half_open,
            hangs,
            goodbyes,
            slow_links,
            silent_closes,
            idle_drops,
            server_crashes,
            tail_bytes_lost,
            tail_bytes_kept,
            resumed_settled,
            fsyncs,
            log_bytes,
            frames,
            net_bytes,
            sim_time_us,
            steps
        );
        self.longest_us = self.longest_us.max(o.longest_us);
    }
}

/// A run that held every invariant.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) stats: Stats,
    /// The jobs and workers of the run, one line each.
    pub(crate) setup: Vec<String>,
    /// Notable events (crashes, restarts, workers dying), in order.
    pub(crate) events: Vec<String>,
}

/// A run that broke an invariant.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) seed: u64,
    pub(crate) step: u64,
    pub(crate) time_us: u64,
    pub(crate) message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} (step {}, at {:.3} ms simulated)",
            self.seed,
            self.message,
            self.step,
            self.time_us as f64 / 1000.0
        )
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

/// The seed's choices that shape the run.
#[derive(Debug)]
struct Plan {
    /// Mean time between faults, if any happen.
    fault_gap: Option<u64>,
    /// Server crashes, each when this many per mille of all tasks are durably settled.
    crash_points: VecDeque<u64>,
    /// Chance per mille that a task attempt fails with a retryable error.
    fail_per_mille: u64,
    /// Chance per mille that a task runs for longer than a lease.
    slow_per_mille: u64,
    /// Chance per mille that one message is delayed by tens of milliseconds.
    spike_per_mille: u64,
    /// Chance per mille that an fsync takes tens of milliseconds.
    slow_sync_per_mille: u64,
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
        let crashes = match rng.below(100) {
            0..35 => 0,
            35..70 => 1,
            70..90 => 2,
            _ => 3,
        };
        let mut points: Vec<u64> = (0..crashes).map(|_| rng.below(1001)).collect();
        points.sort_unstable();
        let plan = Plan {
            fault_gap: (!rng.chance(100)).then(|| rng.range(60_000, 600_000)),
            crash_points: points.into(),
            fail_per_mille: rng.range(0, 60),
            slow_per_mille: rng.range(0, 30),
            spike_per_mille: rng.range(0, 20),
            slow_sync_per_mille: rng.range(0, 50),
        };
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

    /// The time until the next fault, drawn around the plan's mean.
    fn fault_gap(&mut self) -> u64 {
        match self.plan.fault_gap {
            Some(mean) => self.now + 1 + self.rng.below(2 * mean),
            None => u64::MAX,
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

    // ---- the network ----

    /// Sends `bytes` on `link`, possibly split into segments, each after a random latency but
    /// never before the bytes sent ahead of it.
    fn send(&mut self, link: u64, dir: Dir, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let now = self.now;
        let spike = self.plan.spike_per_mille;
        let Some(l) = self.links.get_mut(&link).filter(|l| !l.black_hole) else {
            return;
        };
        self.stats.net_bytes += bytes.len() as u64;
        let latency = |rng: &mut Rng| {
            let mut d = 20 + l.latency + rng.below(l.latency + 1);
            if rng.chance(spike) {
                d += rng.range(10_000, 150_000);
            }
            d
        };
        let split = if bytes.len() > 1 && self.rng.chance(150) {
            1 + self.rng.index(bytes.len() - 1)
        } else {
            bytes.len()
        };
        let (head, tail) = bytes.split_at(split);
        for part in [head, tail] {
            if part.is_empty() {
                continue;
            }
            let at = now + latency(&mut self.rng);
            match dir {
                Dir::ToServer => l.to_server.push(at, part.to_vec()),
                Dir::ToWorker => l.to_worker.push(at, part.to_vec()),
            }
        }
    }

    /// A new connection from worker `i`; the server accepts it at once.
    fn open_link(&mut self, i: usize) -> u64 {
        let id = self.next_link;
        self.next_link += 1;
        let latency = if self.rng.chance(100) {
            self.rng.range(2_000, 8_000)
        } else {
            self.rng.range(30, 1_500)
        };
        self.links.insert(id, Link::new(i, latency));
        if let Some(s) = self.server.as_mut() {
            s.accept(id, self.now);
        }
        self.stats.connections += 1;
        id
    }

    /// Cuts `link` at both ends at once: the server drops the connection, the worker notices
    /// that its connection is gone. On a half-open link the server is not told.
    fn cut_link(&mut self, link: u64) {
        if !self.links.get(&link).is_some_and(|l| l.black_hole) {
            self.with_server(|w, s| w.server_close(s, link));
        }
        self.forget_link(link);
    }

    /// Removes `link`; if its worker still uses it, tells the worker it is gone.
    fn forget_link(&mut self, link: u64) {
        let at = self.instant();
        if let Some(l) = self.links.remove(&link) {
            let jitter = self.jitter();
            let w = &mut self.workers[l.worker];
            if w.link == Some(link) {
                w.link = None;
                w.rx.clear();
                w.machine.disconnected(at, jitter);
            }
        }
    }

    // ---- faults ----

    fn fault(&mut self) {
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
    fn plan_crash(&mut self) {
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
