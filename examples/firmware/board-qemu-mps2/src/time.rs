//! The embassy-time driver: time from a free-running CMSDK APB timer, alarms from a second one.
//!
//! Timer 0 counts down from `u32::MAX` at the 25 MHz peripheral clock and wraps every ~172 s;
//! its wrap interrupt counts periods. `now()` is periods and counter together, in microseconds,
//! so it follows the emulator's virtual clock and never drifts, however late interrupts are
//! taken under load (counting SysTick interrupts does drift under QEMU: a late tick is a lost
//! tick). Timer 1 is a one-shot for the next alarm of embassy's timer queue.
//!
//! Invariants:
//! - `now()` is monotonic: a wrap not yet counted by its interrupt is seen as pending and
//!   counted in the reading (both read inside one critical section).
//! - The alarm is armed for the queue's next expiration after every change of the queue and
//!   after every alarm; an expiration already past is processed at once, never armed.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use critical_section::{CriticalSection, Mutex};
use embassy_time_driver::Driver;
use embassy_time_queue_utils::Queue;

use crate::regs::Regs;

const TIMER0: Regs = Regs::at(0x4000_0000);
const TIMER1: Regs = Regs::at(0x4000_1000);
const CTRL: usize = 0x00;
const VALUE: usize = 0x04;
const RELOAD: usize = 0x08;
/// Reads as the interrupt status, write 1 to clear.
const INTSTATUS: usize = 0x0c;
const CTRL_ENABLE: u32 = 1 << 0;
const CTRL_IRQ: u32 = 1 << 3;

/// NVIC line of timer 0 (the clock's wraps).
pub(crate) const TIMER0_IRQ: u16 = 8;
/// NVIC line of timer 1 (alarms).
pub(crate) const TIMER1_IRQ: u16 = 9;
/// Timer ticks per embassy-time tick (1 MHz).
const TICKS_PER_US: u64 = 25;

struct CmsdkDriver {
    periods: Mutex<Cell<u32>>,
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: CmsdkDriver = CmsdkDriver {
    periods: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

impl CmsdkDriver {
    fn now_in(&self, cs: CriticalSection<'_>) -> u64 {
        let mut periods = self.periods.borrow(cs).get();
        let mut value = TIMER0.read(VALUE);
        if TIMER0.read(INTSTATUS) & 1 != 0 {
            // Wrapped, and the interrupt has not run yet: read again, after the wrap for sure.
            value = TIMER0.read(VALUE);
            periods = periods.wrapping_add(1);
        }
        let ticks = (u64::from(periods) << 32) | u64::from(u32::MAX - value);
        ticks / TICKS_PER_US
    }

    /// Arms timer 1 for `at`; `false` if `at` has already passed (nothing armed).
    fn arm(&self, cs: CriticalSection<'_>, at: u64) -> bool {
        TIMER1.write(CTRL, 0);
        TIMER1.write(INTSTATUS, 1);
        if at == u64::MAX {
            return true;
        }
        let now = self.now_in(cs);
        if at <= now {
            return false;
        }
        let ticks = (at - now)
            .saturating_mul(TICKS_PER_US)
            .min(u64::from(u32::MAX));
        TIMER1.write(RELOAD, u32::MAX);
        TIMER1.write(VALUE, ticks as u32);
        TIMER1.write(CTRL, CTRL_ENABLE | CTRL_IRQ);
        true
    }

    /// Wakes every expired timer and arms the alarm for the next one.
    fn rearm(&self, cs: CriticalSection<'_>) {
        let mut queue = self.queue.borrow(cs).borrow_mut();
        loop {
            let next = queue.next_expiration(self.now_in(cs));
            if self.arm(cs, next) {
                break;
            }
        }
    }
}

impl Driver for CmsdkDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.now_in(cs))
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let changed = self.queue.borrow(cs).borrow_mut().schedule_wake(at, waker);
            if changed {
                self.rearm(cs);
            }
        });
    }
}

/// Starts both timers (the NVIC lines are unmasked by the caller).
pub(crate) fn init() {
    TIMER0.write(CTRL, 0);
    TIMER0.write(RELOAD, u32::MAX);
    TIMER0.write(VALUE, u32::MAX);
    TIMER0.write(INTSTATUS, 1);
    TIMER0.write(CTRL, CTRL_ENABLE | CTRL_IRQ);
    TIMER1.write(CTRL, 0);
    TIMER1.write(INTSTATUS, 1);
}

/// Timer 0 wrapped.
pub(crate) fn on_wrap() {
    critical_section::with(|cs| {
        if TIMER0.read(INTSTATUS) & 1 != 0 {
            TIMER0.write(INTSTATUS, 1);
            let periods = DRIVER.periods.borrow(cs);
            periods.set(periods.get().wrapping_add(1));
        }
    });
}

/// Timer 1 fired: an alarm is due.
pub(crate) fn on_alarm() {
    critical_section::with(|cs| DRIVER.rearm(cs));
}

/// The raw counter of timer 0, for entropy gathering (changes 25 times a microsecond).
pub(crate) fn raw_counter() -> u32 {
    TIMER0.read(VALUE)
}
