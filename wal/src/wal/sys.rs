//! The raw system calls the log needs beyond std: an exclusive directory lock and the
//! futex words blocking appenders sleep on.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

pub(super) fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening lock file", &path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Locked { path });
    }
    Ok(file)
}

/// The two futex operations the appenders' sleep needs.
pub(super) mod futex {
    use std::sync::atomic::AtomicU32;

    /// Sleeps while `word` holds `expected` (returns at once if it does not; may return
    /// spuriously).
    pub(crate) fn wait(word: &AtomicU32, expected: u32) {
        // SAFETY: FUTEX_WAIT reads the 32-bit word at this address, which stays valid for
        // the call (the caller borrows it); a null timeout means no time limit.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    /// Wakes every thread sleeping on `word`.
    pub(crate) fn wake_all(word: &AtomicU32) {
        // SAFETY: FUTEX_WAKE only uses the address as a key; no memory is accessed.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }
}
