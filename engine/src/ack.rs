//! Which frames of a session have arrived: cumulative acknowledgement with gaps.

use std::collections::BTreeSet;

use referee_transport::messages::Ack;

/// Tracks received frame numbers compactly: everything below `next_expected` plus a sparse set above.
#[derive(Debug, Default, Clone)]
pub struct AckTracker {
    next_expected: u64,
    above: BTreeSet<u64>,
}

impl AckTracker {
    /// Records `frame`; returns false when it had already been received (a duplicate).
    pub fn insert(&mut self, frame: u64) -> bool {
        if frame < self.next_expected || !self.above.insert(frame) {
            return false;
        }
        while self.above.remove(&self.next_expected) {
            self.next_expected += 1;
        }
        true
    }

    /// True when `frame` has been received.
    pub fn contains(&self, frame: u64) -> bool {
        frame < self.next_expected || self.above.contains(&frame)
    }

    /// Number of received frames with number `<= last`.
    pub fn count_upto(&self, last: u64) -> u64 {
        let below = self.next_expected.min(last.saturating_add(1));
        below + self.above.range(..=last).count() as u64
    }

    /// Total frames received.
    pub fn len(&self) -> u64 {
        self.next_expected + self.above.len() as u64
    }

    /// True when nothing has been received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lowest frame number not yet received.
    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// The wire form: `next_expected` plus the ranges received above it.
    pub fn to_ack(&self) -> Ack {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &f in &self.above {
            match ranges.last_mut() {
                Some((_, end)) if *end == f => *end = f + 1,
                _ => ranges.push((f, f + 1)),
            }
        }
        Ack {
            next_expected: self.next_expected,
            received_ranges: ranges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_with_gaps_and_duplicates() {
        let mut t = AckTracker::default();
        for f in [0, 1, 3, 4, 7] {
            assert!(t.insert(f));
        }
        assert!(!t.insert(3), "duplicate above the cumulative point");
        assert!(!t.insert(0), "duplicate below the cumulative point");
        assert_eq!(
            t.to_ack(),
            Ack {
                next_expected: 2,
                received_ranges: vec![(3, 5), (7, 8)]
            }
        );
        assert_eq!(t.count_upto(4), 4);
        assert_eq!(t.count_upto(100), 5);
        assert!(t.insert(2));
        assert_eq!(t.next_expected(), 5);
        assert_eq!(t.to_ack().received_ranges, vec![(7, 8)]);
        assert!(t.contains(7) && !t.contains(6));
        assert_eq!(t.len(), 6);
    }
}
