//! Synthetic YOLO weights for the architecture tests: a seeded generator of conv + BatchNorm
//! tensors and the C3k2 / C2f blocks, so each test only states its layout.
// Each test binary uses a part of the generator.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{Device, Tensor};

/// Deterministic synthetic weights under Ultralytics' tensor names.
pub struct Gen {
    /// The tensors made so far.
    pub map: HashMap<String, Tensor>,
    state: u64,
}

impl Gen {
    /// A generator whose pseudo-random sequence starts from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            map: HashMap::new(),
            state: seed,
        }
    }
    pub fn rand(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.state = self
                    .state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((self.state >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }
    pub fn put(&mut self, name: String, shape: &[usize], data: Vec<f32>) {
        self.map
            .insert(name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap());
    }
    pub fn conv_g(&mut self, p: &str, ci: usize, co: usize, k: usize, depthwise: bool) {
        let cig = if depthwise { 1 } else { ci };
        let fan = (cig * k * k) as f32;
        let w = self
            .rand(co * cig * k * k, -1.0, 1.0)
            .iter()
            .map(|v| v * 1.5 / fan.sqrt())
            .collect();
        self.put(format!("{p}.conv.weight"), &[co, cig, k, k], w);
        let g = self.rand(co, 0.5, 1.5);
        self.put(format!("{p}.bn.weight"), &[co], g);
        let b = self.rand(co, -0.2, 0.2);
        self.put(format!("{p}.bn.bias"), &[co], b);
        let m = self.rand(co, -0.1, 0.1);
        self.put(format!("{p}.bn.running_mean"), &[co], m);
        let v = self.rand(co, 0.5, 2.0);
        self.put(format!("{p}.bn.running_var"), &[co], v);
    }
    pub fn conv(&mut self, p: &str, ci: usize, co: usize, k: usize) {
        self.conv_g(p, ci, co, k, false)
    }
    /// C3k2 with C3k inner blocks (c3k=True), `n` of them, hidden width `c`.
    pub fn c3k2(&mut self, p: &str, c1: usize, c2: usize, c: usize, n: usize) {
        self.conv(&format!("{p}.cv1"), c1, 2 * c, 1);
        for j in 0..n {
            let q = format!("{p}.m.{j}");
            let h = c / 2;
            self.conv(&format!("{q}.cv1"), c, h, 1);
            self.conv(&format!("{q}.cv2"), c, h, 1);
            self.conv(&format!("{q}.cv3"), 2 * h, c, 1);
            for b in 0..2 {
                self.conv(&format!("{q}.m.{b}.cv1"), h, h, 3);
                self.conv(&format!("{q}.m.{b}.cv2"), h, h, 3);
            }
        }
        self.conv(&format!("{p}.cv2"), (2 + n) * c, c2, 1);
    }
    pub fn c2f(&mut self, p: &str, c1: usize, c2: usize, n: usize) {
        let c = c2 / 2;
        self.conv(&format!("{p}.cv1"), c1, 2 * c, 1);
        for j in 0..n {
            self.conv(&format!("{p}.m.{j}.cv1"), c, c, 3);
            self.conv(&format!("{p}.m.{j}.cv2"), c, c, 3);
        }
        self.conv(&format!("{p}.cv2"), (2 + n) * c, c2, 1);
    }
}
