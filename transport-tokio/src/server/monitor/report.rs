//! What the monitor reports: the JSON of `/api/status`, the Prometheus text of `/metrics`, and
//! the rate book that turns successive snapshots into a rate and an ETA per job.
//!
//! Invariants:
//! - Everything a peer announced (names, kinds) is data: JSON-escaped by serde, label-escaped
//!   for Prometheus, and inserted as text (never as markup) by the page.
//! - A rate needs two samples at least [`MIN_SPAN`] apart within [`WINDOW`]; until then, and for
//!   a finished job, it is absent.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::net::Transport;
use crate::server::{ClientInfo, ServerStatus, WorkerInfo};

/// How far back the rate looks.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// The shortest span a rate is computed over.
pub(crate) const MIN_SPAN: Duration = Duration::from_millis(500);

/// Samples kept per job at most.
const MAX_SAMPLES: usize = 64;

/// Settled-task counts per job over time.
#[derive(Debug, Default)]
pub(crate) struct RateBook {
    jobs: HashMap<u32, Vec<(Instant, u64)>>,
}

impl RateBook {
    /// Notes that `job` has `settled` tasks done or failed at `now`; returns its rate in tasks
    /// per second, if known.
    pub(crate) fn sample(&mut self, job: u32, settled: u64, now: Instant) -> Option<f64> {
        let samples = self.jobs.entry(job).or_default();
        if samples.last().is_some_and(|&(_, n)| n > settled) {
            // Fewer than before: a job id reused after a restart. Start over.
            samples.clear();
        }
        samples.retain(|&(at, _)| now.saturating_duration_since(at) <= WINDOW);
        if samples.len() >= MAX_SAMPLES {
            samples.remove(0);
        }
        samples.push((now, settled));
        let &(first_at, first) = samples.first()?;
        let span = now.saturating_duration_since(first_at);
        (span >= MIN_SPAN).then(|| (settled - first) as f64 / span.as_secs_f64())
    }

