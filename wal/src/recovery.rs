//! Recovery: scan every segment, verify every frame, repair a torn tail.
//!
//! Rules, in order:
//! - A frame that does not verify ends the written part of its segment. If any valid
//!   frame follows it (in the same segment at any 8-byte boundary, or in a later
//!   segment), the damage is not a torn write but corruption: an error naming the file and
//!   offset, in every mode. Nothing is skipped.
//! - Otherwise the bytes after the end are either zeros (a clean end) or the remains of the
//!   last, unacknowledged write (a torn tail). [`RecoveryMode::TolerateTornTail`] zeroes
//!   them, so recovering twice gives the same log; [`RecoveryMode::AbsoluteConsistency`]
//!   reports them.
//! - Records are numbered without gaps: each frame's first position follows the previous
//!   frame's last, and each segment starts where the previous one ended.

use std::path::{Path, PathBuf};

use crate::error::{Error, FrameError, Result};
use crate::format::{
    self, BLOCK_BYTES, FRAME_ALIGN, FRAME_HEADER_BYTES, Lsn, SEGMENT_HEADER_BYTES, SegmentHeader,
};
use crate::options::RecoveryMode;
use crate::segment::{self, INDEX_STRIDE_BYTES};

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments holding records.
    pub segments: usize,
    /// Frames (appends) verified.
    pub frames: u64,
    /// Records verified.
    pub records: u64,
    /// Bytes of verified frames.
    pub bytes: u64,
    /// Position of the first record in the log.
    pub first_lsn: Lsn,
    /// Position the next append gets.
    pub next_lsn: Lsn,
    /// Repairs made: torn tails cut, interrupted truncations or purges completed.
    pub repairs: Vec<String>,
}

/// Progress of a long recovery, reported once per segment.
#[derive(Clone, Copy, Debug)]
pub struct RecoveryProgress {
    /// Segments scanned so far.
    pub segments_done: usize,
    /// Segments in all.
    pub segments_total: usize,
    /// Bytes of segments scanned so far.
    pub bytes_done: u64,
}

/// One segment that holds records (its header verified).
pub(crate) struct ScannedSegment {
    pub seq: u64,
    pub path: PathBuf,
    pub first_lsn: Lsn,
    pub end_off: u64,
    pub end_lsn: Lsn,
    pub capacity: u64,
    pub index: Vec<(Lsn, u64)>,
}

/// The recovered log.
pub(crate) struct Recovered {
    pub segments: Vec<ScannedSegment>,
    /// A segment ready to become the next one: seq, path, length, recycled.
    pub spare: Option<(u64, PathBuf, u64, bool)>,
    /// Sequence number for the next new segment.
    pub next_seq: u64,
    pub report: RecoveryReport,
}

enum HeaderState {
    Valid(SegmentHeader),
    /// Zero-filled, never written: a spare.
    Zero,
    /// Recycled, not written since: a spare holding old data.
    Unused,
    /// Intact, but written by another format version.
    Unsupported(u32),
    Bad(String),
}

enum Damage {
    /// Not explicable by a crash.
    Corrupt { offset: u64, reason: String },
    /// The last write was torn: damage at `offset`, followed by nothing but frames of the
    /// same write. Repair zeroes `[cut, dirty_end)`: the whole torn write, from its first
    /// block (`cut`, a block boundary; 0 when it was the segment's first write).
    Torn {
        offset: u64,
        reason: String,
        cut: u64,
        dirty_end: u64,
    },
}

struct Scan {
    header: HeaderState,
    end_off: u64,
    end_lsn: Lsn,
    frames: u64,
    records: u64,
    index: Vec<(Lsn, u64)>,
    damage: Option<Damage>,
    /// The segment's data ends in old bytes of an earlier life of the file.
    recycled: bool,
}

/// Where a write started, and the scan's totals just before it: what to roll back to when
/// the write turns out to be torn.
#[derive(Clone, Copy)]
struct WriteMark {
    start: usize,
    end_off: usize,
    lsn: Lsn,
    frames: u64,
    records: u64,
}

impl WriteMark {
    /// A write starting at `start` with the scan's totals so far, at position `lsn`.
    fn at(start: usize, scan: &Scan, lsn: Lsn) -> WriteMark {
        WriteMark {
            start,
            end_off: usize::try_from(scan.end_off).expect("within the segment"),
            lsn,
            frames: scan.frames,
            records: scan.records,
        }
    }
}

