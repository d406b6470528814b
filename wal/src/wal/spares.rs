//! The spare segment: the next segment, zero-filled (or recycled from a purged one) by
//! the preparer thread off the hot path, so that a roll never waits for zero-filling.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};

use super::{Inner, lock_err};
use crate::error::{Error, Result};
use crate::segment;

pub(super) struct Spares {
    pub(super) state: Mutex<SpareState>,
    pub(super) cond: Condvar,
}

pub(super) struct SpareState {
    pub(super) next_seq: u64,
    /// The next segment is wanted: the active one is half full, or a roll is waiting.
    /// Preparing it only then keeps the zero-filling away from start-up and spreads it.
    pub(super) wanted: bool,
    /// A prepared segment: seq, path, and whether it is a recycled file.
    pub(super) ready: Option<(u64, PathBuf, bool)>,
    /// The preparer or a purge is preparing the next segment right now.
    pub(super) busy: bool,
    /// Preparation failed [`PREPARE_ATTEMPTS_MAX`] times in a row: the next roll fails.
    pub(super) error: Option<String>,
    /// Failed preparations since the last success; the preparer retries with a growing
    /// pause, so a transient failure (a full disk that frees up) costs a roll a wait, not
    /// the log.
    pub(super) failures: u32,
    pub(super) stop: bool,
}

impl Inner {
    /// Reuses a purged segment's file as the next spare when none is ready, so that the
    /// next segment needs no zero-filling: it keeps its old bytes, which can never verify
    /// under the new sequence number. Returns whether the file was taken.
    pub(super) fn recycle_segment(&self, old: &Path) -> Result<bool> {
        if !self.opts.recycle_segments {
            return Ok(false);
        }
        let len = std::fs::metadata(old)
            .map_err(|e| Error::io("reading metadata", old, e))?
            .len();
        let seq = {
            let mut sp = self.spares.state.lock().map_err(lock_err)?;
            if len != self.opts.segment_bytes || sp.ready.is_some() || sp.busy || sp.stop {
                return Ok(false);
            }
            sp.busy = true;
            sp.next_seq
        };
        let result = segment::recycle(&self.dir, old, seq);
        let mut sp = self.spares.state.lock().map_err(lock_err)?;
        sp.busy = false;
        match result {
            Ok(path) => {
                sp.ready = Some((seq, path, true));
                self.stats.segments_recycled.fetch_add(1, Ordering::Relaxed);
                self.spares.cond.notify_all();
                Ok(true)
            }
            Err(e) => {
                self.spares.cond.notify_all();
                Err(e)
            }
        }
    }
}

pub(super) fn take_spare(inner: &Inner, seq: u64) -> Result<(PathBuf, bool)> {
    let mut sp = inner.spares.state.lock().map_err(lock_err)?;
    let mut waited = false;
    loop {
        if let Some(cause) = &sp.error {
            return Err(Error::Poisoned {
                cause: format!("preparing a segment failed: {cause}"),
            });
        }
        match &sp.ready {
            Some((ready, _, _)) if *ready == seq => {
                let (_, path, recycled) = sp.ready.take().expect("checked");
                sp.next_seq = seq + 1;
                sp.wanted = false;
                inner.spares.cond.notify_all();
                inner
                    .stats
                    .segments_created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if waited {
                    inner
                        .stats
                        .spare_waits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok((path, recycled));
            }
            Some((ready, _, _)) => {
                return Err(Error::Poisoned {
                    cause: format!("segment {seq} wanted but segment {ready} was prepared"),
                });
            }
            None if sp.stop => return Err(Error::Closed),
            None => {
                waited = true;
                sp.wanted = true;
                inner.spares.cond.notify_all();
                sp = inner.spares.cond.wait(sp).map_err(lock_err)?;
            }
        }
    }
}

/// Asks the preparer for the next segment (cheap when already asked).
pub(super) fn want_spare(inner: &Inner) {
    if let Ok(mut sp) = inner.spares.state.lock() {
        if !sp.wanted && sp.ready.is_none() {
            sp.wanted = true;
            inner.spares.cond.notify_all();
        }
    }
}

/// Preparations of one segment that may fail in a row before a roll gives up.
pub(super) const PREPARE_ATTEMPTS_MAX: u32 = 6;
/// The pause after the first failed preparation; it doubles with each further failure.
const PREPARE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// The preparer thread: keeps one zero-filled segment ready, off the hot path.
pub(super) fn preparer_loop(inner: &Inner) {
    loop {
        let seq = {
            let Ok(mut sp) = inner.spares.state.lock() else {
                return;
            };
            while !sp.stop && (sp.ready.is_some() || sp.error.is_some() || !sp.wanted || sp.busy) {
                sp = match inner.spares.cond.wait(sp) {
                    Ok(sp) => sp,
                    Err(_) => return,
                };
            }
            if sp.stop {
                return;
            }
            sp.busy = true;
            sp.next_seq
        };
        let injected = match &inner.opts.faults {
            Some(faults) => faults
                .before_prepare()
                .map_err(|e| Error::io("preparing segment", &inner.dir, e)),
            None => Ok(()),
        };
        let result = injected
            .and_then(|()| segment::create_zeroed(&inner.dir, seq, inner.opts.segment_bytes));
        let Ok(mut sp) = inner.spares.state.lock() else {
            return;
        };
        sp.busy = false;
        let pause = match result {
            Ok(path) => {
                sp.ready = Some((seq, path, false));
                sp.failures = 0;
                None
            }
            Err(e) => {
                sp.failures += 1;
                if sp.failures >= PREPARE_ATTEMPTS_MAX {
                    sp.error = Some(format!("{e} ({} attempts)", sp.failures));
                    None
                } else {
                    Some(PREPARE_RETRY_PAUSE * (1 << (sp.failures - 1)))
                }
            }
        };
        inner.spares.cond.notify_all();
        drop(sp);
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
    }
}
