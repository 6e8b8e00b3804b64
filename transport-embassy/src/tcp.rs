//! The [`Link`] boards use: TCP over an embassy-net stack, one socket at a time, in buffers the
//! caller owns.
//!
//! Invariants:
//! - At most one socket exists per link; it lives exactly as long as the connection and is
//!   removed from the stack when the connection is dropped.
//! - Nagle's algorithm is off: the worker writes whole batches of frames at once, and a delayed
//!   answer would stall the server's grants for a round trip.

use embassy_net::tcp::{ConnectError, TcpSocket};
use embassy_net::{IpEndpoint, Stack};
use embassy_time::{Duration, with_timeout};

use crate::link::{Connection, Link, Shutdown};

/// How long a close may take to flush its last bytes, its FIN or its RST.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// TCP connections to one server over an embassy-net [`Stack`].
///
/// `socket_rx` and `socket_tx` are the socket's own buffers (smoltcp's windows), distinct from
/// the worker's frame buffers; 1 KiB each is plenty for tiny tasks, more raises throughput of
/// large inputs.
pub struct TcpLink<'d> {
    stack: Stack<'d>,
    server: IpEndpoint,
    socket_rx: &'d mut [u8],
    socket_tx: &'d mut [u8],
    timeout: Option<Duration>,
}

impl<'d> TcpLink<'d> {
    /// Connections to `server` over `stack`, with the socket buffers given.
    ///
    /// The socket's inactivity timeout defaults to 10 s: a connection whose sent data goes
    /// unacknowledged that long is reset.
    pub fn new(
        stack: Stack<'d>,
        server: impl Into<IpEndpoint>,
        socket_rx: &'d mut [u8],
        socket_tx: &'d mut [u8],
    ) -> Self {
        TcpLink {
            stack,
            server: server.into(),
            socket_rx,
            socket_tx,
            timeout: Some(Duration::from_secs(10)),
        }
    }

    /// Sets the socket's inactivity timeout (`None`: never).
    #[must_use]
    pub fn with_timeout(self, timeout: Option<Duration>) -> Self {
        TcpLink { timeout, ..self }
    }

    /// The server's endpoint.
    pub fn server(&self) -> IpEndpoint {
        self.server
    }
}

impl core::fmt::Debug for TcpLink<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpLink")
            .field("server", &self.server)
            .field("socket_rx", &self.socket_rx.len())
            .field("socket_tx", &self.socket_tx.len())
            .finish_non_exhaustive()
    }
}

impl Link for TcpLink<'_> {
    type Error = ConnectError;
    type Conn<'s>
        = TcpSocket<'s>
    where
        Self: 's;

    async fn connect(&mut self) -> Result<TcpSocket<'_>, ConnectError> {
        self.stack.wait_config_up().await;
        let mut socket = TcpSocket::new(self.stack, self.socket_rx, self.socket_tx);
        socket.set_nagle_enabled(false);
        socket.set_timeout(self.timeout);
        socket.connect(self.server).await?;
        Ok(socket)
    }
}

impl Connection for TcpSocket<'_> {
    async fn close(&mut self, how: Shutdown) {
        match how {
            Shutdown::Graceful => TcpSocket::close(self),
            Shutdown::Abort => self.abort(),
        }
        // Wait for the FIN or RST to leave before the socket is dropped; bounded, since a peer
        // that is gone never acknowledges it.
        let _ = with_timeout(CLOSE_TIMEOUT, self.flush()).await;
    }
}
