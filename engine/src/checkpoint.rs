//! Checkpoints: the memtable written to an immutable, checksummed, sorted file.
//!
//! A checkpoint records the log position (`index`, and the raft `term` of that entry) whose
//! effects it contains, so it is both what a raft snapshot sends and what lets the log before
//! `index` be dropped. Recovery loads the newest checkpoint that verifies and replays the log
//! after it; a checkpoint that fails verification is reported and skipped, never half-loaded.
//!
//! # File format, version 2
//!
//! All integers are little-endian. Offsets are absolute byte offsets in the file.
//!
//! ```text
//! header, 64 bytes:
//!    0  [u8; 8]  magic "KEELCKPT"
//!    8  u32      format version = 2
//!   12  u32      flags, 0 (reserved)
//!   16  u64      index: log position covered (last applied command)
//!   24  u64      term: raft term of `index` (0 for a standalone store)
//!   32  u64      revision: store revision
//!   40  u64      entry_count: number of key-value entries
//!   48  u32      conf_state_len: bytes of the opaque configuration blob
//!   52  u32      app_state_len: bytes of the opaque application-state blob
//!                (at most APP_STATE_BYTES_MAX)
//!   56  u32      header_crc: CRC-32 (crc32fast) of bytes 0..56
//!   60  u32      reserved, 0 (outside the CRC; a reader rejects nonzero)
//! conf state, conf_state_len bytes at offset 64 (raft configuration, opaque here)
//! app state, app_state_len bytes right after it (for a replicated node: the group's
//!            exactly-once client sessions; opaque here, empty for a standalone store)
//! entries, in strictly ascending key order, each:
//!    0  u32      key_len (>= 1)
//!    4  u32      value_len
//!    8  u64      create_revision
//!   16  u64      mod_revision
//!   24  u64      version
//!   32  key_len bytes of key, then value_len bytes of value
//! offset table, entry_count × u64: the offset of each entry, in order (binary search)
//! footer, 32 bytes, at file length − 32:
//!    0  u64      data_offset: offset of the first entry
//!                (= 64 + conf_state_len + app_state_len)
//!    8  u64      table_offset: offset of the offset table
//!   16  u32      body_crc: CRC-32 of every byte from 64 up to the footer
//!   20  u32      footer_crc: CRC-32 of footer bytes 0..20
//!   24  [u8; 8]  magic "KEELCKND"
//! ```
//!
//! # Version 1
//!
//! Version 1 is version 2 without the app state: bytes 52..56 of its header are reserved
//! and must be zero, and the entries start right after the conf state. This build still
//! reads it (as a checkpoint with an empty app state) and writes version 2 only.
//!
//! Opening a checkpoint verifies both CRCs, the structure (every entry lies where the table
//! says, within the data section, keys strictly ascending) and every length against the file,
//! so a later lookup can only fail on a bug, never read out of bounds. The file is read through
//! a memory map: lookups and scans touch only the pages they need and never copy the whole
//! file to the heap (verification streams through it once, through the page cache).
//!
//! Writing goes to a temporary file of its own (`<name>.<pid>-<n>.tmp`), is fsynced, renamed
//! to its final name, and the directory is fsynced, so a crash leaves either no checkpoint or
//! a complete one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::bytes::Reader;
use crate::memtable::{KvLimits, Memtable, RestoreError};
use crate::revision::{KeyMeta, KeyValue};

/// First bytes of a checkpoint file.
pub const MAGIC: [u8; 8] = *b"KEELCKPT";
/// Last bytes of a checkpoint file.
pub const END_MAGIC: [u8; 8] = *b"KEELCKND";
/// The format version this code writes (it reads this one and [`FORMAT_VERSION_V1`]).
pub const FORMAT_VERSION: u32 = 2;
/// The first format version, without the app state; still read.
pub const FORMAT_VERSION_V1: u32 = 1;
/// Size of the header, in bytes.
pub const HEADER_BYTES: usize = 64;
/// Size of the footer, in bytes.
pub const FOOTER_BYTES: usize = 32;
/// Size of an entry's fixed part, before key and value, in bytes.
pub const ENTRY_HEADER_BYTES: usize = 32;
/// Largest configuration blob a checkpoint carries, in bytes.
pub const CONF_STATE_BYTES_MAX: usize = 1024 * 1024;
/// Largest application-state blob a checkpoint carries, in bytes (256 MiB).
pub const APP_STATE_BYTES_MAX: usize = 256 << 20;

