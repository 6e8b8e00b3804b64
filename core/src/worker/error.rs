//! The worker's errors: one enum per operation, all `Copy`, none carrying borrowed data.
//!
//! A [`WorkerError`] always means the connection is over: the machine has already moved to
//! closing, and [`Worker::poll`](super::Worker::poll) says so. [`TransmitError`] and
//! [`CompleteError`] are the caller's to fix (a bigger buffer, a smaller output); they change no
//! state.

use core::fmt;

use crate::id::LeaseId;
use crate::proto::{DecodeError, ErrorCode, FrameError, HandshakeError};

/// The server broke the protocol; the worker closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum WorkerError {
    /// A frame's header or checksum was bad (from [`Worker::receive`](super::Worker::receive)).
    Frame(FrameError),
    /// A frame's payload is longer than the limit in force.
    FrameTooLarge {
        /// The payload's length.
        len: usize,
        /// The limit in force.
        max: u32,
    },
    /// A payload is not a valid message, or a grant's batch is malformed.
    Decode(DecodeError),
    /// The server's hello failed the handshake (version, proof or frame limit).
    Handshake(HandshakeError),
    /// A message a server never sends to a worker, or not at this point of the connection.
    Unexpected {
        /// The message's name.
        message: &'static str,
    },
    /// A grant holds more leases than the worker's outstanding credit.
    CreditExceeded {
        /// Leases in the grant.
        granted: u32,
        /// Credit outstanding when it arrived.
        credit: u32,
    },
    /// A grant names a task kind the worker did not announce.
    UnknownKind {
        /// The kind index.
        kind: u16,
    },
    /// A grant names a lease the worker already holds.
    DuplicateLease {
        /// The lease.
        lease: LeaseId,
    },
}

impl WorkerError {
    /// The reason code the worker sends in its parting [`Message::Error`](crate::proto::Message).
    pub const fn code(&self) -> ErrorCode {
        match self {
            WorkerError::Frame(err) => err.code(),
            WorkerError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WorkerError::Decode(_) | WorkerError::Unexpected { .. } => ErrorCode::BadMessage,
            WorkerError::Handshake(err) => err.code(),
            WorkerError::CreditExceeded { .. } | WorkerError::DuplicateLease { .. } => {
                ErrorCode::LimitExceeded
            }
            WorkerError::UnknownKind { .. } => ErrorCode::BadMessage,
        }
    }
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerError::Frame(err) => write!(f, "bad frame: {err}"),
            WorkerError::FrameTooLarge { len, max } => {
                write!(f, "frame payload of {len} bytes exceeds the limit of {max}")
            }
            WorkerError::Decode(err) => write!(f, "undecodable message: {err}"),
            WorkerError::Handshake(err) => write!(f, "handshake failed: {err}"),
            WorkerError::Unexpected { message } => write!(f, "unexpected {message} from server"),
            WorkerError::CreditExceeded { granted, credit } => {
                write!(f, "server granted {granted} leases on a credit of {credit}")
            }
            WorkerError::UnknownKind { kind } => write!(f, "grant names unknown task kind {kind}"),
            WorkerError::DuplicateLease { lease } => write!(f, "{lease} granted twice"),
        }
    }
}

impl core::error::Error for WorkerError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            WorkerError::Frame(err) => Some(err),
            WorkerError::Decode(err) => Some(err),
            WorkerError::Handshake(err) => Some(err),
            _ => None,
        }
    }
}

impl From<DecodeError> for WorkerError {
    fn from(err: DecodeError) -> Self {
        WorkerError::Decode(err)
    }
}

impl From<FrameError> for WorkerError {
    fn from(err: FrameError) -> Self {
        WorkerError::Frame(err)
    }
}

impl From<HandshakeError> for WorkerError {
    fn from(err: HandshakeError) -> Self {
        WorkerError::Handshake(err)
    }
}

/// [`Worker::poll_transmit`](super::Worker::poll_transmit) could not write the next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TransmitError {
    /// The buffer cannot hold even the next pending frame; nothing was written and the frame
    /// stays pending. A buffer of `HEADER_LEN + HANDSHAKE_MAX_FRAME * 2` bytes always suffices.
    BufferTooSmall {
        /// The buffer's length.
        len: usize,
    },
}

impl fmt::Display for TransmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransmitError::BufferTooSmall { len } => {
                write!(
                    f,
                    "transmit buffer of {len} bytes cannot hold the next frame"
                )
            }
        }
    }
}

impl core::error::Error for TransmitError {}

/// A result could not be encoded; the lease is still held, so the caller may retry with a larger
/// buffer or report a failure instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CompleteError {
    /// The frame does not fit in the caller's buffer.
    BufferTooSmall {
        /// Bytes the frame needs, header included.
        needed: usize,
        /// The buffer's length.
        len: usize,
    },
    /// The output makes a frame larger than the limit agreed with the server.
    OutputTooLarge {
        /// The frame payload's length.
        len: usize,
        /// The agreed limit.
        max: u32,
    },
}

impl fmt::Display for CompleteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompleteError::BufferTooSmall { needed, len } => {
                write!(f, "frame of {needed} bytes does not fit a buffer of {len}")
            }
            CompleteError::OutputTooLarge { len, max } => {
                write!(
                    f,
                    "result payload of {len} bytes exceeds the agreed limit of {max}"
                )
            }
        }
    }
}

impl core::error::Error for CompleteError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_cause() {
        assert_eq!(
            WorkerError::Frame(FrameError::BadChecksum).code(),
            ErrorCode::BadMessage
        );
        assert_eq!(
            WorkerError::CreditExceeded {
                granted: 3,
                credit: 2
            }
            .code(),
            ErrorCode::LimitExceeded
        );
        assert_eq!(
            WorkerError::Handshake(HandshakeError::Auth(crate::proto::AuthError::BadProof)).code(),
            ErrorCode::AuthFailed
        );
    }

    #[test]
    fn display_is_lowercase_without_period() {
        let texts = [
            WorkerError::Unexpected { message: "Grant" }.to_string(),
            WorkerError::CreditExceeded {
                granted: 3,
                credit: 2,
            }
            .to_string(),
            TransmitError::BufferTooSmall { len: 4 }.to_string(),
            CompleteError::OutputTooLarge { len: 9, max: 8 }.to_string(),
        ];
        for text in texts {
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
