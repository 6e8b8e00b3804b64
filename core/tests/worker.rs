//! The worker state machine driven through whole sessions against hand-built server messages:
//! the real HMAC handshake, grants, answers, heartbeats by time, a silent server, reconnect
//! backoff, credit accounting, and hostile input.

use colony_core::proto::{
    Batch, BatchBuf, DEFAULT_MAX_FRAME, Decoded, ErrorCode, FrameDecoder, HANDSHAKE_MAX_FRAME,
    HEADER_LEN, JobOutcome, LeaseGrant, Message, Nonce, Platform, Retry, Role, ServerHandshake,
    Welcome, decode_message, encode_frame_into, server_proof,
};
use colony_core::worker::{
    Action, Backoff, CloseReason, CompleteError, Config, ConfigError, Event, Status, TaskError,
    TaskHandler, Ticket, TransmitError, Worker, WorkerError,
};
use colony_core::{Attempt, Duration, Instant, JobId, LeaseId, TaskId, WorkerId};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const KINDS: &[&str] = &["square", "echo"];
const CLIENT_NONCE: Nonce = [0xC1; 16];
const SERVER_NONCE: Nonce = [0x5E; 16];
const HEARTBEAT_MS: u32 = 1_000;

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn config() -> Config<'static> {
    Config::new("test-worker", SECRET, KINDS)
        .with_platform(Platform::Linux)
        .with_slots(4)
        .with_backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
}

/// The payload of `message`, as the server would frame it.
fn payload(message: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(message, &mut out).unwrap();
    out.split_off(HEADER_LEN)
}

/// A grant of `(lease, kind, input)` items.
fn grant(items: &[(u64, u16, &[u8])]) -> Vec<u8> {
    let mut buf = BatchBuf::new();
    for &(lease, kind, input) in items {
        buf.push(&LeaseGrant {
            lease: LeaseId(lease),
            job: JobId(1),
            task: TaskId(lease as u32),
            attempt: Attempt(0),
            kind,
            input,
        })
        .unwrap();
    }
    payload(&Message::Grant(buf.as_batch()))
}

/// Drains everything the worker wants to send, split into frame payloads (each checked).
fn transmit<const N: usize>(worker: &mut Worker<'_, N>, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_LEN + 2 * HANDSHAKE_MAX_FRAME as usize];
    let mut frames = Vec::new();
    while let Some(n) = worker.poll_transmit(now, &mut buf).unwrap() {
        frames.extend(split_frames(&buf[..n]));
    }
    frames
}

fn split_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let Decoded::Frame(frame) = decoder.decode(bytes).unwrap() else {
            panic!("partial frame in transmit output")
        };
        frames.push(frame.payload().to_vec());
        bytes = &bytes[frame.frame_len()..];
    }
    frames
}

fn messages(frames: &[Vec<u8>]) -> Vec<Message<'_>> {
    frames.iter().map(|f| decode_message(f).unwrap()).collect()
}

/// Connects and completes the handshake as a real server would, checking the worker's proof.
fn handshake<const N: usize>(worker: &mut Worker<'_, N>, now: Instant) -> u32 {
    assert_eq!(worker.poll(now), Some(Action::Connect));
    assert_eq!(worker.status(), Status::Connecting);
    worker.connected(now, CLIENT_NONCE);
    assert_eq!(worker.status(), Status::Handshaking);

    let frames = transmit(worker, now);
    let [Message::ClientHello(hello)] = messages(&frames)[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(hello.nonce, CLIENT_NONCE);
    let mut server = ServerHandshake::new(DEFAULT_MAX_FRAME);
    let server_hello = server.hello(SECRET, &hello, SERVER_NONCE).unwrap();
    assert_eq!(
        worker.handle_frame(now, &payload(&Message::ServerHello(server_hello))),
        Ok(None)
    );

    let frames = transmit(worker, now);
    let [Message::Join(join)] = &messages(&frames)[..] else {
        panic!("{frames:?}")
    };
    server.join(SECRET, join).unwrap();
    let Role::Worker(hello) = &join.role else {
        panic!("{join:?}")
    };
    assert_eq!(hello.name, worker.config().name());
    assert_eq!(hello.platform, worker.config().platform());
    let kinds: Vec<&str> = hello.kinds.iter().map(Result::unwrap).collect();
    assert_eq!(kinds, worker.config().kinds());
    assert_eq!(hello.slots, worker.config().slots());

    let welcome = Welcome {
        worker: WorkerId(7),
        lease_ms: 30_000,
        heartbeat_ms: HEARTBEAT_MS,
    };
    let bytes = payload(&Message::Welcome(welcome));
    let event = worker.handle_frame(now, &bytes).unwrap();
    assert_eq!(
        event,
        Some(Event::Ready {
            worker: WorkerId(7)
        })
    );
    assert_eq!(worker.status(), Status::Ready);
    assert_eq!(worker.worker_id(), Some(WorkerId(7)));

    let frames = transmit(worker, now);
    let [Message::Credit { count }] = messages(&frames)[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(count, worker.config().slots());
    assert_eq!(worker.credit(), count);
    count
}

/// Squares a little-endian u32 (kind 0), echoes (kind 1).
struct Square;

impl TaskHandler for Square {
    fn run<'a>(
        &'a mut self,
        kind: usize,
        input: &[u8],
        output: &'a mut [u8],
    ) -> Result<usize, TaskError<'a>> {
        match kind {
            0 => {
                let bytes: [u8; 4] = input
                    .try_into()
                    .map_err(|_| TaskError::permanent("input is not a u32"))?;
                let n = u32::from_le_bytes(bytes);
                let out = n.checked_mul(n).ok_or(TaskError::permanent("overflow"))?;
                output
                    .get_mut(..4)
                    .ok_or(TaskError::retryable("no room"))?
                    .copy_from_slice(&out.to_le_bytes());
                Ok(4)
            }
            _ => {
                output
                    .get_mut(..input.len())
                    .ok_or(TaskError::permanent("echo too long"))?
                    .copy_from_slice(input);
                Ok(input.len())
            }
        }
    }
}

