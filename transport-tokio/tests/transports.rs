//! The server's other transports: workers and executors over WebSocket and TLS (plain and
//! WebSocket) complete jobs, the secret is checked on every one of them, certificates are
//! checked, and a server that requires TLS serves nothing in plain text.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colony_core::proto::{ErrorCode, Message};
use colony_tokio::conn::FramedConn;
use colony_tokio::executor::{Executor, Wait};
use colony_tokio::kind::TaskKind;
use colony_tokio::net::Transport;
use colony_tokio::secret::Secret;
use colony_tokio::server::ServerHandle;
use colony_tokio::tls::ClientTls;
use colony_tokio::worker::{
    TaskCtx, TaskError, Worker, WorkerConfig, WorkerError, WorkerExit, run_worker,
};
use common::{bounded, config, decode_u32, numbers, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn square(_: &TaskCtx, _: &str, input: &[u8]) -> Result<Vec<u8>, TaskError> {
    let n = u64::from(decode_u32(input));
    Ok((n * n).to_le_bytes().to_vec())
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files in `dir`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn worker(url: String, secret: &Secret) -> WorkerConfig {
    WorkerConfig::new(url, secret.clone())
        .with_name("transport-test")
        .with_kinds(["square"])
        .with_slots(2)
        .with_server_lost_after(Duration::from_secs(5))
}

/// Waits until a worker with this transport is connected.
async fn joined_over(handle: &ServerHandle, transport: Transport) {
    bounded(async {
        loop {
            let status = handle.status().await.unwrap();
            if status.worker_list.iter().any(|w| w.transport == transport) {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Runs a 40-task job with one worker at `url` and checks every output; the first task waits
/// until the server reports the worker's transport.
async fn run_job_over(
    handle: &ServerHandle,
    url: String,
    secret: &Secret,
    tls: Option<ClientTls>,
    transport: Transport,
) {
    let job = bounded(handle.create_job(url.clone(), "square", numbers(40), vec![], 3))
        .await
        .unwrap()
        .job;
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let handler = move |ctx: &TaskCtx, kind: &str, input: &[u8]| {
        if ctx.task().0 == 0 {
            let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(20));
        }
        square(ctx, kind, input)
    };
    let mut config = worker(url, secret);
    if let Some(tls) = tls {
        config = config.with_tls(tls);
    }
    let running = tokio::spawn(run_worker(config, handler));
    joined_over(handle, transport).await;
    release.send(()).unwrap();
    let exit = bounded(running).await.unwrap().unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }), "{exit:?}");
    let outputs = bounded(handle.outputs(job)).await.unwrap();
    for (i, out) in outputs.iter().enumerate() {
        let n = i as u64;
        assert_eq!(out.as_deref(), Some(&(n * n).to_le_bytes()[..]), "task {i}");
    }
}

#[tokio::test]
async fn a_worker_over_websocket_completes_tasks() {
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret));
    run_job_over(
        &handle,
        format!("ws://{addr}/colony"),
        &secret,
        None,
        Transport::Ws,
    )
    .await;
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn workers_over_tls_and_wss_complete_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret).tls(&cert, &key));
    // Trusting the certificate as an authority (its name is checked) ...
    run_job_over(
        &handle,
        format!("tls://{addr}"),
        &secret,
        Some(ClientTls::ca_file(&cert).unwrap()),
        Transport::Tls,
    )
    .await;
    // ... or pinning it.
    run_job_over(
        &handle,
        format!("wss://localhost:{}/", addr.port()),
        &secret,
        Some(ClientTls::pinned_file(&cert).unwrap()),
        Transport::Wss,
    )
    .await;
    // Plain TCP still works beside TLS.
    run_job_over(&handle, addr.to_string(), &secret, None, Transport::Tcp).await;
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_untrusted_certificate_stops_the_worker_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let (other, _) = self_signed(dir.path(), "other");
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret).tls(&cert, &key));
    for tls in [
        ClientTls::pinned_file(&other).unwrap(),
        ClientTls::ca_file(&other).unwrap(),
        // The right authority, the wrong name.
        ClientTls::ca_file(&cert)
            .unwrap()
            .with_server_name("example.org"),
    ] {
        let config = worker(format!("tls://{addr}"), &secret).with_tls(tls);
        let err = bounded(run_worker(config, square)).await.unwrap_err();
        assert!(matches!(err, WorkerError::Connect { .. }), "{err}");
    }
    // No settings at all for a TLS address.
    let err = bounded(run_worker(
        worker(format!("wss://{addr}/"), &secret),
        square,
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("needs TLS settings"), "{err}");
    assert!(
        bounded(handle.status())
            .await
            .unwrap()
            .worker_list
            .is_empty()
    );
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_secret_is_checked_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let secret = Secret::random().unwrap();
    let wrong = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret).tls(&cert, &key));
    bounded(handle.create_job("j", "square", numbers(3), vec![], 1))
        .await
        .unwrap();
    for url in [
        addr.to_string(),
        format!("tls://{addr}"),
        format!("ws://{addr}/"),
        format!("wss://{addr}/"),
    ] {
        let config = worker(url.clone(), &wrong).with_tls(ClientTls::ca_file(&cert).unwrap());
        let err = bounded(run_worker(config, square)).await.unwrap_err();
        assert!(
            matches!(
                err,
                WorkerError::Handshake { .. } | WorkerError::Rejected { .. }
            ),
            "{url}: {err}"
        );
        // A task client without the secret is refused as well, and at once.
        let err = bounded(
            Executor::builder(url.clone(), wrong.clone())
                .tls(ClientTls::ca_file(&cert).unwrap())
                .connect(),
        )
        .await
        .unwrap_err();
        assert!(err.is_fatal(), "{url}: {err}");
    }
    assert!(bounded(handle.status()).await.unwrap().clients.is_empty());
    let status = bounded(handle.status()).await.unwrap();
    assert!(status.worker_list.is_empty());
    assert_eq!(status.jobs[0].progress.done, 0);
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

