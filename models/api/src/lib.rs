//! The pose API: the small vocabulary that the engine, the rules, the capture agent and the
//! pose networks share, with no Candle and no IO.
//!
//! - [`Person`], [`Keypoints`] (COCO-17), [`Side`]: what pose estimation finds and how the two
//!   fencers are told apart.
//! - [`Letterbox`], [`PreparedFrame`], [`letterbox_rgb`]: a frame made ready for a network, and
//!   the way back from network coordinates to the source image.
//! - [`ack`]: which frames arrived ([`ReceivedFrames`]) and the cumulative [`Ack`] made of it.
//! - [`image`]: [`RgbImage`] and the one decoder of JPEG, PNG and raw frames ([`FrameEncoding`]).
//! - [`PoseEstimator`]: anything that turns prepared frames into persons; the binary injects the
//!   Candle networks of `referee-models`, tests inject doubles.

pub mod ack;
pub mod image;
mod letterbox;
#[cfg(feature = "testing")]
pub mod testing;

use serde::{Deserialize, Serialize};

pub use ack::{Ack, ReceivedFrames};
pub use image::{decode_frame, decode_frame_into, DecodeError, FrameEncoding, RgbImage};
pub use letterbox::{letterbox_rgb, Letterbox, PreparedFrame, LETTERBOX_PAD};

/// Number of COCO keypoints.
pub const NUM_KEYPOINTS: usize = 17;

/// COCO-17 keypoint names, in model order.
pub const KEYPOINT_NAMES: [&str; NUM_KEYPOINTS] = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
];

/// One person's keypoints in COCO-17 order: x, y, confidence. NaN x/y means missing.
pub type Keypoints = [[f32; 3]; NUM_KEYPOINTS];

/// One detected person.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// Detection score (sigmoid of the person logit).
    pub score: f32,
    /// Box x1, y1, x2, y2 in source-frame pixels.
    pub bbox: [f32; 4],
    /// Keypoints in source-frame pixels.
    pub keypoints: Keypoints,
}

/// A side of the screen. Fencer 2 of the scoring box is `Left`, Fencer 1 is `Right`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Left of screen (attacks towards +x).
    Left,
    /// Right of screen (attacks towards -x).
    Right,
}

impl Side {
    /// The opponent.
    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }

    /// Index into per-side arrays (left 0, right 1).
    pub fn index(self) -> usize {
        match self {
            Side::Left => 0,
            Side::Right => 1,
        }
    }

    /// Sign of x pointing towards the opponent.
    pub fn forward_sign(self) -> f32 {
        match self {
            Side::Left => 1.0,
            Side::Right => -1.0,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a pose estimator failed on a batch.
#[derive(Debug, thiserror::Error)]
pub enum PoseError {
    /// The frames do not fit the model (size, layout).
    #[error("invalid input: {0}")]
    Input(String),
    /// The backend failed (a tensor operation, a kernel).
    #[error("pose backend: {0}")]
    Backend(String),
}

/// Anything that turns prepared frames into persons.
pub trait PoseEstimator: Send {
    /// Model input (width, height).
    fn input_size(&self) -> (usize, usize);
    /// Persons per frame, in source-frame pixels.
    fn estimate(&mut self, batch: &[PreparedFrame]) -> Result<Vec<Vec<Person>>, PoseError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_opposite_and_named() {
        assert_eq!(Side::Left.other(), Side::Right);
        assert_eq!(Side::Right.to_string(), "right");
        assert_eq!(Side::Left.index() + Side::Right.index(), 1);
        assert_eq!(Side::Left.forward_sign(), -Side::Right.forward_sign());
    }
}
