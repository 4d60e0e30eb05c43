//! `referee evaluate DIR`: run `analyze` on every labelled phrase folder and report accuracy.
//!
//! Each folder holds `signal.txt`, `keypoints.xlsx` and `label.json` (`{"winner": "left"|"right"}`).
//! The label is read here only, after the decision, to score it. `--cv` re-chooses the
//! right-of-way run tolerance leaving one recording date out at a time and reports that accuracy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use referee_rules::{signal::Timeline, Params, PhraseAnalyzer, Winner, DEFAULT_PARAMS};
use serde::Serialize;

use super::analyze;

/// Arguments of `referee evaluate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder of phrase folders (each with signal.txt, keypoints.xlsx, label.json).
    pub dir: PathBuf,
    /// Frame rate of the keypoints (default: inferred per phrase, 15 or 30 fps).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also report leave-one-date-out cross-validation (the run tolerance re-chosen without the held-out date).
    #[arg(long)]
    pub cv: bool,
}

struct Phrase {
    name: String,
    date: String,
    label: Winner,
    loaded: Result<(Timeline, PhraseAnalyzer), String>,
}

/// One evaluated phrase.
#[derive(Serialize, Clone)]
struct Row {
    name: String,
    date: String,
    label: Winner,
    predicted: Winner,
    confidence: f32,
    correct: bool,
    reason: String,
}

/// Accuracy figures over a set of rows.
#[derive(Serialize, Default, Clone)]
struct Stats {
    n: usize,
    correct: usize,
    decided: usize,
    accuracy: f64,
    coverage: f64,
    accuracy_when_sure: f64,
}

fn stats<'a>(rows: impl Iterator<Item = &'a Row>) -> Stats {
    let mut s = Stats::default();
    for r in rows {
        s.n += 1;
        s.correct += usize::from(r.correct);
        s.decided += usize::from(r.predicted != Winner::Uncertain);
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.accuracy = ratio(s.correct, s.n);
    s.coverage = ratio(s.decided, s.n);
    s.accuracy_when_sure = ratio(s.correct, s.decided);
    s
}

#[derive(Serialize)]
struct Report {
    rows: Vec<Row>,
    overall: Stats,
    per_date: BTreeMap<String, Stats>,
    /// `confusion[label][predicted]` = count.
    confusion: BTreeMap<String, BTreeMap<String, usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cv: Option<CvReport>,
}

#[derive(Serialize)]
struct CvReport {
    /// Leave-one-date-out figures (each date decided with the run tolerance chosen on the other dates).
    overall: Stats,
    per_date: BTreeMap<String, Stats>,
    fold_params: BTreeMap<String, Params>,
    shipped_params: Params,
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

fn phrase_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("signal.txt").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        anyhow::bail!(
            "{} holds no phrase folder (a folder with signal.txt, keypoints.xlsx, label.json)",
            dir.display()
        );
    }
    Ok(dirs)
}

fn row_for(p: &Phrase, w: &Params) -> Row {
    let (predicted, confidence, reason) = match &p.loaded {
        Ok((tl, an)) => {
            let d = an.decide_with(tl, w);
            (d.winner, d.confidence, d.reason)
        }
        Err(e) => (Winner::Uncertain, 0.0, format!("error: {e}")),
    };
    Row {
        name: p.name.clone(),
        date: p.date.clone(),
        label: p.label,
        predicted,
        confidence,
        correct: predicted == p.label,
        reason,
    }
}

fn per_date(rows: &[Row]) -> BTreeMap<String, Stats> {
    let mut dates: Vec<&str> = rows.iter().map(|r| r.date.as_str()).collect();
    dates.dedup();
    dates.sort();
    dates.dedup();
    dates
        .into_iter()
        .map(|d| (d.to_string(), stats(rows.iter().filter(|r| r.date == d))))
        .collect()
}