#[test]
fn full_session() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    let mut now = ms(0);
    assert_eq!(handshake(&mut w, now), 4);

    now = ms(10);
    let g = grant(&[
        (1, 0, &7u32.to_le_bytes()),
        (2, 1, b"hello"),
        (3, 0, b"bad"),
    ]);
    let Some(Event::Granted(grants)) = w.handle_frame(now, &g).unwrap() else {
        panic!()
    };
    assert_eq!(grants.len(), 3);
    assert_eq!(w.held(), 3);
    assert_eq!(w.credit(), 1);
    let tasks: Vec<_> = grants.iter().collect();
    assert_eq!(tasks[1].kind_name(), "echo");
    assert_eq!(tasks[1].input(), b"hello");
    assert_eq!(tasks[0].job(), JobId(1));
    assert_eq!(tasks[0].task(), TaskId(1));
    assert_eq!(tasks[0].attempt(), Attempt(0));

    let mut tx = vec![0u8; 256];
    let mut scratch = [0u8; 64];
    let mut sent = Vec::new();
    // Task 1 through the handler, task 2 by hand, task 3 fails in the handler.
    let n = w
        .run(&tasks[0], &mut Square, &mut scratch, &mut tx)
        .unwrap();
    sent.extend(split_frames(&tx[..n]));
    let n = w.complete(tasks[1].ticket(), b"HELLO", &mut tx).unwrap();
    sent.extend(split_frames(&tx[..n]));
    let n = w
        .run(&tasks[2], &mut Square, &mut scratch, &mut tx)
        .unwrap();
    sent.extend(split_frames(&tx[..n]));
    assert_eq!(
        messages(&sent),
        [
            Message::Complete {
                lease: LeaseId(1),
                output: &49u32.to_le_bytes()
            },
            Message::Complete {
                lease: LeaseId(2),
                output: b"HELLO"
            },
            Message::Fail {
                lease: LeaseId(3),
                retry: Retry::Permanent,
                error: "input is not a u32"
            },
        ]
    );
    assert_eq!(w.held(), 0);

    // The three freed slots go back as one credit, after the answers.
    let frames = transmit(&mut w, now);
    assert_eq!(messages(&frames), [Message::Credit { count: 3 }]);
    assert_eq!(w.credit(), 4);

    let ack = payload(&Message::Ack { lease: LeaseId(1) });
    let Some(Event::Acked(ticket)) = w.handle_frame(now, &ack).unwrap() else {
        panic!()
    };
    assert_eq!(ticket.lease(), LeaseId(1));

    let done = payload(&Message::JobFinished {
        job: JobId(1),
        outcome: JobOutcome::Finished,
    });
    assert_eq!(
        w.handle_frame(now, &done).unwrap(),
        Some(Event::JobFinished {
            job: JobId(1),
            outcome: JobOutcome::Finished
        })
    );
    assert_eq!(
        w.status(),
        Status::Ready,
        "a job's end is the caller's decision"
    );

    w.goodbye();
    assert_eq!(messages(&transmit(&mut w, now)), [Message::Goodbye]);
    assert_eq!(w.poll(now), Some(Action::Close(CloseReason::Goodbye)));
    w.disconnected(now, Duration::ZERO);
    assert_eq!(w.status(), Status::Disconnected);
    assert_eq!(w.poll_at(), Some(ms(110)));
}

