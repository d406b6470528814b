//! Intent files that make suffix truncation and prefix purge crash-atomic.
//!
//! Each operation first writes a small intent file (temporary name, fsync, rename,
//! directory fsync), then changes the segments, then removes the intent. Recovery that
//! finds an intent redoes it; every step is idempotent, so a crash at any point ends with
//! the operation either not started or complete.
//!
//! ```text
//! truncate.pending                         purge.pending
//!   0  8 magic b"KEELTRNC"                   0  8 magic b"KEELPURG"
//!   8  8 segment seq to cut                  8  4 count of segments to remove
//!  16  8 cut offset                         12 8n their sequence numbers
//!  24  8 dirty end (zero up to here)         .  4 crc32 of all bytes before
//!  32  4 replacement length r
//!  36  4 count n of segments to remove
//!  40 8n their sequence numbers
//!   .  r replacement frame written at the cut offset (a shortened last frame, or empty)
//!   .  4 crc32 of all bytes before
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{read_u32, read_u64};
use crate::io::Faults;
use crate::segment::{self, remove_if_present, segment_path, sync_dir};

const TRUNCATE_FILE: &str = "truncate.pending";
const PURGE_FILE: &str = "purge.pending";
const TRUNCATE_MAGIC: &[u8; 8] = b"KEELTRNC";
const PURGE_MAGIC: &[u8; 8] = b"KEELPURG";

/// A suffix truncation: cut segment `seq` at `offset`, write `replacement` there, zero the
/// rest up to `dirty_end`, remove the segments in `remove`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TruncateIntent {
    pub seq: u64,
    pub offset: u64,
    pub dirty_end: u64,
    pub replacement: Vec<u8>,
    pub remove: Vec<u64>,
}

/// A prefix purge: remove these segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PurgeIntent {
    pub remove: Vec<u64>,
}

fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n)
        .expect("bounded by batch_bytes_max")
        .to_le_bytes()
}

impl TruncateIntent {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.replacement.len() + 8 * self.remove.len());
        out.extend_from_slice(TRUNCATE_MAGIC);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.dirty_end.to_le_bytes());
        out.extend_from_slice(&len32(self.replacement.len()));
        out.extend_from_slice(&len32(self.remove.len()));
        for seq in &self.remove {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out.extend_from_slice(&self.replacement);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<TruncateIntent> {
        let body = verified(bytes, TRUNCATE_MAGIC)?;
        if body.len() < 40 {
            return None;
        }
        let replacement_len = read_u32(body, 32) as usize;
        let count = read_u32(body, 36) as usize;
        let seqs_end = 40usize.checked_add(count.checked_mul(8)?)?;
        if body.len() != seqs_end.checked_add(replacement_len)? {
            return None;
        }
        Some(TruncateIntent {
            seq: read_u64(body, 8),
            offset: read_u64(body, 16),
            dirty_end: read_u64(body, 24),
            remove: (0..count).map(|i| read_u64(body, 40 + 8 * i)).collect(),
            replacement: body[seqs_end..].to_vec(),
        })
    }

    /// Records the intent durably, then carries it out.
    pub(crate) fn run(&self, dir: &Path, faults: Option<&Faults>) -> Result<()> {
        write_intent(dir, TRUNCATE_FILE, &self.encode())?;
        crash_point(dir, faults)?;
        self.redo(dir)
    }

    /// Carries out the intent; safe to repeat.
    fn redo(&self, dir: &Path) -> Result<()> {
        let path = segment_path(dir, self.seq);
        let end = self.offset + self.replacement.len() as u64;
        if !self.replacement.is_empty() {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("opening segment", &path, e))?;
            std::os::unix::fs::FileExt::write_all_at(&file, &self.replacement, self.offset)
                .map_err(|e| Error::io("writing segment", &path, e))?;
        }
        // Zeroing also makes the replacement durable: it ends with fdatasync.
        segment::zero_range(&path, end, self.dirty_end.max(end))?;
        // Newest first, so that a crash in the middle never leaves a hole in the log.
        for &seq in self.remove.iter().rev() {
            remove_if_present(&segment_path(dir, seq))?;
        }
        sync_dir(dir)?;
        remove_if_present(&dir.join(TRUNCATE_FILE))?;
        sync_dir(dir)
    }
}

