//! The byte streams Colony runs over: plain TCP, TLS, and WebSocket (plain or over TLS), named
//! by a URL, and one [`Stream`] type a connector reads and writes whatever the transport.
//!
//! | URL | Transport |
//! | --- | --- |
//! | `host:port`, `tcp://host:port` | TCP |
//! | `tls://host:port` | TLS over TCP |
//! | `ws://host:port/path` | WebSocket, the Colony byte stream inside binary messages |
//! | `wss://host:port/path` | WebSocket over TLS |
//!
//! A Colony server serves all four on its one port (it tells them apart by their first bytes),
//! so the port defaults to [`DEFAULT_PORT`] for every scheme.
//!
//! Invariants:
//! - The framing and the handshake above a [`Stream`] are the same on every transport: a bridge
//!   can forward bytes without understanding them.
//! - TLS needs a [`ClientTls`]; asking for `tls://` or `wss://` without one is an error, never a
//!   silent downgrade to plain text.

mod prefixed;
pub mod ws;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub use prefixed::Prefixed;
pub use ws::WsStream;

use crate::server::DEFAULT_PORT;
use crate::tls::{ClientTls, TlsError};

/// How bytes travel between a peer and the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    /// The URL scheme (`tcp`, `tls`, `ws`, `wss`).
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// Whether the bytes are encrypted.
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// A URL could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad server address {url:?}: {reason}")]
pub struct EndpointError {
    url: String,
    reason: &'static str,
}

/// Where a server is: transport, host, port and (for WebSocket) path. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    transport: Transport,
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    /// Parses `host:port`, `tcp://host:port`, `tls://host:port`, `ws://host:port/path` or
    /// `wss://host:port/path`. The port defaults to [`DEFAULT_PORT`], the path to `/`. An IPv6
    /// host goes in brackets (`[::1]:7878`).
    ///
    /// # Errors
    /// [`EndpointError`] for an unknown scheme, an empty host, a bad port, or a path on a
    /// transport that has none.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let bad = |reason| EndpointError {
            url: url.to_owned(),
            reason,
        };
        let (transport, rest) = match url.split_once("://") {
            None => (Transport::Tcp, url),
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "tcp" => (Transport::Tcp, rest),
                "tls" => (Transport::Tls, rest),
                "ws" => (Transport::Ws, rest),
                "wss" => (Transport::Wss, rest),
                _ => return Err(bad("unknown scheme (use tcp, tls, ws or wss)")),
            },
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if !path.is_empty() && !matches!(transport, Transport::Ws | Transport::Wss) {
            return Err(bad("only ws:// and wss:// addresses have a path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("junk after ']'"))?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            None => DEFAULT_PORT,
        };
        Ok(Endpoint {
            transport,
            host: host.to_owned(),
            port,
            path: if path.is_empty() { "/" } else { path }.to_owned(),
        })
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The host (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The WebSocket path (`/` for other transports).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `host:port`, bracketing an IPv6 host.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport, self.authority())?;
        if matches!(self.transport, Transport::Ws | Transport::Wss) {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("cannot connect: {0}")]
    Io(io::Error),
    /// A `tls://` or `wss://` address, and no TLS settings to trust the server with.
    #[error("{0} needs TLS settings (a CA file or a pinned certificate)")]
    NoTls(String),
    /// The TLS settings do not fit this server (a bad server name).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS handshake failed (untrusted certificate, ...).
    #[error("tls handshake with {endpoint} failed: {error}")]
    TlsHandshake {
        /// The server.
        endpoint: String,
        /// What failed.
        error: io::Error,
    },
    /// The WebSocket upgrade failed.
    #[error("websocket upgrade with {endpoint} failed: {reason}")]
    WebSocket {
        /// The server.
        endpoint: String,
        /// What failed.
        reason: String,
    },
}

impl ConnectError {
    /// Whether trying again later cannot help (a TLS configuration or trust problem).
    pub fn is_permanent(&self) -> bool {
        match self {
            ConnectError::NoTls(_) | ConnectError::Tls(_) => true,
            // rustls reports certificate and protocol faults as `InvalidData`.
            ConnectError::TlsHandshake { error, .. } => error.kind() == io::ErrorKind::InvalidData,
            ConnectError::Io(_) | ConnectError::WebSocket { .. } => false,
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

/// A connected byte stream on any transport: read and write it as one stream.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// WebSocket over TCP or TLS (the inner stream).
    Ws(Box<WsStream<Stream>>),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Stream").field(&self.transport()).finish()
    }
}

impl Stream {
    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            Stream::Tcp(_) => Transport::Tcp,
            Stream::Tls(_) => Transport::Tls,
            Stream::Ws(ws) => match ws.get_ref().transport() {
                Transport::Tls | Transport::Wss => Transport::Wss,
                Transport::Tcp | Transport::Ws => Transport::Ws,
            },
        }
    }
}

