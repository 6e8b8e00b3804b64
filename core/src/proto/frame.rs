//! Framing: one length- and CRC-checked frame per [`Message`], the same on every byte stream.
//!
//! ```text
//!  0        4        8                 8 + len
//!  +--------+--------+-----------------+
//!  |  len   | crc32c |  payload        |   len, crc32c: u32 little-endian
//!  +--------+--------+-----------------+   crc32c: CRC-32C of the payload only
//! ```
//!
//! The payload is the postcard encoding of exactly one [`Message`], with no trailing bytes.
//!
//! Invariants:
//! - `max_frame` bounds the payload (`len`), not the header: a receiver that accepts `max_frame`
//!   needs a buffer of [`HEADER_LEN`]` + max_frame` bytes.
//! - [`FrameDecoder::decode`] rejects an oversized length as soon as the first four bytes are in,
//!   so a peer cannot make the receiver wait for (or buffer) more than `max_frame` bytes.
//! - The CRC is checked before any byte of the payload is interpreted.
//! - Nothing here panics or allocates on any input; `encode_frame_into` allocates only by growing
//!   the caller's vector.

use core::fmt;
use core::ops::Range;

use super::message::MESSAGE_VARIANTS;
use super::{DecodeError, EncodeError, Message};
use crate::crc::crc32c;

/// Length of the frame header: payload length and payload CRC-32C, each a `u32` little-endian.
pub const HEADER_LEN: usize = 8;

/// The payload limit of every frame until the handshake completes (up to and including
/// [`Message::Welcome`]), in both directions. Every peer accepts frames of at least this size.
///
/// It bounds what a peer that has not proved the secret can make the other side buffer. A
/// [`Join`](super::Join), with the worker's name and kinds, must fit in it.
pub const HANDSHAKE_MAX_FRAME: u32 = 1024;

/// A suggested payload limit for hosts with memory to spare (1 MiB). Microcontrollers announce
/// what their receive buffer holds instead.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// A frame could not be accepted. The connection should be closed (see
/// [`FrameError::code`]): framing is lost and cannot be recovered on a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// The header announces a payload longer than the limit.
    TooLarge {
        /// The payload length in the header.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// The payload's CRC-32C does not match the header.
    BadChecksum,
}

impl FrameError {
    /// The reason code to send in a [`Message::Error`] before closing.
    pub const fn code(&self) -> super::ErrorCode {
        match self {
            FrameError::TooLarge { .. } => super::ErrorCode::FrameTooLarge,
            FrameError::BadChecksum => super::ErrorCode::BadMessage,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame payload of {len} bytes exceeds the limit of {max}")
            }
            FrameError::BadChecksum => f.write_str("frame checksum mismatch"),
        }
    }
}

impl core::error::Error for FrameError {}

/// A complete, checksum-verified frame found at the start of a receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Frame<'a> {
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The payload: one encoded message.
    pub const fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Bytes the frame occupies in the buffer, header included: drop this many before looking
    /// for the next frame.
    pub const fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Where the payload lies in the buffer that was decoded.
    pub const fn payload_range(&self) -> Range<usize> {
        HEADER_LEN..self.frame_len()
    }

    /// Decodes the payload.
    ///
    /// # Errors
    /// As [`decode_message`].
    pub fn message(&self) -> Result<Message<'a>, DecodeError> {
        decode_message(self.payload)
    }
}

/// What [`FrameDecoder::decode`] found at the start of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Decoded<'a> {
    /// The buffer holds only part of a frame; at least `needed` more bytes must arrive (exactly
    /// that many once the header is in).
    Incomplete {
        /// Bytes still missing, at least 1.
        needed: usize,
    },
    /// A whole frame, checksum verified.
    Frame(Frame<'a>),
}

/// Finds frames in bytes received so far, over a buffer the caller owns (sans-IO, no allocation).
///
/// It holds nothing but the limit, so one decoder can be consulted each time more bytes arrive;
/// the caller drops [`Frame::frame_len`] bytes from its buffer after each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameDecoder {
    max_frame: u32,
}

impl FrameDecoder {
    /// A decoder accepting payloads of up to `max_frame` bytes.
    pub const fn new(max_frame: u32) -> Self {
        FrameDecoder { max_frame }
    }

    /// A decoder for the handshake: payloads of up to [`HANDSHAKE_MAX_FRAME`] bytes.
    pub const fn handshake() -> Self {
        Self::new(HANDSHAKE_MAX_FRAME)
    }

