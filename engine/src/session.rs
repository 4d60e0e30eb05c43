//! Per-session state shared between the network side and the pipeline threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use referee_transport::messages::{ServerMsg, SessionStart, SessionStats};
use tokio::sync::mpsc;

use crate::ack::AckTracker;
use crate::rectify::RectifyParams;

/// Frame counters of one session, updated lock-free from every stage.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Frames admitted into the pipeline (duplicates excluded).
    pub received: AtomicU64,
    /// Frames that went through pose and tracking.
    pub processed: AtomicU64,
    /// Frames that arrived twice (the second copy is discarded).
    pub duplicates: AtomicU64,
    /// Frames dropped for any other reason (late after the reorder window, limits).
    pub dropped: AtomicU64,
    /// Frames whose bytes could not be decoded (counted; the session continues).
    pub bad_frames: AtomicU64,
    /// Image bytes received.
    pub bytes: AtomicU64,
}

impl SessionCounters {
    /// A snapshot in the wire form.
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

/// What the network side and every stage know about a session.
pub struct SessionShared {
    /// The agent's session start message.
    pub start: SessionStart,
    /// Geometry and crop used to prepare this session's frames for the pose network.
    pub rectify: RectifyParams,
    /// Frames admitted so far (for cumulative acks and duplicate detection).
    pub acks: Mutex<AckTracker>,
    /// Counters.
    pub counters: SessionCounters,
    outbox: Mutex<Option<mpsc::UnboundedSender<ServerMsg>>>,
    last_activity: Mutex<Instant>,
    closed: AtomicBool,
    /// When the session was opened.
    pub opened_at: Instant,
}

impl SessionShared {
    pub(crate) fn new(start: SessionStart, rectify: RectifyParams) -> Self {
        Self {
            start,
            rectify,
            acks: Mutex::new(AckTracker::default()),
            counters: SessionCounters::default(),
            outbox: Mutex::new(None),
            last_activity: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            opened_at: Instant::now(),
        }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.start.session_id
    }

    /// The piste this session films.
    pub fn piste(&self) -> &str {
        &self.start.piste
    }

    /// Routes messages for the agent to `outbox` (replacing the previous connection's, on resume).
    pub fn attach(&self, outbox: mpsc::UnboundedSender<ServerMsg>) {
        *self.outbox.lock() = Some(outbox);
        self.touch();
    }

    /// Stops routing messages to the agent (its connection is gone); the session lives on until
    /// it resumes or times out.
    pub fn detach(&self) {
        *self.outbox.lock() = None;
    }

    /// True while an agent connection is attached.
    pub fn is_attached(&self) -> bool {
        self.outbox
            .lock()
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Sends a message to the attached agent, if any; returns false when none is attached.
    pub fn send(&self, msg: ServerMsg) -> bool {
        match self.outbox.lock().as_ref() {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// Records activity (frames or messages) for the idle timeout.
    pub fn touch(&self) {
        *self.last_activity.lock() = Instant::now();
    }

    /// Time since the last frame or message.
    pub fn idle_for(&self) -> Duration {
        self.last_activity.lock().elapsed()
    }

    /// Marks the session closed; stages discard its remaining work.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// True once the session has ended, been aborted or timed out.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
