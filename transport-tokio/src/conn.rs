//! Framed connections over any byte stream, and the connector's side of the handshake.
//!
//! [`FramedConn`] wraps any `AsyncRead + AsyncWrite + Unpin` stream (TCP today; TLS or a
//! WebSocket adapter later) with the core's framing ([`colony_core::proto`]): the read side keeps
//! one growing buffer and yields each frame's payload borrowed from it; the write side encodes
//! messages straight into one buffer and writes it whole on [`flush`](FramedConn::flush). Split
//! it into a [`FrameReader`] and a [`FrameWriter`] (with [`FramedConn::split_with`], or
//! [`FramedConn::into_tcp_split`] for TCP) to read and write from different tasks; buffered bytes
//! are kept.
//!
//! [`connect_and_handshake`] runs the connector's handshake (worker, task client or observer)
//! over a fresh stream and returns the connection ready for use.
//!
//! Invariants:
//! - Every frame is checked by the core's [`FrameDecoder`] before a byte of it is interpreted: its
//!   length against the limit in force as soon as its header is in, then its CRC.
//! - The limit starts at [`HANDSHAKE_MAX_FRAME`] for both directions and changes only through
//!   [`set_max_frame`](FramedConn::set_max_frame) (done by the handshake helpers once the
//!   handshake succeeded). A reader never buffers more than one frame's header and payload beyond
//!   what it has read in one go.
//! - An outgoing message above the limit is refused before anything is written
//!   ([`ConnError::TooLarge`]); the write buffer is left as it was.
//! - After any error the connection is unusable: framing on a byte stream cannot resynchronise.

use std::io;
use std::ops::Range;

use colony_core::proto::{
    self, ClientHandshake, DecodeError, EncodeError, ErrorCode, FrameDecoder, FrameError,
    HANDSHAKE_MAX_FRAME, HEADER_LEN, Message, Role, Welcome, decode_message, encode_frame_into,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::secret::Secret;

/// Bytes a reader asks the stream for at least, per read.
const READ_CHUNK: usize = 64 * 1024;

/// A framed connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the stream between two frames.
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed by peer in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// A frame was refused: too large or a bad checksum.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// A frame's payload is not a message.
    #[error("bad message: {0}")]
    Decode(#[from] DecodeError),
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] EncodeError),
    /// An outgoing message is above the frame limit in force.
    #[error("outgoing {message} of {len} bytes exceeds the frame limit of {max}")]
    TooLarge {
        /// The message's name.
        message: &'static str,
        /// Its payload length.
        len: usize,
        /// The limit.
        max: u32,
    },
}

impl ConnError {
    /// The reason code to send the peer in a [`Message::Error`] before closing, if the fault is
    /// the peer's.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConnError::Frame(e) => Some(e.code()),
            ConnError::Decode(_) => Some(ErrorCode::BadMessage),
            _ => None,
        }
    }
}

/// The read half's state: a buffer whose bytes `start..` are not yet consumed, and the decoder.
#[derive(Debug)]
struct ReadState {
    buf: Vec<u8>,
    start: usize,
    /// Bytes the frame at `start` still lacks, from the last decode.
    needed: usize,
    decoder: FrameDecoder,
}

impl ReadState {
    fn new() -> Self {
        ReadState {
            buf: Vec::new(),
            start: 0,
            needed: HEADER_LEN,
            decoder: FrameDecoder::handshake(),
        }
    }

    /// The next whole frame among the buffered bytes: its payload's range in `buf`.
    fn next_frame(&mut self) -> Result<Option<Range<usize>>, ConnError> {
        let rest = self.buf.get(self.start..).unwrap_or_default();
        match self.decoder.decode(rest)? {
            proto::Decoded::Frame(frame) => {
                let payload = frame.payload_range();
                let range = self.start + payload.start..self.start + payload.end;
                self.start += frame.frame_len();
                self.needed = HEADER_LEN;
                Ok(Some(range))
            }
            proto::Decoded::Incomplete { needed } => {
                self.needed = needed;
                Ok(None)
            }
        }
    }

