//! `execute` from a working process: a task-client connection to the serving process that sends
//! `Call` and waits for its `CallReturn` or `CallError`.
//!
//! The connection is opened on first use and kept; calls from several threads take turns on
//! it. A broken connection is reopened once per call before the call fails.

use std::net::SocketAddr;
use std::sync::Mutex;

use colony_core::proto::{ClientInfo, DEFAULT_MAX_FRAME, Message, Role};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

use crate::conn::{FramedConn, connect_and_handshake};
use crate::secret::Secret;

pub(super) struct Caller {
    runtime: Handle,
    addr: SocketAddr,
    secret: Secret,
    conn: Mutex<Option<FramedConn<TcpStream>>>,
    next_call: Mutex<u32>,
}

impl Caller {
    pub(super) fn new(runtime: Handle, addr: SocketAddr, secret: Secret) -> Self {
        Caller {
            runtime,
            addr,
            secret,
            conn: Mutex::new(None),
            next_call: Mutex::new(0),
        }
    }

    /// Runs `name(args)` on the serving process; blocks this (non-runtime) thread meanwhile.
    pub(super) fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
        let call = {
            let mut n = self
                .next_call
                .lock()
                .map_err(|_| "call state poisoned".to_string())?;
            *n = n.wrapping_add(1);
            *n
        };
        let mut slot = self
            .conn
            .lock()
            .map_err(|_| "call connection poisoned".to_string())?;
        let mut last_error = String::new();
        for _ in 0..2 {
            if slot.is_none() {
                match self.runtime.block_on(self.connect()) {
                    Ok(conn) => *slot = Some(conn),
                    Err(e) => {
                        last_error = e;
                        continue;
                    }
                }
            }
            let Some(conn) = slot.as_mut() else { continue };
            match self.runtime.block_on(exchange(conn, call, name, args)) {
                Ok(Ok(result)) => return Ok(result),
                Ok(Err(function_error)) => return Err(function_error),
                Err(link_error) => {
                    *slot = None;
                    last_error = link_error;
                }
            }
        }
        Err(format!(
            "cannot reach the serving process at {}: {last_error}",
            self.addr
        ))
    }

    async fn connect(&self) -> Result<FramedConn<TcpStream>, String> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let role = Role::Client(ClientInfo {
            name: "for-loop execute",
        });
        let (conn, _welcome) = connect_and_handshake(stream, &self.secret, role, DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }
}

/// Sends one call and reads until its answer. The outer error is the link's, the inner the
/// function's.
async fn exchange(
    conn: &mut FramedConn<TcpStream>,
    call: u32,
    name: &str,
    args: &[u8],
) -> Result<Result<Vec<u8>, String>, String> {
    conn.send(&Message::Call { call, name, args })
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match conn.read_message().await.map_err(|e| e.to_string())? {
            Message::CallReturn { call: c, result } if c == call => return Ok(Ok(result.to_vec())),
            Message::CallError { call: c, error } if c == call => {
                return Ok(Err(error.to_string()));
            }
            Message::Heartbeat | Message::CallReturn { .. } | Message::CallError { .. } => {}
            Message::Error { code, detail } => return Err(format!("refused ({code:?}): {detail}")),
            Message::ServerGoingAway => return Err("the server is going away".into()),
            other => return Err(format!("unexpected {} from the server", other.name())),
        }
    }
}
