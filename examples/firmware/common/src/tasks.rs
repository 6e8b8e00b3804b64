//! The task kinds the example boards run: pure functions from input bytes to output bytes.
//!
//! A host worker that shares a job with the boards must compute the same bytes: `crc32c` is
//! the CRC-32C (Castagnoli) of the input as 4 bytes little-endian, `reverse` the input's bytes
//! in reverse order.

use colony_core::worker::TaskError;
use colony_embassy::{TaskKind, kind_names};

/// The kind table, announced to the server in this order.
pub static KINDS: [TaskKind; 2] = [
    TaskKind::new("crc32c", crc32c),
    TaskKind::new("reverse", reverse),
];

/// The kinds' names, for the worker's configuration.
pub static NAMES: [&str; 2] = kind_names(&KINDS);

/// The CRC-32C (Castagnoli) of the input, as 4 bytes little-endian.
///
/// # Errors
/// If `output` is shorter than 4 bytes.
pub fn crc32c(input: &[u8], output: &mut [u8]) -> Result<usize, TaskError<'static>> {
    let out = output
        .get_mut(..4)
        .ok_or(TaskError::permanent("output buffer too small"))?;
    out.copy_from_slice(&colony_core::crc::crc32c(input).to_le_bytes());
    Ok(4)
}

/// The input's bytes in reverse order.
///
/// # Errors
/// If `output` is shorter than the input.
pub fn reverse(input: &[u8], output: &mut [u8]) -> Result<usize, TaskError<'static>> {
    let out = output
        .get_mut(..input.len())
        .ok_or(TaskError::permanent("input longer than the output buffer"))?;
    for (o, i) in out.iter_mut().zip(input.iter().rev()) {
        *o = *i;
    }
    Ok(input.len())
}