    /// The payload limit in force.
    pub const fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Changes the limit, typically to the one agreed once the handshake completes.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// Looks for one frame at the start of `received`. Bytes after that frame are left alone.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] as soon as the length field is in, if it exceeds the limit;
    /// [`FrameError::BadChecksum`] once the whole frame is in, if its CRC-32C does not match.
    pub fn decode<'a>(&self, received: &'a [u8]) -> Result<Decoded<'a>, FrameError> {
        let Some((len_field, _)) = received.split_first_chunk::<4>() else {
            return Ok(Decoded::Incomplete {
                needed: HEADER_LEN - received.len(),
            });
        };
        let len = u32::from_le_bytes(*len_field);
        let too_large = FrameError::TooLarge {
            len,
            max: self.max_frame,
        };
        if len > self.max_frame {
            return Err(too_large);
        }
        let total = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(HEADER_LEN))
            .ok_or(too_large)?;
        let Some((header, payload)) = received
            .get(..total)
            .and_then(|frame| frame.split_first_chunk::<HEADER_LEN>())
        else {
            return Ok(Decoded::Incomplete {
                needed: total - received.len(),
            });
        };
        let [_, _, _, _, c0, c1, c2, c3] = *header;
        if crc32c(payload) != u32::from_le_bytes([c0, c1, c2, c3]) {
            return Err(FrameError::BadChecksum);
        }
        Ok(Decoded::Frame(Frame { payload }))
    }
}

/// The header of a frame carrying `payload`.
fn header(payload: &[u8]) -> Result<[u8; HEADER_LEN], EncodeError> {
    let len = u32::try_from(payload.len()).map_err(|_| EncodeError::TooLarge)?;
    let [l0, l1, l2, l3] = len.to_le_bytes();
    let [c0, c1, c2, c3] = crc32c(payload).to_le_bytes();
    Ok([l0, l1, l2, l3, c0, c1, c2, c3])
}

/// Encodes `message` as one frame at the start of `buf`, without allocating, and returns the
/// frame's length (header included).
///
/// The caller keeps frames within the limit in force, which the peer enforces: passing a buffer
/// of at most `HEADER_LEN + max_frame` bytes guarantees it.
///
/// # Errors
/// [`EncodeError::BufferFull`] if the frame does not fit in `buf`; [`EncodeError::Serialize`] if
/// postcard refuses the message. `buf` may have been written to.
pub fn encode_frame(message: &Message<'_>, buf: &mut [u8]) -> Result<usize, EncodeError> {
    let (head, body) = buf
        .split_first_chunk_mut::<HEADER_LEN>()
        .ok_or(EncodeError::BufferFull)?;
    let payload =
        postcard::to_slice(message, body).map_err(|err| EncodeError::from_postcard(&err))?;
    *head = header(payload)?;
    Ok(HEADER_LEN + payload.len())
}

/// Appends `message` as one frame to `out` and returns the frame's length (header included).
///
/// The message is serialized straight into `out` behind a placeholder header, which is then
/// patched with the length and CRC: one pass, no intermediate buffer. As with [`encode_frame`],
/// the caller keeps frames within the peer's agreed limit.
///
/// # Errors
/// [`EncodeError::Serialize`] if postcard refuses the message, [`EncodeError::TooLarge`] if its
/// payload exceeds `u32::MAX` bytes. On error `out` is left as it was.
#[cfg(feature = "alloc")]
pub fn encode_frame_into(
    message: &Message<'_>,
    out: &mut alloc::vec::Vec<u8>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let patched = super::append_postcard(message, out).and_then(|()| {
        let (head, payload) = out
            .get_mut(start..)
            .and_then(|frame| frame.split_first_chunk_mut::<HEADER_LEN>())
            .ok_or(EncodeError::BufferFull)?;
        *head = header(payload)?;
        Ok(HEADER_LEN + payload.len())
    });
    if patched.is_err() {
        out.truncate(start);
    }
    patched
}

/// The length of `message`'s payload (its postcard encoding), without encoding it anywhere.
///
/// # Errors
/// [`EncodeError::Serialize`] if postcard refuses the message.
pub fn encoded_len(message: &Message<'_>) -> Result<usize, EncodeError> {
    postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default())
        .map_err(|err| EncodeError::from_postcard(&err))
}

