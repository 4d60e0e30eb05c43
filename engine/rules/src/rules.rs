//! Incremental phrase features and the right-of-way decision.
//!
//! Every pushed frame is reduced to a few numbers per fencer (body-centre x, torso length); the
//! decision reads them back once the signal says when the hit landed. All lengths are divided by
//! the fencers' median torso length and all speeds are in torso lengths per second, so the verdict
//! does not depend on the scale of the coordinates (pixels or the old normalised workbooks).
//!
//! The double-touch score is `z = w_adv * Δadvance + w_run * Δrun + w_first * first`, left minus
//! right, where
//! - *advance*: ground gained towards the opponent over the last [`ADVANCE_WINDOW_S`] before the hit
//!   (attack versus pause or retreat),
//! - *run*: how long the fencer has been moving forward (faster than [`RUN_MIN_SPEED`]) without a
//!   stop up to the hit (who started the attack first and kept it going: the established attack),
//! - *first*: +1 when the left lamp lit first, -1 for the right, 0 when simultaneous: a hit landing
//!   first into an attack is a counter-attack, which the attack beats within the lockout.
//!
//! `z > 0` gives left, `z < 0` right; `|z|` under [`UNCERTAIN_MARGIN`] (or too few visible frames)
//! gives `uncertain`. The three weights are a logistic fit over the 130 labelled phrases (see
//! [`DEFAULT_WEIGHTS`]); `referee evaluate --cv` refits them leaving one recording date out.

use serde::Serialize;

use crate::signal::Timeline;
use crate::{Keypoints, PoseFrame, Side, Winner};

/// Window over which the final advance is measured (seconds before the hit).
pub const ADVANCE_WINDOW_S: f64 = 0.8;
/// Half-width (s) of the slope that measures speed for the advance run.
pub const RUN_SMOOTH_S: f64 = 0.1;
/// Forward speed (torso lengths / s) a fencer must keep for the advance run to continue.
pub const RUN_MIN_SPEED: f64 = 0.3;
/// Below this `|z|` the decision is `uncertain`.
pub const UNCERTAIN_MARGIN: f64 = 0.02;
/// The pose frames must reach within this many seconds of the hit.
pub const MAX_HIT_GAP_S: f64 = 0.5;
/// How far back (seconds) from the hit a fencer must have been seen to be judged.
pub const VISIBILITY_WINDOW_S: f64 = 1.0;
/// Minimum keypoint confidence to use a keypoint (workbook keypoints have confidence 1).
pub const MIN_KEYPOINT_CONF: f32 = 0.2;
/// Forward speed (torso lengths / s) above which a move is called a lunge.
pub const LUNGE_SPEED: f64 = 5.0;
/// Forward speed (torso lengths / s) above which a fencer advances (below its negative: retreats).
pub const MOVE_SPEED: f64 = 0.75;

/// COCO indices used for the body centre: shoulders, hips, knees.
const BODY: [usize; 6] = [5, 6, 11, 12, 13, 14];

/// Weights of the double-touch score (left minus right features).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Weights {
    /// Per torso length of advance difference over the last [`ADVANCE_WINDOW_S`].
    pub advance: f64,
    /// Per second of uninterrupted-advance difference.
    pub run: f64,
    /// Per lamp-first indicator (+1 left lit first, -1 right).
    pub first: f64,
}

/// Weights from a logistic fit on the 130 labelled phrases of `shared/data/phrases`
/// (`referee evaluate --cv` shows the leave-one-date-out figure and refit weights per fold).
pub const DEFAULT_WEIGHTS: Weights = Weights {
    advance: 0.055,
    run: 1.019,
    first: -0.214,
};

impl Weights {
    /// Score of a feature vector `[Δadvance, Δrun, first]`; > 0 favours left.
    pub fn score(&self, x: &[f64; 3]) -> f64 {
        self.advance * x[0] + self.run * x[1] + self.first * x[2]
    }

