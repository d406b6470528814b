//! The `keel` command-line tool: the server, client commands, benchmarks and log inspection.

mod bench;
mod client_cmd;
mod debug;
mod server_cmd;
mod snapshot_cmd;
mod txn_script;
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
    /// Backups of the etcd API's Snapshot: restore one into a new member's data directory,
    /// or print what one holds.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
    /// Inspect a write-ahead log directory.
    #[command(subcommand)]
    Wal(wal_cmd::WalCommand),
    /// Write a key: prints OK.
    ///
    /// The client sends the put to the leader of the key's group, following leader changes
    /// and retrying with the same write id, so that it applies once. Exit 0 when written,
    /// 2 on an error (which names the endpoint).
    Put(client_cmd::PutArgs),
    /// Read a key: prints its value; exit 1 when the key is absent.
    ///
    /// The value is printed as it is stored, followed by a newline. Exit 0 when found, 1
    /// when absent (nothing on stdout), 2 on an error (which names the endpoint).
    Get(client_cmd::GetArgs),
    /// Delete a key: prints how many keys were deleted (0 or 1).
    ///
    /// Exit 0 whether or not the key existed, 2 on an error (which names the endpoint).
    Del(client_cmd::DelArgs),
    /// Run a transaction read from stdin: prints SUCCESS or FAILURE and the results.
    #[command(after_long_help = client_cmd::TXN_HELP)]
    Txn(client_cmd::TxnArgs),
    /// Check that every group has a leader that can serve a linearizable read; exit 1 if not.
    ///
    /// Prints, for each endpoint, whether it answers; then, for each group, the member that
    /// served a linearizable read of a key of that group (its leader) and how long it took.
    /// An unreachable endpoint alone does not make the cluster unhealthy: a group without a
    /// leader does. Exit 0 healthy, 1 unhealthy or unreachable, 2 bad arguments.
    Health(client_cmd::HealthArgs),
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
        Command::Snapshot(cmd) => snapshot_cmd::run(cmd),
        Command::Debug(cmd) => debug::run(cmd),
        Command::Put(args) => client_cmd::put(&args),
        Command::Get(args) => client_cmd::get(&args),
        Command::Del(args) => client_cmd::del(&args),
        Command::Txn(args) => client_cmd::txn(&args),
        Command::Health(args) => client_cmd::health(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::from(2)
        }
    }
}