/// Walks the frames of a segment with a valid header. Returns where the walk stopped, why
/// (`None`: clean zeros), and the start of the write the stop lies in (what to roll back
/// to if that write is torn). Sets `scan.damage` for damage no crash explains.
fn walk_frames(
    bytes: &[u8],
    seq: u64,
    frame_bytes_max: usize,
    first_lsn: Lsn,
    scan: &mut Scan,
) -> (usize, Option<String>, WriteMark) {
    let mut lsn = first_lsn;
    let mut off = SEGMENT_HEADER_BYTES;
    // The segment's first write starts at 0 with the header block.
    let mut write = WriteMark::at(0, scan, lsn);
    let reason = loop {
        if off >= bytes.len() {
            break None;
        }
        let at = off as u64;
        if format::is_padding(&bytes[off..], at) {
            let boundary = format::align_up(off, BLOCK_BYTES).min(bytes.len());
            if !format::is_zero(&bytes[off..boundary]) {
                break Some("non-zero bytes in the padding after a write".to_string());
            }
            off = boundary;
            continue;
        }
        let frame = match format::decode_frame(&bytes[off..], seq, frame_bytes_max) {
            Ok(frame) => frame,
            Err(FrameError::Empty) if off % BLOCK_BYTES == 0 => break None,
            Err(e) => break Some(e.to_string()),
        };
        if frame.first_lsn != lsn {
            scan.damage = Some(Damage::Corrupt {
                offset: at,
                reason: format!(
                    "frame starts at position {} but {lsn} was expected",
                    frame.first_lsn
                ),
            });
            break None;
        }
        let write_start = usize::try_from(frame.write_start).unwrap_or(usize::MAX);
        if write_start != write.start {
            // A new write begins on the block boundary where this frame starts.
            if write_start != off || off % BLOCK_BYTES != 0 {
                scan.damage = Some(Damage::Corrupt {
                    offset: at,
                    reason: format!(
                        "frame names its write as starting at {write_start}, which is not \
                         where it or its write's first frame lies"
                    ),
                });
                break None;
            }
            write = WriteMark::at(off, scan, lsn);
        }
        let due = scan
            .index
            .last()
            .is_none_or(|&(_, at)| off as u64 >= at + INDEX_STRIDE_BYTES);
        if due {
            scan.index.push((lsn, at));
        }
        scan.frames += 1;
        scan.records += u64::from(frame.count);
        lsn = frame.end_lsn();
        off += frame.len;
        scan.end_off = off as u64;
        scan.end_lsn = lsn;
    };
    // A stop on a block boundary is where a new write would start; anywhere else it lies
    // in the block (and so the write) of the last frame.
    if off % BLOCK_BYTES == 0 {
        write = WriteMark::at(off, scan, lsn);
    }
    (off, reason, write)
}

