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
    use critical_section::RestoreState;

    #[defmt::global_logger]
    struct Logger;

    /// Owned by whoever holds the critical section taken in `acquire`.
    static mut ENCODER: defmt::Encoder = defmt::Encoder::new();
    static mut RESTORE: RestoreState = RestoreState::invalid();

    // SAFETY: `acquire` enters a critical section that `release` leaves, so at most one frame is
    // in progress and the statics are only touched inside it (single core).
    unsafe impl defmt::Logger for Logger {
        fn acquire() {
            // SAFETY: paired with the `release` in `Logger::release`.
            let restore = unsafe { critical_section::acquire() };
            // SAFETY: inside the critical section (see the impl's comment).
            unsafe {
                RESTORE = restore;
                (*(&raw mut ENCODER)).start_frame(super::write);
            }
        }

        unsafe fn flush() {}

        unsafe fn release() {
            // SAFETY: defmt calls `release` once after `acquire`, inside its critical section.
            unsafe {
                (*(&raw mut ENCODER)).end_frame(super::write);
                critical_section::release(RESTORE);
            }
        }

        unsafe fn write(bytes: &[u8]) {
            // SAFETY: defmt calls `write` between `acquire` and `release`.
            unsafe { (*(&raw mut ENCODER)).write(bytes, super::write) }
        }
    }

    defmt::timestamp!("{=u64:us}", embassy_time_driver::now());
}
