//! The backup file that the etcd API's `Snapshot` streams (`etcdctl snapshot save`): every
//! group's keys as this member's replica holds them, byte by byte (version 1, little-endian).
//!
//! ```text
//! file      := header group{groups} trailer
//! header    := magic "KEELBAK\0" (8 bytes) | version u32 (= 1) | cluster_id u64 | groups u32
//! group     := group u32 | revision u64 | keys u64 | key_value{keys}
//! key_value := key_len u32 | key | value_len u32 | value
//!            | create_revision u64 | mod_revision u64 | version u64
//! padding   := zero bytes up to the next multiple of 512 bytes
//! trailer   := magic "KEELEND\0" (8 bytes) | body_bytes u64 | crc32 u32 | zero (12 bytes)
//! ```
//!
//! `body_bytes` counts header and groups; the crc32 (IEEE) covers every byte before the
//! trailer, padding included. The padding and the 32-byte trailer give the file the shape
//! etcd's snapshot files have (a multiple of 512 bytes plus a 32-byte checksum), which
//! `etcdctl snapshot save` checks before it keeps a file.
//!
//! Groups appear in order, each at one revision of its own (with one group: the whole store
//! at one revision, as etcd's snapshot is); keys ascend within a group. The cluster's
//! reserved metadata (`\0keel/...`) is left out: a restore makes a new cluster.

use keel_engine::{KeyMeta, KeyValue};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"KEELBAK\0";
/// The trailer's first bytes.
pub const END_MAGIC: &[u8; 8] = b"KEELEND\0";
/// The format version this module writes and reads.
pub const VERSION: u32 = 1;

/// One group's part of a backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupBackup {
    /// The group.
    pub group: u32,
    /// Its store revision.
    pub revision: u64,
    /// Its keys, ascending.
    pub kvs: Vec<KeyValue>,
}

/// A whole backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backup {
    /// The cluster it was taken from.
    pub cluster_id: u64,
    /// Every group, in order.
    pub groups: Vec<GroupBackup>,
}

/// Why bytes are not a backup.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The file does not start with [`MAGIC`].
    #[error("not a Keel backup (no KEELBAK magic)")]
    NotABackup,
    /// A version this build does not read.
    #[error("backup format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    /// The file ends inside a field.
    #[error("backup truncated at byte {0}")]
    Truncated(usize),
    /// The checksum does not match.
    #[error("backup checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The trailer's checksum.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// Something is out of place (named).
    #[error("backup malformed at byte {at}: {what}")]
    Malformed {
        /// Where.
        at: usize,
        /// What.
        what: String,
    },
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    let len = u32::try_from(bytes.len()).map_err(|_| {
        format!(
            "a key or value of {} bytes does not fit a backup",
            bytes.len()
        )
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Encodes a backup.
pub fn encode(backup: &Backup) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&backup.cluster_id.to_le_bytes());
    let groups = u32::try_from(backup.groups.len()).map_err(|_| "too many groups".to_string())?;
    out.extend_from_slice(&groups.to_le_bytes());
    for g in &backup.groups {
        out.extend_from_slice(&g.group.to_le_bytes());
        out.extend_from_slice(&g.revision.to_le_bytes());
        out.extend_from_slice(&u64::try_from(g.kvs.len()).unwrap_or(u64::MAX).to_le_bytes());
        for kv in &g.kvs {
            put_bytes(&mut out, &kv.key)?;
            put_bytes(&mut out, &kv.value)?;
            out.extend_from_slice(&kv.meta.create_revision.to_le_bytes());
            out.extend_from_slice(&kv.meta.mod_revision.to_le_bytes());
            out.extend_from_slice(&kv.meta.version.to_le_bytes());
        }
    }
    let body_bytes = u64::try_from(out.len()).unwrap_or(u64::MAX);
    out.resize(out.len().div_ceil(PAGE_BYTES) * PAGE_BYTES, 0);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(END_MAGIC);
    out.extend_from_slice(&body_bytes.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; TRAILER_BYTES - 20]);
    Ok(out)
}

/// The unit the body is padded to.
const PAGE_BYTES: usize = 512;
/// The trailer's size: what etcd's clients expect after the pages (a sha256's size).
const TRAILER_BYTES: usize = 32;

/// A bounds-checked reader over a backup's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], BackupError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(BackupError::Truncated(self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, BackupError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, BackupError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, BackupError> {
        let len = usize::try_from(self.u32()?).map_err(|_| BackupError::Truncated(self.at))?;
        Ok(self.take(len)?.to_vec())
    }
}

