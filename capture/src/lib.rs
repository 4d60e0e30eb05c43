//! Capture agent: frame sources (video file, camera, image folder, synthetic), encoding,
//! pacing, and the QUIC agent that streams frames and signal logs to the daemon with resume.
//!
//! This crate must not depend on candle: it runs on a small box next to the camera.

pub mod agent;
pub mod cli;
pub mod discover;
pub mod encode;
pub mod logging;
pub mod pacing;
pub mod source;
