//! `colony server`: the standing pool server; and the hidden `pool-worker`, a pool worker program
//! with a few demo kinds, used by the tests and by `colony bench --case executor`.
//!
//! The server keeps its checkpoint log in its data folder (`DIR/jobs.ckpt`), so a restart on the
//! same folder brings back every unfinished job; on a loopback address it creates its secret in
//! `DIR/secret` (owner-only) if none is given, and on any other address it refuses to start
//! without an explicit one. SIGINT and SIGTERM stop it cleanly: peers are told, the log is made
//! durable and closed.
//!
//! Invariants: the first line the server prints on stdout is `colony server listening on ADDR`
//! (tests and scripts read the address from it); the secret itself is never printed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use colony_tokio::kind::TaskKind;
use colony_tokio::secret::{SECRET_ENV, Secret};
use colony_tokio::server::{ClientLimits, DEFAULT_PORT, Server, ServerConfig, monitor_token};
use colony_tokio::worker::{Execution, TaskError, Worker};

/// The checkpoint log's file name in the data folder.
pub(crate) const CHECKPOINT_FILE: &str = "jobs.ckpt";

/// The secret's file name in the data folder.
pub(crate) const SECRET_FILE: &str = "secret";

/// Settings of `colony server`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub(crate) listen: SocketAddr,
    /// Data folder: the checkpoint log of every job (`jobs.ckpt`) and, on loopback, the generated
    /// secret (`secret`). Created if missing.
    #[arg(long, value_name = "DIR", default_value = "colony-data")]
    pub(crate) data: PathBuf,
    /// File holding the shared secret as hex (default: the COLONY_SECRET environment variable,
    /// else DIR/secret, created on first start). A non-loopback address needs this file or
    /// COLONY_SECRET.
    #[arg(long, value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Append the log to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub(crate) log_file: Option<PathBuf>,
    /// Connections open at once (workers, clients, observers).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Tasks one client connection may have in flight.
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    max_in_flight: u32,
    /// Largest frame payload in bytes (task inputs and outputs must fit).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_frame: u32,
    /// Seconds a lease lasts without a heartbeat from its worker.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    lease_secs: u64,
    /// Seconds a peer may stay silent before it is taken for dead.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    idle_secs: u64,
    /// PEM certificate chain (leaf first): TLS on the same port (`tls://`, `wss://`, and the
    /// monitor over `https://`), next to plain connections. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS only: plain-text connections and plain HTTP are refused.
    #[arg(long, requires = "tls_cert")]
    tls_only: bool,
}

impl ServerArgs {
    /// The log filter: info by default, more with `-v`.
    pub(crate) fn log_filter(&self) -> &'static str {
        match self.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    }
}

/// The secret to use, and where it came from (for the start-up message).
fn server_secret(args: &ServerArgs) -> Result<(Secret, String)> {
    if let Some(path) = &args.secret_file {
        return Ok((Secret::from_file(path)?, path.display().to_string()));
    }
    if let Some(secret) = Secret::from_env(SECRET_ENV)? {
        return Ok((secret, format!("the {SECRET_ENV} environment variable")));
    }
    if !args.listen.ip().is_loopback() {
        bail!(
            "listening on {} (not loopback) needs an explicit secret: pass --secret-file FILE or \
             set {SECRET_ENV} (make one with: head -c 32 /dev/urandom | xxd -p -c 64)",
            args.listen
        );
    }
    let path = args.data.join(SECRET_FILE);
    let existed = path.exists();
    let secret = Secret::from_file_or_create(&path)?;
    let note = if existed { "" } else { " (created)" };
    Ok((secret, format!("{}{note}", path.display())))
}

fn create_data_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data folder {}", dir.display()))
}

/// Runs `colony server` until SIGINT or SIGTERM.
///
/// # Errors
/// The data folder, the secret or the address cannot be used, or the checkpoint cannot be
/// written.
pub(crate) fn server(args: &ServerArgs) -> Result<()> {
    create_data_dir(&args.data)?;
    let (secret, secret_from) = server_secret(args)?;
    let checkpoint = args.data.join(CHECKPOINT_FILE);
    let mut config = ServerConfig::new(secret)
        .listen(args.listen)
        .checkpoint(&checkpoint)
        .max_connections(args.max_connections)
        .max_frame(args.max_frame)
        .lease_duration(Duration::from_secs(args.lease_secs.max(1)))
        .idle_timeout(Duration::from_secs(args.idle_secs.max(1)))
        .client_limits(ClientLimits::default().max_in_flight(args.max_in_flight));
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config = config.tls(cert, key);
    }
    if args.tls_only {
        config = config.require_tls();
    }
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let access = if args.listen.ip().is_loopback() {
        "open on loopback".to_owned()
    } else {
        format!(
            "password, with any user name: {}",
            monitor_token(config.secret())
        )
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bound = Server::bind(config).with_context(|| "cannot start the server")?;
        let addr = bound.local_addr();
        let handle = bound.handle();
        let task = bound.spawn();
        let status = handle.status().await?;
        let unfinished = status.jobs.iter().filter(|j| !j.progress.finished).count();
        let mut out = std::io::stdout().lock();
        writeln!(out, "colony server listening on {addr}")?;
        writeln!(
            out,
            "data: {} ({} jobs, {unfinished} unfinished)",
            checkpoint.display(),
            status.jobs.len()
        )?;
        writeln!(out, "secret: {secret_from}")?;
        writeln!(out, "monitor: {scheme}://{addr}/ ({access})")?;
        out.flush()?;
        drop(out);
        log::info!("serving on {addr}; stop with Ctrl-C or SIGTERM");
        let mut task = task;
        tokio::select! {
            ended = &mut task => {
                return ended
                    .context("server task")?
                    .context("the server stopped on a fault");
            }
            signal = stop_signal() => {
                log::info!("{}: shutting down", signal?);
            }
        }
        handle.shutdown().await?;
        task.await
            .context("server task")?
            .context("the server stopped on a fault")?;
        Ok(())
    })
}