/// Decodes and verifies a backup: magic, version, checksum, every length against the
/// bytes there are (never allocating on a length alone), and key order within groups.
pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    if bytes.len() % PAGE_BYTES != TRAILER_BYTES {
        return Err(BackupError::Truncated(bytes.len()));
    }
    let pages = bytes.len() - TRAILER_BYTES;
    let (padded, tail) = bytes.split_at(pages);
    if &tail[..END_MAGIC.len()] != END_MAGIC {
        return Err(BackupError::Malformed {
            at: pages,
            what: "no KEELEND trailer".into(),
        });
    }
    let mut field = [0u8; 8];
    field.copy_from_slice(&tail[8..16]);
    let body_len = usize::try_from(u64::from_le_bytes(field))
        .ok()
        .filter(|&n| n <= pages && pages - n < PAGE_BYTES)
        .ok_or(BackupError::Malformed {
            at: pages + 8,
            what: "body length does not fit the pages".into(),
        })?;
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&tail[16..20]);
    let stored = u32::from_le_bytes(stored);
    let computed = crc32fast::hash(padded);
    if stored != computed {
        return Err(BackupError::Checksum { stored, computed });
    }
    if tail[20..].iter().any(|&b| b != 0) || padded[body_len..].iter().any(|&b| b != 0) {
        return Err(BackupError::Malformed {
            at: body_len,
            what: "non-zero padding".into(),
        });
    }
    let body = &padded[..body_len];
    let mut r = Reader {
        bytes: body,
        at: MAGIC.len(),
    };
    let version = r.u32()?;
    if version != VERSION {
        return Err(BackupError::Version(version));
    }
    let cluster_id = r.u64()?;
    let groups = r.u32()?;
    let mut backup = Backup {
        cluster_id,
        groups: Vec::new(),
    };
    for expected in 0..groups {
        let at = r.at;
        let group = r.u32()?;
        if group != expected {
            return Err(BackupError::Malformed {
                at,
                what: format!("group {group} where group {expected} belongs"),
            });
        }
        let revision = r.u64()?;
        let keys = r.u64()?;
        let mut kvs: Vec<KeyValue> = Vec::new();
        for _ in 0..keys {
            let at = r.at;
            let key = r.bytes()?;
            let value = r.bytes()?;
            let meta = KeyMeta {
                create_revision: r.u64()?,
                mod_revision: r.u64()?,
                version: r.u64()?,
            };
            if !meta.is_valid_live(revision) {
                return Err(BackupError::Malformed {
                    at,
                    what: format!("key revisions {meta:?} impossible at revision {revision}"),
                });
            }
            if kvs.last().is_some_and(|last| last.key >= key) {
                return Err(BackupError::Malformed {
                    at,
                    what: "keys out of order".into(),
                });
            }
            kvs.push(KeyValue { key, value, meta });
        }
        backup.groups.push(GroupBackup {
            group,
            revision,
            kvs,
        });
    }
    if r.at != body.len() {
        return Err(BackupError::Malformed {
            at: r.at,
            what: format!("{} bytes after the last group", body.len() - r.at),
        });
    }
    Ok(backup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Backup {
        let kv = |k: &str, v: &str, r: u64| KeyValue {
            key: k.into(),
            value: v.into(),
            meta: KeyMeta {
                create_revision: r,
                mod_revision: r,
                version: 1,
            },
        };
        Backup {
            cluster_id: 0xabcd,
            groups: vec![
                GroupBackup {
                    group: 0,
                    revision: 3,
                    kvs: vec![kv("a", "1", 2), kv("b", "", 3)],
                },
                GroupBackup {
                    group: 1,
                    revision: 0,
                    kvs: Vec::new(),
                },
            ],
        }
    }

    #[test]
    fn a_backup_round_trips() {
        let b = sample();
        assert_eq!(decode(&encode(&b).unwrap()).unwrap(), b);
    }

    #[test]
    fn damage_is_refused_never_read() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(bytes.len() % PAGE_BYTES, TRAILER_BYTES);
        // Every flipped byte is caught (magic, checksum or trailer), every cut too.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "cut at {n} accepted");
        }
        assert_eq!(decode(b"SQLite format 3\0"), Err(BackupError::NotABackup));
    }

    #[test]
    fn lengths_beyond_the_bytes_are_refused() {
        // A sound checksum over a body whose key length points past the end.
        let mut body = Vec::new();
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&VERSION.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        let body_bytes = body.len() as u64;
        body.resize(PAGE_BYTES, 0);
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(END_MAGIC);
        body.extend_from_slice(&body_bytes.to_le_bytes());
        body.extend_from_slice(&crc.to_le_bytes());
        body.extend_from_slice(&[0; 12]);
        assert!(matches!(decode(&body), Err(BackupError::Truncated(_))));
    }
}
