//! Protocol messages exchanged between capture agents, feed subscribers and the daemon.
//!
//! Control messages travel on one bidirectional QUIC stream per connection, each encoded
//! with postcard behind a length prefix (see `codec`). Frames do not go through serde: each
//! frame is one unidirectional stream carrying a [`FrameHeader`] followed by the raw image bytes.

use serde::{Deserialize, Serialize};

/// Protocol version, carried in the ALPN string (`referee/2`). Version 2 added the session's
/// resume secret (`SessionStarted::resume_secret`, `SessionStart::resume_secret`): a version-1
/// peer fails the handshake with a clear "unsupported protocol version" instead of misreading
/// messages.
pub const PROTOCOL_VERSION: u16 = 2;
/// ALPN identifier for protocol version 2.
pub const ALPN: &[u8] = b"referee/2";

/// What a connecting peer wants to do; each role has its own token list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A capture agent streaming frames and signal logs.
    Capture,
    /// A subscriber to the progressive verdict feed.
    Feed,
}

/// Side of the piste as seen on screen (Fencer 1 of the scoring box is `Right`) and how a
/// frame's bytes are encoded: one definition each, shared with the engine and the agent.
pub use referee_pose_api::{Ack, FrameEncoding, Side};

/// Fisheye correction the agent suggests for its camera (the daemon's config may override).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UndistortHint {
    pub enabled: bool,
    pub strength: f32,
    pub balance: f32,
}

/// Header of a frame stream; the image bytes (exactly `len`) follow it on the same stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    pub session_id: String,
    /// Frame number within the session, starting at 0, contiguous at the source.
    pub frame: u64,
    /// Capture time in microseconds since the Unix epoch (taken when the frame was captured).
    pub capture_ts_us: u64,
    pub encoding: FrameEncoding,
    /// Number of image bytes that follow the header.
    pub len: u32,
}

/// Opens a session (one phrase, or a continuous bout split by signal logs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStart {
    pub session_id: String,
    pub fps: f32,
    pub width: u32,
    pub height: u32,
    pub piste: String,
    pub camera: String,
    pub undistort: Option<UndistortHint>,
    /// True when an agent reconnects to continue an existing session.
    pub resume: bool,
    /// On resume: the secret the daemon returned in this session's `SessionStarted`, which
    /// proves that the agent resuming is the one that opened the session.
    pub resume_secret: Option<String>,
}

/// The scoring box's log for a phrase, exactly as written by the box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub session_id: String,
    /// Phrase number within the session, assigned by the agent (0, 1, 2, ...).
    pub phrase: u32,
    pub filename: String,
    pub bytes: Vec<u8>,
    /// Wall-clock time (us since epoch) of the phrase's first frame, when the agent knows it;
    /// lets the daemon align the log with frame capture times in continuous mode.
    pub phrase_start_us: Option<u64>,
}

/// Pose-derived state of one fencer at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FencerState {
    /// Horizontal position on the piste, 0 = left edge of the frame, 1 = right edge.
    pub x: f32,
    /// Speed towards the opponent, in body heights per second (positive = advancing).
    pub speed: f32,
    /// Short action label: "advance", "retreat", "lunge", "pause", "unseen", ...
    pub action: String,
    pub visible: bool,
}

/// Live state of a piste during a phrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveState {
    pub session_id: String,
    pub piste: String,
    pub frame: u64,
    /// Seconds since the session's first frame.
    pub t: f32,
    pub left: FencerState,
    pub right: FencerState,
    /// Who has right-of-way so far, if anyone.
    pub right_of_way: Option<Side>,
    pub confidence: f32,
}

/// One piece of evidence behind a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub frame: u64,
    pub t: f32,
    pub what: String,
}

/// Who scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Winner {
    Left,
    Right,
    /// The evidence is too weak: a human must decide.
    Uncertain,
}

/// The decision for one phrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictReport {
    pub session_id: String,
    pub piste: String,
    pub phrase: u32,
    pub winner: Winner,
    pub confidence: f32,
    pub reason: String,
    pub evidence: Vec<Evidence>,
    /// Milliseconds from the signal's arrival to this verdict being sent.
    pub latency_ms: f32,
    /// The full result (timeline, features, stats) as JSON, as written to result.json.
    pub detail_json: String,
}

/// Counters the daemon reports for a session.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionStats {
    pub received: u64,
    pub processed: u64,
    pub duplicates: u64,
    pub dropped: u64,
    pub bad_frames: u64,
}

/// Error codes; `recoverable` on [`ErrorMsg`] tells the client whether retrying may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    Unauthorized,
    ProtocolViolation,
    UnsupportedVersion,
    UnknownSession,
    SessionExists,
    TooManySessions,
    MemoryBudget,
    FrameTooLarge,
    SignalTooLarge,
    BadSignal,
    BadFrame,
    Timeout,
    Overloaded,
    Internal,
    /// The session belongs to another agent: it was opened on another connection, and this
    /// one did not prove (with the session's resume secret and token) that it is that agent.
    NotSessionOwner,
    /// The daemon, or this source address, has as many connections as it accepts.
    TooManyConnections,
    /// The session sent new phrases' signals faster than the daemon decides them.
    TooManySignals,
}

/// An error reported to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
    pub recoverable: bool,
    pub session_id: Option<String>,
}

/// Events on the progressive verdict feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeedEvent {
    SessionStarted {
        session_id: String,
        piste: String,
    },
    Live(LiveState),
    Verdict(VerdictReport),
    SessionEnded {
        session_id: String,
        piste: String,
        stats: SessionStats,
    },
    Error(ErrorMsg),
    /// This subscriber was too slow and `count` events were dropped for it.
    Lagged {
        count: u64,
    },
}

/// Messages a client (agent or subscriber) sends on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message on every connection.
    Hello {
        role: Role,
        token: String,
        client: String,
    },
    SessionStart(SessionStart),
    Signal(Signal),
    End {
        session_id: String,
    },
    Abort {
        session_id: String,
        reason: String,
    },
    Ping {
        nonce: u64,
    },
    /// Subscribe to the feed; an empty list means every piste.
    FeedSubscribe {
        pistes: Vec<String>,
    },
}

/// Messages the daemon sends on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    Welcome {
        server: String,
        protocol: u16,
    },
    SessionStarted {
        session_id: String,
        ack: Ack,
        /// Keep it: a resume of this session must present it (`SessionStart::resume_secret`).
        resume_secret: String,
    },
    Ack {
        session_id: String,
        ack: Ack,
    },
    SignalAck {
        session_id: String,
        phrase: u32,
    },
    Progress {
        session_id: String,
        stats: SessionStats,
        queue_depth: u32,
    },
    Live(LiveState),
    Verdict(VerdictReport),
    SessionEnded {
        session_id: String,
        stats: SessionStats,
    },
    Error(ErrorMsg),
    Pong {
        nonce: u64,
    },
    Feed(FeedEvent),
}
