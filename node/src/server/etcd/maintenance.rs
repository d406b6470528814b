//! The `Maintenance` service: Status, Alarm, Defragment, and Snapshot (a Keel backup file,
//! see [`super::backup`]).

use keel_etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, ResponseHeader,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::codegen::tokio_stream;
use tonic::{Request, Response, Status};

use super::backup::{self, Backup, GroupBackup};
use super::convert::signed;
use super::{Etcd, kv};

/// The etcd server version Keel answers as: the API it serves is etcd 3.5's.
pub const ETCD_VERSION: &str = "3.5.0";

#[tonic::async_trait]
impl Maintenance for Etcd {
    async fn alarm(
        &self,
        _request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        // Keel raises no alarms (no space quota, no corruption alarm): every action answers
        // the empty list.
        Ok(Response::new(AlarmResponse {
            header: Some(self.header(0, self.ctx.view.facts(0).revision)),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        // Raft figures are group 0's (with one group, the cluster's); sizes add up every
        // group's state machine as this member holds it.
        let facts = self.ctx.view.facts(0);
        let bytes: u64 = (0..self.groups())
            .map(|g| self.ctx.view.facts(g).data_bytes)
            .sum();
        // etcd's db_size counts its file, never empty; Keel's state is in memory, so the
        // logical size is reported, at least 1 byte (clients divide by it).
        let db_size = signed(bytes.max(1));
        Ok(Response::new(StatusResponse {
            header: Some(self.header(0, facts.revision)),
            version: ETCD_VERSION.into(),
            db_size,
            leader: self.ctx.view.leader(0).unwrap_or(0),
            raft_index: facts.commit,
            raft_term: facts.term,
            raft_applied_index: facts.applied,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        // Nothing to defragment: the state machine is in memory and the log is segmented.
        Ok(Response::new(DefragmentResponse {
            header: Some(self.header(0, self.ctx.view.facts(0).revision)),
        }))
    }

    type SnapshotStream = tokio_stream::Iter<SnapshotChunks>;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // As etcd's, the snapshot is this member's own copy: each group read from the local
        // replica (serializable), consistent at that group's revision. The whole file is
        // built before it is sent, so that `remaining_bytes` is exact: it holds the
        // member's keys once more in memory while it streams (at most SNAPSHOT_STREAMS_MAX
        // streams per shard's listener; the messages are cut from it as they are sent).
        let open = SnapshotOpen(self.ctx.snapshots_open.clone());
        if open.0.fetch_add(1, Ordering::AcqRel) >= SNAPSHOT_STREAMS_MAX {
            return Err(Status::resource_exhausted(format!(
                "keel: {SNAPSHOT_STREAMS_MAX} Snapshot streams are open on this listener \
                 (snapshot_streams_max); retry when one ends"
            )));
        }
        let mut backup = Backup {
            cluster_id: self.ctx.cluster_id,
            groups: Vec::new(),
        };
        for group in 0..self.groups() {
            let read = self
                .range_group(group, &kv::everything(true), false)
                .await?;
            backup.groups.push(GroupBackup {
                group,
                revision: read.revision,
                kvs: read.kvs,
            });
        }
        let revision = backup.groups.iter().map(|g| g.revision).max().unwrap_or(0);
        let bytes = backup::encode(&backup).map_err(Status::internal)?;
        drop(backup);
        Ok(Response::new(tokio_stream::iter(SnapshotChunks {
            bytes,
            sent: 0,
            header: self.header(0, revision),
            _open: open,
        })))
    }
}

/// Most `Snapshot` streams open at once on one shard's client listener; each holds a copy
/// of the member's keys until it is sent or dropped.
pub const SNAPSHOT_STREAMS_MAX: usize = 4;

/// Counts a listener's `Snapshot` stream open until dropped (with the stream, also when the
/// client goes away without reading it).
struct SnapshotOpen(Arc<AtomicUsize>);

impl Drop for SnapshotOpen {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A backup file as `Snapshot` messages of 64 KiB, each cut when it is
/// sent.
pub struct SnapshotChunks {
    bytes: Vec<u8>,
    sent: usize,
    header: ResponseHeader,
    _open: SnapshotOpen,
}

impl Iterator for SnapshotChunks {
    type Item = Result<SnapshotResponse, Status>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.sent >= self.bytes.len() {
            return None;
        }
        let end = (self.sent + SNAPSHOT_CHUNK_BYTES).min(self.bytes.len());
        let blob = self.bytes[self.sent..end].to_vec();
        self.sent = end;
        Some(Ok(SnapshotResponse {
            header: Some(self.header),
            remaining_bytes: u64::try_from(self.bytes.len() - end).unwrap_or(0),
            blob,
        }))
    }
}

/// Bytes of a backup per `Snapshot` message.
const SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;
