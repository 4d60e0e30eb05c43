//! YOLO11n-pose (reference candle path) on the real clip ../shared/data/3809.MP4 (63 frames,
//! 1280x720), decoded by referee_capture's video source: both fencers must be found.
//!
//! "Both fencers" = two detected persons whose mid-hips (confident hip keypoints) lie on
//! opposite halves of the frame. Needs the converted weights (`cargo run --release -- model fetch`).

use std::path::{Path, PathBuf};

use referee_capture::source::{open_video, FrameData};
use referee_models::{letterbox_rgb, Person, PoseEstimator, PoseOptions, YoloPose};

fn workspace_root() -> PathBuf {
    let mut d = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    while !d.join("Cargo.lock").exists() {
        if !d.pop() {
            return PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        }
    }
    d
}

fn clip() -> Option<PathBuf> {
    let shared = std::env::var_os("REFEREE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("..").join("shared"));
    let p = shared.join("data").join("3809.MP4");
    if p.exists() {
        Some(p)
    } else {
        println!("skipped: shared data not found at {}", p.display());
        None
    }
}

fn weights() -> PathBuf {
    let p = std::env::var_os("REFEREE_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(referee_models::default_weights_path);
    assert!(
        p.exists(),
        "pose weights not found at {}: run `cargo run --release -- model fetch` first",
        p.display()
    );
    p
}

/// Mid-hip x of a person when both hips are confident.
fn mid_hip_x(p: &Person) -> Option<f32> {
    let (l, r) = (p.keypoints[11], p.keypoints[12]);
    (l[2] > 0.5 && r[2] > 0.5).then(|| (l[0] + r[0]) / 2.0)
}

fn both_fencers(persons: &[Person], frame_w: f32) -> bool {
    let xs: Vec<f32> = persons.iter().filter_map(mid_hip_x).collect();
    xs.iter().any(|&x| x < frame_w / 2.0) && xs.iter().any(|&x| x >= frame_w / 2.0)
}

fn count_both(clip: &Path, model: &mut YoloPose) -> (usize, usize) {
    let mut src = open_video(clip).expect("open clip");
    let (w, h) = model.input_size();
    let (mut frames, mut both) = (0, 0);
    while let Some(f) = src.next_frame().expect("decode frame") {
        let rgb = match &f.data {
            FrameData::Rgb(b) => b.clone(),
            FrameData::Jpeg(b) => referee_models::image::decode_jpeg(b).expect("jpeg").data,
        };
        let prepared = letterbox_rgb(&rgb, f.width as usize, f.height as usize, w, h);
        let persons = model
            .estimate(std::slice::from_ref(&prepared))
            .expect("estimate");
        // coordinates are in source-frame pixels: every box must lie (roughly) inside the frame
        for p in &persons[0] {
            assert!(
                p.bbox[0] > -20.0 && p.bbox[2] < f.width as f32 + 20.0,
                "box {:?}",
                p.bbox
            );
            assert!(
                p.bbox[1] > -20.0 && p.bbox[3] < f.height as f32 + 20.0,
                "box {:?}",
                p.bbox
            );
        }
        if both_fencers(&persons[0], f.width as f32) {
            both += 1;
        }
        frames += 1;
    }
    (frames, both)
}

#[test]
fn both_fencers_found_in_most_frames_at_640x384_and_1280x736() {
    let Some(clip) = clip() else { return };
    let weights = weights();
    let mut counts = Vec::new();
    for (w, h) in [(640, 384), (1280, 736)] {
        let opts = PoseOptions {
            input_width: w,
            input_height: h,
            ..PoseOptions::default()
        };
        let mut model = YoloPose::load(&weights, opts).unwrap_or_else(|e| panic!("{e}"));
        let (frames, both) = count_both(&clip, &mut model);
        println!("{w}x{h}: both fencers in {both} of {frames} frames");
        assert_eq!(frames, 63, "the clip has 63 frames");
        counts.push(both);
    }
    assert!(
        counts[0] >= 45,
        "640x384: both fencers in only {} of 63 frames",
        counts[0]
    );
    assert!(
        counts[1] >= 45,
        "1280x736: both fencers in only {} of 63 frames",
        counts[1]
    );
}
