//! Golden bytes: the exact encoding of every message variant, as `docs/wire-format.md` specifies.
//!
//! Any change to these bytes is a wire-format change. A failure here means either a bug, or a
//! deliberate change that must bump `PROTOCOL_VERSION` (unless it only appends a new variant) and
//! update the document.

use colony_core::proto::{
    Batch, ClientHello, ClientInfo, Decoded, Edge, ErrorCode, FrameDecoder, HEADER_LEN, JobOutcome,
    JobSpec, JobStatus, Join, LeaseGrant, Message, PROTOCOL_VERSION, Platform, Retry, Role,
    ServerHello, Welcome, WorkerHello, client_proof, decode_message, encode_frame,
    encode_frame_into, server_proof,
};
use colony_core::{Attempt, JobId, LeaseId, TaskId, WorkerId};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

/// Pre-encoded batch contents (so the test states them as bytes too).
const KINDS: &[u8] = b"\x03sum\x02sq";
const GRANT: &[u8] = &[0xe8, 0x07, 0x01, 0x02, 0x00, 0x00, 0x02, 0xab, 0xcd];
const INPUTS: &[u8] = &[0x01, b'a', 0x00];
const EDGES: &[u8] = &[0x00, 0x01, 0x01, 0x02];
const STATUS: &[u8] = &[0x03, 0x02, b's', b'q', 0x03, 0x01, 0x00, 0x02, 0x00];

fn nonce(start: u8) -> [u8; 16] {
    core::array::from_fn(|i| start + i as u8)
}

fn proof(start: u8) -> [u8; 32] {
    core::array::from_fn(|i| start.wrapping_add(i as u8))
}

/// One sample of every variant, in variant order, with the payload it must encode to.
fn cases() -> Vec<(Message<'static>, &'static str)> {
    vec![
        (
            Message::ClientHello(ClientHello {
                version: 1,
                nonce: nonce(0x00),
                max_frame: 4096,
            }),
            "00 01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 80 20",
        ),
        (
            Message::ServerHello(ServerHello {
                version: 1,
                nonce: nonce(0x10),
                max_frame: 1024,
                proof: proof(0xa0),
            }),
            "01 01 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 80 08 \
             a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af \
             b0 b1 b2 b3 b4 b5 b6 b7 b8 b9 ba bb bc bd be bf",
        ),
        (
            Message::Join(Join {
                proof: proof(0x20),
                role: Role::Worker(WorkerHello {
                    name: "pico",
                    platform: Platform::Mcu,
                    kinds: Batch::from_encoded(2, KINDS),
                    slots: 2,
                }),
            }),
            "02 20 21 22 23 24 25 26 27 28 29 2a 2b 2c 2d 2e 2f \
             30 31 32 33 34 35 36 37 38 39 3a 3b 3c 3d 3e 3f \
             00 04 70 69 63 6f 03 02 07 03 73 75 6d 02 73 71 02",
        ),
        (
            Message::Welcome(Welcome {
                worker: WorkerId(5),
                lease_ms: 30_000,
                heartbeat_ms: 5_000,
            }),
            "03 05 b0 ea 01 88 27",
        ),
        (Message::Credit { count: 32 }, "04 20"),
        (
            Message::Grant(Batch::from_encoded(1, GRANT)),
            "05 01 09 e8 07 01 02 00 00 02 ab cd",
        ),
        (Message::Heartbeat, "06"),
        (
            Message::Complete {
                lease: LeaseId(1000),
                output: &[1, 2, 3, 4, 5, 6, 7, 8],
            },
            "07 e8 07 08 01 02 03 04 05 06 07 08",
        ),
        (
            Message::Fail {
                lease: LeaseId(7),
                retry: Retry::Permanent,
                error: "bad",
            },
            "08 07 01 03 62 61 64",
        ),
        (
            Message::Ack {
                lease: LeaseId(300),
            },
            "09 ac 02",
        ),
        (Message::Revoke { lease: LeaseId(1) }, "0a 01"),
        (Message::Goodbye, "0b"),
        (
            Message::JobFinished {
                job: JobId(3),
                outcome: JobOutcome::Finished,
            },
            "0c 03 00",
        ),
        (Message::ServerGoingAway, "0d"),
        (
            Message::Error {
                code: ErrorCode::AuthFailed,
                detail: "no",
            },
            "0e 01 02 6e 6f",
        ),
        (
            Message::CreateJob(JobSpec {
                name: "sq",
                kind: "square",
                tasks: 3,
                edges: 2,
                max_attempts: 3,
                open: false,
            }),
            "0f 02 73 71 06 73 71 75 61 72 65 03 02 03 00",
        ),
        (
            Message::AddTasks {
                job: JobId(3),
                inputs: Batch::from_encoded(2, INPUTS),
            },
            "10 03 02 03 01 61 00",
        ),
        (
            Message::AddEdges {
                job: JobId(3),
                edges: Batch::from_encoded(2, EDGES),
            },
            "11 03 02 04 00 01 01 02",
        ),
        (Message::SealJob { job: JobId(3) }, "12 03"),
        (
            Message::JobAccepted {
                job: JobId(3),
                already_done: 0,
            },
            "13 03 00",
        ),
        (
            Message::Submit {
                job: JobId(3),
                input: &[1, 2, 3],
            },
            "14 03 03 01 02 03",
        ),
        (
            Message::Submitted {
                job: JobId(3),
                task: TaskId(200),
            },
            "15 03 c8 01",
        ),
        (
            Message::TaskDone {
                job: JobId(3),
                task: TaskId(1),
                output: b"ok",
            },
            "16 03 01 02 6f 6b",
        ),
        (
            Message::TaskFailed {
                job: JobId(3),
                task: TaskId(2),
                attempts: 3,
                error: "boom",
            },
            "17 03 02 03 04 62 6f 6f 6d",
        ),
        (
            Message::StatusQuery {
                job: Some(JobId(3)),
            },
            "18 01 03",
        ),
        (
            Message::Status(Batch::from_encoded(1, STATUS)),
            "19 01 09 03 02 73 71 03 01 00 02 00",
        ),
        (
            Message::Call {
                call: 7,
                name: "save",
                args: &[1, 2],
            },
            "1a 07 04 73 61 76 65 02 01 02",
        ),
        (
            Message::CallReturn {
                call: 7,
                result: b"ok",
            },
            "1b 07 02 6f 6b",
        ),
        (
            Message::CallError {
                call: 7,
                error: "no",
            },
            "1c 07 02 6e 6f",
        ),
    ]
}

