//! The YOLOv8-pose (C2f) path on a randomly initialised small network generated here: the
//! architecture must be inferred from tensor names/shapes, and with zeroed head outputs the
//! decode must give the analytically known boxes/keypoints for every anchor of every level.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use referee_models::{Arch, YoloNet};

mod synthetic;
use synthetic::Gen;

const CLS_BIAS: f32 = 0.4;

fn yolov8_tensors() -> HashMap<String, Tensor> {
    let mut g = Gen::new(42);
    let (c0, c1, c2, c3, c4) = (8, 16, 16, 32, 32);
    g.conv("model.0", 3, c0, 3);
    g.conv("model.1", c0, c1, 3);
    g.c2f("model.2", c1, c1, 1);
    g.conv("model.3", c1, c2, 3);
    g.c2f("model.4", c2, c2, 2);
    g.conv("model.5", c2, c3, 3);
    g.c2f("model.6", c3, c3, 2);
    g.conv("model.7", c3, c4, 3);
    g.c2f("model.8", c4, c4, 1);
    g.conv("model.9.cv1", c4, c4 / 2, 1);
    g.conv("model.9.cv2", 2 * c4, c4, 1);
    g.c2f("model.12", c4 + c3, c3, 1);
    g.c2f("model.15", c3 + c2, c2, 1);
    g.conv("model.16", c2, c2, 3);
    g.c2f("model.18", c2 + c3, c3, 1);
    g.conv("model.19", c3, c3, 3);
    g.c2f("model.21", c3 + c4, c4, 1);
    for (i, ch) in [c2, c3, c4].into_iter().enumerate() {
        let h = "model.22";
        g.conv(&format!("{h}.cv2.{i}.0"), ch, 16, 3);
        g.conv(&format!("{h}.cv2.{i}.1"), 16, 16, 3);
        g.put(
            format!("{h}.cv2.{i}.2.weight"),
            &[64, 16, 1, 1],
            vec![0.0; 64 * 16],
        );
        g.put(format!("{h}.cv2.{i}.2.bias"), &[64], vec![0.0; 64]);
        g.conv(&format!("{h}.cv3.{i}.0"), ch, 16, 3);
        g.conv(&format!("{h}.cv3.{i}.1"), 16, 16, 3);
        g.put(
            format!("{h}.cv3.{i}.2.weight"),
            &[1, 16, 1, 1],
            vec![0.0; 16],
        );
        g.put(format!("{h}.cv3.{i}.2.bias"), &[1], vec![CLS_BIAS]);
        g.conv(&format!("{h}.cv4.{i}.0"), ch, 51, 3);
        g.conv(&format!("{h}.cv4.{i}.1"), 51, 51, 3);
        g.put(
            format!("{h}.cv4.{i}.2.weight"),
            &[51, 51, 1, 1],
            vec![0.0; 51 * 51],
        );
        g.put(format!("{h}.cv4.{i}.2.bias"), &[51], vec![0.0; 51]);
    }
    g.put(
        "model.22.dfl.conv.weight".into(),
        &[1, 16, 1, 1],
        (0..16).map(|v| v as f32).collect(),
    );
    g.map
}

#[test]
fn yolov8_architecture_is_inferred_and_decodes_known_values() {
    let map = yolov8_tensors();
    let net = YoloNet::from_tensors(&map, Path::new("synthetic-v8")).expect("build v8");
    assert_eq!(net.arch(), Arch::Yolov8);
    let (w, h) = (96, 64);
    let chw: Vec<f32> = (0..3 * w * h)
        .map(|i| ((i * 37) % 255) as f32 / 255.0)
        .collect();
    let raw = net.forward_raw(&chw, w, h).expect("forward");
    let levels = [
        (8usize, h / 8, w / 8),
        (16, h / 16, w / 16),
        (32, h / 32, w / 32),
    ];
    let a: usize = levels.iter().map(|l| l.1 * l.2).sum();
    assert_eq!(raw.len(), 56 * a);
    let score = 1.0 / (1.0 + (-CLS_BIAS).exp());
    let mut idx = 0;
    for (s, lh, lw) in levels {
        let s = s as f32;
        for row in 0..lh {
            for col in 0..lw {
                let (ax, ay) = (col as f32 + 0.5, row as f32 + 0.5);
                let v = |r: usize| raw[r * a + idx];
                // uniform DFL -> 7.5 bins each side
                assert!((v(0) - ax * s).abs() < 1e-3, "cx at {idx}");
                assert!((v(1) - ay * s).abs() < 1e-3, "cy at {idx}");
                assert!((v(2) - 15.0 * s).abs() < 1e-3 && (v(3) - 15.0 * s).abs() < 1e-3);
                assert!((v(4) - score).abs() < 1e-6);
                for k in 0..17 {
                    assert!((v(5 + 3 * k) - (ax - 0.5) * s).abs() < 1e-3);
                    assert!((v(6 + 3 * k) - (ay - 0.5) * s).abs() < 1e-3);
                    assert!((v(7 + 3 * k) - 0.5).abs() < 1e-6);
                }
                idx += 1;
            }
        }
    }
}

#[test]
fn yolov8_random_head_gives_finite_varied_output() {
    let mut map = yolov8_tensors();
    let mut g = Gen::new(7);
    for i in 0..3 {
        let w = g.rand(51 * 51, -0.2, 0.2);
        map.insert(
            format!("model.22.cv4.{i}.2.weight"),
            Tensor::from_vec(w, (51, 51, 1, 1), &Device::Cpu).unwrap(),
        );
        let w = g.rand(64 * 16, -0.5, 0.5);
        map.insert(
            format!("model.22.cv2.{i}.2.weight"),
            Tensor::from_vec(w, (64, 16, 1, 1), &Device::Cpu).unwrap(),
        );
    }
    let net = YoloNet::from_tensors(&map, Path::new("synthetic-v8")).unwrap();
    let (w, h) = (64, 64);
    let chw: Vec<f32> = (0..3 * w * h)
        .map(|i| ((i * 13) % 97) as f32 / 97.0)
        .collect();
    let raw = net.forward_raw(&chw, w, h).unwrap();
    assert!(raw.iter().all(|v| v.is_finite()));
    let a = raw.len() / 56;
    let widths: Vec<f32> = (0..a).map(|i| raw[2 * a + i]).collect();
    let distinct = widths
        .windows(2)
        .filter(|p| (p[0] - p[1]).abs() > 1e-4)
        .count();
    assert!(
        distinct > a / 2,
        "box widths should vary with the random backbone"
    );
    // a missing tensor is reported by name
    map.remove("model.12.m.0.cv2.bn.running_var");
    let err = YoloNet::from_tensors(&map, Path::new("synthetic-v8"))
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("model.12.m.0.cv2.bn.running_var"),
        "{err}"
    );
}
