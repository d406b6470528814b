//! What the SIGKILL crash tests share: their seeded generator and their knobs from the
//! environment (`KEEL_CRASH_SEED` replays a run, `KEEL_CRASH_KILLS` sets how many kills).

/// A small seeded generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The run's seed: `KEEL_CRASH_SEED`, or one from the clock (never 0).
pub fn seed() -> u64 {
    std::env::var("KEEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() << 30 ^ u64::from(d.subsec_nanos()))
                | 1
        })
}

/// How many times the child is killed: `KEEL_CRASH_KILLS`, default 100.
pub fn kills() -> u64 {
    std::env::var("KEEL_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}