#[test]
fn handshake_without_the_secret_fails() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    let now = ms(0);
    assert_eq!(w.poll(now), Some(Action::Connect));
    w.connected(now, CLIENT_NONCE);
    transmit(&mut w, now);
    let mut server = ServerHandshake::new(DEFAULT_MAX_FRAME);
    let hello = colony_core::proto::ClientHello {
        version: colony_core::proto::PROTOCOL_VERSION,
        nonce: CLIENT_NONCE,
        max_frame: DEFAULT_MAX_FRAME,
    };
    let hello = server
        .hello(b"another secret entirely", &hello, SERVER_NONCE)
        .unwrap();
    let err = w
        .handle_frame(now, &payload(&Message::ServerHello(hello)))
        .unwrap_err();
    assert!(matches!(err, WorkerError::Handshake(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::AuthFailed);
    // No proof of ours goes out: only the parting error.
    let frames = transmit(&mut w, now);
    assert_eq!(
        messages(&frames),
        [Message::Error {
            code: ErrorCode::AuthFailed,
            detail: ""
        }]
    );
    assert_eq!(w.poll(now), Some(Action::Close(CloseReason::Protocol(err))));
    w.disconnected(now, Duration::ZERO);
    assert_eq!(w.poll_at(), Some(ms(100)));
}

#[test]
fn server_proof_is_checked_against_our_nonce() {
    // A proof made for another connection's nonce (a replay) is refused too.
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    w.poll(ms(0));
    w.connected(ms(0), CLIENT_NONCE);
    transmit(&mut w, ms(0));
    let replay = colony_core::proto::ServerHello {
        version: colony_core::proto::PROTOCOL_VERSION,
        nonce: SERVER_NONCE,
        max_frame: DEFAULT_MAX_FRAME,
        proof: server_proof(SECRET, &[0; 16], &SERVER_NONCE),
    };
    let err = w
        .handle_frame(ms(0), &payload(&Message::ServerHello(replay)))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::AuthFailed);
    assert_eq!(w.status(), Status::Closing);
}

#[test]
fn heartbeats_follow_the_servers_interval() {
    let config = config().with_heartbeat(Duration::from_secs(5));
    let mut w: Worker<'_, 4> = Worker::new(config).unwrap();
    handshake(&mut w, ms(0));
    assert_eq!(
        w.heartbeat_interval(),
        Duration::from_millis(HEARTBEAT_MS.into())
    );
    assert_eq!(w.poll_at(), Some(ms(1_000)));
    assert!(transmit(&mut w, ms(999)).is_empty());
    assert_eq!(w.poll(ms(1_000)), None);
    assert_eq!(messages(&transmit(&mut w, ms(1_000))), [Message::Heartbeat]);
    assert!(
        transmit(&mut w, ms(1_000)).is_empty(),
        "one heartbeat per interval"
    );
    // The server echoes; the link stays up as long as it does.
    let echo = payload(&Message::Heartbeat);
    for t in (1_000..=20_000).step_by(1_000) {
        assert_eq!(w.poll(ms(t)), None, "at {t}");
        assert_eq!(w.handle_frame(ms(t), &echo), Ok(None));
        let sent = transmit(&mut w, ms(t));
        if t > 1_000 {
            assert_eq!(messages(&sent), [Message::Heartbeat], "at {t}");
        }
        assert_eq!(w.poll_at(), Some(ms(t + 1_000)));
    }
    assert_eq!(w.status(), Status::Ready);
}

#[test]
fn a_silent_server_is_declared_dead() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    handshake(&mut w, ms(0));
    let g = grant(&[(1, 0, b"1234")]);
    w.handle_frame(ms(500), &g).unwrap();
    assert_eq!(w.held(), 1);
    // Heartbeats go out but nothing comes back after 500 ms: dead 3 intervals later.
    for t in [1_000, 2_000, 3_000] {
        assert_eq!(w.poll(ms(t)), None);
        assert_eq!(messages(&transmit(&mut w, ms(t))), [Message::Heartbeat]);
    }
    assert_eq!(w.poll_at(), Some(ms(3_500)));
    assert_eq!(w.poll(ms(3_499)), None);
    assert_eq!(w.poll(ms(3_500)), Some(Action::Close(CloseReason::Silent)));
    assert_eq!(w.held(), 0, "leases go with the link");
    assert_eq!(w.poll_at(), Some(Instant::ZERO));
    assert_eq!(
        messages(&transmit(&mut w, ms(3_500))),
        [Message::Error {
            code: ErrorCode::Timeout,
            detail: ""
        }]
    );
    assert_eq!(
        w.poll(ms(3_501)),
        Some(Action::Close(CloseReason::Silent)),
        "until closed"
    );
    w.disconnected(ms(3_600), Duration::ZERO);
    // The session reached Welcome, so the backoff starts over.
    assert_eq!(w.poll_at(), Some(ms(3_700)));
}

