//! The firmware's settings: fixed at build time from environment variables (no code edits),
//! and, under QEMU only, overridable from the command line QEMU passes (`-append`).
//!
//! | variable           | default          | meaning                                          |
//! |--------------------|------------------|--------------------------------------------------|
//! | `COLONY_SERVER`    | `10.0.2.2:7878`  | the server, IPv4 and port (10.0.2.2 is the host under QEMU's user networking) |
//! | `COLONY_SECRET`    | a public test key| the colony's secret, in hex (at least 16 bytes)  |
//! | `COLONY_NAME`      | `qemu-mps2`      | the worker's name                                |
//! | `COLONY_SLOTS`     | `8`              | tasks held at once (the worker's credit), 1 to 32 |
//! | `COLONY_MAX_FRAME` | `1024`           | the largest frame accepted, so the largest task input or output plus ~40 bytes |
//! | `COLONY_IP`        | `10.0.2.15/24`   | the board's address; the gateway is `COLONY_GATEWAY` (`10.0.2.2`) |
//!
//! A malformed value is a compile error that names the variable. The default secret is public:
//! it exists so the emulator tests need no configuration, and must never guard a real colony.
//!
//! On the command line, `server=IP:PORT` and `name=NAME` (space-separated, after the kernel's
//! path) replace the built-in values, so one build serves every test run.

use firmware_common::parse::{self, Endpoint};
use firmware_common::{TEST_SECRET_HEX, env_or};

const SECRET_HEX: &str = env_or!("COLONY_SECRET", TEST_SECRET_HEX);
/// The colony's secret.
pub static SECRET: [u8; SECRET_HEX.len() / 2] = parse::hex(SECRET_HEX);
const _: () = assert!(
    SECRET.len() >= 16,
    "COLONY_SECRET must hold at least 16 bytes"
);

/// The server's IPv4 address and port.
pub const SERVER: Endpoint = match parse::endpoint(env_or!("COLONY_SERVER", "10.0.2.2:7878")) {
    Some(endpoint) => endpoint,
    None => panic!("COLONY_SERVER must be IPv4:PORT, like 10.0.2.2:7878"),
};

/// The worker's name.
pub const NAME: &str = env_or!("COLONY_NAME", "qemu-mps2");

/// Tasks held at once.
pub const SLOTS: usize = match parse::u32(env_or!("COLONY_SLOTS", "8")) {
    Some(slots) if slots >= 1 && slots <= 32 => slots as usize,
    _ => panic!("COLONY_SLOTS must be a number from 1 to 32"),
};

/// The largest frame payload accepted.
pub const MAX_FRAME: u32 = match parse::u32(env_or!("COLONY_MAX_FRAME", "1024")) {
    Some(max) if max >= 1024 && max <= 65_536 => max,
    _ => panic!("COLONY_MAX_FRAME must be a number from 1024 to 65536"),
};

/// The board's address and prefix length.
pub const IP: ([u8; 4], u8) = match parse::cidr(env_or!("COLONY_IP", "10.0.2.15/24")) {
    Some(cidr) => cidr,
    None => panic!("COLONY_IP must be IPv4/PREFIX, like 10.0.2.15/24"),
};

/// The default gateway.
pub const GATEWAY: [u8; 4] = match parse::ipv4(env_or!("COLONY_GATEWAY", "10.0.2.2")) {
    Some(ip) => ip,
    None => panic!("COLONY_GATEWAY must be an IPv4 address"),
};

/// The settings in force: built-in ones, with the command line's over them.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The server.
    pub server: Endpoint,
    /// The worker's name.
    pub name: &'static str,
}

impl Settings {
    /// The built-in settings, overridden by `server=` and `name=` words of `cmdline`.
    pub fn new(cmdline: Option<&'static str>) -> Self {
        let mut settings = Settings {
            server: SERVER,
            name: NAME,
        };
        for word in cmdline.unwrap_or("").split_ascii_whitespace() {
            if let Some(server) = word.strip_prefix("server=") {
                if let Some(endpoint) = parse::endpoint(server) {
                    settings.server = endpoint;
                }
            } else if let Some(name) = word.strip_prefix("name=")
                && !name.is_empty()
            {
                settings.name = name;
            }
        }
        settings
    }
}
