//! From the raw (56, A) head output to persons: score threshold and class-agnostic NMS.

use crate::{Keypoints, Person, NUM_KEYPOINTS};

/// Rows of the raw output: cx, cy, w, h, score, then 17 x (x, y, conf).
pub const RAW_ROWS: usize = 5 + 3 * NUM_KEYPOINTS;

/// Decodes a channel-major `(56, a)` raw output (model-input pixels) into persons with
/// `score > conf_threshold`, after class-agnostic NMS at `iou_threshold`, best first.
/// Coordinates stay in model-input pixels. A too-short `raw` yields no persons.
pub fn decode_raw(raw: &[f32], a: usize, conf_threshold: f32, iou_threshold: f32) -> Vec<Person> {
    if raw.len() < RAW_ROWS * a {
        return Vec::new();
    }
    let at = |row: usize, i: usize| raw[row * a + i];
    let mut cands: Vec<Person> = (0..a)
        .filter(|&i| at(4, i) > conf_threshold)
        .map(|i| {
            let (cx, cy, w, h) = (at(0, i), at(1, i), at(2, i), at(3, i));
            let mut keypoints: Keypoints = [[0.0; 3]; NUM_KEYPOINTS];
            for (k, kp) in keypoints.iter_mut().enumerate() {
                *kp = [at(5 + 3 * k, i), at(6 + 3 * k, i), at(7 + 3 * k, i)];
            }
            Person {
                score: at(4, i),
                bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                keypoints,
            }
        })
        .collect();
    cands.sort_by(|x, y| y.score.total_cmp(&x.score));
    nms(cands, iou_threshold)
}

/// Intersection over union of two x1y1x2y2 boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy NMS over persons sorted by descending score: drops any box whose IoU with a kept
/// box exceeds `iou_threshold`.
pub fn nms(sorted: Vec<Person>, iou_threshold: f32) -> Vec<Person> {
    let mut keep: Vec<Person> = Vec::new();
    for p in sorted {
        if keep.iter().all(|k| iou(&k.bbox, &p.bbox) <= iou_threshold) {
            keep.push(p);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_with(boxes: &[(f32, f32, f32, f32, f32)]) -> (Vec<f32>, usize) {
        let a = boxes.len();
        let mut raw = vec![0.0; RAW_ROWS * a];
        for (i, &(cx, cy, w, h, s)) in boxes.iter().enumerate() {
            raw[i] = cx;
            raw[a + i] = cy;
            raw[2 * a + i] = w;
            raw[3 * a + i] = h;
            raw[4 * a + i] = s;
            raw[5 * a + i] = cx + 1.0; // nose x
        }
        (raw, a)
    }

    #[test]
    fn threshold_and_nms() {
        let (raw, a) = raw_with(&[
            (50.0, 50.0, 20.0, 40.0, 0.9),
            (51.0, 50.0, 20.0, 40.0, 0.8), // overlaps the first: suppressed
            (150.0, 50.0, 20.0, 40.0, 0.5),
            (250.0, 50.0, 20.0, 40.0, 0.2), // below threshold
        ]);
        let p = decode_raw(&raw, a, 0.25, 0.7);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].score, 0.9);
        assert_eq!(p[0].bbox, [40.0, 30.0, 60.0, 70.0]);
        assert_eq!(p[0].keypoints[0][0], 51.0);
        assert_eq!(p[1].score, 0.5);
    }

    #[test]
    fn iou_of_disjoint_and_identical() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        assert!((iou(&a, &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    }
}
