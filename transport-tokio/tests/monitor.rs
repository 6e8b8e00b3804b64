//! The monitor: `/api/status`, `/metrics` and the page, read over HTTP and in a real headless
//! browser (Debian's `chromium`; the browser test fails, saying so, when it is missing), and the
//! token it wants when the server is not on loopback.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colony_tokio::executor::{Executor, Wait};
use colony_tokio::secret::Secret;
use colony_tokio::server::{ServerHandle, monitor_token};
use colony_tokio::worker::{Handler, TaskCtx, TaskError, WorkerConfig, WorkerExit, run_worker};
use common::{bounded, config, decode_u32, numbers, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 exchange: the status, the head and the body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

async fn get(addr: SocketAddr, path: &str, extra: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    bounded(stream.read_to_string(&mut text)).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn status_json(addr: SocketAddr) -> serde_json::Value {
    let answer = get(addr, "/api/status", "").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

/// A task body whose tasks each wait for a ticket from the test, so progress moves only when
/// the test says.
fn gated() -> (std::sync::mpsc::Sender<()>, impl Handler) {
    let (tickets, gate) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let body = move |_: &TaskCtx, _: &str, input: &[u8]| {
        gate.lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| TaskError::retryable("no ticket"))?;
        let n = u64::from(decode_u32(input));
        Ok((n * n).to_le_bytes().to_vec())
    };
    (tickets, body)
}

/// Waits until `job` has `done` tasks done.
async fn wait_done(handle: &ServerHandle, job: colony_tokio::worker::JobId, done: u32) {
    let mut progress = bounded(handle.progress(job)).await.unwrap();
    bounded(progress.wait_for(|p| p.done >= done))
        .await
        .unwrap();
}

/// Waits until `n` workers are connected.
async fn wait_workers(handle: &ServerHandle, n: usize) {
    bounded(async {
        while handle.status().await.unwrap().worker_list.len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn status_and_metrics_report_workers_and_jobs() {
    let secret = Secret::random().unwrap();
    let (handle, addr, server) =
        start(config(&secret).heartbeat_interval(Duration::from_millis(50)));
    let job = bounded(handle.create_job("squares", "square", numbers(10), vec![], 2))
        .await
        .unwrap()
        .job;
    let (tickets, body) = gated();
    let worker = WorkerConfig::new(addr.to_string(), secret.clone())
        .with_name("monitored \"one\"")
        .with_kinds(["square"])
        .with_slots(1)
        .with_prefetch(0);
    let running = tokio::spawn(run_worker(worker, body));
    wait_workers(&handle, 1).await;
    for _ in 0..3 {
        tickets.send(()).unwrap();
    }
    wait_done(&handle, job, 3).await;

    let doc = status_json(addr).await;
    let w = &doc["workers"][0];
    assert_eq!(w["name"], "monitored \"one\"");
    assert_eq!(w["platform"], "Linux");
    assert_eq!(w["transport"], "tcp");
    assert_eq!(w["slots"], 1);
    assert_eq!(w["kinds"][0], "square");
    assert_eq!(w["done"], 3);
    assert_eq!(w["failed"], 0);
    assert!(w["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(w["connected_ms"].as_u64().unwrap() <= doc["now_ms"].as_u64().unwrap());
    let j = &doc["jobs"][0];
    assert_eq!(
        (j["name"].as_str(), j["total"].as_u64()),
        (Some("squares"), Some(10))
    );
    assert_eq!(j["done"], 3);
    assert_eq!(j["finished"], false);
    assert_eq!(doc["clients"].as_array().unwrap().len(), 0);
    assert_eq!(doc["tls"], false);

    // A task client shows up too.
    let client = bounded(
        Executor::builder(format!("ws://{addr}/"), secret.clone())
            .name("monitored client")
            .connect(),
    )
    .await
    .unwrap();
    let doc = status_json(addr).await;
    let c = &doc["clients"][0];
    assert_eq!(
        (c["name"].as_str(), c["transport"].as_str()),
        (Some("monitored client"), Some("ws"))
    );
    assert_eq!(c["in_flight"], 0);
    bounded(client.shutdown(Wait::Yes)).await;

    let metrics = get(addr, "/metrics", "").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.head.contains("text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    assert!(
        metrics.body.contains("\ncolony_workers 1\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("colony_job_tasks_done{job=\"0\",name=\"squares\"} 3\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("name=\"monitored \\\"one\\\"\",transport=\"tcp\"} 3\n"),
        "{}",
        metrics.body
    );

    // The page and its assets, with a policy that allows nothing else.
    let page = get(addr, "/", "").await;
    assert_eq!(page.status, 200);
    assert!(
        page.head
            .contains("Content-Security-Policy: default-src 'none'")
    );
    assert!(page.body.contains("<title>Colony monitor</title>"));
    assert_eq!(get(addr, "/monitor.js", "").await.status, 200);
    assert_eq!(get(addr, "/monitor.css", "").await.status, 200);
    assert_eq!(get(addr, "/nowhere", "").await.status, 404);
    assert_eq!(get(addr, "/api/jobs/0/failures", "").await.body, "[]");
    assert_eq!(get(addr, "/api/jobs/9/failures", "").await.status, 404);

    // A page that rebinds its name to loopback cannot read an open monitor.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/status HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    bounded(stream.read_to_string(&mut text)).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 403 "), "{text}");

    for _ in 3..10 {
        tickets.send(()).unwrap();
    }
    let exit = bounded(running).await.unwrap().unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }));
    let doc = status_json(addr).await;
    assert_eq!(doc["jobs"][0]["finished"], true);
    assert_eq!(doc["jobs"][0]["eta_s"], 0.0);
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn off_loopback_the_monitor_wants_its_token() {
    let secret = Secret::random().unwrap();
    // Listening on every address, reached through loopback.
    let (handle, bound, server) =
        start(config(&secret).listen(SocketAddr::from(([0, 0, 0, 0], 0))));
    let addr = SocketAddr::from(([127, 0, 0, 1], bound.port()));
    let token = monitor_token(&secret);
    let basic = |user: &str, password: &str| {
        use std::fmt::Write as _;
        let plain = format!("{user}:{password}");
        let mut out = String::new();
        let abc = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for chunk in plain.as_bytes().chunks(3) {
            let n = chunk
                .iter()
                .chain([0u8; 3].iter())
                .take(3)
                .fold(0u32, |n, &b| (n << 8) | u32::from(b));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(abc[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        let mut header = String::new();
        write!(header, "Authorization: Basic {out}\r\n").unwrap();
        header
    };
    for path in ["/", "/api/status", "/metrics", "/monitor.js"] {
        let refused = get(addr, path, "").await;
        assert_eq!(refused.status, 401, "{path}");
        assert!(
            refused.head.contains("WWW-Authenticate: Basic"),
            "{}",
            refused.head
        );
        assert!(!refused.body.contains("colony_workers"));
    }
    // A wrong token, the secret itself, or an empty password: refused.
    for extra in [
        basic("admin", "not-the-token"),
        basic("admin", &secret.to_hex()),
        basic("admin", ""),
        "Authorization: Bearer nope\r\n".to_owned(),
    ] {
        assert_eq!(
            get(addr, "/api/status", &extra).await.status,
            401,
            "{extra}"
        );
    }
    // The token, as a password or a bearer token: served.
    let ok = get(addr, "/api/status", &basic("anyone", &token)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok = get(
        addr,
        "/metrics",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert!(ok.body.contains("colony_workers 0"), "{}", ok.body);
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}

// ---- the browser ----

/// The headless browser, or a failure saying how to get one.
fn chromium() -> String {
    let candidates = [
        std::env::var("COLONY_CHROMIUM").ok(),
        Some("chromium".to_owned()),
        Some("chromium-browser".to_owned()),
        Some("google-chrome".to_owned()),
    ];
    for candidate in candidates.into_iter().flatten() {
        let found = std::process::Command::new(&candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return candidate;
        }
    }
    panic!(
        "no headless browser found: install Debian's chromium (`apt-get install -y chromium`) \
         or point COLONY_CHROMIUM at one; the monitor's browser test cannot run without it"
    );
}

/// Loads `url` in a fresh headless chromium, lets its script run for three seconds of virtual
/// time, then does `action` (`--dump-dom`: the DOM is returned; `--screenshot=<file>`).
async fn browse(browser: &str, url: &str, action: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,900",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium ran");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The `data-done` of the page's row for job `id`.
fn shown_done(dom: &str, id: u32) -> Option<u32> {
    let row = dom.find(&format!("data-job-id=\"{id}\""))?;
    let rest = dom.get(row..)?;
    let at = rest.find("data-done=\"")? + "data-done=\"".len();
    let end = rest.get(at..)?.find('"')? + at;
    rest.get(at..end)?.parse().ok()
}

#[tokio::test]
async fn the_page_shows_the_worker_and_moving_progress_in_a_real_browser() {
    let browser = chromium();
    let secret = Secret::random().unwrap();
    let (handle, addr, server) = start(config(&secret));
    let job = bounded(handle.create_job("browser job", "square", numbers(20), vec![], 2))
        .await
        .unwrap()
        .job;
    let (tickets, body) = gated();
    let worker = WorkerConfig::new(format!("ws://{addr}/"), secret.clone())
        .with_name("browser-test-worker")
        .with_kinds(["square"])
        .with_slots(1)
        .with_prefetch(0);
    let running = tokio::spawn(run_worker(worker, body));
    wait_workers(&handle, 1).await;
    let client = bounded(
        Executor::builder(addr.to_string(), secret.clone())
            .name("browser-test-client")
            .connect(),
    )
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{}/", addr.port());

    for _ in 0..4 {
        tickets.send(()).unwrap();
    }
    wait_done(&handle, job, 4).await;
    let first = browse(&browser, &url, "--dump-dom").await;
    assert!(
        first.contains("data-live=\"yes\""),
        "the page never got its data:\n{first}"
    );
    assert!(
        first.contains("data-worker-name=\"browser-test-worker\""),
        "the worker is not shown:\n{first}"
    );
    assert!(
        first.contains(">ws://127.0.0.1:"),
        "its transport is not shown:\n{first}"
    );
    assert!(
        first.contains(">browser job<"),
        "the job is not shown:\n{first}"
    );
    assert!(
        first.contains(r#"data-client-name="browser-test-client""#),
        "the task client is not shown:\n{first}"
    );
    let before = shown_done(&first, job.0).expect("a row for the job");

    for _ in 0..7 {
        tickets.send(()).unwrap();
    }
    wait_done(&handle, job, 11).await;
    let second = browse(&browser, &url, "--dump-dom").await;
    let after = shown_done(&second, job.0).expect("a row for the job");
    assert_eq!((before, after), (4, 11), "progress as the page showed it");
    assert!(second.contains("11 / 20"), "{second}");

    // One picture of the page, for people to look at.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("colony-monitor.png");
    let _ = std::fs::remove_file(&shot);
    browse(&browser, &url, &format!("--screenshot={}", shot.display())).await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    bounded(client.shutdown(Wait::Yes)).await;
    for _ in 11..20 {
        tickets.send(()).unwrap();
    }
    let exit = bounded(running).await.unwrap().unwrap();
    assert!(matches!(exit, WorkerExit::JobFinished { .. }));
    bounded(handle.shutdown()).await.unwrap();
    bounded(server).await.unwrap().unwrap();
}
