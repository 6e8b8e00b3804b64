//! The monitor: a web page, `/api/status` (JSON) and `/metrics` (Prometheus), served by the
//! server on its own port next to the Colony protocol (see [`front`](super::front) for how the
//! two are told apart).
//!
//! | Path | What |
//! | --- | --- |
//! | `/` | the page: workers, task clients and jobs, refreshed every second |
//! | `/api/status` | the same as JSON |
//! | `/api/jobs/<id>/failures` | up to 100 failed tasks of a job, with their last error |
//! | `/metrics` | Prometheus text format |
//!
//! Access: open when the server listens on a loopback address only; otherwise every request must
//! carry the [`monitor_token`] (HTTP basic auth with any user name and the token as password, or
//! `Authorization: Bearer <token>`) and is refused with 401 without it. Serve the monitor over
//! TLS (`https://`, with [`ServerConfig::tls`](super::ServerConfig::tls)) when the network is
//! not trusted: basic auth sends the token as it is.
//!
//! An open monitor (on loopback) answers only requests whose `Host` is a loopback name, so a web
//! page cannot read it by pointing its own host name at 127.0.0.1 (DNS rebinding).
//!
//! Invariants:
//! - The monitor only reads: every route is a `GET` (or `HEAD`), none changes the server.
//! - It sees the server through a [`ServerHandle`] like any serving program; a stopped server
//!   answers 503.

mod auth;
pub(crate) mod http;
mod report;

use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use colony_core::JobId;
use tokio::io::AsyncWrite;

pub use auth::monitor_token;

use self::auth::Access;
use self::http::{Request, Response};
use self::report::{RateBook, ServerFacts};
use super::ServerHandle;
use crate::secret::Secret;

/// Failures listed per job at most.
const MAX_FAILURES: usize = 100;

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/monitor.js");
const STYLE: &str = include_str!("assets/monitor.css");

/// What the page may load: its own script, style and data, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'";

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Monitor {
    handle: ServerHandle,
    access: Access,
    facts: ServerFacts,
    book: Mutex<RateBook>,
}

impl Monitor {
    /// A monitor for the server behind `handle`; open if `loopback`, else behind the token of
    /// `secret`.
    pub(crate) fn new(handle: ServerHandle, secret: &Secret, loopback: bool, tls: bool) -> Self {
        let access = if loopback {
            Access::Open
        } else {
            Access::Token(monitor_token(secret))
        };
        Monitor {
            facts: ServerFacts {
                address: handle.local_addr().to_string(),
                tls,
                started: SystemTime::now(),
            },
            handle,
            access,
            book: Mutex::new(RateBook::default()),
        }
    }

    /// Answers one request on `stream`; returns the status sent, for the log.
    pub(crate) async fn serve<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        request: &Request,
    ) -> std::io::Result<u16> {
        let head_only = request.method == "HEAD";
        let response = self.respond(request).await;
        response.write(stream, head_only).await?;
        Ok(response.status())
    }

    async fn respond(&self, request: &Request) -> Response {
        if request.method != "GET" && request.method != "HEAD" {
            return Response::text(405, "the monitor only reads: use GET")
                .header("Allow", "GET, HEAD");
        }
        if self.access.is_open() && !request.header("host").is_none_or(is_loopback_host) {
            // An open monitor answers loopback names only: a web page that rebinds its own
            // name to 127.0.0.1 cannot read it.
            return Response::text(403, "this monitor answers to loopback host names only");
        }
        if !self.access.allows(request.header("authorization")) {
            return Response::text(
                401,
                "this colony's monitor needs its monitor token (as the password, any user name)",
            )
            .header(
                "WWW-Authenticate",
                "Basic realm=\"colony monitor\", charset=\"UTF-8\"",
            );
        }
        let path = request.path.as_str();
        match path {
            "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", PAGE)
                .header("Content-Security-Policy", CSP)
                .header("X-Frame-Options", "DENY")
                .header("Referrer-Policy", "no-referrer"),
            "/monitor.js" => Response::new(200, "text/javascript; charset=utf-8", SCRIPT),
            "/monitor.css" => Response::new(200, "text/css; charset=utf-8", STYLE),
            "/api/status" => match self.status_doc().await {
                Ok(doc) => json(&doc),
                Err(e) => Response::text(503, e),
            },
            "/metrics" => match self.status_doc().await {
                Ok(doc) => Response::new(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    report::metrics(&doc),
                ),
                Err(e) => Response::text(503, e),
            },
            _ => match failures_job(path) {
                Some(job) => self.failures(job).await,
                None => Response::text(404, "no such page"),
            },
        }
    }

    async fn status_doc(&self) -> Result<report::StatusDoc, String> {
        let status = self.handle.status().await.map_err(|e| e.to_string())?;
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(report::status_doc(
            &self.facts,
            &status,
            &mut book,
            Instant::now(),
        ))
    }

    async fn failures(&self, job: JobId) -> Response {
        #[derive(serde::Serialize)]
        struct Failure {
            task: u32,
            error: String,
        }
        match self.handle.failures(job).await {
            Ok(list) => {
                let list: Vec<Failure> = list
                    .into_iter()
                    .take(MAX_FAILURES)
                    .map(|(task, error)| Failure {
                        task: task.0,
                        error,
                    })
                    .collect();
                json(&list)
            }
            Err(super::HandleError::UnknownJob(_)) => Response::text(404, "no such job"),
            Err(e) => Response::text(503, e.to_string()),
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::new(200, "application/json", body),
        Err(e) => Response::text(503, format!("cannot encode the report: {e}")),
    }
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`,
/// with or without a port).
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The job of `/api/jobs/<id>/failures`.
fn failures_job(path: &str) -> Option<JobId> {
    let id = path.strip_prefix("/api/jobs/")?.strip_suffix("/failures")?;
    id.parse().ok().map(JobId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_host_names() {
        for host in [
            "localhost",
            "LOCALHOST:7878",
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]:7878",
            "a.localhost",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "10.0.0.1:7878",
            "[fe80::1]:80",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn failure_paths_parse() {
        assert_eq!(failures_job("/api/jobs/7/failures"), Some(JobId(7)));
        assert_eq!(failures_job("/api/jobs/x/failures"), None);
        assert_eq!(failures_job("/api/jobs/7"), None);
    }

    #[test]
    fn the_page_loads_only_its_own_assets_and_inserts_text() {
        assert!(PAGE.contains("src=\"monitor.js\""));
        assert!(PAGE.contains("href=\"monitor.css\""));
        assert!(!SCRIPT.contains("innerHTML"));
        assert!(SCRIPT.contains("api/status"));
    }
}
