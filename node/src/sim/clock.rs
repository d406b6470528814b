//! The simulated clock.

use std::time::Duration;

use crate::host::Clock;

/// A clock that only moves when the simulation advances it: every host of a simulated
/// cluster reads the same time, and a seed replays it exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimClock {
    now: Duration,
}

impl SimClock {
    /// A clock at its start.
    pub fn new() -> SimClock {
        SimClock::default()
    }

    /// Moves the clock on by `by`.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }
}

impl Clock for SimClock {
    fn now(&self) -> Duration {
        self.now
    }
}
