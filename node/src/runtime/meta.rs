//! The member's identity on disk: which cluster and member a data directory belongs to.
//!
//! `DATA_DIR/keel.meta` is a small text file written once when the member first starts
//! (tmp + fsync + rename + directory fsync) and checked on every start, so that a data
//! directory of another cluster or member is refused instead of joined. Version 2:
//!
//! ```text
//! keel-meta 2
//! cluster_id <u64>
//! member_id <u64>
//! name <name>
//! groups <u32>
//! shards <u32>
//! origin new|joined            started with the cluster, or joined it later
//! bootstrap <id>,<id>,...      every group's voters at creation (ascending)
//! members <count>              the members known at creation or at the join, at most
//!                              MEMBERS_MAX: the peers the member dials before it reads the
//!                              member list from its own replica of group 0
//! member <id> <ip:port> <name> one line each (the name may be empty: not started yet)
//! checksum <crc32 of the lines above, hex>
//! ```
//!
//! Version 1 (written before members could join) has only the first six lines: such a
//! member started with its cluster, and its bootstrap and peers are its
//! `--initial-cluster`'s.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use crate::members::MEMBERS_MAX;

/// How a member came to its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Started with the cluster (`--initial-cluster-state new`, or `keel snapshot restore`).
    New,
    /// Joined a running cluster (`--initial-cluster-state existing`): its identity came from
    /// a running member, not from its flags.
    Joined,
}

/// What a version 2 file adds: where the member came from, its groups' bootstrap voters,
/// and the members it first knew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaOrigin {
    /// New or joined.
    pub origin: Origin,
    /// Every group's voters at creation.
    pub bootstrap: Vec<u64>,
    /// Members (id, peer address, name) at creation or at the join.
    pub members: Vec<(u64, SocketAddr, String)>,
}

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
    /// Version 2's origin, bootstrap and members (`None`: a version 1 file).
    pub origin: Option<MetaOrigin>,
}

const FILE: &str = "keel.meta";
/// The largest member file read or written (64 KiB; one holds at most MEMBERS_MAX short
/// member lines, a few KiB).
const META_BYTES_MAX: u64 = 64 << 10;
const HEADER_V1: &str = "keel-meta 1";
const HEADER: &str = "keel-meta 2";

impl Meta {
    fn body(&self) -> String {
        let mut body = format!(
            "{}\ncluster_id {}\nmember_id {}\nname {}\ngroups {}\nshards {}\n",
            if self.origin.is_some() {
                HEADER
            } else {
                HEADER_V1
            },
            self.cluster_id,
            self.member_id,
            self.name,
            self.groups,
            self.shards
        );
        if let Some(o) = &self.origin {
            let origin = match o.origin {
                Origin::New => "new",
                Origin::Joined => "joined",
            };
            let ids: Vec<String> = o.bootstrap.iter().map(u64::to_string).collect();
            body.push_str(&format!(
                "origin {origin}\nbootstrap {}\nmembers {}\n",
                ids.join(","),
                o.members.len()
            ));
            for (id, peer, name) in &o.members {
                body.push_str(&format!("member {id} {peer} {name}\n"));
            }
        }
        body
    }

    /// Reads the directory's meta file; `Ok(None)` when there is none (a new member).
    pub fn load(dir: &Path) -> Result<Option<Meta>, String> {
        let path = dir.join(FILE);
        let bad = |why: &str| format!("{} is not a valid member file: {why}", path.display());
        match fs::metadata(&path) {
            Ok(m) if m.len() > META_BYTES_MAX => {
                return Err(bad(&format!(
                    "{} bytes, more than a member file holds ({META_BYTES_MAX})",
                    m.len()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        }
        let text =
            fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Meta::parse(&text, &bad).map(Some)
    }

    /// Parses a meta file's text; `bad` words an error.
    fn parse(text: &str, bad: &dyn Fn(&str) -> String) -> Result<Meta, String> {
        let (body, sum) = text
            .rsplit_once("checksum ")
            .ok_or_else(|| bad("no checksum line"))?;
        let sum = u32::from_str_radix(sum.trim(), 16).map_err(|_| bad("bad checksum"))?;
        if crc32fast::hash(body.as_bytes()) != sum {
            return Err(bad("checksum mismatch"));
        }
        let mut lines = body.lines();
        let version2 = match lines.next() {
            Some(HEADER) => true,
            Some(HEADER_V1) => false,
            _ => return Err(bad("unknown header")),
        };
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or_else(|| bad("truncated"))?;
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("expected {name}")))
        };
        let num = |v: &str| v.parse::<u64>().map_err(|_| bad("bad number"));
        let mut meta = Meta {
            cluster_id: num(&field("cluster_id")?)?,
            member_id: num(&field("member_id")?)?,
            name: field("name")?,
            groups: u32::try_from(num(&field("groups")?)?).map_err(|_| bad("groups"))?,
            shards: u32::try_from(num(&field("shards")?)?).map_err(|_| bad("shards"))?,
            origin: None,
        };
        if version2 {
            let origin = match field("origin")?.as_str() {
                "new" => Origin::New,
                "joined" => Origin::Joined,
                _ => return Err(bad("origin is neither new nor joined")),
            };
            let bootstrap = field("bootstrap")?
                .split(',')
                .map(num)
                .collect::<Result<Vec<u64>, String>>()?;
            if bootstrap.is_empty() || bootstrap.len() > MEMBERS_MAX {
                return Err(bad("bootstrap voters"));
            }
            let count = usize::try_from(num(&field("members")?)?).map_err(|_| bad("members"))?;
            if count > MEMBERS_MAX {
                return Err(bad(&format!("more than {MEMBERS_MAX} members")));
            }
            let mut members = Vec::with_capacity(count);
            for _ in 0..count {
                let line = field("member")?;
                let mut parts = line.splitn(3, ' ');
                let id = num(parts.next().unwrap_or(""))?;
                let peer = parts
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("member peer address"))?;
                let name = parts.next().ok_or_else(|| bad("member name"))?.to_string();
                members.push((id, peer, name));
            }
            meta.origin = Some(MetaOrigin {
                origin,
                bootstrap,
                members,
            });
        }
        if lines.next().is_some() {
            return Err(bad("lines after the last field"));
        }
        Ok(meta)
    }