/// Decodes one message from a frame's payload, borrowing its byte and string fields from it.
///
/// # Errors
/// [`DecodeError::UnknownMessage`] if the variant index is beyond this version's messages;
/// [`DecodeError::Truncated`] if the payload ends inside the message;
/// [`DecodeError::TrailingBytes`] if bytes follow it; [`DecodeError::Malformed`] otherwise.
/// Batches inside the message are checked only as they are iterated.
pub fn decode_message(payload: &[u8]) -> Result<Message<'_>, DecodeError> {
    match postcard::take_from_bytes::<Message<'_>>(payload) {
        Ok((message, [])) => Ok(message),
        Ok(_) => Err(DecodeError::TrailingBytes),
        Err(err) => match postcard::take_from_bytes::<u32>(payload) {
            Ok((index, _)) if index >= MESSAGE_VARIANTS => {
                Err(DecodeError::UnknownMessage { index })
            }
            _ => Err(DecodeError::from_postcard(&err)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Attempt, JobId, LeaseId, TaskId};
    use crate::proto::{BatchBuf, ErrorCode, LeaseGrant};

    fn frame_of(message: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        let n = encode_frame_into(message, &mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn slice_and_vec_encodings_agree() {
        let message = Message::Complete {
            lease: LeaseId(300),
            output: b"12345678",
        };
        let mut buf = [0u8; 64];
        let n = encode_frame(&message, &mut buf).unwrap();
        assert_eq!(&buf[..n], frame_of(&message).as_slice());
        assert_eq!(n, HEADER_LEN + encoded_len(&message).unwrap());
    }

    #[test]
    fn header_layout() {
        let frame = frame_of(&Message::Heartbeat);
        // payload: variant 6, one byte.
        assert_eq!(&frame[..4], &1u32.to_le_bytes());
        assert_eq!(&frame[4..8], &crc32c(&[6]).to_le_bytes());
        assert_eq!(&frame[8..], &[6]);
    }

    #[test]
    fn encode_into_appends_and_rolls_back_nothing_on_success() {
        let mut out = vec![0xAA, 0xBB];
        let n = encode_frame_into(&Message::Goodbye, &mut out).unwrap();
        assert_eq!(out.len(), 2 + n);
        assert_eq!(&out[..2], &[0xAA, 0xBB]);
        let decoded = FrameDecoder::handshake().decode(&out[2..]).unwrap();
        let Decoded::Frame(frame) = decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!(frame.message().unwrap(), Message::Goodbye);
    }

    #[test]
    fn encode_into_small_buffers_fails_cleanly() {
        let message = Message::Error {
            code: ErrorCode::Other,
            detail: "something went wrong",
        };
        let need = frame_of(&message).len();
        for size in 0..need {
            let mut buf = vec![0u8; size];
            assert_eq!(
                encode_frame(&message, &mut buf),
                Err(EncodeError::BufferFull),
                "{size}"
            );
        }
        let mut buf = vec![0u8; need];
        assert_eq!(encode_frame(&message, &mut buf), Ok(need));
    }

    #[test]
    fn every_prefix_is_incomplete_with_exact_need_after_header() {
        let frame = frame_of(&Message::Fail {
            lease: LeaseId(9),
            retry: crate::proto::Retry::Permanent,
            error: "bad input",
        });
        let decoder = FrameDecoder::new(100);
        for cut in 0..frame.len() {
            match decoder.decode(&frame[..cut]).unwrap() {
                Decoded::Incomplete { needed } => {
                    assert!(needed >= 1);
                    if cut >= 4 {
                        assert_eq!(needed, frame.len() - cut, "cut {cut}");
                    } else {
                        assert_eq!(needed, HEADER_LEN - cut, "cut {cut}");
                    }
                }
                Decoded::Frame(f) => panic!("frame from a prefix of {cut}: {f:?}"),
            }
        }
    }

    #[test]
    fn frame_ignores_following_bytes() {
        let mut stream = frame_of(&Message::Ack { lease: LeaseId(1) });
        let first = stream.len();
        stream.extend_from_slice(&frame_of(&Message::Revoke { lease: LeaseId(2) }));
        stream.extend_from_slice(&[1, 2, 3]);
        let decoder = FrameDecoder::handshake();
        let Decoded::Frame(a) = decoder.decode(&stream).unwrap() else {
            panic!()
        };
        assert_eq!(a.frame_len(), first);
        assert_eq!(a.payload_range(), HEADER_LEN..first);
        assert_eq!(a.message().unwrap(), Message::Ack { lease: LeaseId(1) });
        let rest = &stream[a.frame_len()..];
        let Decoded::Frame(b) = decoder.decode(rest).unwrap() else {
            panic!()
        };
        assert_eq!(b.message().unwrap(), Message::Revoke { lease: LeaseId(2) });
        assert_eq!(
            decoder.decode(&rest[b.frame_len()..]).unwrap(),
            Decoded::Incomplete { needed: 5 }
        );
    }

    #[test]
    fn oversized_length_rejected_from_four_bytes() {
        let decoder = FrameDecoder::new(16);
        let header = 17u32.to_le_bytes();
        assert_eq!(
            decoder.decode(&header[..3]).unwrap(),
            Decoded::Incomplete { needed: 5 }
        );
        assert_eq!(
            decoder.decode(&header),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        let huge = u32::MAX.to_le_bytes();
        assert_eq!(
            FrameDecoder::new(u32::MAX - 1).decode(&huge),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: u32::MAX - 1
            })
        );
        // At the limit it waits for the body instead.
        assert_eq!(
            decoder.decode(&16u32.to_le_bytes()).unwrap(),
            Decoded::Incomplete { needed: 20 }
        );
        // A limit of u32::MAX never overflows the arithmetic.
        assert_eq!(
            FrameDecoder::new(u32::MAX).decode(&huge).unwrap(),
            Decoded::Incomplete {
                needed: HEADER_LEN + u32::MAX as usize - 4
            }
        );
    }

    #[test]
    fn bad_checksum_rejected() {
        let frame = frame_of(&Message::Credit { count: 3 });
        let decoder = FrameDecoder::handshake();
        for i in 4..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(
                    decoder.decode(&bad),
                    Err(FrameError::BadChecksum),
                    "byte {i}"
                );
            }
        }
    }

    #[test]
    fn empty_payload_is_a_frame_but_not_a_message() {
        let frame = [0, 0, 0, 0, 0, 0, 0, 0];
        let Decoded::Frame(f) = FrameDecoder::handshake().decode(&frame).unwrap() else {
            panic!()
        };
        assert_eq!(f.payload(), &[] as &[u8]);
        assert_eq!(f.message(), Err(DecodeError::Truncated));
    }

    #[test]
    fn decode_rejects_trailing_and_unknown() {
        let mut payload = frame_of(&Message::Heartbeat)[HEADER_LEN..].to_vec();
        payload.push(0);
        assert_eq!(decode_message(&payload), Err(DecodeError::TrailingBytes));
        assert_eq!(
            decode_message(&[29]),
            Err(DecodeError::UnknownMessage { index: 29 })
        );
        assert_eq!(
            decode_message(&[0xFF, 0xFF, 0x03]),
            Err(DecodeError::UnknownMessage { index: 0xFFFF })
        );
        // A non-terminated varint is malformed, not unknown.
        assert_eq!(
            decode_message(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::Malformed)
        );
        assert_eq!(decode_message(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode_message(&[4]), Err(DecodeError::Truncated));
        // Credit with a varint that overflows u32.
        assert_eq!(
            decode_message(&[4, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(DecodeError::Malformed)
        );
        // Error with invalid UTF-8 detail.
        assert_eq!(
            decode_message(&[14, 0, 1, 0xFF]),
            Err(DecodeError::Malformed)
        );
        // JobSpec.open must be 0 or 1.
        assert_eq!(
            decode_message(&[15, 0, 0, 0, 0, 1, 2]),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn every_truncation_of_a_payload_errors() {
        let mut grants = BatchBuf::new();
        for i in 0..3u32 {
            grants
                .push(&LeaseGrant {
                    lease: LeaseId(u64::from(i) + 1000),
                    job: JobId(1),
                    task: TaskId(i),
                    attempt: Attempt(0),
                    kind: 0,
                    input: &[1, 2, 3],
                })
                .unwrap();
        }
        let message = Message::Grant(grants.as_batch());
        let frame = frame_of(&message);
        let payload = &frame[HEADER_LEN..];
        assert_eq!(decode_message(payload).unwrap(), message);
        for cut in 0..payload.len() {
            assert!(decode_message(&payload[..cut]).is_err(), "cut {cut}");
        }
    }

    /// A tiny deterministic generator, so the garbage tests need no dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15;
        let decoder = FrameDecoder::new(64);
        let mut buf = [0u8; 80];
        for round in 0..20_000 {
            let len = (xorshift(&mut state) % 80) as usize;
            for b in &mut buf[..len] {
                *b = xorshift(&mut state) as u8;
            }
            // Small leading variant indices, so most rounds reach deep into the decoder.
            if len > 0 && round % 2 == 0 {
                buf[0] %= 27;
            }
            let input = &buf[..len];
            let _ = decoder.decode(input);
            if let Ok(message) = decode_message(input) {
                let again = frame_of(&message);
                assert_eq!(decode_message(&again[HEADER_LEN..]).unwrap(), message);
            }
        }
    }

    #[test]
    fn error_codes_and_display() {
        assert_eq!(FrameError::BadChecksum.code(), ErrorCode::BadMessage);
        assert_eq!(
            FrameError::TooLarge { len: 2, max: 1 }.code(),
            ErrorCode::FrameTooLarge
        );
        assert_eq!(
            FrameError::TooLarge {
                len: 2048,
                max: 1024
            }
            .to_string(),
            "frame payload of 2048 bytes exceeds the limit of 1024"
        );
        assert_eq!(
            DecodeError::UnknownMessage { index: 30 }.to_string(),
            "unknown message variant 30"
        );
    }
}