#[test]
fn a_silent_handshake_times_out() {
    let mut w: Worker<'_, 4> =
        Worker::new(config().with_heartbeat(Duration::from_secs(2))).unwrap();
    w.poll(ms(0));
    w.connected(ms(0), CLIENT_NONCE);
    transmit(&mut w, ms(0));
    assert_eq!(w.poll_at(), Some(ms(6_000)));
    assert_eq!(w.poll(ms(6_000)), Some(Action::Close(CloseReason::Silent)));
}

#[test]
fn reconnect_backoff_grows_caps_and_resets() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    let mut now = ms(0);
    let mut delays = Vec::new();
    for _ in 0..6 {
        assert_eq!(w.poll(now), Some(Action::Connect));
        // The connection attempt fails.
        w.disconnected(now, Duration::ZERO);
        let at = w.poll_at().unwrap();
        delays.push((at - now).as_millis());
        assert_eq!(w.poll(Instant::from_micros(at.as_micros() - 1)), None);
        now = at;
    }
    assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);

    // A handshake that fails also counts; one that reaches Welcome resets.
    handshake(&mut w, now);
    w.disconnected(now, Duration::ZERO);
    assert_eq!(w.poll_at(), Some(now + Duration::from_millis(100)));

    // Jitter from the caller is added as is.
    now = w.poll_at().unwrap();
    w.poll(now);
    w.disconnected(now, Duration::from_millis(33));
    assert_eq!(w.poll_at(), Some(now + Duration::from_millis(233)));
}

#[test]
fn disconnected_twice_counts_once() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    w.poll(ms(0));
    w.disconnected(ms(0), Duration::ZERO);
    w.disconnected(ms(50), Duration::ZERO);
    assert_eq!(w.poll_at(), Some(ms(100)));
}

#[test]
fn server_going_away_reconnects_with_backoff() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    handshake(&mut w, ms(0));
    w.handle_frame(ms(1), &grant(&[(1, 1, b"x")])).unwrap();
    let bytes = payload(&Message::ServerGoingAway);
    let event = w.handle_frame(ms(2), &bytes).unwrap();
    assert_eq!(event, Some(Event::ServerGoingAway));
    assert_eq!(w.held(), 0);
    assert!(
        transmit(&mut w, ms(2)).is_empty(),
        "nothing to say to a leaving server"
    );
    assert_eq!(
        w.poll(ms(2)),
        Some(Action::Close(CloseReason::ServerGoingAway))
    );
    w.disconnected(ms(2), Duration::ZERO);
    assert_eq!(w.poll(ms(101)), None);
    assert_eq!(w.poll(ms(102)), Some(Action::Connect));
}

#[test]
fn server_error_surfaces_with_its_detail() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    handshake(&mut w, ms(0));
    let bytes = payload(&Message::Error {
        code: ErrorCode::Other,
        detail: "maintenance",
    });
    assert_eq!(
        w.handle_frame(ms(1), &bytes).unwrap(),
        Some(Event::ServerError {
            code: ErrorCode::Other,
            detail: "maintenance"
        })
    );
    assert_eq!(
        w.poll(ms(1)),
        Some(Action::Close(CloseReason::ServerError(ErrorCode::Other)))
    );
    // Frames still in flight after that are ignored.
    assert_eq!(w.handle_frame(ms(1), &grant(&[(1, 0, b"")])), Ok(None));
}

