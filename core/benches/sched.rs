//! Scheduler benchmarks: lease + complete cycles on a 1-million-task job, and memory per queued
//! task.
//!
//! Run with `cargo bench -p colony-core --bench sched`. Besides criterion's timings, it prints
//! `bytes per queued task` once: the scheduler's heap beyond the inputs, divided by the tasks.

use std::hint::black_box;
use std::time::Duration as StdDuration;

use colony_core::sched::{Action, Inputs, JobDef, SchedConfig, Scheduler};
use colony_core::{Instant, Lsn};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const TASKS: u32 = 1_000_000;
const BATCH: u32 = 64;

fn job_inputs() -> Inputs {
    let mut inputs = Inputs::with_capacity(TASKS as usize, 8 * TASKS as usize);
    for i in 0..TASKS {
        inputs.push(&u64::from(i).to_le_bytes());
    }
    inputs
}

/// Runs the whole job: one worker with `BATCH` credit, completions acknowledged after each
/// batch's log bytes are "durable" (handed over, as a transport would before its fsync).
fn run_job(mut s: Scheduler) -> u64 {
    let w = s.worker_joined(["k"]);
    let mut log = Vec::with_capacity(1 << 20);
    let mut leases = Vec::with_capacity(BATCH as usize);
    let mut now = 0u64;
    let mut done = 0u64;
    loop {
        s.credit(w, BATCH).ok();
        now += 1;
        s.poll(Instant::from_micros(now));
        leases.clear();
        while let Some(a) = s.pop_action() {
            if let Action::Grant { lease, .. } = a {
                leases.push(lease);
            }
        }
        if leases.is_empty() {
            break;
        }
        for &lease in &leases {
            s.complete(w, lease, b"output!!").ok();
        }
        log.clear();
        if let Some(lsn) = s.take_log(&mut log) {
            black_box(&log);
            s.durable(lsn);
        }
        while let Some(a) = s.pop_action() {
            if let Action::TaskDone { .. } = a {
                done += 1;
            }
        }
    }
    done
}

fn lease_complete(c: &mut Criterion) {
    let mut group = c.benchmark_group("sched");
    group
        .sample_size(10)
        .measurement_time(StdDuration::from_secs(8))
        .warm_up_time(StdDuration::from_secs(1));
    group.throughput(Throughput::Elements(u64::from(TASKS)));
    let template = job_inputs();
    group.bench_function("lease_complete_1m", |b| {
        b.iter_batched(
            || {
                let mut s = Scheduler::new(SchedConfig::default());
                s.create_job(JobDef::new("bench", "k", template.clone()))
                    .ok();
                s
            },
            |s| assert_eq!(run_job(s), u64::from(TASKS)),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn memory_per_task(_c: &mut Criterion) {
    let mut s = Scheduler::new(SchedConfig::default());
    let inputs = job_inputs();
    s.create_job(JobDef::new("bench", "k", inputs)).ok();
    let mut log = Vec::new();
    if let Some(lsn) = s.take_log(&mut log) {
        s.durable(Lsn(lsn.0));
    }
    let input_bytes = 8 * TASKS as usize;
    let overhead = s.heap_bytes().saturating_sub(input_bytes);
    println!(
        "sched/memory: {:.1} bytes per queued task beyond its input ({} tasks)",
        overhead as f64 / f64::from(TASKS),
        TASKS
    );
}

criterion_group!(benches, memory_per_task, lease_complete);
criterion_main!(benches);
