//! The member's identity on disk: which cluster and member a data directory belongs to.
//!
//! `DATA_DIR/keel.meta` is a small text file written once when the member first starts
//! (tmp + fsync + rename + directory fsync) and checked on every start, so that a data
//! directory of another cluster or member is refused instead of joined:
//!
//! ```text
//! keel-meta 1
//! cluster_id <u64>
//! member_id <u64>
//! name <name>
//! groups <u32>
//! shards <u32>
//! checksum <crc32 of the lines above, hex>
//! ```

use std::fs;
use std::io::Write;
use std::path::Path;

/// What a data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The cluster.
    pub cluster_id: u64,
    /// This member.
    pub member_id: u64,
    /// This member's name.
    pub name: String,
    /// Raft groups of the cluster (fixed at creation).
    pub groups: u32,
    /// Shards of this member (fixed at creation: the shard of a group is `g mod shards`).
    pub shards: u32,
}

const FILE: &str = "keel.meta";
const HEADER: &str = "keel-meta 1";

impl Meta {
    fn body(&self) -> String {
        format!(
            "{HEADER}\ncluster_id {}\nmember_id {}\nname {}\ngroups {}\nshards {}\n",
            self.cluster_id, self.member_id, self.name, self.groups, self.shards
        )
    }

    /// Reads the directory's meta file; `Ok(None)` when there is none (a new member).
    pub fn load(dir: &Path) -> Result<Option<Meta>, String> {
        let path = dir.join(FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let bad = |why: &str| format!("{} is not a valid member file: {why}", path.display());
        let (body, sum) = text
            .rsplit_once("checksum ")
            .ok_or_else(|| bad("no checksum line"))?;
        let sum = u32::from_str_radix(sum.trim(), 16).map_err(|_| bad("bad checksum"))?;
        if crc32fast::hash(body.as_bytes()) != sum {
            return Err(bad("checksum mismatch"));
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad("unknown header"));
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or_else(|| bad("truncated"))?;
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("expected {name}")))
        };
        let num = |v: String| v.parse::<u64>().map_err(|_| bad("bad number"));
        Ok(Some(Meta {
            cluster_id: num(field("cluster_id")?)?,
            member_id: num(field("member_id")?)?,
            name: field("name")?,
            groups: u32::try_from(num(field("groups")?)?).map_err(|_| bad("groups"))?,
            shards: u32::try_from(num(field("shards")?)?).map_err(|_| bad("shards"))?,
        }))
    }

    /// Writes the meta file durably.
    pub fn store(&self, dir: &Path) -> Result<(), String> {
        let body = self.body();
        let text = format!("{body}checksum {:08x}\n", crc32fast::hash(body.as_bytes()));
        let tmp = dir.join(format!("{FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, dir.join(FILE))?;
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("writing {}: {e}", dir.join(FILE).display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            cluster_id: 0xC0FFEE,
            member_id: 2,
            name: "m2".into(),
            groups: 8,
            shards: 2,
        }
    }

    #[test]
    fn round_trip_and_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Meta::load(dir.path()).unwrap(), None);
        meta().store(dir.path()).unwrap();
        assert_eq!(Meta::load(dir.path()).unwrap(), Some(meta()));
    }

    #[test]
    fn damaged_files_are_errors_naming_the_file_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        meta().store(dir.path()).unwrap();
        let path = dir.path().join(FILE);
        let good = fs::read(&path).unwrap();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Every truncation, every flipped byte, and garbage.
        for cut in 0..good.len() {
            cases.push(good[..cut].to_vec());
        }
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            cases.push(bad);
        }
        cases.push(vec![0xFF; 300]);
        cases.push(b"checksum zz\n".to_vec());
        for bad in cases {
            fs::write(&path, &bad).unwrap();
            match Meta::load(dir.path()) {
                Err(e) => assert!(e.contains(FILE), "{e}"),
                // A flipped byte in the checksum's hex digits' case still verifies, or a cut
                // of the trailing newline: both leave the same content.
                Ok(found) => assert_eq!(found, Some(meta())),
            }
        }
    }
}