    /// Drops consumed bytes, then reads at least once from `io`.
    async fn fill<R: AsyncRead + Unpin + ?Sized>(&mut self, io: &mut R) -> Result<(), ConnError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(self.needed.max(READ_CHUNK));
        let n = io.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(if self.buf.is_empty() {
                ConnError::Closed
            } else {
                ConnError::Truncated {
                    buffered: self.buf.len(),
                }
            });
        }
        Ok(())
    }

    async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        io: &mut R,
    ) -> Result<&[u8], ConnError> {
        loop {
            if let Some(range) = self.next_frame()? {
                return Ok(self.buf.get(range).unwrap_or_default());
            }
            self.fill(io).await?;
        }
    }

    fn split_consumed(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        spare.extend_from_slice(self.buf.get(self.start..).unwrap_or_default());
        let mut consumed = std::mem::replace(&mut self.buf, spare);
        consumed.truncate(self.start);
        self.start = 0;
        consumed
    }
}

/// The write half's state: encoded frames waiting to be written, and the limit.
#[derive(Debug)]
struct WriteState {
    buf: Vec<u8>,
    max_frame: u32,
}

impl WriteState {
    fn new() -> Self {
        WriteState {
            buf: Vec::new(),
            max_frame: HANDSHAKE_MAX_FRAME,
        }
    }

    fn queue(&mut self, message: &Message<'_>) -> Result<(), ConnError> {
        let start = self.buf.len();
        let len = encode_frame_into(message, &mut self.buf)? - HEADER_LEN;
        if len > self.max_frame as usize {
            self.buf.truncate(start);
            return Err(ConnError::TooLarge {
                message: message.name(),
                len,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    async fn flush<W: AsyncWrite + Unpin + ?Sized>(&mut self, io: &mut W) -> Result<(), ConnError> {
        if !self.buf.is_empty() {
            io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        io.flush().await?;
        Ok(())
    }
}

/// A framed connection over one stream. See the module docs.
#[derive(Debug)]
pub struct FramedConn<S> {
    io: S,
    read: ReadState,
    write: WriteState,
}

impl<S> FramedConn<S> {
    /// Wraps `io`, with the handshake's frame limit ([`HANDSHAKE_MAX_FRAME`]) both ways.
    pub fn new(io: S) -> Self {
        FramedConn {
            io,
            read: ReadState::new(),
            write: WriteState::new(),
        }
    }

    /// The payload limit in force (both directions).
    pub fn max_frame(&self) -> u32 {
        self.read.decoder.max_frame()
    }

    /// Sets the payload limit for both directions (the one agreed in the handshake).
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.read.decoder.set_max_frame(max_frame);
        self.write.max_frame = max_frame;
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Encodes `message` into the write buffer; nothing is written until
    /// [`flush`](Self::flush).
    ///
    /// # Errors
    /// [`ConnError::TooLarge`] if it is above the limit, [`ConnError::Encode`] if it cannot be
    /// encoded; the buffer is then unchanged.
    pub fn queue(&mut self, message: &Message<'_>) -> Result<(), ConnError> {
        self.write.queue(message)
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.write.buf.len()
    }

    /// Splits into a reader and a writer with `split` (say `tokio::io::split`), keeping buffered
    /// bytes and limits.
    pub fn split_with<R, W>(
        self,
        split: impl FnOnce(S) -> (R, W),
    ) -> (FrameReader<R>, FrameWriter<W>) {
        let (r, w) = split(self.io);
        (
            FrameReader {
                io: r,
                state: self.read,
            },
            FrameWriter {
                io: w,
                state: self.write,
            },
        )
    }

    /// The stream back, dropping buffered bytes.
    pub fn into_inner(self) -> S {
        self.io
    }
}

impl FramedConn<TcpStream> {
    /// Splits a TCP connection into owned halves (no lock between them).
    pub fn into_tcp_split(self) -> (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>) {
        self.split_with(TcpStream::into_split)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedConn<S> {
    /// Reads the next frame and returns its payload, borrowed until the next call.
    ///
    /// # Errors
    /// [`ConnError::Closed`] on a clean end of stream, [`ConnError::Truncated`] on an end inside
    /// a frame, [`ConnError::Frame`] for a frame that is too large or corrupt, [`ConnError::Io`].
    pub async fn read_frame(&mut self) -> Result<&[u8], ConnError> {
        self.read.read_frame(&mut self.io).await
    }

    /// Reads and decodes the next message, borrowing from the read buffer.
    ///
    /// # Errors
    /// As [`read_frame`](Self::read_frame), and [`ConnError::Decode`] if the payload is not a
    /// message.
    pub async fn read_message(&mut self) -> Result<Message<'_>, ConnError> {
        let payload = self.read.read_frame(&mut self.io).await?;
        Ok(decode_message(payload)?)
    }

    /// Writes every queued byte and flushes the stream.
    ///
    /// # Errors
    /// [`ConnError::Io`]; what was written is then unknown.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.write.flush(&mut self.io).await
    }

    /// Queues `message` and flushes.
    ///
    /// # Errors
    /// As [`queue`](Self::queue) and [`flush`](Self::flush).
    pub async fn send(&mut self, message: &Message<'_>) -> Result<(), ConnError> {
        self.write.queue(message)?;
        self.flush().await
    }
}

/// The read half of a split [`FramedConn`].
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    state: ReadState,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a read stream, with the handshake's frame limit.
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            state: ReadState::new(),
        }
    }

    /// The payload limit in force.
    pub fn max_frame(&self) -> u32 {
        self.state.decoder.max_frame()
    }

    /// Sets the payload limit.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.state.decoder.set_max_frame(max_frame);
    }

    /// Reads the next frame and returns its payload, borrowed until the next call.
    ///
    /// # Errors
    /// As [`FramedConn::read_frame`].
    pub async fn read_frame(&mut self) -> Result<&[u8], ConnError> {
        self.state.read_frame(&mut self.io).await
    }

    /// Reads and decodes the next message.
    ///
    /// # Errors
    /// As [`FramedConn::read_message`].
    pub async fn read_message(&mut self) -> Result<Message<'_>, ConnError> {
        let payload = self.state.read_frame(&mut self.io).await?;
        Ok(decode_message(payload)?)
    }

