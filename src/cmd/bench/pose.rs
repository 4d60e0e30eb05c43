//! `referee bench pose`: milliseconds per frame of pose inference on real frames, the fast
//! path (`FastYoloPose`) and the reference path (`YoloPose`) on the same frames in one run.
//!
//! Frames come from the sample clip (`../shared/data/3809.MP4`, or `--video`) when it can be
//! decoded, else from a deterministic synthetic image; `--band Y0-Y1` crops them to the piste
//! band before letterboxing. Per size it prints
//! `{"size": "640x384", "fast_ms": .., "reference_ms": .., "speedup": .., "gflops": ..}`:
//! medians over the frames after one warm-up frame per path (mins too), estimate = network +
//! decode + NMS on a prepared frame; `gflops` = FLOPs the fast path executed per frame (counted
//! from the layer shapes, multiply-add = 2; its sparse head computes boxes and keypoints only
//! at anchors above the score threshold, so this is less than the dense network's) / fast
//! median time. Both paths' persons are compared frame by frame (`outputs_match`: same count,
//! boxes and keypoints within 2 source pixels, scores within 0.01): a fast path that drifts
//! from the reference shows here. `--profile` adds the fast path's mean time per stage
//! (backbone / neck / head) and per op kind. The machine's load average is printed with the
//! figures: the engine shares its cores.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use referee_models::fast::{Profile, KIND_NAMES, STAGE_NAMES};
use referee_models::{
    letterbox_rgb, FastYoloPose, Person, PoseEstimator, PoseOptions, PreparedFrame, YoloPose,
};

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
    /// Crop frames to rows Y0-Y1 (the piste band, source pixels) before letterboxing.
    #[arg(long, value_parser = parse_band)]
    band: Option<(usize, usize)>,
    /// Time only the fast path.
    #[arg(long)]
    fast_only: bool,
    /// Print the fast path's time per stage and per op kind.
    #[arg(long)]
    profile: bool,
    /// Threads of the fast path (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Instruction set of the fast path: auto, avx512, avx2 or portable (default: the
    /// REFEREE_POSE_ISA environment variable, else auto = the best this CPU has).
    #[arg(long)]
    isa: Option<String>,
}

fn parse_band(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("band `{s}` must look like 300-780"))?;
    let a: usize = a.trim().parse().map_err(|e| format!("band `{s}`: {e}"))?;
    let b: usize = b.trim().parse().map_err(|e| format!("band `{s}`: {e}"))?;
    if b <= a {
        return Err(format!("band `{s}`: Y1 must be greater than Y0"));
    }
    Ok((a, b))
}

/// Crops rows `y0..y1` (clamped to the frame) of packed RGB.
fn crop_band(
    fw: usize,
    fh: usize,
    rgb: &[u8],
    band: Option<(usize, usize)>,
) -> (usize, Vec<u8>, usize) {
    match band {
        Some((y0, y1)) => {
            let (y0, y1) = (y0.min(fh), y1.min(fh));
            let end = (y1 * fw * 3).min(rgb.len());
            let start = (y0 * fw * 3).min(end);
            (y1 - y0, rgb[start..end].to_vec(), y0)
        }
        None => (fh, rgb.to_vec(), 0),
    }
}

/// Per-frame seconds of `est` over `frames` after one warm-up frame, and the persons found
/// per frame; `each` sees the estimator after every timed frame.
fn time_path<E: PoseEstimator>(
    est: &mut E,
    frames: &[PreparedFrame],
    mut each: impl FnMut(&E),
) -> anyhow::Result<(Vec<f64>, Vec<Vec<Person>>)> {
    est.estimate(std::slice::from_ref(&frames[0]))
        .context("warm-up")?;
    let mut times = Vec::with_capacity(frames.len());
    let mut persons = Vec::with_capacity(frames.len());
    for f in frames {
        let t0 = Instant::now();
        let out = est.estimate(std::slice::from_ref(f))?;
        times.push(t0.elapsed().as_secs_f64());
        persons.extend(out);
        each(est);
    }
    Ok((times, persons))
}

/// Frames whose fast persons match the reference's (same count; each reference person has a
/// fast one with box corners and keypoints within 2 px and scores within 0.01).
fn matching_frames(fast: &[Vec<Person>], reference: &[Vec<Person>]) -> usize {
    let close = |a: &Person, b: &Person| {
        a.bbox
            .iter()
            .zip(&b.bbox)
            .all(|(x, y)| (x - y).abs() <= 2.0)
            && (a.score - b.score).abs() <= 0.01
            && a.keypoints.iter().zip(&b.keypoints).all(|(p, q)| {
                (p[0] - q[0]).abs() <= 2.0
                    && (p[1] - q[1]).abs() <= 2.0
                    && (p[2] - q[2]).abs() <= 0.01
            })
    };
    fast.iter()
        .zip(reference)
        .filter(|(f, r)| f.len() == r.len() && r.iter().all(|p| f.iter().any(|q| close(p, q))))
        .count()
}

