//! The firmware's settings, fixed at build time from environment variables (no code edits):
//!
//! | variable               | default               | meaning                                 |
//! |------------------------|-----------------------|-----------------------------------------|
//! | `COLONY_WIFI_SSID`     | none: **required** at run time | the Wi-Fi network              |
//! | `COLONY_WIFI_PASSWORD` | empty (an open network) | its WPA2 passphrase                   |
//! | `COLONY_SERVER`        | `192.168.1.100:7878`  | the server, IPv4 and port               |
//! | `COLONY_SECRET`        | the public test key   | the colony's secret, in hex (at least 16 bytes): **set it** |
//! | `COLONY_NAME`          | `esp32c3`             | the worker's name                       |
//! | `COLONY_SLOTS`         | `4`                   | tasks held at once, 1 to 32             |
//! | `COLONY_MAX_FRAME`     | `1024`                | the largest frame accepted (task input or output plus ~40 bytes) |
//!
//! The board takes its address by DHCP. A malformed value is a compile error that names the
//! variable.

use firmware_common::parse::{self, Endpoint};
use firmware_common::{TEST_SECRET_HEX, env_or};

/// The Wi-Fi network's name (empty: not set at build time).
pub const WIFI_SSID: &str = env_or!("COLONY_WIFI_SSID", "");
/// The Wi-Fi passphrase (empty: an open network).
pub const WIFI_PASSWORD: &str = env_or!("COLONY_WIFI_PASSWORD", "");

const SECRET_HEX: &str = env_or!("COLONY_SECRET", TEST_SECRET_HEX);
/// The colony's secret.
pub static SECRET: [u8; SECRET_HEX.len() / 2] = parse::hex(SECRET_HEX);
const _: () = assert!(
    SECRET.len() >= 16,
    "COLONY_SECRET must hold at least 16 bytes"
);
/// Whether the firmware was built with the public test secret (it says so at boot).
pub const TEST_SECRET: bool = option_env!("COLONY_SECRET").is_none();

/// The server's IPv4 address and port.
pub const SERVER: Endpoint = match parse::endpoint(env_or!("COLONY_SERVER", "192.168.1.100:7878")) {
    Some(endpoint) => endpoint,
    None => panic!("COLONY_SERVER must be IPv4:PORT, like 192.168.1.100:7878"),
};

/// The worker's name.
pub const NAME: &str = env_or!("COLONY_NAME", "esp32c3");

/// Tasks held at once.
pub const SLOTS: usize = match parse::u32(env_or!("COLONY_SLOTS", "4")) {
    Some(slots) if slots >= 1 && slots <= 32 => slots as usize,
    _ => panic!("COLONY_SLOTS must be a number from 1 to 32"),
};

/// The largest frame payload accepted.
pub const MAX_FRAME: u32 = match parse::u32(env_or!("COLONY_MAX_FRAME", "1024")) {
    Some(max) if max >= 1024 && max <= 65_536 => max,
    _ => panic!("COLONY_MAX_FRAME must be a number from 1024 to 65536"),
};
