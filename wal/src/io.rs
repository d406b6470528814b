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
use std::sync::Arc;
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

/// Fault injection for tests: makes writes fail on purpose, the way a dying disk would.
///
/// Share one with [`WalOptions::faults`](crate::WalOptions::faults); every write the
/// log makes first asks it whether to fail.
#[derive(Debug, Default)]
pub struct Faults {
    writes: AtomicU64,
    fail_from: AtomicU64,
    crash_after_intent: AtomicBool,
}

impl Faults {
    /// No faults until told otherwise.
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults {
            writes: AtomicU64::new(0),
            fail_from: AtomicU64::new(u64::MAX),
            crash_after_intent: AtomicBool::new(false),
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

    /// Every write from the `n`-th (counted from 0 since creation) fails with `EIO`.
    pub fn fail_writes_from(&self, n: u64) {
        self.fail_from.store(n, Ordering::SeqCst);
    }

    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    pub(crate) fn check_write(&self) -> io::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_from.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}
