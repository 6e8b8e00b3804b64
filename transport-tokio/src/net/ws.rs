//! [`WsStream`]: a WebSocket connection as one byte stream (`AsyncRead + AsyncWrite`), so the
//! Colony framing and handshake run over it unchanged.
//!
//! The Colony byte stream travels in binary messages; message boundaries mean nothing (a frame
//! may span messages, a message may hold many frames). A browser or an iPad app speaks the
//! same: open `ws://host:port/` (any path), send the frames as binary messages, read the
//! replies likewise.
//!
//! Invariants:
//! - A text message is a protocol violation: reading fails with `InvalidData`.
//! - Pings are answered by the WebSocket layer; pongs are skipped; a close message is the end of
//!   the stream.
//! - One write becomes one binary message of at most [`MAX_WRITE`] bytes; nothing is sent until
//!   the stream is flushed (every writer of Colony frames flushes).
//! - A received message is bounded (the WebSocket layer refuses larger ones before buffering
//!   them whole), so a peer cannot make us hold more than that per connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use colony_core::proto::{DEFAULT_MAX_FRAME, HEADER_LEN};
use futures_core::Stream as _;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// The most bytes one write sends as one message.
pub const MAX_WRITE: usize = 256 * 1024;

/// Room above a frame's payload for its header and the bytes of a neighbouring frame.
const MESSAGE_SLACK: usize = 64 * 1024;

/// The largest message accepted by a peer that accepts frames of `max_frame` payload bytes.
pub(crate) fn max_message(max_frame: u32) -> usize {
    (max_frame as usize + HEADER_LEN + MESSAGE_SLACK).max(MAX_WRITE)
}

fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// See the module docs.
#[derive(Debug)]
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The binary message being read, from `at`.
    rx: Bytes,
    at: usize,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        WsStream {
            ws,
            rx: Bytes::new(),
            at: 0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The stream the WebSocket runs on.
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }
}

/// Runs the client's upgrade over `stream` (`url` gives the host and path) and returns the
/// byte stream. The error is a description.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    url: &str,
    stream: S,
) -> Result<WsStream<S>, String> {
    let config = config(max_message(DEFAULT_MAX_FRAME));
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(WsStream::new(ws))
}

/// The server's half of the upgrade, once the request was read and checked: answers `101` with
/// the accept key for `key` (the request's `Sec-WebSocket-Key`) and returns the byte stream.
/// `early` holds bytes read after the request (the client's first messages, if it did not
/// wait).
///
/// # Errors
/// The stream's, writing the answer.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    key: &[u8],
    early: Vec<u8>,
    max_frame: u32,
) -> io::Result<WsStream<S>> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.flush().await?;
    let config = config(max_message(max_frame));
    let ws = WebSocketStream::from_partially_read(stream, early, Role::Server, Some(config)).await;
    Ok(WsStream::new(ws))
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let rest = this.rx.get(this.at..).unwrap_or_default();
            if !rest.is_empty() {
                let n = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..n).unwrap_or_default());
                this.at += n;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                // The end of the stream: nothing put in `buf`.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(bytes))) => {
                    this.rx = bytes;
                    this.at = 0;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a colony websocket (frames go in binary messages)",
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_error)?;
        let n = buf.len().min(MAX_WRITE);
        let message = Message::Binary(Bytes::copy_from_slice(buf.get(..n).unwrap_or_default()));
        Pin::new(&mut this.ws)
            .start_send(message)
            .map_err(ws_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(ws_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    /// A client and a server `WsStream` joined by an in-memory pipe.
    async fn pair() -> (
        WsStream<tokio::io::DuplexStream>,
        WsStream<tokio::io::DuplexStream>,
    ) {
        let (c, s) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut s = BufReader::new(s);
            let mut key = String::new();
            loop {
                let mut line = String::new();
                s.read_line(&mut line).await.unwrap();
                if let Some(k) = line.strip_prefix("Sec-WebSocket-Key: ") {
                    key = k.trim().to_owned();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let early = s.buffer().to_vec();
            accept(s.into_inner(), key.as_bytes(), early, 1024)
                .await
                .unwrap()
        });
        let client = connect("ws://test/colony", c).await.unwrap();
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn bytes_cross_in_both_directions_whatever_the_write_sizes() {
        let (mut client, mut server) = pair().await;
        let big: Vec<u8> = (0..MAX_WRITE * 2 + 7).map(|i| i as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            client.write_all(b"!").await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), big.len() + 1);
        assert_eq!(&got[..big.len()], &big[..]);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_text_message_is_refused() {
        let (c, s) = tokio::io::duplex(1 << 16);
        let raw = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(c, Role::Client, None).await;
            let mut ws = ws;
            futures_sink_send(&mut ws, Message::text("hello")).await;
            ws
        });
        let ws = WebSocketStream::from_raw_socket(s, Role::Server, None).await;
        let mut server = WsStream::new(ws);
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(raw.await.unwrap());
    }

    async fn futures_sink_send<S: AsyncRead + AsyncWrite + Unpin>(
        ws: &mut WebSocketStream<S>,
        message: Message,
    ) {
        std::future::poll_fn(|cx| Pin::new(&mut *ws).poll_ready(cx))
            .await
            .unwrap();
        Pin::new(&mut *ws).start_send(message).unwrap();
        std::future::poll_fn(|cx| Pin::new(&mut *ws).poll_flush(cx))
            .await
            .unwrap();
    }
}