    /// L2-regularised logistic regression without intercept (the problem is left/right
    /// symmetric), on standardised features; `y` is true for left. Used only by the evaluation
    /// tools (cross-validation), never while deciding.
    pub fn fit(xs: &[[f64; 3]], ys: &[bool]) -> Weights {
        let n = xs.len().min(ys.len());
        if n == 0 {
            return DEFAULT_WEIGHTS;
        }
        let mut sd = [0.0f64; 3];
        for j in 0..3 {
            let mean = xs[..n].iter().map(|x| x[j]).sum::<f64>() / n as f64;
            let var = xs[..n].iter().map(|x| (x[j] - mean).powi(2)).sum::<f64>() / n as f64;
            sd[j] = var.sqrt() + 1e-9;
        }
        let mut w = [0.0f64; 3];
        let l2 = 1.0;
        for _ in 0..800 {
            let mut g = [0.0f64; 3];
            for (x, &y) in xs[..n].iter().zip(&ys[..n]) {
                let z: f64 = (0..3).map(|j| w[j] * x[j] / sd[j]).sum();
                let p = 1.0 / (1.0 + (-z).exp());
                let err = p - if y { 1.0 } else { 0.0 };
                for j in 0..3 {
                    g[j] += err * x[j] / sd[j];
                }
            }
            for j in 0..3 {
                w[j] -= 0.5 * (g[j] + l2 * w[j]) / n as f64;
            }
        }
        Weights {
            advance: w[0] / sd[0],
            run: w[1] / sd[1],
            first: w[2] / sd[2],
        }
    }
}

/// One piece of evidence: a frame, its time and what happened there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Frame number.
    pub frame: u64,
    /// Seconds since the phrase start.
    pub t: f64,
    /// What it shows.
    pub what: String,
}

/// A value per side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerSide<T> {
    /// Left fencer.
    pub left: T,
    /// Right fencer.
    pub right: T,
}

impl<T: Copy> PerSide<T> {
    fn get(&self, s: Side) -> T {
        match s {
            Side::Left => self.left,
            Side::Right => self.right,
        }
    }
}

/// The measured features of a double touch (all scale-free).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoubleFeatures {
    /// Time of the first HIT line (s).
    pub hit_t: f64,
    /// Frame judged at the hit.
    pub hit_frame: u64,
    /// Torso lengths gained towards the opponent over the last [`ADVANCE_WINDOW_S`].
    pub advance: PerSide<f64>,
    /// Seconds of uninterrupted forward movement up to the hit.
    pub run: PerSide<f64>,
    /// Frame where each fencer's final advance started.
    pub run_start_frame: PerSide<u64>,
    /// Action at the hit: advance, lunge, pause or retreat.
    pub action: PerSide<&'static str>,
    /// Whose lamp lit first (`None`: the box reported simultaneous hits first).
    pub first_hit: Option<Side>,
    /// Blade contacts before the hit.
    pub blade_contacts: usize,
    /// `[Δadvance, Δrun, first]` (left minus right; first +1 = left lit first).
    pub vector: [f64; 3],
    /// Score `z` (> 0 favours left).
    pub score: f64,
}

/// The verdict of one phrase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Who scores.
    pub winner: Winner,
    /// Probability of the chosen side (0.5 to 1); for `uncertain`, the larger of the two.
    pub confidence: f32,
    /// A sentence a referee can check against the video.
    pub reason: String,
    /// Frames that support the reason.
    pub evidence: Vec<Evidence>,
    /// Measured features (`null` for single lights).
    pub features: Option<DoubleFeatures>,
}

/// Live state of one fencer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideLive {
    /// Body-centre x: fraction of the frame width when it is known (see
    /// [`PhraseAnalyzer::set_frame_width`]), else in the input's units.
    pub x: Option<f32>,
    /// Forward speed towards the opponent, torso lengths per second (smoothed over ~0.2 s).
    pub speed: f32,
    /// `advance`, `retreat`, `lunge`, `pause` or `unseen`.
    pub action: &'static str,
    /// Seen in the latest frame.
    pub visible: bool,
}

/// Live estimate after the latest frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveEstimate {
    /// Latest frame number.
    pub frame: u64,
    /// Latest time (s).
    pub t: f64,
    /// Left fencer.
    pub left: SideLive,
    /// Right fencer.
    pub right: SideLive,
    /// Who would have right-of-way if both hit now (`None`: unclear).
    pub right_of_way: Option<Side>,
    /// Probability of that side.
    pub confidence: f32,
}

/// Per-frame reduction of one pose frame.
#[derive(Debug, Clone, Copy)]
struct Sample {
    frame: u64,
    t: f64,
    /// Body-centre x (input units), NaN when unseen.
    x: [f32; 2],
    /// Torso length (input units), NaN when unseen.
    torso: [f32; 2],
}

fn usable(p: &[f32; 3]) -> bool {
    p[0].is_finite() && p[1].is_finite() && (p[2].is_nan() || p[2] >= MIN_KEYPOINT_CONF)
}

