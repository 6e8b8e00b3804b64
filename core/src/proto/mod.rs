//! The wire protocol: messages, the batch encoding, framing and the authenticated handshake.
//!
//! Decoding never panics: every frame is length-checked against the agreed maximum and its
//! CRC-32C verified before postcard sees a byte, and postcard itself is bounded by the frame.

mod batch;
mod message;

pub use batch::{Batch, BatchIter};
#[cfg(feature = "alloc")]
pub use batch::BatchBuf;
pub use message::*;

use core::fmt;

/// A message or frame could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a valid encoding of the expected type.
    Malformed,
    /// Bytes were left after the last item of a message or batch.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Malformed => "malformed message",
            DecodeError::TrailingBytes => "trailing bytes after message",
        })
    }
}

impl core::error::Error for DecodeError {}

/// A message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small for the message.
    BufferFull,
    /// postcard refused the value.
    Serialize,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::BufferFull => "output buffer too small for message",
            EncodeError::Serialize => "message could not be serialized",
        })
    }
}

impl core::error::Error for EncodeError {}