#[test]
fn every_variant_is_pinned_in_order() {
    let cases = cases();
    let mut failures = Vec::new();
    for (index, (message, expected)) in cases.iter().enumerate() {
        let payload = &payload_of(message);
        if hex(payload) != hex(&unhex(expected)) {
            failures.push(format!(
                "{}: expected {expected}\n    actual   {}",
                message.name(),
                hex(payload)
            ));
        }
        assert_eq!(
            usize::from(payload[0]),
            index,
            "{} is out of order",
            message.name()
        );
        assert_eq!(
            &decode_message(&unhex(expected)).unwrap(),
            message,
            "{}",
            message.name()
        );
    }
    assert!(
        failures.is_empty(),
        "wire format changed:\n{}",
        failures.join("\n")
    );
    // One case per variant: the next index is not a message this version knows.
    assert!(decode_message(&[cases.len() as u8]).is_err());
}

#[test]
fn other_shapes_are_pinned() {
    let other: Vec<(Message<'static>, &str)> = vec![
        (Message::StatusQuery { job: None }, "18 00"),
        (
            Message::Join(Join {
                proof: [0; 32],
                role: Role::Observer,
            }),
            "02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 02",
        ),
        (
            Message::Join(Join {
                proof: [0; 32],
                role: Role::Client(ClientInfo { name: "c" }),
            }),
            "02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 01 63",
        ),
        (Message::Credit { count: u32::MAX }, "04 ff ff ff ff 0f"),
        (
            Message::Ack {
                lease: LeaseId(u64::MAX),
            },
            "09 ff ff ff ff ff ff ff ff ff 01",
        ),
        (
            Message::Fail {
                lease: LeaseId(0),
                retry: Retry::Retryable,
                error: "",
            },
            "08 00 00 00",
        ),
    ];
    for (message, expected) in other {
        assert_eq!(
            hex(&payload_of(&message)),
            hex(&unhex(expected)),
            "{message:?}"
        );
    }
}

