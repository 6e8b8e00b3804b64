//! [`Outbox`]: one connection's outgoing bytes, filled by the engine (and the connection's own
//! reader, for heartbeat echoes and errors) and written out whole by the connection's writer task.
//!
//! Invariants:
//! - Bytes are whole frames, appended under the lock, so frames from two producers never
//!   interleave.
//! - Once [`Outbox::close`] was called (or the writer died), appends are dropped: nothing follows
//!   a closing `Error` or `ServerGoingAway`.
//! - The writer writes everything appended before `close` and then shuts the stream's write side.
//! - The backlog is bounded: an append past `cap` buffered bytes reports [`Overflow`] (the peer
//!   does not read) and the caller drops the connection.

use std::sync::{Mutex, MutexGuard, PoisonError};

use colony_core::proto::{Message, encode_frame_into};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// The peer does not read: its backlog passed the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Overflow {
    pub(super) backlog: usize,
}

#[derive(Debug, Default)]
struct Inner {
    buf: Vec<u8>,
    closing: bool,
    dead: bool,
}

/// See the module docs.
#[derive(Debug)]
pub(super) struct Outbox {
    inner: Mutex<Inner>,
    ready: Notify,
    cap: usize,
}

impl Outbox {
    pub(super) fn new(cap: usize) -> Self {
        Outbox {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the buffer half-written in a way that
        // matters more than the panic itself; carry on with what is there.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves `staged` (whole frames) to the outbox, leaving `staged` empty (it may get the
    /// outbox's old allocation back).
    pub(super) fn push_staged(&self, staged: &mut Vec<u8>) -> Result<(), Overflow> {
        if staged.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        if inner.closing || inner.dead {
            staged.clear();
            return Ok(());
        }
        if inner.buf.is_empty() {
            std::mem::swap(&mut inner.buf, staged);
        } else {
            inner.buf.extend_from_slice(staged);
            staged.clear();
        }
        let backlog = inner.buf.len();
        drop(inner);
        self.ready.notify_one();
        if backlog > self.cap {
            Err(Overflow { backlog })
        } else {
            Ok(())
        }
    }

    /// Appends one message.
    pub(super) fn push(&self, message: &Message<'_>) -> Result<(), Overflow> {
        let mut inner = self.lock();
        if inner.closing || inner.dead {
            return Ok(());
        }
        if encode_frame_into(message, &mut inner.buf).is_err() {
            return Ok(());
        }
        let backlog = inner.buf.len();
        drop(inner);
        self.ready.notify_one();
        if backlog > self.cap {
            Err(Overflow { backlog })
        } else {
            Ok(())
        }
    }

    /// Whether the outbox was closed (or its writer died): nothing more will be sent.
    pub(super) fn is_closed(&self) -> bool {
        let inner = self.lock();
        inner.closing || inner.dead
    }

    /// Appends `last` (if any) and closes: the writer flushes and shuts the stream down.
    pub(super) fn close(&self, last: Option<&Message<'_>>) {
        let mut inner = self.lock();
        if !inner.closing && !inner.dead {
            if let Some(message) = last {
                let _ = encode_frame_into(message, &mut inner.buf);
            }
            inner.closing = true;
        }
        drop(inner);
        self.ready.notify_one();
    }

    /// Writes the outbox to `io` until it is closed and empty, or the stream fails.
    pub(super) async fn run_writer<W: AsyncWrite + Unpin>(&self, mut io: W) {
        let mut spare = Vec::new();
        loop {
            let closing = {
                let mut inner = self.lock();
                std::mem::swap(&mut inner.buf, &mut spare);
                inner.closing
            };
            if !spare.is_empty() {
                // Flushing matters on TLS and WebSocket streams, which buffer what they are
                // given; on TCP it does nothing.
                let written = match io.write_all(&spare).await {
                    Ok(()) => io.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    log::debug!("write failed: {e}");
                    self.lock().dead = true;
                    return;
                }
                spare.clear();
                continue;
            }
            if closing {
                let _ = io.shutdown().await;
                return;
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::LeaseId;
    use colony_core::proto::{Decoded, FrameDecoder, decode_message};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_in_order_then_closes() {
        let outbox = std::sync::Arc::new(Outbox::new(1 << 20));
        let (client, mut server) = tokio::io::duplex(16);
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.run_writer(client).await })
        };
        let mut staged = Vec::new();
        encode_frame_into(&Message::Ack { lease: LeaseId(1) }, &mut staged).unwrap();
        outbox.push_staged(&mut staged).unwrap();
        assert!(staged.is_empty());
        outbox.push(&Message::Heartbeat).unwrap();
        assert!(!outbox.is_closed());
        outbox.close(Some(&Message::ServerGoingAway));
        assert!(outbox.is_closed());
        outbox.push(&Message::Heartbeat).unwrap(); // dropped: after close
        let mut bytes = Vec::new();
        server.read_to_end(&mut bytes).await.unwrap();
        writer.await.unwrap();
        let mut seen = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let Decoded::Frame(f) = FrameDecoder::new(1024).decode(rest).unwrap() else {
                panic!("incomplete")
            };
            seen.push(decode_message(f.payload()).unwrap().name());
            rest = &rest[f.frame_len()..];
        }
        assert_eq!(seen, ["Ack", "Heartbeat", "ServerGoingAway"]);
    }

    #[test]
    fn overflow_is_reported() {
        let outbox = Outbox::new(10);
        let mut staged = vec![0u8; 11];
        assert_eq!(
            outbox.push_staged(&mut staged),
            Err(Overflow { backlog: 11 })
        );
    }
}
