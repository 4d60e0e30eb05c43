//! The decision as a trained, versioned model file.
//!
//! A [`Model`] holds the tunable parameters of the right-of-way decision ([`Params`]), which form
//! decides (the priority rules, or a small left/right-symmetric logistic model over the same
//! features), how confident each verdict is (a calibration measured out of fold by
//! leave-one-date-out cross-validation), the confidence below which a verdict becomes
//! `uncertain`, and what it was trained on. [`Model::default`] is the shipped default: today's
//! [`DEFAULT_PARAMS`] with the confidences the rules always reported, so it gives exactly the
//! verdicts of the code before the decision became a model.
//!
//! [`train`] fits a model from labelled feature vectors (no IO: the CLI's `referee train` reads
//! the phrase folders and calls it). Everything it chooses is chosen by leave-one-date-out inside
//! the data it is given, so `referee evaluate --cv` can re-run it on each outer training fold.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::{Decision, Params, PhraseAnalyzer, Rule, DEFAULT_PARAMS, RUN_TIE_CANDIDATES};
use crate::rules::{CONF_FINAL_ADVANCE, CONF_FIRST_LAMP, CONF_RUN};
use crate::signal::Timeline;
use crate::{PoseFrame, Side, Winner};

/// The `format` field of every model file.
pub const MODEL_FORMAT: &str = "referee-rules-model";
/// The model-file layout this code reads and writes; any other is refused.
pub const MODEL_VERSION: u32 = 1;
/// Names of the features, in the order of [`crate::DoubleFeatures::vector`].
pub const FEATURE_NAMES: [&str; 3] = ["d_advance", "d_run", "first_lamp"];
/// Candidate final-advance tolerances (torso lengths) searched by [`train`].
pub const ADVANCE_TIE_CANDIDATES: [f64; 5] = [0.0, 0.05, 0.1, 0.2, 0.3];
/// Candidate L2 strengths of the logistic form, chosen by inner leave-one-date-out.
pub const L2_CANDIDATES: [f64; 4] = [0.01, 0.1, 1.0, 10.0];
/// Beta prior (pseudo-correct, pseudo-wrong) on each rule's accuracy.
pub const RULE_PRIOR: [f64; 2] = [1.0, 1.0];

/// Why a model file is refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read model file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Not a model file (bad JSON or missing fields).
    #[error("{path} is not a valid referee model file: {why}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A model file of another format version.
    #[error(
        "{path} is a referee model file of format version {found}; this build reads version \
         {MODEL_VERSION} only: retrain it with `referee train`"
    )]
    Version {
        /// The file.
        path: String,
        /// Its version.
        found: u64,
    },
}

/// One input feature of the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDef {
    /// Short name.
    pub name: String,
    /// What it measures.
    pub definition: String,
}

/// The decision's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// The FIE priority rules with [`Model::params`].
    Rules,
    /// `P(left) = sigmoid(w . x)`, no intercept (mirror symmetric).
    Logistic,
}

/// A rule's out-of-fold record and the confidence it gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleCalibration {
    /// Phrases the rule decided (out of fold).
    pub n: usize,
    /// Of which right.
    pub correct: usize,
    /// Reported confidence: (correct + prior) / (n + both priors).
    pub confidence: f32,
}

/// Where each verdict's confidence comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// How it was obtained.
    pub source: String,
    /// Per rule (`advance_run`, `first_lamp`, `final_advance`).
    pub per_rule: BTreeMap<String, RuleCalibration>,
    /// Logistic form: the Platt slope applied to its logit (fitted out of fold).
    pub platt_slope: Option<f64>,
}

/// The logistic form's weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    /// One weight per [`FEATURE_NAMES`] entry.
    pub weights: Vec<f64>,
    /// The L2 strength it was fitted with.
    pub l2: f64,
}