/// Scans one segment's bytes. Never reads out of bounds, whatever the bytes are.
fn scan_segment(bytes: &[u8], seq: u64, frame_bytes_max: usize) -> Scan {
    let header = if bytes.len() < SEGMENT_HEADER_BYTES {
        HeaderState::Bad(format!(
            "file is {} bytes, shorter than the segment header",
            bytes.len()
        ))
    } else if let Some(version) = format::other_version(bytes) {
        HeaderState::Unsupported(version)
    } else {
        match SegmentHeader::decode(bytes) {
            Ok(Some(h)) if h.is_unused() && h.seq == seq => HeaderState::Unused,
            Ok(Some(h)) => HeaderState::Valid(h),
            Ok(None) => HeaderState::Zero,
            Err(reason) => HeaderState::Bad(reason),
        }
    };
    let recycled = match &header {
        HeaderState::Valid(h) => h.recycled,
        HeaderState::Unused => true,
        _ => false,
    };
    let mut scan = Scan {
        header,
        end_off: SEGMENT_HEADER_BYTES as u64,
        end_lsn: 0,
        frames: 0,
        records: 0,
        index: Vec::new(),
        damage: None,
        recycled,
    };
    let (off, reason, write) = match &scan.header {
        HeaderState::Unsupported(_) => return scan,
        HeaderState::Valid(h) if h.seq != seq => {
            scan.damage = Some(Damage::Corrupt {
                offset: 16,
                reason: format!("header names segment {} but the file is {seq}", h.seq),
            });
            return scan;
        }
        HeaderState::Valid(h) => {
            let first_lsn = h.first_lsn;
            scan.end_lsn = first_lsn;
            let (off, reason, write) =
                walk_frames(bytes, seq, frame_bytes_max, first_lsn, &mut scan);
            if scan.damage.is_some() {
                return scan;
            }
            (off, reason, write)
        }
        // The segment's first write (header block and frames) may be torn: its frames
        // name write start 0.
        HeaderState::Zero | HeaderState::Unused => (
            SEGMENT_HEADER_BYTES,
            None,
            WriteMark::at(SEGMENT_HEADER_BYTES, &scan, 0),
        ),
        HeaderState::Bad(reason) => (0, Some(reason.clone()), WriteMark::at(0, &scan, 0)),
    };
    let off = off.min(bytes.len());
    // Frames after the stop: a frame of a later write means the damaged write had
    // completed (writes are issued one after another), so the damage is corruption. Frames
    // of the same write mean the last write was torn.
    let mut torn_frames_end = None;
    let mut from = off + 1;
    while let Some((found, info)) = find_valid_frame(bytes, from, seq, frame_bytes_max) {
        if info.write_start > off as u64 {
            let (what, offset) = match &scan.header {
                HeaderState::Zero => ("zeroed segment header".to_string(), 0),
                HeaderState::Unused => ("unwritten segment header".to_string(), 0),
                _ => (
                    reason.clone().unwrap_or_else(|| "zeroed data".into()),
                    off as u64,
                ),
            };
            scan.damage = Some(Damage::Corrupt {
                offset,
                reason: format!("{what}, yet a frame of a later write follows at offset {found}"),
            });
            return scan;
        }
        torn_frames_end = Some(found + info.len);
        from = found + info.len;
    }
    let dirty_end = if scan.recycled {
        // Old data of the file's earlier life follows: only this life's bytes need zeroing.
        match torn_frames_end {
            Some(end) => Some(end),
            None if reason.is_some() && off % BLOCK_BYTES != 0 => Some(off + 1),
            None => None,
        }
    } else {
        bytes[off..]
            .iter()
            .rposition(|&b| b != 0)
            .map(|last| off + last + 1)
    };
    let Some(dirty_end) = dirty_end else {
        return scan;
    };
    let dirty_end = (format::align_up(dirty_end, BLOCK_BYTES) as u64).min(bytes.len() as u64);
    // Roll the scan back to before the torn write.
    let cut = write.start.min(off);
    if let HeaderState::Valid(h) = &scan.header {
        if cut == 0 {
            scan.end_off = SEGMENT_HEADER_BYTES as u64;
            scan.end_lsn = h.first_lsn;
            scan.frames = 0;
            scan.records = 0;
            scan.index.clear();
        } else {
            scan.end_off = write.end_off as u64;
            scan.end_lsn = write.lsn;
            scan.frames = write.frames;
            scan.records = write.records;
            scan.index.retain(|&(_, at)| at < cut as u64);
        }
    }
    scan.damage = Some(Damage::Torn {
        offset: off as u64,
        reason: reason.unwrap_or_else(|| "non-zero bytes after the end of the data".into()),
        cut: cut as u64,
        dirty_end,
    });
    scan
}

/// What [`scan_segment_bytes`] found in one segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanSummary {
    /// Frames that verified, from the start.
    pub frames: u64,
    /// Records in them.
    pub records: u64,
    /// Offset one past the last verified frame.
    pub end_offset: u64,
    /// Why the bytes after the end are not clean, if they are not: `(offset, reason,
    /// is_corruption)`; not corruption means a torn tail.
    pub damage: Option<(u64, String, bool)>,
}

/// Scans one segment's bytes the way recovery does, without files; for fuzzing and tools.
pub fn scan_segment_bytes(bytes: &[u8], seq: u64) -> ScanSummary {
    let scan = scan_segment(bytes, seq, FRAME_READ_MAX);
    ScanSummary {
        frames: scan.frames,
        records: scan.records,
        end_offset: scan.end_off,
        damage: scan.damage.map(|d| match d {
            Damage::Corrupt { offset, reason } => (offset, reason, true),
            Damage::Torn { offset, reason, .. } => (offset, reason, false),
        }),
    }
}

/// The first offset at or after `from` (rounded up to [`FRAME_ALIGN`]) where a frame
/// verifies, if any, with the frame.
fn find_valid_frame(
    bytes: &[u8],
    from: usize,
    seq: u64,
    frame_bytes_max: usize,
) -> Option<(usize, format::FrameInfo)> {
    let mut at = format::align_up(from.max(SEGMENT_HEADER_BYTES), FRAME_ALIGN);
    while at + FRAME_HEADER_BYTES <= bytes.len() {
        // Zero words cannot start a frame; skip them cheaply.
        if bytes[at..at + 8] != [0u8; 8] {
            if let Ok(info) = format::decode_frame(&bytes[at..], seq, frame_bytes_max) {
                return Some((at, info));
            }
        }
        at += FRAME_ALIGN;
    }
    None
}

