//! Two-fencer tracker: picks the two fencers among the pose detections of each frame and keeps
//! their left/right identity through crossings, occlusions and missed detections.
//!
//! * **Acquisition** (no track yet, or a track lost for more than `max_missed` frames): every
//!   detection gets a quality in `[0, 1]` favouring large persons whose feet are in the piste band
//!   and who stand in a wide en-garde stance; persons cut by the bottom edge (the referee or
//!   spectators close to the camera) and tiny ones are penalised or ignored. The two best become
//!   left (smaller x) and right.
//! * **Tracking**: each fencer's hip centre follows a constant-velocity model (velocity damped
//!   while unseen); detections are assigned to the two predictions by minimal total distance in
//!   body heights, gated, so an x-order flip for one frame (corps-a-corps, crossing) never swaps
//!   identities. A fencer unseen for a few frames coasts on the prediction and is re-matched
//!   when it reappears within a gate that grows with the gap.

use referee_pose_api::{Keypoints, Person};
use serde::{Deserialize, Serialize};

const L_SHOULDER: usize = 5;
const R_SHOULDER: usize = 6;
const L_HIP: usize = 11;
const R_HIP: usize = 12;
const L_ANKLE: usize = 15;
const R_ANKLE: usize = 16;

/// Tracker settings; [`Default`] suits a side-on piste camera.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrackerConfig {
    /// Band (fractions of the image height, top to bottom) where fencers' feet are expected.
    pub feet_band: (f32, f32),
    /// Persons whose box is shorter than this fraction of the image height are ignored.
    pub min_height: f32,
    /// A box whose bottom lies within this fraction of the image height from the bottom edge
    /// is treated as cut off (referee, spectator near the camera) and penalised.
    pub bottom_margin: f32,
    /// Detections below this score are ignored.
    pub min_score: f32,
    /// Keypoints below this confidence are not used for geometry.
    pub kp_conf: f32,
    /// Frames a fencer may stay unseen before its track is dropped and re-acquired.
    pub max_missed: u32,
    /// Matching gate in body heights between prediction and detection.
    pub gate: f32,
    /// Gate growth per unseen frame, in body heights (capped at 4 body heights).
    pub gate_growth: f32,
    /// Candidates below this quality are never taken as fencers (acquired or matched).
    pub min_quality: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            feet_band: (0.3, 1.0),
            min_height: 0.08,
            bottom_margin: 0.01,
            min_score: 0.25,
            kp_conf: 0.3,
            max_missed: 30,
            gate: 0.75,
            gate_growth: 0.15,
            min_quality: 0.05,
        }
    }
}

/// The two fencers in one frame (source-image coordinates of the detections given to `update`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackedFrame {
    pub frame: u64,
    /// Keypoints of the left fencer (x, y, confidence), `None` when unseen this frame.
    pub left: Option<Keypoints>,
    pub right: Option<Keypoints>,
    /// Boxes x1, y1, x2, y2.
    pub left_box: Option<[f32; 4]>,
    pub right_box: Option<[f32; 4]>,
}

/// A detection prepared for matching.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    idx: usize,
    /// Hip centre (keypoints when confident, otherwise from the box).
    pos: (f32, f32),
    height: f32,
    quality: f32,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    pos: (f32, f32),
    vel: (f32, f32),
    height: f32,
    last_frame: u64,
    missed: u32,
}

impl Track {
    fn gap(&self, frame: u64) -> u32 {
        frame
            .saturating_sub(self.last_frame)
            .clamp(1, u32::MAX as u64) as u32
    }

    /// Constant velocity, damped by 0.85 per frame beyond the first while unseen.
    fn predict(&self, frame: u64) -> (f32, f32) {
        let gap = self.gap(frame).min(60);
        let steps: f32 = (0..gap).map(|k| 0.85f32.powi(k as i32)).sum();
        (
            self.pos.0 + self.vel.0 * steps,
            self.pos.1 + self.vel.1 * steps,
        )
    }

    fn gate(&self, cfg: &TrackerConfig, frame: u64) -> f32 {
        (cfg.gate + cfg.gate_growth * (self.gap(frame) - 1) as f32).min(4.0_f32.max(cfg.gate))
    }

