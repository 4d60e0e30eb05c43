//! The fast path (`FastYoloPose`) against the reference (`YoloNet::forward_raw` / `YoloPose`)
//! on a deterministic synthetic image at several input sizes, and against the committed
//! float64 NumPy test vector.
//!
//! Tolerances (both paths are f32; they differ in summation order, the folded-BN layout and
//! the fast exp of SiLU/softmax, rel. error ~2e-7 per call):
//! - raw output: |fast - reference| <= 0.05 + 1e-3 * |reference| on every value
//!   (pixel coordinates, box sizes, scores, keypoint confidences);
//! - after decode: the same persons (count, order) with boxes and keypoints within 0.5 px and
//!   scores within 1e-3.
//!
//! Each test runs once per instruction set this CPU has (portable, avx2, avx512; see
//! `referee_models::fast::Isa`); `REFEREE_POSE_ISA=avx2` (any `pose.isa` value) runs only
//! that one, which is how CI checks a forced level on a machine that has more.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use referee_models::fast::Isa;
use referee_models::{FastYoloPose, PoseEstimator, PoseOptions, PreparedFrame, YoloNet, YoloPose};

/// The converted weights; converted once from the shared checkpoint when absent (the same
/// as `referee model fetch --from ../shared/models/yolo11n-pose.pt`).
fn weights() -> PathBuf {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = referee_models::default_weights_path();
        let wanted = referee_test_support::weights_path(|| default.clone());
        if wanted == default && !default.exists() {
            let pt = referee_test_support::shared_dir()
                .map(|d| d.join(referee_test_support::SHARED_CHECKPOINT))
                .filter(|p| p.exists());
            if let Some(pt) = pt {
                let opts = referee_models::fetch::FetchOptions {
                    source: referee_models::fetch::Source::Path(pt),
                    ..Default::default()
                };
                referee_models::fetch::fetch(&opts).expect("converting the shared checkpoint");
            }
        }
    });
    common::weights()
}

/// The instruction sets to test: `REFEREE_POSE_ISA` if set, else every one this CPU runs.
fn isas() -> Vec<Isa> {
    match std::env::var("REFEREE_POSE_ISA") {
        Ok(v) if !v.trim().is_empty() => vec![Isa::select(&v).expect("REFEREE_POSE_ISA")],
        _ => Isa::available(),
    }
}

fn load_fast(weights: &std::path::Path, opts: PoseOptions, isa: Isa) -> FastYoloPose {
    let fast = FastYoloPose::load_on(weights, opts, isa).expect("fast");
    assert_eq!(fast.isa(), isa);
    fast
}

const ABS_TOL: f32 = 0.05;
const REL_TOL: f32 = 1e-3;
const PX_TOL: f32 = 0.5;

/// A deterministic image with smooth gradients, stripes and a few blobs (RGB in [0, 1], CHW).
fn synthetic_chw(w: usize, h: usize) -> Vec<f32> {
    let mut chw = vec![0f32; 3 * w * h];
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let blob = |cx: f32, cy: f32, r: f32| {
                let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
                if d < r {
                    1.0 - d / r
                } else {
                    0.0
                }
            };
            let stripes = ((x / 7 + y / 11) % 2) as f32 * 0.2;
            let v = [
                0.3 + 0.5 * fx + stripes * 0.5 + blob(0.3, 0.5, 0.15),
                0.2 + 0.6 * fy + blob(0.7, 0.4, 0.2) * 0.8,
                0.5 + 0.3 * (fx * 12.0).sin() * (fy * 7.0).cos() + stripes,
            ];
            for (c, vc) in v.iter().enumerate() {
                chw[c * w * h + y * w + x] = vc.clamp(0.0, 1.0);
            }
        }
    }
    chw
}