/// Median of the usable shoulder/hip/knee x values.
fn body_x(kp: &Keypoints) -> f32 {
    let mut v = [0.0f32; BODY.len()];
    let mut n = 0;
    for &k in &BODY {
        if usable(&kp[k]) {
            v[n] = kp[k][0];
            n += 1;
        }
    }
    if n == 0 {
        return f32::NAN;
    }
    let v = &mut v[..n];
    v.sort_by(f32::total_cmp);
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn mean_of(kp: &Keypoints, a: usize, b: usize) -> Option<[f32; 2]> {
    match (usable(&kp[a]), usable(&kp[b])) {
        (true, true) => Some([0.5 * (kp[a][0] + kp[b][0]), 0.5 * (kp[a][1] + kp[b][1])]),
        (true, false) => Some([kp[a][0], kp[a][1]]),
        (false, true) => Some([kp[b][0], kp[b][1]]),
        _ => None,
    }
}

/// Shoulder-centre to hip-centre distance.
fn torso_len(kp: &Keypoints) -> f32 {
    match (mean_of(kp, 5, 6), mean_of(kp, 11, 12)) {
        (Some(s), Some(h)) => {
            let d = (s[0] - h[0]).hypot(s[1] - h[1]);
            if d > 0.0 && d.is_finite() {
                d
            } else {
                f32::NAN
            }
        }
        _ => f32::NAN,
    }
}

fn median(v: &mut [f32]) -> Option<f32> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn action_of(speed: f64) -> &'static str {
    if speed > LUNGE_SPEED {
        "lunge"
    } else if speed > MOVE_SPEED {
        "advance"
    } else if speed < -MOVE_SPEED {
        "retreat"
    } else {
        "pause"
    }
}

/// Forward position series of one side (towards the opponent, input units) over `s`, with gaps
/// filled by linear interpolation and edges held. `None` if the side was never seen.
fn forward_series(s: &[Sample], side: Side) -> Option<Vec<f64>> {
    let i = side.index();
    let sign = f64::from(side.forward_sign());
    let known: Vec<usize> = (0..s.len()).filter(|&k| s[k].x[i].is_finite()).collect();
    let first = *known.first()?;
    let mut out = vec![0.0; s.len()];
    let val = |k: usize| sign * f64::from(s[k].x[i]);
    for o in out.iter_mut().take(first + 1) {
        *o = val(first);
    }
    let mut prev = first;
    for &k in known.iter().skip(1) {
        let (t0, t1) = (s[prev].t, s[k].t);
        for (j, o) in out.iter_mut().enumerate().take(k + 1).skip(prev + 1) {
            let a = if t1 > t0 {
                (s[j].t - t0) / (t1 - t0)
            } else {
                1.0
            };
            *o = val(prev) + a * (val(k) - val(prev));
        }
        prev = k;
    }
    let last = val(prev);
    for o in out.iter_mut().skip(prev + 1) {
        *o = last;
    }
    Some(out)
}

/// Seconds of uninterrupted forward movement ending at the last sample, and the index where it
/// started. The speed at a sample is the slope over +-[`RUN_SMOOTH_S`] (never past the last
/// sample), in torso lengths per second; the run lasts while it stays above [`RUN_MIN_SPEED`].
fn advance_run(s: &[Sample], f: &[f64], scale: f64) -> (f64, usize) {
    let h = f.len() - 1;
    let speed = |k: usize| -> f64 {
        let lo = s.partition_point(|p| p.t < s[k].t - RUN_SMOOTH_S - 1e-6);
        let hi = s[..=h]
            .partition_point(|p| p.t <= s[k].t + RUN_SMOOTH_S + 1e-6)
            .saturating_sub(1);
        let dt = s[hi].t - s[lo].t;
        if hi > lo && dt > 0.0 {
            (f[hi] - f[lo]) / scale / dt
        } else {
            0.0
        }
    };
    let mut k = h;
    while k > 0 && speed(k) > RUN_MIN_SPEED {
        k -= 1;
    }
    (s[h].t - s[k].t, k)
}

/// Takes pose frames one at a time and decides right-of-way when the signal lands.
#[derive(Debug, Clone)]
pub struct PhraseAnalyzer {
    fps: f64,
    frame_width: Option<f32>,
    samples: Vec<Sample>,
}

impl PhraseAnalyzer {
    /// A new analyzer for a video at `fps` frames per second (used for half-frame tolerances only;
    /// times come from the frames).
    pub fn new(fps: f64) -> Self {
        let fps = if fps.is_finite() && fps > 0.0 {
            fps
        } else {
            15.0
        };
        PhraseAnalyzer {
            fps,
            frame_width: None,
            samples: Vec::with_capacity(256),
        }
    }

