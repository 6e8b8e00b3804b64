//! [`Secret`]: the shared key every peer of one colony proves it knows in the handshake.
//!
//! A secret is at least [`Secret::MIN_LEN`] random bytes. It travels between processes as hex
//! text: in the `COLONY_SECRET` environment variable, or in a token file that only its owner may
//! read (mode 0600, written by [`Secret::write_new_file`]).
//!
//! Invariants:
//! - A secret's bytes never appear in `Debug` output or in an error message.
//! - Every error names the file or variable it came from.
//! - The bytes are overwritten with zeros when the secret is dropped (best effort: copies the
//!   allocator or the OS made are out of reach).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The environment variable [`Secret::from_env`] is usually given.
pub const SECRET_ENV: &str = "COLONY_SECRET";

/// A shared secret (see the module docs).
#[derive(Clone)]
pub struct Secret {
    bytes: Vec<u8>,
}

/// Why text is not a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A character that is not a hex digit.
    #[error("character {at} is not a hex digit")]
    NotHex {
        /// Its position among the characters, from 0.
        at: usize,
    },
    /// An odd number of hex digits.
    #[error("an odd number of hex digits")]
    OddLength,
    /// Fewer than [`Secret::MIN_LEN`] bytes.
    #[error("{bytes} bytes is too short, a secret has at least {} bytes ({} hex digits)", Secret::MIN_LEN, 2 * Secret::MIN_LEN)]
    TooShort {
        /// Bytes found.
        bytes: usize,
    },
}

/// A secret could not be read, parsed or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The environment variable is set but holds no secret.
    #[error("environment variable {var} does not hold a secret: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it.
        reason: FormatError,
    },
    /// The environment variable is set but is not valid Unicode.
    #[error("environment variable {var} is not valid unicode")]
    EnvNotUnicode {
        /// The variable.
        var: String,
    },
    /// The secret file could not be read.
    #[error("cannot read secret file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The secret file holds no secret.
    #[error("secret file {} does not hold a secret: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: FormatError,
    },
    /// The secret file could not be created (it may exist already).
    #[error("cannot create secret file {}: {source}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The operating system's random source failed.
    #[error("cannot draw a random secret: {0}")]
    Random(getrandom::Error),
}

impl Secret {
    /// The fewest bytes a secret may have (16; [`Secret::random`] draws 32).
    pub const MIN_LEN: usize = 16;

    /// Length of a secret made by [`Secret::random`].
    pub const RANDOM_LEN: usize = 32;

    /// A fresh secret of [`Secret::RANDOM_LEN`] bytes from the operating system's random source.
    ///
    /// # Errors
    /// [`SecretError::Random`] if the random source fails.
    pub fn random() -> Result<Secret, SecretError> {
        let mut bytes = vec![0u8; Self::RANDOM_LEN];
        getrandom::fill(&mut bytes).map_err(SecretError::Random)?;
        Ok(Secret { bytes })
    }

    /// A secret from raw bytes.
    ///
    /// # Errors
    /// [`FormatError::TooShort`] if there are fewer than [`Secret::MIN_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, FormatError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(FormatError::TooShort { bytes: bytes.len() });
        }
        Ok(Secret {
            bytes: bytes.to_vec(),
        })
    }

    /// Parses hex text (either case; surrounding whitespace is ignored).
    ///
    /// # Errors
    /// A [`FormatError`] saying what is wrong with the text.
    pub fn from_hex(text: &str) -> Result<Secret, FormatError> {
        let text = text.trim();
        let mut bytes = Vec::with_capacity(text.len() / 2);
        let mut high = None;
        for (at, c) in text.chars().enumerate() {
            let digit = c.to_digit(16).ok_or(FormatError::NotHex { at })? as u8;
            match high.take() {
                None => high = Some(digit),
                Some(h) => bytes.push(h << 4 | digit),
            }
        }
        if high.is_some() {
            return Err(FormatError::OddLength);
        }
        let secret = Secret::from_bytes(&bytes);
        scrub(bytes);
        secret
    }

    /// The secret as lowercase hex, the format of the variable and the file.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(2 * self.bytes.len());
        for b in &self.bytes {
            let _ = write!(text, "{b:02x}");
        }
        text
    }

    /// The raw bytes, the key of the handshake's HMAC.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The secret in environment variable `var` (usually [`SECRET_ENV`]), or `None` if it is not
    /// set.
    ///
    /// # Errors
    /// [`SecretError::Env`] or [`SecretError::EnvNotUnicode`] if it is set but holds no secret.
    pub fn from_env(var: &str) -> Result<Option<Secret>, SecretError> {
        match std::env::var(var) {
            Ok(text) => Secret::from_hex(&text)
                .map(Some)
                .map_err(|reason| SecretError::Env {
                    var: var.to_owned(),
                    reason,
                }),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvNotUnicode {
                var: var.to_owned(),
            }),
        }
    }

    /// The secret in the token file at `path` (hex text). Logs a warning if others than its
    /// owner may read the file.
    ///
    /// # Errors
    /// [`SecretError::Read`] if the file cannot be read, [`SecretError::Format`] if it holds no
    /// secret.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Secret, SecretError> {
        let path = path.as_ref();
        let read_error = |source| SecretError::Read {
            path: path.to_owned(),
            source,
        };
        let mode = fs::metadata(path).map_err(read_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            log::warn!(
                "secret file {} may be read by other users (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            );
        }
        let text = fs::read_to_string(path).map_err(read_error)?;
        let secret = Secret::from_hex(&text).map_err(|reason| SecretError::Format {
            path: path.to_owned(),
            reason,
        });
        scrub(text.into_bytes());
        secret
    }

    /// Draws a new random secret and writes it to a new token file at `path`, readable and
    /// writable by its owner only (mode 0600), synced to disk.
    ///
    /// # Errors
    /// [`SecretError::Create`] if the file exists already or cannot be written,
    /// [`SecretError::Random`] if the random source fails.
    pub fn write_new_file(path: impl AsRef<Path>) -> Result<Secret, SecretError> {
        let path = path.as_ref();
        let secret = Secret::random()?;
        let create_error = |source| SecretError::Create {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create_error)?;
        let mut text = secret.to_hex();
        text.push('\n');
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        scrub(text.into_bytes());
        written.map_err(create_error)?;
        Ok(secret)
    }

    /// Reads the token file at `path`, or creates it with a new secret if it does not exist (when
    /// two processes race to create it, both end up with the one that won).
    ///
    /// # Errors
    /// As [`Secret::from_file`] and [`Secret::write_new_file`].
    pub fn from_file_or_create(path: impl AsRef<Path>) -> Result<Secret, SecretError> {
        let path = path.as_ref();
        match Secret::write_new_file(path) {
            Ok(secret) => Ok(secret),
            Err(SecretError::Create { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                Secret::from_file(path)
            }
            Err(e) => Err(e),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.bytes.len())
    }
}

