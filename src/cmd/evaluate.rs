//! `referee evaluate DIR`: decide every labelled phrase folder with a model and report accuracy.
//!
//! Each folder holds `signal.txt`, `keypoints.xlsx` and `label.json` (`{"winner": "left"|"right"}`).
//! The label is read here only, after the phrase has been loaded for the decision, to score it.
//! Phrases with the same content under two names are counted once; phrases without enough
//! evidence to measure (frames stopping before the hit, a fencer unseen) are reported as such
//! and count against coverage. `--cv` re-runs the trainer leaving one recording date out at a
//! time (the trainer itself chooses its settings by leave-one-date-out inside each fold).
//!
//! A folder of phrase recordings (the daemon's tars; detected when it holds recordings and no
//! phrase folder, or forced with `--recordings`) is scored instead on the verdicts the daemon
//! decided live, against the referee's calls stored in them (see [`super::evaluate_recordings`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use referee_rules::model::{
    duplicates_of, insufficient_evidence, mcnemar_p, phrase_fingerprint, train, wilson, Example,
};
use referee_rules::{signal, workbook, Model, Params, PhraseAnalyzer, Winner, DEFAULT_PARAMS};
use serde::Serialize;

/// Arguments of `referee evaluate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder of phrase folders (each with signal.txt, keypoints.xlsx, label.json), or of
    /// phrase recordings (the daemon's `recordings/` folder): those with a referee's call are
    /// scored on the verdict the daemon decided live (our pose output), as stored in them.
    pub dir: PathBuf,
    /// Read DIR as recordings (default: when it holds recordings and no phrase folder). Only
    /// --json and --min-confidence apply to recordings.
    #[arg(long)]
    pub recordings: bool,
    /// Frame rate of the keypoints (default: inferred per phrase from the log's span and the
    /// row count, 15 or 30 fps).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Model file (default: config `referee.model` / REFEREE_MODEL, else the shipped default).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A second model file decided on the same phrases and compared with the first (paired);
    /// `default` = the shipped default.
    #[arg(long)]
    pub compare: Option<String>,
    /// Verdicts below this confidence become uncertain (overrides the model file's).
    #[arg(long)]
    pub min_confidence: Option<f32>,
    /// With --cv: the trainer measures the advance-run speed over this fixed time window
    /// (± seconds, frame-rate independent) instead of the model's.
    #[arg(long)]
    pub speed_window_s: Option<f64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also report leave-one-date-out cross-validation of the trainer (nested: it is re-run
    /// on each training fold).
    #[arg(long)]
    pub cv: bool,
}

/// One loaded, labelled phrase.
pub struct Phrase {
    pub name: String,
    pub date: String,
    pub label: Winner,
    /// Frame rate used and where it came from (`inferred`, `flag`, `nominal`).
    pub fps: f64,
    pub fps_source: &'static str,
    /// Content fingerprint (log text + parsed keypoints).
    pub fingerprint: u64,
    /// Name of the earlier phrase with the same content.
    pub duplicate_of: Option<String>,
    pub loaded: Result<(signal::Timeline, PhraseAnalyzer), String>,
}

impl Phrase {
    /// The feature vector measured with `params` (`None`: insufficient evidence or not loaded).
    pub fn features(&self, params: &Params) -> Option<[f64; 3]> {
        let (tl, an) = self.loaded.as_ref().ok()?;
        an.decide_with(tl, params).features.map(|f| f.vector)
    }
}

/// The model named by `flag`, else config `referee.model` (REFEREE_MODEL), else the default.
pub fn resolve_model(flag: Option<&Path>) -> anyhow::Result<(Model, String)> {
    let from_config = match flag {
        Some(_) => None,
        None => super::load_settings(None, &[])?.referee.model,
    };
    match flag.map(Path::to_path_buf).or(from_config) {
        Some(p) => Ok((Model::load(&p)?, p.display().to_string())),
        None => Ok((Model::default(), "shipped default".to_string())),
    }
}

