//! The judge: what the durable log says, read independently of the scheduler, and the facts
//! every run is checked against.
//!
//! Invariants it enforces on the durable bytes: the file starts with the log header and holds
//! whole, valid frames only; one header per job; at most one settling record (done or failed)
//! per task; every recorded output is the right one; only doomed tasks fail for good; a job
//! finishes only once all its tasks settled. Durable facts only grow, across crashes too.

use std::collections::BTreeMap;

use colony_core::JobId;
use colony_core::log::{FILE_HEADER, FILE_HEADER_LEN, Record, StopReason, parse_frame};

use super::job::SimJob;

/// A violated invariant, as text for the failure report.
pub(crate) type Check<T = ()> = Result<T, String>;

/// Returns early with a formatted violation.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(format!($($arg)*))
    };
}
pub(crate) use bail;

/// What the durable log holds about the jobs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Durable {
    /// Bytes read so far (whole frames).
    scanned: usize,
    /// Job ids in the log, by the simulation's job index.
    pub(crate) ids: BTreeMap<JobId, usize>,
    pub(crate) done: Vec<Vec<bool>>,
    pub(crate) failed: Vec<Vec<bool>>,
    pub(crate) done_count: Vec<u32>,
    pub(crate) failed_count: Vec<u32>,
    pub(crate) finished: Vec<bool>,
    pub(crate) records: u64,
    /// Tasks that failed for good on a poisoned input.
    pub(crate) poisoned: u64,
    /// Tasks that failed for good because they ran out of attempts.
    pub(crate) exhausted: u64,
    /// Tasks that failed for good because a predecessor did.
    pub(crate) cascaded: u64,
}

/// The jobs and what the durable log says about them.
#[derive(Clone, Debug)]
pub(crate) struct Oracle {
    pub(crate) jobs: Vec<SimJob>,
    pub(crate) durable: Durable,
}

impl Oracle {
    pub(crate) fn new(jobs: Vec<SimJob>) -> Oracle {
        let durable = Durable::empty(&jobs);
        Oracle { jobs, durable }
    }

    /// Reads the frames appended since the last scan (`bytes` must all be durable); returns
    /// the tasks they settled.
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Check<Vec<(usize, u32)>> {
        let mut settled = Vec::new();
        let d = &mut self.durable;
        if d.scanned == 0 {
            if bytes.len() < FILE_HEADER_LEN {
                bail!("durable log of {} bytes has no whole header", bytes.len());
            }
            if bytes[..FILE_HEADER_LEN] != FILE_HEADER {
                bail!("durable log does not start with the file header");
            }
            d.scanned = FILE_HEADER_LEN;
        }
        loop {
            let rest = &bytes[d.scanned..];
            match parse_frame(rest) {
                Ok((record, len)) => {
                    if let Some(task) = d.apply(&self.jobs, &record)? {
                        settled.push(task);
                    }
                    d.scanned += len;
                    d.records += 1;
                }
                Err(StopReason::End) => return Ok(settled),
                Err(stop) => bail!(
                    "durable log damaged at byte {}: {stop} ({} bytes follow)",
                    d.scanned,
                    rest.len()
                ),
            }
        }
    }

    /// Reads a recovered log from the start and checks that it still holds every durable fact
    /// known before.
    pub(crate) fn rescan(&mut self, bytes: &[u8]) -> Check {
        let before = std::mem::replace(&mut self.durable, Durable::empty(&self.jobs));
        let _ = self.scan(bytes)?;
        let after = &self.durable;
        for (id, &j) in &before.ids {
            if after.ids.get(id) != Some(&j) {
                bail!("recovery lost the durable header of {id}");
            }
        }
        for j in 0..self.jobs.len() {
            for t in 0..self.jobs[j].tasks() as usize {
                if before.done[j][t] && !after.done[j][t] {
                    bail!("recovery lost the durable completion of job {j} task {t}");
                }
                if before.failed[j][t] && !after.failed[j][t] {
                    bail!("recovery lost the durable failure of job {j} task {t}");
                }
            }
            if before.finished[j] && !after.finished[j] {
                bail!("recovery lost the durable end of job {j}");
            }
        }
        Ok(())
    }

    /// Whether task `t` of job `j` is durably done.
    pub(crate) fn done(&self, j: usize, t: u32) -> bool {
        self.durable.done[j][t as usize]
    }

    /// Whether task `t` of job `j` is durably failed.
    pub(crate) fn failed(&self, j: usize, t: u32) -> bool {
        self.durable.failed[j][t as usize]
    }

