//! CRC-32C: however the input is cut into pieces, the running checksum equals the one-shot one.
//!
//! The first two bytes choose the cut points; the rest is the data.
#![no_main]

use colony_core::crc::{Crc32c, crc32c};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (cuts, data) = match input {
        [a, b, rest @ ..] => ([usize::from(*a), usize::from(*b)], rest),
        _ => ([0, 0], input),
    };
    let expected = crc32c(data);

    // One cut: two pieces.
    let first = cuts[0].min(data.len());
    let mut running = Crc32c::new();
    running.update(&data[..first]);
    running.update(&data[first..]);
    assert_eq!(running.finish(), expected);

    // Many pieces of a fixed stride, including empty updates in between.
    let stride = cuts[1] % 17 + 1;
    let mut running = Crc32c::new();
    for piece in data.chunks(stride) {
        running.update(piece);
        running.update(&[]);
    }
    assert_eq!(running.finish(), expected);
});
