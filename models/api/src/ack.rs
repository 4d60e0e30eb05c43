//! Acknowledgement arithmetic, in one place: which frames an [`Ack`] covers, how many, and how a
//! receiver builds one from the frame numbers it has seen.
//!
//! The agent (which reads acks to drop and resend frames), the engine (which keeps the received
//! set) and the daemon (which sends acks) share this one implementation; the wire protocol
//! carries [`Ack`] as is.
//!
//! An ack is cumulative with gaps: every frame below `next_expected` arrived, and each half-open
//! range `[start, end)` of `received_ranges` arrived too. Frame `u64::MAX` cannot end a
//! half-open `u64` range, so it is never acknowledged (the daemon caps frame numbers far below).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Cumulative acknowledgement: every frame below `next_expected` arrived; `received_ranges`
/// lists half-open ranges `[start, end)` above it that also arrived (the rest are gaps).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ack {
    /// Every frame below this one arrived.
    pub next_expected: u64,
    /// Half-open ranges above `next_expected` that arrived too.
    pub received_ranges: Vec<(u64, u64)>,
}

impl Ack {
    /// True when frame `n` is acknowledged: below `next_expected` or inside a received range.
    pub fn covers(&self, n: u64) -> bool {
        n < self.next_expected
            || self
                .received_ranges
                .iter()
                .any(|&(start, end)| start <= n && n < end)
    }

    /// Number of distinct frames the ack covers: `next_expected` plus the frames of the ranges
    /// above it. Empty ranges, ranges (or parts of ranges) below `next_expected` and overlaps
    /// count once, so this is always the number of `n` for which [`Ack::covers`] is true.
    pub fn acked_count(&self) -> u64 {
        let mut ranges: Vec<(u64, u64)> = self
            .received_ranges
            .iter()
            .map(|&(start, end)| (start.max(self.next_expected), end))
            .filter(|(start, end)| start < end)
            .collect();
        ranges.sort_unstable();
        let mut count = self.next_expected;
        // Everything below `covered_to` has been counted.
        let mut covered_to = self.next_expected;
        for (start, end) in ranges {
            let start = start.max(covered_to);
            if start < end {
                count += end - start;
                covered_to = end;
            }
        }
        count
    }

    /// The ack for a set of received frame numbers: the contiguous run from 0 becomes
    /// `next_expected`, the rest becomes sorted, disjoint, non-adjacent ranges above it.
    pub fn from_received(received: &BTreeSet<u64>) -> Ack {
        let mut next_expected = 0u64;
        let mut rest = received.iter().copied().peekable();
        while rest.next_if_eq(&next_expected).is_some() {
            next_expected += 1;
        }
        Ack::from_parts(next_expected, rest)
    }

    /// `next_expected` plus the ranges made of `above` (ascending, all above `next_expected`).
    fn from_parts(next_expected: u64, above: impl Iterator<Item = u64>) -> Ack {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        // u64::MAX cannot be the start of a non-empty half-open range.
        for frame in above.take_while(|&f| f < u64::MAX) {
            match ranges.last_mut() {
                Some((_, end)) if *end == frame => *end = frame + 1,
                _ => ranges.push((frame, frame + 1)),
            }
        }
        Ack {
            next_expected,
            received_ranges: ranges,
        }
    }
}

/// The frame numbers a receiver has seen, kept compactly (a counter for the contiguous run from
/// 0, a sparse set above it), from which it writes its [`Ack`]s.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReceivedFrames {
    next_expected: u64,
    above: BTreeSet<u64>,
}

impl ReceivedFrames {
    /// Nothing received yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `frame`; returns false when it had already been received (a duplicate).
    pub fn insert(&mut self, frame: u64) -> bool {
        if frame < self.next_expected || !self.above.insert(frame) {
            return false;
        }
        while self.next_expected < u64::MAX && self.above.remove(&self.next_expected) {
            self.next_expected += 1;
        }
        true
    }

    /// True when `frame` has been received.
    pub fn contains(&self, frame: u64) -> bool {
        frame < self.next_expected || self.above.contains(&frame)
    }

    /// Number of received frames numbered `last` or less.
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

    /// The lowest frame number not received yet.
    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// The wire form: `next_expected` plus the ranges received above it.
    pub fn to_ack(&self) -> Ack {
        Ack::from_parts(self.next_expected, self.above.iter().copied())
    }
}

impl Extend<u64> for ReceivedFrames {
    fn extend<I: IntoIterator<Item = u64>>(&mut self, frames: I) {
        for frame in frames {
            self.insert(frame);
        }
    }
}

