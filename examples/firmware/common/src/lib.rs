//! What the Colony example firmwares share, so each board's project holds only its hardware:
//!
//! - [`tasks`]: the task kinds every example board runs (`crc32c`, `reverse`);
//! - [`parse`] and [`env_or!`]: settings fixed at build time from environment variables,
//!   parsed by `const fn`s, so a malformed value is a compile error naming the variable;
//! - [`report`]: the one-line summary a board prints when it stops, without `core::fmt`.
#![no_std]
#![deny(missing_docs)]

pub mod parse;
pub mod report;
pub mod tasks;

/// The value of build-time environment variable `$name` (a string literal), or `$default`.
#[macro_export]
macro_rules! env_or {
    ($name:literal, $default:expr) => {
        match option_env!($name) {
            Some(value) => value,
            None => $default,
        }
    };
}

/// The public test secret, in hex ("colony qemu test secret, public!"), which a firmware uses
/// when `COLONY_SECRET` is not set at build time. It guards nothing: any real colony must set
/// its own.
pub const TEST_SECRET_HEX: &str =
    "636f6c6f6e792071656d7520746573742073656372657420207075626c696321";
