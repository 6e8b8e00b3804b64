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

/// The value of build-time variable `$name`, or `$default`.
macro_rules! env_or {
    ($name:literal, $default:expr) => {
        match option_env!($name) {
            Some(value) => value,
            None => $default,
        }
    };
}

/// The public test secret (hex of "colony qemu test secret, public!"), used when
/// `COLONY_SECRET` is not set at build time.
pub const TEST_SECRET_HEX: &str =
    "636f6c6f6e792071656d7520746573742073656372657420207075626c696321";

const SECRET_HEX: &str = env_or!("COLONY_SECRET", TEST_SECRET_HEX);
/// The colony's secret.
pub static SECRET: [u8; SECRET_HEX.len() / 2] = parse_hex(SECRET_HEX);
const _: () = assert!(
    SECRET.len() >= 16,
    "COLONY_SECRET must hold at least 16 bytes"
);

/// The server's IPv4 address and port.
pub const SERVER: Endpoint = match parse_endpoint(env_or!("COLONY_SERVER", "10.0.2.2:7878")) {
    Some(endpoint) => endpoint,
    None => panic!("COLONY_SERVER must be IPv4:PORT, like 10.0.2.2:7878"),
};

/// The worker's name.
pub const NAME: &str = env_or!("COLONY_NAME", "qemu-mps2");

/// Tasks held at once.
pub const SLOTS: usize = match parse_u32(env_or!("COLONY_SLOTS", "8")) {
    Some(slots) if slots >= 1 && slots <= 32 => slots as usize,
    _ => panic!("COLONY_SLOTS must be a number from 1 to 32"),
};

/// The largest frame payload accepted.
pub const MAX_FRAME: u32 = match parse_u32(env_or!("COLONY_MAX_FRAME", "1024")) {
    Some(max) if max >= 1024 && max <= 65_536 => max,
    _ => panic!("COLONY_MAX_FRAME must be a number from 1024 to 65536"),
};

/// The board's address and prefix length.
pub const IP: ([u8; 4], u8) = match parse_cidr(env_or!("COLONY_IP", "10.0.2.15/24")) {
    Some(cidr) => cidr,
    None => panic!("COLONY_IP must be IPv4/PREFIX, like 10.0.2.15/24"),
};

/// The default gateway.
pub const GATEWAY: [u8; 4] = match parse_ipv4(env_or!("COLONY_GATEWAY", "10.0.2.2").as_bytes()) {
    Some(ip) => ip,
    None => panic!("COLONY_GATEWAY must be an IPv4 address"),
};

/// An IPv4 address and a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub ip: [u8; 4],
    /// The port.
    pub port: u16,
}

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
                if let Some(endpoint) = parse_endpoint(server) {
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

const fn parse_hex<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    assert!(
        bytes.len() == 2 * N,
        "COLONY_SECRET must be an even number of hex digits"
    );
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = (hex_digit(bytes[2 * i]) << 4) | hex_digit(bytes[2 * i + 1]);
        i += 1;
    }
    out
}

const fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("COLONY_SECRET must be hex digits"),
    }
}

/// A decimal number of up to 9 digits.
pub const fn parse_u32(text: &str) -> Option<u32> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 9 {
        return None;
    }
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + (c - b'0') as u32;
        i += 1;
    }
    Some(value)
}

const fn parse_ipv4(bytes: &[u8]) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut part = 0;
    let mut value: u32 = 0;
    let mut digits = 0;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'.' {
            if digits == 0 || part == 3 {
                return None;
            }
            ip[part] = value as u8;
            part += 1;
            value = 0;
            digits = 0;
        } else if c.is_ascii_digit() && digits < 3 {
            value = value * 10 + (c - b'0') as u32;
            if value > 255 {
                return None;
            }
            digits += 1;
        } else {
            return None;
        }
        i += 1;
    }
    if digits == 0 || part != 3 {
        return None;
    }
    ip[3] = value as u8;
    Some(ip)
}

/// `a.b.c.d:port`.
pub const fn parse_endpoint(text: &str) -> Option<Endpoint> {
    let Some((ip, port)) = split_once(text.as_bytes(), b':') else {
        return None;
    };
    let Some(ip) = parse_ipv4(ip) else {
        return None;
    };
    let Ok(port) = core::str::from_utf8(port) else {
        return None;
    };
    match parse_u32(port) {
        Some(port) if port >= 1 && port <= 65_535 => Some(Endpoint {
            ip,
            port: port as u16,
        }),
        _ => None,
    }
}

const fn parse_cidr(text: &str) -> Option<([u8; 4], u8)> {
    let Some((ip, prefix)) = split_once(text.as_bytes(), b'/') else {
        return None;
    };
    let Some(ip) = parse_ipv4(ip) else {
        return None;
    };
    let Ok(prefix) = core::str::from_utf8(prefix) else {
        return None;
    };
    match parse_u32(prefix) {
        Some(prefix) if prefix <= 32 => Some((ip, prefix as u8)),
        _ => None,
    }
}

const fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == at {
            let (head, tail) = bytes.split_at(i);
            let Some((_, tail)) = tail.split_first() else {
                return None;
            };
            return Some((head, tail));
        }
        i += 1;
    }
    None
}