    /// Makes [`SideLive::x`] a fraction of this frame width.
    pub fn set_frame_width(&mut self, width: f32) {
        self.frame_width = (width.is_finite() && width > 0.0).then_some(width);
    }

    /// Number of frames pushed.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No frame pushed yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Reduces one frame to its features (O(1); frames arriving out of order are inserted in time
    /// order; non-finite times are ignored).
    pub fn push(&mut self, frame: &PoseFrame) {
        if !frame.t.is_finite() {
            tracing::warn!(
                frame = frame.frame,
                "pose frame with a non-finite time ignored"
            );
            return;
        }
        let mut x = [f32::NAN; 2];
        let mut torso = [f32::NAN; 2];
        for side in [Side::Left, Side::Right] {
            if let Some(kp) = frame.side(side) {
                x[side.index()] = body_x(kp);
                torso[side.index()] = torso_len(kp);
            }
        }
        let s = Sample {
            frame: frame.frame,
            t: frame.t,
            x,
            torso,
        };
        match self.samples.last() {
            Some(last) if last.t > s.t => {
                let at = self.samples.partition_point(|p| p.t <= s.t);
                self.samples.insert(at, s);
            }
            _ => self.samples.push(s),
        }
    }

    /// Median torso length of both fencers over `s` (the length unit).
    fn scale(s: &[Sample]) -> Option<f64> {
        let mut v: Vec<f32> = s
            .iter()
            .flat_map(|p| p.torso)
            .filter(|v| v.is_finite())
            .collect();
        median(&mut v).map(f64::from).filter(|m| *m > 0.0)
    }

    /// Features of both fencers up to and including sample `h`. `Err` carries why not.
    fn features_at(&self, h: usize) -> Result<Measured, String> {
        let s = &self.samples[..=h];
        let t_h = s[h].t;
        for side in [Side::Left, Side::Right] {
            let seen = s
                .iter()
                .rev()
                .take_while(|p| p.t >= t_h - VISIBILITY_WINDOW_S)
                .filter(|p| p.x[side.index()].is_finite())
                .count();
            if seen < 2 {
                return Err(format!(
                    "the {side} fencer is not seen in the last {VISIBILITY_WINDOW_S:.1} s before the hit"
                ));
            }
        }
        let scale = Self::scale(s).ok_or("no torso (shoulders and hips) visible before the hit")?;
        let a = s.partition_point(|p| p.t < t_h - ADVANCE_WINDOW_S - 0.25 / self.fps);
        let mut m = Measured {
            advance: [0.0; 2],
            run: [0.0; 2],
            run_start: [0; 2],
            window_start: a,
        };
        for side in [Side::Left, Side::Right] {
            let i = side.index();
            let f = forward_series(s, side)
                .ok_or_else(|| format!("the {side} fencer is never seen"))?;
            m.advance[i] = (f[h] - f[a]) / scale;
            let (run, start) = advance_run(s, &f, scale);
            m.run[i] = run;
            m.run_start[i] = start;
        }
        Ok(m)
    }

    /// The live estimate after the latest frame.
    pub fn live(&self) -> LiveEstimate {
        let Some(last) = self.samples.last() else {
            let unseen = SideLive {
                x: None,
                speed: 0.0,
                action: "unseen",
                visible: false,
            };
            return LiveEstimate {
                frame: 0,
                t: 0.0,
                left: unseen.clone(),
                right: unseen,
                right_of_way: None,
                confidence: 0.5,
            };
        };
        let h = self.samples.len() - 1;
        // Bound the work: a live estimate looks at the last 10 s at most.
        let from = self.samples.partition_point(|p| p.t < last.t - 10.0);
        let s = &self.samples[from..];
        let scale = Self::scale(s);
        let side_live = |side: Side| -> SideLive {
            let i = side.index();
            let visible = last.x[i].is_finite();
            let x = if visible {
                Some(self.frame_width.map_or(last.x[i], |w| last.x[i] / w))
            } else {
                None
            };
            // Forward speed over ~0.2 s.
            let recent: Vec<&Sample> = s
                .iter()
                .rev()
                .take_while(|p| p.t >= last.t - 0.2 - 0.25 / self.fps)
                .filter(|p| p.x[i].is_finite())
                .collect();
            let speed = match (recent.first(), recent.last(), scale) {
                (Some(b), Some(a), Some(sc)) if b.t > a.t => {
                    f64::from(side.forward_sign()) * f64::from(b.x[i] - a.x[i]) / sc / (b.t - a.t)
                }
                _ => 0.0,
            };
            SideLive {
                x,
                speed: speed as f32,
                action: if visible { action_of(speed) } else { "unseen" },
                visible,
            }
        };
        let (right_of_way, confidence) = match self.features_at(h) {
            Ok(m) => {
                let z =
                    DEFAULT_WEIGHTS.score(&[m.advance[0] - m.advance[1], m.run[0] - m.run[1], 0.0]);
                let p = sigmoid(z);
                if z.abs() < UNCERTAIN_MARGIN {
                    (None, p.max(1.0 - p))
                } else if z > 0.0 {
                    (Some(Side::Left), p)
                } else {
                    (Some(Side::Right), 1.0 - p)
                }
            }
            Err(_) => (None, 0.5),
        };
        LiveEstimate {
            frame: last.frame,
            t: last.t,
            left: side_live(Side::Left),
            right: side_live(Side::Right),
            right_of_way,
            confidence: confidence as f32,
        }
    }

