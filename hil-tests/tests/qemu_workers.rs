//! Emulated microcontroller workers (QEMU mps2-an385, thumbv7m and thumbv6m builds) against the
//! real server, beside a Linux worker: every output checked, a board killed mid-job, and the
//! throughput of one emulated board.
//!
//! The tests take turns (they share two emulated-CPU-hungry minutes of a small machine); each
//! keeps its boards' logs in its temporary directory and prints them, decoded, if it fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use colony_core::crc::crc32c;
use colony_core::log::{FILE_HEADER_LEN, Record, parse_frame};
use colony_core::sched::{Inputs, Progress};
use colony_core::{JobId, TaskId};
use colony_hil_tests::board::{Board, Report, require_qemu};
use colony_hil_tests::firmware::{Firmware, TEST_SECRET_HEX, qemu_mps2};
use colony_hil_tests::{PATIENCE, within};
use colony_tokio::secret::Secret;
use colony_tokio::server::{Server, ServerConfig, ServerHandle};
use colony_tokio::worker::{TaskCtx, TaskError, WorkerConfig, WorkerExit, run_worker};
use tokio::sync::Mutex;

/// One test at a time: each boots several emulators.
static TURN: Mutex<()> = Mutex::const_new(());

fn secret() -> Secret {
    Secret::from_hex(TEST_SECRET_HEX).expect("the test secret is valid hex")
}