/// Waits for SIGINT or SIGTERM; names the one that came.
async fn stop_signal() -> Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => {
            interrupted?;
            Ok("SIGINT")
        }
        _ = term.recv() => Ok("SIGTERM"),
    }
}

/// Settings of the hidden `pool-worker` (a demo pool worker).
#[derive(Debug, clap::Args)]
pub(crate) struct PoolWorkerArgs {
    /// The server: `tcp://host:port` or `host:port`.
    #[arg(long, value_name = "URL")]
    pub(crate) server: String,
    /// Tasks run at once.
    #[arg(long, value_name = "N")]
    pub(crate) slots: Option<u32>,
    /// Leases held beyond the running ones.
    #[arg(long, value_name = "N")]
    pub(crate) prefetch: Option<u32>,
    /// The worker's name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Run tasks inline on the connection's task (tiny tasks only).
    #[arg(long)]
    pub(crate) inline: bool,
    /// Print `running KIND INPUT` on stdout before each task.
    #[arg(long)]
    pub(crate) announce: bool,
    /// Seconds to keep trying to reach a server that went away.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) server_lost_after: u64,
}

fn announce(on: bool, kind: &str, input: &dyn std::fmt::Debug) {
    if on {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "running {kind} {input:?}");
        let _ = out.flush();
    }
}

/// The demo kinds: `sum` (1 + … + n), `square`, `sleep` (milliseconds; returns them), `fail`
/// (fails for good with its input as the error) and `noop`.
pub(crate) mod kinds {
    use super::{TaskError, TaskKind};

    /// 1 + 2 + … + n, by looping (a CPU-bound task).
    pub(crate) fn sum(announce: bool) -> TaskKind<u64, u64> {
        TaskKind::new("sum", move |n: u64| {
            super::announce(announce, "sum", &n);
            Ok::<_, TaskError>((1..=n).fold(0u64, u64::wrapping_add))
        })
    }

    /// n × n.
    pub(crate) fn square(announce: bool) -> TaskKind<u64, u64> {
        TaskKind::new("square", move |n: u64| {
            super::announce(announce, "square", &n);
            Ok::<_, TaskError>(n.wrapping_mul(n))
        })
    }

    /// Sleeps `ms` milliseconds and returns them.
    pub(crate) fn sleep(announce: bool) -> TaskKind<u64, u64> {
        TaskKind::new("sleep", move |ms: u64| {
            super::announce(announce, "sleep", &ms);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok::<_, TaskError>(ms)
        })
    }

    /// Fails for good with `why`.
    pub(crate) fn fail(announce: bool) -> TaskKind<String, ()> {
        TaskKind::new("fail", move |why: String| {
            super::announce(announce, "fail", &why);
            Err::<(), _>(TaskError::permanent(why))
        })
    }

    /// Does nothing.
    pub(crate) fn noop() -> TaskKind<(), ()> {
        TaskKind::new("noop", |()| Ok::<_, TaskError>(()))
    }
}

/// Runs the hidden `pool-worker` until the server is lost for good (or a signal kills it).
///
/// # Errors
/// No secret in the environment, or the worker failed.
pub(crate) fn pool_worker(args: &PoolWorkerArgs) -> Result<()> {
    let secret = Secret::from_env(SECRET_ENV)?.ok_or_else(|| anyhow!("{SECRET_ENV} is not set"))?;
    let a = args.announce;
    let mut builder = Worker::builder()
        .kind(kinds::sum(a))
        .kind(kinds::square(a))
        .kind(kinds::sleep(a))
        .kind(kinds::fail(a))
        .kind(kinds::noop())
        .server_lost_after(Duration::from_secs(args.server_lost_after));
    if let Some(slots) = args.slots {
        builder = builder.slots(slots);
    }
    if let Some(prefetch) = args.prefetch {
        builder = builder.prefetch(prefetch);
    }
    if let Some(name) = &args.name {
        builder = builder.name(name.clone());
    }
    let mut ready = builder.connect(&args.server, secret)?;
    if args.inline {
        let config = ready.config_mut();
        *config = config.clone().with_execution(Execution::Inline);
    }
    let exit = ready.run_blocking()?;
    log::info!("pool worker stopped: {exit:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn non_loopback_needs_an_explicit_secret() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        let cli = Cli::parse_from([
            "x",
            "--listen",
            "0.0.0.0:0",
            "--data",
            data.to_str().unwrap(),
        ]);
        if std::env::var_os(SECRET_ENV).is_none() {
            let err = server_secret(&cli.server).unwrap_err();
            assert!(err.to_string().contains("explicit secret"), "{err}");
        }
        let cli = Cli::parse_from(["x", "--data", data.to_str().unwrap(), "-vv"]);
        assert_eq!(cli.server.log_filter(), "trace");
        if std::env::var_os(SECRET_ENV).is_none() {
            create_data_dir(&data).unwrap();
            let (_, from) = server_secret(&cli.server).unwrap();
            assert!(from.ends_with("secret (created)"), "{from}");
            let (_, from) = server_secret(&cli.server).unwrap();
            assert!(from.ends_with("secret"), "{from}");
        }
    }

    #[test]
    fn demo_kinds_compute() {
        let out = kinds::sum(false)
            .run_bytes(&postcard::to_allocvec(&20_000_000u64).unwrap())
            .unwrap();
        assert_eq!(
            postcard::from_bytes::<u64>(&out).unwrap(),
            200_000_010_000_000
        );
    }
}
