//! The clock seam: where a host's time comes from.

use std::time::{Duration, Instant};

/// Where a host's time comes from: the time since the clock's start. A host asks it how
/// many raft ticks are due (see [`Ticker`](super::Ticker)); [`SystemClock`] is the machine's,
/// `sim::SimClock` a simulated one that only moves when the simulation advances it.
pub trait Clock {
    /// The time since the clock's start; never goes back.
    fn now(&self) -> Duration;
}

/// The machine's monotonic clock, from the instant it was started.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// A clock started now.
    pub fn new() -> SystemClock {
        SystemClock {
            start: Instant::now(),
        }
    }

    /// The instant the clock started (a host starts its wake-up interval there, so that
    /// every wake-up finds its tick due).
    pub fn start(&self) -> Instant {
        self.start
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}