const FILE_PREFIX: &str = "checkpoint-";
const FILE_SUFFIX: &str = ".ckpt";
const TMP_SUFFIX: &str = ".tmp";

/// Errors of the checkpoint layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// An I/O call failed.
    #[error("checkpoint {op} failed on {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file failed verification.
    #[error("corrupt checkpoint {path} at offset {offset}: {reason}")]
    Corruption {
        /// The file.
        path: PathBuf,
        /// Where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file was written by a format version this code does not read.
    #[error("checkpoint {path} has format version {found}, this build reads {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The checkpoint verified but its contents broke a store invariant or limit.
    #[error("checkpoint {path} cannot be loaded: {source}")]
    Restore {
        /// The file.
        path: PathBuf,
        /// Why.
        source: RestoreError,
    },
    /// The entries handed to a checkpoint writer were not strictly ascending, or too long.
    #[error("invalid checkpoint entries: {reason}")]
    BadSource {
        /// What was wrong.
        reason: String,
    },
    /// The checkpoint's configuration blob exceeded `CONF_STATE_BYTES_MAX`.
    #[error("conf state of {len} bytes exceeds CONF_STATE_BYTES_MAX")]
    ConfStateTooLarge {
        /// Its length.
        len: usize,
    },
    /// The checkpoint's application-state blob exceeded `APP_STATE_BYTES_MAX`.
    #[error("app state of {len} bytes exceeds APP_STATE_BYTES_MAX ({APP_STATE_BYTES_MAX})")]
    AppStateTooLarge {
        /// Its length.
        len: usize,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a checkpoint covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// Log position of the last command whose effects the checkpoint contains.
    pub index: u64,
    /// Raft term of the entry at `index` (0 for a standalone store).
    pub term: u64,
    /// Store revision at `index`.
    pub revision: u64,
    /// Number of key-value entries.
    pub entry_count: u64,
    /// Opaque configuration (raft ConfState) carried with a snapshot.
    pub conf_state: Vec<u8>,
    /// Opaque application state carried with the entries (a replicated node's client
    /// sessions); empty for a standalone store and for version-1 files.
    pub app_state: Vec<u8>,
}

/// Writes a checkpoint of `memtable` at `path` (through a temporary file, fsync, rename, directory
/// fsync). `term` and `conf_state` describe the raft position `memtable.applied_index()`.
pub fn write_checkpoint(
    path: &Path,
    memtable: &Memtable,
    term: u64,
    conf_state: &[u8],
) -> Result<CheckpointMeta, CheckpointError> {
    let header = CheckpointMeta {
        index: memtable.applied_index(),
        term,
        revision: memtable.revision(),
        entry_count: 0,
        conf_state: conf_state.to_vec(),
        app_state: Vec::new(),
    };
    write_checkpoint_with(path, header, &mut |sink| {
        for (key, value, meta) in memtable.iter() {
            sink.push(key, value, meta)?;
        }
        Ok(())
    })
}

/// What hands a checkpoint writer its entries: it calls [`EntrySink::push`] for each, in
/// strictly ascending key order.
pub type EntrySource<'a> = dyn FnMut(&mut EntrySink<'_>) -> Result<(), CheckpointError> + 'a;

