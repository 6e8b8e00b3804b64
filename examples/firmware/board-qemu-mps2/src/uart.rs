//! CMSDK UART0 as a byte sink, and the defmt global logger over it.
//!
//! QEMU's `-serial file:<path>` (or `-serial stdio`) receives the bytes. With the `defmt`
//! feature every log frame is rzCOBS-encoded by defmt and written whole inside a critical
//! section, so frames never interleave; decode with `defmt-print -e <elf> < <path>`.

use crate::regs::Regs;

const UART0: Regs = Regs::at(0x4000_4000);
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const CTRL_TX_ENABLE: u32 = 1 << 0;

/// Enables the transmitter.
pub(crate) fn init() {
    UART0.write(BAUDDIV, 16);
    UART0.write(CTRL, CTRL_TX_ENABLE);
}

/// Writes `bytes`, waiting for room in the transmit register.
pub fn write(bytes: &[u8]) {
    for &byte in bytes {
        while UART0.read(STATE) & STATE_TX_FULL != 0 {}
        UART0.write(DATA, u32::from(byte));
    }
}

#[cfg(feature = "defmt")]
mod logger {
    use core::cell::UnsafeCell;

    use critical_section::RestoreState;

    #[defmt::global_logger]
    struct Logger;

    /// The frame encoder and the critical section's saved state, owned by whoever holds the
    /// critical section taken in `acquire`.
    struct State {
        encoder: UnsafeCell<defmt::Encoder>,
        restore: UnsafeCell<RestoreState>,
    }

    // SAFETY: only touched between `acquire` and `release`, inside one critical section on a
    // single core.
    unsafe impl Sync for State {}

    static STATE: State = State {
        encoder: UnsafeCell::new(defmt::Encoder::new()),
        restore: UnsafeCell::new(RestoreState::invalid()),
    };

    // SAFETY: `acquire` enters a critical section that `release` leaves, so at most one frame is
    // in progress and `STATE` is only touched inside it.
    unsafe impl defmt::Logger for Logger {
        fn acquire() {
            // SAFETY: paired with the `release` in `Logger::release`.
            let restore = unsafe { critical_section::acquire() };
            // SAFETY: inside the critical section (see the impl's comment).
            unsafe {
                *STATE.restore.get() = restore;
                (*STATE.encoder.get()).start_frame(super::write);
            }
        }

        unsafe fn flush() {}

        unsafe fn release() {
            // SAFETY: defmt calls `release` once after `acquire`, inside its critical section.
            unsafe {
                (*STATE.encoder.get()).end_frame(super::write);
                critical_section::release(*STATE.restore.get());
            }
        }

        unsafe fn write(bytes: &[u8]) {
            // SAFETY: defmt calls `write` between `acquire` and `release`.
            unsafe { (*STATE.encoder.get()).write(bytes, super::write) }
        }
    }

    defmt::timestamp!("{=u64:us}", embassy_time_driver::now());
}