    /// Writes the meta file durably. A meta that would not read back as itself (too many
    /// members, a name with a line break) is refused before anything is written.
    pub fn store(&self, dir: &Path) -> Result<(), String> {
        let body = self.body();
        let text = format!("{body}checksum {:08x}\n", crc32fast::hash(body.as_bytes()));
        let refused = |why: &str| {
            format!(
                "refusing to write {}: it would not read back ({why})",
                dir.join(FILE).display()
            )
        };
        if text.len() as u64 > META_BYTES_MAX || Meta::parse(&text, &refused)? != *self {
            return Err(refused(
                "it would read back as another identity, or is too long",
            ));
        }
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
            origin: Some(MetaOrigin {
                origin: Origin::Joined,
                bootstrap: vec![1, 2, 3],
                members: vec![
                    (1, "127.0.0.1:1".parse().unwrap(), "m1".into()),
                    (4, "[::1]:4".parse().unwrap(), String::new()),
                ],
            }),
        }
    }

    #[test]
    fn round_trip_and_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Meta::load(dir.path()).unwrap(), None);
        meta().store(dir.path()).unwrap();
        assert_eq!(Meta::load(dir.path()).unwrap(), Some(meta()));
        // Version 1 files (no origin) are still read.
        let v1 = Meta {
            origin: None,
            ..meta()
        };
        v1.store(dir.path()).unwrap();
        assert!(
            fs::read_to_string(dir.path().join(FILE))
                .unwrap()
                .starts_with(HEADER_V1)
        );
        assert_eq!(Meta::load(dir.path()).unwrap(), Some(v1));
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
        // Bodies whose checksum is right but whose fields are not: each line of a good
        // body replaced by a wrong one, and lines added or removed.
        let body = meta().body();
        let lines: Vec<&str> = body.lines().collect();
        let wrong = [
            "keel-meta 3",
            "origin maybe",
            "bootstrap ",
            "bootstrap 1,x",
            "members 65",
            "members 3",
            "member 4 not-an-address m4",
            "member 4 127.0.0.1:4",
            "groups 99999999999",
            "name",
        ];
        let with_sum = |body: &str| {
            format!("{body}checksum {:08x}\n", crc32fast::hash(body.as_bytes())).into_bytes()
        };
        for at in 0..lines.len() {
            for w in wrong {
                let mut edited = lines.clone();
                edited[at] = w;
                cases.push(with_sum(&(edited.join("\n") + "\n")));
            }
            let mut dropped = lines.clone();
            dropped.remove(at);
            cases.push(with_sum(&(dropped.join("\n") + "\n")));
        }
        cases.push(with_sum(&format!("{body}extra 1\n")));
        let many: String = (0..65).map(|i| format!("{i},")).collect();
        cases.push(with_sum(
            &body.replace("bootstrap 1,2,3", &format!("bootstrap {many}1")),
        ));
        // Oversized: refused by its size before it is read.
        cases.push(vec![b'a'; 70 << 10]);
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

    #[test]
    fn a_meta_that_would_not_read_back_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut broken = meta();
        broken.name = "m2\ngroups 1".into();
        assert!(broken.store(dir.path()).unwrap_err().contains("refusing"));
        let mut crowded = meta();
        if let Some(o) = crowded.origin.as_mut() {
            o.bootstrap = (1..=65).collect();
        }
        assert!(crowded.store(dir.path()).is_err());
        assert_eq!(Meta::load(dir.path()).unwrap(), None, "nothing was written");
    }
}
