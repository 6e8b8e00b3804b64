//! Ending the program and reading QEMU's command line, through semihosting (`qemu` feature).
//!
//! Semihosting traps to a debugger (or QEMU with `-semihosting-config enable=on`); on a real
//! board without one attached it hangs, so it is only compiled in with the `qemu` feature.
//! Without it, [`exit`] stops the core and [`cmdline`] has nothing to read.

/// Ends the program with `code` (QEMU exits with it); without the `qemu` feature, halts.
pub fn exit(code: i32) -> ! {
    #[cfg(feature = "qemu")]
    semihosting::exit(code);
    #[cfg(not(feature = "qemu"))]
    let _ = code;
    loop {
        cortex_m::asm::wfi();
    }
}

/// Writes `text` (a line, without its newline) to the host's console: QEMU's standard error.
/// Does nothing without the `qemu` feature.
pub fn report(text: &str) {
    #[cfg(feature = "qemu")]
    semihosting::write_line(text);
    #[cfg(not(feature = "qemu"))]
    let _ = text;
}

/// The command line QEMU passes (`-append`, after the program's path), read into `buf`.
/// `None` without the `qemu` feature, or if it does not fit or is not UTF-8.
pub fn cmdline(buf: &mut [u8]) -> Option<&str> {
    #[cfg(feature = "qemu")]
    {
        semihosting::cmdline(buf)
    }
    #[cfg(not(feature = "qemu"))]
    {
        let _ = buf;
        None
    }
}

#[cfg(feature = "qemu")]
mod semihosting {
    const SYS_WRITE0: u32 = 0x04;
    const SYS_GET_CMDLINE: u32 = 0x15;
    const SYS_EXIT_EXTENDED: u32 = 0x20;
    const ADP_STOPPED_APPLICATION_EXIT: u32 = 0x2_0026;

    /// Performs semihosting operation `op` with the parameter block at `args`.
    ///
    /// # Safety
    /// `args` must point to the block `op` expects, valid for reads and writes.
    unsafe fn call(op: u32, args: *mut u32) -> u32 {
        let result;
        // SAFETY: `bkpt 0xab` is the semihosting trap on M-profile cores; the host reads and
        // writes only the block the caller vouches for.
        unsafe {
            core::arch::asm!(
                "bkpt #0xab",
                inout("r0") op => result,
                in("r1") args,
                options(nostack, preserves_flags),
            );
        }
        result
    }

    pub(super) fn exit(code: i32) {
        let mut block = [ADP_STOPPED_APPLICATION_EXIT, code as u32];
        // SAFETY: SYS_EXIT_EXTENDED takes a two-word block.
        unsafe { call(SYS_EXIT_EXTENDED, block.as_mut_ptr()) };
    }

    pub(super) fn write_line(text: &str) {
        // SYS_WRITE0 takes a NUL-terminated string: copy in pieces that leave room for the NUL.
        let mut chunk = [0u8; 65];
        let mut pieces = text.as_bytes().chunks(chunk.len() - 2).peekable();
        while let Some(piece) = pieces.next() {
            let mut len = piece.len();
            chunk[..len].copy_from_slice(piece);
            if pieces.peek().is_none() {
                chunk[len] = b'\n';
                len += 1;
            }
            chunk[len] = 0;
            // SAFETY: SYS_WRITE0's argument is the string itself, NUL-terminated within `chunk`.
            unsafe { call(SYS_WRITE0, chunk.as_mut_ptr().cast()) };
        }
    }

    pub(super) fn cmdline(buf: &mut [u8]) -> Option<&str> {
        let mut block = [buf.as_mut_ptr() as u32, buf.len() as u32];
        // SAFETY: SYS_GET_CMDLINE takes a (buffer, length) block and writes at most `length`
        // bytes into the buffer, then the length used into the block.
        let failed = unsafe { call(SYS_GET_CMDLINE, block.as_mut_ptr()) } != 0;
        let len = block[1] as usize;
        if failed || len > buf.len() {
            return None;
        }
        core::str::from_utf8(&buf[..len]).ok()
    }
}