/// Writes a checkpoint whose entries come from `fill` (for example chunks of an open memtable
/// snapshot, read while writes go on). `header` gives index, term, revision and conf state;
/// its `entry_count` is ignored and counted. Crash-atomic as [`write_checkpoint`].
pub fn write_checkpoint_with(
    path: &Path,
    header: CheckpointMeta,
    fill: &mut EntrySource<'_>,
) -> Result<CheckpointMeta, CheckpointError> {
    if header.conf_state.len() > CONF_STATE_BYTES_MAX {
        return Err(CheckpointError::ConfStateTooLarge {
            len: header.conf_state.len(),
        });
    }
    if header.app_state.len() > APP_STATE_BYTES_MAX {
        return Err(CheckpointError::AppStateTooLarge {
            len: header.app_state.len(),
        });
    }
    let tmp = tmp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    let result = write_body(file, &tmp, header, fill).and_then(|meta| {
        fs::rename(&tmp, path).map_err(io_err("rename", path))?;
        sync_parent(path)?;
        Ok(meta)
    });
    if result.is_err() {
        // A partial temporary file is garbage; removing it is best effort because the
        // original error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Counts bytes and feeds them to the body checksum while writing.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    pos: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.crc.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// Receives the entries of a checkpoint being written.
pub struct EntrySink<'a> {
    w: CrcWriter<BufWriter<File>>,
    path: &'a Path,
    offsets: Vec<u64>,
    last_key: Option<Vec<u8>>,
}

impl EntrySink<'_> {
    /// Appends one entry; keys must be non-empty and strictly ascending.
    pub fn push(&mut self, key: &[u8], value: &[u8], meta: KeyMeta) -> Result<(), CheckpointError> {
        if key.is_empty() || self.last_key.as_deref().is_some_and(|l| l >= key) {
            return Err(CheckpointError::BadSource {
                reason: "keys must be non-empty and strictly ascending".into(),
            });
        }
        let (Ok(kl), Ok(vl)) = (u32::try_from(key.len()), u32::try_from(value.len())) else {
            return Err(CheckpointError::BadSource {
                reason: "key or value longer than u32::MAX bytes".into(),
            });
        };
        self.offsets.push(self.w.pos);
        let mut head = [0u8; ENTRY_HEADER_BYTES];
        head[0..4].copy_from_slice(&kl.to_le_bytes());
        head[4..8].copy_from_slice(&vl.to_le_bytes());
        head[8..16].copy_from_slice(&meta.create_revision.to_le_bytes());
        head[16..24].copy_from_slice(&meta.mod_revision.to_le_bytes());
        head[24..32].copy_from_slice(&meta.version.to_le_bytes());
        (|| {
            self.w.put(&head)?;
            self.w.put(key)?;
            self.w.put(value)
        })()
        .map_err(io_err("write", self.path))?;
        match &mut self.last_key {
            Some(l) => {
                l.clear();
                l.extend_from_slice(key);
            }
            None => self.last_key = Some(key.to_vec()),
        }
        Ok(())
    }
}

