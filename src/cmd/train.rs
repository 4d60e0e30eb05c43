//! `referee train DIR... --out MODEL`: fit the right-of-way model from labelled phrase folders.
//!
//! Reads the folders as `referee evaluate` does (duplicates counted once, phrases without enough
//! evidence set aside and listed), fits the rule tolerances, chooses between the rules and a
//! mirror-symmetric logistic form and calibrates the confidences, all by leave-one-date-out
//! inside the given phrases, and writes a versioned JSON model file with its own report.

use std::path::PathBuf;

use anyhow::Context;
use referee_rules::model::train;
use referee_rules::{Params, DEFAULT_PARAMS};

use super::evaluate::{examples, load_phrases, Phrase};

/// Arguments of `referee train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folders of phrase folders (or phrase folders) with signal.txt, keypoints.xlsx, label.json.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to write the model file (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Frame rate of the keypoints (default: inferred per phrase).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Measure the advance-run speed over this fixed time window (± seconds, the same at any
    /// frame rate) instead of the original frame-based one.
    #[arg(long)]
    pub speed_window_s: Option<f64>,
    /// Verdicts below this confidence become uncertain (stored in the model file).
    #[arg(long, default_value_t = 0.0)]
    pub min_confidence: f32,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.min_confidence),
        "--min-confidence must be within 0-1"
    );
    let all = load_phrases(&args.dirs, args.fps)?;
    let refs: Vec<&Phrase> = all.iter().collect();
    if let Some(w) = args.speed_window_s {
        anyhow::ensure!(
            w.is_finite() && w > 0.0,
            "--speed-window-s must be positive"
        );
    }
    let base = Params {
        speed_window_s: args.speed_window_s,
        ..DEFAULT_PARAMS
    };
    let ex = examples(&refs, &base);
    anyhow::ensure!(
        !ex.is_empty(),
        "no phrase with measurable features to train on"
    );
    let (mut model, report) = train(&ex, base, args.min_confidence);
    if let Some(t) = model.training.as_mut() {
        t.duplicates = all
            .iter()
            .filter_map(|p| Some(format!("{} -> {}", p.name, p.duplicate_of.as_ref()?)))
            .collect();
        t.insufficient = all
            .iter()
            .filter(|p| p.duplicate_of.is_none() && p.features(&base).is_none())
            .map(|p| p.name.clone())
            .collect();
    }
    std::fs::write(&args.out, model.to_json())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let t = model.training.as_ref().expect("training summary");
    println!(
        "trained on {} phrases ({} left, {} right) from {} dates; {} duplicates skipped, {} with \
         insufficient evidence set aside",
        t.phrases,
        t.left,
        t.right,
        t.dates.len(),
        t.duplicates.len(),
        t.insufficient.len()
    );
    for (name, r) in [("rules", &report.rules), ("logistic", &report.logistic)] {
        println!(
            "  inner leave-one-date-out, {name:<8}: {}/{} = {:.3} (95% CI {:.3}-{:.3})",
            r.correct, r.n, r.accuracy, r.wilson95.0, r.wilson95.1
        );
    }
    println!(
        "  logistic L2 chosen: {} ({:?})",
        report.l2, report.logistic_by_l2
    );
    println!("  kept: {}", report.kept);
    println!(
        "  params: run_tie_s {:.2}, advance_tie {:.2}",
        model.params.run_tie_s, model.params.advance_tie
    );
    for (r, c) in &model.calibration.per_rule {
        println!(
            "  confidence {r:<14} {:.3} ({}/{} out of fold)",
            c.confidence, c.correct, c.n
        );
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
