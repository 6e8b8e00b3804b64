//! The distributed for-loop as users run it: real processes of `colony-loop-fixture` (one
//! program on every "node"), real sockets on 127.0.0.1, SIGKILLs at random points.
//!
//! No fixed ports (the first process binds port 0 and prints its address) and no sleeps to let
//! things settle: every wait is for an event (a stdout line, a runs-log line, an exit), bounded.
//! Random kill points come from a seed printed by each test (`LOOP_TEST_SEED` replays one).

#[path = "forloop/harness.rs"]
mod harness;
#[path = "forloop/shape.rs"]
mod shape;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{
    Ended, Event, Fixture, Proc, Scene, assert_checkpoint_matches, assert_order, assert_product,
    by_item, count_runs, open_gate_once_working, read_checkpoint, read_report, read_runs,
    wait_until,
};
use shape::Deps;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A small random source for kill points, seeded from the clock unless `LOOP_TEST_SEED` is set.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Self {
        let seed = std::env::var("LOOP_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: LOOP_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        shape::digest(self.0) % n
    }
}

// ------------------------------------------------------------------------------------------
// 1. Many items over several processes.

#[test]
fn four_processes_finish_a_hundred_thousand_items_each_recorded_once() {
    const N: usize = 100_000;
    let started = Instant::now();
    let scene = Scene::new();
    let (cp, runs, out) = (
        scene.path("ckpt"),
        scene.path("runs"),
        scene.path("out.json"),
    );
    let base = scene.fixture(&["--items", &N.to_string(), "--runs-log", &s(&runs)]);
    let mut server = base
        .clone()
        .with(&[
            "--addr",
            "127.0.0.1:0",
            "--checkpoint",
            &s(&cp),
            "--output",
            &s(&out),
        ])
        .spawn();
    let addr = server.serving_addr();
    let mut workers: Vec<Proc> = (0..3)
        .map(|_| base.clone().with(&["--addr", &addr]).spawn())
        .collect();

    let ended = server.wait();
    ended.assert_ok();
    for w in &mut workers {
        let e = w.wait();
        e.assert_ok();
        assert_eq!(e.line("role"), Some("role working"));
    }
    let report = read_report(&out);
    assert_eq!(
        (report.done, report.resumed, report.failures.len()),
        (N, 0, 0)
    );
    let product = assert_product(&report, N, 0);
    assert_checkpoint_matches(&read_checkpoint(&cp), &product);

    // Each item ran once (no failure, no crash: nothing to re-run), and its one run is recorded.
    let events = read_runs(&runs);
    assert_eq!(events.len(), 2 * N, "one start and one end line per item");
    let mut ended_runs = vec![None; N];
    for e in events.iter().filter(|e| e.tag == 'E') {
        assert!(
            ended_runs[e.index].replace(e.run).is_none(),
            "item {} ran twice",
            e.index
        );
    }
    for (i, run) in ended_runs.iter().enumerate() {
        assert_eq!(*run, Some(product[i].1), "item {i}: the recorded run");
    }
    let pids: HashSet<u32> = events.iter().map(|e| e.pid).collect();
    assert_eq!(pids.len(), 4, "every process worked");
    eprintln!("100,000 items over 4 processes in {:?}", started.elapsed());
}

// ------------------------------------------------------------------------------------------
// 2. A worker killed mid-job.

