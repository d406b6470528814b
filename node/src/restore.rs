//! Restore: a new member's data directory built from a backup (`keel snapshot restore`, as
//! `etcdutl snapshot restore`).
//!
//! A backup ([`crate::server::etcd::backup`], what the etcd API's `Snapshot` streams) holds
//! every group's keys. [`restore`] verifies it, then builds the data directory of one member
//! of a **new** cluster, to be run once per member with the same backup and flags:
//!
//! - `keel.meta` names the new cluster (its id derived from `--initial-cluster`, `--groups`
//!   and `--initial-cluster-token` exactly as `keel server` derives it, so that the server
//!   accepts the directory), the member, the group and shard counts;
//! - each group `g` of the new cluster gets, in `shard-<g mod shards>/checkpoints/group-<g>/`,
//!   a checkpoint at raft index [`RESTORE_INDEX`] and term [`RESTORE_TERM`] holding the
//!   backup's keys that belong to it — the group is recomputed from each key with
//!   `keel_client::route::group_of`, so the new cluster may have another group count — with
//!   the new membership (every member of `--initial-cluster` a voter) and no client sessions;
//! - each shard's log (`shard-<s>/`, a WAL with its log store) records, for each of its
//!   groups, a hard state (term 1, commit 1) and that snapshot, as an installed snapshot is
//!   recorded: the group's log continues from the checkpoint, so at start the member loads
//!   it, raft starts at index 1 with the new membership, and the first leader's entries
//!   follow it.
//!
//! A group's revision is the largest revision of the backup groups its keys came from (with
//! the same group count, exactly the backup group's revision, even with no keys); keys keep
//! their create and mod revisions and versions. As after any restart from a checkpoint, the
//! restored group's compact revision is its revision: reads at older revisions fail.
//!
//! Every member must be restored from the same backup: raft takes their logs for equal at
//! index 1, so members restored from different backups would serve different data. The
//! directory is built beside the target under a temporary name, made durable (the WAL
//! writes with `O_DSYNC`, checkpoints and `keel.meta` are fsynced with their directories)
//! and renamed into place last, so that a failed restore leaves nothing behind and a
//! restored directory is complete. The target must be missing or empty.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keel_client::route::group_of;
use keel_engine::checkpoint::{CheckpointDir, CheckpointMeta};
use keel_engine::{
    CheckpointReader, HardState, KeyValue, KvLimits, LogStore, LogStoreOptions, SnapshotMeta,
    WriteBatch,
};
use keel_wal::{Backend, Wal, WalOptions};

use crate::consensus::ConfState;
use crate::runtime::{Meta, ServerConfig};
use crate::server::RESERVED_PREFIX;
use crate::server::etcd::backup::{self, Backup, BackupError};
use crate::shard::{Sessions, encode_conf_state};

/// The raft index every restored group starts at: its checkpoint covers it.
pub const RESTORE_INDEX: u64 = 1;
/// The raft term of the entry at [`RESTORE_INDEX`].
pub const RESTORE_TERM: u64 = 1;
/// Default [`RestoreOptions::backup_bytes_max`]: 16 GiB.
pub const DEFAULT_BACKUP_BYTES_MAX: u64 = 16 << 30;

/// What to restore, and as which member of which new cluster.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The member's data directory to create: missing, or an empty directory.
    pub data_dir: PathBuf,
    /// The member's name; one of `initial_cluster`'s.
    pub name: String,
    /// Every member of the new cluster: name and peer address (as `keel server` takes them).
    pub initial_cluster: Vec<(String, SocketAddr)>,
    /// Mixed into the new cluster's id (as `keel server --initial-cluster-token`). Default
    /// empty (none).
    pub initial_cluster_token: String,
    /// Raft groups of the new cluster. Default (`None`): the backup's.
    pub groups: Option<u32>,
    /// Shards of this member (as `keel server --shards`). Default: one per core, as the
    /// server's default.
    pub shards: u32,
    /// Size of the WAL segment the restore creates for each shard, in bytes. Default
    /// 64 MiB, as `keel server`'s.
    pub wal_segment_bytes: u64,
    /// The largest backup file read, in bytes (it is read into memory whole). Default
    /// 16 GiB.
    pub backup_bytes_max: u64,
}

