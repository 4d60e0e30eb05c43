//! `referee analyze`: decide one phrase offline from its signal log and a keypoints workbook.
//!
//! It reads exactly the two files it is given: never a label or any other file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use referee_rules::{signal, workbook, Decision, Model, PhraseAnalyzer};

/// Arguments of `referee analyze`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scoring box's signal log for the phrase (signal.txt).
    #[arg(long)]
    pub signal: PathBuf,
    /// The old pipeline's keypoints workbook (sheets left_x, left_y, right_x, right_y).
    #[arg(long, conflicts_with = "video")]
    pub keypoints: Option<PathBuf>,
    /// A video of the phrase (MP4/H.264, or any format ffmpeg reads): runs the daemon's whole
    /// pipeline (decode, undistort, pose, tracking, referee) in this process, and writes the
    /// artifacts to the output directory (REFEREE_OUTPUT_DIR, default ./referee-output).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Frame rate of the keypoints (frame i is at i / fps seconds from the phrase start).
    /// Default: inferred from the workbook's row count and the log (15 or 30 fps).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Right-of-way model file (default: config `referee.model` / REFEREE_MODEL, else the
    /// shipped default).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses the log, reads the workbook, pushes every frame and decides with `model`.
pub fn analyze_files(
    signal_path: &Path,
    keypoints: &Path,
    fps: Option<f64>,
    model: &Model,
) -> anyhow::Result<Decision> {
    let (timeline, analyzer) = load(signal_path, keypoints, fps)?;
    Ok(analyzer.decide_model(&timeline, model))
}

/// Parses the log and feeds the workbook's frames to a fresh analyzer (no decision yet).
pub fn load(
    signal_path: &Path,
    keypoints: &Path,
    fps: Option<f64>,
) -> anyhow::Result<(signal::Timeline, PhraseAnalyzer)> {
    let text = std::fs::read_to_string(signal_path)
        .with_context(|| format!("cannot read signal log {}", signal_path.display()))?;
    let timeline = signal::parse_signal(&text)
        .with_context(|| format!("invalid signal log {}", signal_path.display()))?;
    let mut frames = workbook::read_workbook(keypoints, fps.unwrap_or(1.0))?;
    let fps = match fps {
        Some(f) => f,
        None => {
            let f = workbook::infer_fps(frames.len(), &timeline).unwrap_or(15.0);
            for fr in &mut frames {
                fr.t = fr.frame as f64 / f;
            }
            tracing::debug!(
                fps = f,
                frames = frames.len(),
                "inferred the workbook's frame rate"
            );
            f
        }
    };
    let mut analyzer = PhraseAnalyzer::new(fps);
    for f in &frames {
        analyzer.push(f);
    }
    Ok((timeline, analyzer))
}

/// Prints a decision for people.
pub fn print_human(d: &Decision) {
    println!(
        "winner: {}  (confidence {:.2})",
        d.winner.name(),
        d.confidence
    );
    println!("reason: {}", d.reason);
    if !d.evidence.is_empty() {
        println!("evidence:");
        for e in &d.evidence {
            println!("  frame {:>4}  t={:6.3}s  {}", e.frame, e.t, e.what);
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(video) = args.video.as_deref() {
        let settings = super::load_settings(None, &[])?;
        let verdict = super::analyze_video::analyze_video(video, &args.signal, &settings)?;
        if args.json {
            println!("{}", verdict.detail_json);
        } else {
            super::demo::print_verdict(&verdict);
        }
        return Ok(());
    }
    let Some(keypoints) = args.keypoints.as_deref() else {
        anyhow::bail!(
            "nothing to analyse: give --keypoints K.xlsx (the old pipeline's keypoints workbook) \
             or --video V, together with --signal"
        );
    };
    let (model, _) = super::evaluate::resolve_model(args.model.as_deref())?;
    let decision = analyze_files(&args.signal, keypoints, args.fps, &model)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        print_human(&decision);
    }
    Ok(())
}
