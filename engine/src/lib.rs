//! The referee engine core, sans IO: sessions and admission, the frame pipeline's stages
//! (decode -> rectify -> pose -> track), the two-fencer tracker, phrase features and verdicts,
//! and per-phrase artifacts.
//!
//! It owns no socket, no async runtime and no clock, and knows no wire message: a driver
//! (the daemon in `referee-daemon`, an in-process runner, a test) opens sessions with
//! [`SessionSpec`], submits frames under a [`FramePermit`], hands over signal logs, supplies
//! the time through a [`Clock`], and receives everything the engine has to say as
//! [`EngineEvent`]s through its one [`EventSink`]. Pose estimators are injected
//! ([`referee_pose_api::PoseEstimator`]); the engine does not depend on Candle.

pub mod admission;
pub mod artifacts;
pub mod clock;
pub mod config;
mod engine;
pub mod error;
pub mod event;
pub mod rectify;
pub mod session;
pub mod stage;
pub mod stats;
pub mod tracker;
mod verdict;

pub use admission::FramePermit;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::EngineConfig;
pub use engine::{Admission, Engine};
pub use error::EngineError;
pub use event::{
    EngineEvent, EventSink, FailureKind, FrameMeta, PhraseSignal, SessionSpec, SessionStats,
    Undistort, Verdict,
};
pub use session::Session;
pub use tracker::TrackedPose;
