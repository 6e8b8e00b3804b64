//! The `colony` binary as a user runs it: `status` on checkpoints written by the core's log
//! writer (whole, torn, and not a log at all) and on a live server, its JSON output, its exit
//! codes, and short `bench` runs through the real server and worker processes.

use std::path::Path;
use std::process::{Command, Output};

use colony_core::log::{LogWriter, MemStorage, Record, Storage, repair, replay};
use colony_core::{Attempt, JobId, Lsn, TaskId};

fn colony(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_colony"))
        .args(args)
        .env_remove("COLONY_SECRET")
        .output()
        .expect("the colony binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A checkpoint holding a job of 5 tasks: 0, 1 and 2 done, 3 failed, 4 still pending; plus a
/// finished job of 2 tasks.
fn checkpoint_bytes() -> Vec<u8> {
    let mut storage = MemStorage::new();
    let replayed = replay(&mut storage, &mut [0; 64], |_, _| {}).unwrap();
    repair(&mut storage, &replayed).unwrap();
    let mut log = LogWriter::new(Lsn(0));
    let header = |job, name, tasks| Record::JobHeader {
        job: JobId(job),
        fingerprint: [7; 32],
        name,
        kind: "square",
        tasks,
        edges: 0,
        max_attempts: 3,
        open: false,
    };
    let done = |job, task| Record::TaskDone {
        job: JobId(job),
        task: TaskId(task),
        attempt: Attempt(0),
        output: b"output",
    };
    log.append(&header(1, "squares", 5)).unwrap();
    log.append(&header(2, "pairs", 2)).unwrap();
    for t in 0..3 {
        log.append(&done(1, t)).unwrap();
    }
    log.append(&Record::TaskFailed {
        job: JobId(1),
        task: TaskId(3),
        attempts: 3,
        error: "no luck",
    })
    .unwrap();
    log.append(&done(2, 0)).unwrap();
    log.append(&done(2, 1)).unwrap();
    log.append(&Record::JobFinished { job: JobId(2) }).unwrap();
    log.flush(&mut storage).unwrap();
    assert_eq!(storage.len().unwrap(), storage.as_bytes().len() as u64);
    storage.into_bytes()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn status_of_a_clean_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = checkpoint_bytes();
    let path = write(dir.path(), "run.ckpt", &bytes);

    let out = colony(&["status", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("9 records"), "{text}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "JOB", "NAME", "KIND", "TOTAL", "DONE", "FAILED", "PENDING", "FINISHED"
        ]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["1", "squares", "square", "5", "3", "1", "1", "no"]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["2", "pairs", "square", "2", "2", "0", "0", "yes"]
    );
    assert_eq!(lines[4], "tail: clean");
    // Read-only: not a byte changed.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn status_json_parses() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "run.ckpt", &checkpoint_bytes());
    let out = colony(&["status", "--json", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["records"], 9);
    assert_eq!(v["tail"]["clean"], true);
    assert_eq!(v["tail"]["truncate_bytes"], 0);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["name"], "squares");
    assert_eq!(jobs[0]["kind"], "square");
    assert_eq!(jobs[0]["total"], 5);
    assert_eq!(jobs[0]["done"], 3);
    assert_eq!(jobs[0]["failed"], 1);
    assert_eq!(jobs[0]["pending"], 1);
    assert_eq!(jobs[0]["finished"], false);
    assert_eq!(jobs[1]["finished"], true);
}

#[test]
fn status_of_a_torn_checkpoint_names_what_a_resume_would_cut() {
    let dir = tempfile::tempdir().unwrap();
    let whole = checkpoint_bytes();
    // Cut the last record (the job-finished frame, 13 bytes) in its middle.
    let torn = &whole[..whole.len() - 5];
    let path = write(dir.path(), "torn.ckpt", torn);

    let out = colony(&["status", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("8 records"), "{text}");
    assert!(
        text.contains("torn record at end of log: a resume would truncate 8 bytes"),
        "{text}"
    );
    // Job 2's finish was torn off, so it reads as not finished.
    let row = text.lines().find(|l| l.starts_with("2 ")).unwrap();
    assert!(row.ends_with("no"), "{row}");

    let out = colony(&["status", "--json", &path]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["tail"]["clean"], false);
    assert_eq!(v["tail"]["truncate_bytes"], 8);
    assert_eq!(v["tail"]["valid_len"], torn.len() as u64 - 8);
    assert_eq!(std::fs::read(&path).unwrap(), torn);
}

#[test]
fn status_errors_are_clear_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "notes.txt", b"these are my notes, not a log\n");
    let out = colony(&["status", &path]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("not a colony log"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"these are my notes, not a log\n"
    );

    let missing = dir.path().join("missing.ckpt");
    let out = colony(&["status", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot open checkpoint"), "{err}");
    assert!(!missing.exists(), "status must not create the file");

    let out = colony(&["status", "--server", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no secret"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let out = colony(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    let out = colony(&["status", "a.ckpt", "--server", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2));
    let out = colony(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    let out = colony(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    assert!(help.contains("status"), "{help}");
}

/// The last line of stdout as JSON.
fn last_json(out: &Output) -> serde_json::Value {
    let text = stdout(out);
    let last = text.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

fn check_report(v: &serde_json::Value, case: &str, tasks: u64) {
    assert_eq!(v["case"], case, "{v}");
    assert_eq!(v["tasks"], tasks, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert!(v["tasks_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["p50_us"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["p99_us"].as_u64().unwrap() >= v["p50_us"].as_u64().unwrap(),
        "{v}"
    );
    assert!(v["fsyncs"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["server_rss_bytes_per_queued_task"].as_f64().is_some(),
        "{v}"
    );
    assert!(v["first_item_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["wall_s"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn bench_dag_smoke() {
    let out = colony(&[
        "bench", "--case", "dag", "--tasks", "60", "--chains", "3", "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = last_json(&out);
    check_report(&v, "dag", 60);
    // A chain of 20 needs at least 20 durable steps.
    assert!(v["fsyncs"].as_u64().unwrap() >= 20, "{v}");
    assert!(stdout(&out).starts_with("dag: 60 tasks over 2 worker processes"));
}

#[test]
fn bench_all_smoke() {
    let out = colony(&["bench", "--tasks", "500", "--workers", "3", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = last_json(&out);
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    check_report(&cases[0], "loop", 500);
    check_report(&cases[1], "dag", 500);
    assert_eq!(cases[0]["workers"], 3);
    let executor = &cases[2];
    assert_eq!(executor["case"], "executor", "{executor}");
    assert_eq!(executor["tasks"], 500, "{executor}");
    assert!(
        executor["median_map_tasks_per_sec"].as_f64().unwrap() > 0.0,
        "{executor}"
    );
    assert!(
        executor["median_round_trip_p50_us"].as_u64().unwrap() > 0,
        "{executor}"
    );
    let text = stdout(&out);
    assert!(
        text.contains("loop: 500 tasks over 3 worker processes"),
        "{text}"
    );
    assert!(
        text.contains("dag: 500 tasks over 3 worker processes"),
        "{text}"
    );
}

#[test]
fn bench_usage_errors_exit_2() {
    let out = colony(&["bench", "--case", "tree"]);
    assert_eq!(out.status.code(), Some(2));
    let out = colony(&["bench", "--workers", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = colony(&["bench", "--case", "dag", "--tasks", "5", "--chains", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("fewer than --chains"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_live_server() {
    use colony_core::sched::Inputs;
    use colony_tokio::secret::Secret;
    use colony_tokio::server::{Server, ServerConfig};

    let secret = Secret::random().unwrap();
    let config = ServerConfig::new(secret.clone()).listen(([127, 0, 0, 1], 0).into());
    let bound = Server::bind(config).unwrap();
    let addr = bound.local_addr().to_string();
    let handle = bound.handle();
    let server = bound.spawn();
    let inputs: Inputs = (0..7u8).map(|i| [i]).collect();
    let created = handle
        .create_job("squares", "square", inputs, Vec::new(), 3)
        .await
        .unwrap();
    let id = created.job.0.to_string();

    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("token");
    std::fs::write(&secret_file, secret.to_hex()).unwrap();
    let (hex, file) = (secret.to_hex(), secret_file.to_str().unwrap().to_owned());
    let (by_env, by_file, json, wrong) = tokio::task::spawn_blocking(move || {
        let by_env = Command::new(env!("CARGO_BIN_EXE_colony"))
            .args(["status", "--server", &addr])
            .env("COLONY_SECRET", &hex)
            .output()
            .unwrap();
        let by_file = colony(&["status", "--server", &addr, "--secret-file", &file]);
        let json = colony(&[
            "status",
            "--json",
            "--server",
            &addr,
            "--secret-file",
            &file,
        ]);
        let wrong = Command::new(env!("CARGO_BIN_EXE_colony"))
            .args(["status", "--server", &addr])
            .env("COLONY_SECRET", "00".repeat(32))
            .output()
            .unwrap();
        (by_env, by_file, json, wrong)
    })
    .await
    .unwrap();

    for out in [&by_env, &by_file] {
        assert!(out.status.success(), "{}", stderr(out));
        let text = stdout(out);
        let row = text.lines().find(|l| l.contains("squares")).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [id.as_str(), "squares", "7", "0", "0", "7", "0", "no"],
            "{text}"
        );
    }
    assert!(json.status.success(), "{}", stderr(&json));
    let v = last_json(&json);
    assert_eq!(v["jobs"][0]["name"], "squares");
    assert_eq!(v["jobs"][0]["total"], 7);
    assert_eq!(v["jobs"][0]["running"], 0);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr(&wrong).starts_with("error: "), "{}", stderr(&wrong));

    handle.shutdown().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_checkpoint_written_by_the_server() {
    use colony_core::proto::Edge;
    use colony_core::sched::Inputs;
    use colony_tokio::secret::Secret;
    use colony_tokio::server::{Server, ServerConfig};
    use colony_tokio::worker::{TaskCtx, TaskError, WorkerConfig, run_worker};

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("job.ckpt");
    let secret = Secret::random().unwrap();
    let config = ServerConfig::new(secret.clone())
        .listen(([127, 0, 0, 1], 0).into())
        .checkpoint(&ckpt);
    let bound = Server::bind(config).unwrap();
    let addr = bound.local_addr().to_string();
    let handle = bound.handle();
    let server = bound.spawn();
    let inputs: Inputs = (0..6u8).map(|i| [i]).collect();
    let edges = vec![Edge {
        before: TaskId(0),
        after: TaskId(1),
    }];
    let created = handle
        .create_job("cubes", "cube", inputs, edges, 2)
        .await
        .unwrap();

    // While the server runs and holds the file: the job is there, nothing done yet.
    let path = ckpt.to_str().unwrap().to_owned();
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || colony(&["status", "--json", &p]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = last_json(&out);
    assert_eq!(v["jobs"][0]["name"], "cubes");
    assert_eq!(v["jobs"][0]["total"], 6);
    assert_eq!(v["jobs"][0]["done"], 0);

    // Task 5 fails for good; the rest succeed.
    let body = |ctx: &TaskCtx, _: &str, input: &[u8]| -> Result<Vec<u8>, TaskError> {
        if ctx.task() == TaskId(5) {
            return Err(TaskError::permanent("five is right out"));
        }
        Ok(input.to_vec())
    };
    let worker = WorkerConfig::new(addr, secret)
        .with_kinds(["cube"])
        .with_slots(1);
    run_worker(worker, body).await.unwrap();
    let last = handle.wait_finished(created.job).await.unwrap();
    assert_eq!((last.done, last.failed), (5, 1));
    handle.shutdown().await.unwrap();
    server.await.unwrap().unwrap();

    let bytes = std::fs::read(&ckpt).unwrap();
    let out = colony(&["status", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = text.lines().find(|l| l.contains("cubes")).unwrap();
    assert_eq!(
        row.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["cubes", "cube", "6", "5", "1", "0", "yes"],
        "{text}"
    );
    assert!(text.ends_with("tail: clean\n"), "{text}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), bytes);
}
