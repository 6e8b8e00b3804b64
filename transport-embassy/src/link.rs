//! The byte stream the worker talks over, abstracted so that the driver loop can be tested off
//! the board: a [`Link`] opens [`Connection`]s, a connection reads, writes and closes.
//!
//! [`TcpLink`](crate::TcpLink) is the one boards use (embassy-net TCP). The traits exist so the
//! whole loop, handshake and reconnects included, runs on a host over in-memory pipes.
//!
//! Invariants a link must keep:
//! - A connection delivers bytes in order, without loss or duplication, until it fails; after a
//!   failure (any read or write error, or a read of 0 bytes) the worker never uses it again.
//! - Reads are cancel-safe: dropping a pending `read` loses no byte (the driver races each read
//!   against the worker's next deadline).

use embedded_io_async::{Read, Write};

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Shutdown {
    /// Send what is buffered, then close (a TCP FIN): the worker said goodbye.
    Graceful,
    /// Drop the connection at once (a TCP RST): it failed or the peer broke the protocol.
    Abort,
}

/// An open byte stream to the server.
#[allow(async_fn_in_trait)] // Boards run one executor thread; no `Send` bound is wanted.
pub trait Connection: Read + Write {
    /// Closes the connection. Bounded in time by the implementation; never fails (a connection
    /// that cannot close cleanly is simply dropped).
    async fn close(&mut self, how: Shutdown);
}

/// Opens connections to the server, one at a time.
#[allow(async_fn_in_trait)]
pub trait Link {
    /// Why a connection attempt failed.
    type Error;
    /// An open connection, borrowing the link's buffers while it lives.
    type Conn<'s>: Connection
    where
        Self: 's;

    /// Opens a connection to the server. The worker bounds the attempt with its own timeout
    /// and drops the future when it expires, so it must be cancel-safe.
    ///
    /// # Errors
    /// Whatever kept the connection from opening; the worker retries after its backoff.
    async fn connect(&mut self) -> Result<Self::Conn<'_>, Self::Error>;
}