fn write_body(
    file: File,
    path: &Path,
    header: CheckpointMeta,
    fill: &mut EntrySource<'_>,
) -> Result<CheckpointMeta, CheckpointError> {
    let conf_len =
        u32::try_from(header.conf_state.len()).map_err(|_| CheckpointError::ConfStateTooLarge {
            len: header.conf_state.len(),
        })?;
    let app_len =
        u32::try_from(header.app_state.len()).map_err(|_| CheckpointError::AppStateTooLarge {
            len: header.app_state.len(),
        })?;
    let data_offset = (HEADER_BYTES + header.conf_state.len() + header.app_state.len()) as u64;
    let mut sink = EntrySink {
        w: CrcWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            pos: HEADER_BYTES as u64,
        },
        path,
        offsets: Vec::new(),
        last_key: None,
    };
    (|| -> io::Result<()> {
        sink.w.inner.write_all(&[0u8; HEADER_BYTES])?;
        sink.w.put(&header.conf_state)?;
        sink.w.put(&header.app_state)
    })()
    .map_err(io_err("write", path))?;
    fill(&mut sink)?;
    let EntrySink { mut w, offsets, .. } = sink;
    let entry_count = offsets.len() as u64;
    (|| -> io::Result<()> {
        let table_offset = w.pos;
        for off in offsets {
            w.put(&off.to_le_bytes())?;
        }
        let body_crc = w.crc.clone().finalize();
        let mut footer = [0u8; FOOTER_BYTES];
        footer[0..8].copy_from_slice(&data_offset.to_le_bytes());
        footer[8..16].copy_from_slice(&table_offset.to_le_bytes());
        footer[16..20].copy_from_slice(&body_crc.to_le_bytes());
        let footer_crc = crc32fast::hash(&footer[0..20]);
        footer[20..24].copy_from_slice(&footer_crc.to_le_bytes());
        footer[24..32].copy_from_slice(&END_MAGIC);
        w.inner.write_all(&footer)?;
        w.inner.flush()
    })()
    .map_err(io_err("write", path))?;
    let mut file = w
        .inner
        .into_inner()
        .map_err(|e| io_err("write", path)(e.into_error()))?;
    let meta = CheckpointMeta {
        entry_count,
        ..header
    };
    let encoded = encode_header(&meta, conf_len, app_len);
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&encoded))
        .map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))?;
    Ok(meta)
}

fn encode_header(meta: &CheckpointMeta, conf_len: u32, app_len: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&meta.index.to_le_bytes());
    h[24..32].copy_from_slice(&meta.term.to_le_bytes());
    h[32..40].copy_from_slice(&meta.revision.to_le_bytes());
    h[40..48].copy_from_slice(&meta.entry_count.to_le_bytes());
    h[48..52].copy_from_slice(&conf_len.to_le_bytes());
    h[52..56].copy_from_slice(&app_len.to_le_bytes());
    let crc = crc32fast::hash(&h[0..56]);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Removes a file that may already be gone: a file listed a moment ago can be renamed by
/// the writer that was finishing it (a crashed owner's helper thread outliving it in one
/// process) or removed by another retention pass; either way it is no longer there to remove.
fn remove_if_present(path: &Path) -> Result<(), CheckpointError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io_err("remove", path)),
    }
}

/// A temporary name for a write of `path` that no other writer shares, not even one of the
/// same checkpoint in this process (an install and a local write of one index may run at
/// once): `<name>.<process id>-<counter>.tmp`. [`CheckpointDir::open`] still finds it as a
/// leftover (`checkpoint-` prefix, `.tmp` suffix).
fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{}-{n}{TMP_SUFFIX}", std::process::id()));
    PathBuf::from(s)
}

/// Fsyncs the directory holding `path`, so that a create or rename in it is durable.
pub(crate) fn sync_parent(path: &Path) -> Result<(), CheckpointError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("directory fsync", dir))
}

/// The bytes of a checkpoint: a memory map of a file, or a buffer (a snapshot received over
/// the network, verified before it is written).
enum Backing {
    Map(Mmap),
    Buf(Vec<u8>),
}

/// A verified checkpoint, read in place. See the module documentation for the format.
pub struct CheckpointReader {
    path: PathBuf,
    bytes: Backing,
    meta: CheckpointMeta,
    data_offset: usize,
    table_offset: usize,
    entry_count: usize,
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointReader")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .finish()
    }
}

/// One entry of a checkpoint, borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Revision metadata.
    pub meta: KeyMeta,
}

impl CheckpointReader {
    /// Opens and verifies the checkpoint at `path`.
    pub fn open(path: &Path) -> Result<CheckpointReader, CheckpointError> {
        let file = File::open(path).map_err(io_err("open", path))?;
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        if len < (HEADER_BYTES + FOOTER_BYTES) as u64 {
            return Err(CheckpointError::Corruption {
                path: path.to_path_buf(),
                offset: len,
                reason: format!("file of {len} bytes is shorter than header and footer"),
            });
        }
        // SAFETY: a published checkpoint is immutable: the engine writes it under a temporary
        // name and never opens it for writing after the rename. A third party truncating the
        // file under us is outside the store's contract (as with any mmap-based store).
        let map = unsafe { Mmap::map(&file) }.map_err(io_err("mmap", path))?;
        Self::parse(path.to_path_buf(), Backing::Map(map))
    }