async fn http_answer(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    bounded(stream.read_to_string(&mut answer)).await.unwrap();
    answer
}

#[tokio::test]
async fn a_server_that_requires_tls_serves_nothing_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let secret = Secret::random().unwrap();

    let refused = colony_tokio::server::Server::bind(config(&secret).require_tls()).unwrap_err();
    assert!(refused.to_string().contains("TLS is required"), "{refused}");

    let (handle, addr, server) = start(config(&secret).tls(&cert, &key).require_tls());
    // A plain Colony connector is told why and closed.
    let mut conn = FramedConn::new(TcpStream::connect(addr).await.unwrap());
    let hello = colony_core::proto::ClientHandshake::new([3; 16], 4096).hello();
    conn.send(&Message::ClientHello(hello)).await.unwrap();
    match bounded(conn.read_message()).await.unwrap() {
        Message::Error { code, detail } => {
            assert_eq!(code, ErrorCode::Other);
            assert!(detail.contains("requires TLS"), "{detail}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Plain HTTP gets a 403.
    let answer = http_answer(addr).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    // TLS works.
    run_job_over(
        &handle,
        format!("tls://{addr}"),
        &secret,
        Some(ClientTls::pinned_file(&cert).unwrap()),
        Transport::Tls,
    )
    .await;
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_bad_certificate_file_fails_the_bind() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed(dir.path(), "one");
    let (_, key) = self_signed(dir.path(), "two");
    let secret = Secret::random().unwrap();
    let err = colony_tokio::server::Server::bind(config(&secret).tls(&cert, &key)).unwrap_err();
    assert!(err.to_string().contains("tls"), "{err}");
    let missing = dir.path().join("missing.pem");
    let err = colony_tokio::server::Server::bind(config(&secret).tls(&missing, &key)).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

fn sum_kind() -> TaskKind<u64, u64> {
    TaskKind::new("sum", |n: u64| Ok::<_, TaskError>((1..=n).sum()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_and_executors_over_tls_and_websocket_complete_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret).tls(&cert, &key));
    let worker = Worker::builder()
        .kind(sum_kind())
        .slots(2)
        .name("tls-worker")
        .tls(ClientTls::ca_file(&cert).unwrap())
        .connect(&format!("tls://{addr}"), secret.clone())
        .unwrap();
    let stop = worker.shutdown_token();
    let worker = tokio::spawn(worker.run());

    let sum = sum_kind();
    let urls = [
        (format!("tls://{addr}"), Transport::Tls),
        (
            format!("wss://localhost:{}/colony", addr.port()),
            Transport::Wss,
        ),
        (format!("ws://{addr}/colony"), Transport::Ws),
    ];
    for (url, transport) in urls {
        let exec = bounded(
            Executor::builder(url.clone(), secret.clone())
                .name(format!("client over {transport}"))
                .tls(ClientTls::pinned_file(&cert).unwrap())
                .connect(),
        )
        .await
        .unwrap();
        let one = bounded(exec.submit(&sum, &100)).await.unwrap();
        assert_eq!(bounded(one).await, Ok(5050), "{url}");
        let mut results = exec.map(&sum, 0..200u64);
        let mut n = 0u64;
        while let Some(r) = bounded(results.next()).await {
            assert_eq!(r, Ok(n * (n + 1) / 2), "{url}");
            n += 1;
        }
        assert_eq!(n, 200, "{url}");
        let status = bounded(handle.status()).await.unwrap();
        assert!(
            status
                .clients
                .iter()
                .any(|c| c.transport == transport && c.name == format!("client over {transport}")),
            "{:?}",
            status.clients
        );
        assert!(
            status
                .worker_list
                .iter()
                .any(|w| w.transport == Transport::Tls && w.name == "tls-worker"),
            "{:?}",
            status.worker_list
        );
        bounded(exec.shutdown(Wait::Yes)).await;
    }

    // An executor that does not trust the server stops at once.
    let (other, _) = self_signed(dir.path(), "other");
    let err = bounded(
        Executor::builder(format!("tls://{addr}"), secret.clone())
            .tls(ClientTls::pinned_file(&other).unwrap())
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tls"), "{err}");

    stop.shutdown();
    bounded(worker).await.unwrap().unwrap();
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}