    /// Distance in body heights from the prediction, or `None` outside the gate.
    fn cost(&self, c: &Candidate, cfg: &TrackerConfig, frame: u64) -> Option<f32> {
        if c.quality < cfg.min_quality {
            return None;
        }
        let p = self.predict(frame);
        let d = ((c.pos.0 - p.0).powi(2) + (c.pos.1 - p.1).powi(2)).sqrt() / self.height.max(1.0);
        (d <= self.gate(cfg, frame)).then_some(d + 0.2 * (1.0 - c.quality))
    }

    fn observe(&mut self, c: &Candidate, frame: u64) {
        let dt = self.gap(frame) as f32;
        let v = ((c.pos.0 - self.pos.0) / dt, (c.pos.1 - self.pos.1) / dt);
        // Clamp: a bad match must not fling the prediction across the piste.
        let vmax = 0.5 * self.height.max(1.0);
        let clamp = |a: f32| a.clamp(-vmax, vmax);
        self.vel = (
            clamp(0.6 * v.0 + 0.4 * self.vel.0),
            clamp(0.6 * v.1 + 0.4 * self.vel.1),
        );
        self.pos = c.pos;
        self.height = 0.7 * self.height + 0.3 * c.height;
        self.last_frame = frame;
        self.missed = 0;
    }

    fn start(c: &Candidate, frame: u64) -> Self {
        Self {
            pos: c.pos,
            vel: (0.0, 0.0),
            height: c.height,
            last_frame: frame,
            missed: 0,
        }
    }
}

/// One tracked frame with its time, as kept for the verdict and the artifacts.
#[derive(Debug, Clone)]
pub struct TrackedPose {
    /// The tracker's output (keypoints in rectified-image pixels).
    pub tracked: TrackedFrame,
    /// Capture timestamp from the agent, microseconds since the epoch.
    pub capture_ts_us: u64,
    /// Seconds since the session's first frame.
    pub t: f64,
}

/// Keeps the two fencers' identities across frames. One tracker per phrase/session.
#[derive(Debug, Clone)]
pub struct TwoFencerTracker {
    cfg: TrackerConfig,
    left: Option<Track>,
    right: Option<Track>,
}

impl TwoFencerTracker {
    /// A tracker with no fencer acquired yet.
    pub fn new(cfg: TrackerConfig) -> Self {
        Self {
            cfg,
            left: None,
            right: None,
        }
    }

    /// Forgets both fencers (e.g. at a new phrase).
    pub fn reset(&mut self) {
        self.left = None;
        self.right = None;
    }

    /// Hip-centre positions `[left, right]` of the live tracks (last seen or coasting).
    pub fn positions(&self) -> [Option<(f32, f32)>; 2] {
        [self.left.map(|t| t.pos), self.right.map(|t| t.pos)]
    }

    /// Assigns this frame's detections to the two fencers. `image_w`/`image_h` is the size of
    /// the image the detections are expressed in. Frames should arrive in increasing order.
    pub fn update(
        &mut self,
        frame: u64,
        persons: &[Person],
        image_w: f32,
        image_h: f32,
    ) -> TrackedFrame {
        let (iw, ih) = (
            if image_w.is_finite() && image_w > 0.0 {
                image_w
            } else {
                1.0
            },
            if image_h.is_finite() && image_h > 0.0 {
                image_h
            } else {
                1.0
            },
        );
        let mut cands: Vec<Candidate> = persons
            .iter()
            .enumerate()
            .filter_map(|(i, p)| candidate(i, p, &self.cfg, ih))
            .collect();
        dedupe(&mut cands, persons, self.cfg.kp_conf);

        // Drop tracks unseen for too long.
        for t in [&mut self.left, &mut self.right] {
            if t.is_some_and(|tr| tr.gap(frame) > self.cfg.max_missed + 1) {
                tracing::debug!(frame, "fencer track lost");
                *t = None;
            }
        }

        let (mut li, mut ri) = self.assign(&cands, frame);

        // (Re-)acquisition of missing tracks from the best remaining candidates.
        if self.left.is_none() || self.right.is_none() {
            let mut free: Vec<&Candidate> = cands
                .iter()
                .filter(|c| {
                    Some(c.idx) != li && Some(c.idx) != ri && c.quality >= self.cfg.min_quality
                })
                .collect();
            free.sort_by(|a, b| b.quality.total_cmp(&a.quality));
            match (self.left.is_some(), self.right.is_some()) {
                (false, false) => {
                    let mut picked: Vec<&Candidate> = free.iter().take(2).copied().collect();
                    picked.sort_by(|a, b| a.pos.0.total_cmp(&b.pos.0));
                    match picked.as_slice() {
                        [a, b] => {
                            self.left = Some(Track::start(a, frame));
                            self.right = Some(Track::start(b, frame));
                            (li, ri) = (Some(a.idx), Some(b.idx));
                        }
                        [a] if a.pos.0 < iw / 2.0 => {
                            self.left = Some(Track::start(a, frame));
                            li = Some(a.idx);
                        }
                        [a] => {
                            self.right = Some(Track::start(a, frame));
                            ri = Some(a.idx);
                        }
                        _ => {}
                    }
                }
                (true, false) => {
                    let lx = self.left.map_or(0.0, |t| t.pos.0);
                    if let Some(c) = free.iter().find(|c| c.pos.0 > lx) {
                        self.right = Some(Track::start(c, frame));
                        ri = Some(c.idx);
                    }
                }
                (false, true) => {
                    let rx = self.right.map_or(0.0, |t| t.pos.0);
                    if let Some(c) = free.iter().find(|c| c.pos.0 < rx) {
                        self.left = Some(Track::start(c, frame));
                        li = Some(c.idx);
                    }
                }
                (true, true) => {}
            }
        }

        let by_idx = |i: Option<usize>| i.and_then(|i| persons.get(i));
        let (lp, rp) = (by_idx(li), by_idx(ri));
        TrackedFrame {
            frame,
            left: lp.map(|p| p.keypoints),
            right: rp.map(|p| p.keypoints),
            left_box: lp.map(|p| p.bbox),
            right_box: rp.map(|p| p.bbox),
        }
    }

