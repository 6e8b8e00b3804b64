//! Unit tests of the scheduler: one behaviour each, driven by hand.

use super::*;
use crate::log::{FILE_HEADER, MemStorage, Storage, replay_alloc};

const LEASE: Duration = Duration::from_secs(10);

fn sched() -> Scheduler {
    Scheduler::new(SchedConfig::default().lease_duration(LEASE))
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn inputs(n: u32) -> Inputs {
    (0..n).map(|i| i.to_le_bytes()).collect()
}

fn edge(a: u32, b: u32) -> Edge {
    Edge {
        before: TaskId(a),
        after: TaskId(b),
    }
}

fn drain(s: &mut Scheduler) -> Vec<Action> {
    core::iter::from_fn(|| s.pop_action()).collect()
}

fn grants(actions: &[Action]) -> Vec<(LeaseId, TaskId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Grant { lease, task, .. } => Some((*lease, *task)),
            _ => None,
        })
        .collect()
}

/// Makes everything logged so far durable, into `storage`.
fn sync(s: &mut Scheduler, storage: &mut MemStorage) {
    let mut buf = Vec::new();
    if let Some(lsn) = s.take_log(&mut buf) {
        storage.append(&buf).unwrap();
        storage.sync().unwrap();
        s.durable(lsn);
    }
}

fn new_storage() -> MemStorage {
    let mut m = MemStorage::new();
    m.append(&FILE_HEADER).unwrap();
    m
}

fn restart(storage: &mut MemStorage) -> Scheduler {
    let mut s = sched();
    let mut err = None;
    replay_alloc(storage, |_, rec| {
        if let Err(e) = s.replay(&rec) {
            err = Some(e);
        }
    })
    .unwrap();
    assert_eq!(err, None);
    s.replay_done();
    s
}

#[test]
fn lease_complete_ack_after_durable() {
    let mut s = sched();
    let mut log = new_storage();
    let job = s
        .create_job(JobDef::new("j", "square", inputs(3)))
        .unwrap()
        .job;
    let w = s.worker_joined(["other", "square"]);
    s.credit(w, 2).unwrap();
    s.poll(at(0));
    let a = drain(&mut s);
    let g = grants(&a);
    assert_eq!(
        g.iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![TaskId(0), TaskId(1)]
    );
    assert!(matches!(
        a[0],
        Action::Grant {
            kind: 1,
            attempt: Attempt(0),
            ..
        }
    ));
    assert_eq!(s.held_by(w), 2);
    assert_eq!(s.input(job, TaskId(1)), Some(&1u32.to_le_bytes()[..]));

    assert_eq!(s.complete(w, g[0].0, b"out0"), Ok(Answer::Accepted));
    assert_eq!(
        drain(&mut s),
        vec![],
        "nothing acknowledged before the record is durable"
    );
    assert_eq!(s.task_state(job, TaskId(0)), Some(TaskState::Recording));
    sync(&mut s, &mut log);
    assert_eq!(
        drain(&mut s),
        vec![
            Action::Ack {
                worker: w,
                lease: g[0].0
            },
            Action::TaskDone {
                job,
                task: TaskId(0)
            }
        ]
    );
    assert_eq!(s.output(job, TaskId(0)), Some(&b"out0"[..]));
    assert_eq!(s.progress(job).unwrap().done, 1);
}

#[test]
fn never_more_leases_than_credit() {
    let mut s = sched();
    s.create_job(JobDef::new("j", "k", inputs(100))).unwrap();
    let w = s.worker_joined(["k"]);
    s.credit(w, 3).unwrap();
    s.poll(at(0));
    s.poll(at(1));
    assert_eq!(grants(&drain(&mut s)).len(), 3);
    s.credit(w, 1).unwrap();
    s.poll(at(2));
    assert_eq!(grants(&drain(&mut s)).len(), 1);
    assert_eq!(s.credit_of(w), 0);
    let err = s.credit(w, 70_000).unwrap_err();
    assert!(matches!(err, ProtocolError::CreditLimit { .. }), "{err}");
}

#[test]
fn workers_get_only_their_kinds() {
    let mut s = sched();
    s.create_job(JobDef::new("j", "gpu", inputs(2))).unwrap();
    let w = s.worker_joined(["cpu"]);
    s.credit(w, 5).unwrap();
    s.poll(at(0));
    assert!(drain(&mut s).is_empty());
    let g = s.worker_joined(["gpu"]);
    s.credit(g, 5).unwrap();
    s.poll(at(0));
    assert_eq!(grants(&drain(&mut s)).len(), 2);
}