    /// Reads once from the stream (at least one byte), for callers that then take every
    /// buffered frame with [`next_buffered`](Self::next_buffered).
    ///
    /// # Errors
    /// [`ConnError::Closed`], [`ConnError::Truncated`] or [`ConnError::Io`], as
    /// [`read_frame`](Self::read_frame).
    pub async fn fill(&mut self) -> Result<(), ConnError> {
        self.state.fill(&mut self.io).await
    }

    /// The next whole frame already buffered, without reading: its payload's range in
    /// [`buffer`](Self::buffer), valid until the next [`fill`](Self::fill) or
    /// [`split_consumed`](Self::split_consumed) (whose returned vector it then indexes).
    ///
    /// # Errors
    /// [`ConnError::Frame`] for a frame that is too large or corrupt.
    pub fn next_buffered(&mut self) -> Result<Option<Range<usize>>, ConnError> {
        self.state.next_frame()
    }

    /// The read buffer, which the ranges from [`next_buffered`](Self::next_buffered) index.
    pub fn buffer(&self) -> &[u8] {
        &self.state.buf
    }

    /// Hands over the consumed part of the buffer (every frame taken since the last `fill`):
    /// returns the buffer truncated to it, so ranges from [`next_buffered`](Self::next_buffered)
    /// index it, and carries on with `spare` (cleared) holding the unconsumed bytes. Lets a
    /// reader pass frames to another task without copying them.
    pub fn split_consumed(&mut self, spare: Vec<u8>) -> Vec<u8> {
        self.state.split_consumed(spare)
    }

    /// The stream back, dropping buffered bytes.
    pub fn into_inner(self) -> R {
        self.io
    }
}

/// The write half of a split [`FramedConn`].
#[derive(Debug)]
pub struct FrameWriter<W> {
    io: W,
    state: WriteState,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a write stream, with the handshake's frame limit.
    pub fn new(io: W) -> Self {
        FrameWriter {
            io,
            state: WriteState::new(),
        }
    }

    /// The payload limit in force.
    pub fn max_frame(&self) -> u32 {
        self.state.max_frame
    }