    /// The verdict for the phrase described by `timeline`, with the shipped weights.
    pub fn decide(&self, timeline: &Timeline) -> Decision {
        self.decide_with(timeline, &DEFAULT_WEIGHTS)
    }

    /// The verdict with explicit weights (cross-validation uses this).
    pub fn decide_with(&self, timeline: &Timeline, w: &Weights) -> Decision {
        if let Some(side) = timeline.single_light() {
            let ev = timeline
                .events
                .iter()
                .find(|e| {
                    matches!(&e.kind, crate::signal::EventKind::Hit { scorer, .. } if *scorer == side)
                })
                .map(|e| Evidence {
                    frame: self.frame_at(e.t).map_or(0, |k| self.samples[k].frame),
                    t: e.t,
                    what: format!("{side} lamp lights"),
                });
            return Decision {
                winner: side.into(),
                confidence: 1.0,
                reason: format!(
                    "Single light: only the {side} fencer hit, so the {side} fencer scores."
                ),
                evidence: ev.into_iter().collect(),
                features: None,
            };
        }
        if !timeline.is_double() {
            return uncertain("No valid hit in the signal log: nothing to award.".into());
        }
        let Some((hit_t, first)) = timeline.first_hit() else {
            return uncertain(
                "Both lamps are lit but the log has no HIT line with a time: cannot place the hit."
                    .into(),
            );
        };
        let Some(h) = self.frame_at(hit_t) else {
            return uncertain(format!(
                "Double touch at {hit_t:.2} s but no pose frame up to that time: ask a human."
            ));
        };
        let last_t = self.samples[h].t;
        if hit_t - last_t > MAX_HIT_GAP_S {
            return uncertain(format!(
                "Double touch at {hit_t:.2} s but the pose frames stop at {last_t:.2} s: ask a human."
            ));
        }
        let m = match self.features_at(h) {
            Ok(m) => m,
            Err(why) => return uncertain(format!("Double touch, but {why}: ask a human.")),
        };
        let first_v = match first {
            Some(Side::Left) => 1.0,
            Some(Side::Right) => -1.0,
            None => 0.0,
        };
        let vector = [m.advance[0] - m.advance[1], m.run[0] - m.run[1], first_v];
        let z = w.score(&vector);
        let p = sigmoid(z);
        let s = &self.samples;
        let action = |i: usize| action_of(m.advance[i] / ADVANCE_WINDOW_S);
        let feats = DoubleFeatures {
            hit_t,
            hit_frame: s[h].frame,
            advance: PerSide {
                left: m.advance[0],
                right: m.advance[1],
            },
            run: PerSide {
                left: m.run[0],
                right: m.run[1],
            },
            run_start_frame: PerSide {
                left: s[m.run_start[0]].frame,
                right: s[m.run_start[1]].frame,
            },
            action: PerSide {
                left: action(0),
                right: action(1),
            },
            first_hit: first,
            blade_contacts: timeline.blade_contacts().filter(|t| *t <= hit_t).count(),
            vector,
            score: z,
        };
        let evidence = self.evidence(timeline, &feats, &m);
        if z.abs() < UNCERTAIN_MARGIN {
            return Decision {
                winner: Winner::Uncertain,
                confidence: p.max(1.0 - p) as f32,
                reason: format!(
                    "Double touch too close to call: both fencers' actions look alike (left {}, \
                     right {}; advancing for {:.2} s vs {:.2} s): ask a human.",
                    feats.action.left, feats.action.right, m.run[0], m.run[1]
                ),
                evidence,
                features: Some(feats),
            };
        }
        let win = if z > 0.0 { Side::Left } else { Side::Right };
        let reason = reason_for(win, &feats, w);
        Decision {
            winner: win.into(),
            confidence: (if z > 0.0 { p } else { 1.0 - p }) as f32,
            reason,
            evidence,
            features: Some(feats),
        }
    }

