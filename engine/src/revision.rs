//! etcd-style revisions.
//!
//! The store keeps one monotonically increasing *store revision*: every transaction that changes
//! at least one key advances it by exactly one, so all changes made by one transaction share a
//! revision (as in etcd, where the "main" revision names a transaction). Each live key carries:
//!
//! - `create_revision`: the store revision of the transaction that created the key (the
//!   latest creation, if the key was deleted and created again);
//! - `mod_revision`: the store revision of the last transaction that wrote the key;
//! - `version`: how many times the key was written since its creation (1 after creation).
//!
//! A key that does not exist has all three equal to 0, which is what the etcd Txn compare on
//! an absent key sees. Invariants of a live key: `0 < create_revision <= mod_revision <=
//! store revision` and `version >= 1`.

/// Per-key revision metadata, as served by the etcd v3 KV API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyMeta {
    /// Store revision of the transaction that created the key (0 when absent).
    pub create_revision: u64,
    /// Store revision of the last transaction that wrote the key (0 when absent).
    pub mod_revision: u64,
    /// Number of writes since the key's creation (0 when absent).
    pub version: u64,
}

impl KeyMeta {
    /// The metadata of an absent key: all zero.
    pub const ABSENT: KeyMeta = KeyMeta {
        create_revision: 0,
        mod_revision: 0,
        version: 0,
    };

    /// Metadata after writing the key at store revision `revision`, given its metadata before
    /// (`ABSENT` for a new key). A write to an existing key keeps its creation revision.
    pub fn after_write(self, revision: u64) -> KeyMeta {
        if self.version == 0 {
            KeyMeta {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            }
        } else {
            debug_assert!(revision >= self.mod_revision);
            KeyMeta {
                create_revision: self.create_revision,
                mod_revision: revision,
                version: self.version + 1,
            }
        }
    }

    /// Whether the metadata satisfies the invariants of a live key at store revision
    /// `store_revision`. Used to reject corrupt checkpoints and in debug assertions.
    pub fn is_valid_live(&self, store_revision: u64) -> bool {
        self.version >= 1
            && self.create_revision >= 1
            && self.create_revision <= self.mod_revision
            && self.mod_revision <= store_revision
    }
}

/// A key with its value and revision metadata, as returned by reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty when the read asked for keys only).
    pub value: Vec<u8>,
    /// Revision metadata of the key.
    pub meta: KeyMeta,
}
