//! Frame encode and decode, per message: a lease grant batch of 1 and of 32, a completion with 8
//! bytes of output, and a heartbeat.
//!
//! `cargo bench -p colony-core --bench proto`. Encoding appends to a reused vector, as the server
//! does, and for grants includes encoding the leases into their batch; decoding checks the frame,
//! decodes the message and walks every batch item, as a worker does.

use std::hint::black_box;
use std::time::Duration;

use colony_core::proto::{
    BatchBuf, Decoded, FrameDecoder, LeaseGrant, Message, decode_message, encode_frame_into,
};
use colony_core::{Attempt, JobId, LeaseId, TaskId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A lease for task `i` of a large job, with a 16-byte input.
fn grant(i: u32, input: &[u8]) -> LeaseGrant<'_> {
    LeaseGrant {
        lease: LeaseId(1_000_000 + u64::from(i)),
        job: JobId(1),
        task: TaskId(500_000 + i),
        attempt: Attempt(0),
        kind: 0,
        input,
    }
}

/// Builds a grant batch of `count` leases and encodes it as one frame, as the server does.
fn encode_grants(count: u32, input: &[u8], batch: &mut BatchBuf, out: &mut Vec<u8>) -> usize {
    batch.clear();
    for i in 0..count {
        batch.push(&grant(i, input)).unwrap();
    }
    encode_frame_into(&Message::Grant(batch.as_batch()), out).unwrap()
}

/// Decodes one frame and touches everything a receiver would.
fn decode_all(decoder: &FrameDecoder, frame: &[u8]) -> usize {
    let Ok(Decoded::Frame(frame)) = decoder.decode(frame) else {
        panic!("bad frame")
    };
    match decode_message(frame.payload()).unwrap() {
        Message::Grant(batch) => batch.iter().map(|g| g.unwrap().input.len()).sum(),
        Message::Complete { output, .. } => output.len(),
        message => message.name().len(),
    }
}

/// Benchmarks `encode` (which appends one frame to the vector it is given) and the decoding of
/// the frame it produces.
fn bench_message(c: &mut Criterion, name: &str, mut encode: impl FnMut(&mut Vec<u8>) -> usize) {
    let mut frame = Vec::new();
    encode(&mut frame);
    let decoder = FrameDecoder::new(1 << 20);

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    let mut out = Vec::with_capacity(4096);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encode(&mut out)
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode_all(&decoder, black_box(&frame)))
    });
    group.finish();
}

fn proto(c: &mut Criterion) {
    let input = [0x5Au8; 16];
    let mut batch = BatchBuf::new();
    for count in [1, 32] {
        bench_message(c, &format!("grant_{count}"), |out| {
            encode_grants(count, black_box(&input), &mut batch, out)
        });
    }
    let output = 0x0123_4567_89AB_CDEFu64.to_le_bytes();
    let complete = Message::Complete {
        lease: LeaseId(1_000_017),
        output: &output,
    };
    bench_message(c, "complete_8", |out| {
        encode_frame_into(black_box(&complete), out).unwrap()
    });
    bench_message(c, "heartbeat", |out| {
        encode_frame_into(black_box(&Message::Heartbeat), out).unwrap()
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = proto
}
criterion_main!(benches);