fn read_label(dir: &Path) -> anyhow::Result<Winner> {
    let p = dir.join("label.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
    match v.get("winner").and_then(|w| w.as_str()) {
        Some("left") => Ok(Winner::Left),
        Some("right") => Ok(Winner::Right),
        other => anyhow::bail!(
            "{}: \"winner\" must be \"left\" or \"right\", found {other:?}",
            p.display()
        ),
    }
}

/// The phrase folders (holding `signal.txt`) under each of `dirs`, sorted by name.
pub fn phrase_dirs(dirs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if dir.join("signal.txt").is_file() {
            out.push(dir.clone());
            continue;
        }
        out.extend(
            std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("signal.txt").is_file()),
        );
    }
    out.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    if out.is_empty() {
        anyhow::bail!(
            "no phrase folder (a folder with signal.txt, keypoints.xlsx, label.json) in {dirs:?}"
        );
    }
    Ok(out)
}

fn load_one(
    dir: &Path,
    fps: Option<f64>,
) -> anyhow::Result<(
    signal::Timeline,
    Vec<referee_rules::PoseFrame>,
    f64,
    &'static str,
    u64,
)> {
    let sp = dir.join("signal.txt");
    let text = std::fs::read_to_string(&sp)
        .with_context(|| format!("cannot read signal log {}", sp.display()))?;
    let tl = signal::parse_signal(&text)
        .with_context(|| format!("invalid signal log {}", sp.display()))?;
    let mut frames = workbook::read_workbook(&dir.join("keypoints.xlsx"), 1.0)?;
    let fp = phrase_fingerprint(&text, &frames);
    let (f, src) = match fps {
        Some(f) => (f, "flag"),
        None => match workbook::infer_fps(frames.len(), &tl) {
            Some(f) => (f, "inferred"),
            None => (15.0, "nominal"),
        },
    };
    for fr in &mut frames {
        fr.t = fr.frame as f64 / f;
    }
    Ok((tl, frames, f, src, fp))
}

/// Loads every phrase folder (log, workbook at the inferred or given rate), flags duplicate
/// content, then reads the labels.
pub fn load_phrases(dirs: &[PathBuf], fps: Option<f64>) -> anyhow::Result<Vec<Phrase>> {
    let mut phrases = Vec::new();
    for dir in phrase_dirs(dirs)? {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let date = name
            .get(..8)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or("unknown")
            .to_string();
        let (loaded, fps_used, src, fp) = match load_one(&dir, fps) {
            Ok((tl, frames, f, src, fp)) => {
                let mut an = PhraseAnalyzer::new(f);
                for fr in &frames {
                    an.push(fr);
                }
                (Ok((tl, an)), f, src, fp)
            }
            Err(e) => {
                tracing::warn!(phrase = %name, "cannot analyse: {e:#}");
                (Err(format!("{e:#}")), fps.unwrap_or(15.0), "nominal", 0)
            }
        };
        // The label is read only now, after the phrase has been loaded for the decision.
        let label = read_label(&dir)?;
        phrases.push(Phrase {
            name,
            date,
            label,
            fps: fps_used,
            fps_source: src,
            fingerprint: fp,
            duplicate_of: None,
            loaded,
        });
    }
    let fps_list: Vec<u64> = phrases
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.loaded.is_ok() {
                p.fingerprint
            } else {
                i as u64
            }
        })
        .collect();
    for (i, d) in duplicates_of(&fps_list).into_iter().enumerate() {
        if let Some(j) = d {
            phrases[i].duplicate_of = Some(phrases[j].name.clone());
        }
    }
    Ok(phrases)
}

/// The labelled examples for training: unique phrases with features measured with `params`.
pub fn examples(phrases: &[&Phrase], params: &Params) -> Vec<Example> {
    phrases
        .iter()
        .filter(|p| p.duplicate_of.is_none())
        .filter_map(|p| {
            Some(Example {
                date: p.date.clone(),
                x: p.features(params)?,
                left: p.label == Winner::Left,
            })
        })
        .collect()
}

/// One evaluated phrase (a phrase folder, or a recording with a referee's call).
#[derive(Serialize, Clone)]
pub(super) struct Row {
    pub(super) name: String,
    pub(super) date: String,
    pub(super) fps: f64,
    pub(super) fps_source: &'static str,
    pub(super) label: Winner,
    pub(super) predicted: Winner,
    /// Confidence of the side the model would give before its threshold.
    pub(super) confidence: f32,
    /// The side before the threshold (for the coverage curve).
    pub(super) side: Winner,
    pub(super) insufficient: bool,
    pub(super) correct: bool,
    pub(super) reason: String,
}

