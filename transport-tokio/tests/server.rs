//! The server over real sockets on 127.0.0.1: raw-protocol workers, hostile peers, disconnects,
//! and resuming from the checkpoint.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::Duration;

use colony_core::proto::{
    ClientHandshake, ClientInfo, Edge, ErrorCode, HEADER_LEN, Join, Message, Role, client_proof,
    encode_frame_into,
};
use colony_core::sched::CreateJobError;
use colony_core::{JobId, TaskId};
use colony_tokio::conn::{ConnError, FramedConn, connect_and_handshake};
use colony_tokio::secret::Secret;
use colony_tokio::server::{CallHandler, HandleError, Server};
use common::{Got, RawWorker, bounded, config, numbers, square, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn squares(n: u32) -> Vec<Option<Vec<u8>>> {
    (0..n).map(|i| Some(square(&i.to_le_bytes()))).collect()
}

#[tokio::test]
async fn raw_worker_completes_a_job() {
    let secret = Secret::random().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (handle, addr, server) = start(config(&secret).checkpoint(dir.path().join("ckpt")));
    let created = bounded(handle.create_job("squares", "square", numbers(1000), vec![], 3))
        .await
        .unwrap();
    assert_eq!(created.already_done, 0);
    // The job is durable once `create_job` returns.
    let mut names = Vec::new();
    colony_tokio::logfile::read_log(dir.path().join("ckpt"), |r| {
        if let colony_core::log::Record::JobHeader { name, .. } = r {
            names.push(name.to_owned());
        }
    })
    .unwrap();
    assert_eq!(names, ["squares"]);

    let mut worker = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    assert_eq!(worker.welcome.lease_ms, 30_000);
    let done = bounded(worker.work(16, square)).await.unwrap();
    assert_eq!(done.len(), 1000);

    let progress = bounded(handle.wait_finished(created.job)).await.unwrap();
    assert_eq!(
        (progress.total, progress.done, progress.failed),
        (1000, 1000, 0)
    );
    assert!(progress.finished);
    assert_eq!(
        bounded(handle.outputs(created.job)).await.unwrap(),
        squares(1000)
    );
    assert!(
        bounded(handle.failures(created.job))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(handle.fsyncs() >= 1);
    let status = bounded(handle.status()).await.unwrap();
    assert_eq!(status.workers, 1);
    assert_eq!(status.jobs.len(), 1);
    assert_eq!(status.jobs[0].name, "squares");

    bounded(handle.shutdown()).await.unwrap();
    assert_eq!(bounded(worker.until_closed()).await, [Got::GoingAway]);
    bounded(server).await.unwrap().unwrap();
    assert!(matches!(
        handle.status().await,
        Err(HandleError::Stopped { reason: None })
    ));
}

#[tokio::test]
async fn failing_tasks_are_retried_then_reported() {
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret));
    let job = bounded(handle.create_job("flaky", "square", numbers(3), vec![], 2))
        .await
        .unwrap()
        .job;
    let mut worker = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    worker.send(&Message::Credit { count: 3 }).await.unwrap();
    let mut failed_attempts = 0;
    loop {
        match bounded(worker.recv()).await.unwrap() {
            Got::Grants(grants) => {
                for g in grants {
                    if g.task == TaskId(1) {
                        failed_attempts += 1;
                        worker.fail(g.lease, "no luck").await.unwrap();
                    } else {
                        let out = square(&g.input);
                        worker
                            .send(&Message::Complete {
                                lease: g.lease,
                                output: &out,
                            })
                            .await
                            .unwrap();
                    }
                    worker.send(&Message::Credit { count: 1 }).await.unwrap();
                }
            }
            Got::JobFinished(j) => {
                assert_eq!(j, job);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(failed_attempts, 2);
    let p = bounded(handle.wait_finished(job)).await.unwrap();
    assert_eq!((p.done, p.failed), (2, 1));
    assert_eq!(
        bounded(handle.failures(job)).await.unwrap(),
        [(TaskId(1), "no luck".to_owned())]
    );
    let outputs = bounded(handle.outputs(job)).await.unwrap();
    assert_eq!(outputs[1], None);
    assert_eq!(outputs[2], Some(square(&2u32.to_le_bytes())));
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

/// Connects and returns a framed connection without doing a handshake.
async fn raw(addr: std::net::SocketAddr) -> FramedConn<TcpStream> {
    FramedConn::new(TcpStream::connect(addr).await.unwrap())
}

/// Reads until the server closes; returns the first message's error code, if it was an error.
async fn refusal(conn: &mut FramedConn<TcpStream>) -> Option<ErrorCode> {
    let code = match bounded(conn.read_message()).await {
        Ok(Message::Error { code, .. }) => Some(code),
        Ok(other) => panic!("expected an error, got {other:?}"),
        Err(_) => None,
    };
    loop {
        match bounded(conn.read_frame()).await {
            Ok(_) => continue,
            Err(ConnError::Closed | ConnError::Io(_) | ConnError::Truncated { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    code
}

#[tokio::test]
async fn bad_peers_are_dropped_while_the_job_carries_on() {
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(
        config(&secret)
            .handshake_timeout(Duration::from_millis(200))
            .max_frame(64 * 1024),
    );
    let job = bounded(handle.create_job("steady", "square", numbers(200), vec![], 3))
        .await
        .unwrap()
        .job;

    // A good worker holds a few leases while the bad peers come and go.
    let mut good = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    good.send(&Message::Credit { count: 4 }).await.unwrap();
    let held = bounded(good.take_grants(4)).await;

    // Garbage that looks like a frame but fails its checksum.
    let mut conn = raw(addr).await;
    conn.get_ref()
        .try_write(&[5, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9, 9])
        .unwrap();
    assert_eq!(refusal(&mut conn).await, Some(ErrorCode::BadMessage));

    // Bytes that announce an enormous frame (and are no HTTP, TLS or WebSocket).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[0xfe; 16]).await.unwrap();
    let mut conn = FramedConn::new(stream);
    assert_eq!(refusal(&mut conn).await, Some(ErrorCode::FrameTooLarge));

    // An HTTP request is the monitor's: answered in HTTP, and the job carries on.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    bounded(stream.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");

    // A frame just over the handshake limit.
    let mut conn = raw(addr).await;
    conn.get_ref().try_write(&1025u32.to_le_bytes()).unwrap();
    assert_eq!(refusal(&mut conn).await, Some(ErrorCode::FrameTooLarge));

    // A connection that never says anything, and one that stalls after its hello.
    let mut silent = raw(addr).await;
    assert_eq!(refusal(&mut silent).await, Some(ErrorCode::Timeout));
    let mut stalled = raw(addr).await;
    let hello = ClientHandshake::new([1; 16], 4096).hello();
    bounded(stalled.send(&Message::ClientHello(hello)))
        .await
        .unwrap();
    assert!(matches!(
        bounded(stalled.read_message()).await.unwrap(),
        Message::ServerHello(_)
    ));
    assert_eq!(refusal(&mut stalled).await, Some(ErrorCode::Timeout));

    // A peer without the secret: its proof is refused.
    let mut impostor = raw(addr).await;
    let nonce = [7; 16];
    let hello = ClientHandshake::new(nonce, 4096).hello();
    bounded(impostor.send(&Message::ClientHello(hello)))
        .await
        .unwrap();
    let Message::ServerHello(server_hello) = bounded(impostor.read_message()).await.unwrap() else {
        panic!("no server hello")
    };
    let join = Join {
        proof: client_proof(b"a guess, not the secret", &nonce, &server_hello.nonce),
        role: Role::Observer,
    };
    bounded(impostor.send(&Message::Join(join))).await.unwrap();
    assert_eq!(refusal(&mut impostor).await, Some(ErrorCode::AuthFailed));

    // The connector side notices a server without our secret, too.
    let wrong = Secret::random().unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let err = bounded(connect_and_handshake(stream, &wrong, Role::Observer, 4096))
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");

    // Another protocol version.
    let mut future = raw(addr).await;
    let mut hello = ClientHandshake::new(nonce, 4096).hello();
    hello.version += 1;
    bounded(future.send(&Message::ClientHello(hello)))
        .await
        .unwrap();
    assert_eq!(refusal(&mut future).await, Some(ErrorCode::VersionMismatch));

    // An authenticated worker that takes leases, then sends an oversized frame: dropped, and
    // its leases go back to the queue.
    let mut rogue = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    rogue.send(&Message::Credit { count: 3 }).await.unwrap();
    let rogue_held = bounded(rogue.take_grants(3)).await;
    rogue
        .send_raw(&(64 * 1024 + 1u32).to_le_bytes())
        .await
        .unwrap();
    let seen = bounded(rogue.until_closed()).await;
    assert!(
        seen.iter()
            .any(|g| matches!(g, Got::Error(ErrorCode::FrameTooLarge, _))),
        "{seen:?}"
    );

    // And one that sends a frame with a bad checksum after its handshake.
    let mut rogue2 = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    let mut frame = Vec::new();
    encode_frame_into(&Message::Credit { count: 1 }, &mut frame).unwrap();
    frame[HEADER_LEN] ^= 0xFF;
    rogue2.send_raw(&frame).await.unwrap();
    let seen = bounded(rogue2.until_closed()).await;
    assert!(
        seen.iter()
            .any(|g| matches!(g, Got::Error(ErrorCode::BadMessage, _))),
        "{seen:?}"
    );

    // The good worker finishes everything, including the rogue's tasks.
    for g in &held {
        let out = square(&g.input);
        good.queue(&Message::Complete {
            lease: g.lease,
            output: &out,
        });
    }
    good.flush().await.unwrap();
    let rest = bounded(good.work(8, square)).await.unwrap();
    let rerun: BTreeSet<TaskId> = rest.iter().map(|g| g.task).collect();
    for g in &rogue_held {
        assert!(rerun.contains(&g.task), "{:?} was not re-issued", g.task);
    }
    let p = bounded(handle.wait_finished(job)).await.unwrap();
    assert_eq!((p.done, p.failed), (200, 0));
    assert_eq!(bounded(handle.outputs(job)).await.unwrap(), squares(200));
    assert_eq!(bounded(handle.status()).await.unwrap().workers, 1);
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn leases_of_a_disconnected_worker_are_reissued_at_once() {
    let secret = Secret::random().unwrap();
    // Leases that would outlive the test: only the disconnect can bring the tasks back.
    let (handle, addr, server) = start(config(&secret).lease_duration(Duration::from_secs(3600)));
    let job = bounded(handle.create_job("handover", "square", numbers(20), vec![], 3))
        .await
        .unwrap()
        .job;
    let mut quitter = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    quitter.send(&Message::Credit { count: 5 }).await.unwrap();
    let taken = bounded(quitter.take_grants(5)).await;
    assert_eq!(
        bounded(handle.progress(job))
            .await
            .unwrap()
            .borrow()
            .running,
        5
    );
    drop(quitter);

    let mut stayer = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    let done = bounded(stayer.work(4, square)).await.unwrap();
    for t in &taken {
        let again = done
            .iter()
            .find(|g| g.task == t.task)
            .expect("re-issued to the stayer");
        assert_eq!(again.attempt, t.attempt + 1);
        assert_ne!(again.lease, t.lease);
    }
    assert_eq!(done.len(), 20);
    assert_eq!(bounded(handle.outputs(job)).await.unwrap(), squares(20));
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn lease_expiry_reissues_a_hung_workers_tasks() {
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret).lease_duration(Duration::from_millis(300)));
    let job = bounded(handle.create_job("expiry", "square", numbers(4), vec![], 5))
        .await
        .unwrap()
        .job;
    let mut hung = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    hung.send(&Message::Credit { count: 2 }).await.unwrap();
    let taken = bounded(hung.take_grants(2)).await;
    // `hung` stays connected and silent; its leases expire.
    let mut other = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    let done = bounded(other.work(2, square)).await.unwrap();
    for t in &taken {
        assert!(
            done.iter()
                .any(|g| g.task == t.task && g.attempt > t.attempt)
        );
    }
    assert_eq!(bounded(handle.outputs(job)).await.unwrap(), squares(4));
    // The hung worker's late answer is acknowledged and dropped.
    let late = square(&taken[0].input);
    hung.send(&Message::Complete {
        lease: taken[0].lease,
        output: &late,
    })
    .await
    .unwrap();
    let mut saw_ack = false;
    while !saw_ack {
        match bounded(hung.recv()).await.unwrap() {
            Got::Ack(lease) => saw_ack = lease == taken[0].lease,
            _ => continue,
        }
    }
    let p = bounded(handle.wait_finished(job)).await.unwrap();
    assert_eq!((p.done, p.failed), (4, 0));
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_silent_worker_is_taken_for_dead() {
    let secret = Secret::random().unwrap();
    // Leases that would outlive the test, one attempt per task: only a disconnect (which does
    // not count as an attempt) lets the tasks run elsewhere.
    let (handle, addr, server) = start(
        config(&secret)
            .lease_duration(Duration::from_secs(3600))
            .idle_timeout(Duration::from_millis(200)),
    );
    let job = bounded(handle.create_job("silence", "square", numbers(6), vec![], 1))
        .await
        .unwrap()
        .job;
    let mut silent = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    silent.send(&Message::Credit { count: 3 }).await.unwrap();
    let taken = bounded(silent.take_grants(3)).await;
    let seen = bounded(silent.until_closed()).await;
    assert!(
        seen.iter()
            .any(|g| matches!(g, Got::Error(ErrorCode::Timeout, _))),
        "{seen:?}"
    );
    let mut other = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    let done = bounded(other.work(6, square)).await.unwrap();
    for t in &taken {
        assert!(done.iter().any(|g| g.task == t.task));
    }
    let p = bounded(handle.wait_finished(job)).await.unwrap();
    assert_eq!((p.done, p.failed), (6, 0));
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn checkpoint_resume_runs_only_what_is_left() {
    let secret = Secret::random().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resume.ckpt");
    let tagged = |tag: u8| move |input: &[u8]| [&[tag][..], input].concat();

    // First run: complete 40 of 100 tasks, then stop.
    let (handle, addr, server) = start(config(&secret).checkpoint(&path));
    let job = bounded(handle.create_job("resume", "tag", numbers(100), vec![], 3))
        .await
        .unwrap()
        .job;
    let mut first = bounded(RawWorker::connect(addr, &secret, "tag"))
        .await
        .unwrap();
    first.send(&Message::Credit { count: 40 }).await.unwrap();
    let grants = bounded(first.take_grants(40)).await;
    for g in &grants {
        let out = tagged(b'a')(&g.input);
        first.queue(&Message::Complete {
            lease: g.lease,
            output: &out,
        });
    }
    // Two more leases stay in flight when the server stops.
    first.queue(&Message::Credit { count: 2 });
    first.flush().await.unwrap();
    let mut acked = 0;
    while acked < 40 {
        if let Got::Ack(_) = bounded(first.recv()).await.unwrap() {
            acked += 1;
        }
    }
    let done_first: BTreeSet<TaskId> = grants.iter().map(|g| g.task).collect();
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();

    // Second run on the same file: only the other 60 run; all 100 outputs are there.
    let bound = Server::bind(config(&secret).checkpoint(&path)).unwrap();
    let recovery = bound.recovery().unwrap();
    assert!(!recovery.created);
    assert_eq!(recovery.truncated, 0);
    assert_eq!(recovery.records, 41);
    let (handle, addr, server) = common::spawn_bound(bound);
    let created = bounded(handle.create_job("resume", "tag", numbers(100), vec![], 3))
        .await
        .unwrap();
    assert_eq!(created.already_done, 40);
    assert_eq!(created.job, job);
    let mut second = bounded(RawWorker::connect(addr, &secret, "tag"))
        .await
        .unwrap();
    let ran = bounded(second.work(8, tagged(b'b'))).await.unwrap();
    assert_eq!(ran.len(), 60);
    for g in &ran {
        assert!(!done_first.contains(&g.task), "{:?} ran twice", g.task);
    }
    let outputs = bounded(handle.outputs(job)).await.unwrap();
    for (i, out) in outputs.iter().enumerate() {
        let out = out.as_ref().expect("every output present");
        let tag = if done_first.contains(&TaskId(i as u32)) {
            b'a'
        } else {
            b'b'
        };
        assert_eq!(out[0], tag);
        assert_eq!(&out[1..], &(i as u32).to_le_bytes());
    }

    // A run with other items is refused, naming the mismatch.
    let err = bounded(handle.create_job("resume", "tag", numbers(99), vec![], 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HandleError::Create(CreateJobError::Mismatch(_))),
        "{err}"
    );
    assert!(err.to_string().contains("100 items"), "{err}");
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();

    // Third run: the job is finished; a late worker is told so at once.
    let (handle, addr, server) = start(config(&secret).checkpoint(&path));
    let created = bounded(handle.create_job("resume", "tag", numbers(100), vec![], 3))
        .await
        .unwrap();
    assert_eq!(created.already_done, 100);
    assert!(bounded(handle.wait_finished(job)).await.unwrap().finished);
    let mut late = bounded(RawWorker::connect(addr, &secret, "tag"))
        .await
        .unwrap();
    assert!(
        bounded(late.work(1, tagged(b'c')))
            .await
            .unwrap()
            .is_empty()
    );
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

/// `chains` chains of `len` tasks each: task `c * len + i` runs after `c * len + i - 1`.
fn chains(chains: u32, len: u32) -> Vec<Edge> {
    (0..chains)
        .flat_map(|c| {
            (1..len).map(move |i| Edge {
                before: TaskId(c * len + i - 1),
                after: TaskId(c * len + i),
            })
        })
        .collect()
}

#[tokio::test]
async fn dependencies_run_in_order() {
    let secret = Secret::random().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (handle, addr, server) = start(config(&secret).checkpoint(dir.path().join("dag")));
    let edges = chains(3, 5);
    let job = bounded(handle.create_job("dag", "square", numbers(15), edges.clone(), 3))
        .await
        .unwrap()
        .job;
    let mut worker = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    let done = bounded(worker.work(8, square)).await.unwrap();
    let position = |t: TaskId| done.iter().position(|g| g.task == t).unwrap();
    for e in &edges {
        assert!(position(e.before) < position(e.after), "{e:?}");
    }
    assert_eq!(bounded(handle.outputs(job)).await.unwrap(), squares(15));
    // A cycle is refused, naming it.
    let cycle = vec![
        Edge {
            before: TaskId(0),
            after: TaskId(1),
        },
        Edge {
            before: TaskId(1),
            after: TaskId(0),
        },
    ];
    let err = bounded(handle.create_job("loop", "square", numbers(2), cycle, 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HandleError::Create(CreateJobError::Dag(_))),
        "{err}"
    );
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn torn_tail_is_truncated_on_open() {
    let secret = Secret::random().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torn.ckpt");
    let (handle, addr, server) = start(config(&secret).checkpoint(&path));
    let job = bounded(handle.create_job("torn", "square", numbers(10), vec![], 3))
        .await
        .unwrap()
        .job;
    let mut worker = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    bounded(worker.work(4, square)).await.unwrap();
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();

    let good_len = std::fs::metadata(&path).unwrap().len();
    // Half a record: a length prefix promising more than follows.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 3, 0]).unwrap();
    drop(file);

    let bound = Server::bind(config(&secret).checkpoint(&path)).unwrap();
    let recovery = bound.recovery().unwrap();
    assert_eq!(recovery.truncated, 10);
    assert_eq!(recovery.valid_len, good_len);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    let (handle, _addr, server) = common::spawn_bound(bound);
    let created = bounded(handle.create_job("torn", "square", numbers(10), vec![], 3))
        .await
        .unwrap();
    assert_eq!((created.job, created.already_done), (job, 10));
    assert_eq!(bounded(handle.outputs(job)).await.unwrap(), squares(10));
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn second_bind_on_a_served_address_is_addr_in_use() {
    let secret = Secret::random().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elect.ckpt");
    let (handle, addr, server) = start(config(&secret).checkpoint(&path));
    let err = Server::bind(config(&secret).listen(addr).checkpoint(&path)).unwrap_err();
    assert!(err.is_addr_in_use(), "{err}");
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::AddrInUse
    );
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
    // Once the server is gone the address and the checkpoint are free again at once.
    let (handle, _, server) = start(config(&secret).listen(addr).checkpoint(&path));
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn observer_reads_status_and_heartbeats_are_echoed() {
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret));
    let job = bounded(handle.create_job("watched", "square", numbers(5), vec![], 3))
        .await
        .unwrap()
        .job;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut conn, welcome) = bounded(connect_and_handshake(
        stream,
        &secret,
        Role::Observer,
        1 << 16,
    ))
    .await
    .unwrap();
    assert_eq!(welcome.heartbeat_ms, 1000);
    bounded(conn.send(&Message::StatusQuery { job: None }))
        .await
        .unwrap();
    let Message::Status(batch) = bounded(conn.read_message()).await.unwrap() else {
        panic!("no status")
    };
    let jobs: Vec<_> = batch.iter().map(Result::unwrap).collect();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].job, jobs[0].name, jobs[0].total),
        (job, "watched", 5)
    );
    assert!(!jobs[0].finished);

    let mut worker = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    worker.send(&Message::Heartbeat).await.unwrap();
    assert_eq!(bounded(worker.recv()).await.unwrap(), Got::Heartbeat);

    bounded(handle.shutdown()).await.unwrap();
    assert!(matches!(
        bounded(conn.read_message()).await.unwrap(),
        Message::ServerGoingAway
    ));
    bounded(server).await.unwrap().unwrap();
}

/// Reads until the answer to `call` arrives: `Ok(result)` or `Err(error)`.
async fn answer(conn: &mut FramedConn<TcpStream>, call: u32) -> Result<Vec<u8>, String> {
    loop {
        match bounded(conn.read_message()).await.unwrap() {
            Message::CallReturn { call: c, result } if c == call => return Ok(result.to_vec()),
            Message::CallError { call: c, error } if c == call => return Err(error.to_owned()),
            Message::CallReturn { .. } | Message::CallError { .. } | Message::Heartbeat => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn remote_calls_run_beside_scheduling() {
    let secret = Secret::random().unwrap();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let handler: CallHandler = std::sync::Arc::new(move |name: &str, args: &[u8]| match name {
        "double" => Ok(args.iter().map(|b| b * 2).collect()),
        "slow" => {
            gate.lock().unwrap().recv().map_err(|e| e.to_string())?;
            Ok(b"finally".to_vec())
        }
        "boom" => Err("it went boom".to_owned()),
        "panic" => panic!("deliberately"),
        other => Err(format!("no function {other:?}")),
    });
    let (handle, addr, server) = start(config(&secret).call_handler(handler));
    let job = bounded(handle.create_job("beside", "square", numbers(50), vec![], 3))
        .await
        .unwrap()
        .job;

    let stream = TcpStream::connect(addr).await.unwrap();
    let role = Role::Client(ClientInfo { name: "caller" });
    let (mut caller, _) = bounded(connect_and_handshake(stream, &secret, role, 1 << 16))
        .await
        .unwrap();
    // A call that blocks until released...
    bounded(caller.send(&Message::Call {
        call: 1,
        name: "slow",
        args: &[],
    }))
    .await
    .unwrap();
    // ...does not hold up other calls...
    bounded(caller.send(&Message::Call {
        call: 2,
        name: "double",
        args: &[1, 2, 3],
    }))
    .await
    .unwrap();
    assert_eq!(answer(&mut caller, 2).await, Ok(vec![2, 4, 6]));
    // ...nor the job.
    let mut worker = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    assert_eq!(bounded(worker.work(4, square)).await.unwrap().len(), 50);
    assert!(bounded(handle.wait_finished(job)).await.unwrap().finished);
    release.send(()).unwrap();
    assert_eq!(answer(&mut caller, 1).await, Ok(b"finally".to_vec()));

    for (call, name, expected) in [
        (3, "boom", "it went boom"),
        (4, "panic", "function \"panic\" panicked"),
        (5, "nothing", "no function \"nothing\""),
    ] {
        bounded(caller.send(&Message::Call {
            call,
            name,
            args: &[],
        }))
        .await
        .unwrap();
        assert_eq!(answer(&mut caller, call).await, Err(expected.to_owned()));
    }

    // A worker connection may call too.
    worker
        .send(&Message::Call {
            call: 9,
            name: "double",
            args: &[21],
        })
        .await
        .unwrap();
    loop {
        if let Got::Other("CallReturn") = bounded(worker.recv()).await.unwrap() {
            break;
        }
    }
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn calls_without_a_handler_are_refused() {
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut caller, _) = bounded(connect_and_handshake(stream, &secret, Role::Observer, 4096))
        .await
        .unwrap();
    bounded(caller.send(&Message::Call {
        call: 7,
        name: "anything",
        args: &[],
    }))
    .await
    .unwrap();
    assert_eq!(
        answer(&mut caller, 7).await,
        Err("this server has no functions to call".to_owned())
    );
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn linger_stops_the_server_after_the_last_job() {
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret).linger(Duration::from_millis(100)));
    let job = bounded(handle.create_job("brief", "square", numbers(3), vec![], 3))
        .await
        .unwrap()
        .job;
    let mut worker = bounded(RawWorker::connect(addr, &secret, "square"))
        .await
        .unwrap();
    bounded(worker.work(3, square)).await.unwrap();
    bounded(server).await.unwrap().unwrap();
    assert!(matches!(
        handle.wait_finished(job).await,
        Err(HandleError::Stopped { .. })
    ));
    assert!(
        bounded(worker.until_closed())
            .await
            .contains(&Got::GoingAway)
    );
}

#[tokio::test]
async fn unknown_job_is_an_error() {
    let secret = Secret::random().unwrap();
    let (handle, _, server) = start(config(&secret));
    assert!(matches!(
        bounded(handle.outputs(JobId(9))).await,
        Err(HandleError::UnknownJob(JobId(9)))
    ));
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

/// Throughput through the real server: two raw workers on threads of their own, tiny tasks,
/// durable log on. Run with
/// `cargo test --release -p colony-tokio --test server throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release mode"]
fn throughput() {
    let tasks: u32 = std::env::var("COLONY_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let window: u32 = std::env::var("COLONY_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let secret = Secret::random().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (handle, addr, server) = runtime
        .block_on(async { start(config(&secret).checkpoint(dir.path().join("bench.ckpt"))) });
    let inputs = numbers(tasks);
    let start = std::time::Instant::now();
    let job = runtime
        .block_on(handle.create_job("bench", "noop", inputs, vec![], 3))
        .unwrap()
        .job;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let secret = secret.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut w = RawWorker::connect(addr, &secret, "noop").await.unwrap();
                    w.work(window, |_| Vec::new()).await.unwrap().len()
                })
            })
        })
        .collect();
    let done: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let progress = runtime.block_on(handle.wait_finished(job)).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(progress.done, tasks);
    assert_eq!(done, tasks as usize);
    println!(
        "{tasks} tasks in {:.3} s: {:.0} tasks/s, {} fsyncs",
        elapsed.as_secs_f64(),
        f64::from(tasks) / elapsed.as_secs_f64(),
        handle.fsyncs()
    );
    runtime.block_on(handle.shutdown()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
}

/// Dependent chains through the real server (10 chains of 1,000), durable log on. Run with
/// `cargo test --release -p colony-tokio --test server dag_chains -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release mode"]
fn dag_chains() {
    let secret = Secret::random().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (handle, addr, server) =
        runtime.block_on(async { start(config(&secret).checkpoint(dir.path().join("dag.ckpt"))) });
    let start = std::time::Instant::now();
    let job = runtime
        .block_on(handle.create_job("dag", "noop", numbers(10_000), chains(10, 1000), 3))
        .unwrap()
        .job;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let secret = secret.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut w = RawWorker::connect(addr, &secret, "noop").await.unwrap();
                    w.work(16, |_| Vec::new()).await.unwrap().len()
                })
            })
        })
        .collect();
    let done: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    runtime.block_on(handle.wait_finished(job)).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(done, 10_000);
    println!(
        "10 chains of 1000 in {:.3} s, {} fsyncs",
        elapsed.as_secs_f64(),
        handle.fsyncs()
    );
    runtime.block_on(handle.shutdown()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
}
