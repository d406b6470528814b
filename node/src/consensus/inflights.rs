//! The appends a leader has sent to one follower and not yet seen acknowledged.

use std::collections::VecDeque;

use super::message::Index;

/// A bounded window of in-flight append messages, limited by count and by payload bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index of the message, payload bytes), oldest first; indexes increase.
    window: VecDeque<(Index, u64)>,
    bytes: u64,
    /// The most messages in flight.
    msgs_max: usize,
    /// The most payload bytes in flight; 0 means no byte limit.
    bytes_max: u64,
}

impl Inflights {
    /// An empty window.
    pub fn new(msgs_max: usize, bytes_max: u64) -> Inflights {
        Inflights {
            window: VecDeque::new(),
            bytes: 0,
            msgs_max,
            bytes_max,
        }
    }

    /// Records a message whose last entry is `index` carrying `bytes` of payload.
    pub fn add(&mut self, index: Index, bytes: u64) {
        debug_assert!(self.window.back().is_none_or(|&(i, _)| i < index));
        self.window.push_back((index, bytes));
        self.bytes += bytes;
    }

    /// Whether no more messages may be sent.
    pub fn full(&self) -> bool {
        self.window.len() >= self.msgs_max || (self.bytes_max > 0 && self.bytes >= self.bytes_max)
    }

    /// Forgets the messages whose last index is at most `to`: the follower acknowledged them.
    pub fn free_le(&mut self, to: Index) {
        while let Some(&(index, bytes)) = self.window.front() {
            if index > to {
                break;
            }
            self.bytes -= bytes;
            self.window.pop_front();
        }
    }

    /// Forgets the oldest message, so that a heartbeat response can unblock a full window whose
    /// acknowledgements were lost.
    pub fn free_first_one(&mut self) {
        if let Some((_, bytes)) = self.window.pop_front() {
            self.bytes -= bytes;
        }
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }

    /// The number of messages in flight.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_and_bytes() {
        let mut inf = Inflights::new(3, 100);
        inf.add(1, 10);
        inf.add(2, 10);
        assert!(!inf.full());
        inf.add(3, 10);
        assert!(inf.full());
        inf.free_le(2);
        assert!(!inf.full());
        inf.add(4, 90);
        assert!(inf.full());
        inf.free_first_one();
        assert_eq!(inf.count(), 1);
        assert!(!inf.full());
    }
}