/// Recovers the log in `dir`. With `read_only`, nothing is changed and a torn tail is
/// reported as [`Error::TornTail`] whatever the mode.
pub(crate) fn recover(
    dir: &Path,
    mode: RecoveryMode,
    frame_bytes_max: usize,
    read_only: bool,
    progress: &mut dyn FnMut(RecoveryProgress),
) -> Result<Recovered> {
    let mut repairs = crate::marker::redo_pending(dir, read_only)?;
    let files = segment::list_segments(dir, !read_only)?;
    let tolerate = mode == RecoveryMode::TolerateTornTail && !read_only;

    // Scan everything first: whether damage is a torn tail depends on what follows it.
    let mut scans = Vec::with_capacity(files.len());
    let mut bytes_done = 0u64;
    for (i, (seq, path)) in files.iter().enumerate() {
        let map = segment::map(path)?;
        let scan = scan_segment(&map, *seq, frame_bytes_max);
        bytes_done += map.len() as u64;
        scans.push((scan, map.len() as u64));
        progress(RecoveryProgress {
            segments_done: i + 1,
            segments_total: files.len(),
            bytes_done,
        });
    }
    let last_data = scans
        .iter()
        .rposition(|(s, _)| matches!(s.header, HeaderState::Valid(_)));

    let mut report = RecoveryReport::default();
    let mut segments: Vec<ScannedSegment> = Vec::new();
    let mut spares: Vec<(u64, PathBuf, u64, bool)> = Vec::new();
    for (i, ((scan, len), (seq, path))) in scans.into_iter().zip(files.iter()).enumerate() {
        let later_data = last_data.is_some_and(|last| i < last);
        let corrupt = |offset: u64, reason: String| Error::Corruption {
            path: path.clone(),
            offset,
            reason,
        };
        match scan.damage {
            Some(Damage::Corrupt { offset, reason }) => return Err(corrupt(offset, reason)),
            Some(Damage::Torn { offset, reason, .. }) if later_data => {
                return Err(corrupt(
                    offset,
                    format!("{reason}, and later segments hold data"),
                ));
            }
            Some(Damage::Torn {
                offset,
                reason,
                cut,
                dirty_end,
            }) => {
                if !tolerate {
                    return Err(Error::TornTail {
                        path: path.clone(),
                        offset,
                        reason,
                    });
                }
                let header_lost = cut < SEGMENT_HEADER_BYTES as u64;
                if header_lost && scan.recycled {
                    // The file's earlier life stays behind; only this life's first write
                    // goes, and the file is a recycled spare again.
                    segment::zero_range(path, SEGMENT_HEADER_BYTES as u64, dirty_end)?;
                    segment::write_unused_header(path, *seq)?;
                } else {
                    segment::zero_range(path, cut, dirty_end)?;
                }
                repairs.push(format!(
                    "cut a torn last write in {} from offset {cut} (damage at offset {offset}: \
                     {reason})",
                    path.display()
                ));
                if header_lost {
                    spares.push((*seq, path.clone(), len, scan.recycled));
                    continue;
                }
            }
            None => {}
        }
        match scan.header {
            HeaderState::Valid(header) => {
                if let Some(prev) = segments.last() {
                    if header.first_lsn != prev.end_lsn {
                        return Err(corrupt(
                            24,
                            format!(
                                "segment starts at position {} but the previous one ends at {}",
                                header.first_lsn, prev.end_lsn
                            ),
                        ));
                    }
                }
                report.frames += scan.frames;
                report.records += scan.records;
                report.bytes += scan.end_off - SEGMENT_HEADER_BYTES as u64;
                segments.push(ScannedSegment {
                    seq: *seq,
                    path: path.clone(),
                    first_lsn: header.first_lsn,
                    end_off: scan.end_off,
                    end_lsn: scan.end_lsn,
                    capacity: len,
                    index: scan.index,
                });
            }
            HeaderState::Unsupported(version) => {
                return Err(Error::UnsupportedFormat {
                    path: path.clone(),
                    version,
                });
            }
            // A segment without a header before one with data: a header block was lost.
            HeaderState::Zero | HeaderState::Unused | HeaderState::Bad(_) if later_data => {
                return Err(corrupt(
                    0,
                    "segment header is missing or damaged, and later segments hold data".into(),
                ));
            }
            // Never written, or torn in its first write and now zeroed: a spare.
            HeaderState::Unused => spares.push((*seq, path.clone(), len, true)),
            // A damaged header was zeroed above (torn-tail repair), so the file is zeros.
            HeaderState::Zero | HeaderState::Bad(_) => {
                spares.push((*seq, path.clone(), len, false));
            }
        }
    }

    let next_seq_fresh = files.last().map_or(1, |(seq, _)| seq + 1);
    // Keep one spare (the oldest) for reuse; others are leftovers and go.
    let mut spare = None;
    for (seq, path, len, recycled) in spares {
        if spare.is_none() {
            spare = Some((seq, path, len, recycled));
        } else if !read_only {
            segment::remove_if_present(&path)?;
        }
    }
    let next_seq = spare.as_ref().map_or(next_seq_fresh, |(seq, ..)| *seq);
    report.segments = segments.len();
    report.first_lsn = segments.first().map_or(1, |s| s.first_lsn);
    report.next_lsn = segments.last().map_or(1, |s| s.end_lsn);
    report.repairs = repairs;
    Ok(Recovered {
        segments,
        spare,
        next_seq,
        report,
    })
}

