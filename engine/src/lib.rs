//! Referee engine: bounded frame pipeline, sessions, two-fencer tracker, verdicts, artifacts
//! and the feed hub.

pub mod artifacts;
pub mod decode;
pub mod rectify;
pub mod tracker;
