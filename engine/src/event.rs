//! What goes into the engine and what comes out of it, in the engine's own terms: no wire
//! messages, no channels. The driver (the daemon, an in-process runner, a test) turns network
//! input into these values and maps [`EngineEvent`]s to whatever it speaks.

use std::time::Duration;

use referee_pose_api::FrameEncoding;
use referee_rules::{Decision, LiveEstimate};

/// Fisheye correction an agent suggests for its camera.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Undistort {
    /// Correct the lens at all.
    pub enabled: bool,
    /// Strength of the correction (0 = none).
    pub strength: f32,
    /// 0 = crop to valid pixels, 1 = keep the whole field of view.
    pub balance: f32,
}

/// A request to open (or resume) a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSpec {
    /// Unique id: letters, digits, '-', '_' and '.', 1-128 characters.
    pub id: String,
    /// The piste the camera films.
    pub piste: String,
    /// The camera's name.
    pub camera: String,
    /// Nominal frames per second (phrase time comes from capture stamps).
    pub fps: f32,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// The agent's fisheye suggestion.
    pub undistort: Option<Undistort>,
    /// Continue the existing session of this id instead of opening a new one.
    pub resume: bool,
}

/// One frame's metadata; its encoded bytes travel beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMeta {
    /// The session it belongs to.
    pub session_id: String,
    /// Frame number within the session, from 0, contiguous at the source.
    pub frame: u64,
    /// Capture time, microseconds since the Unix epoch.
    pub capture_ts_us: u64,
    /// How the bytes are encoded.
    pub encoding: FrameEncoding,
    /// Number of bytes the sender announced (checked against what arrived).
    pub len: u32,
}

/// The scoring box's log for one phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhraseSignal {
    /// The session it closes a phrase of.
    pub session_id: String,
    /// Phrase number within the session (0, 1, ...).
    pub phrase: u32,
    /// The log's file name.
    pub filename: String,
    /// The log's bytes, exactly as written by the box.
    pub bytes: Vec<u8>,
    /// Capture time of the phrase's first frame, when the agent knows it (continuous bouts).
    pub phrase_start_us: Option<u64>,
}

/// Per-session frame counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct SessionStats {
    /// Frames admitted (duplicates excluded).
    pub received: u64,
    /// Frames tracked.
    pub processed: u64,
    /// Copies of frames already received.
    pub duplicates: u64,
    /// Frames dropped (late, over a limit, bad length, geometry).
    pub dropped: u64,
    /// Frames whose bytes did not decode.
    pub bad_frames: u64,
}

/// The decision for one phrase.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The session.
    pub session_id: String,
    /// Its piste.
    pub piste: String,
    /// The phrase within the session.
    pub phrase: u32,
    /// Who scores, why, with what confidence and evidence.
    pub decision: Decision,
    /// From the signal's arrival to the decision.
    pub latency: Duration,
    /// The full result document (result.json).
    pub detail_json: String,
}

/// What a failure inside a session was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The signal log could not be parsed.
    BadSignal,
    /// The session was idle for longer than the session timeout.
    IdleTimeout,
}

/// Something the engine sends out. `to_agent` / feed routing is the driver's business; the
/// doc of each variant says who it is meant for.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A session was opened (for the feed).
    SessionStarted {
        /// The session.
        session_id: String,
        /// Its piste.
        piste: String,
    },
    /// Counters of a session while it streams (for its agent).
    Progress {
        /// The session.
        session_id: String,
        /// Its counters.
        stats: SessionStats,
        /// Frames waiting in the pipeline's queues.
        queue_depth: u32,
    },
    /// The live estimate after a frame (for the feed).
    Live {
        /// The session.
        session_id: String,
        /// Its piste.
        piste: String,
        /// The frame.
        frame: u64,
        /// What the referee sees so far.
        estimate: LiveEstimate,
    },
    /// A verdict (for the agent and, unless `repeated`, the feed).
    Verdict {
        /// The verdict.
        verdict: Verdict,
        /// True when it answers a repeated signal (already published once).
        repeated: bool,
    },
    /// A failure inside a session (for its agent; bad signals for the feed too).
    Failure {
        /// The session.
        session_id: String,
        /// What it was about.
        kind: FailureKind,
        /// A message for people.
        message: String,
    },
    /// A session ended and released its resources (for the agent and the feed).
    SessionEnded {
        /// The session.
        session_id: String,
        /// Its piste.
        piste: String,
        /// Its final counters.
        stats: SessionStats,
    },
}

impl EngineEvent {
    /// The session the event belongs to.
    pub fn session_id(&self) -> &str {
        match self {
            EngineEvent::SessionStarted { session_id, .. }
            | EngineEvent::Progress { session_id, .. }
            | EngineEvent::Live { session_id, .. }
            | EngineEvent::Failure { session_id, .. }
            | EngineEvent::SessionEnded { session_id, .. } => session_id,
            EngineEvent::Verdict { verdict, .. } => &verdict.session_id,
        }
    }
}

/// The engine's one outbound interface. Called from pipeline threads: it must not block.
pub trait EventSink: Send + Sync {
    /// Takes one event.
    fn emit(&self, event: EngineEvent);
}

/// A sink that forwards every event into a crossbeam channel (in-process runners, tests).
impl EventSink for crossbeam_channel::Sender<EngineEvent> {
    fn emit(&self, event: EngineEvent) {
        // A dropped receiver means nobody listens any more; the engine goes on.
        let _ = self.send(event);
    }
}
