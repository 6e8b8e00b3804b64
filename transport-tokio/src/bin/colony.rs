//! The `colony` command: inspect checkpoints and live servers, and benchmark the whole stack.
//!
//! Exit codes: 0 on success, 1 when the command fails at run time, 2 when it was called wrongly
//! (clap reports usage errors with that code). Errors go to stderr as `error: ...`.

#[path = "colony/status.rs"]
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

/// Run data-parallel jobs across every device you can reach.
#[derive(Debug, Parser)]
#[command(name = "colony", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show each job's progress, from a checkpoint file or from a running server.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["checkpoint", "server"])))]
struct StatusArgs {
    /// Checkpoint file to read (opened read-only, never modified).
    checkpoint: Option<PathBuf>,
    /// Ask the server at this address (host:port) instead.
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    /// File holding the shared secret as hex (default: the COLONY_SECRET environment variable).
    #[arg(long, value_name = "FILE", requires = "server")]
    secret_file: Option<PathBuf>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
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
            let s = runtime()?.block_on(status::query_server(addr, &secret))?;
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
