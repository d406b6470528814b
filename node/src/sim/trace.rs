//! A digest of what a simulation did, to compare two runs.

use std::fmt;

use keel_client::route::{FNV_OFFSET_BASIS, fnv1a_64_extend};

/// A running 64-bit FNV-1a digest of everything written into it (with `write!`, usually
/// the `Debug` form of a packet or an answer). Two simulations that did the same things in
/// the same order have the same digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceDigest {
    hash: u64,
    /// Events recorded.
    events: u64,
}

impl Default for TraceDigest {
    fn default() -> Self {
        TraceDigest {
            hash: FNV_OFFSET_BASIS,
            events: 0,
        }
    }
}

impl TraceDigest {
    /// An empty digest.
    pub fn new() -> TraceDigest {
        TraceDigest::default()
    }

    /// Records one event: its text goes into the digest, followed by a separator.
    pub fn record(&mut self, event: fmt::Arguments<'_>) {
        let _ = fmt::Write::write_fmt(self, event);
        self.bytes(b"\n");
        self.events += 1;
    }

    /// The digest so far.
    pub fn value(&self) -> u64 {
        self.hash
    }

    /// Events recorded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.hash = fnv1a_64_extend(self.hash, bytes);
    }
}

impl fmt::Write for TraceDigest {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}
