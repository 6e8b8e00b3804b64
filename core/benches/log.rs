//! Checkpoint log throughput: replaying a 1,000,000-record log from memory, and appending records.
//!
//! Run with `cargo bench -p colony-core --bench log`.

use std::hint::black_box;
use std::time::Duration;

use colony_core::id::{Attempt, JobId, Lsn, TaskId};
use colony_core::log::{FILE_HEADER, LogWriter, MemStorage, Record, StopReason, replay};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const RECORDS: u32 = 1_000_000;

fn done(task: u32) -> Record<'static> {
    Record::TaskDone {
        job: JobId(1),
        task: TaskId(task),
        attempt: Attempt(0),
        output: &[1, 2, 3, 4, 5, 6, 7, 8],
    }
}

/// A log of `RECORDS` task-done records with 8-byte outputs.
fn million_record_log() -> MemStorage {
    let mut bytes = FILE_HEADER.to_vec();
    for t in 0..RECORDS {
        done(t).append_to(&mut bytes).unwrap();
    }
    MemStorage::from_bytes(bytes)
}

fn bench_replay(c: &mut Criterion) {
    let mut storage = million_record_log();
    let mut buf = vec![0u8; 64 * 1024];
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(u64::from(RECORDS)));
    group.bench_function("replay_1m_task_done", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let r = replay(&mut storage, &mut buf, |_, rec| {
                if let Record::TaskDone { task, output, .. } = rec {
                    sum += u64::from(task.0) + output.len() as u64;
                }
            })
            .unwrap();
            assert_eq!(
                (r.records(), r.stop()),
                (u64::from(RECORDS), StopReason::End)
            );
            black_box(sum)
        })
    });
    group.finish();
}

fn bench_append(c: &mut Criterion) {
    const BATCH: u32 = 10_000;
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(u64::from(BATCH)));
    let mut out = Vec::with_capacity(BATCH as usize * 32);
    group.bench_function("append_to_10k_task_done", |b| {
        b.iter(|| {
            out.clear();
            for t in 0..BATCH {
                black_box(done(t)).append_to(&mut out).unwrap();
            }
            black_box(out.len())
        })
    });
    let mut storage = MemStorage::new();
    group.bench_function("writer_append_flush_10k_task_done", |b| {
        b.iter(|| {
            storage = MemStorage::from_bytes(Vec::with_capacity(BATCH as usize * 32));
            let mut w = LogWriter::new(Lsn(0));
            for t in 0..BATCH {
                w.append(&black_box(done(t))).unwrap();
            }
            black_box(w.flush(&mut storage).unwrap())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    targets = bench_replay, bench_append
}
criterion_main!(benches);