#[test]
fn credit_is_never_exceeded() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    let mut server_credit = handshake(&mut w, ms(0));
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut lease = 0u64;
    let mut running: Vec<Ticket> = Vec::new();
    let mut tx = vec![0u8; 512];
    for step in 0..2_000u64 {
        let now = ms(step);
        // The server grants some of what it was asked for.
        if server_credit > 0 && next() % 2 == 0 {
            let k = 1 + (next() % u64::from(server_credit)) as u32;
            let items: Vec<(u64, u16, &[u8])> = (0..k)
                .map(|_| {
                    lease += 1;
                    (lease, (lease % 2) as u16, &b"in"[..])
                })
                .collect();
            let g = grant(&items);
            let Some(Event::Granted(grants)) = w.handle_frame(now, &g).unwrap() else {
                panic!()
            };
            running.extend(grants.iter().map(|t| t.ticket()));
            server_credit -= k;
        }
        // The worker answers some of its tasks, in any order.
        while !running.is_empty() && next() % 3 == 0 {
            let i = (next() % running.len() as u64) as usize;
            let ticket = running.swap_remove(i);
            let n = if next() % 4 == 0 {
                w.fail(ticket, Retry::Retryable, "flaky", &mut tx).unwrap()
            } else {
                w.complete(ticket, b"out", &mut tx).unwrap()
            };
            assert!(n > 0);
        }
        for m in messages(&transmit(&mut w, now)) {
            match m {
                Message::Credit { count } => server_credit += count,
                Message::Heartbeat => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // The server's view and the worker's agree, and never exceed the slots.
        assert_eq!(w.credit(), server_credit, "step {step}");
        assert_eq!(w.held(), running.len(), "step {step}");
        assert_eq!(w.held() as u32 + server_credit, 4, "step {step}");
        w.handle_frame(now, &payload(&Message::Heartbeat)).unwrap();
    }
}

#[test]
fn a_grant_beyond_credit_is_a_protocol_error() {
    let mut w: Worker<'_, 4> = Worker::new(config().with_slots(2)).unwrap();
    handshake(&mut w, ms(0));
    let err = w
        .handle_frame(ms(1), &grant(&[(1, 0, b""), (2, 0, b""), (3, 0, b"")]))
        .unwrap_err();
    assert_eq!(
        err,
        WorkerError::CreditExceeded {
            granted: 3,
            credit: 2
        }
    );
    assert_eq!(w.held(), 0);
    assert_eq!(
        messages(&transmit(&mut w, ms(1))),
        [Message::Error {
            code: ErrorCode::LimitExceeded,
            detail: ""
        }]
    );
    assert_eq!(
        w.poll(ms(1)),
        Some(Action::Close(CloseReason::Protocol(err)))
    );

    // Within credit, but in two grants that together exceed it.
    let mut w: Worker<'_, 4> = Worker::new(config().with_slots(2)).unwrap();
    handshake(&mut w, ms(0));
    w.handle_frame(ms(1), &grant(&[(1, 0, b"")])).unwrap();
    w.handle_frame(ms(1), &grant(&[(2, 0, b"")])).unwrap();
    let err = w.handle_frame(ms(1), &grant(&[(3, 0, b"")])).unwrap_err();
    assert_eq!(
        err,
        WorkerError::CreditExceeded {
            granted: 1,
            credit: 0
        }
    );
}

#[test]
fn bad_grants_are_refused_whole() {
    for (items, expected) in [
        (
            vec![(1, 0, &b""[..]), (1, 1, &b""[..])],
            WorkerError::DuplicateLease { lease: LeaseId(1) },
        ),
        (
            vec![(1, 0, &b""[..]), (2, 9, &b""[..])],
            WorkerError::UnknownKind { kind: 9 },
        ),
    ] {
        let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
        handshake(&mut w, ms(0));
        assert_eq!(w.handle_frame(ms(1), &grant(&items)).unwrap_err(), expected);
        assert_eq!(w.held(), 0);
        assert_eq!(w.status(), Status::Closing);
    }
}

#[test]
fn revoke_drops_the_lease_and_returns_its_credit() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    handshake(&mut w, ms(0));
    let g = grant(&[(1, 0, b"a"), (2, 0, b"b")]);
    let Some(Event::Granted(grants)) = w.handle_frame(ms(1), &g).unwrap() else {
        panic!()
    };
    let tickets: Vec<Ticket> = grants.iter().map(|t| t.ticket()).collect();
    assert!(transmit(&mut w, ms(1)).is_empty());
    let revoke = payload(&Message::Revoke { lease: LeaseId(1) });
    assert_eq!(
        w.handle_frame(ms(2), &revoke).unwrap(),
        Some(Event::Revoked(tickets[0]))
    );
    assert!(!w.holds(tickets[0]));
    assert_eq!(
        messages(&transmit(&mut w, ms(2))),
        [Message::Credit { count: 1 }]
    );
    // A late answer for it is discarded; a revoke for an unknown lease is ignored.
    let mut tx = [0u8; 64];
    assert_eq!(w.complete(tickets[0], b"late", &mut tx), Ok(0));
    assert_eq!(w.handle_frame(ms(3), &revoke), Ok(None));
    assert!(w.holds(tickets[1]));
}

