//! Real-time pacing of file and synthetic sources.
//!
//! A [`Pacer`] schedules frame `n` at `start + n / fps` (absolute deadlines), so rounding and
//! sleep overshoot never accumulate into drift. If the consumer falls far behind (more than
//! `max_lag`), the schedule is re-anchored instead of bursting frames to catch up.
//! Use [`Pacer::next_deadline`] from any context, [`Pacer::wait_blocking`] from threads, or
//! [`Pacer::wait`] from async code.

use std::time::{Duration, Instant};

/// How fast a source's frames are released.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// One frame every `1 / fps` seconds, like a live camera.
    RealTime { fps: f32 },
    /// No waiting at all (benches, bulk uploads).
    AsFastAsPossible,
}

/// Invalid pacing parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PacingError {
    /// The frame rate is not a finite positive number.
    #[error("real-time pacing needs a positive frame rate, got {0} fps")]
    BadFps(f32),
}

/// Default tolerated lag before the schedule is re-anchored.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);

/// Releases frames on an absolute schedule.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Seconds per frame; `None` for [`Pacing::AsFastAsPossible`].
    period: Option<f64>,
    /// Time of frame 0 of the current schedule (set on first use).
    anchor: Option<Instant>,
    /// Frame number (within the current schedule) of the next deadline.
    next: u64,
    max_lag: Duration,
    resyncs: u64,
}

impl Pacer {
    /// Creates a pacer; the schedule starts at the first call to [`Self::next_deadline`].
    pub fn new(pacing: Pacing) -> Result<Self, PacingError> {
        let period = match pacing {
            Pacing::RealTime { fps } if fps.is_finite() && fps > 0.0 => Some(1.0 / fps as f64),
            Pacing::RealTime { fps } => return Err(PacingError::BadFps(fps)),
            Pacing::AsFastAsPossible => None,
        };
        Ok(Self {
            period,
            anchor: None,
            next: 0,
            max_lag: DEFAULT_MAX_LAG,
            resyncs: 0,
        })
    }

    /// Sets how far behind schedule the consumer may fall before the schedule is re-anchored.
    pub fn with_max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = max_lag;
        self
    }

    /// Starts the schedule at `start` (frame 0 is due then) instead of at first use.
    pub fn start_at(&mut self, start: Instant) {
        self.anchor = Some(start);
        self.next = 0;
    }

    /// Number of times the schedule was re-anchored because the consumer fell behind.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Deadline of frame `n` of the current schedule, if pacing is real-time and started.
    pub fn deadline_of(&self, n: u64) -> Option<Instant> {
        let (anchor, period) = (self.anchor?, self.period?);
        Some(anchor + Duration::from_secs_f64(n as f64 * period))
    }

    /// Deadline for the next frame, computed as if the current time were `now`.
    /// `None` means "release immediately" (as fast as possible).
    pub fn next_deadline_at(&mut self, now: Instant) -> Option<Instant> {
        self.period?;
        let anchor = *self.anchor.get_or_insert(now);
        let mut due = self.deadline_of(self.next).unwrap_or(anchor);
        if now > due + self.max_lag {
            // Far behind: start a new schedule now rather than burst to catch up.
            tracing::debug!(
                late_ms = (now - due).as_secs_f64() * 1e3,
                "pacer fell behind, re-anchoring"
            );
            self.anchor = Some(now);
            self.next = 0;
            self.resyncs += 1;
            due = now;
        }
        self.next += 1;
        Some(due)
    }

    /// Deadline for the next frame (see [`Self::next_deadline_at`]), using the current time.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.next_deadline_at(Instant::now())
    }

    /// Blocks the current thread until the next frame is due.
    pub fn wait_blocking(&mut self) {
        if let Some(due) = self.next_deadline() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }

    /// Waits (asynchronously, on tokio's timer) until the next frame is due.
    pub async fn wait(&mut self) {
        if let Some(due) = self.next_deadline() {
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_absolute_schedule() {
        let mut p = Pacer::new(Pacing::RealTime { fps: 30.0 }).unwrap();
        let t0 = Instant::now();
        // Consumer always asks a bit late (sleep overshoot); deadlines must not drift.
        let mut now = t0;
        for n in 0..300u64 {
            let due = p.next_deadline_at(now).unwrap();
            let expect = t0 + Duration::from_secs_f64(n as f64 / 30.0);
            let err = if due > expect {
                due - expect
            } else {
                expect - due
            };
            assert!(err < Duration::from_micros(2), "frame {n}: off by {err:?}");
            now = due + Duration::from_millis(3);
        }
        assert_eq!(p.resyncs(), 0);
        // Frame 300 is due exactly 10 s after frame 0.
        let d = p.deadline_of(300).unwrap() - t0;
        assert!((d.as_secs_f64() - 10.0).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn fractional_fps_schedule() {
        let mut p = Pacer::new(Pacing::RealTime { fps: 29.97 }).unwrap();
        let t0 = Instant::now();
        p.start_at(t0);
        let d = p.deadline_of(2997).unwrap() - t0;
        assert!((d.as_secs_f64() - 100.0).abs() < 1e-3, "{d:?}");
        assert_eq!(p.next_deadline_at(t0), Some(t0));
    }

    #[test]
    fn falls_behind_then_reanchors() {
        let mut p = Pacer::new(Pacing::RealTime { fps: 10.0 })
            .unwrap()
            .with_max_lag(Duration::from_millis(500));
        let t0 = Instant::now();
        assert_eq!(p.next_deadline_at(t0), Some(t0));
        // A short stall is caught up (deadline in the past, released at once).
        let late = t0 + Duration::from_millis(400);
        assert_eq!(
            p.next_deadline_at(late),
            Some(t0 + Duration::from_millis(100))
        );
        assert_eq!(p.resyncs(), 0);
        // A long stall re-anchors at `now`, and the following frames are spaced from there.
        let stalled = t0 + Duration::from_secs(5);
        assert_eq!(p.next_deadline_at(stalled), Some(stalled));
        assert_eq!(p.resyncs(), 1);
        assert_eq!(
            p.next_deadline_at(stalled),
            Some(stalled + Duration::from_millis(100))
        );
    }

    #[test]
    fn as_fast_as_possible_never_waits() {
        let mut p = Pacer::new(Pacing::AsFastAsPossible).unwrap();
        for _ in 0..5 {
            assert_eq!(p.next_deadline(), None);
        }
        p.wait_blocking();
    }

    #[test]
    fn rejects_bad_fps() {
        assert_eq!(
            Pacer::new(Pacing::RealTime { fps: 0.0 }).unwrap_err(),
            PacingError::BadFps(0.0)
        );
        assert!(Pacer::new(Pacing::RealTime { fps: f32::NAN }).is_err());
        assert!(Pacer::new(Pacing::RealTime { fps: -5.0 }).is_err());
    }

    #[tokio::test]
    async fn async_wait_paces_roughly() {
        let mut p = Pacer::new(Pacing::RealTime { fps: 100.0 }).unwrap();
        let t0 = Instant::now();
        for _ in 0..6 {
            p.wait().await;
        }
        assert!(t0.elapsed() >= Duration::from_millis(49));
    }

    #[test]
    fn blocking_wait_paces_roughly() {
        let mut p = Pacer::new(Pacing::RealTime { fps: 100.0 }).unwrap();
        let t0 = Instant::now();
        for _ in 0..6 {
            p.wait_blocking();
        }
        // Frames 0..5 released: at least 50 ms elapsed.
        assert!(t0.elapsed() >= Duration::from_millis(49));
    }
}