/// `n` inputs of 8 to 63 pseudo-random bytes.
fn inputs(n: u32, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    (0..n)
        .map(|_| {
            let len = 8 + next() % 56;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

fn expected(input: &[u8]) -> Vec<u8> {
    crc32c(input).to_le_bytes().to_vec()
}

/// A test's boards and directory; on a failing test, prints every board's logs and keeps the
/// directory.
struct Fleet {
    dir: Option<tempfile::TempDir>,
    boards: Vec<Board>,
}

impl Fleet {
    fn new() -> Fleet {
        require_qemu();
        Fleet {
            dir: Some(
                tempfile::Builder::new()
                    .prefix("colony-hil-")
                    .tempdir()
                    .unwrap(),
            ),
            boards: Vec::new(),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("."), |d| d.path())
    }

    fn boot(&mut self, elf: &Path, port: u16, name: &str) -> usize {
        let board = Board::boot(elf, port, name, self.dir())
            .unwrap_or_else(|err| panic!("cannot start QEMU for {name}: {err}"));
        self.boards.push(board);
        self.boards.len() - 1
    }

    /// Waits for every board but `except` to exit 0 and returns their reports.
    async fn finish(&mut self, except: Option<usize>) -> Vec<Report> {
        let mut reports = Vec::new();
        for (i, board) in self.boards.iter_mut().enumerate() {
            if Some(i) == except {
                continue;
            }
            let what = format!("{} to exit after the job", board.name());
            let status = within(PATIENCE, &what, board.wait()).await.unwrap();
            assert_eq!(
                status.code(),
                Some(0),
                "{} ended with {status} (semihosting exit code), not 0",
                board.name()
            );
            let report = board
                .report()
                .unwrap_or_else(|| panic!("{} printed no report line", board.name()));
            assert_eq!(report.name, board.name());
            reports.push(report);
        }
        reports
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for board in &self.boards {
                eprintln!("{}", board.logs());
            }
            if let Some(dir) = self.dir.take() {
                eprintln!("logs kept in {}", dir.keep().display());
            }
        }
    }
}

fn start_server(config: ServerConfig) -> (ServerHandle, SocketAddr) {
    let bound = Server::bind(config.listen(SocketAddr::from(([127, 0, 0, 1], 0))))
        .expect("bind the server on loopback");
    let addr = bound.local_addr();
    let handle = bound.handle();
    drop(bound.spawn());
    (handle, addr)
}

/// Waits until `n` workers are connected: the boards' first connection takes up to a second
/// under QEMU (slirp registers a new host socket only when QEMU's main loop next wakes), and a
/// job created before they join could finish without them.
async fn joined(handle: &ServerHandle, n: usize) {
    within(PATIENCE, &format!("{n} workers to connect"), async {
        loop {
            if within(PATIENCE, "the server's status", handle.status())
                .await
                .unwrap()
                .workers
                >= n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn create(handle: &ServerHandle, name: &str, inputs: &[Vec<u8>]) -> JobId {
    let all: Inputs = inputs.iter().collect();
    within(
        PATIENCE,
        "create the job",
        handle.create_job(name, "crc32c", all, vec![], 3),
    )
    .await
    .expect("create the job")
    .job
}

/// Checks every output against its input, and that nothing failed.
async fn check_outputs(handle: &ServerHandle, job: JobId, inputs: &[Vec<u8>]) -> Progress {
    let progress = within(PATIENCE, "the job to finish", handle.wait_finished(job))
        .await
        .unwrap();
    let total = u32::try_from(inputs.len()).unwrap();
    assert_eq!(
        (progress.total, progress.done, progress.failed),
        (total, total, 0)
    );
    let failures = within(PATIENCE, "the failures", handle.failures(job))
        .await
        .unwrap();
    assert!(failures.is_empty(), "failed tasks: {failures:?}");
    let outputs = within(PATIENCE, "the outputs", handle.outputs(job))
        .await
        .unwrap();
    assert_eq!(outputs.len(), inputs.len());
    for (task, (output, input)) in outputs.iter().zip(inputs).enumerate() {
        assert_eq!(
            output.as_deref(),
            Some(&expected(input)[..]),
            "output of task {task}"
        );
    }
    progress
}

/// Every `TaskDone` record of the checkpoint: (task, attempt) in log order.
fn recorded(checkpoint: &Path, job: JobId) -> Vec<(TaskId, u16)> {
    let bytes = std::fs::read(checkpoint).expect("read the checkpoint");
    let mut rest = bytes.get(FILE_HEADER_LEN..).expect("a checkpoint header");
    let mut done = Vec::new();
    while !rest.is_empty() {
        let (record, len) = parse_frame(rest).expect("a whole checkpoint record");
        if let Record::TaskDone {
            job: j,
            task,
            attempt,
            ..
        } = record
            && j == job
        {
            done.push((task, attempt.get()));
        }
        rest = &rest[len..];
    }
    done
}

fn board_elf(firmware: &Firmware, i: usize) -> &Path {
    // Mixed: boards 1, 3, .. run the thumbv6m (RP2040 instruction set) build.
    if i % 2 == 1 {
        &firmware.thumbv6m
    } else {
        &firmware.thumbv7m
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_boards_and_a_linux_worker_compute_every_output() {
    let _turn = TURN.lock().await;
    let mut fleet = Fleet::new();
    let firmware = qemu_mps2().await;
    let checkpoint = fleet.dir().join("colony.ckpt");
    let (handle, addr) = start_server(ServerConfig::new(secret()).checkpoint(&checkpoint));
    let inputs = inputs(1_200, 1);
    for i in 0..3 {
        let elf = board_elf(firmware, i).to_path_buf();
        fleet.boot(&elf, addr.port(), &format!("mcu-{i}"));
    }
    // The Linux worker runs the same kind, one task at a time and deliberately slowly, so the
    // emulated boards compute most outputs.
    let linux_done = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&linux_done);
    let handler = move |_ctx: &TaskCtx, kind: &str, input: &[u8]| -> Result<Vec<u8>, TaskError> {
        assert_eq!(kind, "crc32c");
        std::thread::sleep(Duration::from_millis(2));
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(expected(input))
    };
    let config = WorkerConfig::new(addr.to_string(), secret())
        .with_name("linux")
        .with_kinds(["crc32c"])
        .with_slots(1)
        .with_prefetch(0);
    let linux = tokio::spawn(run_worker(config, handler));
    joined(&handle, 4).await;
    let job = create(&handle, "hil-crc", &inputs).await;

    let progress = check_outputs(&handle, job, &inputs).await;
    assert!(progress.finished);
    let reports = fleet.finish(None).await;
    let exit = within(PATIENCE, "the Linux worker to exit", linux)
        .await
        .unwrap()
        .expect("the Linux worker");
    assert!(matches!(exit, WorkerExit::JobFinished { job: j, .. } if j == job));

    let by_mcus: u32 = reports.iter().map(|r| r.answered).sum();
    let by_linux = linux_done.load(Ordering::Relaxed);
    eprintln!("answered: {reports:?}, linux {by_linux}");
    for report in &reports {
        assert!(report.answered > 0, "{} computed nothing", report.name);
        assert_eq!(report.job, job.get());
    }
    assert!(
        by_mcus > by_linux,
        "the boards answered {by_mcus}, the Linux worker {by_linux}"
    );
    assert!(by_mcus + by_linux >= 1_200);

    // The server's record: each task done exactly once, by its first attempt (nobody failed).
    let done = recorded(&checkpoint, job);
    let mut seen = HashMap::new();
    for (task, _) in &done {
        *seen.entry(*task).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 1_200);
    assert!(seen.values().all(|n| *n == 1), "a task recorded twice");
    within(PATIENCE, "the server to stop", handle.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_killed_mid_job_has_its_leases_reissued() {
    let _turn = TURN.lock().await;
    let mut fleet = Fleet::new();
    let firmware = qemu_mps2().await;
    let checkpoint = fleet.dir().join("colony.ckpt");
    let (handle, addr) = start_server(ServerConfig::new(secret()).checkpoint(&checkpoint));
    // Large enough that the test, watching progress, acts well before the job ends (three
    // boards run tens of thousands of tasks a second).
    let total = 60_000u32;
    let inputs = inputs(total, 2);
    for i in 0..3 {
        let elf = board_elf(firmware, i).to_path_buf();
        fleet.boot(&elf, addr.port(), &format!("mcu-{i}"));
    }
    joined(&handle, 3).await;
    let job = create(&handle, "hil-kill", &inputs).await;
    let mut progress = within(PATIENCE, "the progress", handle.progress(job))
        .await
        .unwrap();
    within(
        PATIENCE,
        "a quarter of the job",
        progress.wait_for(|p| p.done >= total / 4),
    )
    .await
    .unwrap();

    // Freeze the victim first, so it surely holds leases it will never answer, let the others
    // carry on, then kill it.
    let victim = 1;
    fleet.boards[victim].pause().unwrap();
    let at_pause = progress.borrow().done;
    within(
        PATIENCE,
        "the other boards to carry on",
        progress.wait_for(|p| p.done >= at_pause + total / 8),
    )
    .await
    .unwrap();
    let status = fleet.boards[victim].kill().await.unwrap();
    assert_eq!(status.code(), None, "the victim was killed by a signal");
    assert!(!progress.borrow().finished, "killed after the job ended");

    check_outputs(&handle, job, &inputs).await;
    let reports = fleet.finish(Some(victim)).await;
    assert_eq!(reports.len(), 2);

    let done = recorded(&checkpoint, job);
    let mut seen = HashMap::new();
    for (task, _) in &done {
        *seen.entry(*task).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), total as usize, "every task recorded");
    assert!(seen.values().all(|n| *n == 1), "a task recorded twice");
    let reissued = done.iter().filter(|(_, attempt)| *attempt > 0).count();
    assert!(
        reissued > 0,
        "no task was done by a second attempt: the killed board's leases were not re-issued"
    );
    eprintln!("{reissued} tasks completed on a re-issued lease; reports {reports:?}");
    within(PATIENCE, "the server to stop", handle.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_emulated_board_runs_thousands_of_tiny_tasks_a_second() {
    let _turn = TURN.lock().await;
    let mut fleet = Fleet::new();
    let firmware = qemu_mps2().await;
    let (handle, addr) = start_server(ServerConfig::new(secret()));
    let total = 20_000u32;
    let inputs: Vec<Vec<u8>> = (0..total).map(|i| i.to_le_bytes().to_vec()).collect();
    let elf: PathBuf = firmware.thumbv7m.clone();
    fleet.boot(&elf, addr.port(), "mcu-rate");
    joined(&handle, 1).await;
    let job = create(&handle, "hil-rate", &inputs).await;

    let mut progress = within(PATIENCE, "the progress", handle.progress(job))
        .await
        .unwrap();
    within(
        PATIENCE,
        "the first task",
        progress.wait_for(|p| p.done > 0),
    )
    .await
    .unwrap();
    let (start, first) = (Instant::now(), progress.borrow().done);
    within(PATIENCE, "the job", progress.wait_for(|p| p.finished))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    let rate = f64::from(total - first) / elapsed.as_secs_f64();
    eprintln!(
        "one emulated board (thumbv7m): {} tasks in {:.2} s = {rate:.0} tasks/s",
        total - first,
        elapsed.as_secs_f64()
    );
    check_outputs(&handle, job, &inputs).await;
    let reports = fleet.finish(None).await;
    assert_eq!(reports[0].answered, total);
    // A floor far below the aim (8,000/s), to catch a stall (Nagle, delayed ACKs, a lost
    // wake-up) without failing on a busy machine.
    assert!(rate > 500.0, "{rate:.0} tasks/s");
    within(PATIENCE, "the server to stop", handle.shutdown())
        .await
        .unwrap();
}

/// A proxy between the board and the server that misbehaves: its first connection answers the
/// board's hello with garbage, its second is cut in the middle of the job, the rest pass.
async fn faulty_proxy(listener: tokio::net::TcpListener, server: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for n in 0.. {
        let Ok((mut board, _)) = listener.accept().await else {
            return;
        };
        match n {
            0 => {
                let mut hello = [0u8; 64];
                let _ = board.read(&mut hello).await;
                // A frame header claiming 4 bytes, a wrong checksum, then the 4 bytes.
                let _ = board
                    .write_all(&[4, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
                    .await;
                let mut rest = Vec::new();
                let _ = board.read_to_end(&mut rest).await;
            }
            1 => {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await else {
                    return;
                };
                // Pass 4 KB from the server (the handshake and a few hundred grants), then drop
                // both ends with no goodbye.
                let (mut from_board, mut to_board) = board.split();
                let (mut from_server, mut to_server) = upstream.split();
                let up = tokio::io::copy(&mut from_board, &mut to_server);
                let mut limited = (&mut from_server).take(4096);
                let down = tokio::io::copy(&mut limited, &mut to_board);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            }
            _ => {
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await {
                        let _ = tokio::io::copy_bidirectional(&mut board, &mut upstream).await;
                    }
                });
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_survives_a_bad_frame_and_a_cut_link() {
    let _turn = TURN.lock().await;
    let mut fleet = Fleet::new();
    let firmware = qemu_mps2().await;
    let (handle, addr) = start_server(ServerConfig::new(secret()));
    let total = 20_000u32;
    let inputs = inputs(total, 3);
    let job = create(&handle, "hil-faults", &inputs).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let proxy = tokio::spawn(faulty_proxy(listener, addr));
    let elf = firmware.thumbv6m.clone();
    fleet.boot(&elf, port, "mcu-faults");

    check_outputs(&handle, job, &inputs).await;
    let reports = fleet.finish(None).await;
    assert!(
        reports[0].sessions >= 3,
        "the board should have connected three times (garbage, cut, whole): {reports:?}"
    );
    proxy.abort();
    within(PATIENCE, "the server to stop", handle.shutdown())
        .await
        .unwrap();
}