#[test]
fn leases_die_with_their_connection() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    handshake(&mut w, ms(0));
    let g = grant(&[(5, 0, b"a")]);
    let Some(Event::Granted(grants)) = w.handle_frame(ms(1), &g).unwrap() else {
        panic!()
    };
    let old = grants.iter().next().unwrap().ticket();
    w.disconnected(ms(2), Duration::ZERO);
    assert_eq!(w.held(), 0);

    // A restarted server reuses lease id 5 for another task on the next connection.
    let now = w.poll_at().unwrap();
    handshake(&mut w, now);
    let Some(Event::Granted(grants)) = w.handle_frame(now, &g).unwrap() else {
        panic!()
    };
    let new = grants.iter().next().unwrap().ticket();
    assert_eq!(old.lease(), new.lease());
    assert_ne!(old, new);
    let mut tx = [0u8; 64];
    assert_eq!(
        w.complete(old, b"stale", &mut tx),
        Ok(0),
        "the old answer must not land"
    );
    assert!(w.holds(new));
    assert!(w.complete(new, b"fresh", &mut tx).unwrap() > 0);
}

#[test]
fn messages_out_of_place_are_errors() {
    // A grant before Welcome.
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    w.poll(ms(0));
    w.connected(ms(0), CLIENT_NONCE);
    transmit(&mut w, ms(0));
    let err = w.handle_frame(ms(0), &grant(&[(1, 0, b"")])).unwrap_err();
    assert_eq!(err, WorkerError::Unexpected { message: "Grant" });

    // A ServerHello before our ClientHello went out.
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    w.poll(ms(0));
    w.connected(ms(0), CLIENT_NONCE);
    let hello = colony_core::proto::ServerHello {
        version: colony_core::proto::PROTOCOL_VERSION,
        nonce: SERVER_NONCE,
        max_frame: DEFAULT_MAX_FRAME,
        proof: server_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE),
    };
    let err = w
        .handle_frame(ms(0), &payload(&Message::ServerHello(hello)))
        .unwrap_err();
    assert_eq!(
        err,
        WorkerError::Unexpected {
            message: "ServerHello"
        }
    );

    // Messages only a worker or client sends.
    for message in [
        Message::Credit { count: 1 },
        Message::Complete {
            lease: LeaseId(1),
            output: b"",
        },
        Message::SealJob { job: JobId(1) },
    ] {
        let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
        handshake(&mut w, ms(0));
        let err = w.handle_frame(ms(1), &payload(&message)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadMessage);
        assert_eq!(w.status(), Status::Closing);
    }
}

#[test]
fn malformed_input_is_an_error_never_a_panic() {
    let good = [
        grant(&[(1, 0, b"abcd"), (2, 1, b"xyz")]),
        payload(&Message::Revoke { lease: LeaseId(1) }),
        payload(&Message::Error {
            code: ErrorCode::Other,
            detail: "text",
        }),
        payload(&Message::JobFinished {
            job: JobId(3),
            outcome: JobOutcome::Cancelled,
        }),
    ];
    let mut errors = 0;
    for bytes in &good {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for cut in 0..bytes.len() {
            cases.push(bytes[..cut].to_vec());
        }
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                cases.push(b);
            }
        }
        let mut extended = bytes.clone();
        extended.push(0);
        cases.push(extended);
        for case in cases {
            let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
            handshake(&mut w, ms(0));
            match w.handle_frame(ms(1), &case) {
                Ok(_) => assert!(w.held() as u32 + w.credit() <= 4),
                Err(_) => {
                    errors += 1;
                    assert_eq!(w.status(), Status::Closing);
                    assert_eq!(w.held(), 0);
                    assert!(matches!(w.poll(ms(1)), Some(Action::Close(_))));
                }
            }
        }
    }
    assert!(errors > 100, "only {errors} errors");

    // Pseudo-random garbage, in every state.
    let mut seed = 7u32;
    for len in 0..300 {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect();
        let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
        if len % 2 == 0 {
            handshake(&mut w, ms(0));
        } else {
            w.poll(ms(0));
            w.connected(ms(0), CLIENT_NONCE);
        }
        let _ = w.handle_frame(ms(1), &garbage);
        let _ = w.receive(ms(1), &garbage);
    }
}

#[test]
fn receive_deframes_a_stream_byte_by_byte() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    handshake(&mut w, ms(0));
    let mut stream = Vec::new();
    encode_frame_into(&Message::Heartbeat, &mut stream).unwrap();
    let start = stream.len();
    let g = grant(&[(1, 1, b"streamed")]);
    let header_and_grant = {
        let mut f = Vec::new();
        let decoded = decode_message(&g).unwrap();
        encode_frame_into(&decoded, &mut f).unwrap();
        f
    };
    stream.extend_from_slice(&header_and_grant);

    let mut buf: Vec<u8> = Vec::new();
    let mut events = 0;
    for &byte in &stream {
        buf.push(byte);
        match w.receive(ms(1), &buf).unwrap() {
            colony_core::worker::Received::Incomplete { needed } => assert!(needed >= 1),
            colony_core::worker::Received::Frame { len, event } => {
                if let Some(Event::Granted(grants)) = event {
                    let task = grants.iter().next().unwrap();
                    assert_eq!(task.input(), b"streamed");
                    events += 1;
                }
                buf.drain(..len);
            }
        }
    }
    assert!(buf.is_empty());
    assert_eq!(events, 1);
    assert!(start > 0);

    // A corrupted checksum closes the connection.
    let mut bad = header_and_grant.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let err = w.receive(ms(2), &bad).unwrap_err();
    assert_eq!(
        err,
        WorkerError::Frame(colony_core::proto::FrameError::BadChecksum)
    );
    assert_eq!(w.status(), Status::Closing);
}

