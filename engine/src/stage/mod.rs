//! The pipeline's stages, in the order a frame passes them. Each stage is a thread loop over a
//! bounded crossbeam channel; the engine ([`crate::Engine`]) wires them together. A stage
//! knows only its input and output jobs (defined here) and the [`StageContext`], never the
//! pipeline that runs it.
//!
//! decode -> rectify -> pose -> track (reorder, two-fencer tracking, features, verdict)

pub mod decode;
pub mod pose;
pub mod rectify;
pub mod track;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use referee_pose_api::{FrameEncoding, Person, PreparedFrame, RgbImage};

use crate::admission::FramePermit;
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::event::{EventSink, PhraseSignal};
use crate::session::Session;
use crate::stats::EngineStats;

/// What every stage may use: settings, statistics, the clock and the outbound sink.
pub(crate) struct StageContext {
    pub cfg: EngineConfig,
    pub stats: EngineStats,
    pub clock: Arc<dyn Clock>,
    pub sink: Arc<dyn EventSink>,
    /// Verdicts given so far.
    pub verdicts: AtomicU64,
    /// The artifacts writer (a fixed pool with a bounded queue); joined at shutdown so no
    /// artifact is cut short.
    pub artifacts: crate::artifacts::job::ArtifactPool,
}

/// A frame admitted into the pipeline (input of decode).
pub(crate) struct FrameJob {
    pub session: Arc<Session>,
    pub frame: u64,
    pub capture_ts_us: u64,
    pub encoding: FrameEncoding,
    pub bytes: Arc<Vec<u8>>,
    pub permit: FramePermit,
    pub admitted_at: Instant,
}

impl FrameJob {
    /// The frame as a failure for the track stage (which must still learn that it arrived),
    /// releasing its pipeline permit.
    pub fn failed(self) -> PosedFrame {
        PosedFrame {
            session: self.session,
            frame: self.frame,
            capture_ts_us: self.capture_ts_us,
            encoding: self.encoding,
            bytes: self.bytes,
            persons: None,
            rectified: (0, 0),
            admitted_at: self.admitted_at,
        }
    }
}

/// Output of decode, input of rectify.
pub(crate) struct DecodedJob {
    pub job: FrameJob,
    pub image: RgbImage,
}

/// Output of rectify, input of pose.
pub(crate) struct PreparedJob {
    pub job: FrameJob,
    pub prepared: PreparedFrame,
    pub rectified: (usize, usize),
}

/// A frame after pose (or after failing to decode), on its way to the track stage.
pub(crate) struct PosedFrame {
    pub session: Arc<Session>,
    pub frame: u64,
    pub capture_ts_us: u64,
    pub encoding: FrameEncoding,
    pub bytes: Arc<Vec<u8>>,
    /// None when the frame could not be decoded or posed.
    pub persons: Option<Vec<Person>>,
    pub rectified: (usize, usize),
    pub admitted_at: Instant,
}

/// Session events for the track stage.
pub(crate) enum Control {
    Signal {
        session: Arc<Session>,
        signal: PhraseSignal,
        received_at: Instant,
    },
    End {
        session: Arc<Session>,
        reason: EndReason,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Ended,
    Aborted,
    TimedOut,
}
