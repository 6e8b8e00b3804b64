//! Board support for QEMU's `mps2-an385` (an Arm MPS2 FPGA board with a Cortex-M3): what a
//! Colony worker firmware needs from it, and nothing more.
//!
//! - [`Lan9118`]: an embassy-net driver for the board's Ethernet controller, as QEMU models it
//!   (`-nic user,model=lan9118`).
//! - An embassy-time driver on the CMSDK APB timers (1 MHz ticks, free-running: no drift under
//!   load).
//! - [`executor::run`]: an embassy executor that sleeps with `WFI`, so idle boards cost the host
//!   nothing.
//! - [`uart::write`] and, with the `defmt` feature, defmt logging over UART0.
//! - [`exit::exit`] and [`exit::cmdline`] through semihosting, with the `qemu` feature only.
//! - [`rng::TimerNoise`]: non-cryptographic randomness for the emulator's handshake nonces.
//!
//! The firmware calls [`init`] first and [`interrupts!`] once at top level:
//!
//! ```ignore
//! board_qemu_mps2::interrupts!();
//!
//! #[cortex_m_rt::entry]
//! fn main() -> ! {
//!     let board = board_qemu_mps2::init().unwrap();
//!     board_qemu_mps2::executor::run(|spawner| { /* spawn tasks using board.eth */ })
//! }
//! ```
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod executor;
pub mod exit;
mod lan9118;
mod regs;
pub mod rng;
mod time;
pub mod uart;

pub use lan9118::{InitError, Lan9118};

use cortex_m::interrupt::InterruptNumber;
use cortex_m::peripheral::NVIC;

/// The board, brought up.
pub struct Board {
    /// The Ethernet controller.
    pub eth: Lan9118,
}

#[derive(Clone, Copy)]
struct Irq(u16);

// SAFETY: every `Irq` is one of the board's NVIC lines below, all valid interrupt numbers.
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

/// Brings up the UART, the timers and the Ethernet controller, and unmasks their interrupts.
///
/// # Errors
/// [`InitError`] if the Ethernet controller does not answer.
pub fn init() -> Result<Board, InitError> {
    uart::init();
    time::init();
    let eth = Lan9118::new()?;
    for irq in [time::TIMER0_IRQ, time::TIMER1_IRQ, lan9118::IRQ] {
        // SAFETY: the handlers for these lines (`on_interrupt`) are ready, and unmasking
        // breaks no critical section: none is held here.
        unsafe { NVIC::unmask(Irq(irq)) };
    }
    Ok(Board { eth })
}

/// Dispatches a device interrupt; called by the `DefaultHandler` that [`interrupts!`] defines.
pub fn on_interrupt(irqn: i16) {
    match irqn {
        8 => time::on_wrap(),
        9 => time::on_alarm(),
        13 => lan9118::on_interrupt(),
        _ => {}
    }
}

/// A hard fault: logged, and the program ends with exit code 102.
pub fn on_hard_fault() -> ! {
    #[cfg(feature = "defmt")]
    defmt::error!("hard fault");
    exit::exit(102)
}

/// Defines the firmware's `DefaultHandler` (device interrupts) and `HardFault` handlers. Invoke
/// once, at the top level of the firmware's main module (which depends on `cortex-m-rt`).
#[macro_export]
macro_rules! interrupts {
    () => {
        #[cortex_m_rt::exception]
        unsafe fn DefaultHandler(irqn: i16) {
            $crate::on_interrupt(irqn);
        }

        #[cortex_m_rt::exception]
        unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
            $crate::on_hard_fault()
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    #[cfg(feature = "defmt")]
    match info.location() {
        Some(at) => defmt::error!("panic at {=str}:{=u32}", at.file(), at.line()),
        None => defmt::error!("panic"),
    }
    #[cfg(not(feature = "defmt"))]
    let _ = info;
    exit::exit(101)
}