/// What a model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Phrases used (after duplicates and insufficient evidence were set aside).
    pub phrases: usize,
    /// Phrases per recording date.
    pub dates: BTreeMap<String, usize>,
    /// Labels: left, right.
    pub left: usize,
    /// See `left`.
    pub right: usize,
    /// Duplicate phrases skipped (`dup -> kept`).
    pub duplicates: Vec<String>,
    /// Phrases without enough evidence to measure features.
    pub insufficient: Vec<String>,
}

/// A versioned right-of-way model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// [`MODEL_VERSION`].
    pub version: u32,
    /// Which form decides.
    pub kind: ModelKind,
    /// Rule tolerances (also used to report the rule behind a logistic verdict).
    pub params: Params,
    /// Weights of the logistic form (when `kind` is `logistic`).
    pub logistic: Option<Logistic>,
    /// The features, in vector order.
    pub features: Vec<FeatureDef>,
    /// Confidence of each verdict.
    pub calibration: Calibration,
    /// Verdicts below this confidence become `uncertain` (0 = never).
    pub min_confidence: f32,
    /// The training set (none for the shipped default).
    pub training: Option<TrainingSummary>,
    /// The trainer's own leave-one-date-out report.
    pub cv_report: Option<serde_json::Value>,
}

fn feature_defs() -> Vec<FeatureDef> {
    let d = [
        "left minus right torso lengths gained towards the opponent over the last 0.8 s before the hit",
        "left minus right seconds of uninterrupted forward movement (> 0.3 torso lengths/s) up to the hit",
        "+1 when the left lamp lit first, -1 when the right one did, 0 when together",
    ];
    FEATURE_NAMES
        .iter()
        .zip(d)
        .map(|(n, d)| FeatureDef {
            name: n.to_string(),
            definition: d.to_string(),
        })
        .collect()
}

fn rule_key(r: Rule) -> &'static str {
    match r {
        Rule::AdvanceRun => "advance_run",
        Rule::FirstLamp => "first_lamp",
        Rule::FinalAdvance => "final_advance",
        Rule::Simultaneous => "simultaneous",
    }
}

