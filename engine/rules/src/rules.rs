//! Incremental phrase features and the right-of-way decision.
//!
//! Every pushed frame is reduced to a few numbers per fencer (body-centre x, torso length); the
//! decision reads them back once the signal says when the hit landed. All lengths are divided by
//! the fencers' median torso length and all speeds are in torso lengths per second, so the verdict
//! does not depend on the scale of the coordinates (pixels or the old normalised workbooks).
//!
//! A double touch is decided by FIE saber priority, applied in order (no weighted score):
//! 1. **Established attack.** Each fencer's *advance run* is how long they have been moving
//!    forward (faster than [`RUN_MIN_SPEED`]) without a stop up to the hit. The fencer whose run
//!    is longer by more than [`Params::run_tie_s`] started the attack first and kept it: the other
//!    was preparing, pausing, retreating or counter-attacking. Priority to the longer run.
//! 2. **Stop-cut into the attack.** Runs level (both set off together): if one lamp lit first, that
//!    hit landed into the opponent's attack (a counter-attack / stop-cut), which does not beat an
//!    attack inside the lockout. Priority to the other fencer.
//! 3. **Final advance.** Otherwise, the fencer who gained more ground over the last
//!    [`ADVANCE_WINDOW_S`] (by more than [`Params::advance_tie`] torso lengths) pressed the attack.
//! 4. Otherwise the actions are simultaneous: `uncertain`, ask a human.
//!
//! Missing evidence (a fencer unseen near the hit, frames that stop before the hit) also gives
//! `uncertain`. The one tuned number, `run_tie_s`, sits on a broad plateau (0.1-0.3 s give the same
//! accuracy on the labelled phrases); `referee evaluate --cv` re-chooses it leaving one recording
//! date out and reports that accuracy.

use serde::{Deserialize, Serialize};

use crate::signal::Timeline;
use crate::{Keypoints, PoseFrame, Side, Winner};

/// Window over which the final advance is measured (seconds before the hit).
pub const ADVANCE_WINDOW_S: f64 = 0.8;
/// Half-width (s) of the slope that measures speed for the advance run.
pub const RUN_SMOOTH_S: f64 = 0.1;
/// Forward speed (torso lengths / s) a fencer must keep for the advance run to continue.
pub const RUN_MIN_SPEED: f64 = 0.3;
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

/// Confidence reported for a verdict from each rule (roughly the share of the labelled phrases
/// each rule got right: 0.83, 0.81 and 0.70; rounded down).
pub const CONF_RUN: f32 = 0.8;
/// See [`CONF_RUN`].
pub const CONF_FIRST_LAMP: f32 = 0.75;
/// See [`CONF_RUN`].
pub const CONF_FINAL_ADVANCE: f32 = 0.65;

/// The tolerances of the priority rules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Advance runs closer than this (seconds) are level: the fencers set off together.
    pub run_tie_s: f64,
    /// Final advances closer than this (torso lengths) are level.
    pub advance_tie: f64,
    /// Half-width (s) of the time window the advance-run speed is measured over, by linear
    /// interpolation of the position at exactly ±this, so the same motion gives the same speed
    /// at any frame rate. `None` (the shipped default, kept to reproduce the original verdicts):
    /// the frames within ±[`RUN_SMOOTH_S`], at least one each side, which spans 0.13 s at 15 fps
    /// and 0.2 s at 30 fps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_window_s: Option<f64>,
}

/// Shipped tolerances: 0.2 s is about three frames at 15 fps and a fencer's reaction time; the
/// labelled phrases give the same accuracy anywhere from 0.1 to 0.3 s.
pub const DEFAULT_PARAMS: Params = Params {
    run_tie_s: 0.2,
    advance_tie: 0.1,
    speed_window_s: None,
};

/// Candidate run tolerances searched by [`Params::fit`].
pub const RUN_TIE_CANDIDATES: [f64; 9] = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5];

/// Which priority rule decided a double touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// 1: the longer advance run.
    AdvanceRun,
    /// 2: the other fencer's lamp lit first.
    FirstLamp,
    /// 3: more ground gained at the end.
    FinalAdvance,
    /// 4: nothing separates the fencers.
    Simultaneous,
}

