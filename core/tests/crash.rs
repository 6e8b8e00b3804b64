//! Crash consistency of the checkpoint log: recovery at every cut point, random corruption of the
//! tail, crashes of a storage that keeps written and durable bytes apart, and writing on after
//! recovery.

use colony_core::id::{Attempt, JobId, Lsn, TaskId};
use colony_core::log::{
    Crash, CrashStorage, FILE_HEADER, FILE_HEADER_LEN, LogWriter, MemStorage, Record, Replayed,
    StopReason, Storage, parse_frame, repair, replay, replay_alloc,
};
use proptest::prelude::*;

/// A varied log body: every record kind, empty and large payloads.
fn records(big: &[u8]) -> Vec<Record<'_>> {
    let mut v = vec![Record::JobHeader {
        job: JobId(1),
        fingerprint: [0x5A; 32],
        name: "render",
        kind: "frame.render",
        tasks: 40,
        edges: 2,
        max_attempts: 3,
        open: true,
    }];
    for t in 0..12u32 {
        v.push(Record::TaskDone {
            job: JobId(1),
            task: TaskId(t),
            attempt: Attempt(t as u16 % 3),
            output: &big[..(t as usize * 7) % 40],
        });
    }
    v.push(Record::TaskAdded {
        job: JobId(1),
        task: TaskId(40),
        input: b"late input",
    });
    v.push(Record::TaskFailed {
        job: JobId(1),
        task: TaskId(12),
        attempts: 3,
        error: "boom",
    });
    v.push(Record::TaskDone {
        job: JobId(1),
        task: TaskId(13),
        attempt: Attempt(0),
        output: big,
    });
    v.push(Record::TaskDone {
        job: JobId(1),
        task: TaskId(14),
        attempt: Attempt(1),
        output: &[],
    });
    v.push(Record::JobFinished { job: JobId(1) });
    v
}

fn big() -> Vec<u8> {
    (0..1500u32).map(|i| (i * 31 + 7) as u8).collect()
}

/// The encoded frame of each record.
fn frames(recs: &[Record<'_>]) -> Vec<Vec<u8>> {
    recs.iter()
        .map(|r| {
            let mut v = Vec::new();
            r.append_to(&mut v).unwrap();
            v
        })
        .collect()
}

/// The log file holding `frames` after the header.
fn file_of(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut f = FILE_HEADER.to_vec();
    frames.iter().for_each(|fr| f.extend_from_slice(fr));
    f
}

/// Replays `storage`, returning each record's LSN and frame bytes, and the outcome.
fn replay_frames<S: Storage>(storage: &mut S) -> (Vec<(Lsn, Vec<u8>)>, Replayed)
where
    S::Error: core::fmt::Debug,
{
    let mut got = Vec::new();
    let r = replay_alloc(storage, |lsn, rec| {
        let mut v = Vec::new();
        rec.append_to(&mut v).unwrap();
        got.push((lsn, v));
    })
    .unwrap();
    (got, r)
}

/// Checks that `got` is a prefix of `want` with consecutive LSNs from 1, that `r` says so, and
/// that `valid_len` sits exactly after the last record.
fn assert_prefix(got: &[(Lsn, Vec<u8>)], want: &[Vec<u8>], r: &Replayed) {
    assert!(got.len() <= want.len());
    let mut end = FILE_HEADER_LEN as u64;
    for (i, (lsn, frame)) in got.iter().enumerate() {
        assert_eq!(*lsn, Lsn(i as u64 + 1));
        assert_eq!(frame, &want[i], "record {} differs", i + 1);
        end += frame.len() as u64;
    }
    assert_eq!(r.records(), got.len() as u64);
    assert_eq!(r.last_lsn(), Lsn(got.len() as u64));
    if r.has_header() {
        assert_eq!(r.valid_len(), end);
    } else {
        assert!(got.is_empty());
        assert_eq!(r.valid_len(), 0);
    }
}

#[test]
fn recovery_at_every_cut_point() {
    let big = big();
    let recs = records(&big);
    let frames = frames(&recs);
    let file = file_of(&frames);
    // Record boundaries: the file offsets where a record ends.
    let mut boundaries = vec![FILE_HEADER_LEN];
    for fr in &frames {
        boundaries.push(boundaries.last().unwrap() + fr.len());
    }
    let mut buf = vec![0u8; 2048];
    for cut in 0..=file.len() {
        let mut s = MemStorage::from_bytes(file[..cut].to_vec());
        let (got, r) = replay_frames(&mut s);
        let whole = boundaries
            .iter()
            .filter(|&&b| b <= cut)
            .count()
            .saturating_sub(1);
        assert_eq!(got.len(), whole, "cut {cut}");
        assert_prefix(&got, &frames, &r);
        let at_boundary = cut == 0 || boundaries.contains(&cut);
        let want_stop = if at_boundary {
            StopReason::End
        } else {
            StopReason::Torn
        };
        assert_eq!(r.stop(), want_stop, "cut {cut}");
        assert_eq!(r.file_len(), cut as u64);
        if cut >= FILE_HEADER_LEN {
            assert!(boundaries.contains(&(r.valid_len() as usize)), "cut {cut}");
        }

        // The caller-buffer variant agrees.
        let mut n = 0;
        let r2 = replay(&mut s, &mut buf, |lsn, rec| {
            n += 1;
            assert_eq!(lsn, Lsn(n));
            assert_eq!(parse_frame(&frames[n as usize - 1]).unwrap().0, rec);
        })
        .unwrap();
        assert_eq!(r2, r);

        // Repair, then write on: the log holds the old prefix and the new record.
        repair(&mut s, &r).unwrap();
        let expect_len = if cut < FILE_HEADER_LEN {
            FILE_HEADER_LEN
        } else {
            r.valid_len() as usize
        };
        assert_eq!(s.as_bytes(), &file[..expect_len], "cut {cut}");
        let mut w = LogWriter::new(r.last_lsn());
        let lsn = w.append(&Record::JobFinished { job: JobId(9) }).unwrap();
        assert_eq!(lsn, Lsn(whole as u64 + 1));
        w.flush(&mut s).unwrap();
        let (got, r) = replay_frames(&mut s);
        assert_eq!(got.len(), whole + 1);
        assert_eq!(r.stop(), StopReason::End);
        assert!(!r.needs_repair());
    }
}

/// One way of damaging the end of a log.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR these masks into bytes at these distances from the end.
    Flip(Vec<(usize, u8)>),
    /// Overwrite everything from this distance from the end with bytes from the seed.
    Garbage { from_end: usize, seed: u64 },
    /// Cut the file this far from the end and append this many bytes of garbage.
    CutAndGarbage { cut: usize, len: usize, seed: u64 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec((0usize..2500, 1u8..=255), 1..6).prop_map(Damage::Flip),
        (1usize..2500, any::<u64>())
            .prop_map(|(from_end, seed)| Damage::Garbage { from_end, seed }),
        (0usize..2500, 0usize..200, any::<u64>())
            .prop_map(|(cut, len, seed)| Damage::CutAndGarbage { cut, len, seed }),
    ]
}

fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// Applies `d`; returns the damaged file and the offset of the first byte that may differ.
fn apply(file: &[u8], d: &Damage) -> (Vec<u8>, usize) {
    let mut f = file.to_vec();
    let n = f.len();
    match d {
        Damage::Flip(flips) => {
            let mut first = n;
            for &(back, mask) in flips {
                let at = n - 1 - back.min(n - FILE_HEADER_LEN - 1);
                f[at] ^= mask;
                first = first.min(at);
            }
            (f, first)
        }
        Damage::Garbage { from_end, seed } => {
            let at = n - (*from_end).min(n - FILE_HEADER_LEN);
            let g = garbage(*seed, n - at);
            f[at..].copy_from_slice(&g);
            (f, at)
        }
        Damage::CutAndGarbage { cut, len, seed } => {
            let at = n - (*cut).min(n - FILE_HEADER_LEN);
            f.truncate(at);
            f.extend_from_slice(&garbage(*seed, *len));
            (f, at)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Damage to the tail never yields a record that was not written, never panics, and loses
    /// nothing before the first damaged byte.
    #[test]
    fn tail_corruption_never_yields_a_bad_record(d in damage()) {
        let big = big();
        let frames = frames(&records(&big));
        let file = file_of(&frames);
        let (damaged, first_bad) = apply(&file, &d);
        let mut s = MemStorage::from_bytes(damaged.clone());
        let (got, r) = replay_frames(&mut s);
        assert_prefix(&got, &frames, &r);
        // Every record that ends before the first damaged byte survives.
        let mut end = FILE_HEADER_LEN;
        let intact = frames.iter().take_while(|fr| { end += fr.len(); end <= first_bad }).count();
        prop_assert!(got.len() >= intact, "{} < {}", got.len(), intact);
        prop_assert!(r.valid_len() <= damaged.len() as u64);
        // Repaired, the log replays cleanly to the same records.
        repair(&mut s, &r).unwrap();
        let (again, r2) = replay_frames(&mut s);
        prop_assert_eq!(again, got);
        prop_assert_eq!(r2.stop(), StopReason::End);
        prop_assert_eq!(r2.valid_len(), r.valid_len());
    }

    /// Arbitrary bytes after a valid header never panic replay, and what it accepts is stable.
    #[test]
    fn arbitrary_bodies_are_handled(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut file = FILE_HEADER.to_vec();
        file.extend_from_slice(&body);
        let mut s = MemStorage::from_bytes(file.clone());
        let (got, r) = replay_frames(&mut s);
        prop_assert!(r.valid_len() <= file.len() as u64);
        let mut prefix = MemStorage::from_bytes(file[..r.valid_len() as usize].to_vec());
        let (again, r2) = replay_frames(&mut prefix);
        prop_assert_eq!(again, got);
        prop_assert_eq!(r2.stop(), StopReason::End);
    }
}

/// Opens a log the way a server does: replay, repair, start a writer after the last record.
fn open(s: &mut CrashStorage) -> (Vec<(Lsn, Vec<u8>)>, LogWriter) {
    let (got, r) = replay_frames(s);
    repair(s, &r).unwrap();
    (got, LogWriter::new(r.last_lsn()))
}

#[test]
fn crash_after_sync_keeps_every_synced_record() {
    let big = big();
    let frames = frames(&records(&big));
    for seed in 0..500u64 {
        let mut s = CrashStorage::new();
        let (_, mut w) = open(&mut s);
        let synced = (seed as usize * 7) % frames.len();
        for fr in &frames[..synced] {
            w.append(&parse_frame(fr).unwrap().0).unwrap();
        }
        w.flush(&mut s).unwrap();
        // The rest reaches the storage but is never synced.
        for fr in &frames[synced..] {
            w.append(&parse_frame(fr).unwrap().0).unwrap();
        }
        let (batch, _) = w.take_pending(Vec::new());
        s.append(&batch).unwrap();
        let mode = s.crash_random(seed);
        let (got, _) = open(&mut s);
        assert!(
            got.len() >= synced,
            "seed {seed} {mode:?}: {} < {synced}",
            got.len()
        );
        for (i, (lsn, fr)) in got.iter().enumerate() {
            assert_eq!(
                (*lsn, fr),
                (Lsn(i as u64 + 1), &frames[i]),
                "seed {seed} {mode:?}"
            );
        }
        if mode == Crash::LoseUnsynced {
            assert_eq!(got.len(), synced);
        }
        if mode == Crash::KeepUnsynced(usize::MAX) {
            assert_eq!(got.len(), frames.len());
        }
    }
}

/// Many rounds of writing, flushing and crashing, checked against a model: after each crash the
/// log holds a prefix of what was appended that contains everything flushed; after recovery,
/// writing goes on at the next LSN.
#[test]
fn replay_truncate_append_rounds() {
    let big = big();
    let pool = frames(&records(&big));
    for seed in 0..300u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut s = CrashStorage::new();
        let (_, mut w) = open(&mut s);
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut durable = 0usize;
        for _round in 0..12 {
            for _ in 0..next() % 6 {
                let fr = &pool[(next() % pool.len() as u64) as usize];
                let lsn = w.append(&parse_frame(fr).unwrap().0).unwrap();
                model.push(fr.clone());
                assert_eq!(lsn, Lsn(model.len() as u64));
            }
            match next() % 3 {
                0 => {
                    assert_eq!(w.flush(&mut s).unwrap(), Lsn(model.len() as u64));
                    durable = model.len();
                }
                1 => {
                    let (batch, _) = w.take_pending(Vec::new());
                    s.append(&batch).unwrap();
                    let mode = s.crash_random(next());
                    let (got, w2) = open(&mut s);
                    assert!(got.len() >= durable, "seed {seed} {mode:?}");
                    assert!(got.len() <= model.len(), "seed {seed} {mode:?}");
                    for (i, (_, fr)) in got.iter().enumerate() {
                        assert_eq!(fr, &model[i], "seed {seed} {mode:?} record {i}");
                    }
                    model.truncate(got.len());
                    durable = model.len();
                    w = w2;
                }
                _ => {}
            }
        }
        w.flush(&mut s).unwrap();
        s.crash(Crash::LoseUnsynced);
        let (got, _) = open(&mut s);
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, fr)| fr).collect();
        assert_eq!(got, model, "seed {seed}");
    }
}

#[test]
fn torn_header_at_creation_recovers_to_empty() {
    for keep in 0..FILE_HEADER_LEN {
        let mut s = CrashStorage::new();
        s.append(&FILE_HEADER).unwrap();
        s.crash(Crash::KeepUnsynced(keep));
        let (got, mut w) = open(&mut s);
        assert!(got.is_empty());
        assert_eq!(s.as_bytes(), &FILE_HEADER);
        w.append(&Record::JobFinished { job: JobId(3) }).unwrap();
        w.flush(&mut s).unwrap();
        s.crash(Crash::LoseUnsynced);
        let (got, _) = open(&mut s);
        assert_eq!(got.len(), 1);
    }
}
