//! A thread-mode embassy executor that sleeps with `WFI`.
//!
//! embassy-executor's own Cortex-M executor sleeps with `WFE`, which QEMU implements as a yield:
//! the emulated core spins and burns a host CPU while idle. `WFI` halts it until an interrupt,
//! so several emulated boards share a small machine.
//!
//! Invariant: a wake-up (from an interrupt or a task) between the executor's poll and its sleep
//! is never lost: the flag is checked with interrupts masked, and `WFI` still wakes on an
//! interrupt that is pending while they are masked.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

use embassy_executor::{Spawner, raw};

static WOKEN: AtomicBool = AtomicBool::new(true);
static STARTED: AtomicBool = AtomicBool::new(false);
static EXECUTOR: Slot = Slot(UnsafeCell::new(MaybeUninit::uninit()));

/// Where the executor lives.
struct Slot(UnsafeCell<MaybeUninit<raw::Executor>>);

// SAFETY: written once, by the single caller `STARTED` lets through, then only read.
unsafe impl Sync for Slot {}

#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    WOKEN.store(true, Ordering::Release);
}

/// Runs the executor forever; `init` spawns the first tasks.
///
/// # Panics
/// If called twice.
pub fn run(init: impl FnOnce(Spawner)) -> ! {
    let first = critical_section::with(|_| {
        let first = !STARTED.load(Ordering::Relaxed);
        STARTED.store(true, Ordering::Relaxed);
        first
    });
    assert!(first, "the executor runs once");
    // SAFETY: the guard above lets exactly one caller reach this point, and this function never
    // returns, so the executor is written once and borrowed for the rest of the program.
    let executor: &'static raw::Executor =
        unsafe { (*EXECUTOR.0.get()).write(raw::Executor::new(core::ptr::null_mut())) };
    init(executor.spawner());
    loop {
        WOKEN.store(false, Ordering::Release);
        // SAFETY: only this loop polls the executor, always from thread mode.
        unsafe { executor.poll() };
        cortex_m::interrupt::free(|_| {
            if !WOKEN.load(Ordering::Acquire) {
                cortex_m::asm::wfi();
            }
        });
    }
}