impl PurgeIntent {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.remove.len());
        out.extend_from_slice(PURGE_MAGIC);
        out.extend_from_slice(&len32(self.remove.len()));
        for seq in &self.remove {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<PurgeIntent> {
        let body = verified(bytes, PURGE_MAGIC)?;
        if body.len() < 12 {
            return None;
        }
        let count = read_u32(body, 8) as usize;
        if body.len() != 12usize.checked_add(count.checked_mul(8)?)? {
            return None;
        }
        Some(PurgeIntent {
            remove: (0..count).map(|i| read_u64(body, 12 + 8 * i)).collect(),
        })
    }

    /// Records the intent durably, then carries it out. `recycle` may take the newest
    /// segment's file away for reuse instead of its removal (it returns whether it did);
    /// it runs last, so a crash before it ends with that segment simply removed.
    pub(crate) fn run(
        &self,
        dir: &Path,
        recycle: &mut dyn FnMut(&Path) -> Result<bool>,
        faults: Option<&Faults>,
    ) -> Result<()> {
        write_intent(dir, PURGE_FILE, &self.encode())?;
        crash_point(dir, faults)?;
        self.carry_out(dir, recycle)
    }

    fn redo(&self, dir: &Path) -> Result<()> {
        self.carry_out(dir, &mut |_| Ok(false))
    }

    fn carry_out(&self, dir: &Path, recycle: &mut dyn FnMut(&Path) -> Result<bool>) -> Result<()> {
        // Oldest first: a crash in the middle leaves a shorter but gap-free log.
        let last = self.remove.len().saturating_sub(1);
        for (i, &seq) in self.remove.iter().enumerate() {
            let path = segment_path(dir, seq);
            if i == last && path.exists() && recycle(&path)? {
                continue;
            }
            remove_if_present(&path)?;
        }
        sync_dir(dir)?;
        remove_if_present(&dir.join(PURGE_FILE))?;
        sync_dir(dir)
    }
}

/// Where tests stop an operation as a crash would: after its intent is durable, before
/// any segment changed.
fn crash_point(dir: &Path, faults: Option<&Faults>) -> Result<()> {
    match faults {
        Some(f) if f.crash_after_intent_armed() => Err(Error::io(
            "stopping after the intent (injected crash)",
            dir,
            std::io::Error::from_raw_os_error(libc::EIO),
        )),
        _ => Ok(()),
    }
}

/// The body of an intent file whose magic and checksum verify.
fn verified<'a>(bytes: &'a [u8], magic: &[u8; 8]) -> Option<&'a [u8]> {
    if bytes.len() < 12 || &bytes[..8] != magic {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    (crc32fast::hash(body) == read_u32(crc, 0)).then_some(body)
}

fn write_intent(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    fs::write(&tmp, bytes).map_err(|e| Error::io("writing intent", &tmp, e))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("syncing intent", &tmp, e))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|e| Error::io("renaming intent", &tmp, e))?;
    sync_dir(dir)
}

/// Completes any operation a crash interrupted. Called by recovery before it scans.
pub(crate) fn redo_pending(dir: &Path, read_only: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for name in [PURGE_FILE, TRUNCATE_FILE] {
        let path: PathBuf = dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("reading intent", &path, e)),
        };
        let corrupt = || Error::Corruption {
            path: path.clone(),
            offset: 0,
            reason: "intent file does not verify".into(),
        };
        if read_only {
            return Err(Error::Corruption {
                path: path.clone(),
                offset: 0,
                reason: "an interrupted truncation or purge is pending; open the log \
                         to complete it"
                    .into(),
            });
        }
        if name == PURGE_FILE {
            PurgeIntent::decode(&bytes).ok_or_else(corrupt)?.redo(dir)?;
            done.push("completed an interrupted purge".to_string());
        } else {
            TruncateIntent::decode(&bytes)
                .ok_or_else(corrupt)?
                .redo(dir)?;
            done.push("completed an interrupted truncation".to_string());
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_round_trip_and_reject_damage() {
        let t = TruncateIntent {
            seq: 3,
            offset: 4096,
            dirty_end: 8192,
            replacement: vec![1, 2, 3, 4, 5, 6, 7, 8],
            remove: vec![4, 5],
        };
        let mut bytes = t.encode();
        assert_eq!(TruncateIntent::decode(&bytes), Some(t));
        bytes[10] ^= 1;
        assert_eq!(TruncateIntent::decode(&bytes), None);
        let p = PurgeIntent { remove: vec![1, 2] };
        assert_eq!(PurgeIntent::decode(&p.encode()), Some(p));
        assert_eq!(PurgeIntent::decode(b"short"), None);
    }
}
