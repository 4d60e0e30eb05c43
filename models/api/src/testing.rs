//! Test doubles for the pose stage (feature `testing`): an estimator that finds two fencers
//! standing still, so engine and daemon tests run without weights or Candle.

use crate::{Person, PoseError, PoseEstimator, PreparedFrame, NUM_KEYPOINTS};

/// A plausible standing person centred at (`cx`, `cy`), `h` pixels tall: head at the top,
/// ankles at the bottom, keypoints alternating 5 px either side of the centre line.
pub fn standing_person(cx: f32, cy: f32, h: f32) -> Person {
    let mut keypoints = [[0.0f32; 3]; NUM_KEYPOINTS];
    for (k, kp) in keypoints.iter_mut().enumerate() {
        let frac = k as f32 / (NUM_KEYPOINTS - 1) as f32;
        *kp = [
            cx + if k % 2 == 0 { -5.0 } else { 5.0 },
            cy - h / 2.0 + frac * h,
            0.9,
        ];
    }
    Person {
        score: 0.9,
        bbox: [cx - h / 4.0, cy - h / 2.0, cx + h / 4.0, cy + h / 2.0],
        keypoints,
    }
}

/// Two fencers standing still at 30 % and 70 % of every frame's width, at a 320x192 input.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandingFencers;

impl PoseEstimator for StandingFencers {
    fn input_size(&self) -> (usize, usize) {
        (320, 192)
    }

    fn estimate(&mut self, batch: &[PreparedFrame]) -> Result<Vec<Vec<Person>>, PoseError> {
        Ok(batch
            .iter()
            .map(|f| {
                let (w, h) = (f.width as f32, f.height as f32);
                vec![
                    standing_person(w * 0.3, h * 0.5, h * 0.6),
                    standing_person(w * 0.7, h * 0.5, h * 0.6),
                ]
            })
            .collect())
    }
}