/// (median, min) in milliseconds.
fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let med = v.get(v.len() / 2).copied().unwrap_or(0.0);
    (med * 1e3, v.first().copied().unwrap_or(0.0) * 1e3)
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn r2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The shared sample clip (`data/3809.MP4` in [`crate::cmd::shared_dir`]), when present.
pub fn default_clip() -> Option<PathBuf> {
    crate::cmd::shared_dir()
        .map(|d| d.join("data").join("3809.MP4"))
        .filter(|p| p.exists())
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
        .and_then(|p| clip_frames(p, frames_wanted).map(|f| (p, f)))
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
        let prepared: Vec<PreparedFrame> = raw_frames
            .iter()
            .cycle()
            .map(|(fw, fh, rgb)| {
                let (ch, crop, y0) = crop_band(*fw, *fh, rgb, args.band);
                let mut f = letterbox_rgb(&crop, *fw, ch, w, h);
                f.letterbox.offset_y = y0 as f32;
                f
            })
            .take(frames_wanted)
            .collect();
        let load_before = load_avg();
        let isa = args
            .isa
            .clone()
            .or_else(|| std::env::var("REFEREE_POSE_ISA").ok())
            .unwrap_or_default();
        let mut fast = FastYoloPose::load_isa(&weights, opts, &isa)
            .with_context(|| format!("loading {}", weights.display()))?;
        fast.set_threads(args.threads)?;
        let mut prof = Profile::default();
        let (fast_t, fast_persons) = time_path(&mut fast, &prepared, |m| {
            let p = m.last_profile();
            for i in 0..KIND_NAMES.len() {
                prof.kind_s[i] += p.kind_s[i];
                prof.kind_flops[i] = p.kind_flops[i];
            }
            for i in 0..STAGE_NAMES.len() {
                prof.stage_s[i] += p.stage_s[i];
            }
        })?;
        let n = prepared.len() as f64;
        let fast_count: usize = fast_persons.iter().map(Vec::len).sum();
        let (fast_ms, fast_min) = median_min(fast_t);
        let flops = prof.flops();
        let gflops = flops / (fast_ms * 1e-3) / 1e9;
        let reference = if args.fast_only {
            None
        } else {
            let mut model = YoloPose::load(&weights, opts)?;
            let (t, p) = time_path(&mut model, &prepared, |_| {})?;
            let (ms, min) = median_min(t);
            let matching = matching_frames(&fast_persons, &p);
            let count: usize = p.iter().map(Vec::len).sum();
            Some((ms, min, count, model.net().describe(), matching))
        };
        let speedup = reference.as_ref().map(|r| r.0 / fast_ms);
        let load = format!("{load_before} -> {}", load_avg());
        let band = args.band.map(|(a, b)| format!("{a}-{b}"));
        if args.json {
            let mut j = serde_json::json!({
                "size": format!("{w}x{h}"),
                "isa": fast.isa().name(),
                "band": band,
                "fast_ms": r2(fast_ms),
                "fast_min_ms": r2(fast_min),
                "reference_ms": reference.as_ref().map(|r| r2(r.0)),
                "reference_min_ms": reference.as_ref().map(|r| r2(r.1)),
                "speedup": speedup.map(r2),
                "gflops": r2(gflops),
                "network_gflop": (flops / 1e6).round() / 1e3,
                "frames": prepared.len(),
                "source": source,
                "fast_persons_per_frame": r2(fast_count as f64 / n),
                "outputs_match": reference.as_ref().map(|r| format!("{}/{}", r.4, prepared.len())),
                "reference_persons_per_frame": reference.as_ref().map(|r| r2(r.2 as f64 / n)),
                "loadavg": load,
                "threads": if args.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { args.threads },
            });
            if args.profile {
                let stages: serde_json::Map<String, serde_json::Value> = STAGE_NAMES
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.to_string(), r2(prof.stage_s[i] / n * 1e3).into()))
                    .collect();
                let kinds: serde_json::Map<String, serde_json::Value> = KIND_NAMES
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        let ms = prof.kind_s[i] / n * 1e3;
                        (
                            k.to_string(),
                            serde_json::json!({
                                "ms": r2(ms),
                                "gflop": (prof.kind_flops[i] / 1e6).round() / 1e3,
                            }),
                        )
                    })
                    .collect();
                j["profile_ms"] = serde_json::json!({ "stage": stages, "kind": kinds });
            }
            println!("{j}");
        } else {
            println!(
                "pose {w}x{h}{} over {} frames of {source} (load {load}):",
                band.map(|b| format!(" band {b}")).unwrap_or_default(),
                prepared.len()
            );
            println!("  isa       {}", fast.isa());
            println!(
                "  fast      {fast_ms:7.1} ms median, {fast_min:7.1} min  {gflops:5.1} GFLOP/s ({:.2} GFLOP/frame), {:.2} persons/frame",
                flops / 1e9,
                fast_count as f64 / n
            );
            if let Some((ms, min, p, desc, matching)) = &reference {
                println!(
                    "  reference {ms:7.1} ms median, {min:7.1} min  ({:.2} persons/frame, {desc})",
                    *p as f64 / n
                );
                println!(
                    "  outputs   {matching}/{} frames with the same persons on both paths",
                    prepared.len()
                );
                println!("  speedup   {:.1}x", speedup.unwrap_or(0.0));
            }
            if args.profile {
                println!("  fast path, mean ms per frame:");
                for (i, s) in STAGE_NAMES.iter().enumerate() {
                    println!("    {s:<10} {:7.2}", prof.stage_s[i] / n * 1e3);
                }
                for (i, k) in KIND_NAMES.iter().enumerate() {
                    let ms = prof.kind_s[i] / n * 1e3;
                    println!(
                        "    {k:<10} {ms:7.2}  ({:.3} GFLOP)",
                        prof.kind_flops[i] / 1e9
                    );
                }
            }
        }
    }
    Ok(())
}