#[test]
fn a_worker_killed_mid_job_gives_its_items_back_at_once() {
    const N: usize = 400;
    let scene = Scene::new();
    let (cp, runs, out) = (
        scene.path("ckpt"),
        scene.path("runs"),
        scene.path("out.json"),
    );
    let base = scene.fixture(&[
        "--items",
        &N.to_string(),
        "--runs-log",
        &s(&runs),
        "--sleep-us",
        "10000",
    ]);
    let mut server = base
        .clone()
        .with(&[
            "--addr",
            "127.0.0.1:0",
            "--checkpoint",
            &s(&cp),
            "--output",
            &s(&out),
        ])
        .spawn();
    let addr = server.serving_addr();
    let run_mode = ["--mode", "run", "--slots", "2", "--addr", &addr];
    let mut victim = base.clone().with(&run_mode).spawn();
    let mut other = base.clone().with(&run_mode).spawn();

    let victim_pid = victim.pid;
    wait_until("the victim runs items", || {
        read_runs(&runs)
            .iter()
            .filter(|e| e.pid == victim_pid && e.tag == 'S')
            .count()
            >= 4
    });
    victim.kill();
    let killed_at = Instant::now();
    let events = read_runs(&runs);
    let unfinished: Vec<usize> = unfinished_runs(&events, victim_pid);
    assert!(
        !unfinished.is_empty(),
        "the victim was killed with items in flight"
    );
    // Its items come back at once (not at lease expiry, 30 s): someone else starts each.
    wait_until("the victim's items run elsewhere", || {
        let events = read_runs(&runs);
        unfinished.iter().all(|&i| {
            events
                .iter()
                .any(|e| e.index == i && e.tag == 'S' && e.pid != victim_pid)
        })
    });
    let back_after = killed_at.elapsed();
    assert!(
        back_after < Duration::from_secs(5),
        "items came back after {back_after:?}"
    );

    server.wait().assert_ok();
    other.wait().assert_ok();
    let report = read_report(&out);
    let product = assert_product(&report, N, 0);
    assert_checkpoint_matches(&read_checkpoint(&cp), &product);
    let events = read_runs(&runs);
    for &i in &unfinished {
        let recorded = product[i].1 >> 32;
        assert_ne!(
            recorded as u32, victim_pid,
            "item {i}: the dead worker's run is not recorded"
        );
    }
    assert_no_rerun_after_recorded(&events, &product);
    eprintln!(
        "{} in-flight items of the killed worker ran again {back_after:?} after the kill",
        unfinished.len()
    );
}

#[test]
fn a_frozen_worker_loses_its_items_when_the_server_gives_up_on_it() {
    const N: usize = 200;
    let scene = Scene::new();
    let (cp, runs, out) = (
        scene.path("ckpt"),
        scene.path("runs"),
        scene.path("out.json"),
    );
    let base = scene.fixture(&["--items", &N.to_string(), "--runs-log", &s(&runs)]);
    let mut server = base
        .clone()
        .with(&[
            "--addr",
            "127.0.0.1:0",
            "--checkpoint",
            &s(&cp),
            "--output",
            &s(&out),
            "--sleep-us",
            "1000",
        ])
        .spawn();
    let addr = server.serving_addr();
    // Slow items, so that it is stopped in the middle of one.
    let mut frozen = base
        .clone()
        .with(&["--addr", &addr, "--sleep-us", "300000"])
        .spawn();
    let frozen_pid = frozen.pid;
    wait_until("the worker to be frozen runs an item", || {
        read_runs(&runs)
            .iter()
            .any(|e| e.pid == frozen_pid && e.tag == 'S')
    });
    frozen.signal("STOP");
    let stopped_at = Instant::now();
    let held = unfinished_runs(&read_runs(&runs), frozen_pid);
    assert!(!held.is_empty(), "stopped in the middle of an item");
    let mut other = base
        .clone()
        .with(&["--addr", &addr, "--sleep-us", "1000"])
        .spawn();

    // Its connection stays up but silent: the server drops it after its idle timeout (10 s),
    // before the leases would expire (30 s), and its items are done elsewhere.
    server.wait().assert_ok();
    let took = stopped_at.elapsed();
    other.wait().assert_ok();
    frozen.kill();
    assert!(
        took < Duration::from_secs(25),
        "the job ended {took:?} after the worker froze"
    );
    let report = read_report(&out);
    let product = assert_product(&report, N, 0);
    assert_checkpoint_matches(&read_checkpoint(&cp), &product);
    for &i in &held {
        assert_ne!(
            (product[i].1 >> 32) as u32,
            frozen_pid,
            "item {i} is recorded from a live process"
        );
    }
    eprintln!(
        "the frozen worker's {} items came back; the job ended {took:?} after it froze",
        held.len()
    );
}