fn row_for(p: &Phrase, model: &Model) -> Row {
    let (predicted, side, confidence, insufficient, reason) = match &p.loaded {
        Ok((tl, an)) => {
            let d = an.decide_model(tl, model);
            let raw = if model.min_confidence > 0.0 {
                let mut m = model.clone();
                m.min_confidence = 0.0;
                an.decide_model(tl, &m)
            } else {
                d.clone()
            };
            (
                d.winner,
                raw.winner,
                raw.confidence,
                insufficient_evidence(&d),
                d.reason,
            )
        }
        Err(e) => (
            Winner::Uncertain,
            Winner::Uncertain,
            0.5,
            true,
            format!("error: {e}"),
        ),
    };
    Row {
        name: p.name.clone(),
        date: p.date.clone(),
        fps: p.fps,
        fps_source: p.fps_source,
        label: p.label,
        predicted,
        confidence,
        side,
        insufficient,
        correct: predicted == p.label,
        reason,
    }
}

/// Accuracy figures over a set of rows.
#[derive(Serialize, Default, Clone)]
struct Stats {
    n: usize,
    correct: usize,
    decided: usize,
    insufficient: usize,
    accuracy: f64,
    /// 95 % Wilson interval of `accuracy`.
    accuracy_wilson95: (f64, f64),
    coverage: f64,
    accuracy_when_sure: f64,
    accuracy_when_sure_wilson95: (f64, f64),
}

