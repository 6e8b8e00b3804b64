//! Who may read the monitor: anyone when the server listens on loopback only; otherwise a
//! request must carry the monitor token, as the password of HTTP basic auth (any user name) or
//! as a bearer token.
//!
//! The token is derived from the shared secret (HMAC-SHA256 of a fixed label, in hex), never the
//! secret itself: a token seen on the wire opens the read-only monitor, not the colony.
//!
//! Invariant: the comparison takes the same time whatever the presented token.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The label the monitor token is derived with.
const LABEL: &[u8] = b"colony monitor token v1";

/// The monitor token of a colony (64 hex digits): the password for its monitor page,
/// `/api/status` and `/metrics` when the server is not on loopback.
pub fn monitor_token(secret: &Secret) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(LABEL);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Whether requests must prove the token.
#[derive(Clone, Debug)]
pub(crate) enum Access {
    /// Loopback only: open.
    Open,
    /// The expected token.
    Token(String),
}

impl Access {
    /// Whether anyone may read.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self, Access::Open)
    }

    /// Whether a request with this `Authorization` header may read the monitor.
    pub(crate) fn allows(&self, authorization: Option<&str>) -> bool {
        let Access::Token(expected) = self else {
            return true;
        };
        let Some(presented) = authorization.and_then(presented_token) else {
            return false;
        };
        same(presented.as_bytes(), expected.as_bytes())
    }
}

/// The token in `Basic base64(user:token)` or `Bearer token`.
fn presented_token(header: &str) -> Option<String> {
    let (scheme, value) = header.trim().split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(value.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(value)?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        Some(password.to_owned())
    } else {
        None
    }
}

/// Constant-time equality (the lengths are public).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 with padding; `None` on anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) || bytes.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { value(c)? };
            n = (n << 6) | v;
        }
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(three.get(..3 - pad).unwrap_or_default());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in text.as_bytes().chunks(3) {
            let mut n = 0u32;
            for i in 0..3 {
                n = (n << 8) | u32::from(*chunk.get(i).unwrap_or(&0));
            }
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn token_is_derived_not_the_secret() {
        let secret = Secret::from_bytes(&[9; 32]).unwrap();
        let token = monitor_token(&secret);
        assert_eq!(token.len(), 64);
        assert_ne!(token, secret.to_hex());
        assert_eq!(token, monitor_token(&secret));
        let other = Secret::from_bytes(&[8; 32]).unwrap();
        assert_ne!(token, monitor_token(&other));
    }

    #[test]
    fn basic_and_bearer_are_accepted_with_the_right_token_only() {
        let access = Access::Token("s3cret".into());
        assert!(access.allows(Some(&format!("Basic {}", b64("anyone:s3cret")))));
        assert!(access.allows(Some(&format!("basic {}", b64(":s3cret")))));
        assert!(access.allows(Some("Bearer s3cret")));
        assert!(!access.allows(None));
        assert!(!access.allows(Some("Bearer s3cre")));
        assert!(!access.allows(Some("Bearer s3cretX")));
        assert!(!access.allows(Some(&format!("Basic {}", b64("s3cret")))));
        assert!(!access.allows(Some(&format!("Basic {}", b64("u:wrong!")))));
        assert!(!access.allows(Some("Basic !!!!")));
        assert!(!access.allows(Some("Digest s3cret")));
        assert!(Access::Open.allows(None));
    }

    #[test]
    fn base64_round_trips() {
        for text in ["", "a", "ab", "abc", "abcd", "user:pass word"] {
            assert_eq!(base64_decode(&b64(text)).unwrap(), text.as_bytes());
        }
        assert!(base64_decode("abc").is_none());
        assert!(base64_decode("a===").is_none());
    }
}