    /// Index of the sample judged at time `t`: the last one not later than half a frame after it.
    fn frame_at(&self, t: f64) -> Option<usize> {
        let n = self.samples.partition_point(|p| p.t <= t + 0.5 / self.fps);
        n.checked_sub(1)
    }

    fn evidence(&self, tl: &Timeline, f: &DoubleFeatures, m: &Measured) -> Vec<Evidence> {
        let s = &self.samples;
        let mut ev = Vec::new();
        for side in [Side::Left, Side::Right] {
            let k = m.run_start[side.index()];
            let run = f.run.get(side);
            ev.push(Evidence {
                frame: s[k].frame,
                t: s[k].t,
                what: if run > 0.0 {
                    format!("{side} starts the final forward movement ({run:.2} s before the hit)")
                } else {
                    format!("{side} is not moving forward at the hit")
                },
            });
        }
        let a = m.window_start;
        ev.push(Evidence {
            frame: s[a].frame,
            t: s[a].t,
            what: format!(
                "from here to the hit: left {} ({:+.2} torso lengths), right {} ({:+.2})",
                f.action.left, f.advance.left, f.action.right, f.advance.right
            ),
        });
        for bt in tl.blade_contacts().filter(|t| *t <= f.hit_t) {
            let k = self.frame_at(bt).unwrap_or(0);
            let moving: Vec<&str> = [Side::Left, Side::Right]
                .into_iter()
                .filter(|sd| {
                    let st = s[m.run_start[sd.index()]].t;
                    f.run.get(*sd) > 0.0 && bt >= st
                })
                .map(Side::name)
                .collect();
            let what = match moving.as_slice() {
                [one] => format!(
                    "blade contact during {one}'s advance (beat by {one} or parry by the other)"
                ),
                [_, _] => "blade contact while both advance".to_string(),
                _ => "blade contact before either fencer's final advance".to_string(),
            };
            ev.push(Evidence {
                frame: s.get(k).map_or(0, |p| p.frame),
                t: bt,
                what,
            });
        }
        let what = match f.first_hit {
            Some(sd) => format!("{sd} lamp lights first"),
            None => "both lamps light together".to_string(),
        };
        ev.push(Evidence {
            frame: f.hit_frame,
            t: f.hit_t,
            what,
        });
        ev.sort_by(|a, b| a.t.total_cmp(&b.t));
        ev
    }
}

/// Intermediate per-side measurements (indices into the samples).
struct Measured {
    advance: [f64; 2],
    run: [f64; 2],
    run_start: [usize; 2],
    window_start: usize,
}

fn uncertain(reason: String) -> Decision {
    Decision {
        winner: Winner::Uncertain,
        confidence: 0.5,
        reason,
        evidence: Vec::new(),
        features: None,
    }
}

/// Explains the verdict by the components that pushed the score towards the winner.
fn reason_for(win: Side, f: &DoubleFeatures, w: &Weights) -> String {
    let lose = win.other();
    let sgn = if win == Side::Left { 1.0 } else { -1.0 };
    let mut parts: Vec<(f64, String)> = Vec::new();
    let c_run = sgn * w.run * f.vector[1];
    let (rw, rl) = (f.run.get(win), f.run.get(lose));
    if c_run > 0.0 {
        parts.push((
            c_run,
            if rl <= 0.0 {
                format!("{win} was advancing for {rw:.2} s up to the hit while {lose} was not moving forward")
            } else {
                format!("{win}'s advance started first and ran {rw:.2} s up to the hit ({lose}: {rl:.2} s)")
            },
        ));
    }
    let c_adv = sgn * w.advance * f.vector[0];
    if c_adv > 0.0 {
        let (aw, al) = (f.advance.get(win), f.advance.get(lose));
        parts.push((
            c_adv,
            format!(
                "in the last {ADVANCE_WINDOW_S:.1} s {win} {} ({aw:+.2} torso lengths) while {lose} {} ({al:+.2})",
                verb(f.action.get(win)),
                verb(f.action.get(lose))
            ),
        ));
    }
    let c_first = sgn * w.first * f.vector[2];
    if c_first > 0.0 {
        parts.push((
            c_first,
            format!("{lose}'s hit landed first, into {win}'s action: a counter-attack, which yields to the attack"),
        ));
    }
    parts.sort_by(|a, b| b.0.total_cmp(&a.0));
    let body = if parts.is_empty() {
        "the combined evidence narrowly favours this side".to_string()
    } else {
        parts
            .into_iter()
            .map(|p| p.1)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut reason = format!("Attack by {win}: {body}.");
    if let Some(c) = reason.get(..1) {
        let up = c.to_uppercase();
        reason.replace_range(..1, &up);
    }
    reason
}

fn verb(action: &str) -> &'static str {
    match action {
        "lunge" => "lunged",
        "advance" => "advanced",
        "retreat" => "retreated",
        _ => "paused",
    }
}

