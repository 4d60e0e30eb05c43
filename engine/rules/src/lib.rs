//! Signal-log parser, phrase features and saber right-of-way decisions.
//!
//! - [`signal::parse_signal`] turns a scoring-box log into a [`signal::Timeline`].
//! - [`workbook::read_workbook`] reads the old system's keypoint workbooks into [`PoseFrame`]s.
//! - [`PhraseAnalyzer`] takes frames one at a time (live tracker or workbook), keeps compact
//!   per-frame features, gives a [`LiveEstimate`] at any time and a [`Decision`] once the signal
//!   lands. [`analyze`] is the offline convenience.
//!
//! The right-of-way rules (see [`rules`]) apply FIE saber priority in order, on features that do not
//! depend on the scale of the coordinates: who has been advancing without interruption for longer
//! up to the hit (the established attack), else whose lamp lit first (a stop-cut into the attack
//! loses), else who gained more ground at the end; otherwise `uncertain`.

pub mod model;
pub mod rules;
pub mod signal;
pub mod workbook;

use serde::{Deserialize, Serialize};

pub use model::{Model, ModelError, MODEL_VERSION};
pub use rules::{
    analyze, Decision, DoubleFeatures, Evidence, LiveEstimate, Params, PhraseAnalyzer, Rule,
    SideLive, DEFAULT_PARAMS,
};

pub use referee_pose_api::{Keypoints, Side, NUM_KEYPOINTS};

/// The verdict: who scores, or "uncertain, ask a human".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Winner {
    /// Left fencer scores.
    Left,
    /// Right fencer scores.
    Right,
    /// The evidence is too weak to decide.
    Uncertain,
}

impl From<Side> for Winner {
    fn from(s: Side) -> Self {
        match s {
            Side::Left => Winner::Left,
            Side::Right => Winner::Right,
        }
    }
}

impl Winner {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Winner::Left => "left",
            Winner::Right => "right",
            Winner::Uncertain => "uncertain",
        }
    }
}

/// Both fencers' poses in one video frame.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseFrame {
    /// Frame number in the phrase's video.
    pub frame: u64,
    /// Seconds since the phrase start (the first video frame).
    pub t: f64,
    /// Left-of-screen fencer, if seen.
    pub left: Option<Keypoints>,
    /// Right-of-screen fencer, if seen.
    pub right: Option<Keypoints>,
}

impl PoseFrame {
    /// The keypoints of one side.
    pub fn side(&self, s: Side) -> Option<&Keypoints> {
        match s {
            Side::Left => self.left.as_ref(),
            Side::Right => self.right.as_ref(),
        }
    }
}