fn compare_raw(got: &[f32], want: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: raw output size");
    let a = want.len() / 56;
    let mut worst = (0f32, 0usize);
    for (i, (&g, &e)) in got.iter().zip(want).enumerate() {
        let err = (g - e).abs();
        assert!(
            err <= ABS_TOL + REL_TOL * e.abs(),
            "{what}: row {} anchor {}: fast {g} vs reference {e} (|diff| {err})",
            i / a,
            i % a
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
    println!(
        "{what}: max |fast - reference| = {} (row {})",
        worst.0,
        worst.1 / a.max(1)
    );
    worst.0
}

#[test]
fn raw_output_matches_reference_at_several_sizes() {
    let weights = weights();
    let net = YoloNet::load(&weights).expect("reference");
    let mut fasts: Vec<FastYoloPose> = isas()
        .into_iter()
        .map(|isa| load_fast(&weights, PoseOptions::default(), isa))
        .collect();
    // 640x384 (default), the piste band 640x192, a wide band 1280x128, odd small ones, and
    // 1280x736, whose attention (920 positions) takes more than one GEMM K block.
    for (w, h) in [
        (640, 384),
        (640, 192),
        (1280, 128),
        (96, 160),
        (1280, 736),
        (224, 96),
    ] {
        let chw = synthetic_chw(w, h);
        let want = net.forward_raw(&chw, w, h).expect("reference forward");
        for fast in &mut fasts {
            let got = fast.forward_raw(&chw, w, h).expect("fast forward").to_vec();
            compare_raw(&got, &want, &format!("{} {w}x{h}", fast.isa()));
        }
    }
    // Running a size again reuses the arena and gives the same result bit for bit.
    let chw = synthetic_chw(96, 160);
    for fast in &mut fasts {
        let a = fast.forward_raw(&chw, 96, 160).expect("again").to_vec();
        let b = fast.forward_raw(&chw, 96, 160).expect("again").to_vec();
        assert_eq!(a, b, "{}", fast.isa());
    }
}

#[test]
fn forced_isa_is_used_or_refused() {
    let weights = weights();
    for isa in Isa::ALL {
        let r = FastYoloPose::load_isa(&weights, PoseOptions::default(), isa.name());
        match r {
            Ok(f) => assert!(isa.supported() && f.isa() == isa),
            Err(e) => assert!(!isa.supported(), "{isa}: {e}"),
        }
    }
    let auto = FastYoloPose::load_isa(&weights, PoseOptions::default(), "auto").expect("auto");
    assert_eq!(auto.isa(), Isa::best());
    assert!(FastYoloPose::load_isa(&weights, PoseOptions::default(), "sse9").is_err());
}

#[test]
fn fast_matches_numpy_test_vector() {
    let data = |n: &str| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("data")
            .join(n)
    };
    let input = std::fs::read(data("pose_vector_input.bin")).expect("input");
    let (h, w) = (96, 160);
    assert_eq!(input.len(), 3 * h * w);
    let chw: Vec<f32> = input.iter().map(|&v| v as f32 / 255.0).collect();
    let expected = common::read_f32(&data("pose_vector_expected.bin"));
    for isa in isas() {
        let mut fast = load_fast(&weights(), PoseOptions::default(), isa);
        let got = fast.forward_raw(&chw, w, h).expect("forward");
        // Same bound as the reference's own test against this vector.
        assert_eq!(got.len(), expected.len());
        for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                (g - e).abs() <= 0.02 + 1e-3 * e.abs(),
                "{isa} value {i}: fast {g} vs numpy {e}"
            );
        }
    }
}

#[test]
fn persons_match_reference_after_decode() {
    let weights = weights();
    // A low threshold so that the synthetic image yields candidates to compare.
    let opts = PoseOptions {
        input_width: 640,
        input_height: 384,
        conf_threshold: 0.01,
        iou_threshold: 0.7,
    };
    let mut reference = YoloPose::load(&weights, opts).expect("reference");
    let frame = PreparedFrame {
        width: 640,
        height: 384,
        chw: synthetic_chw(640, 384),
        letterbox: referee_models::Letterbox {
            scale: 0.5,
            pad_x: 0.0,
            pad_y: 12.0,
            offset_x: 10.0,
            offset_y: 0.0,
        },
    };
    let want = reference
        .estimate(std::slice::from_ref(&frame))
        .expect("reference");
    for isa in isas() {
        let mut fast = load_fast(&weights, opts, isa);
        assert_eq!(fast.input_size(), (640, 384));
        let got = fast.estimate(std::slice::from_ref(&frame)).expect("fast");
        println!("{isa}: {} persons (reference)", want[0].len());
        check_persons(&got[0], &want[0]);
    }
}