#[test]
fn frames_above_the_handshake_limit_are_refused_before_welcome() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    w.poll(ms(0));
    w.connected(ms(0), CLIENT_NONCE);
    assert_eq!(w.max_frame(), HANDSHAKE_MAX_FRAME);
    let header = (HANDSHAKE_MAX_FRAME + 1).to_le_bytes();
    assert!(matches!(
        w.receive(ms(0), &header),
        Err(WorkerError::Frame(_))
    ));
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    handshake(&mut w, ms(0));
    assert_eq!(w.max_frame(), DEFAULT_MAX_FRAME);
    let big = vec![0u8; HANDSHAKE_MAX_FRAME as usize + 1];
    // Accepted by size once welcomed (then refused as a message).
    assert!(matches!(
        w.handle_frame(ms(0), &big),
        Err(WorkerError::Decode(_))
    ));
}

#[test]
fn outputs_beyond_the_agreed_limit_fail_the_task() {
    let config = config().with_max_frame(HANDSHAKE_MAX_FRAME);
    let mut w: Worker<'_, 4> = Worker::new(config).unwrap();
    // The server agrees to the worker's smaller limit.
    w.poll(ms(0));
    w.connected(ms(0), CLIENT_NONCE);
    let frames = transmit(&mut w, ms(0));
    let [Message::ClientHello(hello)] = messages(&frames)[..] else {
        panic!()
    };
    assert_eq!(hello.max_frame, HANDSHAKE_MAX_FRAME);
    let mut server = ServerHandshake::new(DEFAULT_MAX_FRAME);
    let sh = server.hello(SECRET, &hello, SERVER_NONCE).unwrap();
    assert_eq!(sh.max_frame, HANDSHAKE_MAX_FRAME);
    w.handle_frame(ms(0), &payload(&Message::ServerHello(sh)))
        .unwrap();
    transmit(&mut w, ms(0));
    let welcome = Welcome {
        worker: WorkerId(1),
        lease_ms: 1_000,
        heartbeat_ms: 100,
    };
    w.handle_frame(ms(0), &payload(&Message::Welcome(welcome)))
        .unwrap();
    transmit(&mut w, ms(0));

    let input = vec![b'x'; 900];
    let g = grant(&[(1, 1, &input), (2, 1, b"ok")]);
    let Some(Event::Granted(grants)) = w.handle_frame(ms(1), &g).unwrap() else {
        panic!()
    };
    let tasks: Vec<_> = grants.iter().collect();
    let mut tx = vec![0u8; 4096];
    assert!(matches!(
        w.complete(tasks[0].ticket(), &vec![0u8; 2_000], &mut tx),
        Err(CompleteError::OutputTooLarge { max: 1024, .. })
    ));
    assert!(
        w.holds(tasks[0].ticket()),
        "still held after a refused answer"
    );
    // The echo handler's output is too large for the frame: it becomes a permanent failure.
    let mut doubler = |_kind: usize, input: &[u8], out: &mut [u8]| {
        let n = input.len() * 2;
        out.get_mut(..n)
            .ok_or(TaskError::permanent("room"))?
            .fill(b'y');
        Ok(n)
    };
    let mut scratch = vec![0u8; 4096];
    let n = w
        .run(&tasks[0], &mut doubler, &mut scratch, &mut tx)
        .unwrap();
    let frames = split_frames(&tx[..n]);
    assert_eq!(
        messages(&frames),
        [Message::Fail {
            lease: LeaseId(1),
            retry: Retry::Permanent,
            error: "task output exceeds the frame limit"
        }]
    );
    // A handler claiming more output than its buffer is a failure too.
    let mut liar = |_kind: usize, _input: &[u8], _out: &mut [u8]| Ok(1_000_000);
    let n = w
        .run(&tasks[1], &mut liar, &mut scratch[..16], &mut tx)
        .unwrap();
    let frames = split_frames(&tx[..n]);
    assert!(matches!(
        messages(&frames)[..],
        [Message::Fail {
            retry: Retry::Permanent,
            ..
        }]
    ));
    assert_eq!(w.held(), 0);
}

