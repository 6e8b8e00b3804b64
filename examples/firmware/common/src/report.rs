//! The one-line summary a firmware prints when it ends (under QEMU: on its standard error,
//! through semihosting), for test harnesses that do not decode defmt:
//!
//! `colony-report name=<name> job=<id> answered=<tasks> sessions=<connections>`

/// A line of at most 128 bytes, built without `core::fmt` (which costs kilobytes of flash).
pub struct Line {
    buf: [u8; 128],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line::new()
    }
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Line {
            buf: [0; 128],
            len: 0,
        }
    }

    /// Appends `text`, cut if the line is full.
    pub fn text(&mut self, text: &str) -> &mut Self {
        for &byte in text.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = byte;
                self.len += 1;
            }
        }
        self
    }

    /// Appends `n` in decimal.
    pub fn number(&mut self, mut n: u32) -> &mut Self {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // ASCII digits are UTF-8.
        self.text(core::str::from_utf8(&digits[i..]).unwrap_or("?"))
    }

    /// The line so far.
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s and ASCII digits were appended, but a cut may split a character.
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(text) => text,
            Err(err) => core::str::from_utf8(&self.buf[..err.valid_up_to()]).unwrap_or(""),
        }
    }
}
