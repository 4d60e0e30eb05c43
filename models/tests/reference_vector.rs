//! The Candle network against the independent float64 NumPy implementation
//! (models/tools/make_test_vector.py) on a committed 3x96x160 input.

mod common;

use std::path::PathBuf;

use referee_models::YoloNet;

/// Largest allowed |candle - numpy| for a value v of the raw output: ABS + REL * |v|.
/// Candle runs f32 with BatchNorm folded; the reference runs float64 with BatchNorm applied
/// separately, so only rounding differences remain (measured max 1.6e-4, on a keypoint x).
const ABS_TOL: f32 = 5e-3;
const REL_TOL: f32 = 1e-4;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
        .join(name)
}

#[test]
fn candle_matches_numpy_reference() {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("pose_vector.json")).expect("pose_vector.json"))
            .expect("json");
    let shape = &meta["input"]["shape"];
    let (h, w) = (
        shape[1].as_u64().unwrap() as usize,
        shape[2].as_u64().unwrap() as usize,
    );
    let input = std::fs::read(data("pose_vector_input.bin")).expect("input");
    assert_eq!(input.len(), 3 * h * w);
    let chw: Vec<f32> = input.iter().map(|&v| v as f32 / 255.0).collect();
    let expected = common::read_f32(&data("pose_vector_expected.bin"));

    let weights = common::weights();
    let net = YoloNet::load(&weights).unwrap_or_else(|e| panic!("{e}"));
    let got = net.forward_raw(&chw, w, h).expect("forward");
    assert_eq!(got.len(), expected.len(), "raw output size (56 x A)");

    let a = expected.len() / 56;
    let mut worst = (0f32, 0usize);
    for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
        let err = (g - e).abs();
        assert!(
            err <= ABS_TOL + REL_TOL * e.abs(),
            "row {} anchor {}: candle {g} vs numpy {e} (|diff| {err})",
            i / a,
            i % a
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
    println!(
        "max |candle - numpy| = {} at row {} anchor {}",
        worst.0,
        worst.1 / a,
        worst.1 % a
    );
}