    /// Minimal-total-cost assignment of candidates to the existing tracks (each track takes one
    /// candidate or none; an unmatched track costs its gate). Updates matched tracks.
    fn assign(&mut self, cands: &[Candidate], frame: u64) -> (Option<usize>, Option<usize>) {
        let cfg = self.cfg;
        let options = |t: &Option<Track>| -> Vec<(Option<usize>, f32)> {
            let Some(tr) = t else {
                return vec![(None, 0.0)];
            };
            let mut v = vec![(None, tr.gate(&cfg, frame))];
            v.extend(
                cands
                    .iter()
                    .enumerate()
                    .filter_map(|(k, c)| tr.cost(c, &cfg, frame).map(|d| (Some(k), d))),
            );
            v
        };
        let (lo, ro) = (options(&self.left), options(&self.right));
        let mut best = (None, None, f32::INFINITY);
        for &(a, ca) in &lo {
            for &(b, cb) in &ro {
                if a.is_some() && a == b {
                    continue;
                }
                // Tie-break only (0.05 body heights): when both predictions coincide
                // (corps-a-corps), prefer the usual order; a real crossing costs far more.
                let order = match (a, b) {
                    (Some(a), Some(b)) if cands[a].pos.0 > cands[b].pos.0 => 0.05,
                    _ => 0.0,
                };
                if ca + cb + order < best.2 {
                    best = (a, b, ca + cb + order);
                }
            }
        }
        let (a, b, _) = best;
        for (t, k) in [(&mut self.left, a), (&mut self.right, b)] {
            if let Some(tr) = t.as_mut() {
                match k {
                    Some(k) => tr.observe(&cands[k], frame),
                    None => tr.missed += 1,
                }
            }
        }
        (a.map(|k| cands[k].idx), b.map(|k| cands[k].idx))
    }
}

fn kp(p: &Person, i: usize, conf: f32) -> Option<(f32, f32)> {
    let k = p.keypoints[i];
    (k[2] >= conf && k[0].is_finite() && k[1].is_finite()).then_some((k[0], k[1]))
}

/// Intersection over union of two boxes x1, y1, x2, y2.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Mean distance between the keypoints two detections both see confidently, in pixels.
fn keypoint_distance(a: &Person, b: &Person, conf: f32) -> Option<f32> {
    let (mut sum, mut n) = (0.0f32, 0u32);
    for (p, q) in a.keypoints.iter().zip(&b.keypoints) {
        if p[2] >= conf && q[2] >= conf {
            sum += ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
            n += 1;
        }
    }
    (n >= 5).then(|| sum / n as f32)
}

