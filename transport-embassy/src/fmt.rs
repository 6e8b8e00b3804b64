//! Internal logging shim: `trace!` .. `error!` go to `defmt`, to `log`, or nowhere.
//!
//! Exactly one of the `defmt` and `log` features may be on; with neither, the macros compile to
//! nothing (their arguments are still type-checked, so a log line cannot rot unnoticed).
#![allow(unused_macros)]

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("the `defmt` and `log` features of colony-embassy are mutually exclusive");

macro_rules! log_at {
    ($defmt:ident, $log:ident, $($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::$defmt!($($arg)*);
        #[cfg(feature = "log")]
        ::log::$log!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        if false {
            let _ = ::core::format_args!($($arg)*);
        }
    }};
}

macro_rules! trace { ($($arg:tt)*) => { log_at!(trace, trace, $($arg)*) }; }
macro_rules! debug { ($($arg:tt)*) => { log_at!(debug, debug, $($arg)*) }; }
macro_rules! info { ($($arg:tt)*) => { log_at!(info, info, $($arg)*) }; }
macro_rules! warn { ($($arg:tt)*) => { log_at!(warn, warn, $($arg)*) }; }
macro_rules! error { ($($arg:tt)*) => { log_at!(error, error, $($arg)*) }; }