/// Checks a log without changing it: the report, or the first problem found (naming the
/// segment file and offset). A torn tail counts as a problem here, although opening the
/// log in the default mode would repair it.
pub fn verify(dir: &Path) -> Result<RecoveryReport> {
    let recovered = recover(
        dir,
        RecoveryMode::AbsoluteConsistency,
        FRAME_READ_MAX,
        true,
        &mut |_| {},
    )?;
    Ok(recovered.report)
}

/// Frames are read back with this bound, the largest segment: options may change between
/// opens, so the current `batch_bytes_max` cannot bound frames written earlier.
pub(crate) const FRAME_READ_MAX: usize = 1 << 31;
const _: () = assert!(FRAME_READ_MAX as u64 == crate::options::SEGMENT_BYTES_MAX);

/// One frame as [`inspect`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSummary {
    /// Byte offset in the segment.
    pub offset: u64,
    /// Position of the first record.
    pub first_lsn: Lsn,
    /// Lengths of its records.
    pub record_lens: Vec<usize>,
    /// Bytes of the frame.
    pub len: usize,
}

/// One segment as [`inspect`] sees it.
#[derive(Clone, Debug)]
pub struct SegmentSummary {
    /// Sequence number from the file name.
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// File length.
    pub file_bytes: u64,
    /// The header: `Ok(None)` for a never-written (spare) segment.
    pub header: std::result::Result<Option<SegmentHeader>, String>,
    /// Frames that verified, in order.
    pub frames: Vec<FrameSummary>,
    /// Where and why the scan stopped before the end of written data, if it did.
    pub problem: Option<(u64, String)>,
}

/// Lists every segment and every frame that verifies, without changing anything; for
/// `keel wal dump`.
pub fn inspect(dir: &Path) -> Result<Vec<SegmentSummary>> {
    let mut out = Vec::new();
    for (seq, path) in segment::list_segments(dir, false)? {
        let map = segment::map(&path)?;
        let header = if map.len() < SEGMENT_HEADER_BYTES {
            Err(format!(
                "file is {} bytes, shorter than the header",
                map.len()
            ))
        } else {
            SegmentHeader::decode(&map)
        };
        let mut frames = Vec::new();
        let mut problem = None;
        if let Ok(Some(h)) = &header {
            let mut off = SEGMENT_HEADER_BYTES;
            let mut lsn = h.first_lsn;
            loop {
                if off < map.len() && format::is_padding(&map[off..], off as u64) {
                    off = format::align_up(off, BLOCK_BYTES);
                    continue;
                }
                match format::decode_frame(&map[off..], seq, FRAME_READ_MAX) {
                    Ok(info) => {
                        let frame = &map[off..off + info.len];
                        if info.first_lsn != lsn {
                            problem = Some((
                                off as u64,
                                format!(
                                    "frame starts at {} but {lsn} was expected",
                                    info.first_lsn
                                ),
                            ));
                            break;
                        }
                        frames.push(FrameSummary {
                            offset: off as u64,
                            first_lsn: info.first_lsn,
                            record_lens: format::frame_records(frame, info.count)
                                .map(<[u8]>::len)
                                .collect(),
                            len: info.len,
                        });
                        lsn = info.end_lsn();
                        off += info.len;
                    }
                    // A recycled segment keeps old data after its last frame.
                    Err(_) if h.recycled => break,
                    Err(FrameError::Empty) => {
                        if map[off..].iter().any(|&b| b != 0) {
                            problem = Some((off as u64, "non-zero bytes after the end".into()));
                        }
                        break;
                    }
                    Err(e) => {
                        problem = Some((off as u64, e.to_string()));
                        break;
                    }
                }
            }
        }
        out.push(SegmentSummary {
            seq,
            path,
            file_bytes: map.len() as u64,
            header,
            frames,
            problem,
        });
    }
    Ok(out)
}