    /// Sets the payload limit.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.state.max_frame = max_frame;
    }

    /// Encodes `message` into the write buffer.
    ///
    /// # Errors
    /// As [`FramedConn::queue`].
    pub fn queue(&mut self, message: &Message<'_>) -> Result<(), ConnError> {
        self.state.queue(message)
    }

    /// Appends bytes that already are whole frames (encoded elsewhere within the limit).
    pub fn queue_encoded(&mut self, frames: &[u8]) {
        self.state.buf.extend_from_slice(frames);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.state.buf.len()
    }

    /// Writes every queued byte and flushes the stream.
    ///
    /// # Errors
    /// As [`FramedConn::flush`].
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.state.flush(&mut self.io).await
    }

    /// Queues `message` and flushes.
    ///
    /// # Errors
    /// As [`FramedConn::send`].
    pub async fn send(&mut self, message: &Message<'_>) -> Result<(), ConnError> {
        self.state.queue(message)?;
        self.flush().await
    }

    /// Flushes, then shuts the stream's write side down (TCP: sends FIN).
    ///
    /// # Errors
    /// [`ConnError::Io`].
    pub async fn shutdown(&mut self) -> Result<(), ConnError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    /// The stream back, dropping queued bytes.
    pub fn into_inner(self) -> W {
        self.io
    }
}

/// The connector's handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The connection failed or sent a bad frame.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// A handshake rule was broken: another protocol version, a server that does not know the
    /// secret, an unusable frame limit.
    #[error(transparent)]
    Protocol(#[from] proto::HandshakeError),
    /// The server refused us with a reason.
    #[error("server refused the connection ({code:?}): {detail}")]
    Refused {
        /// Its reason code.
        code: ErrorCode,
        /// Its detail text.
        detail: String,
    },
    /// The server sent a message that has no place in the handshake.
    #[error("unexpected {0} message during the handshake")]
    Unexpected(&'static str),
    /// The server is shutting down.
    #[error("server is going away")]
    GoingAway,
    /// No random nonce could be drawn.
    #[error("cannot draw a random nonce: {0}")]
    Random(getrandom::Error),
}

impl HandshakeError {
    /// Whether the secret is wrong (on either side): retrying will not help.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            HandshakeError::Protocol(proto::HandshakeError::Auth(_))
                | HandshakeError::Refused {
                    code: ErrorCode::AuthFailed,
                    ..
                }
        )
    }
}

/// Reads the next message for the handshake, turning a server's `Error` or `ServerGoingAway`
/// into an error.
async fn handshake_message<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut FramedConn<S>,
) -> Result<Message<'_>, HandshakeError> {
    match conn.read_message().await? {
        Message::Error { code, detail } => Err(HandshakeError::Refused {
            code,
            detail: detail.to_owned(),
        }),
        Message::ServerGoingAway => Err(HandshakeError::GoingAway),
        other => Ok(other),
    }
}