#[test]
fn expired_lease_requeues_with_next_attempt_and_fences_the_late_result() {
    let mut s = sched();
    let mut log = new_storage();
    let job = s.create_job(JobDef::new("j", "k", inputs(1))).unwrap().job;
    let w1 = s.worker_joined(["k"]);
    s.credit(w1, 1).unwrap();
    s.poll(at(0));
    let (l1, _) = grants(&drain(&mut s))[0];
    assert_eq!(s.poll_at(), Some(at(0) + LEASE));
    s.heartbeat(at(5_000), w1);
    assert_eq!(s.poll_at(), Some(at(5_000) + LEASE));
    s.poll(at(15_000));
    assert_eq!(s.task_state(job, TaskId(0)), Some(TaskState::Pending));
    assert_eq!(s.attempt(job, TaskId(0)), Some(Attempt(1)));
    let w2 = s.worker_joined(["k"]);
    s.credit(w2, 1).unwrap();
    s.poll(at(15_001));
    let a = drain(&mut s);
    assert!(matches!(a[..], [Action::Grant { worker, attempt: Attempt(1), .. }] if worker == w2));
    // The late answer of the first lease is acknowledged and dropped.
    assert_eq!(s.complete(w1, l1, b"late"), Ok(Answer::Stale));
    assert_eq!(
        drain(&mut s),
        vec![Action::Ack {
            worker: w1,
            lease: l1
        }]
    );
    assert_eq!(s.output(job, TaskId(0)), None);
    let (l2, _) = grants(&a)[0];
    s.complete(w2, l2, b"good").unwrap();
    sync(&mut s, &mut log);
    assert_eq!(s.output(job, TaskId(0)), Some(&b"good"[..]));
    // A second answer to the same lease is stale too.
    assert_eq!(s.complete(w2, l2, b"again"), Ok(Answer::Stale));
}

#[test]
fn answering_another_workers_lease_is_a_protocol_error() {
    let mut s = sched();
    s.create_job(JobDef::new("j", "k", inputs(1))).unwrap();
    let w1 = s.worker_joined(["k"]);
    let w2 = s.worker_joined(["k"]);
    s.credit(w1, 1).unwrap();
    s.poll(at(0));
    let (l, _) = grants(&drain(&mut s))[0];
    assert_eq!(s.complete(w2, l, b"x"), Err(ProtocolError::NotHolder(l)));
    assert_eq!(s.held_by(w1), 1, "the lease stays with its holder");
}

#[test]
fn disconnect_requeues_at_once_without_counting_a_failure() {
    let mut s = sched();
    let job = s
        .create_job(JobDef::new("j", "k", inputs(2)).max_attempts(1))
        .unwrap()
        .job;
    let w1 = s.worker_joined(["k"]);
    s.credit(w1, 2).unwrap();
    s.poll(at(0));
    drain(&mut s);
    s.worker_left(w1);
    assert_eq!(s.progress(job).unwrap().running, 0);
    let w2 = s.worker_joined(["k"]);
    s.credit(w2, 2).unwrap();
    s.poll(at(1));
    let g = grants(&drain(&mut s));
    assert_eq!(g.len(), 2);
    assert_eq!(s.attempt(job, TaskId(0)), Some(Attempt(1)));
}

#[test]
fn failures_retry_then_fail_for_good_and_fail_dependents() {
    let mut s = sched();
    let mut log = new_storage();
    let edges = [edge(0, 1), edge(1, 2)];
    let job = s
        .create_job(
            JobDef::new("j", "k", inputs(3))
                .edges(&edges)
                .max_attempts(2),
        )
        .unwrap()
        .job;
    let w = s.worker_joined(["k"]);
    s.credit(w, 1).unwrap();
    s.poll(at(0));
    let (l, t) = grants(&drain(&mut s))[0];
    assert_eq!(t, TaskId(0));
    assert_eq!(
        s.fail(w, l, Retry::Retryable, "boom 1"),
        Ok(Answer::Accepted)
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::Ack {
            worker: w,
            lease: l
        }]
    );
    s.credit(w, 1).unwrap();
    s.poll(at(1));
    let (l, _) = grants(&drain(&mut s))[0];
    s.fail(w, l, Retry::Retryable, "boom 2").unwrap();
    sync(&mut s, &mut log);
    let a = drain(&mut s);
    assert!(a.contains(&Action::TaskFailed {
        job,
        task: TaskId(0)
    }));
    assert!(a.contains(&Action::TaskFailed {
        job,
        task: TaskId(2)
    }));
    assert!(a.contains(&Action::JobFinished { job }));
    assert_eq!(s.error(job, TaskId(0)), Some("boom 2"));
    assert_eq!(
        s.error(job, TaskId(2)),
        Some("depends on task 1 which failed")
    );
    assert_eq!(s.progress(job).unwrap().failed, 3);
    assert!(s.all_finished());
}

