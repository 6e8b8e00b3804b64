//! Test helpers: a raw-protocol worker built on the core's protocol types and `conn.rs`, and a
//! server started on `127.0.0.1:0`.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use colony_core::proto::{
    Batch, DEFAULT_MAX_FRAME, ErrorCode, LeaseGrant, Message, Platform, Retry, Role, Welcome,
    WorkerHello,
};
use colony_core::sched::Inputs;
use colony_core::{JobId, LeaseId, TaskId};
use colony_tokio::conn::{
    ConnError, FrameReader, FrameWriter, HandshakeError, connect_and_handshake,
};
use colony_tokio::secret::Secret;
use colony_tokio::server::{BoundServer, Server, ServerConfig, ServerHandle};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Every wait in the tests is bounded by this.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test if it takes longer than [`PATIENCE`].
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("timed out waiting")
}

/// A config on a free loopback port (and logging to the test output, with `RUST_LOG`).
pub fn config(secret: &Secret) -> ServerConfig {
    let _ = env_logger::builder().is_test(true).try_init();
    ServerConfig::new(secret.clone()).listen(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Binds and spawns a server; returns its handle, address and task.
pub fn start(
    config: ServerConfig,
) -> (
    ServerHandle,
    SocketAddr,
    tokio::task::JoinHandle<Result<(), colony_tokio::server::ServerError>>,
) {
    let bound = Server::bind(config).expect("bind");
    spawn_bound(bound)
}

pub fn spawn_bound(
    bound: BoundServer,
) -> (
    ServerHandle,
    SocketAddr,
    tokio::task::JoinHandle<Result<(), colony_tokio::server::ServerError>>,
) {
    let handle = bound.handle();
    let addr = bound.local_addr();
    (handle, addr, bound.spawn())
}

/// Inputs 0..n as little-endian u32.
pub fn numbers(n: u32) -> Inputs {
    (0..n).map(u32::to_le_bytes).collect()
}

pub fn decode_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

/// One lease as the raw worker keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    pub lease: LeaseId,
    pub job: JobId,
    pub task: TaskId,
    pub attempt: u16,
    pub input: Vec<u8>,
}

/// A message from the server, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Got {
    Grants(Vec<Granted>),
    Ack(LeaseId),
    Heartbeat,
    JobFinished(JobId),
    GoingAway,
    Error(ErrorCode, String),
    Other(&'static str),
}

/// A worker that speaks the protocol by hand.
pub struct RawWorker {
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    pub welcome: Welcome,
}

impl RawWorker {
    pub async fn connect(
        addr: SocketAddr,
        secret: &Secret,
        kind: &str,
    ) -> Result<Self, HandshakeError> {
        let stream = TcpStream::connect(addr).await.map_err(ConnError::from)?;
        stream.set_nodelay(true).map_err(ConnError::from)?;
        let mut kinds_buf = [0u8; 64];
        let kinds = Batch::<&str>::encode([kind], &mut kinds_buf).expect("kinds");
        let role = Role::Worker(WorkerHello {
            name: "raw-test-worker",
            platform: Platform::Linux,
            kinds,
            slots: 1,
        });
        let (conn, welcome) =
            connect_and_handshake(stream, secret, role, DEFAULT_MAX_FRAME).await?;
        let (reader, writer) = conn.into_tcp_split();
        Ok(RawWorker {
            reader,
            writer,
            welcome,
        })
    }

    pub fn queue(&mut self, message: &Message<'_>) {
        self.writer.queue(message).expect("queue");
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.writer.flush().await
    }

    pub async fn send(&mut self, message: &Message<'_>) -> Result<(), ConnError> {
        self.writer.send(message).await
    }

    /// Writes raw bytes (frames or garbage).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.writer.queue_encoded(bytes);
        self.writer.flush().await
    }

    pub async fn recv(&mut self) -> Result<Got, ConnError> {
        let message = self.reader.read_message().await?;
        Ok(match message {
            Message::Grant(batch) => Got::Grants(
                batch
                    .iter()
                    .map(|g: Result<LeaseGrant<'_>, _>| {
                        let g = g.expect("grant decodes");
                        Granted {
                            lease: g.lease,
                            job: g.job,
                            task: g.task,
                            attempt: g.attempt.0,
                            input: g.input.to_vec(),
                        }
                    })
                    .collect(),
            ),
            Message::Ack { lease } => Got::Ack(lease),
            Message::Heartbeat => Got::Heartbeat,
            Message::JobFinished { job, .. } => Got::JobFinished(job),
            Message::ServerGoingAway => Got::GoingAway,
            Message::Error { code, detail } => Got::Error(code, detail.to_owned()),
            other => Got::Other(other.name()),
        })
    }

    /// Receives until `n` grants arrived (other messages are skipped).
    pub async fn take_grants(&mut self, n: usize) -> Vec<Granted> {
        let mut grants = Vec::new();
        while grants.len() < n {
            if let Got::Grants(g) = self.recv().await.expect("recv") {
                grants.extend(g);
            }
        }
        grants
    }

    /// Completes every grant with `f(input)`, keeping `credit` leases asked for, until the server
    /// says the job finished. Returns the leases it completed, with their tasks.
    pub async fn work(
        &mut self,
        credit: u32,
        f: impl Fn(&[u8]) -> Vec<u8>,
    ) -> Result<Vec<Granted>, ConnError> {
        self.send(&Message::Credit { count: credit }).await?;
        let mut done = Vec::new();
        loop {
            match self.recv().await? {
                Got::Grants(grants) => {
                    for g in &grants {
                        let output = f(&g.input);
                        self.queue(&Message::Complete {
                            lease: g.lease,
                            output: &output,
                        });
                    }
                    self.queue(&Message::Credit {
                        count: grants.len() as u32,
                    });
                    self.flush().await?;
                    done.extend(grants);
                }
                Got::JobFinished(_) => return Ok(done),
                Got::Error(code, detail) => panic!("server error {code:?}: {detail}"),
                Got::GoingAway => panic!("server going away"),
                _ => {}
            }
        }
    }

    pub async fn fail(&mut self, lease: LeaseId, error: &str) -> Result<(), ConnError> {
        self.send(&Message::Fail {
            lease,
            retry: Retry::Retryable,
            error,
        })
        .await
    }

    /// Reads until the server closes the connection; returns every message seen before.
    pub async fn until_closed(&mut self) -> Vec<Got> {
        let mut seen = Vec::new();
        while let Ok(got) = self.recv().await {
            seen.push(got);
        }
        seen
    }
}

pub fn square(input: &[u8]) -> Vec<u8> {
    let n = decode_u32(input) as u64;
    (n * n).to_le_bytes().to_vec()
}