fn cross_validate(phrases: &[Phrase]) -> CvReport {
    let mut rows = Vec::with_capacity(phrases.len());
    let mut fold_params = BTreeMap::new();
    let mut dates: Vec<&str> = phrases.iter().map(|p| p.date.as_str()).collect();
    dates.sort();
    dates.dedup();
    for date in dates {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for p in phrases.iter().filter(|p| p.date != date) {
            if let Ok((tl, an)) = &p.loaded {
                if let Some(f) = an.decide(tl).features {
                    xs.push(f.vector);
                    ys.push(p.label == Winner::Left);
                }
            }
        }
        let w = Params::fit(&xs, &ys);
        fold_params.insert(date.to_string(), w);
        rows.extend(
            phrases
                .iter()
                .filter(|p| p.date == date)
                .map(|p| row_for(p, &w)),
        );
    }
    CvReport {
        overall: stats(rows.iter()),
        per_date: per_date(&rows),
        fold_params,
        shipped_params: DEFAULT_PARAMS,
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut phrases = Vec::new();
    for dir in phrase_dirs(&args.dir)? {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let date = name
            .get(..8)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or("unknown")
            .to_string();
        let loaded = analyze::load(
            &dir.join("signal.txt"),
            &dir.join("keypoints.xlsx"),
            args.fps,
        )
        .map_err(|e| format!("{e:#}"));
        if let Err(e) = &loaded {
            tracing::warn!(phrase = %name, "cannot analyse: {e}");
        }
        // The label is read only now, after the phrase has been loaded for the decision.
        let label = read_label(&dir)?;
        phrases.push(Phrase {
            name,
            date,
            label,
            loaded,
        });
    }
    let rows: Vec<Row> = phrases
        .iter()
        .map(|p| row_for(p, &DEFAULT_PARAMS))
        .collect();
    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &rows {
        *confusion
            .entry(r.label.name().to_string())
            .or_default()
            .entry(r.predicted.name().to_string())
            .or_default() += 1;
    }
    let report = Report {
        overall: stats(rows.iter()),
        per_date: per_date(&rows),
        confusion,
        cv: args.cv.then(|| cross_validate(&phrases)),
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>5}  reason",
        "phrase", "label", "verdict", "conf", "ok"
    );
    for r in &report.rows {
        println!(
            "{:<28} {:>9} {:>9} {:>9.2} {:>5}  {}",
            r.name,
            r.label.name(),
            r.predicted.name(),
            r.confidence,
            if r.correct { "yes" } else { "NO" },
            r.reason
        );
    }
    let line = |label: &str, s: &Stats| {
        println!(
            "{label:<12} n={:<4} accuracy {:.3} ({}/{})  coverage {:.3}  accuracy-when-sure {:.3}",
            s.n, s.accuracy, s.correct, s.n, s.coverage, s.accuracy_when_sure
        )
    };
    println!();
    line("overall", &report.overall);
    println!("\nconfusion (rows: human label, columns: verdict)");
    println!("{:<8} {:>6} {:>6} {:>10}", "", "left", "right", "uncertain");
    for (label, cols) in &report.confusion {
        let g = |k: &str| cols.get(k).copied().unwrap_or(0);
        println!(
            "{label:<8} {:>6} {:>6} {:>10}",
            g("left"),
            g("right"),
            g("uncertain")
        );
    }
    println!("\nper date (shipped rules):");
    for (d, s) in &report.per_date {
        line(d, s);
    }
    if let Some(cv) = &report.cv {
        println!(
            "\nleave-one-date-out cross-validation (run tolerance re-chosen without the held-out date):"
        );
        line("LODO", &cv.overall);
        for (d, s) in &cv.per_date {
            line(d, s);
        }
        println!("run tolerance chosen per fold (s):");
        for (d, w) in &cv.fold_params {
            println!("  without {d}: {:.2}", w.run_tie_s);
        }
        println!("  shipped: {:.2}", cv.shipped_params.run_tie_s);
    }
    Ok(())
}