fn check_persons(got: &[referee_models::Person], want: &[referee_models::Person]) {
    assert_eq!(got.len(), want.len(), "person count");
    for (g, e) in got.iter().zip(want) {
        assert!(
            (g.score - e.score).abs() < 1e-3,
            "score {} vs {}",
            g.score,
            e.score
        );
        // source pixels = model pixels / 0.5: allow PX_TOL in source pixels
        for (a, b) in g.bbox.iter().zip(&e.bbox) {
            assert!((a - b).abs() <= PX_TOL, "bbox {:?} vs {:?}", g.bbox, e.bbox);
        }
        for (a, b) in g.keypoints.iter().zip(&e.keypoints) {
            assert!(
                (a[0] - b[0]).abs() <= PX_TOL && (a[1] - b[1]).abs() <= PX_TOL,
                "kp {a:?} vs {b:?}"
            );
            assert!((a[2] - b[2]).abs() < 1e-3);
        }
    }
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let mut fast = FastYoloPose::load(&weights(), PoseOptions::default()).expect("fast");
    assert!(fast.forward_raw(&[0.0; 3 * 100 * 64], 100, 64).is_err());
    assert!(fast.forward_raw(&[0.0; 10], 64, 64).is_err());
    assert!(fast.set_input_size(0, 32).is_err());
    let opts = PoseOptions {
        input_width: 630,
        ..PoseOptions::default()
    };
    assert!(FastYoloPose::load(&weights(), opts).is_err());
    let missing = std::env::temp_dir().join("no-such-weights.safetensors");
    assert!(matches!(
        FastYoloPose::load(&missing, PoseOptions::default()),
        Err(referee_models::ModelError::WeightsMissing(_))
    ));
}

#[test]
fn sparse_head_matches_dense_at_any_threshold() {
    // From "everything passes" (the sparse head falls back to dense) to "almost nothing does"
    // (no box/keypoint work at all): the same persons as the dense head every time.
    let weights = weights();
    let frame = PreparedFrame {
        width: 640,
        height: 384,
        chw: synthetic_chw(640, 384),
        letterbox: referee_models::Letterbox {
            scale: 1.0,
            pad_x: 0.0,
            pad_y: 0.0,
            offset_x: 0.0,
            offset_y: 0.0,
        },
    };
    let (mut took_sparse, mut took_dense) = (false, false);
    for thr in [1e-9, 1e-4, 0.01, 0.25, 0.99] {
        let opts = PoseOptions {
            conf_threshold: thr,
            ..PoseOptions::default()
        };
        // the best level (the kernels differ per level only in the GEMM, checked above)
        let isa = *isas().last().expect("an ISA");
        let mut sparse = load_fast(&weights, opts, isa);
        let mut dense = load_fast(&weights, opts, isa);
        dense.set_sparse_head(false);
        let got = sparse
            .estimate(std::slice::from_ref(&frame))
            .expect("sparse");
        let want = dense.estimate(std::slice::from_ref(&frame)).expect("dense");
        let (fs, fd) = (sparse.last_profile().flops(), dense.last_profile().flops());
        println!(
            "threshold {thr}: {} persons, {fs:.3e} vs {fd:.3e} FLOPs",
            want[0].len()
        );
        took_sparse |= fs < fd;
        took_dense |= fs == fd;
        assert_eq!(got[0].len(), want[0].len(), "threshold {thr}: person count");
        for (g, e) in got[0].iter().zip(&want[0]) {
            assert!((g.score - e.score).abs() < 1e-4, "threshold {thr}");
            for (a, b) in g.bbox.iter().zip(&e.bbox) {
                assert!(
                    (a - b).abs() <= 0.01,
                    "threshold {thr}: {:?} vs {:?}",
                    g.bbox,
                    e.bbox
                );
            }
            for (a, b) in g.keypoints.iter().zip(&e.keypoints) {
                assert!((a[0] - b[0]).abs() <= 0.01 && (a[1] - b[1]).abs() <= 0.01);
                assert!((a[2] - b[2]).abs() < 1e-4);
            }
        }
    }
    assert!(took_sparse && took_dense, "both head paths exercised");
}
