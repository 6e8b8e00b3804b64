//! The wire protocol: messages, the batch encoding, framing and the authenticated handshake.
//!
//! Every byte stream (TCP, WebSocket, UART) carries the same frames: an 8-byte header (payload
//! length and CRC-32C, both `u32` little-endian) and then one postcard-encoded [`Message`]. The
//! exact bytes are specified in `docs/wire-format.md` and pinned by golden tests.
//!
//! Invariants:
//! - Decoding never panics and never allocates: a frame's length is checked against the agreed
//!   maximum as soon as its first four bytes arrive, its CRC-32C is verified before postcard sees
//!   a byte, and postcard itself is bounded by the frame. A [`Batch`] is decoded lazily, item by
//!   item, and every item type takes at least one byte, so iterating one costs at most its bytes.
//! - Until the handshake completes, frames are limited to [`HANDSHAKE_MAX_FRAME`] bytes of payload
//!   in both directions; afterwards to the `max_frame` agreed in [`ServerHello`].
//! - No randomness and no clock here: callers supply handshake nonces.
//!
//! ```
//! use colony_core::proto::{decode_message, encode_frame, FrameDecoder, Decoded, Message};
//!
//! let mut buf = [0u8; 64];
//! let n = encode_frame(&Message::Credit { count: 8 }, &mut buf)?;
//!
//! let decoder = FrameDecoder::handshake();
//! // Half a frame: the decoder asks for the rest.
//! assert_eq!(decoder.decode(&buf[..3])?, Decoded::Incomplete { needed: 5 });
//! let Decoded::Frame(frame) = decoder.decode(&buf[..n])? else { unreachable!() };
//! assert_eq!(frame.frame_len(), n);
//! assert_eq!(decode_message(frame.payload())?, Message::Credit { count: 8 });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
mod frame;
mod handshake;
mod message;

#[cfg(feature = "alloc")]
pub use batch::BatchBuf;
pub use batch::{Batch, BatchIter};
#[cfg(feature = "alloc")]
pub use frame::encode_frame_into;
pub use frame::{
    DEFAULT_MAX_FRAME, Decoded, Frame, FrameDecoder, FrameError, HANDSHAKE_MAX_FRAME, HEADER_LEN,
    decode_message, encode_frame, encoded_len,
};
pub use handshake::{
    AuthError, CLIENT_PROOF_LABEL, ClientHandshake, HandshakeError, SERVER_PROOF_LABEL,
    ServerHandshake, client_proof, server_proof, verify_client_proof, verify_server_proof,
};
pub use message::*;

use core::fmt;

/// A message or batch item could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a valid encoding of the expected type.
    Malformed,
    /// The bytes ended in the middle of a value.
    Truncated,
    /// Bytes were left after the last item of a message or batch.
    TrailingBytes,
    /// The message's variant index is not one this version knows (a newer peer's message).
    UnknownMessage {
        /// The variant index found.
        index: u32,
    },
}

impl DecodeError {
    fn from_postcard(err: &postcard::Error) -> Self {
        match err {
            postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
            _ => DecodeError::Malformed,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed => f.write_str("malformed message"),
            DecodeError::Truncated => f.write_str("message truncated"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes after message"),
            DecodeError::UnknownMessage { index } => write!(f, "unknown message variant {index}"),
        }
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
    /// The payload is longer than a frame header can describe (`u32::MAX` bytes).
    TooLarge,
}

impl EncodeError {
    fn from_postcard(err: &postcard::Error) -> Self {
        match err {
            postcard::Error::SerializeBufferFull => EncodeError::BufferFull,
            _ => EncodeError::Serialize,
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::BufferFull => "output buffer too small for message",
            EncodeError::Serialize => "message could not be serialized",
            EncodeError::TooLarge => "message too large for a frame",
        })
    }
}

impl core::error::Error for EncodeError {}

/// A postcard flavor that appends to a `Vec` the caller owns, so a failed encoding can be rolled
/// back without losing what the vector held before.
#[cfg(feature = "alloc")]
struct Append<'v>(&'v mut alloc::vec::Vec<u8>);

#[cfg(feature = "alloc")]
impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `out`; on error `out` is left as it was.
#[cfg(feature = "alloc")]
fn append_postcard<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut alloc::vec::Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    postcard::serialize_with_flavor(value, Append(out)).map_err(|err| {
        out.truncate(start);
        EncodeError::from_postcard(&err)
    })
}
