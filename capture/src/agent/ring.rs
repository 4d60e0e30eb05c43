//! The bounded ring of un-acknowledged frames: the capture thread pushes encoded frames, the
//! network side sends them, resends them after a reconnect, and drops them once acknowledged.
//!
//! When the ring is full a live source evicts its oldest frame (counted as lost unless the
//! daemon acknowledges it after all); a file or a fast run waits for acks instead.

use super::AgentError;
use referee_transport::messages::{Ack, FrameEncoding};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An encoded frame ready for the wire.
#[derive(Debug, Clone)]
pub(super) struct OutFrame {
    /// Frame number within the session.
    pub frame: u64,
    /// Capture time, microseconds since the Unix epoch.
    pub capture_ts_us: u64,
    /// Wire encoding of `bytes`.
    pub encoding: FrameEncoding,
    /// The image bytes (shared: a resend does not copy them).
    pub bytes: Arc<Vec<u8>>,
}

/// The ring of un-acknowledged frames, shared by the capture thread (which pushes) and the
/// network side (which sends, resends and drops acked frames).
pub(super) struct Ring {
    inner: std::sync::Mutex<RingInner>,
    /// Wakes the capture thread when space frees up (blocking policy).
    space: std::sync::Condvar,
    /// Wakes the network side when a frame arrives or the source ends.
    pub arrived: tokio::sync::Notify,
    capacity: usize,
    /// Full ring: evict the oldest frame (live sources) or wait for acks (files, fast mode).
    evict_when_full: bool,
}

#[derive(Default)]
struct RingInner {
    frames: VecDeque<OutFrame>,
    /// Frames evicted before being acknowledged.
    evicted: Vec<u64>,
    captured: u64,
    first_ts_us: Option<u64>,
    done: bool,
    error: Option<AgentError>,
}

impl Ring {
    /// An empty ring of `capacity` frames; `evict_when_full` chooses the policy when it is full.
    pub fn new(capacity: usize, evict_when_full: bool) -> Self {
        Ring {
            inner: Default::default(),
            space: Default::default(),
            arrived: Default::default(),
            capacity,
            evict_when_full,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RingInner> {
        // A panic elsewhere cannot leave the ring half-updated in a way that matters here.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a frame (capture thread). Returns false if the agent is stopping.
    pub fn push(&self, f: OutFrame, stop: &AtomicBool) -> bool {
        let mut g = self.lock();
        while g.frames.len() >= self.capacity {
            if self.evict_when_full {
                if let Some(old) = g.frames.pop_front() {
                    g.evicted.push(old.frame);
                }
            } else {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                g = match self.space.wait_timeout(g, Duration::from_millis(100)) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        g.captured += 1;
        g.first_ts_us.get_or_insert(f.capture_ts_us);
        g.frames.push_back(f);
        drop(g);
        self.arrived.notify_one();
        true
    }

    /// Marks the end of the source (capture thread), with the error that ended it, if any.
    pub fn finish(&self, error: Option<AgentError>) {
        let mut g = self.lock();
        g.done = true;
        g.error = error;
        drop(g);
        self.arrived.notify_one();
    }

    /// Drops the frames `ack` covers (and wakes a waiting capture thread); returns how many
    /// frames stay.
    pub fn apply_ack(&self, ack: &Ack) -> usize {
        let mut g = self.lock();
        g.frames.retain(|f| !ack.covers(f.frame));
        let n = g.frames.len();
        drop(g);
        self.space.notify_all();
        n
    }

    /// (frames captured, frames in the ring, evicted frames the ack does not cover).
    pub fn counts(&self, ack: &Ack) -> (u64, usize, u64) {
        let g = self.lock();
        let lost = g.evicted.iter().filter(|&&n| !ack.covers(n)).count() as u64;
        (g.captured, g.frames.len(), lost)
    }

    /// Un-acked frames numbered below `next_new` (already sent once), for resending.
    pub fn unsent_before(&self, next_new: u64) -> VecDeque<OutFrame> {
        self.lock()
            .frames
            .iter()
            .filter(|f| f.frame < next_new)
            .cloned()
            .collect()
    }

    /// The first frame numbered `next_new` or more (never sent yet).
    pub fn next_new(&self, next_new: u64) -> Option<OutFrame> {
        self.lock()
            .frames
            .iter()
            .find(|f| f.frame >= next_new)
            .cloned()
    }

    /// True once the source ended and every captured frame was handed out.
    pub fn exhausted(&self, next_new: u64) -> bool {
        let g = self.lock();
        g.done && g.frames.iter().all(|f| f.frame < next_new)
    }

    /// The error that ended the source, once.
    pub fn take_error(&self) -> Option<AgentError> {
        self.lock().error.take()
    }

    /// True when the ring holds no frame (every captured frame was acknowledged or evicted).
    pub fn is_empty(&self) -> bool {
        self.lock().frames.is_empty()
    }

    /// Capture time of the first frame ever pushed.
    pub fn first_ts_us(&self) -> Option<u64> {
        self.lock().first_ts_us
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

    fn frame(n: u64) -> OutFrame {
        OutFrame {
            frame: n,
            capture_ts_us: 1000 + n,
            encoding: FrameEncoding::Jpeg,
            bytes: Arc::new(vec![0; 4]),
        }
    }

    fn ring(capacity: usize, evict: bool) -> Ring {
        Ring::new(capacity, evict)
    }

    #[test]
    fn ring_evicts_oldest_and_counts_unacked_evictions_as_lost() {
        let r = ring(3, true);
        let stop = AtomicBool::new(false);
        for n in 0..5 {
            assert!(r.push(frame(n), &stop));
        }
        // Frames 0 and 1 were evicted; only 2..5 remain.
        assert_eq!(r.counts(&Ack::default()), (5, 3, 2));
        // If the daemon did receive frame 0 after all, it is not lost.
        assert_eq!(r.counts(&ack(1, &[])), (5, 3, 1));
        assert_eq!(r.first_ts_us(), Some(1000));
        assert_eq!(r.next_new(0).map(|f| f.frame), Some(2));
        assert_eq!(r.unsent_before(4).len(), 2);
        assert_eq!(r.apply_ack(&ack(4, &[])), 1);
        assert!(!r.exhausted(5));
        r.finish(None);
        assert!(r.exhausted(5));
        assert!(!r.exhausted(4));
    }

    #[test]
    fn blocking_ring_waits_for_acks_and_gives_up_on_stop() {
        let r = Arc::new(ring(2, false));
        let stop = Arc::new(AtomicBool::new(false));
        assert!(r.push(frame(0), &stop));
        assert!(r.push(frame(1), &stop));
        let (r2, stop2) = (r.clone(), stop.clone());
        let t = std::thread::spawn(move || r2.push(frame(2), &stop2));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "a full blocking ring waits");
        r.apply_ack(&ack(1, &[]));
        assert!(t.join().unwrap(), "space freed by an ack lets the frame in");
        let (r3, stop3) = (r.clone(), stop.clone());
        let t = std::thread::spawn(move || r3.push(frame(3), &stop3));
        stop.store(true, Ordering::Relaxed);
        assert!(!t.join().unwrap(), "stop releases a waiting capture thread");
    }
}
