//! The write seam: how a batch's aligned bytes reach the disk.
//!
//! Contract of [`WriteIo::write_at`]: the whole buffer is written at `offset` (both are
//! multiples of [`BLOCK_BYTES`](crate::format::BLOCK_BYTES) when the file is `O_DIRECT`)
//! and, when the log is synced, is durable when the call returns `Ok`. An `Err` means the
//! bytes may or may not be on disk in any mix; the caller poisons the log, because on Linux
//! a failed flush cannot be retried (the kernel may already have dropped the dirty pages).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use crate::aligned::AlignedBuf;
use crate::format::BLOCK_BYTES;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Writes whole batches to segment files.
pub(crate) trait WriteIo: Send {
    /// Writes `buf` at `offset`; see the module documentation.
    fn write_at(&mut self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Whether the log is synced: segment files are then opened `O_DSYNC`, so that a
    /// plain `pwrite` from an appender that writes its own batch is durable too.
    fn synced(&self) -> bool;
    /// The backend's name, as reported in statistics and benchmarks.
    fn name(&self) -> &'static str;
}

/// The portable backend: `pwrite` on a file opened `O_DSYNC` (when synced). Every backend
/// opens segments `O_DSYNC` when synced, so appenders that write their own batch use
/// `pwrite` whatever the backend.
pub(crate) struct BlockingIo {
    pub(crate) sync: bool,
}

impl WriteIo for BlockingIo {
    fn write_at(&mut self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }
    fn synced(&self) -> bool {
        self.sync
    }
    fn name(&self) -> &'static str {
        "blocking"
    }
}

/// The io_uring backend: `IORING_OP_WRITE` with `RWF_DSYNC` (when synced) on an
/// `O_DIRECT` file, which the kernel completes inline instead of punting to a worker. The
/// ring is single-issuer with deferred task work: only the writer thread uses it.
#[cfg(target_os = "linux")]
pub(crate) struct UringIo {
    ring: Option<io_uring::IoUring>,
    sync: bool,
}

#[cfg(target_os = "linux")]
impl UringIo {
    /// Sets up a ring and checks that the kernel executes requests on it (a seccomp
    /// profile may allow `io_uring_setup` yet refuse `io_uring_enter`).
    pub(crate) fn new(sync: bool) -> io::Result<UringIo> {
        // Probe with a throwaway ring. The ring that writes is created by the writer
        // thread on its first write: measured here, completions reached a thread other
        // than the ring's creator up to a scheduler tick late.
        Self::ring()?;
        Ok(UringIo { ring: None, sync })
    }

    fn ring() -> io::Result<io_uring::IoUring> {
        let mut ring: io_uring::IoUring = io_uring::IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(8)?;
        let nop = io_uring::opcode::Nop::new().build().user_data(7);
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&nop) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        ring.submit_and_wait(1)?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("io_uring returned no completion for a NOP"))?;
        if cqe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        Ok(ring)
    }
}

#[cfg(target_os = "linux")]
impl WriteIo for UringIo {
    fn write_at(&mut self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let flags = if self.sync { libc::RWF_DSYNC } else { 0 };
        let ring = match &mut self.ring {
            Some(ring) => ring,
            None => self.ring.insert(Self::ring()?),
        };
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &buf[done..];
            let len = u32::try_from(rest.len()).unwrap_or(!4095);
            let sqe = io_uring::opcode::Write::new(
                io_uring::types::Fd(file.as_raw_fd()),
                rest.as_ptr(),
                len,
            )
            .offset(offset + done as u64)
            .rw_flags(flags)
            .build()
            .user_data(1);
            // SAFETY: `rest` stays borrowed, and so alive and unmoved, until the completion
            // for this request is reaped below; only one request is in flight at a time.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            let cqe = loop {
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                if let Some(cqe) = ring.completion().next() {
                    break cqe;
                }
            };
            let res = cqe.result();
            if res == -libc::EINTR || res == -libc::EAGAIN {
                continue;
            }
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
            if res == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "io_uring wrote 0 bytes",
                ));
            }
            done += usize::try_from(res).expect("positive result fits usize");
        }
        Ok(())
    }
    fn synced(&self) -> bool {
        self.sync
    }
    fn name(&self) -> &'static str {
        "uring"
    }
}

/// Fault injection for tests: makes writes fail on purpose, the way a dying disk or a
/// power loss would.
///
/// Share one with [`WalOptions::faults`](crate::WalOptions::faults); every write the
/// log makes first asks it what to do. Writes are counted from 0 since creation. A
/// simulated power loss (or a partial write, a failed flush, a captured write) also kills
/// the device: every later write fails without landing, as nothing reaches a disk that has
/// lost power.
#[derive(Debug, Default)]
pub struct Faults {
    writes: AtomicU64,
    fail_from: AtomicU64,
    crash_after_intent: AtomicBool,
    failed_prepares_left: AtomicU64,
    plan: Mutex<Option<(u64, Fault)>>,
    captured: Mutex<Option<CapturedWrite>>,
}

/// What happens to a planned write.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Each block lands with its new bytes, keeps its old bytes, or becomes zeros, chosen by
    /// a generator seeded with the value; then the write fails.
    PowerLoss(u64),
    /// The first half of the write's blocks (rounded down) lands; then the write fails.
    Partial,
    /// The whole write lands, then the flush fails.
    FlushFail,
    /// The first write from here on that carries at least this many appends does not land;
    /// its bytes are kept for [`Faults::captured`], and it fails.
    Capture(u64),
}

