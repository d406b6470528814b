//! `keel snapshot`: backups made by the etcd API's `Snapshot` (`etcdctl snapshot save`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use keel_node::restore::{self, RestoreOptions};
use keel_node::server::etcd::backup;

use crate::server_cmd::parse_initial_cluster;

/// Subcommands of `keel snapshot`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Build a new member's data directory from a backup (as etcdutl snapshot restore).
    ///
    /// Run it once per member of the new cluster, with the same backup file and the same
    /// --initial-cluster, --initial-cluster-token, --groups and --shards; then start each
    /// member with `keel server` and those flags (and its --data-dir). The new cluster has
    /// a new id (derived from those flags, as keel server derives it); every group starts
    /// from a checkpoint of the backup's keys that belong to it. The data directory must be
    /// missing or empty; nothing is left behind when the restore fails.
    Restore(RestoreArgs),
    /// Verify a backup and print what it holds: its cluster, and each group's revision and
    /// key count.
    Status(StatusArgs),
}

/// `keel snapshot restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file (`etcdctl snapshot save`).
    file: PathBuf,
    /// The new member's data directory (missing or empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// The member's name (one of --initial-cluster's).
    #[arg(long)]
    name: String,
    /// Every member of the new cluster: name=peer-url, comma-separated.
    #[arg(long)]
    initial_cluster: String,
    /// Mixed into the new cluster's id; give keel server the same.
    #[arg(long, default_value = "")]
    initial_cluster_token: String,
    /// Raft groups of the new cluster (default: the backup's). Keys are placed by their
    /// own group in the new count.
    #[arg(long)]
    groups: Option<u32>,
    /// Shards of the member, as keel server will be given (default: one per core, as its
    /// default).
    #[arg(long)]
    shards: Option<u32>,
}

/// `keel snapshot status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The backup file.
    file: PathBuf,
}

/// Runs a `keel snapshot` subcommand.
pub fn run(cmd: SnapshotCommand) -> Result<ExitCode, String> {
    match cmd {
        SnapshotCommand::Restore(args) => run_restore(&args),
        SnapshotCommand::Status(args) => status(&args),
    }
}

fn run_restore(args: &RestoreArgs) -> Result<ExitCode, String> {
    let cluster = parse_initial_cluster(&args.initial_cluster)?;
    let mut options = RestoreOptions::new(args.data_dir.clone(), args.name.clone(), cluster);
    options.initial_cluster_token = args.initial_cluster_token.clone();
    options.groups = args.groups;
    if let Some(s) = args.shards {
        options.shards = s;
    }
    let report = restore::restore(&args.file, &options).map_err(|e| e.to_string())?;
    println!(
        "restored member {} (id {}) of cluster {:#x} into {}: {} keys in {} groups, {} shards \
         (backup of cluster {:#x})",
        args.name,
        report.member_id,
        report.cluster_id,
        args.data_dir.display(),
        report.keys,
        report.groups,
        report.shards,
        report.backup_cluster_id
    );
    Ok(ExitCode::SUCCESS)
}

fn status(args: &StatusArgs) -> Result<ExitCode, String> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| format!("reading the backup {}: {e}", args.file.display()))?;
    let backup = backup::decode(&bytes)
        .map_err(|e| format!("the backup {} is unusable: {e}", args.file.display()))?;
    println!(
        "cluster {:#x}, {} groups",
        backup.cluster_id,
        backup.groups.len()
    );
    for g in &backup.groups {
        println!(
            "group {}: revision {}, {} keys",
            g.group,
            g.revision,
            g.kvs.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
