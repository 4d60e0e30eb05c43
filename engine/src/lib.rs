//! Referee engine: the bounded frame pipeline, sessions, two-fencer tracker, verdicts,
//! artifacts, the feed hub and the daemon's QUIC and HTTP sides.

pub mod ack;
pub mod artifacts;
mod artifacts_job;
pub mod daemon;
pub mod decode;
pub mod feed;
pub mod http;
pub mod offline;
mod phrase;
pub mod pipeline;
pub mod rectify;
pub mod server;
pub mod session;
pub mod stats;
pub mod tracker;

pub use feed::{FeedHub, FeedSubscription};
pub use phrase::TrackedPose;
pub use pipeline::{Admission, Engine, EngineConfig, EngineError, FramePermit};
