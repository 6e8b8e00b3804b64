//! Arbitrary bytes into the frame decoder and the message decoder: no panic, ever, and every
//! message that decodes re-encodes to bytes that decode to the same message.
//!
//! The input is tried three ways: as a byte stream of frames (under several limits), as a bare
//! payload (the CRC would otherwise hide almost every payload from the fuzzer), and, when it
//! decodes, wrapped in a valid frame.
#![no_main]

use colony_core::proto::{
    Decoded, FrameDecoder, HANDSHAKE_MAX_FRAME, HEADER_LEN, Message, Role, decode_message,
    encode_frame, encode_frame_into, encoded_len,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [0, 16, HANDSHAKE_MAX_FRAME, u32::MAX] {
        walk_stream(FrameDecoder::new(max), data);
    }
    check_payload(data);
});

/// Takes frames off the front of `data` until it runs out or a frame is refused.
fn walk_stream(decoder: FrameDecoder, mut data: &[u8]) {
    loop {
        match decoder.decode(data) {
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed >= 1);
                if data.len() >= HEADER_LEN {
                    // Once the header is in, the need is exact and within the limit.
                    let total = data.len() + needed;
                    assert!(total - HEADER_LEN <= decoder.max_frame() as usize);
                }
                return;
            }
            Ok(Decoded::Frame(frame)) => {
                assert!(frame.frame_len() <= data.len());
                assert!(frame.payload().len() <= decoder.max_frame() as usize);
                assert_eq!(&data[frame.payload_range()], frame.payload());
                check_payload(frame.payload());
                data = &data[frame.frame_len()..];
            }
            Err(_) => return,
        }
    }
}

/// Decodes `payload` as a message; if it decodes, walks its batches and checks the round trip.
fn check_payload(payload: &[u8]) {
    let Ok(message) = decode_message(payload) else {
        return;
    };
    walk_batches(&message);

    let mut frame = Vec::new();
    let n = encode_frame_into(&message, &mut frame).expect("a decoded message re-encodes");
    assert_eq!(n, frame.len());
    assert_eq!(encoded_len(&message).unwrap(), n - HEADER_LEN);
    let Ok(Decoded::Frame(again)) = FrameDecoder::new(u32::MAX).decode(&frame) else {
        panic!("own frame refused");
    };
    assert_eq!(again.frame_len(), n);
    let decoded = decode_message(again.payload()).expect("own payload decodes");
    assert_eq!(decoded, message);

    // Re-encoding is canonical: the second encoding is byte for byte the first.
    let mut second = vec![0u8; n];
    assert_eq!(encode_frame(&decoded, &mut second), Ok(n));
    assert_eq!(second, frame);
}

/// Iterates a batch to its end: at most `count` items, then at most one error, and never more
/// steps than it has bytes (plus the error).
macro_rules! walk {
    ($batch:expr) => {{
        let batch = $batch;
        let mut items = 0u64;
        let mut errors = 0u64;
        for item in batch.iter() {
            match item {
                Ok(_) => items += 1,
                Err(_) => errors += 1,
            }
        }
        assert!(items <= u64::from(batch.len()));
        assert!(errors <= 1);
        assert!(items + errors <= batch.as_bytes().len() as u64 + 1);
    }};
}

/// Iterates every batch in `message`.
fn walk_batches(message: &Message<'_>) {
    match message {
        Message::Grant(batch) => walk!(batch),
        Message::Join(join) => {
            if let Role::Worker(hello) = &join.role {
                walk!(&hello.kinds);
            }
        }
        Message::AddTasks { inputs, .. } => walk!(inputs),
        Message::AddEdges { edges, .. } => walk!(edges),
        Message::Status(batch) => walk!(batch),
        _ => {}
    }
}