/// Drops duplicate detections of one person (NMS leftovers: overlapping boxes AND nearly the
/// same keypoints), keeping the higher score, so a duplicate can never be handed to the other
/// fencer's track. Two fencers in corps-a-corps overlap too, but their poses differ.
fn dedupe(cands: &mut Vec<Candidate>, persons: &[Person], conf: f32) {
    cands.sort_by(|a, b| persons[b.idx].score.total_cmp(&persons[a.idx].score));
    let mut kept: Vec<Candidate> = Vec::with_capacity(cands.len());
    for c in cands.drain(..) {
        let duplicate = kept.iter().any(|k| {
            let (pk, pc) = (&persons[k.idx], &persons[c.idx]);
            iou(&pk.bbox, &pc.bbox) > 0.6
                && keypoint_distance(pk, pc, conf)
                    .is_some_and(|d| d < 0.08 * k.height.max(c.height))
        });
        if !duplicate {
            kept.push(c);
        }
    }
    *cands = kept;
}

/// Geometry and acquisition quality of one detection; `None` when it is unusable.
fn candidate(idx: usize, p: &Person, cfg: &TrackerConfig, ih: f32) -> Option<Candidate> {
    let [x1, y1, x2, y2] = p.bbox;
    if !(p.score.is_finite() && [x1, y1, x2, y2].iter().all(|v| v.is_finite()))
        || p.score < cfg.min_score
    {
        return None;
    }
    let (bw, bh) = (x2 - x1, y2 - y1);
    if bw <= 0.0 || bh < cfg.min_height * ih {
        return None;
    }
    let c = cfg.kp_conf;
    let pos = match (kp(p, L_HIP, c), kp(p, R_HIP, c)) {
        (Some(a), Some(b)) => ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => ((x1 + x2) / 2.0, y1 + 0.55 * bh),
    };
    let ankles = [kp(p, L_ANKLE, c), kp(p, R_ANKLE, c)];
    let feet_y = ankles
        .iter()
        .flatten()
        .map(|a| a.1)
        .fold(f32::NAN, f32::max);
    let feet_y = if feet_y.is_nan() { y2 } else { feet_y };

    let size = (bh / ih).min(1.0);
    let feet_frac = feet_y / ih;
    let in_band = if feet_frac >= cfg.feet_band.0 && feet_frac <= cfg.feet_band.1 + 0.02 {
        1.0
    } else {
        0.15
    };
    let cut_off = if y2 >= ih * (1.0 - cfg.bottom_margin) {
        0.2
    } else {
        1.0
    };
    // En garde: feet apart (ankles or box width) relative to height; a referee stands upright.
    let spread = match ankles {
        [Some(a), Some(b)] => (a.0 - b.0).abs() / bh,
        _ => bw / bh * 0.6,
    };
    let stance = 0.6 + 0.4 * (spread / 0.35).min(1.0);
    // Torso visible and upright (shoulders above hips) counts a little.
    let upright = match (kp(p, L_SHOULDER, c).or(kp(p, R_SHOULDER, c)), pos) {
        (Some(s), h) if s.1 < h.1 => 1.0,
        _ => 0.85,
    };
    let quality = (size * in_band * cut_off * stance * upright * p.score.min(1.0) * 4.0).min(1.0);
    Some(Candidate {
        idx,
        pos,
        height: bh,
        quality,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: f32 = 1280.0;
    const H: f32 = 720.0;

    /// A fencer in en-garde with hips at (x, y): box 200 px tall, ankles apart.
    fn fencer(x: f32, y: f32) -> Person {
        person(x, y, 200.0, 70.0, 0.9)
    }

    /// Arms and front knee pointing towards `dir` (+1 = right): fencers face each other, so two
    /// overlapping fencers have different poses (unlike a duplicate detection).
    fn facing(mut p: Person, dir: f32) -> Person {
        let (x, top) = (
            (p.keypoints[L_HIP][0] + p.keypoints[R_HIP][0]) / 2.0,
            p.bbox[1],
        );
        for (k, dx, dy) in [
            (7, 45.0, 45.0),
            (8, 45.0, 45.0),
            (9, 90.0, 40.0),
            (10, 90.0, 40.0),
            (13, 35.0, 150.0),
        ] {
            p.keypoints[k] = [x + dir * dx, top + dy, 0.9];
        }
        p
    }

    /// A person with hips at (x, y), box height `h`, ankles `spread` apart.
    fn person(x: f32, y: f32, h: f32, spread: f32, score: f32) -> Person {
        let top = y - 0.5 * h;
        let bottom = y + 0.5 * h;
        let mut kps = [[0.0f32; 3]; 17];
        for (i, k) in kps.iter_mut().enumerate() {
            *k = [x, top + h * (i as f32 / 17.0), 0.9];
        }
        kps[L_SHOULDER] = [x - 15.0, top + 0.2 * h, 0.9];
        kps[R_SHOULDER] = [x + 15.0, top + 0.2 * h, 0.9];
        kps[L_HIP] = [x - 10.0, y, 0.9];
        kps[R_HIP] = [x + 10.0, y, 0.9];
        kps[L_ANKLE] = [x - spread / 2.0, bottom - 3.0, 0.9];
        kps[R_ANKLE] = [x + spread / 2.0, bottom - 3.0, 0.9];
        Person {
            score,
            bbox: [
                x - spread / 2.0 - 20.0,
                top,
                x + spread / 2.0 + 20.0,
                bottom,
            ],
            keypoints: kps,
        }
    }

    fn hip_x(k: &Keypoints) -> f32 {
        (k[L_HIP][0] + k[R_HIP][0]) / 2.0
    }

    #[test]
    fn acquires_left_and_right() {
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        let f = t.update(0, &[fencer(900.0, 420.0), fencer(300.0, 420.0)], W, H);
        assert_eq!(hip_x(&f.left.expect("left")), 300.0);
        assert_eq!(hip_x(&f.right.expect("right")), 900.0);
        assert!(f.left_box.is_some() && f.right_box.is_some());
    }

    #[test]
    fn ignores_referee_at_the_bottom_edge_and_tiny_spectators() {
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        // Referee: larger (closer to the camera), cut by the bottom edge, upright.
        let referee = person(640.0, 600.0, 300.0, 20.0, 0.95);
        let spectator = person(100.0, 200.0, 40.0, 10.0, 0.9);
        let f = t.update(
            0,
            &[
                referee,
                fencer(400.0, 420.0),
                spectator,
                fencer(850.0, 420.0),
            ],
            W,
            H,
        );
        assert_eq!(hip_x(&f.left.expect("left")), 400.0);
        assert_eq!(hip_x(&f.right.expect("right")), 850.0);
        // ... and keeps ignoring the referee when he walks between them later.
        for i in 1..10 {
            let referee = person(640.0, 600.0, 300.0, 20.0, 0.95);
            let f = t.update(
                i,
                &[
                    referee,
                    fencer(400.0 + i as f32, 420.0),
                    fencer(850.0 - i as f32, 420.0),
                ],
                W,
                H,
            );
            assert_eq!(hip_x(&f.left.expect("left")), 400.0 + i as f32);
            assert_eq!(hip_x(&f.right.expect("right")), 850.0 - i as f32);
        }
    }

    #[test]
    fn crossing_keeps_identity() {
        // Left runs right and right runs left at 20 px/frame; they pass each other (x order
        // flips) and identity follows the motion, including a frame with one merged detection.
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        let mut flipped = false;
        for i in 0..40u64 {
            let lx = 400.0 + 20.0 * i as f32;
            let rx = 1000.0 - 20.0 * i as f32;
            let persons = if i == 15 {
                vec![fencer((lx + rx) / 2.0, 420.0)]
            } else {
                vec![fencer(rx, 425.0), fencer(lx, 415.0)]
            };
            let f = t.update(i, &persons, W, H);
            if i == 15 {
                assert!(
                    f.left.is_some() != f.right.is_some(),
                    "merged detection goes to one fencer"
                );
                continue;
            }
            assert_eq!(hip_x(&f.left.expect("left")), lx, "frame {i}");
            assert_eq!(hip_x(&f.right.expect("right")), rx, "frame {i}");
            flipped |= lx > rx;
        }
        assert!(flipped, "the test must exercise an x-order flip");
    }

    #[test]
    fn corps_a_corps_overlap_does_not_swap() {
        // Both close in and stand overlapping for several frames with 1-frame x-order flips
        // from detection noise, then separate back to their own sides.
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        let mut script: Vec<(f32, f32)> = (0..10)
            .map(|i| (500.0 + 12.0 * i as f32, 780.0 - 12.0 * i as f32))
            .collect();
        script.extend([
            (630.0, 650.0),
            (645.0, 640.0),
            (632.0, 648.0),
            (646.0, 641.0),
            (634.0, 652.0),
        ]);
        script.extend((0..10).map(|i| (630.0 - 15.0 * i as f32, 650.0 + 15.0 * i as f32)));
        for (i, &(lx, rx)) in script.iter().enumerate() {
            let persons = [
                facing(fencer(rx, 420.0), -1.0),
                facing(fencer(lx, 420.0), 1.0),
            ];
            let f = t.update(i as u64, &persons, W, H);
            let (gl, gr) = (
                hip_x(&f.left.expect("left")),
                hip_x(&f.right.expect("right")),
            );
            if !(10..15).contains(&i) {
                assert_eq!((gl, gr), (lx, rx), "frame {i}");
            }
        }
        let [l, r] = t.positions();
        assert!(l.expect("left").0 < r.expect("right").0);
    }

    #[test]
    fn missing_fencer_is_reacquired() {
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        for i in 0..30u64 {
            let lx = 300.0 + 5.0 * i as f32;
            let rx = 900.0;
            let persons = if (10..15).contains(&i) {
                vec![fencer(rx, 420.0)]
            } else {
                vec![fencer(lx, 420.0), fencer(rx, 420.0)]
            };
            let f = t.update(i, &persons, W, H);
            if (10..15).contains(&i) {
                assert!(f.left.is_none(), "frame {i}: left unseen");
            } else {
                assert_eq!(hip_x(&f.left.expect("left back")), lx, "frame {i}");
            }
            assert_eq!(hip_x(&f.right.expect("right")), rx, "frame {i}");
        }
    }

    #[test]
    fn spurious_third_person_is_ignored() {
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        t.update(0, &[fencer(400.0, 420.0), fencer(850.0, 420.0)], W, H);
        for i in 1..20u64 {
            // A coach walking near the far end of the piste, fully in the band.
            let extra = fencer(1200.0 - 10.0 * i as f32, 400.0);
            let f = t.update(
                i,
                &[extra, fencer(400.0, 420.0), fencer(850.0, 420.0)],
                W,
                H,
            );
            assert_eq!(hip_x(&f.left.expect("left")), 400.0);
            assert_eq!(hip_x(&f.right.expect("right")), 850.0, "frame {i}");
        }
    }

    #[test]
    fn duplicate_detection_is_not_given_to_the_missing_fencer() {
        // Old-pipeline failure seen in the real data: the left fencer is missed while NMS
        // leaves two boxes on the right fencer; the duplicate must not become "left".
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        for i in 0..5u64 {
            t.update(i, &[fencer(500.0, 420.0), fencer(640.0, 420.0)], W, H);
        }
        let mut dup = fencer(644.0, 423.0);
        dup.score = 0.8;
        let f = t.update(5, &[fencer(640.0, 420.0), dup], W, H);
        assert!(f.left.is_none(), "duplicate taken as the left fencer");
        assert_eq!(hip_x(&f.right.expect("right")), 640.0);
        let f = t.update(6, &[fencer(500.0, 420.0), fencer(640.0, 420.0)], W, H);
        assert_eq!(hip_x(&f.left.expect("left back")), 500.0);
    }

    #[test]
    fn jitter_is_tolerated() {
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        let mut s = 12345u32;
        let mut noise = || {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            ((s >> 16) % 41) as f32 - 20.0
        };
        for i in 0..60u64 {
            let (lx, rx) = (500.0 + noise(), 700.0 + noise());
            let f = t.update(
                i,
                &[fencer(rx, 420.0 + noise()), fencer(lx, 420.0 + noise())],
                W,
                H,
            );
            assert_eq!(hip_x(&f.left.expect("left")), lx, "frame {i}");
            assert_eq!(hip_x(&f.right.expect("right")), rx, "frame {i}");
        }
    }

    #[test]
    fn garbage_detections_do_not_panic() {
        let mut t = TwoFencerTracker::new(TrackerConfig::default());
        let mut bad = fencer(f32::NAN, 420.0);
        bad.bbox = [f32::NAN; 4];
        let f = t.update(0, &[bad, fencer(300.0, 420.0)], f32::NAN, 0.0);
        assert!(f.left.is_some() || f.right.is_some());
        let f = t.update(0, &[], W, H);
        assert!(f.left.is_none() && f.right.is_none());
    }
}