fn stats<'a>(rows: impl Iterator<Item = &'a Row>) -> Stats {
    let mut s = Stats::default();
    for r in rows {
        s.n += 1;
        s.correct += usize::from(r.correct);
        s.decided += usize::from(r.predicted != Winner::Uncertain);
        s.insufficient += usize::from(r.insufficient);
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.accuracy = ratio(s.correct, s.n);
    s.accuracy_wilson95 = wilson(s.correct, s.n);
    s.coverage = ratio(s.decided, s.n);
    s.accuracy_when_sure = ratio(s.correct, s.decided);
    s.accuracy_when_sure_wilson95 = wilson(s.correct, s.decided);
    s
}

fn per_date(rows: &[Row]) -> BTreeMap<String, Stats> {
    let mut dates: Vec<&str> = rows.iter().map(|r| r.date.as_str()).collect();
    dates.sort();
    dates.dedup();
    dates
        .into_iter()
        .map(|d| (d.to_string(), stats(rows.iter().filter(|r| r.date == d))))
        .collect()
}

/// A confidence bin of the reliability table.
#[derive(Serialize, Clone)]
struct Bin {
    from: f32,
    to: f32,
    n: usize,
    mean_confidence: f64,
    accuracy: f64,
}

/// Point of the accuracy-coverage curve: verdicts below `threshold` become uncertain.
#[derive(Serialize, Clone)]
struct CurvePoint {
    threshold: f32,
    coverage: f64,
    accuracy_when_sure: f64,
    accuracy: f64,
}

#[derive(Serialize, Clone)]
struct Calib {
    reliability: Vec<Bin>,
    /// Expected calibration error over the verdicts that gave a side.
    ece: f64,
    curve: Vec<CurvePoint>,
}

fn calibration(rows: &[Row]) -> Calib {
    let sided: Vec<&Row> = rows
        .iter()
        .filter(|r| r.side != Winner::Uncertain)
        .collect();
    let edges = [0.5f32, 0.6, 0.7, 0.8, 0.9, 1.0001];
    let mut reliability = Vec::new();
    let mut ece = 0.0;
    for w in edges.windows(2) {
        let inb: Vec<&&Row> = sided
            .iter()
            .filter(|r| r.confidence >= w[0] && r.confidence < w[1])
            .collect();
        if inb.is_empty() {
            continue;
        }
        let n = inb.len();
        let mc = inb.iter().map(|r| f64::from(r.confidence)).sum::<f64>() / n as f64;
        let acc = inb.iter().filter(|r| r.side == r.label).count() as f64 / n as f64;
        ece += n as f64 / sided.len().max(1) as f64 * (acc - mc).abs();
        reliability.push(Bin {
            from: w[0],
            to: w[1].min(1.0),
            n,
            mean_confidence: mc,
            accuracy: acc,
        });
    }
    let mut thresholds: Vec<f32> = (10..=19).map(|i| i as f32 * 0.05).collect();
    thresholds.extend(sided.iter().map(|r| r.confidence));
    thresholds.sort_by(f32::total_cmp);
    thresholds.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    let curve = thresholds
        .into_iter()
        .map(|t| {
            let kept: Vec<&&Row> = sided.iter().filter(|r| r.confidence >= t).collect();
            let ok = kept.iter().filter(|r| r.side == r.label).count();
            CurvePoint {
                threshold: t,
                coverage: kept.len() as f64 / rows.len().max(1) as f64,
                accuracy_when_sure: if kept.is_empty() {
                    0.0
                } else {
                    ok as f64 / kept.len() as f64
                },
                accuracy: ok as f64 / rows.len().max(1) as f64,
            }
        })
        .collect();
    Calib {
        reliability,
        ece,
        curve,
    }
}

#[derive(Serialize)]
struct Block {
    overall: Stats,
    per_date: BTreeMap<String, Stats>,
    calibration: Calib,
}

fn block(rows: &[Row]) -> Block {
    Block {
        overall: stats(rows.iter()),
        per_date: per_date(rows),
        calibration: calibration(rows),
    }
}

#[derive(Serialize)]
struct CvReport {
    /// Each date decided by a model trained (with its own inner LODO) on the other dates.
    #[serde(flatten)]
    block: Block,
    rows: Vec<Row>,
    /// Per held-out date: the form kept and its tolerances.
    folds: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Comparison {
    other: String,
    /// Phrases where the two verdicts differ: (name, label, this, other).
    differ: Vec<(String, Winner, Winner, Winner)>,
    /// This right, other wrong.
    only_this_right: usize,
    /// Other right, this wrong.
    only_other_right: usize,
    /// Exact two-sided McNemar (sign test) p-value on the discordant pairs.
    p_value: f64,
    this: Stats,
    other_stats: Stats,
}

#[derive(Serialize)]
struct Report {
    model: String,
    rows: Vec<Row>,
    duplicates: Vec<(String, String)>,
    #[serde(flatten)]
    block: Block,
    /// `confusion[label][predicted]` = count.
    confusion: BTreeMap<String, BTreeMap<String, usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cv: Option<CvReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compare: Option<Comparison>,
}

/// Outer leave-one-date-out: the trainer is re-run on each fold's training phrases.
fn cross_validate(phrases: &[&Phrase], base: Params, min_confidence: Option<f32>) -> CvReport {
    let mut dates: Vec<&str> = phrases.iter().map(|p| p.date.as_str()).collect();
    dates.sort();
    dates.dedup();
    let mut rows = Vec::new();
    let mut folds = BTreeMap::new();
    for d in dates {
        let tr: Vec<&Phrase> = phrases.iter().copied().filter(|p| p.date != d).collect();
        let (mut m, _) = train(&examples(&tr, &base), base, min_confidence.unwrap_or(0.0));
        if let Some(t) = min_confidence {
            m.min_confidence = t;
        }
        folds.insert(
            d.to_string(),
            serde_json::json!({"kind": m.kind, "params": m.params, "calibration": m.calibration.per_rule}),
        );
        rows.extend(
            phrases
                .iter()
                .filter(|p| p.date == d)
                .map(|p| row_for(p, &m)),
        );
    }
    CvReport {
        block: block(&rows),
        rows,
        folds,
    }
}

fn compare(rows: &[Row], other_rows: &[Row], other: String) -> Comparison {
    let mut differ = Vec::new();
    let (mut b, mut c) = (0, 0);
    for (a, o) in rows.iter().zip(other_rows) {
        if a.predicted != o.predicted {
            differ.push((a.name.clone(), a.label, a.predicted, o.predicted));
        }
        b += usize::from(a.correct && !o.correct);
        c += usize::from(!a.correct && o.correct);
    }
    Comparison {
        other,
        differ,
        only_this_right: b,
        only_other_right: c,
        p_value: mcnemar_p(b, c),
        this: stats(rows.iter()),
        other_stats: stats(other_rows.iter()),
    }
}

/// `confusion[label][predicted]` = count.
fn confusion(rows: &[Row]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in rows {
        *out.entry(r.label.name().to_string())
            .or_default()
            .entry(r.predicted.name().to_string())
            .or_default() += 1;
    }
    out
}

fn print_confusion(confusion: &BTreeMap<String, BTreeMap<String, usize>>) {
    println!("\nconfusion (rows: human label, columns: verdict)");
    println!("{:<8} {:>6} {:>6} {:>10}", "", "left", "right", "uncertain");
    for (label, cols) in confusion {
        let g = |k: &str| cols.get(k).copied().unwrap_or(0);
        println!(
            "{label:<8} {:>6} {:>6} {:>10}",
            g("left"),
            g("right"),
            g("uncertain")
        );
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<28} {:>7} {:>9} {:>9} {:>5} {:>4}  reason",
        "phrase", "fps", "label", "verdict", "conf", "ok"
    );
    for r in rows {
        println!(
            "{:<28} {:>3}{:<4} {:>9} {:>9} {:>5.2} {:>4}  {}{}",
            r.name,
            r.fps,
            match r.fps_source {
                "inferred" => "",
                "flag" => " (f)",
                "recorded" => " (r)",
                _ => " (n)",
            },
            r.label.name(),
            r.predicted.name(),
            r.confidence,
            if r.correct { "yes" } else { "NO" },
            if r.insufficient {
                "[insufficient evidence] "
            } else {
                ""
            },
            r.reason
        );
    }
}

/// `referee evaluate` over recordings: the live verdicts against the stored calls.
#[derive(Serialize)]
struct RecordingsReport {
    evaluated: &'static str,
    #[serde(flatten)]
    loaded: super::evaluate_recordings::Loaded,
    #[serde(flatten)]
    block: Block,
    confusion: BTreeMap<String, BTreeMap<String, usize>>,
}

fn run_recordings(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.model.is_none()
            && args.compare.is_none()
            && !args.cv
            && args.fps.is_none()
            && args.speed_window_s.is_none(),
        "recordings are scored on the verdicts the daemon decided live: --model, --compare, \
         --cv, --fps and --speed-window-s apply to phrase folders only"
    );
    let mut loaded = super::evaluate_recordings::load(&args.dir)?;
    if let Some(t) = args.min_confidence {
        anyhow::ensure!(
            (0.0..=1.0).contains(&t),
            "--min-confidence must be within 0-1"
        );
        for r in &mut loaded.rows {
            if r.confidence < t {
                r.predicted = Winner::Uncertain;
                r.correct = false;
            }
        }
    }
    let report = RecordingsReport {
        evaluated: "the verdict each recording holds (decided live by the daemon)",
        block: block(&loaded.rows),
        confusion: confusion(&loaded.rows),
        loaded,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_rows(&report.loaded.rows);
    println!("(fps (r): as recorded; verdicts: as decided live by the daemon)");
    let l = &report.loaded;
    for (name, why) in &l.skipped {
        println!("skipped {name}: {why}");
    }
    println!(
        "\n{} recordings: {} labelled, {} no-touch calls (not a side), {} unlabelled, {} skipped",
        l.found,
        l.rows.len(),
        l.no_touch.len(),
        l.unlabelled.len(),
        l.skipped.len()
    );
    println!();
    print_block(&report.block);
    print_confusion(&report.confusion);
    Ok(())
}

fn line(label: &str, s: &Stats) {
    println!(
        "{label:<12} n={:<4} accuracy {:.3} ({}/{}, 95% CI {:.3}-{:.3})  coverage {:.3}  \
         accuracy-when-sure {:.3}  insufficient {}",
        s.n,
        s.accuracy,
        s.correct,
        s.n,
        s.accuracy_wilson95.0,
        s.accuracy_wilson95.1,
        s.coverage,
        s.accuracy_when_sure,
        s.insufficient
    )
}

fn print_block(b: &Block) {
    line("overall", &b.overall);
    for (d, s) in &b.per_date {
        line(d, s);
    }
    println!("reliability (verdicts that give a side):");
    println!(
        "  {:<11} {:>4} {:>10} {:>9}",
        "confidence", "n", "mean conf", "accuracy"
    );
    for r in &b.calibration.reliability {
        println!(
            "  {:.2}-{:.2}   {:>4} {:>10.3} {:>9.3}",
            r.from, r.to, r.n, r.mean_confidence, r.accuracy
        );
    }
    println!("  expected calibration error {:.3}", b.calibration.ece);
    println!("accuracy-coverage (uncertain below the threshold):");
    for p in &b.calibration.curve {
        println!(
            "  threshold {:.3}: coverage {:.3}  accuracy-when-sure {:.3}  accuracy {:.3}",
            p.threshold, p.coverage, p.accuracy_when_sure, p.accuracy
        );
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.recordings || super::evaluate_recordings::holds_recordings(&args.dir) {
        return run_recordings(&args);
    }
    let (mut model, model_name) = resolve_model(args.model.as_deref())?;
    if let Some(t) = args.min_confidence {
        anyhow::ensure!(
            (0.0..=1.0).contains(&t),
            "--min-confidence must be within 0-1"
        );
        model.min_confidence = t;
    }
    let mut cv_base = model.params;
    if let Some(w) = args.speed_window_s {
        anyhow::ensure!(
            w.is_finite() && w > 0.0,
            "--speed-window-s must be positive"
        );
        cv_base = Params {
            speed_window_s: Some(w),
            ..DEFAULT_PARAMS
        };
    }
    let all = load_phrases(std::slice::from_ref(&args.dir), args.fps)?;
    let duplicates: Vec<(String, String)> = all
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.duplicate_of.clone()?)))
        .collect();
    let phrases: Vec<&Phrase> = all.iter().filter(|p| p.duplicate_of.is_none()).collect();
    let rows: Vec<Row> = phrases.iter().map(|p| row_for(p, &model)).collect();
    let confusion = confusion(&rows);
    let compare = match &args.compare {
        None => None,
        Some(o) => {
            let mut m2 = if o == "default" {
                Model::default()
            } else {
                Model::load(Path::new(o))?
            };
            if let Some(t) = args.min_confidence {
                m2.min_confidence = t;
            }
            let other_rows: Vec<Row> = phrases.iter().map(|p| row_for(p, &m2)).collect();
            Some(compare(&rows, &other_rows, o.clone()))
        }
    };
    let report = Report {
        model: model_name,
        block: block(&rows),
        confusion,
        cv: args
            .cv
            .then(|| cross_validate(&phrases, cv_base, args.min_confidence)),
        duplicates,
        compare,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_rows(&report.rows);
    println!("(fps: inferred from the log's span and the row count; (n) none fits, nominal 15; (f) --fps)");
    println!("\nmodel: {}", report.model);
    for (d, k) in &report.duplicates {
        println!("duplicate: {d} holds the same phrase as {k}; counted once");
    }
    println!();
    print_block(&report.block);
    print_confusion(&report.confusion);
    if let Some(cv) = &report.cv {
        println!("\nleave-one-date-out cross-validation (the trainer re-run without each date):");
        print_block(&cv.block);
        println!("per fold:");
        for (d, f) in &cv.folds {
            println!("  without {d}: {} {}", f["kind"], f["params"]);
        }
    }
    if let Some(c) = &report.compare {
        println!(
            "\npaired comparison with {} on the same {} phrases:",
            c.other, c.this.n
        );
        line("this", &c.this);
        line("other", &c.other_stats);
        for (n, l, a, b) in &c.differ {
            println!(
                "  {n:<28} label {:<6} this {:<9} other {}",
                l.name(),
                a.name(),
                b.name()
            );
        }
        println!(
            "  {} differ; only this right {}, only other right {}; McNemar exact p = {:.3}",
            c.differ.len(),
            c.only_this_right,
            c.only_other_right,
            c.p_value
        );
    }
    Ok(())
}