    /// Verifies a checkpoint held in memory, such as a received raft snapshot.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<CheckpointReader, CheckpointError> {
        Self::parse(PathBuf::from("<memory>"), Backing::Buf(bytes))
    }

    /// The raw bytes of the checkpoint file: what a raft snapshot sends.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Backing::Map(m) => m,
            Backing::Buf(b) => b,
        }
    }

    /// Where the checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the checkpoint covers.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entry_count
    }

    /// Whether the checkpoint holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entry_count == 0
    }

    fn parse(path: PathBuf, bytes: Backing) -> Result<CheckpointReader, CheckpointError> {
        let b: &[u8] = match &bytes {
            Backing::Map(m) => m,
            Backing::Buf(v) => v,
        };
        let corrupt = |offset: usize, reason: String| CheckpointError::Corruption {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        // Fixed-offset fields of the header and footer; the length check below keeps every
        // one of them in bounds, and a read out of bounds would be reported, not a panic.
        let u32_at = |at: usize| Reader::at(b, at).u32().map_err(|r| corrupt(at, r));
        let u64_at = |at: usize| Reader::at(b, at).u64().map_err(|r| corrupt(at, r));
        let len = b.len();
        if len < HEADER_BYTES + FOOTER_BYTES {
            return Err(corrupt(len, "shorter than header and footer".into()));
        }
        if b[0..8] != MAGIC {
            return Err(corrupt(0, "bad magic".into()));
        }
        if u32_at(56)? != crc32fast::hash(&b[0..56]) {
            return Err(corrupt(56, "header checksum mismatch".into()));
        }
        if u32_at(12)? != 0 || u32_at(60)? != 0 {
            return Err(corrupt(
                12,
                "unknown flags or nonzero reserved bytes".into(),
            ));
        }
        let version = u32_at(8)?;
        if version != FORMAT_VERSION && version != FORMAT_VERSION_V1 {
            return Err(CheckpointError::UnsupportedVersion {
                path,
                found: version,
            });
        }
        // Version 1 reserved bytes 52..56 (zero); version 2 holds the app state's length.
        let app_len = u32_at(52)? as usize;
        if version == FORMAT_VERSION_V1 && app_len != 0 {
            return Err(corrupt(
                52,
                "nonzero reserved bytes in a version-1 header".into(),
            ));
        }
        let f = len - FOOTER_BYTES;
        if b[f + 24..f + 32] != END_MAGIC {
            return Err(corrupt(f + 24, "bad end magic (truncated file?)".into()));
        }
        if u32_at(f + 20)? != crc32fast::hash(&b[f..f + 20]) {
            return Err(corrupt(f + 20, "footer checksum mismatch".into()));
        }
        let meta = CheckpointMeta {
            index: u64_at(16)?,
            term: u64_at(24)?,
            revision: u64_at(32)?,
            entry_count: u64_at(40)?,
            conf_state: Vec::new(),
            app_state: Vec::new(),
        };
        let conf_len = u32_at(48)? as usize;
        let data_offset = usize::try_from(u64_at(f)?).unwrap_or(usize::MAX);
        let table_offset = usize::try_from(u64_at(f + 8)?).unwrap_or(usize::MAX);
        let entry_count = usize::try_from(meta.entry_count).unwrap_or(usize::MAX);
        let table_end = entry_count
            .checked_mul(8)
            .and_then(|t| t.checked_add(table_offset));
        if conf_len > CONF_STATE_BYTES_MAX
            || app_len > APP_STATE_BYTES_MAX
            || data_offset != HEADER_BYTES + conf_len + app_len
            || table_offset < data_offset
            || table_end != Some(f)
        {
            return Err(corrupt(
                f,
                format!(
                    "inconsistent layout: conf {conf_len} B, app state {app_len} B, \
                     data at {data_offset}, \
                     table at {table_offset}, {entry_count} entries, footer at {f}"
                ),
            ));
        }
        if u32_at(f + 16)? != crc32fast::hash(&b[HEADER_BYTES..f]) {
            return Err(corrupt(HEADER_BYTES, "body checksum mismatch".into()));
        }
        let mut reader = CheckpointReader {
            meta: CheckpointMeta {
                conf_state: b[HEADER_BYTES..HEADER_BYTES + conf_len].to_vec(),
                app_state: b[HEADER_BYTES + conf_len..data_offset].to_vec(),
                ..meta
            },
            path: path.clone(),
            data_offset,
            table_offset,
            entry_count,
            bytes: Backing::Buf(Vec::new()),
        };
        // Walk the data section once: each entry must start where the table says and end
        // where the next begins, with keys strictly ascending. After this every access by
        // index is in bounds.
        let mut cursor = data_offset;
        let mut prev: Option<&[u8]> = None;
        for i in 0..entry_count {
            if reader.table_entry(b, i) != Some(cursor as u64) {
                return Err(corrupt(
                    cursor,
                    format!("offset table entry {i} does not match"),
                ));
            }
            let e = reader
                .entry_at(b, cursor)
                .ok_or_else(|| corrupt(cursor, format!("entry {i} overruns the data section")))?;
            if e.key.is_empty() || prev.is_some_and(|p| p >= e.key) {
                return Err(corrupt(
                    cursor,
                    format!("entry {i} key empty or out of order"),
                ));
            }
            if !e.meta.is_valid_live(meta.revision) {
                return Err(corrupt(
                    cursor,
                    format!("entry {i} has impossible revisions"),
                ));
            }
            prev = Some(e.key);
            cursor += ENTRY_HEADER_BYTES + e.key.len() + e.value.len();
        }
        if cursor != table_offset {
            return Err(corrupt(
                cursor,
                "data section does not end at the table".into(),
            ));
        }
        reader.bytes = bytes;
        Ok(reader)
    }

    /// The offset the table gives for entry `i`.
    fn table_entry(&self, b: &[u8], i: usize) -> Option<u64> {
        Reader::at(b, self.table_offset.checked_add(i.checked_mul(8)?)?)
            .u64()
            .ok()
    }

    /// Decodes the entry at `at`, or None if it would overrun the data section.
    fn entry_at<'a>(&self, b: &'a [u8], at: usize) -> Option<EntryRef<'a>> {
        let head_end = at.checked_add(ENTRY_HEADER_BYTES)?;
        if at < self.data_offset || head_end > self.table_offset {
            return None;
        }
        let mut head = Reader::at(b, at);
        let kl = usize::try_from(head.u32().ok()?).ok()?;
        let vl = usize::try_from(head.u32().ok()?).ok()?;
        let meta = KeyMeta {
            create_revision: head.u64().ok()?,
            mod_revision: head.u64().ok()?,
            version: head.u64().ok()?,
        };
        let key_end = head_end.checked_add(kl)?;
        let end = key_end.checked_add(vl)?;
        if end > self.table_offset {
            return None;
        }
        Some(EntryRef {
            key: &b[head_end..key_end],
            value: &b[key_end..end],
            meta,
        })
    }

    /// The `i`-th entry in key order, or an error if `i >= len()` or the entry does not
    /// decode. Opening verified every entry, so the latter means the file changed under the
    /// map (which the store never does); it is reported rather than trusted.
    pub fn entry(&self, i: usize) -> Result<EntryRef<'_>, CheckpointError> {
        let b = self.bytes();
        let bad = |reason: String| CheckpointError::Corruption {
            path: self.path.clone(),
            offset: (self.table_offset + 8 * i.min(self.entry_count)) as u64,
            reason,
        };
        if i >= self.entry_count {
            return Err(bad(format!("entry {i} of {}", self.entry_count)));
        }
        self.table_entry(b, i)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| self.entry_at(b, at))
            .ok_or_else(|| bad(format!("entry {i} no longer decodes (file changed?)")))
    }

    /// Position of the first entry whose key is `>= key`.
    pub fn lower_bound(&self, key: &[u8]) -> Result<usize, CheckpointError> {
        let (mut lo, mut hi) = (0, self.entry_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.key < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The entry for `key`, by binary search over the offset table.
    pub fn get(&self, key: &[u8]) -> Result<Option<EntryRef<'_>>, CheckpointError> {
        let i = self.lower_bound(key)?;
        if i == self.entry_count {
            return Ok(None);
        }
        let e = self.entry(i)?;
        Ok((e.key == key).then_some(e))
    }

    /// Entries with keys in `[start, end)` (`end = None`: to the last key), in order. An
    /// entry that fails to decode ends the scan with its error.
    pub fn scan<'a>(
        &'a self,
        start: &[u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = Result<EntryRef<'a>, CheckpointError>> + 'a {
        let (first, error) = match self.lower_bound(start) {
            Ok(first) => (first, None),
            Err(e) => (self.entry_count, Some(e)),
        };
        error
            .map(Err)
            .into_iter()
            .chain((first..self.entry_count).map(move |i| self.entry(i)))
            .take_while(move |e| match e {
                Ok(e) => end.is_none_or(|end| e.key < end),
                Err(_) => true,
            })
    }

    /// Loads the whole checkpoint into a memtable with the given limits.
    pub fn to_memtable(&self, limits: KvLimits) -> Result<Memtable, CheckpointError> {
        Memtable::restore(
            limits,
            self.meta.revision,
            self.meta.index,
            (0..self.entry_count).map(|i| {
                let e = self
                    .entry(i)
                    .map_err(|e| RestoreError::Source(Box::new(e)))?;
                Ok(KeyValue {
                    key: e.key.to_vec(),
                    value: e.value.to_vec(),
                    meta: e.meta,
                })
            }),
        )
        .map_err(|source| CheckpointError::Restore {
            path: self.path.clone(),
            source,
        })
    }
}

/// A checkpoint file that failed verification and was skipped.
#[derive(Debug)]
pub struct SkippedCheckpoint {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub error: CheckpointError,
}

/// A directory of checkpoints named `checkpoint-<index, 20 digits>.ckpt`.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
}