/// Items `pid` started and never ended.
fn unfinished_runs(events: &[Event], pid: u32) -> Vec<usize> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e.pid == pid) {
        match e.tag {
            'S' => {
                open.insert(e.run, e.index);
            }
            _ => {
                open.remove(&e.run);
            }
        }
    }
    open.into_values().collect()
}

/// No item starts again once the run the product recorded has ended: a durable output is
/// never redone.
fn assert_no_rerun_after_recorded(events: &[Event], product: &[(u64, u64)]) {
    for (index, list) in by_item(events) {
        let recorded = product[index].1;
        let Some(end) = list
            .iter()
            .find(|(_, e)| e.tag == 'E' && e.run == recorded)
            .map(|(p, _)| *p)
        else {
            panic!("item {index}: its recorded run {recorded:#x} has no end line");
        };
        if let Some((pos, e)) = list.iter().find(|(p, e)| e.tag == 'S' && *p > end) {
            panic!(
                "item {index} ran again (line {pos}, {e:?}) after its recorded run ended (line {end})"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// 3. and 4. The server (or the serial process) killed again and again.

/// One kill: what the checkpoint held right after it, and where the runs log was.
struct Kill {
    /// Runs-log lines written before the kill (counted once the process was reaped).
    at: usize,
    /// The outputs durable in the checkpoint after the kill.
    durable: BTreeMap<usize, (u64, u64)>,
}

struct KillPlan<'a> {
    test: &'a str,
    items: usize,
    deps: Deps,
    serial: bool,
    kills: usize,
    workers: usize,
    /// Per-item work.
    extra: &'a [&'a str],
}

/// Runs a job, SIGKILLs the serving (or serial) process `kills` times at random points and
/// restarts it at once on the same checkpoint (workers stay up and reconnect), then checks:
/// - the product is complete, in order, correct, and each task is recorded once in the
///   checkpoint;
/// - no completed output is lost: what was durable after each kill is in every later checkpoint
///   and in the final product, unchanged;
/// - only in-flight items re-run: an item durable at a kill never starts again after it; no
///   item starts again after its recorded run ended; and each item runs at most once plus the
///   number of kills at which it had started but was not yet durable;
/// - with dependencies, no item starts before its predecessors' recorded runs ended.
fn kill_and_resume(plan: &KillPlan<'_>) {
    let started = Instant::now();
    let mut rng = Rng::new(plan.test);
    let scene = Scene::new();
    let (cp, runs, out) = (
        scene.path("ckpt"),
        scene.path("runs"),
        scene.path("out.json"),
    );
    let gate = scene.path("gate");
    let deps = match plan.deps {
        Deps::None => "none".to_string(),
        Deps::Chains(k) => format!("chains:{k}"),
        Deps::Dag(seed) => format!("dag:{seed}"),
    };
    let base = scene
        .fixture(&[
            "--items",
            &plan.items.to_string(),
            "--deps",
            &deps,
            "--runs-log",
            &s(&runs),
        ])
        .with(plan.extra);
    let serving = if plan.serial {
        base.clone()
            .with(&["--serial", "--checkpoint", &s(&cp), "--output", &s(&out)])
    } else {
        base.clone()
            .with(&["--checkpoint", &s(&cp), "--output", &s(&out)])
    };
    let (mut server, addr) = if plan.serial {
        (serving.spawn(), String::new())
    } else {
        let mut first = serving.clone().with(&["--addr", "127.0.0.1:0"]).spawn();
        let addr = first.serving_addr();
        (first, addr)
    };
    let serving = if plan.serial {
        serving
    } else {
        serving.with(&["--addr", &addr])
    };
    let mut workers: Vec<Proc> = (0..plan.workers)
        .map(|_| {
            base.clone()
                .with(&["--addr", &addr, "--server-lost-ms", "30000"])
                // Its log says when it joined a server.
                .env("RUST_LOG", "warn,colony_tokio::worker=info")
                .spawn()
        })
        .collect();
    // Workers first find the server up: a process that starts while no one serves would serve.
    for w in &mut workers {
        assert_eq!(w.wait_line("role "), "role working");
    }

    let mut kills: Vec<Kill> = Vec::new();
    let joined = |w: &Proc| w.stderr_so_far().matches(" joined ").count();
    let mut joins: Vec<usize> = Vec::new();
    for _ in 0..plan.kills {
        // A random point: at once (while it starts, replays, binds), or after it served a while.
        let immediate = rng.below(5) == 0;
        if !immediate {
            server.wait_line("role ");
            let from = count_runs(&runs);
            let more = rng.below(40) as usize;
            wait_until("the job makes progress", || {
                if server.exited() {
                    panic!("the serving process ended early: {:#?}", server.wait());
                }
                count_runs(&runs) >= from + more
            });
        }
        server.kill();
        let at = count_runs(&runs);
        let durable = read_checkpoint(&cp).outputs();
        kills.push(Kill { at, durable });
        joins = workers.iter().map(joined).collect();
        server = if kills.len() < plan.kills {
            serving.spawn()
        } else {
            // The last one holds its own items until every worker is back (a worker still in
            // its reconnect backoff when the job ended would find no one to tell it so).
            serving.clone().with(&["--gate", &s(&gate)]).spawn()
        };
    }
    server.wait_line("role ");
    for (w, before) in workers.iter().zip(joins) {
        wait_until("every worker joined the last server", || joined(w) > before);
    }
    std::fs::write(&gate, b"").unwrap();
    server.wait().assert_ok();
    for w in &mut workers {
        w.wait().assert_ok();
    }

    let notes: String = kills
        .iter()
        .map(|k| {
            format!(
                "kill at {} durable {:?}\n",
                k.at,
                k.durable.keys().collect::<Vec<_>>()
            )
        })
        .collect();
    std::fs::write(scene.path("kills"), notes).unwrap();
    let report = read_report(&out);
    let product = assert_product(&report, plan.items, 0);
    let final_cp = read_checkpoint(&cp);
    assert_checkpoint_matches(&final_cp, &product);
    let events = read_runs(&runs);

    // No completed output lost.
    let mut previous: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for (k, kill) in kills.iter().enumerate() {
        for (task, out) in &previous {
            assert_eq!(
                kill.durable.get(task),
                Some(out),
                "kill {k}: item {task} was durable before and is lost"
            );
        }
        for (task, out) in &kill.durable {
            assert_eq!(
                product[*task], *out,
                "kill {k}: item {task}'s durable output differs from the product"
            );
        }
        previous = kill.durable.clone();
    }

    // Only in-flight items re-run.
    assert_no_rerun_after_recorded(&events, &product);
    let items = by_item(&events);
    let mut reruns = 0;
    for (index, list) in &items {
        let starts: Vec<usize> = list
            .iter()
            .filter(|(_, e)| e.tag == 'S')
            .map(|(p, _)| *p)
            .collect();
        for kill in &kills {
            if kill.durable.contains_key(index) {
                assert!(
                    starts.iter().all(|&p| p < kill.at),
                    "item {index} was durable at a kill and started again after it"
                );
            }
        }
        // A serving process hands an item out once (no lease expires here, and a worker only
        // leaves when its server dies) and never once it is durable. So an item runs once, plus
        // once per kill that found it not yet durable, before its last start. (A worker may
        // still start an item whose lease died with the server a moment before: that kill
        // accounts for it.)
        let last = *starts.last().expect("every item ran");
        let allowed = 1 + kills
            .iter()
            .filter(|k| !k.durable.contains_key(index) && k.at <= last)
            .count();
        assert!(
            starts.len() <= allowed,
            "item {index} ran {} times, but only {} kills found it in flight",
            starts.len(),
            allowed - 1
        );
        reruns += starts.len() - 1;
    }
    // In all: each kill re-runs at most the leases then held (every process holds at most its
    // credit: one slot and two prefetched in iterate mode; the serial process one item) and the
    // items completed but not yet durable.
    let credit = if plan.serial {
        1
    } else {
        3 * (plan.workers + 1)
    };
    let mut bound = 0;
    let mut widest = 0;
    for kill in &kills {
        let unrecorded = items
            .iter()
            .filter(|(i, list)| {
                !kill.durable.contains_key(i)
                    && list.iter().any(|(p, e)| e.tag == 'E' && *p < kill.at)
            })
            .count();
        widest = widest.max(unrecorded);
        bound += credit + unrecorded;
    }
    assert!(
        reruns <= bound,
        "{reruns} re-runs, more than the {bound} leases and unrecorded completions at the kills"
    );
    if plan.serial {
        // One item at a time, each synced before the next: at most one lost per kill.
        assert!(
            reruns <= plan.kills,
            "{reruns} re-runs after {} kills of the serial process",
            plan.kills
        );
    }
    let edges = shape::edges(plan.items, plan.deps);
    assert_order(&events, &edges, &product);
    eprintln!(
        "{}: {} items, {} kills, {} re-runs (bound {}; at most {} completed but unrecorded at a kill), {:?}",
        plan.test,
        plan.items,
        plan.kills,
        reruns,
        bound,
        widest,
        started.elapsed()
    );
}

#[test]
fn the_server_killed_twenty_times_loses_no_output_and_reruns_only_what_was_in_flight() {
    kill_and_resume(&KillPlan {
        test: "server kills",
        items: 2_000,
        deps: Deps::None,
        serial: false,
        kills: 20,
        workers: 2,
        extra: &["--sleep-us", "500"],
    });
}

#[test]
fn the_server_killed_twenty_times_keeps_the_dependency_order() {
    kill_and_resume(&KillPlan {
        test: "server kills, DAG",
        items: 1_500,
        deps: Deps::Dag(11),
        serial: false,
        kills: 20,
        workers: 2,
        extra: &["--sleep-us", "500"],
    });
}

#[test]
fn the_serial_process_killed_twenty_times_resumes_its_checkpoint() {
    kill_and_resume(&KillPlan {
        test: "serial kills, chains",
        items: 300,
        deps: Deps::Chains(3),
        serial: true,
        kills: 20,
        workers: 0,
        extra: &["--sleep-us", "200"],
    });
}

// ------------------------------------------------------------------------------------------
// 5. A checkpoint of another job.

#[test]
fn resuming_a_checkpoint_with_other_items_or_edges_names_the_mismatch() {
    let scene = Scene::new();
    let cp = scene.path("ckpt");
    let job = |more: &[&str]| {
        scene
            .fixture(&[
                "--items",
                "40",
                "--deps",
                "chains:4",
                "--checkpoint",
                &s(&cp),
            ])
            .with(more)
    };
    job(&["--serial"]).spawn().wait().assert_ok();
    let before = std::fs::read(&cp).unwrap();

    let refused = |fixture: Fixture, expect: &[&str]| {
        let ended = fixture.spawn().wait();
        assert!(
            !ended.status.success(),
            "a mismatched resume must fail: {ended:#?}"
        );
        let first = ended
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{ended:#?}"));
        for word in expect {
            assert!(first.contains(word), "{first:?} should name {word:?}");
        }
        first.to_string()
    };
    let more = refused(
        scene.fixture(&[
            "--items",
            "41",
            "--deps",
            "chains:4",
            "--checkpoint",
            &s(&cp),
            "--serial",
        ]),
        &["checkpoint", "40 items", "41"],
    );
    let edges = refused(
        job(&["--serial", "--extra-edge", "0,39"]),
        &["checkpoint", "36 dependency edges", "37"],
    );
    let salted = refused(
        job(&["--serial", "--salt", "5"]),
        &["checkpoint", "other item"],
    );
    // The serving process of a networked loop says the same.
    let served = refused(
        scene.fixture(&[
            "--items",
            "41",
            "--deps",
            "chains:4",
            "--checkpoint",
            &s(&cp),
            "--addr",
            "127.0.0.1:0",
        ]),
        &["checkpoint", "40 items", "41"],
    );
    assert_eq!(
        std::fs::read(&cp).unwrap(),
        before,
        "a refused resume leaves the checkpoint alone"
    );
    eprintln!("{more}\n{edges}\n{salted}\n{served}");

    // The right job still resumes it.
    let ended = job(&["--serial"]).spawn().wait();
    ended.assert_ok();
    assert!(
        ended.line("the job had already finished").is_some(),
        "{ended:#?}"
    );
    assert!(
        ended.stderr.contains("nothing to run"),
        "the loop says so: {ended:#?}"
    );
}

// ------------------------------------------------------------------------------------------
// 6. Late workers, vanished servers.

#[test]
fn a_process_started_after_the_job_ended_exits_zero_saying_so() {
    let scene = Scene::new();
    let (cp, out, runs, gate) = (
        scene.path("ckpt"),
        scene.path("out.json"),
        scene.path("runs"),
        scene.path("gate"),
    );
    let base = scene.fixture(&[
        "--items",
        "200",
        "--checkpoint",
        &s(&cp),
        "--runs-log",
        &s(&runs),
    ]);
    let mut server = base
        .clone()
        .with(&[
            "--addr",
            "127.0.0.1:0",
            "--output",
            &s(&out),
            "--gate",
            &s(&gate),
        ])
        .spawn();
    let addr = server.serving_addr();
    let mut worker = base.clone().with(&["--addr", &addr]).spawn();
    open_gate_once_working(&gate, &runs, worker.pid);
    server.wait().assert_ok();
    worker.wait().assert_ok();
    let first = read_report(&out);
    std::fs::remove_file(&out).unwrap();

    // Same program, same checkpoint, after the end: it finds the job finished and says so.
    let late: Ended = base
        .clone()
        .with(&["--addr", &addr, "--output", &s(&out)])
        .spawn()
        .wait();
    late.assert_ok();
    assert!(
        late.line("the job had already finished: 200 items")
            .is_some(),
        "{late:#?}"
    );
    assert_eq!(late.finished("ran_here"), "0");
    assert!(
        late.stderr
            .contains("the job had already finished (all 200 items are settled"),
        "the loop says so: {late:#?}"
    );
    let again = read_report(&out);
    assert_eq!(
        again.product, first.product,
        "the product of a finished job, from its checkpoint"
    );
}

#[test]
fn a_worker_whose_server_vanished_exits_non_zero_saying_so() {
    let scene = Scene::new();
    let (runs, gate) = (scene.path("runs"), scene.path("gate"));
    let base = scene.fixture(&["--items", "200", "--runs-log", &s(&runs)]);
    let mut server = base
        .clone()
        .with(&["--addr", "127.0.0.1:0", "--gate", &s(&gate)])
        .spawn();
    let addr = server.serving_addr();
    let mut worker = base
        .clone()
        .with(&[
            "--addr",
            &addr,
            "--sleep-us",
            "2000",
            "--server-lost-ms",
            "1000",
        ])
        .spawn();
    let pid = worker.pid;
    wait_until("the worker runs items", || {
        read_runs(&runs).iter().any(|e| e.pid == pid)
    });
    server.kill();
    let killed = Instant::now();
    let ended = worker.wait();
    assert!(!ended.status.success(), "{ended:#?}");
    assert!(
        ended.stderr.contains("error: ") && ended.stderr.contains("lost the server"),
        "{ended:#?}"
    );
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the worker gave up after {took:?}"
    );
}

// ------------------------------------------------------------------------------------------
// 7. Another item list.

#[test]
fn a_process_with_other_items_is_refused_and_the_job_carries_on() {
    let scene = Scene::new();
    let (gate, out, runs) = (
        scene.path("gate"),
        scene.path("out.json"),
        scene.path("runs"),
    );
    let mut server = scene
        .fixture(&[
            "--items",
            "100",
            "--addr",
            "127.0.0.1:0",
            "--gate",
            &s(&gate),
            "--output",
            &s(&out),
        ])
        .spawn();
    let addr = server.serving_addr();

    for other in [
        &["--items", "100", "--salt", "1"][..],
        &["--items", "101"],
        &["--items", "100", "--deps", "chains:2"],
    ] {
        let ended = scene.fixture(&["--addr", &addr]).with(other).spawn().wait();
        assert!(!ended.status.success(), "{other:?}: {ended:#?}");
        let error = ended
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{ended:#?}"));
        assert!(error.contains("fixture"), "{error:?} names the job");
        eprintln!("{other:?}: {error}");
    }
    // A process with the same items is welcome, and the job ends well.
    let mut good = scene
        .fixture(&["--items", "100", "--addr", &addr, "--runs-log", &s(&runs)])
        .spawn();
    open_gate_once_working(&gate, &runs, good.pid);
    server.wait().assert_ok();
    good.wait().assert_ok();
    assert_product(&read_report(&out), 100, 0);
}

// ------------------------------------------------------------------------------------------
// 8. Failing bodies and execute.

#[test]
fn failing_and_panicking_bodies_fail_their_items_after_the_attempts_in_run_mode() {
    let scene = Scene::new();
    let (runs, out, gate) = (
        scene.path("runs"),
        scene.path("out.json"),
        scene.path("gate"),
    );
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let base = scene.fixture(&[
        "--items",
        "120",
        "--mode",
        "run",
        "--slots",
        "2",
        "--addr",
        &addr,
        "--runs-log",
        &s(&runs),
        "--max-attempts",
        "3",
        "--sleep-us",
        "1000",
        "--fail",
        "5:panic:99",
        "--fail",
        "7:error:99",
        "--fail",
        "9:error:1",
        "--fail",
        "11:panic:2",
    ]);
    let mut server = base
        .clone()
        .with(&["--output", &s(&out), "--gate", &s(&gate)])
        .spawn();
    let pid = server.pid;
    wait_until("the run-mode server works", || {
        read_runs(&runs).iter().any(|e| e.pid == pid)
    });
    let mut worker = base.clone().spawn();
    open_gate_once_working(&gate, &runs, worker.pid);
    let ended = server.wait();
    ended.assert_ok();
    assert_eq!(ended.finished("role"), "serving");
    worker.wait().assert_ok();
    check_failures(&read_report(&out), &read_runs(&runs), true);
}

#[test]
fn failing_bodies_fail_their_items_after_the_attempts_in_iterate_mode() {
    let scene = Scene::new();
    let (runs, out, gate) = (
        scene.path("runs"),
        scene.path("out.json"),
        scene.path("gate"),
    );
    let base = scene.fixture(&[
        "--items",
        "120",
        "--runs-log",
        &s(&runs),
        "--max-attempts",
        "3",
        "--sleep-us",
        "1000",
        "--fail",
        "5:error:99",
        "--fail",
        "7:error:99",
        "--fail",
        "9:error:1",
        "--fail",
        "11:error:2",
    ]);
    let mut server = base
        .clone()
        .with(&[
            "--addr",
            "127.0.0.1:0",
            "--output",
            &s(&out),
            "--gate",
            &s(&gate),
        ])
        .spawn();
    let addr = server.serving_addr();
    let mut worker = base.clone().with(&["--addr", &addr]).spawn();
    open_gate_once_working(&gate, &runs, worker.pid);
    server.wait().assert_ok();
    worker.wait().assert_ok();
    check_failures(&read_report(&out), &read_runs(&runs), false);
}

/// Items 5 and 7 always fail, 9 fails once, 11 twice (of three attempts).
fn check_failures(report: &harness::LoopReport, events: &[Event], panics: bool) {
    let failed: Vec<usize> = report.failures.iter().map(|f| f.0).collect();
    assert_eq!(failed, vec![5, 7], "{:?}", report.failures);
    let text5 = &report.failures[0].1;
    if panics {
        assert!(text5.contains("panic"), "{text5:?}");
    } else {
        assert!(text5.contains("planned error of item 5"), "{text5:?}");
    }
    assert!(
        report.failures[1].1.contains("planned error of item 7"),
        "{:?}",
        report.failures[1]
    );
    assert_eq!(report.done, 118, "every other item done");
    for (i, out) in report.product.iter().enumerate() {
        match i {
            5 | 7 => assert_eq!(*out, None, "item {i} failed: no output"),
            _ => assert_eq!(
                out.map(|o| o.0),
                Some(shape::digest(shape::value(i, 0))),
                "item {i}"
            ),
        }
    }
    let count = |i: usize, tag: char| {
        events
            .iter()
            .filter(|e| e.index == i && e.tag == tag)
            .count()
    };
    assert_eq!(
        (count(5, 'S'), count(5, 'F')),
        (3, 3),
        "item 5 ran max_attempts times"
    );
    assert_eq!(
        (count(7, 'S'), count(7, 'F')),
        (3, 3),
        "item 7 ran max_attempts times"
    );
    assert_eq!(
        (count(9, 'F'), count(9, 'E')),
        (1, 1),
        "item 9 failed once then succeeded"
    );
    assert_eq!(
        (count(11, 'F'), count(11, 'E')),
        (2, 1),
        "item 11 failed twice then succeeded"
    );
    assert_eq!(count(20, 'S'), 1, "a good item runs once");
}

#[test]
fn a_panic_in_a_for_body_ends_only_its_process_and_the_item_runs_elsewhere() {
    let scene = Scene::new();
    let (runs, out, gate) = (
        scene.path("runs"),
        scene.path("out.json"),
        scene.path("gate"),
    );
    let base = scene.fixture(&["--items", "60", "--runs-log", &s(&runs)]);
    // The serving process holds its first items until the gate opens, so the crashing worker
    // is the one that meets item 10.
    let mut server = base
        .clone()
        .with(&[
            "--addr",
            "127.0.0.1:0",
            "--gate",
            &s(&gate),
            "--output",
            &s(&out),
        ])
        .spawn();
    let addr = server.serving_addr();
    let crashing = base
        .clone()
        .with(&["--addr", &addr, "--crash-on", "10"])
        .spawn()
        .wait();
    assert_eq!(
        crashing.status.code(),
        Some(101),
        "a panic in a for body is a panic of its process: {crashing:#?}"
    );
    assert!(
        crashing
            .stderr
            .contains("planned crash of this process at item 10"),
        "{crashing:#?}"
    );

    let mut worker = base.clone().with(&["--addr", &addr]).spawn();
    open_gate_once_working(&gate, &runs, worker.pid);
    server.wait().assert_ok();
    worker.wait().assert_ok();
    let report = read_report(&out);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let product = assert_product(&report, 60, 0);
    assert_ne!(
        (product[10].1 >> 32) as u32,
        crashing_pid(&read_runs(&runs), 10)
    );
}

/// The process that crashed on `index` (its `F` line).
fn crashing_pid(events: &[Event], index: usize) -> u32 {
    events
        .iter()
        .find(|e| e.index == index && e.tag == 'F')
        .map(|e| e.pid)
        .expect("the crash line")
}

#[test]
fn execute_runs_on_the_serving_process_for_every_process() {
    let scene = Scene::new();
    let (runs, out, notes, gate) = (
        scene.path("runs"),
        scene.path("out.json"),
        scene.path("notes"),
        scene.path("gate"),
    );
    let base = scene.fixture(&[
        "--items",
        "150",
        "--runs-log",
        &s(&runs),
        "--sleep-us",
        "2000",
        "--execute-every",
        "3",
        "--execute-file",
        &s(&notes),
    ]);
    let mut server = base
        .clone()
        .with(&[
            "--addr",
            "127.0.0.1:0",
            "--output",
            &s(&out),
            "--gate",
            &s(&gate),
        ])
        .spawn();
    let addr = server.serving_addr();
    let mut worker = base
        .clone()
        .with(&["--addr", &addr, "--mode", "run", "--slots", "2"])
        .spawn();
    open_gate_once_working(&gate, &runs, worker.pid);
    server.wait().assert_ok();
    worker.wait().assert_ok();
    let report = read_report(&out);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_product(&report, 150, 0);

    let text = std::fs::read_to_string(&notes).unwrap();
    let mut noted: Vec<(usize, u32, u32)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    noted.sort_unstable();
    let indices: Vec<usize> = noted.iter().map(|n| n.0).collect();
    assert_eq!(
        indices,
        (0..150).step_by(3).collect::<Vec<_>>(),
        "one note per item that calls it"
    );
    assert!(
        noted.iter().all(|n| n.2 == server.pid),
        "every note is written by the serving process"
    );
    assert!(
        noted.iter().any(|n| n.1 == server.pid),
        "the serving process calls it"
    );
    assert!(
        noted.iter().any(|n| n.1 == worker.pid),
        "a working process calls it"
    );
}
