//! A host's raft ticks, decided from its clock.

use std::time::Duration;

use keel_engine::log_backend::AsyncLogBackend;

use super::Clock;
use crate::shard::Shard;

/// Ticks between a host's housekeeping (leadership balance, membership steps, log space
/// and purge; the runtime's cluster view and member list).
pub const HOUSEKEEPING_TICKS: u64 = 10;

/// What [`Ticker::run`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ticked {
    /// No tick was due.
    Nothing,
    /// The shard ticked.
    Tick,
    /// The shard ticked, and it was a housekeeping tick (every `housekeeping_ticks`-th):
    /// the host runs its housekeeping now, at least [`housekeeping`](super::housekeeping)
    /// and [`purge_log`](super::purge_log).
    Housekeeping,
}

/// Decides a host's raft ticks from its clock. Tick `k` falls due `k` periods after the
/// ticker's start (tick 0 at the start itself).
///
/// A host that fell behind — busy, stalled, or its clock moved on by several periods at
/// once — runs **one** tick per call, never a burst: a burst would run the election
/// timeouts of every group at once after a stall that said nothing about the leaders. The
/// runtime calls it once per wake-up of its tick interval (which also runs late rather than
/// in bursts after a stall, tokio's `MissedTickBehavior::Delay`); started at the clock's
/// start, each of those wake-ups finds its tick due, so the runtime ticks exactly once per
/// wake-up. The simulation calls it every step.
#[derive(Clone, Debug)]
pub struct Ticker {
    period: Duration,
    housekeeping_ticks: u64,
    start: Duration,
    ticks: u64,
}

impl Ticker {
    /// A ticker with one tick every `period` (not zero) from `start` on its clock, and a
    /// housekeeping tick every `housekeeping_ticks` ticks (not zero; the runtime's is
    /// [`HOUSEKEEPING_TICKS`]).
    pub fn new(period: Duration, housekeeping_ticks: u64, start: Duration) -> Ticker {
        Ticker {
            period: period.max(Duration::from_nanos(1)),
            housekeeping_ticks: housekeeping_ticks.max(1),
            start,
            ticks: 0,
        }
    }

    /// Ticks the shard if `clock` says a tick is due (one at most); says what it did.
    pub fn run<B: AsyncLogBackend, C: Clock + ?Sized>(
        &mut self,
        shard: &mut Shard<B>,
        clock: &C,
    ) -> Ticked {
        if !self.due(clock.now()) {
            return Ticked::Nothing;
        }
        shard.tick();
        self.ticks += 1;
        if self.ticks % self.housekeeping_ticks == 0 {
            Ticked::Housekeeping
        } else {
            Ticked::Tick
        }
    }

    /// Whether a tick is due at `now`: the ticks whose time has come outnumber those run.
    fn due(&self, now: Duration) -> bool {
        let Some(since) = now.checked_sub(self.start) else {
            return false;
        };
        let come = since.as_nanos() / self.period.as_nanos() + 1;
        come > u128::from(self.ticks)
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_falls_due_every_period_and_a_late_host_runs_one_per_call() {
        let ms = Duration::from_millis;
        let mut t = Ticker::new(ms(5), 10, ms(100));
        assert!(!t.due(ms(99)), "nothing before the start");
        assert!(t.due(ms(100)), "tick 0 at the start");
        t.ticks = 1;
        assert!(!t.due(ms(104)));
        assert!(t.due(ms(105)));
        t.ticks = 2;
        // Three periods late: due, once per call, until caught up.
        assert!(t.due(ms(120)));
        t.ticks = 5;
        assert!(!t.due(ms(124)));
    }
}