#[test]
fn enum_indices_are_pinned() {
    let platforms = [
        Platform::Linux,
        Platform::MacOs,
        Platform::Windows,
        Platform::Mcu,
        Platform::Browser,
        Platform::Ios,
        Platform::Other,
    ];
    for (index, platform) in platforms.into_iter().enumerate() {
        let role = Role::Worker(WorkerHello {
            name: "",
            platform,
            kinds: Batch::empty(),
            slots: 0,
        });
        let payload = payload_of(&Message::Join(Join {
            proof: [0; 32],
            role,
        }));
        // variant, proof, role variant, name length, then the platform.
        assert_eq!(payload[35], index as u8, "{platform:?}");
    }
    let codes = [
        ErrorCode::VersionMismatch,
        ErrorCode::AuthFailed,
        ErrorCode::BadMessage,
        ErrorCode::FrameTooLarge,
        ErrorCode::LimitExceeded,
        ErrorCode::Timeout,
        ErrorCode::FingerprintMismatch,
        ErrorCode::UnknownJob,
        ErrorCode::Cycle,
        ErrorCode::Other,
    ];
    for (index, code) in codes.into_iter().enumerate() {
        let payload = payload_of(&Message::Error { code, detail: "" });
        assert_eq!(payload, [14, index as u8, 0], "{code:?}");
    }
    for (index, retry) in [Retry::Retryable, Retry::Permanent].into_iter().enumerate() {
        let payload = payload_of(&Message::Fail {
            lease: LeaseId(0),
            retry,
            error: "",
        });
        assert_eq!(payload, [8, 0, index as u8, 0], "{retry:?}");
    }
    for (index, outcome) in [JobOutcome::Finished, JobOutcome::Cancelled]
        .into_iter()
        .enumerate()
    {
        let payload = payload_of(&Message::JobFinished {
            job: JobId(0),
            outcome,
        });
        assert_eq!(payload, [12, 0, index as u8], "{outcome:?}");
    }
}

fn payload_of(message: &Message<'_>) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame_into(message, &mut frame).unwrap();
    frame.split_off(HEADER_LEN)
}

#[test]
fn batch_items_are_pinned() {
    let grant = LeaseGrant {
        lease: LeaseId(1000),
        job: JobId(1),
        task: TaskId(2),
        attempt: Attempt(0),
        kind: 0,
        input: &[0xab, 0xcd],
    };
    let mut buf = [0u8; 64];
    assert_eq!(
        Batch::<LeaseGrant<'_>>::encode([grant], &mut buf)
            .unwrap()
            .as_bytes(),
        GRANT
    );
    assert_eq!(
        Batch::<&str>::encode(["sum", "sq"], &mut buf)
            .unwrap()
            .as_bytes(),
        KINDS
    );
    assert_eq!(
        Batch::<&[u8]>::encode([&b"a"[..], b""], &mut buf)
            .unwrap()
            .as_bytes(),
        INPUTS
    );
    let edges = [
        Edge {
            before: TaskId(0),
            after: TaskId(1),
        },
        Edge {
            before: TaskId(1),
            after: TaskId(2),
        },
    ];
    assert_eq!(
        Batch::<Edge>::encode(edges, &mut buf).unwrap().as_bytes(),
        EDGES
    );
    let status = JobStatus {
        job: JobId(3),
        name: "sq",
        total: 3,
        done: 1,
        failed: 0,
        running: 2,
        finished: false,
    };
    assert_eq!(
        Batch::<JobStatus<'_>>::encode([status], &mut buf)
            .unwrap()
            .as_bytes(),
        STATUS
    );
    // And they decode back.
    let decoded: Vec<_> = Batch::<LeaseGrant<'_>>::from_encoded(1, GRANT)
        .iter()
        .collect();
    assert_eq!(decoded, [Ok(grant)]);
}

#[test]
fn whole_frame_is_pinned() {
    // Heartbeat: length 1, CRC-32C of [0x06], payload 06.
    let mut buf = [0u8; 16];
    let n = encode_frame(&Message::Heartbeat, &mut buf).unwrap();
    assert_eq!(hex(&buf[..n]), "01 00 00 00 b9 b4 dc 74 06");
    // Credit { count: 32 }.
    let n = encode_frame(&Message::Credit { count: 32 }, &mut buf).unwrap();
    assert_eq!(hex(&buf[..n]), "02 00 00 00 d0 98 56 9f 04 20");
    let Decoded::Frame(frame) = FrameDecoder::handshake().decode(&buf[..n]).unwrap() else {
        panic!("incomplete")
    };
    assert_eq!(frame.message().unwrap(), Message::Credit { count: 32 });
}

#[test]
fn handshake_proofs_are_pinned() {
    let secret = b"colony test secret";
    let client = nonce(0x00);
    let server = nonce(0x10);
    assert_eq!(PROTOCOL_VERSION, 1);
    // HMAC-SHA256(secret, "colony/v1 server" || client nonce || server nonce)
    assert_eq!(
        hex(&server_proof(secret, &client, &server)),
        "29 43 52 b1 4d f3 31 a4 b5 8f 30 3b e2 14 d0 4f \
         50 ef 02 47 c4 de ad 4d 34 55 ce ba 98 a5 b6 e8"
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    // HMAC-SHA256(secret, "colony/v1 client" || server nonce || client nonce)
    assert_eq!(
        hex(&client_proof(secret, &client, &server)),
        "13 81 e1 15 35 78 dd b9 91 60 b5 7a f2 05 5c 66 \
         eb 45 58 fa 92 fc bb aa cd c1 8f 49 2a 68 20 29"
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
}
