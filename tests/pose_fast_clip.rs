//! The fast pose path against the reference on real frames of the shared clip
//! (../shared/data/3809.MP4): same persons after decode, keypoints within a few pixels; and
//! the fast path's sparse head (the default) against its dense head on the same frames.
//!
//! Tolerance: both paths are f32 and differ only in summation order and the vectorised exp,
//! so detections far from the score threshold match; a person whose score sits within 1e-3 of
//! the threshold could flip, so the count may differ only by such borderline persons. Matched
//! persons: |score diff| <= 1e-3, boxes and keypoints within 1 px in source (1920x1080) pixels.
//!
//! The fast path runs once per vector instruction set this CPU has (avx2, avx512; the scalar
//! `portable` level is checked on synthetic inputs in referee-models, it is too slow for
//! these sizes); `REFEREE_POSE_ISA=<level>` runs only that one (portable included).

mod common;

use std::path::Path;

use referee_models::fast::Isa;
use referee_models::{letterbox_rgb, FastYoloPose, Person, PoseEstimator, PoseOptions, YoloPose};

const SCORE_TOL: f32 = 1e-3;
const PX_TOL: f32 = 1.0;

/// Every `step`-th frame of the clip as packed RGB, at most `max` of them.
fn frames(clip: &Path, step: usize, max: usize) -> Vec<(usize, usize, Vec<u8>)> {
    common::rgb_frames(clip).step_by(step).take(max).collect()
}

fn check(got: &[Person], want: &[Person], thr: f32, label: &str) {
    let borderline = |p: &Person| (p.score - thr).abs() <= SCORE_TOL;
    let mut matched = 0;
    for e in want {
        let m = got.iter().find(|g| {
            (g.bbox[0] - e.bbox[0]).abs() <= PX_TOL
                && (g.bbox[1] - e.bbox[1]).abs() <= PX_TOL
                && (g.bbox[2] - e.bbox[2]).abs() <= PX_TOL
                && (g.bbox[3] - e.bbox[3]).abs() <= PX_TOL
        });
        match m {
            Some(g) => {
                matched += 1;
                assert!(
                    (g.score - e.score).abs() <= SCORE_TOL,
                    "{label}: score {} vs {}",
                    g.score,
                    e.score
                );
                for (a, b) in g.keypoints.iter().zip(&e.keypoints) {
                    assert!(
                        (a[0] - b[0]).abs() <= PX_TOL
                            && (a[1] - b[1]).abs() <= PX_TOL
                            && (a[2] - b[2]).abs() <= SCORE_TOL,
                        "{label}: keypoint {a:?} vs {b:?}"
                    );
                }
            }
            None => assert!(
                borderline(e),
                "{label}: reference person {:?} (score {}) not found",
                e.bbox,
                e.score
            ),
        }
    }
    let extra = got.len() - matched;
    assert!(
        extra == 0 || got.iter().filter(|g| borderline(g)).count() >= extra,
        "{label}: {extra} extra persons in the fast path"
    );
}

fn run_size(clip: &Path, w: usize, h: usize, band: Option<(usize, usize, usize)>) {
    let opts = PoseOptions {
        input_width: w,
        input_height: h,
        ..PoseOptions::default()
    };
    let weights = common::weights();
    let mut reference = YoloPose::load(&weights, opts).expect("reference");
    let isas: Vec<Isa> = match std::env::var("REFEREE_POSE_ISA") {
        Ok(v) if !v.trim().is_empty() => vec![Isa::select(&v).expect("REFEREE_POSE_ISA")],
        _ => Isa::available()
            .into_iter()
            .filter(|&i| i >= Isa::Avx2 || Isa::best() == Isa::Portable)
            .collect(),
    };
    let mut fasts: Vec<FastYoloPose> = isas
        .iter()
        .map(|&isa| FastYoloPose::load_on(&weights, opts, isa).expect("fast"))
        .collect();
    // The whole head computed densely: the sparse head (the default) must give the same persons.
    let best = *isas.last().expect("an ISA");
    let mut dense = FastYoloPose::load_on(&weights, opts, best).expect("fast");
    dense.set_sparse_head(false);
    let mut total = 0;
    for (i, (fw, fh, rgb)) in frames(clip, 8, 8).into_iter().enumerate() {
        // band as fractions of the frame height (num/den for its top and bottom)
        let (rgb, fh, y0) = match band {
            Some((top, bottom, den)) => {
                let (y0, y1) = (fh * top / den, fh * bottom / den);
                (rgb[y0 * fw * 3..y1 * fw * 3].to_vec(), y1 - y0, y0)
            }
            None => (rgb, fh, 0),
        };
        let mut frame = letterbox_rgb(&rgb, fw, fh, w, h);
        frame.letterbox.offset_y = y0 as f32;
        let want = reference
            .estimate(std::slice::from_ref(&frame))
            .expect("reference");
        let got_dense = dense.estimate(std::slice::from_ref(&frame)).expect("dense");
        for fast in &mut fasts {
            let isa = fast.isa();
            let got = fast.estimate(std::slice::from_ref(&frame)).expect("fast");
            if isa == best {
                assert_eq!(got[0].len(), got_dense[0].len(), "sparse vs dense head");
                check(
                    &got[0],
                    &got_dense[0],
                    opts.conf_threshold,
                    &format!("{isa} {w}x{h} frame {i} sparse vs dense head"),
                );
            }
            check(
                &got[0],
                &want[0],
                opts.conf_threshold,
                &format!("{isa} {w}x{h} frame {i}"),
            );
        }
        total += want[0].len();
    }
    println!("{w}x{h} band {band:?}: {total} reference persons matched");
    assert!(total > 0, "the clip should contain fencers");
}

#[test]
fn fast_matches_reference_on_clip_frames() {
    let Some(clip) = referee_test_support::require_shared(
        referee_test_support::SAMPLE_CLIP,
        "comparing the fast pose path with the reference on real frames",
    ) else {
        return;
    };
    run_size(&clip, 640, 384, None);
    // The piste band (rows 5/18 .. 13/18 of the frame, 200..520 of the 720p clip) at 640x192.
    run_size(&clip, 640, 192, Some((5, 13, 18)));
    // The large size: its attention spans several GEMM K blocks.
    run_size(&clip, 1280, 736, None);
}
