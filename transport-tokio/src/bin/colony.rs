//! The `colony` command: inspect checkpoints and live servers, and benchmark the whole stack.
//!
//! Exit codes: 0 on success, 1 when the command fails at run time, 2 when it was called wrongly
//! (clap reports usage errors with that code). Errors go to stderr as `error: ...`.

#[path = "colony/bench.rs"]
mod bench;
#[path = "colony/bench_executor.rs"]
mod bench_executor;
#[path = "colony/pool.rs"]
mod pool;
#[path = "colony/status.rs"]
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use colony_tokio::tls::ClientTls;

/// Run data-parallel jobs across every device you can reach.
#[derive(Debug, Parser)]
#[command(name = "colony", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the standing pool server: workers join and leave at any time, executors submit
    /// tasks; jobs live in the data folder and resume after a restart.
    Server(pool::ServerArgs),
    /// Show each job's progress, from a checkpoint file or from a running server.
    Status(StatusArgs),
    /// Benchmark the whole stack on this machine: the real server with its durable checkpoint,
    /// real sockets on loopback, real worker processes running no-op tasks.
    Bench(BenchArgs),
    /// A benchmark worker process (started by `colony bench`).
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
    /// A pool worker with demo kinds (for tests and `colony bench --case executor`).
    #[command(hide = true)]
    PoolWorker(pool::PoolWorkerArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Which workload: `loop` (independent tasks, default 1,000,000), `dag` (independent chains
    /// of dependent tasks, default 10 chains of 1,000), `executor` (submit round trips and a
    /// `map` of 1,000,000 tiny tasks through the executor), or all three.
    #[arg(long, value_enum, default_value = "all")]
    case: bench::Case,
    /// Tasks per case (default: the case's own).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    tasks: Option<u32>,
    /// Worker processes.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: u32,
    /// Chains of the `dag` case.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    chains: u32,
    /// Leases each worker holds beyond the task it runs.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..4096))]
    prefetch: u32,
    /// Rounds of the `executor` case; it reports their medians.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// After the summary, print the figures as one JSON line (the last line of output).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BenchWorkerArgs {
    /// The server's address.
    #[arg(long)]
    addr: String,
    /// The worker's name.
    #[arg(long, default_value = "bench-worker")]
    name: String,
    /// Leases held beyond the task running.
    #[arg(long, default_value_t = 256)]
    prefetch: u32,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["checkpoint", "server"])))]
struct StatusArgs {
    /// Checkpoint file to read (opened read-only, never modified).
    checkpoint: Option<PathBuf>,
    /// Ask the server at this address instead: `host:port`, or a `tcp://`, `tls://`, `ws://` or
    /// `wss://` URL.
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    /// For a `tls://` or `wss://` server: trust the certificate authorities in this PEM file.
    #[arg(
        long,
        value_name = "FILE",
        requires = "server",
        conflicts_with = "tls_pin"
    )]
    tls_ca: Option<PathBuf>,
    /// For a `tls://` or `wss://` server: trust exactly the certificate in this PEM file.
    #[arg(long, value_name = "FILE", requires = "server")]
    tls_pin: Option<PathBuf>,
    /// File holding the shared secret as hex (default: the COLONY_SECRET environment variable).
    #[arg(long, value_name = "FILE", requires = "server")]
    secret_file: Option<PathBuf>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (filter, log_file) = match &cli.command {
        Command::Server(args) => (args.log_filter(), args.log_file.as_deref()),
        _ => ("warn", None),
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter));
    logger.format_target(false);
    if let Some(path) = log_file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => {
                logger.target(env_logger::Target::Pipe(Box::new(file)));
            }
            Err(e) => {
                eprintln!("error: cannot open log file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    logger.init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Status(args) => status(&args),
        Command::Bench(args) => {
            let plan = bench::Plan {
                case: args.case,
                tasks: args.tasks,
                workers: args.workers,
                chains: args.chains,
                prefetch: args.prefetch,
                rounds: args.rounds,
            };
            bench::main(&plan, args.json)
        }
        Command::BenchWorker(args) => bench::worker(&args.addr, &args.name, args.prefetch),
        Command::Server(args) => pool::server(&args),
        Command::PoolWorker(args) => pool::pool_worker(&args),
    }
}

fn status(args: &StatusArgs) -> Result<()> {
    match (&args.checkpoint, &args.server) {
        (Some(path), _) => {
            let s = status::read_checkpoint(path)?;
            if args.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print!("{}", status::render_file(&s));
            }
            Ok(())
        }
        (None, Some(addr)) => {
            let secret = status::load_secret(args.secret_file.as_deref())?;
            let tls = match (&args.tls_ca, &args.tls_pin) {
                (Some(ca), _) => Some(ClientTls::ca_file(ca)?),
                (None, Some(pin)) => Some(ClientTls::pinned_file(pin)?),
                (None, None) => None,
            };
            let s = runtime()?.block_on(status::query_server(addr, &secret, tls.as_ref()))?;
            if args.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print!("{}", status::render_live(&s));
            }
            Ok(())
        }
        (None, None) => anyhow::bail!("give a checkpoint file or --server ADDR"),
    }
}

/// A runtime for the commands that talk over the network.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