#[test]
fn permanent_failure_skips_retries() {
    let mut s = sched();
    let job = s
        .create_job(JobDef::new("j", "k", inputs(1)).max_attempts(5))
        .unwrap()
        .job;
    let w = s.worker_joined(["k"]);
    s.credit(w, 1).unwrap();
    s.poll(at(0));
    let (l, _) = grants(&drain(&mut s))[0];
    s.fail(w, l, Retry::Permanent, "bad input").unwrap();
    assert_eq!(s.task_state(job, TaskId(0)), Some(TaskState::Failing));
}

#[test]
fn expiries_count_towards_max_attempts() {
    let mut s = sched();
    let job = s
        .create_job(JobDef::new("j", "k", inputs(1)).max_attempts(2))
        .unwrap()
        .job;
    let w = s.worker_joined(["k"]);
    for round in 0..2u64 {
        s.credit(w, 1).unwrap();
        s.poll(at(round * 20_000));
        assert_eq!(grants(&drain(&mut s)).len(), 1);
        s.poll(at(round * 20_000 + 10_000));
    }
    assert_eq!(s.task_state(job, TaskId(0)), Some(TaskState::Failing));
    assert!(s.error(job, TaskId(0)).unwrap().contains("expired"));
}

#[test]
fn dependents_start_only_after_the_record_is_durable() {
    let mut s = sched();
    let mut log = new_storage();
    let edges = [edge(0, 1), edge(0, 2)];
    s.create_job(JobDef::new("j", "k", inputs(3)).edges(&edges))
        .unwrap();
    let w = s.worker_joined(["k"]);
    s.credit(w, 3).unwrap();
    s.poll(at(0));
    let g = grants(&drain(&mut s));
    assert_eq!(g.len(), 1);
    s.complete(w, g[0].0, b"0").unwrap();
    s.poll(at(1));
    assert!(grants(&drain(&mut s)).is_empty(), "not durable yet");
    sync(&mut s, &mut log);
    s.poll(at(2));
    let g: Vec<_> = grants(&drain(&mut s)).into_iter().map(|x| x.1).collect();
    assert_eq!(g, vec![TaskId(1), TaskId(2)]);
}

#[test]
fn cycles_and_bad_options_are_refused() {
    let mut s = sched();
    let err = s
        .create_job(JobDef::new("j", "k", inputs(3)).edges(&[edge(0, 1), edge(1, 0)]))
        .unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
    assert_eq!(
        s.create_job(JobDef::new("j", "k", inputs(1)).max_attempts(0)),
        Err(CreateJobError::ZeroAttempts)
    );
    assert_eq!(
        s.create_job(JobDef::new("j", "k", inputs(2)).edges(&[edge(0, 1)]).open()),
        Err(CreateJobError::EdgesOnOpenJob)
    );
}

/// Runs a job to its end with one worker, syncing every `sync_every` completions.
fn run_some(s: &mut Scheduler, log: &mut MemStorage, w: WorkerId, completions: usize) {
    let mut left = completions;
    let mut now = 0;
    while left > 0 {
        s.credit(w, 1).unwrap();
        now += 1;
        s.poll(at(now));
        let actions = drain(s);
        let Some(&(lease, task)) = grants(&actions).first() else {
            break;
        };
        s.complete(w, lease, &(task.0 * 10).to_le_bytes()).unwrap();
        sync(s, log);
        drain(s);
        left -= 1;
    }
}

