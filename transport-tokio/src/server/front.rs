//! The front door: one port carries the Colony protocol over TCP, TLS and WebSocket, and the
//! monitor's HTTP. A connection's first bytes say which.
//!
//! ```text
//!  first 4 bytes ── a length ≤ HANDSHAKE_MAX_FRAME ──────► Colony over TCP
//!               ├─ 0x16 (a TLS record) ── TLS handshake ─► first 4 bytes again:
//!               │                                          Colony over TLS, or HTTP over TLS
//!               └─ an upper-case letter (an HTTP method) ─► HTTP: a WebSocket upgrade
//!                                                          (Colony over WebSocket) or the monitor
//! ```
//!
//! The test is exact: a connector's first frame is a `ClientHello` of at most
//! [`HANDSHAKE_MAX_FRAME`] bytes, so its little-endian length has two zero high bytes, which
//! neither a TLS record (`16 03 0x ..`) nor an HTTP method (`GET `) has. Anything else goes to
//! the Colony reader, which refuses it with a reason.
//!
//! Invariants:
//! - Every Colony connection, whatever its transport, runs the same authenticated handshake
//!   ([`peer::serve_stream`]) before anything reaches the engine.
//! - Sniffing, the TLS handshake and reading an HTTP head all happen within the handshake
//!   timeout, and hold one of the server's connection permits, like any connection.
//! - With [`ServerConfig::require_tls`](super::ServerConfig::require_tls), nothing is served in
//!   plain text: a plain Colony connector gets an `Error` frame, a plain HTTP client a 403.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use colony_core::proto::{ErrorCode, HANDSHAKE_MAX_FRAME, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::monitor::Monitor;
use super::monitor::http::{self, HeadError, Response};
use super::peer::{self, PeerCtx};
use crate::conn::FramedConn;
use crate::net::{Prefixed, Transport, ws};
use crate::tls::ServerTls;

/// Bytes looked at to tell the protocol.
const SNIFF: usize = 4;

/// How long to wait for more when fewer than [`SNIFF`] bytes arrived at first.
const SNIFF_RETRY: Duration = Duration::from_millis(5);

/// Whether plain-text connections are served next to TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plain {
    Allowed,
    Refused,
}

/// What the front door needs besides the Colony handshake.
#[derive(Debug)]
pub(super) struct Front {
    pub(super) tls: Option<ServerTls>,
    pub(super) plain: Plain,
    pub(super) monitor: Monitor,
}

/// The protocol a connection speaks, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sniffed {
    Colony,
    Tls,
    Http,
}

fn sniff(first: &[u8; SNIFF]) -> Sniffed {
    if u32::from_le_bytes(*first) <= HANDSHAKE_MAX_FRAME {
        Sniffed::Colony
    } else if first[0] == 0x16 {
        Sniffed::Tls
    } else if first[0].is_ascii_uppercase() {
        Sniffed::Http
    } else {
        Sniffed::Colony
    }
}

/// Waits until the first [`SNIFF`] bytes are in, without consuming them; `None` if the peer
/// closed first.
async fn peek_first(stream: &TcpStream) -> io::Result<Option<[u8; SNIFF]>> {
    let mut first = [0u8; SNIFF];
    loop {
        match stream.peek(&mut first).await? {
            0 => return Ok(None),
            SNIFF => return Ok(Some(first)),
            // A peer that writes its first bytes one by one: rare, and bounded by the caller's
            // timeout.
            _ => tokio::time::sleep(SNIFF_RETRY).await,
        }
    }
}