impl RestoreOptions {
    /// The defaults for member `name` of `initial_cluster`, restoring into `data_dir`.
    pub fn new(
        data_dir: PathBuf,
        name: String,
        initial_cluster: Vec<(String, SocketAddr)>,
    ) -> RestoreOptions {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        RestoreOptions {
            data_dir,
            name,
            initial_cluster,
            initial_cluster_token: String::new(),
            groups: None,
            shards: u32::try_from(cores).unwrap_or(1),
            wal_segment_bytes: 64 << 20,
            backup_bytes_max: DEFAULT_BACKUP_BYTES_MAX,
        }
    }

    /// Checks the options as far as they do not depend on the backup (the group count, when
    /// not given, is the backup's); the error names the flag.
    pub fn validate(&self) -> Result<(), RestoreError> {
        server_config(self, self.groups.unwrap_or(1))?;
        if self.backup_bytes_max == 0 {
            return Err(RestoreError::InvalidOptions(
                "backup_bytes_max must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// What a restore built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    /// The new cluster's id.
    pub cluster_id: u64,
    /// The backup's cluster id.
    pub backup_cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// Groups of the new cluster.
    pub groups: u32,
    /// Shards of this member.
    pub shards: u32,
    /// Keys restored (over every group).
    pub keys: u64,
    /// Each group's revision.
    pub revisions: Vec<u64>,
}

/// Why a restore did not happen. Nothing is left behind in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The backup file cannot be read.
    #[error("reading the backup {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The backup is damaged, truncated or not a backup.
    #[error("the backup {path} is unusable: {error}")]
    Backup {
        /// The file.
        path: PathBuf,
        /// What its verification found.
        error: BackupError,
    },
    /// The options cannot make a member (the message names the flag).
    #[error("{0}")]
    InvalidOptions(String),
    /// The data directory exists and holds something.
    #[error(
        "the data directory {0} exists and is not empty: a restore makes a new member's \
         directory (remove it, or name another)"
    )]
    DataDirInUse(PathBuf),
    /// The backup's content cannot be restored (a key in two groups, a reserved key, a
    /// key over the store's limits).
    #[error("the backup cannot be restored: {0}")]
    Content(String),
    /// Writing the new directory failed.
    #[error("writing {path}: {reason}")]
    Write {
        /// Where.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Reads and verifies the backup at `file` and builds `options.data_dir` from it (see the
/// module documentation).
pub fn restore(file: &Path, options: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    options.validate()?;
    let read_error = |reason: String| RestoreError::Read {
        path: file.to_path_buf(),
        reason,
    };
    let len = std::fs::metadata(file)
        .map_err(|e| read_error(e.to_string()))?
        .len();
    if len > options.backup_bytes_max {
        return Err(read_error(format!(
            "{len} bytes, more than backup_bytes_max ({} bytes)",
            options.backup_bytes_max
        )));
    }
    let bytes = std::fs::read(file).map_err(|e| read_error(e.to_string()))?;
    let backup = backup::decode(&bytes).map_err(|error| RestoreError::Backup {
        path: file.to_path_buf(),
        error,
    })?;
    drop(bytes);
    restore_backup(&backup, options)
}

/// Builds `options.data_dir` from a decoded, verified backup.
pub fn restore_backup(
    backup: &Backup,
    options: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let backup_groups = u32::try_from(backup.groups.len())
        .map_err(|_| RestoreError::Content("the backup has too many groups".into()))?;
    let groups = options.groups.unwrap_or(backup_groups);
    let config = server_config(options, groups)?;
    let member_id = config.member_ids()[&options.name];
    let cluster_id = config.cluster_id();
    if cluster_id == backup.cluster_id {
        return Err(RestoreError::InvalidOptions(format!(
            "the restored cluster would have the backup's cluster id {cluster_id:#x} (the same \
             --initial-cluster and --groups): give --initial-cluster-token (to this restore \
             and to keel server) so that the new cluster never takes the old one's members \
             for its own"
        )));
    }
    let (per_group, revisions) = distribute(backup, groups)?;
    let target = &options.data_dir;
    check_target(target)?;
    let tmp = temporary_dir(target)?;
    // The identity a new member of this cluster starts with (`config` has the restore's
    // name, groups, shards and token).
    let meta = config.new_meta();
    let voters: Vec<u64> = config.member_ids().values().copied().collect();
    let built = build(&tmp, options, &meta, &voters, &per_group, &revisions)
        .and_then(|()| publish(&tmp, target));
    if let Err(e) = built {
        // Best effort: the error that stopped the restore is the one to report.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(RestoreReport {
        cluster_id,
        backup_cluster_id: backup.cluster_id,
        member_id,
        groups,
        shards: options.shards,
        keys: per_group.iter().map(|kvs| kvs.len() as u64).sum(),
        revisions,
    })
}

/// The server configuration the restored member will run with, checked as `keel server`
/// checks it (the member's name in the cluster, distinct names, group and shard counts).
fn server_config(options: &RestoreOptions, groups: u32) -> Result<ServerConfig, RestoreError> {
    let peer = options
        .initial_cluster
        .iter()
        .find(|(n, _)| *n == options.name)
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            RestoreError::InvalidOptions(format!(
                "--name {} is not a member of --initial-cluster",
                options.name
            ))
        })?;
    let mut config = ServerConfig::new(
        options.name.clone(),
        options.data_dir.clone(),
        options.initial_cluster.clone(),
        peer,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    config.groups = groups;
    config.shards = options.shards;
    config.initial_cluster_token = options.initial_cluster_token.clone();
    config.validate().map_err(RestoreError::InvalidOptions)?;
    wal_options(options.wal_segment_bytes)
        .validate()
        .map_err(|e| RestoreError::InvalidOptions(format!("wal_segment_bytes: {e}")))?;
    Ok(config)
}

/// The backup's keys by the group they belong to, in key order, and each group's revision.
type Distributed = (Vec<Vec<KeyValue>>, Vec<u64>);

/// Places the backup's keys in a cluster of `groups` groups (see the module documentation).
fn distribute(backup: &Backup, groups: u32) -> Result<Distributed, RestoreError> {
    let count = usize::try_from(groups).unwrap_or(usize::MAX);
    let mut per_group: Vec<BTreeMap<Vec<u8>, KeyValue>> = vec![BTreeMap::new(); count];
    let mut revisions = vec![0u64; count];
    let same_groups = backup.groups.len() == count;
    for source in &backup.groups {
        if same_groups {
            // An empty group keeps its revision too: with one group, etcd's exactly.
            let g = usize::try_from(source.group).unwrap_or(usize::MAX);
            if let Some(r) = revisions.get_mut(g) {
                *r = (*r).max(source.revision);
            }
        }
        for kv in &source.kvs {
            if kv.key.starts_with(RESERVED_PREFIX) {
                return Err(RestoreError::Content(format!(
                    "group {} holds the reserved key {:?} (backups leave the cluster's \
                     metadata out)",
                    source.group,
                    String::from_utf8_lossy(&kv.key)
                )));
            }
            let g = usize::try_from(group_of(&kv.key, groups)).unwrap_or(usize::MAX);
            let (Some(keys), Some(revision)) = (per_group.get_mut(g), revisions.get_mut(g)) else {
                return Err(RestoreError::Content(format!("no group {g}")));
            };
            *revision = (*revision).max(source.revision);
            if keys.insert(kv.key.clone(), kv.clone()).is_some() {
                return Err(RestoreError::Content(format!(
                    "the key {:?} appears in two groups",
                    String::from_utf8_lossy(&kv.key)
                )));
            }
        }
    }
    let per_group = per_group
        .into_iter()
        .map(|keys| keys.into_values().collect())
        .collect();
    Ok((per_group, revisions))
}

/// Refuses a target that exists and is not an empty directory.
fn check_target(target: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::DataDirInUse(target.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::Write {
            path: target.to_path_buf(),
            reason: format!("{e} (it must be missing or an empty directory)"),
        }),
    }
}

