//! `referee bench pose`: milliseconds per frame of pose inference on real frames.
//!
//! Frames come from the sample clip (`../shared/data/3809.MP4`, or `--video`) when it can be
//! decoded, else from a deterministic synthetic image. Only the reference (plain candle) path
//! exists for now: it prints `{"size": "640x384", "reference_ms": ...}` per size.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use referee_models::{letterbox_rgb, PoseEstimator, PoseOptions, PreparedFrame, YoloPose};

use crate::cmd::pose::{frame_rgb, parse_size};

/// Arguments of this benchmark.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model input size WxH; default: both 640x384 and 1280x736.
    #[arg(long, value_parser = parse_size)]
    size: Vec<(usize, usize)>,
    /// Frames timed per size (after one warm-up frame).
    #[arg(long, default_value_t = 10)]
    frames: usize,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
    /// Converted weights (default: the cache's yolo11n-pose.safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Video to take frames from (default: the shared sample clip when present).
    #[arg(long)]
    video: Option<PathBuf>,
}

/// The shared sample clip: `$REFEREE_SHARED_DIR/data/3809.MP4`, else `../shared/data/3809.MP4`
/// next to the first ancestor of the current directory that holds Cargo.lock.
pub fn default_clip() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("REFEREE_SHARED_DIR") {
        let p = PathBuf::from(d).join("data").join("3809.MP4");
        return p.exists().then_some(p);
    }
    let mut dir = std::env::current_dir().ok()?;
    loop {
        if dir.join("Cargo.lock").exists() {
            let p = dir.join("..").join("shared").join("data").join("3809.MP4");
            return p.exists().then_some(p);
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// Up to `n` RGB frames of the video, or None when it cannot be opened/decoded.
fn clip_frames(path: &std::path::Path, n: usize) -> Option<Vec<(usize, usize, Vec<u8>)>> {
    let mut src = match referee_capture::source::open_video(path) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the clip; using a synthetic frame");
            return None;
        }
    };
    let mut out = Vec::new();
    while out.len() < n {
        match src.next_frame() {
            Ok(Some(f)) => out.push(frame_rgb(&f).ok()?),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "clip decoding failed; using a synthetic frame");
                return None;
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A deterministic 1280x720 image: gradients plus two bright upright figures.
fn synthetic_frame() -> (usize, usize, Vec<u8>) {
    let (w, h) = (1280usize, 720usize);
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) * 3;
            let fig = |cx: f32| {
                ((x as f32 - cx) / 40.0).powi(2) + ((y as f32 - 400.0) / 180.0).powi(2) < 1.0
            };
            let v = if fig(420.0) || fig(860.0) {
                [230, 220, 210]
            } else {
                [
                    (x * 200 / w) as u8,
                    (y * 180 / h) as u8,
                    ((x + y) % 97 + 60) as u8,
                ]
            };
            rgb[i..i + 3].copy_from_slice(&v);
        }
    }
    (w, h, rgb)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let weights = args
        .weights
        .clone()
        .unwrap_or_else(referee_models::default_weights_path);
    let sizes = if args.size.is_empty() {
        vec![(640, 384), (1280, 736)]
    } else {
        args.size.clone()
    };
    let frames_wanted = args.frames.max(1);
    let clip = args.video.clone().or_else(default_clip);
    let (source, raw_frames) = match clip
        .as_deref()
        .and_then(|p| clip_frames(p, frames_wanted + 1).map(|f| (p, f)))
    {
        Some((p, f)) => (p.display().to_string(), f),
        None => ("synthetic".to_string(), vec![synthetic_frame()]),
    };
    for (w, h) in sizes {
        let opts = PoseOptions {
            input_width: w,
            input_height: h,
            ..PoseOptions::default()
        };
        let mut model = YoloPose::load(&weights, opts)?;
        let prepared: Vec<PreparedFrame> = raw_frames
            .iter()
            .map(|(fw, fh, rgb)| letterbox_rgb(rgb, *fw, *fh, w, h))
            .collect();
        // warm-up
        model
            .estimate(std::slice::from_ref(&prepared[0]))
            .context("warm-up")?;
        let mut total = 0.0f64;
        let mut persons = 0usize;
        for i in 0..frames_wanted {
            let f = &prepared[(i + 1) % prepared.len()];
            let t0 = Instant::now();
            let out = model.estimate(std::slice::from_ref(f))?;
            total += t0.elapsed().as_secs_f64();
            persons += out.iter().map(Vec::len).sum::<usize>();
        }
        let ms = total * 1000.0 / frames_wanted as f64;
        let mean_persons = persons as f64 / frames_wanted as f64;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "size": format!("{w}x{h}"),
                    "reference_ms": (ms * 100.0).round() / 100.0,
                    "frames": frames_wanted,
                    "source": source,
                    "persons_per_frame": (mean_persons * 100.0).round() / 100.0,
                    "model": model.net().describe(),
                })
            );
        } else {
            println!(
                "pose {w}x{h}: reference {ms:.1} ms/frame over {frames_wanted} frames of {source} ({mean_persons:.2} persons/frame, {})",
                model.net().describe()
            );
        }
    }
    Ok(())
}
