//! The YOLO11 path with a deeper layout than the n checkpoint (C3k inside every C3k2, two
//! blocks each, two PSA blocks; the structure of the m/l/x scales), randomly initialised here:
//! the structure must be inferred from names/shapes and the decode must give known values.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use referee_models::{Arch, YoloNet};

mod synthetic;
use synthetic::Gen;

fn tensors() -> HashMap<String, Tensor> {
    let mut g = Gen::new(1234);
    g.conv("model.0", 3, 16, 3);
    g.conv("model.1", 16, 32, 3);
    g.c3k2("model.2", 32, 64, 16, 2);
    g.conv("model.3", 64, 64, 3);
    g.c3k2("model.4", 64, 128, 32, 2);
    g.conv("model.5", 128, 128, 3);
    g.c3k2("model.6", 128, 128, 64, 2);
    g.conv("model.7", 128, 256, 3);
    g.c3k2("model.8", 256, 256, 128, 2);
    g.conv("model.9.cv1", 256, 128, 1);
    g.conv("model.9.cv2", 512, 256, 1);
    // C2PSA 256 -> 256, c = 128, two heads (key_dim 32, head_dim 64), two PSA blocks
    g.conv("model.10.cv1", 256, 256, 1);
    for j in 0..2 {
        let q = format!("model.10.m.{j}");
        g.conv(&format!("{q}.attn.qkv"), 128, 256, 1);
        g.conv(&format!("{q}.attn.proj"), 128, 128, 1);
        g.conv_g(&format!("{q}.attn.pe"), 128, 128, 3, true);
        g.conv(&format!("{q}.ffn.0"), 128, 256, 1);
        g.conv(&format!("{q}.ffn.1"), 256, 128, 1);
    }
    g.conv("model.10.cv2", 256, 256, 1);
    g.c3k2("model.13", 384, 128, 64, 2);
    g.c3k2("model.16", 256, 64, 32, 2);
    g.conv("model.17", 64, 64, 3);
    g.c3k2("model.19", 192, 128, 64, 2);
    g.conv("model.20", 128, 128, 3);
    g.c3k2("model.22", 384, 256, 128, 2);
    for (i, ch) in [64usize, 128, 256].into_iter().enumerate() {
        let h = "model.23";
        g.conv(&format!("{h}.cv2.{i}.0"), ch, 64, 3);
        g.conv(&format!("{h}.cv2.{i}.1"), 64, 64, 3);
        g.put(
            format!("{h}.cv2.{i}.2.weight"),
            &[64, 64, 1, 1],
            vec![0.0; 64 * 64],
        );
        g.put(format!("{h}.cv2.{i}.2.bias"), &[64], vec![0.0; 64]);
        g.conv_g(&format!("{h}.cv3.{i}.0.0"), ch, ch, 3, true);
        g.conv(&format!("{h}.cv3.{i}.0.1"), ch, 64, 1);
        g.conv_g(&format!("{h}.cv3.{i}.1.0"), 64, 64, 3, true);
        g.conv(&format!("{h}.cv3.{i}.1.1"), 64, 64, 1);
        g.put(
            format!("{h}.cv3.{i}.2.weight"),
            &[1, 64, 1, 1],
            vec![0.0; 64],
        );
        g.put(format!("{h}.cv3.{i}.2.bias"), &[1], vec![-1.0]);
        g.conv(&format!("{h}.cv4.{i}.0"), ch, 51, 3);
        g.conv(&format!("{h}.cv4.{i}.1"), 51, 51, 3);
        g.put(
            format!("{h}.cv4.{i}.2.weight"),
            &[51, 51, 1, 1],
            vec![0.0; 51 * 51],
        );
        let kb: Vec<f32> = (0..51)
            .map(|c| if c % 3 == 0 { 0.25 } else { 0.0 })
            .collect();
        g.put(format!("{h}.cv4.{i}.2.bias"), &[51], kb);
    }
    g.put(
        "model.23.dfl.conv.weight".into(),
        &[1, 16, 1, 1],
        (0..16).map(|v| v as f32).collect(),
    );
    g.map
}

#[test]
fn deeper_yolo11_layout_is_inferred_and_decodes_known_values() {
    let map = tensors();
    let net = YoloNet::from_tensors(&map, Path::new("synthetic-v11")).expect("build");
    assert_eq!(net.arch(), Arch::Yolo11);
    let (w, h) = (64, 96);
    let chw: Vec<f32> = (0..3 * w * h)
        .map(|i| ((i * 29) % 251) as f32 / 251.0)
        .collect();
    let raw = net.forward_raw(&chw, w, h).expect("forward");
    let a = (w / 8) * (h / 8) + (w / 16) * (h / 16) + (w / 32) * (h / 32);
    assert_eq!(raw.len(), 56 * a);
    assert!(raw.iter().all(|v| v.is_finite()));
    let score = 1.0 / (1.0 + 1f32.exp());
    // last anchor: stride 32, grid (w/32 - 1, h/32 - 1)
    let last = a - 1;
    let (ax, ay) = ((w / 32) as f32 - 0.5, (h / 32) as f32 - 0.5);
    let v = |r: usize| raw[r * a + last];
    assert!((v(0) - ax * 32.0).abs() < 1e-3 && (v(1) - ay * 32.0).abs() < 1e-3);
    assert!((v(2) - 480.0).abs() < 1e-3 && (v(3) - 480.0).abs() < 1e-3);
    assert!((v(4) - score).abs() < 1e-6);
    // keypoint x has bias 0.25 -> (0.5 + ax - 0.5) * 32
    assert!((v(5) - (0.5 + ax - 0.5) * 32.0).abs() < 1e-3, "{}", v(5));
    assert!((v(6) - (ay - 0.5) * 32.0).abs() < 1e-3);
    // first anchor: stride 8, grid (0, 0)
    assert!((raw[0] - 4.0).abs() < 1e-3 && (raw[a] - 4.0).abs() < 1e-3);
}
