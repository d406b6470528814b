//! Segment files: names, creation off the hot path, and read access for readers.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::format::{self, FRAME_HEADER_BYTES, FrameInfo, Lsn};

const SEGMENT_SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".tmp";

/// A frame is indexed when it starts at least this many bytes after the last indexed one,
/// which bounds both the index's memory and the bytes scanned to find a record.
pub(crate) const INDEX_STRIDE_BYTES: u64 = 64 << 10;

/// The path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

/// The sequence number in a segment file name, if `name` is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, sorted by sequence number. Leftover temporary files (a
/// crash while creating a segment) are removed when `clean` is set.
pub fn list_segments(dir: &Path, clean: bool) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_segment_name(name) {
            segments.push((seq, entry.path()));
        } else if clean && name.ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(|e| Error::io("removing", entry.path(), e))?;
        }
    }
    segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(segments)
}

/// Makes directory entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Opens a segment for the writer: `O_DIRECT` when asked and supported, `O_DSYNC` when
/// the backend needs it. Returns the file and whether it is `O_DIRECT`.
pub(crate) fn open_for_write(path: &Path, direct: bool, dsync: bool) -> Result<(File, bool)> {
    let sync_flag = if dsync { libc::O_DSYNC } else { 0 };
    if direct {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | sync_flag)
            .open(path)
        {
            Ok(file) => return Ok((file, true)),
            // Filesystems without O_DIRECT (tmpfs) refuse it with EINVAL.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(Error::io("opening segment", path, e)),
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(sync_flag)
        .open(path)
        .map_err(|e| Error::io("opening segment", path, e))?;
    Ok((file, false))
}

/// Creates segment `seq` filled with zeros, durably, under its final name.
///
/// The zeros are real writes, not `fallocate`: writing into unwritten extents would make
/// every later `fdatasync` a journalled metadata update. The file is built under a
/// temporary name and renamed, so a crash never leaves a short segment behind.
pub fn create_zeroed(dir: &Path, seq: u64, bytes: u64) -> Result<PathBuf> {
    let path = segment_path(dir, seq);
    let tmp = dir.join(format!("{seq:020}{SEGMENT_SUFFIX}{TMP_SUFFIX}"));
    let open = |flags| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(flags)
            .open(&tmp)
    };
    // O_DIRECT where the filesystem allows it: 64 MiB of zeros through the page cache
    // would be written back in a burst that stalls the log's own flushes.
    let file = match open(libc::O_DIRECT) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(0),
        other => other,
    }
    .map_err(|e| Error::io("creating segment", &tmp, e))?;
    let zeros = crate::aligned::AlignedBuf::zeroed(1 << 20);
    let zeros = zeros.as_slice();
    let mut at = 0u64;
    while at < bytes {
        // Segment sizes are multiples of the block size, as O_DIRECT needs.
        let n = (bytes - at).min(zeros.len() as u64);
        let n = usize::try_from(n).expect("at most 1 MiB");
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| Error::io("zero-filling segment", &tmp, e))?;
        at += n as u64;
    }
    file.sync_all()
        .map_err(|e| Error::io("syncing segment", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io("renaming segment", &tmp, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Turns the file of a purged segment into spare segment `seq`, durably, and returns its
/// new path. Steps, each safe to crash after: rename to a temporary name (recovery removes
/// temporary files), write an unused recycled header, sync, rename to the final name, sync
/// the directory.
pub(crate) fn recycle(dir: &Path, old: &Path, seq: u64) -> Result<PathBuf> {
    let path = segment_path(dir, seq);
    let tmp = dir.join(format!("{seq:020}{SEGMENT_SUFFIX}{TMP_SUFFIX}"));
    fs::rename(old, &tmp).map_err(|e| Error::io("renaming segment", old, e))?;
    sync_dir(dir)?;
    write_unused_header(&tmp, seq)?;
    fs::rename(&tmp, &path).map_err(|e| Error::io("renaming segment", &tmp, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Writes the header of a recycled segment that holds no data of its own yet (first lsn
/// [`format::UNUSED_LSN`]) and makes it durable.
pub(crate) fn write_unused_header(path: &Path, seq: u64) -> Result<()> {
    let mut block = vec![0u8; format::SEGMENT_HEADER_BYTES];
    format::SegmentHeader {
        seq,
        first_lsn: format::UNUSED_LSN,
        recycled: true,
    }
    .encode(&mut block);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening segment", path, e))?;
    file.write_all_at(&block, 0)
        .map_err(|e| Error::io("writing segment header", path, e))?;
    file.sync_data()
        .map_err(|e| Error::io("syncing segment", path, e))
}

/// Overwrites `[from, to)` of a file with zeros and makes it durable.
pub(crate) fn zero_range(path: &Path, from: u64, to: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening segment", path, e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = usize::try_from((to - at).min(zeros.len() as u64)).expect("at most 1 MiB");
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| Error::io("zeroing", path, e))?;
        at += n as u64;
    }
    file.sync_data().map_err(|e| Error::io("syncing", path, e))
}

/// Maps a whole segment read-only.
pub(crate) fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io("opening segment", path, e))?;
    // SAFETY: the log never writes into a segment file while a map of it can be read.
    // Readers copy out of a map only under its view's read lock ([`SegmentView::read`]);
    // truncation switches the view of the segment it cuts to `pread` under the write lock
    // before it writes into the file, and purge retires the views of the segments it
    // removes the same way before it recycles their files. (Recovery maps files before any
    // writer exists, and drops its maps before the log opens for writing.)
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io("mapping segment", path, e))
}

/// How readers reach a segment's bytes: sealed segments through a map, the active one
/// through `pread` (its durable end moves while it is read).
pub(crate) enum SegmentBytes {
    Mapped(Mmap),
    Active(File),
    /// The segment was cut or removed while this view was alive: nothing may be read from
    /// `at` on (`reason` says why).
    Retired {
        at: u64,
        reason: &'static str,
        file: Option<File>,
    },
}

/// What readers know of one segment.
pub(crate) struct SegmentView {
    pub(crate) seq: u64,
    pub(crate) path: PathBuf,
    pub(crate) first_lsn: Lsn,
    /// Locked for reading while bytes are copied out; locked for writing to switch a
    /// map away before the log writes into the file (see [`map`]).
    bytes: RwLock<SegmentBytes>,
    /// Byte offset one past the last durable frame.
    end_off: AtomicU64,
    /// Position one past the last durable record. Stored after `index` and `end_off`, so
    /// a reader that sees a record position also sees the frames that hold it.
    end_lsn: AtomicU64,
    /// Sparse index of (first lsn, offset) of frames, ascending, one every
    /// [`INDEX_STRIDE_BYTES`]; the first entry is the first frame.
    index: Mutex<Vec<(Lsn, u64)>>,
    frame_bytes_max: usize,
}

impl SegmentView {
    pub(crate) fn new(
        seq: u64,
        path: PathBuf,
        first_lsn: Lsn,
        bytes: SegmentBytes,
        end: (u64, Lsn),
        index: Vec<(Lsn, u64)>,
        frame_bytes_max: usize,
    ) -> SegmentView {
        SegmentView {
            seq,
            path,
            first_lsn,
            bytes: RwLock::new(bytes),
            end_off: AtomicU64::new(end.0),
            end_lsn: AtomicU64::new(end.1),
            index: Mutex::new(index),
            frame_bytes_max,
        }
    }

    /// Opens the active segment for reading with `pread`.
    pub(crate) fn open_active(path: &Path) -> Result<SegmentBytes> {
        let file = File::open(path).map_err(|e| Error::io("opening segment", path, e))?;
        Ok(SegmentBytes::Active(file))
    }

    pub(crate) fn end_lsn(&self) -> Lsn {
        self.end_lsn.load(Ordering::Acquire)
    }

    pub(crate) fn end_off(&self) -> u64 {
        self.end_off.load(Ordering::Acquire)
    }

    /// Records that frames up to `end_off` (ending at `end_lsn`) are durable, with the
    /// sparse index entries of the new frames.
    pub(crate) fn extend(&self, end_off: u64, end_lsn: Lsn, new_index: &[(Lsn, u64)]) {
        if !new_index.is_empty() {
            let mut index = self.index.lock().expect("index lock");
            for &entry in new_index {
                let due = index
                    .last()
                    .is_none_or(|&(_, off)| entry.1 >= off + INDEX_STRIDE_BYTES);
                if due {
                    index.push(entry);
                }
            }
        }
        self.end_off.store(end_off, Ordering::Release);
        self.end_lsn.store(end_lsn, Ordering::Release);
    }

    pub(crate) fn index_snapshot(&self) -> Vec<(Lsn, u64)> {
        self.index.lock().expect("index lock").clone()
    }

    /// The offset of an indexed frame at or before the one holding `lsn`.
    pub(crate) fn seek(&self, lsn: Lsn) -> u64 {
        let index = self.index.lock().expect("index lock");
        let at = index.partition_point(|&(first, _)| first <= lsn);
        if at == 0 {
            format::SEGMENT_HEADER_BYTES as u64
        } else {
            index[at - 1].1
        }
    }

    /// Reads and verifies the frame at `offset`, which must lie below the durable end.
    /// Returns a copy of the frame's bytes and what it holds.
    pub(crate) fn frame_at(&self, offset: u64) -> Result<(Vec<u8>, FrameInfo)> {
        let end = self.end_off();
        let corrupt = |reason: String| Error::Corruption {
            path: self.path.clone(),
            offset,
            reason,
        };
        if offset >= end {
            return Err(corrupt(format!("read past the durable end {end}")));
        }
        let header = self.read_chunk_exact(offset, FRAME_HEADER_BYTES)?;
        if header.len() < FRAME_HEADER_BYTES {
            return Err(corrupt("frame header past the durable end".into()));
        }
        let len = format::read_u32(&header, 4) as usize;
        let avail = end - offset;
        if len < FRAME_HEADER_BYTES || len as u64 > avail || len > self.frame_bytes_max {
            return Err(corrupt(format!("frame length {len} out of bounds")));
        }
        let frame = self.read_chunk_exact(offset, len)?;
        let info = format::decode_frame(&frame, self.seq, self.frame_bytes_max)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok((frame, info))
    }

    /// Ends reading from `at` on: the segment is being cut there (`at` > 0) or removed
    /// (`at` = 0). Readers holding this view get [`Error::NoFrame`] for those bytes
    /// instead of whatever the file holds next.
    pub(crate) fn retire(&self, at: u64, reason: &'static str) -> Result<()> {
        let mut bytes = self.bytes.write().map_err(|_| self.lock_poisoned())?;
        let at = match &*bytes {
            SegmentBytes::Retired { at: before, .. } => at.min(*before),
            _ => at,
        };
        // Bytes below a cut stay as they are; a removed segment is not read at all (its
        // file may be recycled).
        let file = if at > 0 { Some(self.reopen()?) } else { None };
        *bytes = SegmentBytes::Retired { at, reason, file };
        Ok(())
    }

    fn reopen(&self) -> Result<File> {
        File::open(&self.path).map_err(|e| Error::io("opening segment", &self.path, e))
    }

    fn lock_poisoned(&self) -> Error {
        Error::Poisoned {
            cause: format!("a reader of {} panicked", self.path.display()),
        }
    }
}

impl SegmentView {
    /// Copies durable bytes from `offset`: at least `min_len` (if that many are durable),
    /// and otherwise up to [`READ_CHUNK_BYTES`], so that readers walk the active segment
    /// with one `pread` per chunk instead of two per frame.
    pub(crate) fn read_chunk(&self, offset: u64, min_len: usize) -> Result<Vec<u8>> {
        self.read_chunk_exact(offset, min_len.max(READ_CHUNK_BYTES))
    }

    /// Copies `len` bytes from `offset`, or fewer if the durable end comes first (exactly
    /// what is asked: no read-ahead).
    pub(crate) fn read_chunk_exact(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = self.end_off();
        let avail = usize::try_from(end.saturating_sub(offset)).unwrap_or(usize::MAX);
        let len = len.min(avail);
        let start = usize::try_from(offset).map_err(|_| Error::Corruption {
            path: self.path.clone(),
            offset,
            reason: "offset beyond the address space".into(),
        })?;
        let bytes = self.bytes.read().map_err(|_| self.lock_poisoned())?;
        let pread = |file: &File| {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| Error::io("reading segment", &self.path, e))?;
            Ok(buf)
        };
        match &*bytes {
            SegmentBytes::Mapped(map) => map
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::Corruption {
                    path: self.path.clone(),
                    offset,
                    reason: "segment shorter than its durable end".into(),
                }),
            SegmentBytes::Active(file) => pread(file),
            SegmentBytes::Retired { at, reason, file } => match file {
                Some(file) if offset + len as u64 <= *at => pread(file),
                _ => Err(Error::NoFrame {
                    segment: self.seq,
                    offset,
                    reason: format!("{reason} while it was being read"),
                }),
            },
        }
    }

    /// Where the next frame starts when one is expected at `offset` (below the durable
    /// end): `offset` itself, or the next block boundary when `offset` is in a write's
    /// padding (see the format's "Write" section).
    pub(crate) fn skip_padding(&self, offset: u64) -> Result<u64> {
        if offset % format::BLOCK_BYTES as u64 == 0 {
            return Ok(offset);
        }
        let head = self.read_chunk_exact(offset, 8)?;
        Ok(if format::is_padding(&head, offset) {
            format::align_up_u64(offset)
        } else {
            offset
        })
    }

    pub(crate) fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }
}

/// Bytes a reader fetches at a time; at least the index stride, so that finding a record
/// from its index entry takes one or two reads.
pub(crate) const READ_CHUNK_BYTES: usize = 128 << 10;
const _: () = assert!(READ_CHUNK_BYTES as u64 >= 2 * INDEX_STRIDE_BYTES);

/// Removes a file, treating "already gone" as done (recovery may repeat a removal).
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}
