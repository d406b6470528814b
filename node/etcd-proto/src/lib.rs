//! The etcd v3 API messages and services that Keel serves, generated at build time from
//! Keel's own `.proto` files (`proto/`) by protox and tonic-build.
//!
//! The package, service, method and message names, field numbers and types are etcd's, so
//! etcd's clients talk to Keel unchanged: `etcdserverpb` holds the `KV`, `Maintenance` and
//! `Cluster` services (server traits under `*_server`, clients under `*_client`), `mvccpb`
//! the stored key-value. Field names are Keel's snake case (`peer_urls` for etcd's
//! `peerURLs`), which the wire format does not see.
//!
//! Every message is decoded by [`codec::ProtoCodec`], which answers a malformed message
//! `INVALID_ARGUMENT` (tonic's own codec answers `INTERNAL`, which clients may retry).

pub mod codec;

/// Keys with their values and revisions (etcd's `mvccpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// The KV, Maintenance and Cluster services and their messages (etcd's `etcdserverpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// The full gRPC path prefixes of the services this crate defines, for routing requests on
/// a connection to the right service.
pub mod paths {
    /// The `KV` service.
    pub const KV: &str = "/etcdserverpb.KV/";
    /// The `Maintenance` service.
    pub const MAINTENANCE: &str = "/etcdserverpb.Maintenance/";
    /// The `Cluster` service.
    pub const CLUSTER: &str = "/etcdserverpb.Cluster/";
}
