//! Checkpoint-log replay: any bytes as a log file never panic recovery; the good prefix it reports
//! lies within the file, and replaying just that prefix yields the same records and ends cleanly.
//!
//! The first input byte picks a mode: bit 0 puts a valid file header in front, so the fuzzer
//! spends its time on frames rather than on the magic; bit 1 reads the rest as chunks (a length
//! byte, then that many body bytes) and frames each with a correct length and CRC-32C, so the
//! record decoders see bodies that pass the checksum.
#![no_main]

use colony_core::crc::crc32c;
use colony_core::id::Lsn;
use colony_core::log::{FILE_HEADER, MemStorage, StopReason, replay, replay_alloc};
use libfuzzer_sys::fuzz_target;

/// Replays `bytes`, returning each record's LSN and re-encoded frame, and the good prefix.
fn run(bytes: &[u8]) -> Option<(Vec<(Lsn, Vec<u8>)>, u64, StopReason)> {
    let mut storage = MemStorage::from_bytes(bytes.to_vec());
    let mut got = Vec::new();
    let r = replay_alloc(&mut storage, |lsn, rec| {
        let mut frame = Vec::new();
        rec.append_to(&mut frame)
            .expect("a replayed record re-encodes");
        got.push((lsn, frame));
    })
    .ok()?;
    Some((got, r.valid_len(), r.stop()))
}

fuzz_target!(|input: &[u8]| {
    let (with_header, body) = match input.split_first() {
        Some((flag, rest)) => (flag & 1 == 1, rest),
        None => (false, input),
    };
    let framed = input.first().is_some_and(|flag| flag & 2 == 2);
    let mut file = Vec::new();
    if with_header {
        file.extend_from_slice(&FILE_HEADER);
    }
    if framed {
        let mut rest = body;
        while let Some((&n, tail)) = rest.split_first() {
            let chunk = &tail[..usize::from(n).min(tail.len())];
            file.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            file.extend_from_slice(&crc32c(chunk).to_le_bytes());
            file.extend_from_slice(chunk);
            rest = &tail[chunk.len()..];
        }
    } else {
        file.extend_from_slice(body);
    }

    let Some((records, valid_len, _)) = run(&file) else {
        return; // a foreign header: an error, never a truncation
    };
    assert!(valid_len <= file.len() as u64);
    for (i, (lsn, _)) in records.iter().enumerate() {
        assert_eq!(*lsn, Lsn(i as u64 + 1));
    }

    // A replayed record's frame is exactly the bytes in the file.
    let mut at = FILE_HEADER.len();
    for (_, frame) in &records {
        assert_eq!(&file[at..at + frame.len()], &frame[..]);
        at += frame.len();
    }
    if !records.is_empty() {
        assert_eq!(at as u64, valid_len);
    }

    // The good prefix replays to the same records and ends cleanly.
    let prefix = &file[..valid_len as usize];
    let (again, again_len, stop) = run(prefix).expect("the good prefix has a good header");
    assert_eq!(again, records);
    assert_eq!(again_len, valid_len);
    assert_eq!(stop, StopReason::End);

    // A small caller-owned buffer agrees wherever the records fit in it.
    let mut storage = MemStorage::from_bytes(file.clone());
    let mut buf = [0u8; 64];
    let mut n = 0usize;
    if let Ok(r) = replay(&mut storage, &mut buf, |lsn, _| {
        assert_eq!(lsn, records[n].0);
        n += 1;
    }) {
        assert_eq!(n, records.len());
        assert_eq!(r.valid_len(), valid_len);
    }
});
