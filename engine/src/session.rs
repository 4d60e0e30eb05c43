//! One session's state shared by the engine's entry points and its stages: what it is, which
//! frames arrived, its counters, when it was last active.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use referee_pose_api::ReceivedFrames;

use crate::event::{SessionSpec, SessionStats};
use crate::rectify::RectifyParams;

/// Per-session counters, updated by the stages.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Frames admitted (duplicates excluded).
    pub received: AtomicU64,
    /// Frames tracked.
    pub processed: AtomicU64,
    /// Copies of frames already received.
    pub duplicates: AtomicU64,
    /// Frames dropped (late, over a limit, bad length, geometry).
    pub dropped: AtomicU64,
    /// Frames whose bytes did not decode.
    pub bad_frames: AtomicU64,
    /// Encoded bytes admitted.
    pub bytes: AtomicU64,
}

impl SessionCounters {
    /// The counters as plain values.
    pub fn snapshot(&self) -> SessionStats {
        SessionStats {
            received: self.received.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            bad_frames: self.bad_frames.load(Ordering::Relaxed),
        }
    }
}

/// An open session.
pub struct Session {
    /// What the agent asked for.
    pub spec: SessionSpec,
    /// The rectification its frames get (configured, or from the agent's hint).
    pub rectify: RectifyParams,
    /// Frame numbers admitted so far (what acks are made of).
    pub received: Mutex<ReceivedFrames>,
    /// Its counters.
    pub counters: SessionCounters,
    last_activity: Mutex<Instant>,
    closed: AtomicBool,
    /// When it was opened.
    pub opened_at: Instant,
}

impl Session {
    pub(crate) fn new(spec: SessionSpec, rectify: RectifyParams, now: Instant) -> Self {
        Self {
            spec,
            rectify,
            received: Mutex::new(ReceivedFrames::default()),
            counters: SessionCounters::default(),
            last_activity: Mutex::new(now),
            closed: AtomicBool::new(false),
            opened_at: now,
        }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Its piste.
    pub fn piste(&self) -> &str {
        &self.spec.piste
    }

    /// Records activity at `now` (frames, signals, a resume).
    pub fn touch(&self, now: Instant) {
        let mut last = self.last_activity.lock();
        *last = (*last).max(now);
    }

    /// How long the session has been idle at `now`.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.last_activity.lock())
    }

    /// Marks the session closed: stages skip its frames from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Encoded frames kept per session for the overlay artifact: two seconds' worth.
pub(crate) fn image_ring_len(fps: f32) -> usize {
    ((fps.max(1.0) * 2.0).ceil() as usize).clamp(8, 240)
}