/// Reads the first [`SNIFF`] bytes; `None` if the peer closed first.
async fn read_first<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<[u8; SNIFF]>> {
    let mut first = [0u8; SNIFF];
    match stream.read_exact(&mut first).await {
        Ok(_) => Ok(Some(first)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Serves one accepted TCP connection, whatever it speaks.
pub(super) async fn route(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<PeerCtx>,
    permit: OwnedSemaphorePermit,
) {
    let timeout = ctx.handshake_timeout;
    let first = match tokio::time::timeout(timeout, peek_first(&stream)).await {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            log::debug!("connection from {peer} failed before a byte came: {e}");
            return;
        }
        Err(_) => {
            // Silent: answered as a Colony connector whose handshake never came.
            log::warn!("connection from {peer} dropped: nothing sent within {timeout:?}");
            let mut conn = FramedConn::new(stream);
            let _ = conn.queue(&Message::Error {
                code: ErrorCode::Timeout,
                detail: "handshake not finished in time",
            });
            peer::close_gracefully(conn).await;
            return;
        }
    };
    let plain_refused = ctx.front.plain == Plain::Refused;
    match sniff(&first) {
        Sniffed::Colony if plain_refused => refuse_plain_colony(stream, peer).await,
        Sniffed::Colony => {
            peer::serve_stream(
                stream,
                TcpStream::into_split,
                (peer, Transport::Tcp),
                ctx,
                permit,
            )
            .await;
        }
        Sniffed::Http if plain_refused => {
            let _ = tokio::time::timeout(timeout, refuse_plain_http(stream)).await;
        }
        Sniffed::Http => serve_http(stream, peer, Transport::Tcp, ctx, permit).await,
        Sniffed::Tls => serve_tls(stream, peer, ctx, permit).await,
    }
}

async fn refuse_plain_colony(stream: TcpStream, peer: SocketAddr) {
    log::warn!("connection from {peer} refused: plain text, and this server requires TLS");
    let mut conn = FramedConn::new(stream);
    let _ = conn.queue(&Message::Error {
        code: ErrorCode::Other,
        detail: "this server requires TLS (tls:// or wss://)",
    });
    peer::close_gracefully(conn).await;
}

async fn refuse_plain_http(mut stream: TcpStream) {
    if http::read_head(&mut stream).await.is_ok() {
        let _ = Response::text(403, "this server requires TLS: use https://")
            .write(&mut stream, false)
            .await;
    }
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<PeerCtx>,
    permit: OwnedSemaphorePermit,
) {
    let Some(acceptor) = ctx.front.tls.as_ref().map(|t| t.acceptor().clone()) else {
        log::warn!("connection from {peer} dropped: it speaks TLS, and this server has none");
        return;
    };
    let timeout = ctx.handshake_timeout;
    let opened = tokio::time::timeout(timeout, async {
        let mut tls = acceptor.accept(stream).await?;
        let first = read_first(&mut tls).await?;
        Ok::<_, io::Error>(first.map(|first| (first, tls)))
    })
    .await;
    let (first, tls) = match opened {
        Ok(Ok(Some(opened))) => opened,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            log::warn!("connection from {peer} dropped: tls handshake failed: {e}");
            return;
        }
        Err(_) => {
            log::warn!("connection from {peer} dropped: tls handshake not finished in {timeout:?}");
            return;
        }
    };
    let stream = Prefixed::new(first.to_vec(), tls);
    match sniff(&first) {
        Sniffed::Http => serve_http(stream, peer, Transport::Tls, ctx, permit).await,
        Sniffed::Colony | Sniffed::Tls => {
            peer::serve_stream(
                stream,
                tokio::io::split,
                (peer, Transport::Tls),
                ctx,
                permit,
            )
            .await;
        }
    }
}

/// One HTTP request: a WebSocket upgrade (then Colony over it) or a monitor page.
async fn serve_http<S>(
    mut stream: S,
    peer: SocketAddr,
    under: Transport,
    ctx: Arc<PeerCtx>,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let timeout = ctx.handshake_timeout;
    let request = match tokio::time::timeout(timeout, http::read_head(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(HeadError::Io(e))) => {
            log::debug!("http connection from {peer} ended: {e}");
            return;
        }
        Ok(Err(HeadError::TooLarge)) => {
            let answer = Response::text(431, "request head too large");
            let _ = tokio::time::timeout(timeout, answer.write(&mut stream, false)).await;
            return;
        }
        Ok(Err(HeadError::Malformed(why))) => {
            log::debug!("http connection from {peer}: bad request: {why}");
            let answer = Response::text(400, "bad request");
            let _ = tokio::time::timeout(timeout, answer.write(&mut stream, false)).await;
            return;
        }
        Err(_) => {
            log::debug!("http connection from {peer} dropped: no request within {timeout:?}");
            return;
        }
    };
    if request.is_websocket_upgrade() {
        let transport = if under.is_tls() {
            Transport::Wss
        } else {
            Transport::Ws
        };
        let key = request.header("sec-websocket-key").map(str::to_owned);
        let answer = match key {
            _ if request.header("sec-websocket-version") != Some("13") => {
                Response::text(426, "websocket version 13 only")
                    .header("Sec-WebSocket-Version", "13")
            }
            None => Response::text(400, "no Sec-WebSocket-Key"),
            Some(key) => {
                let upgraded = tokio::time::timeout(
                    timeout,
                    ws::accept(stream, key.as_bytes(), request.early, ctx.max_frame),
                )
                .await;
                match upgraded {
                    Ok(Ok(ws)) => {
                        peer::serve_stream(ws, tokio::io::split, (peer, transport), ctx, permit)
                            .await;
                    }
                    Ok(Err(e)) => log::debug!("websocket upgrade from {peer} failed: {e}"),
                    Err(_) => log::debug!("websocket upgrade from {peer} timed out"),
                }
                return;
            }
        };
        let _ = tokio::time::timeout(timeout, answer.write(&mut stream, false)).await;
        return;
    }
    let served =
        tokio::time::timeout(timeout, ctx.front.monitor.serve(&mut stream, &request)).await;
    match served {
        Ok(Ok(status)) => {
            log::debug!(
                "monitor: {under}://{peer} {} {} -> {status}",
                request.method,
                request.path
            );
            let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
        }
        Ok(Err(e)) => log::debug!("monitor: answering {peer} failed: {e}"),
        Err(_) => log::debug!("monitor: {peer} did not take its answer within {timeout:?}"),
    }
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::proto::encode_frame_into;

    #[test]
    fn first_bytes_tell_the_protocol() {
        let mut frame = Vec::new();
        encode_frame_into(&Message::Heartbeat, &mut frame).unwrap();
        let first = |b: &[u8]| -> [u8; SNIFF] { b[..SNIFF].try_into().unwrap() };
        assert_eq!(sniff(&first(&frame)), Sniffed::Colony);
        assert_eq!(sniff(&first(b"GET / HTTP/1.1")), Sniffed::Http);
        assert_eq!(sniff(&first(b"HEAD /")), Sniffed::Http);
        // A TLS 1.2 and a TLS 1.0 record header.
        assert_eq!(sniff(&first(&[0x16, 0x03, 0x03, 0x01, 0x00])), Sniffed::Tls);
        assert_eq!(sniff(&first(&[0x16, 0x03, 0x01, 0x02, 0x00])), Sniffed::Tls);
        // The largest handshake frame is still Colony; garbage goes to the Colony reader.
        assert_eq!(sniff(&HANDSHAKE_MAX_FRAME.to_le_bytes()), Sniffed::Colony);
        assert_eq!(sniff(&[0xff; 4]), Sniffed::Colony);
    }
}