impl CheckpointDir {
    /// Opens (creating if needed) a checkpoint directory and removes temporary files left by
    /// a crash during a write: they were never published, so nothing refers to them. The
    /// directory has no lock of its own: open it only while holding the owner's lock (`Db`
    /// holds its WAL's), or a second opener could remove a write in progress.
    pub fn open(dir: &Path) -> Result<CheckpointDir, CheckpointError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(FILE_PREFIX) && name.ends_with(TMP_SUFFIX) {
                let p = entry.path();
                remove_if_present(&p)?;
            }
        }
        Ok(CheckpointDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file name of the checkpoint covering `index`.
    pub fn path_for(&self, index: u64) -> PathBuf {
        Self::path_in(&self.dir, index)
    }

    /// Where the checkpoint covering `index` is in the checkpoint directory `dir`, without
    /// opening it (a reader of a published checkpoint, such as a snapshot sender, needs no
    /// more; [`CheckpointDir::open`] also removes temporary files, which only the
    /// directory's one writer may do).
    pub fn path_in(dir: &Path, index: u64) -> PathBuf {
        dir.join(format!("{FILE_PREFIX}{index:020}{FILE_SUFFIX}"))
    }

    /// Published checkpoints as (index, path), oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let index = name
                .strip_prefix(FILE_PREFIX)
                .and_then(|n| n.strip_suffix(FILE_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(index) = index {
                out.push((index, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes a checkpoint of `memtable` (covering its applied index) and returns its path.
    pub fn write(
        &self,
        memtable: &Memtable,
        term: u64,
        conf_state: &[u8],
    ) -> Result<(PathBuf, CheckpointMeta), CheckpointError> {
        let path = self.path_for(memtable.applied_index());
        let meta = write_checkpoint(&path, memtable, term, conf_state)?;
        Ok((path, meta))
    }

    /// Writes a checkpoint covering `header.index` from entries handed out by `fill` (see
    /// [`write_checkpoint_with`]) and returns its path.
    pub fn write_with(
        &self,
        header: CheckpointMeta,
        fill: &mut EntrySource<'_>,
    ) -> Result<(PathBuf, CheckpointMeta), CheckpointError> {
        let path = self.path_for(header.index);
        let meta = write_checkpoint_with(&path, header, fill)?;
        Ok((path, meta))
    }

    /// Verifies received checkpoint bytes (a raft snapshot) and publishes them crash-atomically.
    pub fn install(&self, bytes: Vec<u8>) -> Result<CheckpointReader, CheckpointError> {
        let reader = CheckpointReader::from_bytes(bytes)?;
        let path = self.path_for(reader.meta().index);
        let tmp = tmp_path(&path);
        (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(reader.bytes())?;
            f.sync_all()
        })()
        .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        sync_parent(&path)?;
        CheckpointReader::open(&path)
    }

    /// The newest checkpoint that verifies, with every newer one that is corrupt (and why).
    /// Recovery uses the returned one and must report the skipped ones.
    ///
    /// Only verified corruption ([`CheckpointError::Corruption`]: bad magic or checksum,
    /// truncated or inconsistent content) skips a file. Any other error opening one — an
    /// I/O error such as running out of file descriptors, or a format version this build
    /// does not read (written by a newer build before a downgrade) — is returned as it is,
    /// naming the file: falling back to an older checkpoint then would silently lose what
    /// only the newer one holds once the log behind it has been purged.
    pub fn newest_valid(
        &self,
    ) -> Result<(Option<CheckpointReader>, Vec<SkippedCheckpoint>), CheckpointError> {
        let mut skipped = Vec::new();
        for (_, path) in self.list()?.into_iter().rev() {
            match CheckpointReader::open(&path) {
                Ok(r) => return Ok((Some(r), skipped)),
                Err(error @ CheckpointError::Corruption { .. }) => {
                    skipped.push(SkippedCheckpoint { path, error })
                }
                Err(error) => return Err(error),
            }
        }
        Ok((None, skipped))
    }

    /// Renames a checkpoint that failed verification to `<name>.corrupt`: it stays on disk
    /// for inspection but no longer counts as a checkpoint, so retention and log purging,
    /// which go by the names of the checkpoints present, can never keep it in place of a
    /// good one.
    pub fn quarantine(&self, path: &Path) -> Result<PathBuf, CheckpointError> {
        let mut target = path.as_os_str().to_owned();
        target.push(".corrupt");
        let target = PathBuf::from(target);
        fs::rename(path, &target).map_err(io_err("rename", path))?;
        sync_parent(&target)?;
        Ok(target)
    }

    /// Deletes all but the newest `keep` checkpoints, and fsyncs the directory.
    pub fn retain(&self, keep: usize) -> Result<(), CheckpointError> {
        self.retain_keeping(keep, &[])
    }

    /// Deletes all but the newest `keep` checkpoints and those covering an index in
    /// `protect` (such as the checkpoint a raft log records as its snapshot, which a
    /// restart falls back to when newer ones are damaged), and fsyncs the directory.
    pub fn retain_keeping(&self, keep: usize, protect: &[u64]) -> Result<(), CheckpointError> {
        let list = self.list()?;
        let drop_n = list.len().saturating_sub(keep);
        let mut dropped = false;
        for (index, path) in &list[..drop_n] {
            if protect.contains(index) {
                continue;
            }
            remove_if_present(path)?;
            dropped = true;
        }
        if dropped {
            sync_parent(&self.path_for(0))?;
        }
        Ok(())
    }
}
