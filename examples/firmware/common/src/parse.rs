//! `const fn` parsers for build-time settings. In a `const` item a parse failure is a compile
//! error; at run time (QEMU's command line) the `Option` says so.

/// An IPv4 address and a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub ip: [u8; 4],
    /// The port.
    pub port: u16,
}

/// Hex digits to `N` bytes.
///
/// # Panics
/// (At compile time in a `const`.) If `text` is not `2 * N` hex digits.
pub const fn hex<const N: usize>(text: &str) -> [u8; N] {
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
pub const fn u32(text: &str) -> Option<u32> {
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

/// `a.b.c.d`.
pub const fn ipv4(text: &str) -> Option<[u8; 4]> {
    ipv4_bytes(text.as_bytes())
}

const fn ipv4_bytes(bytes: &[u8]) -> Option<[u8; 4]> {
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
pub const fn endpoint(text: &str) -> Option<Endpoint> {
    let Some((ip, port)) = split_once(text.as_bytes(), b':') else {
        return None;
    };
    let Some(ip) = ipv4_bytes(ip) else {
        return None;
    };
    let Ok(port) = core::str::from_utf8(port) else {
        return None;
    };
    match u32(port) {
        Some(port) if port >= 1 && port <= 65_535 => Some(Endpoint {
            ip,
            port: port as u16,
        }),
        _ => None,
    }
}

/// `a.b.c.d/prefix`.
pub const fn cidr(text: &str) -> Option<([u8; 4], u8)> {
    let Some((ip, prefix)) = split_once(text.as_bytes(), b'/') else {
        return None;
    };
    let Some(ip) = ipv4_bytes(ip) else {
        return None;
    };
    let Ok(prefix) = core::str::from_utf8(prefix) else {
        return None;
    };
    match u32(prefix) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_should_and_nothing_else() {
        assert_eq!(
            endpoint("10.0.2.2:7878"),
            Some(Endpoint {
                ip: [10, 0, 2, 2],
                port: 7878
            })
        );
        for bad in [
            "10.0.2.2",
            "10.0.2:1",
            "10.0.2.256:1",
            "1.2.3.4:0",
            "1.2.3.4:x",
            "",
        ] {
            assert_eq!(endpoint(bad), None, "{bad}");
        }
        assert_eq!(cidr("192.168.1.7/24"), Some(([192, 168, 1, 7], 24)));
        assert_eq!(cidr("192.168.1.7/33"), None);
        assert_eq!(u32("123456789"), Some(123_456_789));
        assert_eq!(u32("1234567890"), None);
        assert_eq!(hex::<2>("0aFf"), [0x0a, 0xff]);
    }
}