/// The read half of a [`Stream`] (see [`Stream::into_split`]).
#[derive(Debug)]
pub enum ReadHalf {
    /// TCP's own half: no lock between the halves.
    Tcp(OwnedReadHalf),
    /// A TLS or WebSocket stream's half (the halves share a lock).
    Other(tokio::io::ReadHalf<Stream>),
}

/// The write half of a [`Stream`] (see [`Stream::into_split`]).
#[derive(Debug)]
pub enum WriteHalf {
    /// TCP's own half.
    Tcp(OwnedWriteHalf),
    /// A TLS or WebSocket stream's half.
    Other(tokio::io::WriteHalf<Stream>),
}

impl Stream {
    /// Splits into halves for a reader and a writer task; TCP's halves share no lock.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(tcp) => {
                let (r, w) = tcp.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            other => {
                let (r, w) = tokio::io::split(other);
                (ReadHalf::Other(r), WriteHalf::Other(w))
            }
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Other(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Other(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Other(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Other(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Connects to `endpoint`: TCP (with `TCP_NODELAY`), then the TLS handshake with `tls` for
/// `tls://` and `wss://`, then the WebSocket upgrade for `ws://` and `wss://`. No timeout is
/// applied.
///
/// # Errors
/// A [`ConnectError`].
pub async fn connect(endpoint: &Endpoint, tls: Option<&ClientTls>) -> Result<Stream, ConnectError> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
    tcp.set_nodelay(true)?;
    let base = if endpoint.transport.is_tls() {
        let tls = tls.ok_or_else(|| ConnectError::NoTls(endpoint.to_string()))?;
        let (connector, name) = tls.connector(&endpoint.host)?;
        let stream =
            connector
                .connect(name, tcp)
                .await
                .map_err(|error| ConnectError::TlsHandshake {
                    endpoint: endpoint.to_string(),
                    error,
                })?;
        Stream::Tls(Box::new(stream))
    } else {
        Stream::Tcp(tcp)
    };
    match endpoint.transport {
        Transport::Tcp | Transport::Tls => Ok(base),
        Transport::Ws | Transport::Wss => {
            let url = format!("ws://{}{}", endpoint.authority(), endpoint.path);
            let ws = ws::connect(&url, base)
                .await
                .map_err(|reason| ConnectError::WebSocket {
                    endpoint: endpoint.to_string(),
                    reason,
                })?;
            Ok(Stream::Ws(Box::new(ws)))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let e = Endpoint::parse("10.0.0.1:7700").unwrap();
        assert_eq!(
            (e.transport(), e.host(), e.port()),
            (Transport::Tcp, "10.0.0.1", 7700)
        );
        let e = Endpoint::parse("tls://example.org").unwrap();
        assert_eq!((e.transport(), e.port()), (Transport::Tls, DEFAULT_PORT));
        let e = Endpoint::parse("ws://h:1/colony").unwrap();
        assert_eq!((e.transport(), e.path()), (Transport::Ws, "/colony"));
        assert_eq!(e.to_string(), "ws://h:1/colony");
        let e = Endpoint::parse("WSS://[::1]:9").unwrap();
        assert_eq!(
            (e.transport(), e.host(), e.port(), e.path()),
            (Transport::Wss, "::1", 9, "/")
        );
        assert_eq!(e.to_string(), "wss://[::1]:9/");
        let e = Endpoint::parse("[::1]").unwrap();
        assert_eq!((e.host(), e.port()), ("::1", DEFAULT_PORT));
        for bad in [
            "http://h:1",
            ":1",
            "h:99999",
            "tcp://h:1/x",
            "[::1",
            "[::1]x",
            "ws://:1/",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let err = Endpoint::parse("h:x").unwrap_err();
        assert_eq!(err.to_string(), "bad server address \"h:x\": bad port");
    }

    #[tokio::test]
    async fn tls_without_settings_is_an_error_not_a_downgrade() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let e = Endpoint::parse(&format!("tls://127.0.0.1:{port}")).unwrap();
        let err = connect(&e, None).await.unwrap_err();
        assert!(matches!(err, ConnectError::NoTls(_)), "{err}");
        assert!(err.is_permanent());
    }
}
