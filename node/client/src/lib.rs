//! Keel's native client protocol and its async client.
//!
//! - [`wire`]: the protocol, documented byte by byte: prefaces, checksummed frames with
//!   request ids, requests and responses mirroring the engine's (etcd-like) semantics,
//!   limits, and streaming decoders that never panic. The server uses the same module.
//! - [`route`]: which group a key belongs to, a stable hash with Redis-style `{hash tags}`.
//! - [`Client`]: routes each request to its group's leader over pooled connections that
//!   carry many requests at once, follows leader changes, and retries writes with the same
//!   (client id, sequence) so that they apply exactly once.
//!
//! This crate depends on neither the engine nor the node: an application links only the
//! protocol and tokio.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), keel_client::Error> {
//! let client = keel_client::Client::connect(&["127.0.0.1:2379"]).await?;
//! client.put("greeting", "hello").await?;
//! let kv = client.get("greeting").await?.kv.expect("just written");
//! assert_eq!((kv.value.as_slice(), kv.version), (&b"hello"[..], 1));
//! # Ok(())
//! # }
//! ```

mod client;
mod connection;
mod error;
pub mod route;
pub mod wire;

pub use client::{Client, ClientOptions};
pub use error::{Error, Result};
pub use route::group_of;
pub use wire::{
    ClientLimits, ClusterStatus, Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse,
    GetRequest, GetResponse, KeyValue, OpResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ReadConsistency, ResponseHeader, TxnOp, TxnRequest, TxnResponse,
};
