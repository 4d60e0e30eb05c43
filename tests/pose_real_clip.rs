//! YOLO11n-pose (reference candle path) on the real clip ../shared/data/3809.MP4 (63 frames,
//! 1280x720), decoded by referee_capture's video source: both fencers must be found.
//!
//! "Both fencers" = two detected persons whose mid-hips (confident hip keypoints) lie on
//! opposite halves of the frame. Needs the converted weights (`cargo run --release -- model fetch`).

mod common;

use std::path::Path;

use referee_models::{letterbox_rgb, Person, PoseEstimator, PoseOptions, YoloPose};

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
    let (w, h) = model.input_size();
    let (mut frames, mut both) = (0, 0);
    for (fw, fh, rgb) in common::rgb_frames(clip) {
        let prepared = letterbox_rgb(&rgb, fw, fh, w, h);
        let persons = model
            .estimate(std::slice::from_ref(&prepared))
            .expect("estimate");
        // coordinates are in source-frame pixels: every box must lie (roughly) inside the frame
        for p in &persons[0] {
            assert!(
                p.bbox[0] > -20.0 && p.bbox[2] < fw as f32 + 20.0,
                "box {:?}",
                p.bbox
            );
            assert!(
                p.bbox[1] > -20.0 && p.bbox[3] < fh as f32 + 20.0,
                "box {:?}",
                p.bbox
            );
        }
        if both_fencers(&persons[0], fw as f32) {
            both += 1;
        }
        frames += 1;
    }
    (frames, both)
}

#[test]
fn both_fencers_found_in_most_frames_at_640x384_and_1280x736() {
    let Some(clip) = referee_test_support::require_shared(
        referee_test_support::SAMPLE_CLIP,
        "counting both fencers on the sample clip",
    ) else {
        return;
    };
    let weights = common::weights();
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