/// A write kept by [`Faults::capture_write_from`]: what would have landed.
#[derive(Clone, Debug)]
pub struct CapturedWrite {
    /// The segment it was for.
    pub segment: u64,
    /// Its offset in the segment file (a block boundary).
    pub offset: u64,
    /// Its bytes (whole blocks).
    pub bytes: Vec<u8>,
    /// Appends (frames) it carried.
    pub appends: u64,
}

impl Faults {
    /// No faults until told otherwise.
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults {
            writes: AtomicU64::new(0),
            fail_from: AtomicU64::new(u64::MAX),
            crash_after_intent: AtomicBool::new(false),
            failed_prepares_left: AtomicU64::new(0),
            plan: Mutex::new(None),
            captured: Mutex::new(None),
        })
    }

    /// The next truncation or purge stops right after writing its intent file, as if the
    /// process died there; the operation returns an error and recovery must finish it.
    pub fn crash_after_next_intent(&self) {
        self.crash_after_intent.store(true, Ordering::SeqCst);
    }

    pub(crate) fn crash_after_intent_armed(&self) -> bool {
        self.crash_after_intent.swap(false, Ordering::SeqCst)
    }

    /// Every write from the `n`-th fails with `EIO` before any byte lands.
    pub fn fail_writes_from(&self, n: u64) {
        self.fail_from.store(n, Ordering::SeqCst);
    }

    /// The power fails during the `n`-th write: each of its blocks independently keeps its
    /// new bytes, its old bytes, or becomes zeros (seeded by `seed`), and the write fails.
    pub fn power_loss_at_write(&self, n: u64, seed: u64) {
        self.arm(n, Fault::PowerLoss(seed));
    }

    /// The `n`-th write lands in part (the first half of its blocks) and then fails.
    pub fn partial_write_at(&self, n: u64) {
        self.arm(n, Fault::Partial);
    }

    /// The `n`-th write lands completely, and then its flush fails.
    pub fn flush_failure_at(&self, n: u64) {
        self.arm(n, Fault::FlushFail);
    }

    /// The first write from the `n`-th on that carries at least `min_appends` appends does
    /// not land; [`Faults::captured`] then returns it, so that a test can land any part of
    /// it itself.
    pub fn capture_write_from(&self, n: u64, min_appends: u64) {
        self.arm(n, Fault::Capture(min_appends));
    }

    /// The write [`Faults::capture_write_from`] kept, once there is one.
    pub fn captured(&self) -> Option<CapturedWrite> {
        self.captured.lock().map_or(None, |c| c.clone())
    }

    fn arm(&self, n: u64, fault: Fault) {
        if let Ok(mut plan) = self.plan.lock() {
            *plan = Some((n, fault));
        }
    }

    /// The next `n` preparations of a spare segment fail with `ENOSPC`, as on a disk that
    /// is full for a moment.
    pub fn fail_segment_preparations(&self, n: u64) {
        self.failed_prepares_left.store(n, Ordering::SeqCst);
    }

    pub(crate) fn before_prepare(&self) -> io::Result<()> {
        let left = self.failed_prepares_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failed_prepares_left.store(left - 1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Asked before every write of a batch (`bytes`, whole aligned blocks, at `offset` of
    /// segment `segment`'s `file`, carrying `appends` appends): `Ok` lets the write go
    /// ahead; `Err` means it failed, after the fault landed whatever part of it the fault
    /// lands.
    pub(crate) fn before_write(
        &self,
        file: &File,
        segment: u64,
        bytes: &[u8],
        offset: u64,
        appends: u64,
    ) -> io::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_from.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let fault = {
            let mut plan = self
                .plan
                .lock()
                .map_err(|_| io::Error::other("faults lock"))?;
            match *plan {
                Some((at, Fault::Capture(min))) if n >= at && appends >= min => {
                    plan.take().map(|(_, f)| f)
                }
                Some((at, Fault::Capture(_))) if n >= at => None,
                Some((at, _)) if n >= at => plan.take().map(|(_, f)| f),
                _ => None,
            }
        };
        let Some(fault) = fault else {
            return Ok(());
        };
        // The device is gone after this write.
        self.fail_from.store(n + 1, Ordering::SeqCst);
        let blocks = bytes.len() / BLOCK_BYTES;
        let block = |i: usize| &bytes[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
        let at = |i: usize| offset + (i * BLOCK_BYTES) as u64;
        match fault {
            Fault::PowerLoss(seed) => {
                let zeros = AlignedBuf::zeroed(BLOCK_BYTES);
                let mut x = seed | 1;
                for i in 0..blocks {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match x % 3 {
                        0 => file.write_all_at(block(i), at(i))?,
                        1 => {}
                        _ => file.write_all_at(zeros.as_slice(), at(i))?,
                    }
                }
            }
            Fault::Partial => {
                for i in 0..blocks / 2 {
                    file.write_all_at(block(i), at(i))?;
                }
            }
            Fault::FlushFail => file.write_all_at(bytes, offset)?,
            Fault::Capture(_) => {
                if let Ok(mut captured) = self.captured.lock() {
                    *captured = Some(CapturedWrite {
                        segment,
                        offset,
                        bytes: bytes.to_vec(),
                        appends,
                    });
                }
            }
        }
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
}
