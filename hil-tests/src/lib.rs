//! Hardware-in-the-loop tests without hardware: Colony's worker firmware for QEMU's mps2-an385
//! board, built from `examples/firmware/qemu-mps2`, booted in `qemu-system-arm` and run against
//! the real server of `colony-tokio`.
//!
//! - [`firmware`] builds the firmware once per test run, for thumbv7m and thumbv6m, in the
//!   firmware projects' own target directory (`target/firmware`), so a CI step that
//!   built it already leaves nothing to do.
//! - [`board`] boots one emulated board, pauses or kills it, reads its exit code and its
//!   one-line report, and decodes its defmt log.
//!
//! The verdict is what the firmware says through semihosting (its exit code and report) and
//! what the server says (progress, outputs, the checkpoint log). QEMU is required: a machine
//! without `qemu-system-arm` fails the tests, saying how to install it.
//!
//! Networking is QEMU's user-mode stack (slirp): each board is alone on its own 10.0.2.0/24,
//! where 10.0.2.2 is the host's loopback. It needs no privileges, so the server listens on
//! `127.0.0.1` at a port the OS picks, and the port reaches the firmware on QEMU's command line
//! (`-append "server=10.0.2.2:PORT name=NAME"`), read through semihosting: one build serves
//! every run.

pub mod board;
pub mod firmware;

use std::time::Duration;

/// Every wait on the emulated boards or the server is bounded by this.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Awaits `f`, panicking with `what` if it takes longer than `limit`.
///
/// # Panics
/// When the time runs out.
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {} s: {what}", limit.as_secs()),
    }
}