/// Convenience: push every frame, then decide.
pub fn analyze(timeline: &Timeline, frames: &[PoseFrame], fps: f64) -> Decision {
    let mut a = PhraseAnalyzer::new(fps);
    for f in frames {
        a.push(f);
    }
    a.decide(timeline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::parse_signal;
    use crate::NUM_KEYPOINTS;

    /// A standing fencer whose body centre is at `x` (torso 1 unit tall), scaled by `k`.
    fn body(x: f32, k: f32) -> Keypoints {
        let mut kp = [[f32::NAN, f32::NAN, 0.0]; NUM_KEYPOINTS];
        for (i, y) in [
            (5, 1.0),
            (6, 1.0),
            (11, 2.0),
            (12, 2.0),
            (13, 2.6),
            (14, 2.6),
        ] {
            kp[i] = [x * k, y * k, 0.9];
        }
        kp
    }

    /// 15 fps phrase: positions given per frame by `left(i)` and `right(i)`.
    fn phrase(
        n: usize,
        k: f32,
        left: impl Fn(usize) -> f32,
        right: impl Fn(usize) -> f32,
    ) -> Vec<PoseFrame> {
        (0..n)
            .map(|i| PoseFrame {
                frame: i as u64,
                t: i as f64 / 15.0,
                left: Some(body(left(i), k)),
                right: Some(body(right(i), k)),
            })
            .collect()
    }

    fn double_at(t: f64, first: &str) -> Timeline {
        parse_signal(&format!(
            " 0.000s | Phrase recording started\n {t:.3}s | HIT: {first}\n {:.3}s | HIT: Simultaneous valid hits!\n {:.3}s | Phrase recording ended\n",
            t + 0.1,
            t + 0.3
        ))
        .expect("log")
    }

    #[test]
    fn attacker_beats_retreating_fencer_on_either_side() {
        // Left advances all phrase; right retreats then stops. Both hit at 2 s.
        let frames = phrase(
            40,
            1.0,
            |i| 1.0 + 0.12 * i as f32,
            |i| 8.0 + 0.03 * i.min(25) as f32,
        );
        let d = analyze(&double_at(2.0, "Simultaneous valid hits!"), &frames, 15.0);
        assert_eq!(d.winner, Winner::Left, "{}", d.reason);
        assert!(d.confidence > 0.6, "{}", d.confidence);
        assert!(d.reason.starts_with("Attack by left"), "{}", d.reason);
        // Mirror the phrase: the right fencer attacks.
        let mirrored = phrase(
            40,
            1.0,
            |i| -8.0 - 0.03 * i.min(25) as f32,
            |i| -1.0 - 0.12 * i as f32,
        );
        let d = analyze(&double_at(2.0, "Simultaneous valid hits!"), &mirrored, 15.0);
        assert_eq!(d.winner, Winner::Right, "{}", d.reason);
    }

    #[test]
    fn counter_attack_landing_first_loses_to_the_attack() {
        // Right attacks from the start; left stands still and hits first.
        let frames = phrase(40, 1.0, |_| 1.0, |i| 9.0 - 0.1 * i as f32);
        let d = analyze(&double_at(2.0, "Left scores on Right!"), &frames, 15.0);
        assert_eq!(d.winner, Winner::Right, "{}", d.reason);
        assert!(d.reason.contains("counter-attack"), "{}", d.reason);
        let f = d.features.expect("features");
        assert_eq!(f.first_hit, Some(Side::Left));
        assert!(f.run.right > 1.5 && f.run.left == 0.0, "{f:?}");
    }

    #[test]
    fn verdict_does_not_depend_on_coordinate_scale() {
        let a = |i: usize| 1.0 + 0.02 * i as f32 + 0.05 * ((i as f32) * 0.7).sin();
        let b = |i: usize| 8.0 - 0.015 * i as f32 + 0.04 * ((i as f32) * 1.3).cos();
        let tl = double_at(2.2, "Right scores on Left!");
        let base = analyze(&tl, &phrase(40, 1.0, a, b), 15.0);
        for k in [1000.0, 0.001, 1920.0] {
            let d = analyze(&tl, &phrase(40, k, a, b), 15.0);
            assert_eq!(d.winner, base.winner, "scale {k}");
            assert!((d.confidence - base.confidence).abs() < 1e-4, "scale {k}");
            assert_eq!(d.evidence.len(), base.evidence.len());
        }
    }

    #[test]
    fn weak_or_missing_evidence_is_uncertain() {
        let tl = double_at(2.0, "Simultaneous valid hits!");
        // Mirror-image fencers: a perfect tie.
        let tie = phrase(
            40,
            1.0,
            |i| 1.0 + 0.05 * i as f32,
            |i| 9.0 - 0.05 * i as f32,
        );
        assert_eq!(analyze(&tl, &tie, 15.0).winner, Winner::Uncertain);
        // No frames at all.
        assert_eq!(analyze(&tl, &[], 15.0).winner, Winner::Uncertain);
        // Frames stop long before the hit.
        let short = phrase(10, 1.0, |i| 1.0 + 0.1 * i as f32, |_| 9.0);
        let d = analyze(&tl, &short, 15.0);
        assert_eq!(d.winner, Winner::Uncertain);
        assert!(d.reason.contains("stop"), "{}", d.reason);
        // The right fencer is never seen.
        let mut blind = phrase(40, 1.0, |i| 1.0 + 0.1 * i as f32, |_| 9.0);
        for f in &mut blind {
            f.right = None;
        }
        let d = analyze(&tl, &blind, 15.0);
        assert_eq!(d.winner, Winner::Uncertain);
        assert!(d.reason.contains("right"), "{}", d.reason);
    }

    #[test]
    fn single_light_scores_without_poses() {
        let tl = parse_signal(" 0.000s | Phrase recording started\n 1.5s | HIT: Right scores on Left!\nScores -> Fencer 1: HIT, Fencer 2: NO HIT\n")
            .expect("log");
        let d = analyze(&tl, &[], 15.0);
        assert_eq!(d.winner, Winner::Right);
        assert_eq!(d.confidence, 1.0);
        assert!(d.reason.contains("Single light"));
    }

    #[test]
    fn live_estimate_follows_the_phrase_and_out_of_order_frames() {
        let frames = phrase(
            30,
            100.0,
            |i| 1.0 + 0.15 * i as f32,
            |i| 9.0 + 0.05 * i as f32,
        );
        let mut a = PhraseAnalyzer::new(15.0);
        assert_eq!(a.live().left.action, "unseen");
        // Push with two frames swapped: the analyzer keeps time order.
        let mut order: Vec<usize> = (0..30).collect();
        order.swap(10, 11);
        for i in order {
            a.push(&frames[i]);
        }
        a.set_frame_width(1280.0);
        let live = a.live();
        assert_eq!(live.frame, 29);
        assert_eq!(live.left.action, "advance", "{live:?}");
        assert_eq!(live.right.action, "retreat", "{live:?}");
        assert!(live.left.speed > 1.0 && live.right.speed < -0.3, "{live:?}");
        let x = live.left.x.expect("visible");
        assert!(
            (x - 100.0 * (1.0 + 0.15 * 29.0) / 1280.0).abs() < 1e-4,
            "{x}"
        );
        assert_eq!(live.right_of_way, Some(Side::Left));
        // Same verdict as the offline path.
        let tl = double_at(1.9, "Simultaneous valid hits!");
        assert_eq!(a.decide(&tl), analyze(&tl, &frames, 15.0));
    }

    #[test]
    fn fit_recovers_the_sign_of_each_feature() {
        // Synthetic: left wins when it advanced more, ran longer, and did not hit first.
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..200 {
            let a = ((i * 37) % 17) as f64 / 8.0 - 1.0;
            let r = ((i * 53) % 13) as f64 / 6.0 - 1.0;
            let f = [(i % 3) as f64 - 1.0][0];
            xs.push([a, r, f]);
            ys.push(0.5 * a + 1.0 * r - 0.4 * f > 0.0);
        }
        let w = Weights::fit(&xs, &ys);
        assert!(w.advance > 0.0 && w.run > 0.0 && w.first < 0.0, "{w:?}");
        assert!(w.run > w.advance, "{w:?}");
    }
}