/// Runs the connector's side of the handshake over `stream` as `role`, accepting frames of up to
/// `max_frame` bytes, and returns the connection (its limit switched to the agreed one) and the
/// server's [`Welcome`].
///
/// No timeout is applied: wrap the call in `tokio::time::timeout` if the server may hang.
///
/// # Errors
/// A [`HandshakeError`]. When the server's proof is wrong, an `Error` frame is sent to it
/// (best effort) before returning.
pub async fn connect_and_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    secret: &Secret,
    role: Role<'_>,
    max_frame: u32,
) -> Result<(FramedConn<S>, Welcome), HandshakeError> {
    let mut nonce = [0u8; proto::NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(HandshakeError::Random)?;
    let mut handshake = ClientHandshake::new(nonce, max_frame);
    let mut conn = FramedConn::new(stream);
    conn.send(&Message::ClientHello(handshake.hello())).await?;

    let server_hello = match handshake_message(&mut conn).await? {
        Message::ServerHello(hello) => hello,
        other => return Err(HandshakeError::Unexpected(other.name())),
    };
    let join = match handshake.server_hello(secret.as_bytes(), &server_hello, role) {
        Ok(join) => join,
        Err(e) => {
            let refusal = Message::Error {
                code: e.code(),
                detail: "handshake refused by connector",
            };
            let _ = conn.send(&refusal).await;
            return Err(e.into());
        }
    };
    conn.send(&Message::Join(join)).await?;

    let welcome = match handshake_message(&mut conn).await? {
        Message::Welcome(welcome) => welcome,
        other => return Err(HandshakeError::Unexpected(other.name())),
    };
    let agreed = handshake.welcomed()?;
    conn.set_max_frame(agreed);
    Ok((conn, welcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::LeaseId;
    use colony_core::proto::encode_frame_into;

    fn frame(message: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame_into(message, &mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn reads_frames_split_at_every_byte() {
        let mut stream = frame(&Message::Credit { count: 7 });
        stream.extend(frame(&Message::Ack { lease: LeaseId(9) }));
        stream.extend(frame(&Message::Heartbeat));
        let (client, server) = tokio::io::duplex(4);
        let writer = tokio::spawn(async move {
            let mut client = client;
            for b in stream {
                client.write_all(&[b]).await.unwrap();
            }
        });
        let mut conn = FramedConn::new(server);
        assert_eq!(
            conn.read_message().await.unwrap(),
            Message::Credit { count: 7 }
        );
        assert_eq!(
            conn.read_message().await.unwrap(),
            Message::Ack { lease: LeaseId(9) }
        );
        assert_eq!(conn.read_message().await.unwrap(), Message::Heartbeat);
        writer.await.unwrap();
        assert!(matches!(conn.read_frame().await, Err(ConnError::Closed)));
    }

    #[tokio::test]
    async fn oversized_and_corrupt_frames_are_refused() {
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(&(HANDSHAKE_MAX_FRAME + 1).to_le_bytes())
            .await
            .unwrap();
        let mut conn = FramedConn::new(server);
        let err = conn.read_frame().await.unwrap_err();
        assert!(
            matches!(err, ConnError::Frame(FrameError::TooLarge { .. })),
            "{err}"
        );
        assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge));

        let (mut client, server) = tokio::io::duplex(64);
        let mut bad = frame(&Message::Heartbeat);
        bad[8] ^= 1;
        client.write_all(&bad).await.unwrap();
        let mut conn = FramedConn::new(server);
        assert!(matches!(
            conn.read_frame().await,
            Err(ConnError::Frame(FrameError::BadChecksum))
        ));
    }

    #[tokio::test]
    async fn truncated_stream_is_reported() {
        let (mut client, server) = tokio::io::duplex(64);
        let whole = frame(&Message::Credit { count: 1 });
        client.write_all(&whole[..5]).await.unwrap();
        drop(client);
        let mut conn = FramedConn::new(server);
        assert!(matches!(
            conn.read_frame().await,
            Err(ConnError::Truncated { buffered: 5 })
        ));
    }

    #[tokio::test]
    async fn writer_refuses_messages_above_the_limit() {
        let (client, _server) = tokio::io::duplex(64);
        let mut conn = FramedConn::new(client);
        let big = vec![0u8; HANDSHAKE_MAX_FRAME as usize];
        let err = conn
            .queue(&Message::Complete {
                lease: LeaseId(1),
                output: &big,
            })
            .unwrap_err();
        assert!(matches!(err, ConnError::TooLarge { .. }), "{err}");
        assert_eq!(conn.pending(), 0);
        conn.set_max_frame(1 << 20);
        conn.queue(&Message::Complete {
            lease: LeaseId(1),
            output: &big,
        })
        .unwrap();
        assert!(conn.pending() > big.len());
    }

    #[tokio::test]
    async fn split_consumed_hands_over_whole_frames() {
        let mut stream = frame(&Message::Complete {
            lease: LeaseId(1),
            output: b"one",
        });
        stream.extend(frame(&Message::Complete {
            lease: LeaseId(2),
            output: b"two",
        }));
        let second = frame(&Message::Heartbeat);
        stream.extend(&second[..3]);
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(&stream).await.unwrap();
        let (mut reader, _writer) = FramedConn::new(server).split_with(tokio::io::split);
        reader.fill().await.unwrap();
        let mut ranges = Vec::new();
        while let Some(r) = reader.next_buffered().unwrap() {
            ranges.push(r);
        }
        assert_eq!(ranges.len(), 2);
        let chunk = reader.split_consumed(Vec::new());
        assert_eq!(
            decode_message(&chunk[ranges[1].clone()]).unwrap(),
            Message::Complete {
                lease: LeaseId(2),
                output: b"two"
            }
        );
        client.write_all(&second[3..]).await.unwrap();
        assert_eq!(reader.read_message().await.unwrap(), Message::Heartbeat);
    }
}