impl FromIterator<u64> for ReceivedFrames {
    fn from_iter<I: IntoIterator<Item = u64>>(frames: I) -> Self {
        let mut received = Self::new();
        received.extend(frames);
        received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(next: u64, ranges: &[(u64, u64)]) -> Ack {
        Ack {
            next_expected: next,
            received_ranges: ranges.to_vec(),
        }
    }

    fn covered(a: &Ack, upto: u64) -> Vec<u64> {
        (0..upto).filter(|&n| a.covers(n)).collect()
    }

    #[test]
    fn coverage_and_count() {
        let a = ack(5, &[(7, 9), (12, 13)]);
        assert_eq!(covered(&a, 15), [0, 1, 2, 3, 4, 7, 8, 12]);
        assert_eq!(a.acked_count(), 8);
        // Ranges below next_expected or empty do not count twice.
        assert_eq!(ack(5, &[(2, 4), (6, 6)]).acked_count(), 5);
    }

    #[test]
    fn empty_ack_covers_nothing() {
        let a = Ack::default();
        assert!(!a.covers(0));
        assert_eq!(a.acked_count(), 0);
        assert_eq!(Ack::from_received(&BTreeSet::new()), a);
        assert_eq!(ReceivedFrames::new().to_ack(), a);
        assert!(ReceivedFrames::new().is_empty());
    }

    #[test]
    fn malformed_ranges_count_each_frame_once() {
        // Overlapping, unsorted, straddling next_expected: the count still matches `covers`.
        for a in [
            ack(5, &[(3, 8)]),
            ack(0, &[(10, 12), (4, 6), (5, 11)]),
            ack(2, &[(9, 9), (7, 3), (2, 4), (2, 4)]),
        ] {
            assert_eq!(a.acked_count(), covered(&a, 20).len() as u64, "{a:?}");
        }
        assert_eq!(ack(5, &[(3, 8)]).acked_count(), 8);
    }

    #[test]
    fn contiguous_frames_need_no_ranges() {
        let set: BTreeSet<u64> = (0..100).collect();
        assert_eq!(Ack::from_received(&set), ack(100, &[]));
        let r: ReceivedFrames = (0..100).rev().collect();
        assert_eq!(r.to_ack(), ack(100, &[]));
        assert_eq!((r.len(), r.next_expected()), (100, 100));
    }

    #[test]
    fn gaps_become_ranges_above_the_cumulative_point() {
        let set = BTreeSet::from([0, 1, 3, 4, 7, 9, 10, 11]);
        let a = Ack::from_received(&set);
        assert_eq!(a, ack(2, &[(3, 5), (7, 8), (9, 12)]));
        assert_eq!(covered(&a, 15), set.iter().copied().collect::<Vec<_>>());
        assert_eq!(a.acked_count(), set.len() as u64);
        // Nothing from 0: no cumulative part at all.
        assert_eq!(
            Ack::from_received(&BTreeSet::from([5, 6])),
            ack(0, &[(5, 7)])
        );
    }

    #[test]
    fn received_frames_track_duplicates_and_counts() {
        let mut t = ReceivedFrames::default();
        for f in [0, 1, 3, 4, 7] {
            assert!(t.insert(f));
        }
        assert!(!t.insert(3), "duplicate above the cumulative point");
        assert!(!t.insert(0), "duplicate below the cumulative point");
        assert_eq!(t.to_ack(), ack(2, &[(3, 5), (7, 8)]));
        assert_eq!(
            t.to_ack(),
            Ack::from_received(&BTreeSet::from([0, 1, 3, 4, 7]))
        );
        assert_eq!(t.count_upto(4), 4);
        assert_eq!(t.count_upto(100), 5);
        assert!(t.insert(2));
        assert_eq!(t.next_expected(), 5);
        assert_eq!(t.to_ack().received_ranges, vec![(7, 8)]);
        assert!(t.contains(7) && !t.contains(6));
        assert_eq!(t.len(), 6);
        assert_eq!(t.to_ack().acked_count(), t.len());
    }

    #[test]
    fn large_frame_numbers() {
        let big = u64::MAX - 10;
        let set = BTreeSet::from([0, big, big + 1, u64::MAX - 2]);
        let a = Ack::from_received(&set);
        assert_eq!(a, ack(1, &[(big, big + 2), (u64::MAX - 2, u64::MAX - 1)]));
        assert!(a.covers(big + 1) && !a.covers(big + 2) && a.covers(u64::MAX - 2));
        assert_eq!(a.acked_count(), 4);
        // u64::MAX cannot end a half-open range: tracked, but never acknowledged.
        let r: ReceivedFrames = [u64::MAX - 1, u64::MAX].into_iter().collect();
        assert!(r.contains(u64::MAX));
        assert_eq!(r.to_ack(), ack(0, &[(u64::MAX - 1, u64::MAX)]));
        assert_eq!(r.count_upto(u64::MAX), 2);
        assert_eq!(ack(u64::MAX, &[(3, 9)]).acked_count(), u64::MAX);
    }
}