#[test]
fn resume_from_log_keeps_outputs_and_never_releases_done_tasks() {
    let mut log = new_storage();
    let edges = [edge(0, 5), edge(1, 5)];
    {
        let mut s = sched();
        s.create_job(JobDef::new("loop", "k", inputs(6)).edges(&edges))
            .unwrap();
        let w = s.worker_joined(["k"]);
        run_some(&mut s, &mut log, w, 3);
        // one more completion that never becomes durable: lost in the crash
        s.credit(w, 1).unwrap();
        s.poll(at(100));
        let (lease, _) = grants(&drain(&mut s))[0];
        s.complete(w, lease, b"lost").unwrap();
    }
    let mut s = restart(&mut log);
    let created = s
        .create_job(JobDef::new("loop", "k", inputs(6)).edges(&edges))
        .unwrap();
    assert_eq!(created.already_done, 3);
    let job = created.job;
    for t in 0..3 {
        assert_eq!(s.task_state(job, TaskId(t)), Some(TaskState::Done));
        assert_eq!(s.output(job, TaskId(t)), Some(&(t * 10).to_le_bytes()[..]));
    }
    let w = s.worker_joined(["k"]);
    let mut seen = Vec::new();
    let mut now = 1_000;
    loop {
        s.credit(w, 1).unwrap();
        now += 1;
        s.poll(at(now));
        let actions = drain(&mut s);
        let Some(&(lease, task)) = grants(&actions).first() else {
            break;
        };
        seen.push(task.0);
        s.complete(w, lease, &(task.0 * 10).to_le_bytes()).unwrap();
        sync(&mut s, &mut log);
        drain(&mut s);
    }
    seen.sort();
    assert_eq!(seen, vec![3, 4, 5]);
    assert!(s.all_finished());

    // Resuming the finished log again: everything done, nothing to lease.
    let mut s = restart(&mut log);
    let c = s
        .create_job(JobDef::new("loop", "k", inputs(6)).edges(&edges))
        .unwrap();
    assert_eq!(c.already_done, 6);
    assert!(s.all_finished());
}

#[test]
fn resume_with_other_items_names_the_mismatch() {
    let mut log = new_storage();
    let mut s = sched();
    s.create_job(JobDef::new("loop", "k", inputs(6))).unwrap();
    sync(&mut s, &mut log);
    let mut s = restart(&mut log);
    let err = s
        .create_job(JobDef::new("loop", "k", inputs(5)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "job \"loop\" does not match its checkpoint: the checkpoint has 6 items, this run has 5"
    );
    let other: Inputs = (0..6u32).map(|i| (i + 1).to_le_bytes()).collect();
    let err = s.create_job(JobDef::new("loop", "k", other)).unwrap_err();
    assert!(
        err.to_string().contains("other item inputs or edges"),
        "{err}"
    );
    let err = s
        .create_job(JobDef::new("loop", "k", inputs(6)).edges(&[edge(0, 1)]))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("0 dependency edges, this run has 1"),
        "{err}"
    );
    assert!(s.create_job(JobDef::new("loop", "k", inputs(6))).is_ok());
}

#[test]
fn open_jobs_come_back_from_the_log_alone() {
    let mut log = new_storage();
    let job;
    {
        let mut s = sched();
        job = s
            .create_job(JobDef::new("pool", "k", inputs(2)).open())
            .unwrap()
            .job;
        assert_eq!(s.add_task(job, b"third"), Some(TaskId(2)));
        let w = s.worker_joined(["k"]);
        run_some(&mut s, &mut log, w, 1);
    }
    let mut s = restart(&mut log);
    assert_eq!(s.job_by_name("pool"), Some(job));
    assert_eq!(s.progress(job).unwrap().total, 3);
    assert_eq!(s.progress(job).unwrap().done, 1);
    assert_eq!(s.input(job, TaskId(2)), Some(&b"third"[..]));
    let w = s.worker_joined(["k"]);
    s.credit(w, 10).unwrap();
    s.poll(at(0));
    let g: Vec<_> = grants(&drain(&mut s)).into_iter().map(|x| x.1).collect();
    assert_eq!(g, vec![TaskId(1), TaskId(2)]);
    // Attaching by name to the live job works and adds its inputs.
    let c = s
        .create_job(JobDef::new("pool", "k", inputs(1)).open())
        .unwrap();
    assert_eq!(c.job, job);
    assert_eq!(s.progress(job).unwrap().total, 4);
    s.close_job(job);
    assert!(!s.progress(job).unwrap().finished);
}

#[test]
fn memory_per_queued_task_is_small() {
    let mut s = sched();
    let n = 100_000u32;
    s.create_job(JobDef::new("j", "k", (0..n).map(|_| [0u8; 8]).collect()))
        .unwrap();
    let per_task = (s.heap_bytes() - 8 * n as usize) as f64 / f64::from(n);
    assert!(per_task <= 64.0, "{per_task} bytes per queued task");
}

#[test]
fn versioned_kinds_conflict_with_other_versions_only() {
    let mut s = sched();
    s.create_job(JobDef::new("squares", "loop:squares#aaaa", inputs(1)))
        .unwrap();
    assert!(s.check_kinds(["loop:squares#aaaa", "other"]).is_ok());
    assert!(s.check_kinds(["loop:cubes#bbbb"]).is_ok());
    let err = s.check_kinds(["loop:squares#bbbb"]).unwrap_err();
    assert_eq!(err.job, "squares");
    assert!(
        err.to_string().contains("differ from the serving process"),
        "{err}"
    );
}
