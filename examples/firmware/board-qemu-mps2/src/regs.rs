//! Memory-mapped registers: volatile 32-bit reads and writes at a fixed base address.
//!
//! Invariant: a [`Regs`] is only ever made (in this crate) for a peripheral block the mps2-an385
//! map places at that address, so every access it performs is a device register access.

/// A block of 32-bit registers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Regs(usize);

impl Regs {
    /// The block at `base`; private to the crate, see the module invariant.
    pub(crate) const fn at(base: usize) -> Self {
        Regs(base)
    }

    /// Reads the register at `offset`.
    #[inline]
    pub(crate) fn read(self, offset: usize) -> u32 {
        // SAFETY: `self.0 + offset` is a register of a device block of the board (module
        // invariant), aligned and always mapped.
        unsafe { core::ptr::read_volatile((self.0 + offset) as *const u32) }
    }

    /// Writes the register at `offset`.
    #[inline]
    pub(crate) fn write(self, offset: usize, value: u32) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.0 + offset) as *mut u32, value) }
    }
}