    /// Total durable completions over all jobs.
    pub(crate) fn settled_total(&self) -> u64 {
        let d = &self.durable;
        d.done_count
            .iter()
            .chain(&d.failed_count)
            .map(|&c| u64::from(c))
            .sum()
    }
}

impl Durable {
    fn empty(jobs: &[SimJob]) -> Durable {
        Durable {
            done: jobs
                .iter()
                .map(|j| vec![false; j.tasks() as usize])
                .collect(),
            failed: jobs
                .iter()
                .map(|j| vec![false; j.tasks() as usize])
                .collect(),
            done_count: vec![0; jobs.len()],
            failed_count: vec![0; jobs.len()],
            finished: vec![false; jobs.len()],
            ..Durable::default()
        }
    }

    fn job(&self, id: JobId) -> Check<usize> {
        match self.ids.get(&id) {
            Some(&j) => Ok(j),
            None => bail!("durable record of {id} before its header"),
        }
    }

    fn task(jobs: &[SimJob], j: usize, t: u32) -> Check<u32> {
        if t >= jobs[j].tasks() {
            bail!(
                "durable record names task {t} of job {j}, which has {}",
                jobs[j].tasks()
            );
        }
        Ok(t)
    }

    /// Applies one durable record; returns the task it settled, if any.
    fn apply(&mut self, jobs: &[SimJob], record: &Record<'_>) -> Check<Option<(usize, u32)>> {
        match *record {
            Record::JobHeader {
                job, name, tasks, ..
            } => {
                let Some(j) = jobs.iter().position(|s| s.name == name) else {
                    bail!("durable header of unknown job {name:?}");
                };
                if self.ids.contains_key(&job) || self.ids.values().any(|&k| k == j) {
                    bail!("two durable headers for {job} ({name:?})");
                }
                if tasks != jobs[j].tasks() {
                    bail!("durable header of {name:?} says {tasks} tasks");
                }
                self.ids.insert(job, j);
            }
            Record::TaskDone {
                job, task, output, ..
            } => {
                let j = self.job(job)?;
                let t = Self::task(jobs, j, task.0)?;
                if self.done[j][t as usize] || self.failed[j][t as usize] {
                    bail!("job {j} task {t} recorded twice in the durable log (second: done)");
                }
                if let Some(p) = jobs[j].preds[t as usize]
                    .iter()
                    .find(|&&p| !self.done[j][p as usize])
                {
                    bail!("job {j} task {t} recorded done before its predecessor {p}");
                }
                match jobs[j].expected(t) {
                    None => bail!("job {j} task {t} is doomed but recorded done"),
                    Some(want) if want != output => {
                        bail!("job {j} task {t} recorded with a wrong output")
                    }
                    Some(_) => {}
                }
                self.done[j][t as usize] = true;
                self.done_count[j] += 1;
                return Ok(Some((j, t)));
            }
            Record::TaskFailed {
                job,
                task,
                attempts,
                ..
            } => {
                let j = self.job(job)?;
                let t = Self::task(jobs, j, task.0)?;
                if self.done[j][t as usize] || self.failed[j][t as usize] {
                    bail!("job {j} task {t} recorded twice in the durable log (second: failed)");
                }
                let sim = &jobs[j];
                let cascaded = sim.preds[t as usize]
                    .iter()
                    .any(|&p| self.failed[j][p as usize]);
                let poisoned = sim.poisoned[t as usize] && attempts >= 1;
                let exhausted = !sim.strict() && attempts >= sim.max_attempts;
                if !(cascaded || poisoned || exhausted) {
                    bail!(
                        "job {j} task {t} failed for good after {attempts} attempts, but it can succeed"
                    );
                }
                self.cascaded += u64::from(cascaded);
                self.poisoned += u64::from(poisoned && !cascaded);
                self.exhausted += u64::from(exhausted && !cascaded && !poisoned);
                self.failed[j][t as usize] = true;
                self.failed_count[j] += 1;
                return Ok(Some((j, t)));
            }
            Record::JobFinished { job } => {
                let j = self.job(job)?;
                if self.finished[j] {
                    bail!("job {j} finished twice in the durable log");
                }
                if self.done_count[j] + self.failed_count[j] != jobs[j].tasks() {
                    bail!("job {j} recorded finished with unsettled tasks");
                }
                self.finished[j] = true;
            }
            Record::TaskAdded { .. } => bail!("durable log adds a task to a closed job"),
        }
        Ok(None)
    }
}