impl PartialEq for Secret {
    /// Compares in time independent of where the secrets differ.
    fn eq(&self, other: &Self) -> bool {
        self.bytes.len() == other.bytes.len()
            && self
                .bytes
                .iter()
                .zip(&other.bytes)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for Secret {}

impl std::str::FromStr for Secret {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Secret::from_hex(s)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        scrub(std::mem::take(&mut self.bytes));
    }
}

/// Overwrites `bytes` with zeros before freeing them; `black_box` keeps the stores from being
/// optimised away.
fn scrub(mut bytes: Vec<u8>) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let s = Secret::random().unwrap();
        assert_eq!(s.as_bytes().len(), Secret::RANDOM_LEN);
        assert_eq!(Secret::from_hex(&s.to_hex()).unwrap(), s);
        assert_eq!(
            Secret::from_hex(&format!("  {}\n", s.to_hex().to_uppercase())).unwrap(),
            s
        );
        assert_ne!(Secret::random().unwrap(), s);
        assert_eq!(
            Secret::from_hex("00112233445566778899aabbccddeeffz"),
            Err(FormatError::NotHex { at: 32 })
        );
        assert_eq!(
            Secret::from_hex("00112233445566778899aabbccddeeff0"),
            Err(FormatError::OddLength)
        );
        assert_eq!(
            Secret::from_hex("0011"),
            Err(FormatError::TooShort { bytes: 2 })
        );
        assert!(Secret::from_hex("00112233445566778899aabbccddeeff").is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from_hex("abababababababababababababababab").unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("ab"), "{text}");
        assert_eq!(text, "Secret(<16 bytes, redacted>)");
    }

    #[test]
    fn file_is_owner_only_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let s = Secret::write_new_file(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Secret::from_file(&path).unwrap(), s);
        // Never overwritten.
        let err = Secret::write_new_file(&path).unwrap_err();
        assert!(matches!(err, SecretError::Create { .. }), "{err}");
        assert!(err.to_string().contains("token"), "{err}");
        assert_eq!(Secret::from_file_or_create(&path).unwrap(), s);
        let other = dir.path().join("other");
        let made = Secret::from_file_or_create(&other).unwrap();
        assert_eq!(Secret::from_file(&other).unwrap(), made);
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-token");
        let err = Secret::from_file(&missing).unwrap_err();
        assert!(err.to_string().contains("missing-token"), "{err}");
        let bad = dir.path().join("bad-token");
        fs::write(&bad, "not hex at all").unwrap();
        let err = Secret::from_file(&bad).unwrap_err();
        assert!(matches!(err, SecretError::Format { .. }));
        assert!(err.to_string().contains("bad-token"), "{err}");
        assert!(!err.to_string().contains("not hex at all"), "{err}");
    }

    #[test]
    fn env_errors_name_the_variable() {
        // A variable name no other test uses; tests run in threads, so only this one touches it.
        let var = "COLONY_SECRET_TEST_ONLY_7F3A";
        assert!(Secret::from_env(var).unwrap().is_none());
        let err = Secret::from_hex("xyz").unwrap_err();
        let err = SecretError::Env {
            var: var.into(),
            reason: err,
        };
        assert!(err.to_string().contains(var), "{err}");
    }
}