impl Default for Model {
    /// The shipped default: [`DEFAULT_PARAMS`] and the per-rule confidences the rules have
    /// always reported, so it reproduces the pre-model verdicts exactly.
    fn default() -> Self {
        let per_rule = [
            (Rule::AdvanceRun, CONF_RUN),
            (Rule::FirstLamp, CONF_FIRST_LAMP),
            (Rule::FinalAdvance, CONF_FINAL_ADVANCE),
        ]
        .into_iter()
        .map(|(r, c)| {
            (
                rule_key(r).to_string(),
                RuleCalibration {
                    n: 0,
                    correct: 0,
                    confidence: c,
                },
            )
        })
        .collect();
        Model {
            format: MODEL_FORMAT.to_string(),
            version: MODEL_VERSION,
            kind: ModelKind::Rules,
            params: DEFAULT_PARAMS,
            logistic: None,
            features: feature_defs(),
            calibration: Calibration {
                source: "shipped default: the per-rule confidences of the original rules \
                         (their rounded-down accuracy on the labelled phrases); `referee train` \
                         measures them out of fold instead"
                    .to_string(),
                per_rule,
                platt_slope: None,
            },
            min_confidence: 0.0,
            training: None,
            cv_report: None,
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn dot(w: &[f64], x: &[f64; 3]) -> f64 {
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

impl Model {
    /// Parses a model file's text; `path` names it in errors.
    pub fn from_json(text: &str, path: &str) -> Result<Model, ModelError> {
        let corrupt = |why: String| ModelError::Corrupt {
            path: path.to_string(),
            why,
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| corrupt(format!("not JSON ({e})")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(MODEL_FORMAT) {
            return Err(corrupt(format!("no \"format\": \"{MODEL_FORMAT}\" field")));
        }
        match v.get("version").and_then(|v| v.as_u64()) {
            Some(n) if n == u64::from(MODEL_VERSION) => {}
            Some(found) => {
                return Err(ModelError::Version {
                    path: path.to_string(),
                    found,
                })
            }
            None => return Err(corrupt("no integer \"version\" field".into())),
        }
        let m: Model = serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))?;
        m.check().map_err(corrupt)?;
        Ok(m)
    }

    /// Reads a model file.
    pub fn load(path: &std::path::Path) -> Result<Model, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// The model file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a model serialises")
    }

    fn check(&self) -> Result<(), String> {
        let names: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
        if names != FEATURE_NAMES {
            return Err(format!(
                "features {names:?}, this build computes {FEATURE_NAMES:?}"
            ));
        }
        let p = &self.params;
        let valid = |v: f64| v.is_finite() && v >= 0.0;
        if !valid(p.run_tie_s) || !valid(p.advance_tie) {
            return Err(format!("invalid params {p:?}"));
        }
        if p.speed_window_s
            .is_some_and(|w| !(w.is_finite() && w > 0.0))
        {
            return Err(format!("invalid speed window {:?}", p.speed_window_s));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(format!(
                "min_confidence {} outside 0-1",
                self.min_confidence
            ));
        }
        if self.kind == ModelKind::Logistic {
            match &self.logistic {
                Some(l) if l.weights.len() == 3 && l.weights.iter().all(|w| w.is_finite()) => {}
                _ => return Err("logistic model without 3 finite weights".into()),
            }
        }
        for r in ["advance_run", "first_lamp", "final_advance"] {
            match self.calibration.per_rule.get(r) {
                Some(c) if (0.0..=1.0).contains(&c.confidence) => {}
                _ => return Err(format!("calibration lacks a confidence for rule {r}")),
            }
        }
        Ok(())
    }

    /// Side and confidence for a feature vector with the rule the rules would use.
    pub fn predict(&self, x: &[f64; 3]) -> (Option<Side>, f32, Rule) {
        let (side, rule) = self.params.apply(x);
        match (self.kind, &self.logistic) {
            (ModelKind::Logistic, Some(l)) => {
                let z = dot(&l.weights, x) * self.calibration.platt_slope.unwrap_or(1.0);
                let p = sigmoid(z);
                let side = if z > 0.0 {
                    Some(Side::Left)
                } else if z < 0.0 {
                    Some(Side::Right)
                } else {
                    None
                };
                (side, p.max(1.0 - p) as f32, rule)
            }
            _ => {
                let c = self
                    .calibration
                    .per_rule
                    .get(rule_key(rule))
                    .map_or(0.5, |c| c.confidence);
                (side, if side.is_some() { c } else { 0.5 }, rule)
            }
        }
    }
}

impl PhraseAnalyzer {
    /// The verdict of `model` for the phrase described by `timeline`.
    pub fn decide_model(&self, timeline: &Timeline, model: &Model) -> Decision {
        let mut d = self.decide_with(timeline, &model.params);
        let Some(f) = d.features.as_ref() else {
            return d;
        };
        let (side, conf, _) = model.predict(&f.vector);
        if model.kind == ModelKind::Logistic {
            if let Some(s) = side {
                d.winner = s.into();
                d.reason = format!(
                    "Learned model: {s} scores with probability {conf:.2} (advance {:+.2} torso \
                     lengths and run {:+.2} s, left minus right; {}). The priority rules \
                     would say: {}",
                    f.vector[0],
                    f.vector[1],
                    match f.first_hit {
                        Some(sd) => format!("{sd} lamp first"),
                        None => "lamps together".into(),
                    },
                    d.reason
                );
            }
        }
        if d.winner != Winner::Uncertain {
            d.confidence = conf;
            if conf < model.min_confidence {
                d.reason = format!(
                    "Confidence {conf:.2} is below the threshold {:.2}: ask a human. ({})",
                    model.min_confidence, d.reason
                );
                d.winner = Winner::Uncertain;
            }
        }
        d
    }
}

/// A decision that could not be measured at all (frames stop before the hit, a fencer unseen, no
/// pose): `uncertain` without features, as opposed to one the rules found level.
pub fn insufficient_evidence(d: &Decision) -> bool {
    d.winner == Winner::Uncertain && d.features.is_none()
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Content fingerprint of a phrase: the log text and the parsed keypoints (bit for bit), so
/// two copies of one phrase match even when their workbook files differ byte-wise.
pub fn phrase_fingerprint(signal_text: &str, frames: &[PoseFrame]) -> u64 {
    let mut h = fnv1a(signal_text.bytes(), 0xcbf2_9ce4_8422_2325);
    for f in frames {
        h = fnv1a(f.frame.to_le_bytes(), h);
        for kp in [&f.left, &f.right] {
            match kp {
                None => h = fnv1a([0u8], h),
                Some(kp) => {
                    for p in kp.iter().flatten() {
                        // NaN of any payload hashes alike.
                        let bits = if p.is_nan() { u32::MAX } else { p.to_bits() };
                        h = fnv1a(bits.to_le_bytes(), h);
                    }
                }
            }
        }
    }
    h
}

/// For each item, `Some(index of the first item with the same fingerprint)` if it repeats one.
pub fn duplicates_of(fingerprints: &[u64]) -> Vec<Option<usize>> {
    let mut first: BTreeMap<u64, usize> = BTreeMap::new();
    fingerprints
        .iter()
        .enumerate()
        .map(|(i, fp)| match first.get(fp) {
            Some(&j) => Some(j),
            None => {
                first.insert(*fp, i);
                None
            }
        })
        .collect()
}

/// 95 % Wilson score interval of `k` successes in `n`.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n_f) = (1.959_964, n as f64);
    let p = k as f64 / n_f;
    let den = 1.0 + z * z / n_f;
    let mid = (p + z * z / (2.0 * n_f)) / den;
    let half = z * (p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt() / den;
    ((mid - half).max(0.0), (mid + half).min(1.0))
}

/// Exact two-sided McNemar (sign) test: `b` and `c` are the discordant pairs.
pub fn mcnemar_p(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // P(X <= k), X ~ Binomial(n, 1/2), in logs.
    let ln_choose = |n: usize, r: usize| -> f64 {
        (1..=r)
            .map(|i| ((n - r + i) as f64).ln() - (i as f64).ln())
            .sum()
    };
    let cdf: f64 = (0..=k)
        .map(|i| (ln_choose(n, i) - n as f64 * std::f64::consts::LN_2).exp())
        .sum();
    (2.0 * cdf).min(1.0)
}

/// One labelled phrase with measured features.
#[derive(Debug, Clone)]
pub struct Example {
    /// Recording date (the fold).
    pub date: String,
    /// `[Δadvance, Δrun, first]`.
    pub x: [f64; 3],
    /// The human referee gave the touch to the left fencer.
    pub left: bool,
}

fn correct_side(side: Option<Side>, left: bool) -> bool {
    side == Some(if left { Side::Left } else { Side::Right })
}

/// Best rule tolerances on `ex` (other fields from `base`) (accuracy, undecided = wrong); ties go to the candidate nearest
/// [`DEFAULT_PARAMS`].
pub fn fit_params(ex: &[&Example], base: Params) -> Params {
    let mut best = (0usize, f64::INFINITY, base);
    for &run_tie_s in &RUN_TIE_CANDIDATES {
        for &advance_tie in &ADVANCE_TIE_CANDIDATES {
            let p = Params {
                run_tie_s,
                advance_tie,
                ..base
            };
            let correct = ex
                .iter()
                .filter(|e| correct_side(p.apply(&e.x).0, e.left))
                .count();
            let dist = (run_tie_s - DEFAULT_PARAMS.run_tie_s).abs() / 0.5
                + (advance_tie - DEFAULT_PARAMS.advance_tie).abs() / 0.3;
            if correct > best.0 || (correct == best.0 && dist < best.1 - 1e-12) {
                best = (correct, dist, p);
            }
        }
    }
    best.2
}

/// L2-penalised logistic regression without intercept, on `ex` and their mirror images (every
/// feature negated, the other side wins), by Newton's method.
pub fn fit_logistic(ex: &[&Example], l2: f64) -> Vec<f64> {
    let mut w = [0.0f64; 3];
    for _ in 0..50 {
        let mut g = [0.0f64; 3];
        let mut h = [[0.0f64; 3]; 3];
        for e in ex {
            for (x, y) in [(e.x, e.left), (e.x.map(|v| -v), !e.left)] {
                let p = sigmoid(dot(&w, &x));
                let r = p - f64::from(u8::from(y));
                for i in 0..3 {
                    g[i] += r * x[i];
                    for j in 0..3 {
                        h[i][j] += p * (1.0 - p) * x[i] * x[j];
                    }
                }
            }
        }
        for i in 0..3 {
            g[i] += l2 * w[i];
            h[i][i] += l2;
        }
        let Some(step) = solve3(h, g) else { break };
        for i in 0..3 {
            w[i] -= step[i];
        }
        if step.iter().map(|s| s.abs()).sum::<f64>() < 1e-10 {
            break;
        }
    }
    w.to_vec()
}

fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for c in 0..3 {
        let piv = (c..3).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[piv][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, piv);
        b.swap(c, piv);
        for r in 0..3 {
            if r != c {
                let f = a[r][c] / a[c][c];
                let pivot_row = a[c];
                for (x, p) in a[r].iter_mut().zip(pivot_row) {
                    *x -= f * p;
                }
                b[r] -= f * b[c];
            }
        }
    }
    Some([b[0] / a[0][0], b[1] / a[1][1], b[2] / a[2][2]])
}

/// Platt slope `a` for `P(y) = sigmoid(a z)` on out-of-fold logits (no intercept: symmetric).
fn fit_platt(zs: &[(f64, bool)]) -> f64 {
    let mut a = 1.0;
    for _ in 0..50 {
        let (mut g, mut h) = (1e-6 * (a - 1.0), 1e-6);
        for &(z, y) in zs {
            let p = sigmoid(a * z);
            g += (p - f64::from(u8::from(y))) * z;
            h += p * (1.0 - p) * z * z;
        }
        let step = g / h;
        a -= step;
        if step.abs() < 1e-10 {
            break;
        }
    }
    if a.is_finite() && a > 0.0 {
        a
    } else {
        1.0
    }
}

/// Out-of-fold figures of one form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormReport {
    /// Phrases scored.
    pub n: usize,
    /// Right.
    pub correct: usize,
    /// Given a side.
    pub decided: usize,
    /// correct / n.
    pub accuracy: f64,
    /// 95 % Wilson interval of `accuracy`.
    pub wilson95: (f64, f64),
    /// Per held-out date: (n, correct).
    pub per_date: BTreeMap<String, (usize, usize)>,
}

fn form_report(rows: &[(String, bool, bool)]) -> FormReport {
    let mut per_date: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (d, ok, _) in rows {
        let e = per_date.entry(d.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(*ok);
    }
    let correct = rows.iter().filter(|r| r.1).count();
    FormReport {
        n: rows.len(),
        correct,
        decided: rows.iter().filter(|r| r.2).count(),
        accuracy: if rows.is_empty() {
            0.0
        } else {
            correct as f64 / rows.len() as f64
        },
        wilson95: wilson(correct, rows.len()),
        per_date,
    }
}

/// The trainer's own report: both forms out of fold, and which it kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Inner leave-one-date-out of the rules (their tolerances re-fitted on each fold).
    pub rules: FormReport,
    /// Same for the logistic form at its chosen L2 strength.
    pub logistic: FormReport,
    /// Out-of-fold accuracy of the logistic form per L2 candidate.
    pub logistic_by_l2: Vec<(f64, usize)>,
    /// The chosen L2 strength.
    pub l2: f64,
    /// `rules` or `logistic`, and why.
    pub kept: String,
}

/// Fits a model on `ex`: rule tolerances by accuracy, the logistic form's L2 strength and the
/// choice between the forms by leave-one-date-out inside `ex`, the calibration from the same
/// out-of-fold verdicts. Needs at least two dates for the cross-validation (with one, the
/// calibration falls back to the in-sample record).
pub fn train(ex: &[Example], base: Params, min_confidence: f32) -> (Model, TrainReport) {
    let mut dates: Vec<&str> = ex.iter().map(|e| e.date.as_str()).collect();
    dates.sort();
    dates.dedup();
    let all: Vec<&Example> = ex.iter().collect();
    // Out-of-fold verdicts: rules (rule, correct), logistic per L2 (logit, label).
    let mut rule_rows = Vec::new();
    let mut rule_oof: Vec<(Rule, bool)> = Vec::new();
    let mut logit_oof: Vec<Vec<(String, f64, bool)>> = vec![Vec::new(); L2_CANDIDATES.len()];
    let folds: Vec<&str> = if dates.len() >= 2 {
        dates.clone()
    } else {
        Vec::new()
    };
    for d in &folds {
        let tr: Vec<&Example> = all.iter().copied().filter(|e| e.date != *d).collect();
        let te: Vec<&Example> = all.iter().copied().filter(|e| e.date == *d).collect();
        let p = fit_params(&tr, base);
        for e in &te {
            let (side, rule) = p.apply(&e.x);
            let ok = correct_side(side, e.left);
            rule_rows.push((e.date.clone(), ok, side.is_some()));
            if side.is_some() {
                rule_oof.push((rule, ok));
            }
        }
        for (k, &l2) in L2_CANDIDATES.iter().enumerate() {
            let w = fit_logistic(&tr, l2);
            for e in &te {
                logit_oof[k].push((e.date.clone(), dot(&w, &e.x), e.left));
            }
        }
    }
    let logit_correct = |rows: &[(String, f64, bool)]| {
        rows.iter()
            .filter(|(_, z, y)| (*z > 0.0 && *y) || (*z < 0.0 && !*y))
            .count()
    };
    let by_l2: Vec<(f64, usize)> = L2_CANDIDATES
        .iter()
        .zip(&logit_oof)
        .map(|(l, rows)| (*l, logit_correct(rows)))
        .collect();
    // Most correct; ties to the stronger penalty (simpler).
    let k_best = (0..L2_CANDIDATES.len())
        .max_by_key(|&k| (by_l2[k].1, k))
        .unwrap_or(0);
    let l2 = L2_CANDIDATES[k_best];
    let logit_rows: Vec<(String, bool, bool)> = logit_oof[k_best]
        .iter()
        .map(|(d, z, y)| (d.clone(), (*z > 0.0 && *y) || (*z < 0.0 && !*y), *z != 0.0))
        .collect();
    let rules_r = form_report(&rule_rows);
    let logit_r = form_report(&logit_rows);
    let use_logistic = !folds.is_empty() && logit_r.correct > rules_r.correct;
    let kept = if use_logistic {
        format!(
            "logistic: {} of {} right out of fold against the rules' {}",
            logit_r.correct, logit_r.n, rules_r.correct
        )
    } else {
        format!(
            "rules: {} of {} right out of fold; the logistic form got {} (it must do strictly \
             better to replace them)",
            rules_r.correct, rules_r.n, logit_r.correct
        )
    };
    let params = fit_params(&all, base);
    // Calibration: each rule's out-of-fold accuracy under a Beta prior; in-sample if no folds.
    let record: Vec<(Rule, bool)> = if folds.is_empty() {
        all.iter()
            .filter_map(|e| {
                let (s, r) = params.apply(&e.x);
                s.map(|s| (r, correct_side(Some(s), e.left)))
            })
            .collect()
    } else {
        rule_oof
    };
    let per_rule = [Rule::AdvanceRun, Rule::FirstLamp, Rule::FinalAdvance]
        .into_iter()
        .map(|r| {
            let n = record.iter().filter(|(q, _)| *q == r).count();
            let c = record.iter().filter(|(q, ok)| *q == r && *ok).count();
            let conf = (c as f64 + RULE_PRIOR[0]) / (n as f64 + RULE_PRIOR[0] + RULE_PRIOR[1]);
            (
                rule_key(r).to_string(),
                RuleCalibration {
                    n,
                    correct: c,
                    confidence: conf as f32,
                },
            )
        })
        .collect();
    let platt = use_logistic.then(|| {
        let zs: Vec<(f64, bool)> = logit_oof[k_best].iter().map(|(_, z, y)| (*z, *y)).collect();
        fit_platt(&zs)
    });
    let mut date_counts = BTreeMap::new();
    for e in ex {
        *date_counts.entry(e.date.clone()).or_insert(0) += 1;
    }
    let left = ex.iter().filter(|e| e.left).count();
    let report = TrainReport {
        rules: rules_r,
        logistic: logit_r,
        logistic_by_l2: by_l2,
        l2,
        kept,
    };
    let model = Model {
        kind: if use_logistic {
            ModelKind::Logistic
        } else {
            ModelKind::Rules
        },
        params,
        logistic: Some(Logistic {
            weights: fit_logistic(&all, l2),
            l2,
        }),
        calibration: Calibration {
            source: format!(
                "{} verdicts by leave-one-date-out inside the training set ({} dates); per rule \
                 (correct + {}) / (n + {})",
                if folds.is_empty() {
                    "in-sample"
                } else {
                    "out-of-fold"
                },
                dates.len(),
                RULE_PRIOR[0],
                RULE_PRIOR[0] + RULE_PRIOR[1]
            ),
            per_rule,
            platt_slope: platt,
        },
        min_confidence,
        training: Some(TrainingSummary {
            phrases: ex.len(),
            dates: date_counts,
            left,
            right: ex.len() - left,
            duplicates: Vec::new(),
            insufficient: Vec::new(),
        }),
        cv_report: serde_json::to_value(&report).ok(),
        ..Model::default()
    };
    (model, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_and_mcnemar_match_known_values() {
        let (lo, hi) = wilson(101, 130);
        assert!(
            (lo - 0.699).abs() < 0.002 && (hi - 0.838).abs() < 0.002,
            "{lo} {hi}"
        );
        assert_eq!(mcnemar_p(0, 0), 1.0);
        // 0 vs 6 discordant: 2 * 0.5^6.
        assert!((mcnemar_p(0, 6) - 0.03125).abs() < 1e-12);
        assert!((mcnemar_p(3, 3) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn default_model_round_trips_and_other_versions_are_refused() {
        let m = Model::default();
        let text = m.to_json();
        assert_eq!(Model::from_json(&text, "m.json").expect("own file"), m);
        let v2 = text.replace("\"version\": 1", "\"version\": 2");
        let e = Model::from_json(&v2, "m.json").expect_err("version 2");
        assert!(matches!(e, ModelError::Version { found: 2, .. }), "{e}");
        assert!(e.to_string().contains("version 2"), "{e}");
        for bad in [
            "",
            "{",
            "[]",
            "{\"format\": \"referee-rules-model\", \"version\": 1}",
            &text.replace("\"run_tie_s\": 0.2", "\"run_tie_s\": -1.0"),
            &text.replace("d_run", "speed"),
            &text[..text.len() / 2],
        ] {
            let e = Model::from_json(bad, "m.json").expect_err("corrupt");
            assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains("m.json"), "{e}");
        }
    }

    #[test]
    fn symmetric_logistic_learns_the_mirror() {
        let ex: Vec<Example> = (0..40)
            .map(|i| {
                let s = if i % 2 == 0 { 1.0 } else { -1.0 };
                Example {
                    date: format!("d{}", i % 4),
                    x: [0.1 * s, 0.5 * s + 0.01 * i as f64, 0.0],
                    left: s > 0.0,
                }
            })
            .collect();
        let refs: Vec<&Example> = ex.iter().collect();
        let w = fit_logistic(&refs, 1.0);
        assert!(w[1] > 0.0, "{w:?}");
        let (m, r) = train(&ex, DEFAULT_PARAMS, 0.0);
        assert_eq!(r.rules.n, 40);
        assert!(m.cv_report.is_some());
        let (s, c, _) = m.predict(&[0.0, 0.6, 0.0]);
        assert_eq!(s, Some(Side::Left));
        assert!(c > 0.5);
    }
}