    /// Forgets jobs not in `live`.
    pub(crate) fn retain(&mut self, live: &[u32]) {
        self.jobs.retain(|job, _| live.contains(job));
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The document of `/api/status`.
#[derive(Debug, Serialize)]
pub(crate) struct StatusDoc {
    pub(crate) version: &'static str,
    /// The server's address.
    pub(crate) address: String,
    /// Whether the server accepts TLS.
    pub(crate) tls: bool,
    pub(crate) now_ms: u64,
    pub(crate) started_ms: u64,
    pub(crate) workers: Vec<WorkerDoc>,
    pub(crate) clients: Vec<ClientDoc>,
    pub(crate) jobs: Vec<JobDoc>,
}

/// One worker in [`StatusDoc`].
#[derive(Debug, Serialize)]
pub(crate) struct WorkerDoc {
    id: u32,
    name: String,
    platform: String,
    address: String,
    transport: Transport,
    slots: u32,
    kinds: Vec<String>,
    running: u32,
    done: u64,
    failed: u64,
    /// Milliseconds since its last heartbeat.
    last_heartbeat_ms: Option<u64>,
    connected_ms: u64,
}

/// One task client in [`StatusDoc`].
#[derive(Debug, Serialize)]
pub(crate) struct ClientDoc {
    name: String,
    address: String,
    transport: Transport,
    in_flight: u64,
    jobs: usize,
    connected_ms: u64,
}

/// One job in [`StatusDoc`].
#[derive(Debug, Serialize)]
pub(crate) struct JobDoc {
    id: u32,
    name: String,
    total: u32,
    done: u32,
    failed: u32,
    running: u32,
    finished: bool,
    /// Tasks settled per second lately.
    rate: Option<f64>,
    /// Seconds until every task is settled, at that rate.
    eta_s: Option<f64>,
}

fn worker_doc(w: &WorkerInfo) -> WorkerDoc {
    WorkerDoc {
        id: w.id.0,
        name: w.name.clone(),
        platform: format!("{:?}", w.platform),
        address: w.address.to_string(),
        transport: w.transport,
        slots: w.slots,
        kinds: w.kinds.clone(),
        running: w.running,
        done: w.done,
        failed: w.failed,
        last_heartbeat_ms: w
            .last_heartbeat
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        connected_ms: unix_ms(w.connected_since),
    }
}

fn client_doc(c: &ClientInfo) -> ClientDoc {
    ClientDoc {
        name: c.name.clone(),
        address: c.address.to_string(),
        transport: c.transport,
        in_flight: c.in_flight,
        jobs: c.jobs,
        connected_ms: unix_ms(c.connected_since),
    }
}

/// Where the server is and since when, for the report.
#[derive(Clone, Debug)]
pub(crate) struct ServerFacts {
    pub(crate) address: String,
    pub(crate) tls: bool,
    pub(crate) started: SystemTime,
}

/// The report of `status`, with rates from `book`.
pub(crate) fn status_doc(
    facts: &ServerFacts,
    status: &ServerStatus,
    book: &mut RateBook,
    now: Instant,
) -> StatusDoc {
    let jobs = status
        .jobs
        .iter()
        .map(|j| {
            let p = j.progress;
            let settled = u64::from(p.done) + u64::from(p.failed);
            let rate = book.sample(j.job.0, settled, now);
            let left = u64::from(p.total).saturating_sub(settled);
            let (rate, eta_s) = if p.finished {
                (None, Some(0.0))
            } else {
                (rate, rate.filter(|r| *r > 0.0).map(|r| left as f64 / r))
            };
            JobDoc {
                id: j.job.0,
                name: j.name.clone(),
                total: p.total,
                done: p.done,
                failed: p.failed,
                running: p.running,
                finished: p.finished,
                rate,
                eta_s,
            }
        })
        .collect::<Vec<_>>();
    let live: Vec<u32> = jobs.iter().map(|j| j.id).collect();
    book.retain(&live);
    StatusDoc {
        version: env!("CARGO_PKG_VERSION"),
        address: facts.address.clone(),
        tls: facts.tls,
        now_ms: unix_ms(SystemTime::now()),
        started_ms: unix_ms(facts.started),
        workers: status.worker_list.iter().map(worker_doc).collect(),
        clients: status.clients.iter().map(client_doc).collect(),
        jobs,
    }
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The Prometheus text exposition of `doc`.
pub(crate) fn metrics(doc: &StatusDoc) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    let uptime = doc.now_ms.saturating_sub(doc.started_ms) as f64 / 1000.0;
    family(
        "colony_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        &[(String::new(), format!("{uptime:.3}"))],
    );
    family(
        "colony_workers",
        "gauge",
        "Workers connected.",
        &[(String::new(), doc.workers.len().to_string())],
    );
    family(
        "colony_task_clients",
        "gauge",
        "Task clients connected.",
        &[(String::new(), doc.clients.len().to_string())],
    );
    family(
        "colony_worker_slots",
        "gauge",
        "Tasks a worker runs at once (its credit).",
        &doc.workers
            .iter()
            .map(|w| (worker_labels(w), w.slots.to_string()))
            .collect::<Vec<_>>(),
    );
    family(
        "colony_worker_running_leases",
        "gauge",
        "Leases a worker holds.",
        &doc.workers
            .iter()
            .map(|w| (worker_labels(w), w.running.to_string()))
            .collect::<Vec<_>>(),
    );
    family(
        "colony_worker_tasks_done_total",
        "counter",
        "Completions a worker sent on its connection.",
        &doc.workers
            .iter()
            .map(|w| (worker_labels(w), w.done.to_string()))
            .collect::<Vec<_>>(),
    );
    family(
        "colony_worker_tasks_failed_total",
        "counter",
        "Failures a worker reported on its connection.",
        &doc.workers
            .iter()
            .map(|w| (worker_labels(w), w.failed.to_string()))
            .collect::<Vec<_>>(),
    );
    let job_rows = |f: &dyn Fn(&JobDoc) -> String| {
        doc.jobs
            .iter()
            .map(|j| {
                (
                    format!("job=\"{}\",name=\"{}\"", j.id, label(&j.name)),
                    f(j),
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        "colony_job_tasks",
        "gauge",
        "Tasks in a job.",
        &job_rows(&|j| j.total.to_string()),
    );
    family(
        "colony_job_tasks_done",
        "gauge",
        "Tasks of a job done (durably).",
        &job_rows(&|j| j.done.to_string()),
    );
    family(
        "colony_job_tasks_failed",
        "gauge",
        "Tasks of a job failed for good.",
        &job_rows(&|j| j.failed.to_string()),
    );
    family(
        "colony_job_tasks_running",
        "gauge",
        "Tasks of a job leased right now.",
        &job_rows(&|j| j.running.to_string()),
    );
    family(
        "colony_job_finished",
        "gauge",
        "Whether a job finished (1) or not (0).",
        &job_rows(&|j| u8::from(j.finished).to_string()),
    );
    out
}

fn worker_labels(w: &WorkerDoc) -> String {
    format!(
        "worker=\"{}\",name=\"{}\",transport=\"{}\"",
        w.id,
        label(&w.name),
        w.transport
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_needs_two_samples_and_forgets_old_ones() {
        let mut book = RateBook::default();
        let t0 = Instant::now();
        assert_eq!(book.sample(1, 0, t0), None);
        assert_eq!(book.sample(1, 5, t0 + Duration::from_millis(100)), None);
        let r = book.sample(1, 100, t0 + Duration::from_secs(2)).unwrap();
        assert!((r - 50.0).abs() < 1e-9, "{r}");
        // Ten seconds later the first samples are out of the window.
        let r = book.sample(1, 700, t0 + Duration::from_secs(12)).unwrap();
        assert!((r - 60.0).abs() < 1e-9, "{r}");
        // A count going down starts over.
        assert_eq!(book.sample(1, 3, t0 + Duration::from_secs(13)), None);
        book.retain(&[]);
        assert!(book.jobs.is_empty());
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