impl Params {
    /// Applies the priority rules to `[Δadvance, Δrun, first]` (left minus right; first +1 when
    /// the left lamp lit first): the side (`None` when simultaneous) and the rule used.
    pub fn apply(&self, x: &[f64; 3]) -> (Option<Side>, Rule) {
        let side = |v: f64| if v > 0.0 { Side::Left } else { Side::Right };
        if x[1].abs() > self.run_tie_s {
            (Some(side(x[1])), Rule::AdvanceRun)
        } else if x[2] != 0.0 {
            (Some(side(-x[2])), Rule::FirstLamp)
        } else if x[0].abs() > self.advance_tie {
            (Some(side(x[0])), Rule::FinalAdvance)
        } else {
            (None, Rule::Simultaneous)
        }
    }

    /// Chooses `run_tie_s` among [`RUN_TIE_CANDIDATES`] by accuracy on labelled feature vectors
    /// (`y` true for left; undecided counts as wrong); ties go to the candidate nearest the
    /// shipped value. Used only by the evaluation tools (cross-validation), never while deciding.
    pub fn fit(xs: &[[f64; 3]], ys: &[bool]) -> Params {
        let mut best = (0usize, f64::INFINITY, DEFAULT_PARAMS);
        for &run_tie_s in &RUN_TIE_CANDIDATES {
            let p = Params {
                run_tie_s,
                ..DEFAULT_PARAMS
            };
            let correct = xs
                .iter()
                .zip(ys)
                .filter(|(x, &y)| p.apply(x).0 == Some(if y { Side::Left } else { Side::Right }))
                .count();
            let dist = (run_tie_s - DEFAULT_PARAMS.run_tie_s).abs();
            if correct > best.0 || (correct == best.0 && dist < best.1) {
                best = (correct, dist, p);
            }
        }
        best.2
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
    /// The priority rule that decided.
    pub rule: Rule,
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
/// Position of series `f` (over samples `s`) at time `t`: linear between samples, held at the ends.
fn interp(s: &[Sample], f: &[f64], t: f64) -> f64 {
    let h = f.len() - 1;
    let j = s[..=h].partition_point(|p| p.t <= t);
    if j == 0 {
        return f[0];
    }
    if j > h {
        return f[h];
    }
    let (t0, t1) = (s[j - 1].t, s[j].t);
    let a = if t1 > t0 { (t - t0) / (t1 - t0) } else { 1.0 };
    f[j - 1] + a * (f[j] - f[j - 1])
}

fn advance_run(
    s: &[Sample],
    f: &[f64],
    scale: f64,
    window: Option<f64>,
    hit_t: f64,
) -> (f64, usize) {
    let h = f.len() - 1;
    let at = |t: f64| interp(s, f, t);
    if let Some(w) = window {
        // The phrase ends at the hit (interpolated), whatever the frame rate.
        let end = hit_t.min(s[h].t);
        // Speed at time t over [t - w, t + w] (clipped to the samples), scanned back from the
        // last sample on a fixed time grid, so the run does not depend on where frames fall.
        let speed = |t: f64| -> f64 {
            let lo = (t - w).max(s[0].t);
            let hi = (t + w).min(end);
            if hi > lo {
                (at(hi) - at(lo)) / scale / (hi - lo)
            } else {
                0.0
            }
        };
        let step = w / 4.0;
        let mut t = end;
        while t > s[0].t && speed(t) > RUN_MIN_SPEED {
            t = (t - step).max(s[0].t);
        }
        let k = s[..=h].partition_point(|p| p.t < t - 0.5 * step).min(h);
        return (end - t, k);
    }
    let speed = |k: usize| -> f64 {
        // At least one neighbour each side, whatever the frame rate.
        let lo = s
            .partition_point(|p| p.t < s[k].t - RUN_SMOOTH_S - 1e-6)
            .min(k.saturating_sub(1));
        let hi = s[..=h]
            .partition_point(|p| p.t <= s[k].t + RUN_SMOOTH_S + 1e-6)
            .saturating_sub(1)
            .max((k + 1).min(h));
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
    fn features_at(&self, h: usize, params: &Params, hit_t: f64) -> Result<Measured, String> {
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
            if params.speed_window_s.is_some() {
                // Time-based: the position at the hit and 0.8 s before, interpolated.
                let end = hit_t.min(t_h);
                m.advance[i] = (interp(s, &f, end) - interp(s, &f, end - ADVANCE_WINDOW_S)) / scale;
            }
            let (run, start) = advance_run(s, &f, scale, params.speed_window_s, hit_t);
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
        let (right_of_way, confidence) = match self.features_at(h, &DEFAULT_PARAMS, last.t) {
            Ok(m) => {
                let x = [m.advance[0] - m.advance[1], m.run[0] - m.run[1], 0.0];
                match DEFAULT_PARAMS.apply(&x) {
                    (Some(side), Rule::AdvanceRun) => (Some(side), CONF_RUN),
                    (Some(side), _) => (Some(side), CONF_FINAL_ADVANCE),
                    (None, _) => (None, 0.5),
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
            confidence,
        }
    }

    /// The verdict for the phrase described by `timeline`, with the shipped tolerances.
    pub fn decide(&self, timeline: &Timeline) -> Decision {
        self.decide_with(timeline, &DEFAULT_PARAMS)
    }

    /// The verdict with explicit tolerances (cross-validation uses this).
    pub fn decide_with(&self, timeline: &Timeline, params: &Params) -> Decision {
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
        // The time-based form interpolates at the hit: it takes the first frame after it too.
        let h = match params.speed_window_s {
            Some(_) if self.samples[h].t < hit_t && h + 1 < self.samples.len() => h + 1,
            _ => h,
        };
        let m = match self.features_at(h, params, hit_t) {
            Ok(m) => m,
            Err(why) => return uncertain(format!("Double touch, but {why}: ask a human.")),
        };
        let first_v = match first {
            Some(Side::Left) => 1.0,
            Some(Side::Right) => -1.0,
            None => 0.0,
        };
        let vector = [m.advance[0] - m.advance[1], m.run[0] - m.run[1], first_v];
        let (side, rule) = params.apply(&vector);
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
            rule,
        };
        let evidence = self.evidence(timeline, &feats, &m);
        let Some(win) = side else {
            return Decision {
                winner: Winner::Uncertain,
                confidence: 0.5,
                reason: format!(
                    "Simultaneous actions: both fencers set off together (advancing {:.2} s vs \
                     {:.2} s), the lamps lit together and neither gained more ground at the end \
                     (left {}, right {}): ask a human.",
                    m.run[0], m.run[1], feats.action.left, feats.action.right
                ),
                evidence,
                features: Some(feats),
            };
        };
        let confidence = match rule {
            Rule::AdvanceRun => CONF_RUN,
            Rule::FirstLamp => CONF_FIRST_LAMP,
            _ => CONF_FINAL_ADVANCE,
        };
        Decision {
            winner: win.into(),
            confidence,
            reason: reason_for(win, &feats),
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

/// Explains the verdict by the rule that decided it, with the context a referee checks.
fn reason_for(win: Side, f: &DoubleFeatures) -> String {
    let lose = win.other();
    let (rw, rl) = (f.run.get(win), f.run.get(lose));
    let (aw, al) = (f.advance.get(win), f.advance.get(lose));
    let end = format!(
        "in the last {ADVANCE_WINDOW_S:.1} s {win} {} ({aw:+.2} torso lengths), {lose} {} ({al:+.2})",
        verb(f.action.get(win)),
        verb(f.action.get(lose))
    );
    let lamp = match f.first_hit {
        Some(s) if s == lose => format!("; {lose}'s lamp lit first: a stop-cut into the attack"),
        Some(s) => format!("; {s}'s lamp lit first"),
        None => String::new(),
    };
    let body = match f.rule {
        Rule::AdvanceRun if rl <= 0.0 => format!(
            "{win} had been advancing for {rw:.2} s up to the hit while {lose} was not moving \
             forward, so {lose} was preparing, waiting or retreating; {end}{lamp}"
        ),
        Rule::AdvanceRun => format!(
            "{win} started the final advance first ({rw:.2} s before the hit, {lose} {rl:.2} s); \
             {end}{lamp}"
        ),
        Rule::FirstLamp => format!(
            "both set off together ({rw:.2} s vs {rl:.2} s) and {lose}'s lamp lit first: a \
             stop-cut into {win}'s attack, which the attack beats inside the lockout; {end}"
        ),
        _ => format!(
            "both set off together ({rw:.2} s vs {rl:.2} s) and the lamps lit together; {win} \
             pressed on: {end}"
        ),
    };
    format!("Attack by {win}: {body}.")
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
    fn low_frame_rates_still_measure_the_advance_run() {
        // 6 fps: the +-0.1 s speed window holds no neighbour frame by time alone.
        let frames: Vec<PoseFrame> = (0..16)
            .map(|i| PoseFrame {
                frame: i,
                t: i as f64 / 6.0,
                left: Some(body(1.0 + 0.3 * i as f32, 1.0)),
                right: Some(body(9.0, 1.0)),
            })
            .collect();
        let d = analyze(&double_at(2.5, "Simultaneous valid hits!"), &frames, 6.0);
        assert_eq!(d.winner, Winner::Left, "{}", d.reason);
        let f = d.features.expect("features");
        assert!(f.run.left > 2.0 && f.run.right == 0.0, "{f:?}");
    }

    #[test]
    fn counter_attack_landing_first_loses_to_the_attack() {
        // Right attacks from the start; left stands still and hits first.
        let frames = phrase(40, 1.0, |_| 1.0, |i| 9.0 - 0.1 * i as f32);
        let d = analyze(&double_at(2.0, "Left scores on Right!"), &frames, 15.0);
        assert_eq!(d.winner, Winner::Right, "{}", d.reason);
        assert!(d.reason.contains("stop-cut"), "{}", d.reason);
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
    fn priority_rules_apply_in_order() {
        let p = DEFAULT_PARAMS;
        // A longer run wins even against the lamp and the final advance.
        assert_eq!(
            p.apply(&[-2.0, 0.5, -1.0]),
            (Some(Side::Left), Rule::AdvanceRun)
        );
        assert_eq!(
            p.apply(&[2.0, -0.5, 1.0]),
            (Some(Side::Right), Rule::AdvanceRun)
        );
        // Level runs: the first lamp loses.
        assert_eq!(
            p.apply(&[2.0, 0.1, 1.0]),
            (Some(Side::Right), Rule::FirstLamp)
        );
        assert_eq!(
            p.apply(&[-2.0, -0.1, -1.0]),
            (Some(Side::Left), Rule::FirstLamp)
        );
        // Level runs, lamps together: the final advance, else simultaneous.
        assert_eq!(
            p.apply(&[0.5, 0.0, 0.0]),
            (Some(Side::Left), Rule::FinalAdvance)
        );
        assert_eq!(p.apply(&[0.05, 0.0, 0.0]), (None, Rule::Simultaneous));
    }

    #[test]
    fn fit_picks_the_run_tolerance_that_separates_the_data() {
        // Run differences of 0.12 s are noise here (labels follow the lamp), 0.6 s are real.
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..40 {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            xs.push([0.0, 0.12 * sign, sign]);
            ys.push(sign < 0.0);
            xs.push([0.0, 0.6 * sign, 0.0]);
            ys.push(sign > 0.0);
        }
        let p = Params::fit(&xs, &ys);
        assert!(p.run_tie_s >= 0.15 && p.run_tie_s < 0.6, "{p:?}");
        let correct = xs
            .iter()
            .zip(&ys)
            .filter(|(x, &y)| p.apply(x).0 == Some(if y { Side::Left } else { Side::Right }))
            .count();
        assert_eq!(correct, xs.len());
    }
}
