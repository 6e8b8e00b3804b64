//! Just enough HTTP/1.1 for the monitor and the WebSocket upgrade: read one request head,
//! write one response, close.
//!
//! Invariants:
//! - A head is read within [`MAX_HEAD`] bytes (more is refused with 431) and parsed by
//!   `httparse`; a body is never read (only `GET` and `HEAD` are served).
//! - Every response carries its length and `Connection: close`; the connection ends after it.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head accepted.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// Headers kept per request; more is refused.
const MAX_HEADERS: usize = 48;

/// One request head.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The path, without the query.
    pub(crate) path: String,
    headers: Vec<(String, Vec<u8>)>,
    /// Bytes read after the head (a client's first WebSocket frames, if it did not wait).
    pub(crate) early: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive), as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Whether a header holds `token` in its comma-separated list (case-insensitive).
    pub(crate) fn header_has(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether this asks to become a WebSocket.
    pub(crate) fn is_websocket_upgrade(&self) -> bool {
        self.method == "GET"
            && self.header_has("connection", "upgrade")
            && self.header_has("upgrade", "websocket")
    }
}

/// Why a request head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The stream failed or ended first.
    Io(io::Error),
    /// More than [`MAX_HEAD`] bytes.
    TooLarge,
    /// Not HTTP/1.x.
    Malformed(String),
}

/// Reads one request head (and whatever came with it after the blank line).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(at) = find_end(buf.get(from..).unwrap_or_default()) {
            let end = from + at;
            if end > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            let early = buf.split_off(end);
            return parse(&buf, early);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The offset just past the first `\r\n\r\n`.
fn find_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

fn parse(head: &[u8], early: Vec<u8>) -> Result<Request, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete".into())),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let target = req.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/").to_owned();
    Ok(Request {
        method: req.method.unwrap_or_default().to_owned(),
        path,
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        early,
    })
}

/// A response to write.
#[derive(Debug)]
pub(crate) struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A plain-text response.
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Self {
        let mut body = body.into();
        body.push('\n');
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    /// Adds a header.
    #[must_use]
    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn status(&self) -> u16 {
        self.status
    }

    /// Writes the response (without its body for `HEAD`) and flushes.
    pub(crate) async fn write<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        head_only: bool,
    ) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        stream.write_all(&bytes).await?;
        stream.flush().await
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_head_split_anywhere_and_keeps_what_follows() {
        let (mut a, mut b) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            a.write_all(
                b"GET /api/status?x=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n\
                  Upgrade: WebSocket\r\n\r\nEARLY",
            )
            .await
            .unwrap();
        });
        let req = read_head(&mut b).await.unwrap();
        writer.await.unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/api/status");
        assert_eq!(req.header("HOST"), Some("h"));
        assert!(req.is_websocket_upgrade());
        // The head ended within the last read; what followed it is kept.
        assert!(b"EARLY".starts_with(&req.early));
    }

    #[tokio::test]
    async fn an_endless_head_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let line = format!("GET / HTTP/1.1\r\nX: {}\r\n", "y".repeat(MAX_HEAD));
        a.write_all(line.as_bytes()).await.unwrap();
        assert!(matches!(read_head(&mut b).await, Err(HeadError::TooLarge)));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
        assert!(matches!(
            read_head(&mut b).await,
            Err(HeadError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn responses_carry_length_and_close() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        Response::text(404, "no such page")
            .header("X-Test", "1")
            .write(&mut a, false)
            .await
            .unwrap();
        drop(a);
        let mut text = String::new();
        b.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 13\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nno such page\n"), "{text}");
    }
}