/// A fresh directory beside `target` to build in (a leftover of an interrupted restore of
/// the same target by the same process id is removed).
fn temporary_dir(target: &Path) -> Result<PathBuf, RestoreError> {
    let name = target
        .file_name()
        .ok_or_else(|| {
            RestoreError::InvalidOptions(format!(
                "--data-dir {} names no directory",
                target.display()
            ))
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    let write_error = |e: std::io::Error| RestoreError::Write {
        path: tmp.clone(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&parent).map_err(|e| RestoreError::Write {
        path: parent.clone(),
        reason: e.to_string(),
    })?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(write_error)?;
    }
    std::fs::create_dir(&tmp).map_err(write_error)?;
    Ok(tmp)
}

/// Writes the member's directory at `dir`: each shard's groups' checkpoints, then its log,
/// then `keel.meta`.
fn build(
    dir: &Path,
    options: &RestoreOptions,
    meta: &Meta,
    voters: &[u64],
    per_group: &[Vec<KeyValue>],
    revisions: &[u64],
) -> Result<(), RestoreError> {
    let conf_state = encode_conf_state(&ConfState {
        voters: voters.to_vec(),
        ..ConfState::default()
    });
    // An empty session table: the new cluster's clients start afresh.
    let sessions = Sessions::new(1).encode();
    for shard in 0..meta.shards {
        let shard_dir = dir.join(format!("shard-{shard}"));
        let mut batch = WriteBatch::new();
        for g in (0..meta.groups).filter(|g| g % meta.shards == shard) {
            let group = usize::try_from(g).unwrap_or(usize::MAX);
            let (Some(kvs), Some(&revision)) = (per_group.get(group), revisions.get(group)) else {
                continue;
            };
            let group_dir = shard_dir.join("checkpoints").join(format!("group-{g}"));
            write_checkpoint(&group_dir, kvs, revision, &conf_state, &sessions)?;
            batch.set_hard_state(
                u64::from(g),
                HardState {
                    term: RESTORE_TERM,
                    vote: 0,
                    commit: RESTORE_INDEX,
                },
            );
            batch.apply_snapshot(
                u64::from(g),
                SnapshotMeta {
                    index: RESTORE_INDEX,
                    term: RESTORE_TERM,
                    conf_state: conf_state.clone(),
                },
            );
        }
        write_log(&shard_dir, options.wal_segment_bytes, batch)?;
    }
    meta.store(dir).map_err(|reason| RestoreError::Write {
        path: dir.to_path_buf(),
        reason,
    })
}

/// Writes one group's checkpoint and reads it back whole (every CRC, the keys' order and
/// metadata, the store's limits), as the member will at start.
fn write_checkpoint(
    group_dir: &Path,
    kvs: &[KeyValue],
    revision: u64,
    conf_state: &[u8],
    sessions: &[u8],
) -> Result<(), RestoreError> {
    let write_error = |reason: String| RestoreError::Write {
        path: group_dir.to_path_buf(),
        reason,
    };
    let dir = CheckpointDir::open(group_dir).map_err(|e| write_error(e.to_string()))?;
    let header = CheckpointMeta {
        index: RESTORE_INDEX,
        term: RESTORE_TERM,
        revision,
        entry_count: 0,
        conf_state: conf_state.to_vec(),
        app_state: sessions.to_vec(),
    };
    let (path, _) = dir
        .write_with(header, &mut |sink| {
            for kv in kvs {
                sink.push(&kv.key, &kv.value, kv.meta)?;
            }
            Ok(())
        })
        .map_err(|e| write_error(e.to_string()))?;
    let reader = CheckpointReader::open(&path).map_err(|e| write_error(e.to_string()))?;
    reader
        .to_memtable(KvLimits::default())
        .map_err(|e| RestoreError::Content(e.to_string()))?;
    Ok(())
}

/// Creates a shard's log and writes `batch` to it (durable when this returns).
fn write_log(shard_dir: &Path, segment_bytes: u64, batch: WriteBatch) -> Result<(), RestoreError> {
    let write_error = |reason: String| RestoreError::Write {
        path: shard_dir.to_path_buf(),
        reason,
    };
    let wal =
        Wal::open(shard_dir, wal_options(segment_bytes)).map_err(|e| write_error(e.to_string()))?;
    let mut store = LogStore::open(wal, LogStoreOptions::default(), &mut |_| {})
        .map_err(|e| write_error(e.to_string()))?;
    if !batch.is_empty() {
        store.write(batch).map_err(|e| write_error(e.to_string()))?;
    }
    Ok(())
}

/// The options of the WAL a restore writes: the server's defaults with `segment_bytes`,
/// written by a plain thread (a restore writes once).
fn wal_options(segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        backend: Backend::Blocking,
        ..WalOptions::default()
    }
}

/// Moves the built directory into place (replacing an empty target) and makes the rename
/// durable.
fn publish(tmp: &Path, target: &Path) -> Result<(), RestoreError> {
    let write_error = |path: &Path, e: std::io::Error| RestoreError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    sync_tree(tmp).map_err(|e| write_error(tmp, e))?;
    std::fs::rename(tmp, target).map_err(|e| write_error(target, e))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    sync_dir(&parent).map_err(|e| write_error(&parent, e))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Fsyncs `dir` and every directory below it, so that every file's name is durable.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keel_engine::txn::RangeRequest;
    use keel_engine::{KeyMeta, MemLog};

    use super::*;
    use crate::server::etcd::backup::GroupBackup;
    use crate::shard::{Shard, ShardOptions, SnapshotOptions};

    fn kv(key: &str, value: &str, revision: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            meta: KeyMeta {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
        }
    }

    /// A backup of two groups, keys placed as `group_of` places them.
    fn sample() -> Backup {
        let mut groups = vec![
            GroupBackup {
                group: 0,
                revision: 7,
                kvs: Vec::new(),
            },
            GroupBackup {
                group: 1,
                revision: 9,
                kvs: Vec::new(),
            },
        ];
        for (i, key) in ["a", "b", "c", "d", "e", "f", "{t}x", "{t}y"]
            .iter()
            .enumerate()
        {
            let g = usize::try_from(group_of(key.as_bytes(), 2)).unwrap();
            let revision = u64::try_from(i).unwrap() % 7 + 1;
            groups[g].kvs.push(kv(key, &format!("v{i}"), revision));
        }
        for g in &mut groups {
            g.kvs.sort_by(|a, b| a.key.cmp(&b.key));
        }
        Backup {
            cluster_id: 0xB0,
            groups,
        }
    }

    fn cluster() -> Vec<(String, SocketAddr)> {
        (1..=3)
            .map(|i| {
                (
                    format!("m{i}"),
                    SocketAddr::from(([127, 0, 0, 1], 20_000 + i)),
                )
            })
            .collect()
    }

    fn options(dir: &Path, name: &str) -> RestoreOptions {
        let mut o = RestoreOptions::new(dir.join(name), name.into(), cluster());
        o.shards = 2;
        o.wal_segment_bytes = 8 << 20;
        o
    }

    /// Every key the groups of a restored directory serve after a start (the shard's own
    /// restart path), by group; checks each group starts at the restore's index.
    /// A key, its value and metadata.
    type Served = (Vec<u8>, Vec<u8>, KeyMeta);

    fn served(dir: &Path, groups: u32, shards: u32) -> Vec<Vec<Served>> {
        let mut out = vec![Vec::new(); usize::try_from(groups).unwrap()];
        for shard in 0..shards {
            let shard_dir = dir.join(format!("shard-{shard}"));
            let wal = Arc::new(Wal::open(&shard_dir, WalOptions::default()).unwrap());
            let store = LogStore::open(wal, LogStoreOptions::default(), &mut |_| {}).unwrap();
            let hosted: Vec<u64> = (0..u64::from(groups))
                .filter(|g| g % u64::from(shards) == u64::from(shard))
                .collect();
            let mut options = ShardOptions::new(2, vec![1, 2, 3]);
            options.snapshots = SnapshotOptions {
                dir: Some(shard_dir.join("checkpoints")),
                ..SnapshotOptions::default()
            };
            let shard = Shard::new(options, store, &hosted).unwrap();
            for g in hosted {
                assert_eq!(shard.applied_index(g), RESTORE_INDEX, "group {g}");
                let all = shard
                    .local_range(g, &RangeRequest::between(vec![0], vec![0xff; 4]))
                    .unwrap();
                out[usize::try_from(g).unwrap()] = all
                    .kvs
                    .into_iter()
                    .map(|kv| (kv.key, kv.value, kv.meta))
                    .collect();
            }
        }
        out
    }

    #[test]
    fn a_restored_member_serves_the_backup_in_any_group_count() {
        let dir = tempfile::tempdir().unwrap();
        let backup = sample();
        let all: Vec<Served> = {
            let mut v: Vec<_> = backup
                .groups
                .iter()
                .flat_map(|g| {
                    g.kvs
                        .iter()
                        .map(|kv| (kv.key.clone(), kv.value.clone(), kv.meta))
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        for groups in [None, Some(1), Some(3)] {
            let mut o = options(dir.path(), &format!("m2-{groups:?}"));
            o.name = "m2".into();
            o.groups = groups;
            let report = restore_backup(&backup, &o).unwrap();
            let n = groups.unwrap_or(2);
            assert_eq!(report.groups, n);
            assert_eq!(report.member_id, 2);
            assert_eq!(report.keys, 8);
            let meta = Meta::load(&o.data_dir).unwrap().unwrap();
            assert_eq!(meta.cluster_id, report.cluster_id);
            assert_ne!(meta.cluster_id, backup.cluster_id);
            assert_eq!((meta.member_id, meta.groups, meta.shards), (2, n, 2));
            let served = served(&o.data_dir, n, 2);
            let mut every: Vec<_> = served.iter().flatten().cloned().collect();
            every.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(every, all, "{n} groups");
            for (g, keys) in served.iter().enumerate() {
                for (key, _, _) in keys {
                    assert_eq!(usize::try_from(group_of(key, n)).unwrap(), g);
                }
            }
            // The same group count keeps each group's revision, empty or not.
            if groups.is_none() {
                assert_eq!(report.revisions, [7, 9]);
            }
        }
    }

    #[test]
    fn bad_input_is_refused_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let backup = sample();
        let listing = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        // A WAL segment the log cannot use.
        let mut o = options(dir.path(), "m1");
        o.wal_segment_bytes = 1 << 20;
        let e = restore_backup(&backup, &o).unwrap_err();
        assert!(e.to_string().contains("wal_segment_bytes"), "{e}");
        // A name not in the cluster.
        let mut o = options(dir.path(), "m9");
        let e = restore_backup(&backup, &o).unwrap_err();
        assert!(
            e.to_string().contains("not a member of --initial-cluster"),
            "{e}"
        );
        // The backup's own cluster id (same members and groups, no token).
        o = options(dir.path(), "m1");
        let mut same = backup.clone();
        same.cluster_id = server_config(&o, 2).unwrap().cluster_id();
        let e = restore_backup(&same, &o).unwrap_err();
        assert!(e.to_string().contains("--initial-cluster-token"), "{e}");
        o.initial_cluster_token = "restored".into();
        restore_backup(&same, &o).unwrap();
        // A data directory in use.
        let e = restore_backup(&backup, &o).unwrap_err();
        assert!(matches!(e, RestoreError::DataDirInUse(_)), "{e}");
        // An empty one is fine.
        let empty = options(dir.path(), "m2");
        std::fs::create_dir(&empty.data_dir).unwrap();
        restore_backup(&backup, &empty).unwrap();
        // A reserved key, a key in two groups, a key over the store's limits.
        let mut reserved = backup.clone();
        reserved.groups[0]
            .kvs
            .insert(0, kv("\0keel/members/1", "x", 1));
        let mut twice = backup.clone();
        let moved = twice.groups[1].kvs[0].clone();
        twice.groups[0].kvs.push(moved);
        twice.groups[0].kvs.sort_by(|a, b| a.key.cmp(&b.key));
        let mut huge = backup.clone();
        huge.groups[0].kvs.push(kv("zzz", &"v".repeat(2 << 20), 1));
        for (bad, says) in [
            (reserved, "reserved key"),
            (twice, "two groups"),
            (huge, "value"),
        ] {
            let e = restore_backup(&bad, &options(dir.path(), "m3")).unwrap_err();
            assert!(matches!(e, RestoreError::Content(_)), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        assert_eq!(listing(), ["m1", "m2"]);
        // A damaged or truncated file, a missing one.
        let file = dir.path().join("backup.db");
        let bytes = backup::encode(&backup).unwrap();
        for bad in [bytes[..bytes.len() - 1].to_vec(), {
            let mut b = bytes.clone();
            b[40] ^= 1;
            b
        }] {
            std::fs::write(&file, &bad).unwrap();
            let e = restore(&file, &options(dir.path(), "m3")).unwrap_err();
            assert!(matches!(e, RestoreError::Backup { .. }), "{e}");
        }
        std::fs::remove_file(&file).unwrap();
        let e = restore(&file, &options(dir.path(), "m3")).unwrap_err();
        assert!(matches!(e, RestoreError::Read { .. }), "{e}");
        assert_eq!(listing(), ["m1", "m2"]);
        // A failure while writing (the target's parent is a file) leaves nothing either.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let mut o = options(dir.path(), "m3");
        o.data_dir = dir.path().join("file").join("m3");
        assert!(restore_backup(&backup, &o).is_err());
        assert_eq!(listing(), ["file", "m1", "m2"]);
    }

    #[test]
    fn the_restore_index_is_what_a_log_store_records() {
        // The records a restore writes, applied to a log store, leave the group continuing
        // after the checkpoint (as the shard's restart check wants).
        let log = MemLog::new(16);
        let mut store = LogStore::open(log, LogStoreOptions::default(), &mut |_| {}).unwrap();
        let mut batch = WriteBatch::new();
        batch.set_hard_state(
            3,
            HardState {
                term: RESTORE_TERM,
                vote: 0,
                commit: RESTORE_INDEX,
            },
        );
        batch.apply_snapshot(
            3,
            SnapshotMeta {
                index: RESTORE_INDEX,
                term: RESTORE_TERM,
                conf_state: Vec::new(),
            },
        );
        store.write(batch).unwrap();
        assert_eq!(store.first_index(3), RESTORE_INDEX + 1);
        assert_eq!(store.last_index(3), RESTORE_INDEX);
        assert_eq!(store.term(3, RESTORE_INDEX).unwrap(), RESTORE_TERM);
        assert_eq!(store.hard_state(3).commit, RESTORE_INDEX);
    }
}
