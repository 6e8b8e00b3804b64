//! [`ExecutorError`]: why a task, or the executor, did not give a result.
//!
//! Invariants: every variant says which kind or server it is about where that is known; none
//! carries the secret; the text is lowercase without a trailing period.

use std::time::Duration;

use colony_core::proto::ErrorCode;

use crate::conn::HandshakeError;

/// Why a task (or the executor) has no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The task ran and failed for good: the worker's error text.
    #[error("{kind} task failed after {attempts} attempt(s): {error}")]
    Remote {
        /// The task's kind.
        kind: String,
        /// The last attempt's error text.
        error: String,
        /// Attempts made on the server.
        attempts: u16,
    },
    /// The wait for the result timed out; the task goes on, and the handle may be waited on
    /// again.
    #[error("timed out waiting for the result")]
    Timeout,
    /// No connected worker declared the kind within the configured wait. The task stays queued
    /// on the server, but this handle gives up on it.
    #[error("no worker for kind {kind:?} connected within {:.1} s", waited.as_secs_f64())]
    NoWorker {
        /// The kind.
        kind: String,
        /// How long the executor waited for one.
        waited: Duration,
    },
    /// The server could not be reached again within the reconnect window.
    #[error("lost the server at {addr}: no connection for {:.1} s (last error: {last_error})", waited.as_secs_f64())]
    ServerLost {
        /// The server's address.
        addr: String,
        /// How long the executor tried.
        waited: Duration,
        /// What the last attempt ran into.
        last_error: String,
    },
    /// The server refused the executor (wrong secret, another protocol version, a broken rule).
    #[error("the server refused this client ({code:?}): {detail}")]
    Refused {
        /// The server's reason code.
        code: ErrorCode,
        /// Its detail text.
        detail: String,
    },
    /// The handshake failed on this side: the server does not know the secret, or speaks another
    /// protocol version.
    #[error("handshake with {addr} failed: {error}")]
    Handshake {
        /// The server's address.
        addr: String,
        /// What failed.
        error: String,
    },
    /// The server URL is not one this executor can use.
    #[error("bad server url {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The input could not be encoded, or is too large for a frame.
    #[error("cannot send a {kind} task: {error}")]
    Input {
        /// The task's kind.
        kind: String,
        /// Why.
        error: String,
    },
    /// The output did not decode as the kind's output type.
    #[error("the output of a {kind} task does not decode: {error}")]
    Decode {
        /// The task's kind.
        kind: String,
        /// Why.
        error: String,
    },
    /// The result was taken already (a handle gives its result once).
    #[error("the result was taken already")]
    Taken,
    /// The executor was shut down before the task was submitted.
    #[error("the executor is shut down")]
    Shutdown,
    /// The executor's runtime could not be started or stopped.
    #[error("executor runtime: {0}")]
    Runtime(String),
}

impl ExecutorError {
    /// The error for a failed handshake with the server at `addr`.
    pub(super) fn from_handshake(addr: &str, e: &HandshakeError) -> Self {
        match e {
            HandshakeError::Refused { code, detail } => ExecutorError::Refused {
                code: *code,
                detail: detail.clone(),
            },
            other => ExecutorError::Handshake {
                addr: addr.to_owned(),
                error: other.to_string(),
            },
        }
    }

    /// Whether trying again cannot help (wrong secret, a refusal, a bad URL).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ExecutorError::Refused { .. }
                | ExecutorError::Handshake { .. }
                | ExecutorError::Url { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_well() {
        let e = ExecutorError::NoWorker {
            kind: "sum".into(),
            waited: Duration::from_millis(2500),
        };
        assert_eq!(
            e.to_string(),
            "no worker for kind \"sum\" connected within 2.5 s"
        );
        let e = ExecutorError::Remote {
            kind: "sum".into(),
            error: "overflow".into(),
            attempts: 3,
        };
        assert_eq!(
            e.to_string(),
            "sum task failed after 3 attempt(s): overflow"
        );
        assert!(!e.is_fatal());
        assert!(
            ExecutorError::Refused {
                code: ErrorCode::AuthFailed,
                detail: "no".into()
            }
            .is_fatal()
        );
    }
}
