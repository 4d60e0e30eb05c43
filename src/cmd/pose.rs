//! `referee pose <video|image>`: pose keypoints for every frame, in source-frame pixels.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use referee_models::{letterbox_rgb, Person, PoseEstimator, PoseOptions, YoloPose};

/// Arguments of `referee pose`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A JPEG/PNG image or a video file (MP4/H.264).
    input: PathBuf,
    /// Model input size WxH (multiples of 32), e.g. 640x384 or 1280x736.
    #[arg(long, default_value = "640x384", value_parser = parse_size)]
    size: (usize, usize),
    /// Print one JSON object per frame (JSON lines) instead of a short summary line.
    #[arg(long)]
    json: bool,
    /// Converted weights (default: the cache's yolo11n-pose.safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Minimum person score.
    #[arg(long, default_value_t = 0.25)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.7)]
    iou: f32,
}

/// Parses `WxH` into (width, height): a pose network input size, both multiples of 32
/// (the rule of `pose.size`, [`referee_config::parse_pose_size`]).
pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = referee_config::parse_pose_size(s)?;
    Ok((w as usize, h as usize))
}

/// One frame's persons as the JSON object printed by `referee pose --json`.
pub fn frame_json(frame: usize, persons: &[Person]) -> serde_json::Value {
    let r = |v: f32| (v as f64 * 100.0).round() / 100.0;
    let r4 = |v: f32| (v as f64 * 10000.0).round() / 10000.0;
    serde_json::json!({
        "frame": frame,
        "persons": persons.iter().map(|p| serde_json::json!({
            "score": r4(p.score),
            "box": p.bbox.iter().map(|&v| r(v)).collect::<Vec<_>>(),
            "keypoints": p.keypoints.iter().map(|k| [r(k[0]), r(k[1]), r4(k[2])]).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn is_image_path(p: &Path) -> bool {
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    matches!(ext.as_str(), "jpg" | "jpeg" | "png")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let weights = args
        .weights
        .clone()
        .unwrap_or_else(referee_models::default_weights_path);
    let opts = PoseOptions {
        input_width: args.size.0,
        input_height: args.size.1,
        conf_threshold: args.conf,
        iou_threshold: args.iou,
    };
    let mut model = YoloPose::load(&weights, opts)?;
    tracing::info!(model = %model.net().describe(), "pose model loaded");
    let mut emit = |n: usize, persons: &[Person]| {
        if args.json {
            println!("{}", frame_json(n, persons));
        } else {
            let scores: Vec<String> = persons.iter().map(|p| format!("{:.2}", p.score)).collect();
            println!(
                "frame {n}: {} person(s) [{}]",
                persons.len(),
                scores.join(", ")
            );
        }
    };
    let mut head = [0u8; 8];
    let n = std::fs::File::open(&args.input)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    if is_image_path(&args.input) || referee_models::image::is_image(&head[..n]) {
        let img = referee_models::image::load_image(&args.input)?;
        let frame = letterbox_rgb(
            &img.data,
            img.width,
            img.height,
            opts.input_width,
            opts.input_height,
        );
        let out = model.estimate(std::slice::from_ref(&frame))?;
        emit(0, out.first().map(Vec::as_slice).unwrap_or(&[]));
        return Ok(());
    }
    run_video(&args.input, &mut model, &mut emit)
}

/// Decodes a captured frame to packed RGB8 (width, height, bytes).
pub fn frame_rgb(
    frame: &referee_capture::source::CapturedFrame,
) -> anyhow::Result<(usize, usize, Vec<u8>)> {
    use referee_capture::source::FrameData;
    match &frame.data {
        FrameData::Rgb(b) => Ok((frame.width as usize, frame.height as usize, b.clone())),
        FrameData::Jpeg(b) => {
            let img = referee_models::image::decode_image(b)
                .with_context(|| format!("frame {}", frame.index))?;
            Ok((img.width, img.height, img.data))
        }
    }
}

fn run_video(
    path: &Path,
    model: &mut YoloPose,
    emit: &mut dyn FnMut(usize, &[Person]),
) -> anyhow::Result<()> {
    let mut src = referee_capture::source::open_video(path)?;
    let (w, h) = model.input_size();
    let mut n = 0usize;
    while let Some(frame) = src.next_frame()? {
        let (fw, fh, rgb) = frame_rgb(&frame)?;
        let prepared = letterbox_rgb(&rgb, fw, fh, w, h);
        let out = model.estimate(std::slice::from_ref(&prepared))?;
        emit(
            frame.index as usize,
            out.first().map(Vec::as_slice).unwrap_or(&[]),
        );
        n += 1;
    }
    if n == 0 {
        bail!("{}: the video has no frames", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_json_layout() {
        let mut kp = [[0.0f32; 3]; 17];
        kp[11] = [100.123, 200.456, 0.98768];
        let p = Person {
            score: 0.876543,
            bbox: [1.004, 2.0, 30.5, 40.25],
            keypoints: kp,
        };
        let v = frame_json(7, &[p]);
        assert_eq!(v["frame"], 7);
        let person = &v["persons"][0];
        assert_eq!(person["score"], 0.8765);
        assert_eq!(person["box"], serde_json::json!([1.0, 2.0, 30.5, 40.25]));
        assert_eq!(person["keypoints"].as_array().map(Vec::len), Some(17));
        assert_eq!(
            person["keypoints"][11],
            serde_json::json!([100.12, 200.46, 0.9877])
        );
        assert_eq!(frame_json(0, &[])["persons"], serde_json::json!([]));
    }

    #[test]
    fn size_parsing() {
        assert_eq!(parse_size("640x384"), Ok((640, 384)));
        assert_eq!(parse_size("1280X736"), Ok((1280, 736)));
        assert!(parse_size("640x360").is_err());
        assert!(parse_size("640").is_err());
        assert!(parse_size("0x32").is_err());
    }
}
