//! The `keel` command-line tool: the server, benchmarks and log inspection.

mod bench;
mod debug;
mod server_cmd;
mod wal_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keel: a replicated, durable key-value storage engine.
#[derive(Parser)]
#[command(name = "keel", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a benchmark (on a temporary directory unless --dir is given).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run one member of a replicated cluster (etcd-style flags; see --help).
    Server(server_cmd::ServerArgs),
    /// Inspect a write-ahead log directory.
    #[command(subcommand)]
    Wal(wal_cmd::WalCommand),
    /// Helpers for Keel's own tests (crash tests drive these).
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Server(args) => server_cmd::run(args),
        Command::Wal(cmd) => wal_cmd::run(cmd),
        Command::Debug(cmd) => debug::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::from(2)
        }
    }
}
