//! The `colony` binary as a user runs it: `status` on checkpoints written by the core's log
//! writer (whole, torn, and not a log at all), its JSON output, and its exit codes.

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