#[test]
fn long_error_texts_are_cut_to_fit() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    handshake(&mut w, ms(0));
    let g = grant(&[(1, 0, b"")]);
    let Some(Event::Granted(grants)) = w.handle_frame(ms(1), &g).unwrap() else {
        panic!()
    };
    let ticket = grants.iter().next().unwrap().ticket();
    let text = "é".repeat(100); // two bytes per character
    let mut small = [0u8; 40];
    assert!(matches!(
        w.fail(ticket, Retry::Retryable, &text, &mut [0u8; 10]),
        Err(CompleteError::BufferTooSmall { .. })
    ));
    let n = w.fail(ticket, Retry::Retryable, &text, &mut small).unwrap();
    let frames = split_frames(&small[..n]);
    let [Message::Fail { error, .. }] = messages(&frames)[..] else {
        panic!()
    };
    assert!(!error.is_empty() && error.len() < text.len());
    assert!(text.starts_with(error));
}

#[test]
fn transmit_needs_room_for_one_frame() {
    let mut w: Worker<'_, 4> = Worker::new(config()).unwrap();
    w.poll(ms(0));
    w.connected(ms(0), CLIENT_NONCE);
    let mut tiny = [0u8; 8];
    assert_eq!(
        w.poll_transmit(ms(0), &mut tiny),
        Err(TransmitError::BufferTooSmall { len: 8 })
    );
    // Nothing was lost.
    let frames = transmit(&mut w, ms(0));
    assert!(matches!(messages(&frames)[..], [Message::ClientHello(_)]));
}

#[test]
fn config_is_checked() {
    let too_many: Result<Worker<'_, 2>, _> = Worker::new(config().with_slots(3));
    assert_eq!(
        too_many.unwrap_err(),
        ConfigError::Slots {
            slots: 3,
            capacity: 2
        }
    );
    let none: Result<Worker<'_, 2>, _> = Worker::new(config().with_slots(0));
    assert!(matches!(none, Err(ConfigError::Slots { .. })));
    let silent: Result<Worker<'_, 4>, _> = Worker::new(config().with_heartbeat(Duration::ZERO));
    assert_eq!(silent.unwrap_err(), ConfigError::Heartbeat);
    let small: Result<Worker<'_, 4>, _> = Worker::new(config().with_max_frame(100));
    assert_eq!(small.unwrap_err(), ConfigError::MaxFrame { max_frame: 100 });
    let long_name = "n".repeat(2_000);
    let big: Result<Worker<'_, 4>, _> = Worker::new(Config::new(&long_name, SECRET, KINDS));
    assert!(matches!(
        big,
        Err(ConfigError::JoinTooLarge { max: 1024, .. })
    ));
}

/// The smallest worker a microcontroller would build: one slot, a handler, buffers on the stack,
/// a receive buffer only as large as the handshake limit requires.
#[test]
fn small_capacity_worker_runs_a_session() {
    const RX: usize = HEADER_LEN + HANDSHAKE_MAX_FRAME as usize;
    let config = Config::new("mcu", SECRET, &["square"])
        .with_platform(Platform::Mcu)
        .with_max_frame(HANDSHAKE_MAX_FRAME);
    let mut w: Worker<'_, 1> = Worker::new(config).unwrap();
    assert_eq!(handshake(&mut w, ms(0)), 1);
    let mut scratch = [0u8; 16];
    let mut tx = [0u8; 64];
    for i in 0..5u32 {
        let now = ms(u64::from(i) * 10);
        let g = grant(&[(u64::from(i), 0, &i.to_le_bytes())]);
        assert!(g.len() <= RX);
        let Some(Event::Granted(grants)) = w.handle_frame(now, &g).unwrap() else {
            panic!()
        };
        for task in &grants {
            let n = w.run(&task, &mut Square, &mut scratch, &mut tx).unwrap();
            let frames = split_frames(&tx[..n]);
            let square = (i * i).to_le_bytes();
            assert_eq!(
                messages(&frames),
                [Message::Complete {
                    lease: LeaseId(u64::from(i)),
                    output: &square
                }]
            );
        }
        assert_eq!(
            messages(&transmit(&mut w, now)),
            [Message::Credit { count: 1 }]
        );
    }
    // One slot means one lease at a time.
    w.handle_frame(ms(100), &grant(&[(9, 0, b"")])).unwrap();
    assert!(w.handle_frame(ms(100), &grant(&[(10, 0, b"")])).is_err());
    assert!(
        core::mem::size_of::<Worker<'_, 1>>() < 256,
        "{}",
        core::mem::size_of::<Worker<'_, 1>>()
    );
    let _ = Batch::<&str>::empty();
}
