//! YOLO11-pose on the fast kernels: weights folded and packed at load, the graph written out
//! with every concat and split as channel slices of shared buffers (no copies), the head's box
//! and keypoint 3x3 convs on the same input merged into one GEMM.

use std::collections::HashMap;
use std::path::Path;

use super::ops::{Arena, ConvW, DwW, Kind, View};
use super::PackedB;
use crate::decode::RAW_ROWS;
use crate::net::{sigmoid, write_anchor, Arch, REG_MAX};
use crate::weights::{self, HostTensor, Weights};
use crate::{ModelError, NUM_KEYPOINTS};

/// Channels of a head output pixel: box 64 | keypoints 51 | class 1.
const HEAD_C: usize = 4 * REG_MAX + 3 * NUM_KEYPOINTS + 1;

/// OIHW weights with BatchNorm folded, their dims, the bias.
type Folded = (Vec<f32>, [usize; 4], Vec<f32>);

/// The checkpoint's tensors by name, and how the fast path loads its layers from them.
struct Ws<'a> {
    t: Weights<'a, HostTensor>,
}

impl Ws<'_> {
    fn invalid(&self, reason: String) -> ModelError {
        self.t.invalid(reason)
    }

    fn has(&self, name: &str) -> bool {
        self.t.has(name)
    }

    fn count(&self, prefix: &str, suffix: &str) -> usize {
        self.t.count(prefix, suffix)
    }

    /// `p.conv.weight` with `p.bn.*` folded: (OIHW weights, dims, bias).
    fn folded(&self, p: &str) -> Result<Folded, ModelError> {
        let f = self.t.folded(p)?;
        let d = self.dims4(p, &f.dims)?;
        Ok((f.w, d, f.bias))
    }

    /// `p.weight` + `p.bias` (plain conv).
    fn plain(&self, p: &str) -> Result<Folded, ModelError> {
        let w = self.t.get(&format!("{p}.weight"))?;
        let d = self.dims4(p, &w.dims)?;
        let b = self.t.vector(&format!("{p}.bias"), d[0])?;
        Ok((w.data.clone(), d, b.into_owned()))
    }

    fn dims4(&self, p: &str, dims: &[usize]) -> Result<[usize; 4], ModelError> {
        match dims {
            [a, b, c, d] if c == d && *c % 2 == 1 => Ok([*a, *b, *c, *d]),
            _ => Err(self.invalid(format!(
                "{p}: weight shape {dims:?} is not a square odd kernel"
            ))),
        }
    }

    fn conv(&self, p: &str, stride: usize, act: bool) -> Result<ConvW, ModelError> {
        let (w, d, b) = self.folded(p)?;
        Ok(ConvW::new(&w, d[0], d[1], d[2], &b, stride, act))
    }

    fn plain_conv(&self, p: &str) -> Result<ConvW, ModelError> {
        let (w, d, b) = self.plain(p)?;
        Ok(ConvW::new(&w, d[0], d[1], d[2], &b, 1, false))
    }

    fn dw(&self, p: &str, act: bool) -> Result<DwW, ModelError> {
        let (w, d, b) = self.folded(p)?;
        if d[1] != 1 || d[2] != 3 {
            return Err(self.invalid(format!("{p}: expected a depthwise 3x3, got {d:?}")));
        }
        Ok(DwW::new(&w, d[0], &b, act))
    }

    /// Several folded convs on the same input stacked along the output channels.
    fn merged(&self, ps: &[&str], act: bool) -> Result<ConvW, ModelError> {
        let mut w = Vec::new();
        let mut b = Vec::new();
        let mut dims: Option<[usize; 4]> = None;
        let mut co = 0;
        for p in ps {
            let (wi, d, bi) = self.folded(p)?;
            if let Some(d0) = dims {
                if d0[1..] != d[1..] {
                    return Err(self.invalid(format!("{p}: shape {d:?} cannot merge with {d0:?}")));
                }
            }
            dims = Some(d);
            co += d[0];
            w.extend(wi);
            b.extend(bi);
        }
        let d = dims.ok_or_else(|| self.invalid("empty merge".into()))?;
        Ok(ConvW::new(&w, co, d[1], d[2], &b, 1, act))
    }
}

struct Bottleneck {
    cv1: ConvW,
    cv2: ConvW,
    add: bool,
}

impl Bottleneck {
    fn load(ws: &Ws, p: &str) -> Result<Self, ModelError> {
        let cv1 = ws.conv(&format!("{p}.cv1"), 1, true)?;
        let cv2 = ws.conv(&format!("{p}.cv2"), 1, true)?;
        let add = cv1.ci == cv2.co;
        if cv2.ci != cv1.co {
            return Err(ws.invalid(format!("{p}: cv1 {} -> cv2 {} channels", cv1.co, cv2.ci)));
        }
        Ok(Self { cv1, cv2, add })
    }

    fn forward(&self, ar: &mut Arena, x: View, out: View) -> Result<(), ModelError> {
        ar.scoped(|ar| {
            let t = ar.alloc(x.h, x.w, self.cv1.co);
            ar.conv(&self.cv1, x, t, None)?;
            ar.conv(&self.cv2, t, out, self.add.then_some(x))
        })
    }
}

/// A chain of bottlenecks from `x` into `out` (which may be a slice of a concat).
fn chain(ar: &mut Arena, m: &[Bottleneck], x: View, out: View) -> Result<(), ModelError> {
    let mut cur = x;
    for (j, b) in m.iter().enumerate() {
        let dst = if j + 1 == m.len() {
            out
        } else {
            ar.alloc(x.h, x.w, b.cv2.co)
        };
        b.forward(ar, cur, dst)?;
        cur = dst;
    }
    Ok(())
}

struct C3k {
    cv1: ConvW,
    cv2: ConvW,
    cv3: ConvW,
    m: Vec<Bottleneck>,
}

impl C3k {
    fn forward(&self, ar: &mut Arena, x: View, out: View) -> Result<(), ModelError> {
        ar.scoped(|ar| {
            let (c1, c2) = (self.cv1.co, self.cv2.co);
            let cat = ar.alloc(x.h, x.w, c1 + c2);
            if self.m.is_empty() {
                ar.conv(&self.cv1, x, cat.ch(0, c1), None)?;
            } else {
                let a = ar.alloc(x.h, x.w, c1);
                ar.conv(&self.cv1, x, a, None)?;
                chain(ar, &self.m, a, cat.ch(0, c1))?;
            }
            ar.conv(&self.cv2, x, cat.ch(c1, c2), None)?;
            ar.conv(&self.cv3, cat, out, None)
        })
    }
}

enum Inner {
    Bottleneck(Bottleneck),
    C3k(C3k),
}

/// C3k2 (and C2f): cv1, split, inner blocks appended, cv2 over the concat.
struct C3k2 {
    cv1: ConvW,
    cv2: ConvW,
    m: Vec<Inner>,
}

impl C3k2 {
    fn load(ws: &Ws, p: &str) -> Result<Self, ModelError> {
        let n = ws.count(&format!("{p}.m."), ".cv1.conv.weight");
        let mut m = Vec::with_capacity(n);
        for j in 0..n {
            let q = format!("{p}.m.{j}");
            if ws.has(&format!("{q}.cv3.conv.weight")) {
                let nb = ws.count(&format!("{q}.m."), ".cv1.conv.weight");
                m.push(Inner::C3k(C3k {
                    cv1: ws.conv(&format!("{q}.cv1"), 1, true)?,
                    cv2: ws.conv(&format!("{q}.cv2"), 1, true)?,
                    cv3: ws.conv(&format!("{q}.cv3"), 1, true)?,
                    m: (0..nb)
                        .map(|i| Bottleneck::load(ws, &format!("{q}.m.{i}")))
                        .collect::<Result<_, _>>()?,
                }));
            } else {
                m.push(Inner::Bottleneck(Bottleneck::load(ws, &q)?));
            }
        }
        let s = Self {
            cv1: ws.conv(&format!("{p}.cv1"), 1, true)?,
            cv2: ws.conv(&format!("{p}.cv2"), 1, true)?,
            m,
        };
        let c = s.cv1.co / 2;
        if s.cv2.ci != c * (2 + s.m.len()) {
            return Err(ws.invalid(format!(
                "{p}: cv2 takes {} channels, expected {}",
                s.cv2.ci,
                c * (2 + s.m.len())
            )));
        }
        Ok(s)
    }

    fn forward(&self, ar: &mut Arena, x: View, out: View) -> Result<(), ModelError> {
        ar.scoped(|ar| {
            let c = self.cv1.co / 2;
            let cat = ar.alloc(x.h, x.w, c * (2 + self.m.len()));
            ar.conv(&self.cv1, x, cat.ch(0, 2 * c), None)?;
            for (j, inner) in self.m.iter().enumerate() {
                let src = cat.ch((1 + j) * c, c);
                let dst = cat.ch((2 + j) * c, c);
                match inner {
                    Inner::Bottleneck(b) => b.forward(ar, src, dst)?,
                    Inner::C3k(b) => b.forward(ar, src, dst)?,
                }
            }
            ar.conv(&self.cv2, cat, out, None)
        })
    }
}

struct Sppf {
    cv1: ConvW,
    cv2: ConvW,
}

impl Sppf {
    fn forward(&self, ar: &mut Arena, x: View, out: View) -> Result<(), ModelError> {
        ar.scoped(|ar| {
            let c = self.cv1.co;
            let cat = ar.alloc(x.h, x.w, 4 * c);
            ar.conv(&self.cv1, x, cat.ch(0, c), None)?;
            for i in 0..3 {
                ar.maxpool5(cat.ch(i * c, c), cat.ch((i + 1) * c, c))?;
            }
            ar.conv(&self.cv2, cat, out, None)
        })
    }
}

struct Psa {
    qkv: ConvW,
    proj: ConvW,
    pe: DwW,
    ffn0: ConvW,
    ffn1: ConvW,
    heads: usize,
    key_dim: usize,
    head_dim: usize,
}

struct C2psa {
    cv1: ConvW,
    cv2: ConvW,
    m: Vec<Psa>,
}

impl C2psa {
    fn load(ws: &Ws, p: &str) -> Result<Self, ModelError> {
        let cv1 = ws.conv(&format!("{p}.cv1"), 1, true)?;
        let c = cv1.co / 2;
        let heads = (c / 64).max(1);
        let head_dim = c / heads;
        let n = ws.count(&format!("{p}.m."), ".attn.qkv.conv.weight");
        let mut m = Vec::with_capacity(n);
        for j in 0..n {
            let q = format!("{p}.m.{j}");
            let qkv = ws.conv(&format!("{q}.attn.qkv"), 1, false)?;
            let key_dim = qkv.co.saturating_sub(c) / (2 * heads);
            if key_dim == 0 || c + 2 * key_dim * heads != qkv.co || head_dim * heads != c {
                return Err(ws.invalid(format!(
                    "{q}.attn.qkv: {} channels do not fit {c} with {heads} heads",
                    qkv.co
                )));
            }
            let pe = ws.dw(&format!("{q}.attn.pe"), false)?;
            if pe.c != c {
                return Err(ws.invalid(format!("{q}.attn.pe: {} channels, expected {c}", pe.c)));
            }
            m.push(Psa {
                qkv,
                proj: ws.conv(&format!("{q}.attn.proj"), 1, false)?,
                pe,
                ffn0: ws.conv(&format!("{q}.ffn.0"), 1, true)?,
                ffn1: ws.conv(&format!("{q}.ffn.1"), 1, false)?,
                heads,
                key_dim,
                head_dim,
            });
        }
        Ok(Self {
            cv1,
            cv2: ws.conv(&format!("{p}.cv2"), 1, true)?,
            m,
        })
    }

    fn forward(
        &self,
        ar: &mut Arena,
        bufs: &mut Scratch,
        x: View,
        out: View,
    ) -> Result<(), ModelError> {
        ar.scoped(|ar| {
            let c = self.cv1.co / 2;
            let cat = ar.alloc(x.h, x.w, 2 * c);
            ar.conv(&self.cv1, x, cat, None)?;
            let b = cat.ch(c, c);
            for blk in &self.m {
                attention(ar, bufs, blk, b)?;
                let t = ar.alloc(x.h, x.w, blk.ffn0.co);
                ar.conv(&blk.ffn0, b, t, None)?;
                ar.conv(&blk.ffn1, t, b, Some(b))?;
            }
            ar.conv(&self.cv2, cat, out, None)
        })
    }
}

/// Buffers outside the arena, reused across frames: the attention's runtime-packed K^T and
/// V, and the head's anchor lists.
#[derive(Default)]
pub struct Scratch {
    k: PackedB,
    v: PackedB,
    /// Anchors of one head level whose class logit passes the threshold.
    sel: Vec<u32>,
    /// Those anchors and their 8 neighbours.
    near: Vec<u32>,
    mark: Vec<bool>,
}

/// `b += proj(attn(b) + pe(v))`, in place.
fn attention(ar: &mut Arena, bufs: &mut Scratch, a: &Psa, b: View) -> Result<(), ModelError> {
    ar.scoped(|ar| {
        let (h, w, n) = (b.h, b.w, b.pixels());
        let per = 2 * a.key_dim + a.head_dim;
        let qkv = ar.alloc(h, w, a.qkv.co);
        ar.conv(&a.qkv, b, qkv, None)?;
        let x = ar.alloc(h, w, a.heads * a.head_dim);
        // pe(v) first; each head's P.V is then accumulated on top through the residual.
        for hd in 0..a.heads {
            let v = qkv.ch(hd * per + 2 * a.key_dim, a.head_dim);
            ar.dw(&a.pe, hd * a.head_dim, v, x.ch(hd * a.head_dim, a.head_dim))?;
        }
        let s = ar.alloc(n, 1, n);
        let scale = (a.key_dim as f32).powf(-0.5);
        for hd in 0..a.heads {
            let q = qkv.ch(hd * per, a.key_dim);
            let k = qkv.ch(hd * per + a.key_dim, a.key_dim);
            let v = qkv.ch(hd * per + 2 * a.key_dim, a.head_dim);
            ar.pack(k, true, scale, &mut bufs.k)?;
            let q = View { h: n, w: 1, ..q };
            ar.matmul(q, &bufs.k, s, None)?;
            ar.softmax(s)?;
            ar.pack(v, false, 1.0, &mut bufs.v)?;
            let xo = x.ch(hd * a.head_dim, a.head_dim);
            let xo = View { h: n, w: 1, ..xo };
            ar.matmul(s, &bufs.v, xo, Some(xo))?;
        }
        ar.conv(&a.proj, x, b, Some(b))
    })
}

/// One level of the pose head.
struct HeadLevel {
    /// cv2.i.0 (box) and cv4.i.0 (keypoints) merged: ch -> 64 + 51.
    first: ConvW,
    box1: ConvW,
    kpt1: ConvW,
    box2: ConvW,
    kpt2: ConvW,
    cls_dw0: DwW,
    cls_pw0: ConvW,
    cls_dw1: DwW,
    cls_pw1: ConvW,
    cls_out: ConvW,
}

impl HeadLevel {
    fn load(ws: &Ws, p: &str, i: usize) -> Result<Self, ModelError> {
        let s = Self {
            first: ws.merged(
                &[&format!("{p}.cv2.{i}.0"), &format!("{p}.cv4.{i}.0")],
                true,
            )?,
            box1: ws.conv(&format!("{p}.cv2.{i}.1"), 1, true)?,
            kpt1: ws.conv(&format!("{p}.cv4.{i}.1"), 1, true)?,
            box2: ws.plain_conv(&format!("{p}.cv2.{i}.2"))?,
            kpt2: ws.plain_conv(&format!("{p}.cv4.{i}.2"))?,
            cls_dw0: ws.dw(&format!("{p}.cv3.{i}.0.0"), true)?,
            cls_pw0: ws.conv(&format!("{p}.cv3.{i}.0.1"), 1, true)?,
            cls_dw1: ws.dw(&format!("{p}.cv3.{i}.1.0"), true)?,
            cls_pw1: ws.conv(&format!("{p}.cv3.{i}.1.1"), 1, true)?,
            cls_out: ws.plain_conv(&format!("{p}.cv3.{i}.2"))?,
        };
        if s.box2.co != 4 * REG_MAX || s.kpt2.co != 3 * NUM_KEYPOINTS || s.cls_out.co != 1 {
            return Err(ws.invalid(format!(
                "{p} level {i}: outputs {} / {} / {}, expected 64 / 51 / 1 (one class)",
                s.box2.co, s.kpt2.co, s.cls_out.co
            )));
        }
        if s.box1.ci + s.kpt1.ci != s.first.co {
            return Err(ws.invalid(format!("{p} level {i}: branch widths do not match")));
        }
        Ok(s)
    }

    /// Writes `[box 64 | kpt 51 | cls 1]` per pixel of `f` into `out`. With `min_logit`, the
    /// box and keypoint channels are computed only at anchors whose class logit is above it
    /// (the only ones decoded; see [`decode`]), unless so many pass that dense is cheaper.
    fn forward(
        &self,
        ar: &mut Arena,
        scratch: &mut Scratch,
        f: View,
        out: View,
        min_logit: Option<f32>,
    ) -> Result<(), ModelError> {
        ar.scoped(|ar| {
            let (h, w) = (f.h, f.w);
            // class branch first: it decides where the rest is needed
            let c0 = ar.alloc(h, w, self.cls_dw0.c);
            ar.dw(&self.cls_dw0, 0, f, c0)?;
            let c1 = ar.alloc(h, w, self.cls_pw0.co);
            ar.conv(&self.cls_pw0, c0, c1, None)?;
            let c2 = ar.alloc(h, w, self.cls_dw1.c);
            ar.dw(&self.cls_dw1, 0, c1, c2)?;
            let c3 = ar.alloc(h, w, self.cls_pw1.co);
            ar.conv(&self.cls_pw1, c2, c3, None)?;
            ar.conv(&self.cls_out, c3, out.ch(HEAD_C - 1, 1), None)?;

            let (cb, ck) = (self.box1.ci, self.kpt1.ci);
            let t1 = ar.alloc(h, w, cb + ck);
            let t2 = ar.alloc(h, w, self.box1.co + self.kpt1.co);
            let (b1, k1) = (t1.ch(0, cb), t1.ch(cb, ck));
            let (b2, k2) = (t2.ch(0, self.box1.co), t2.ch(self.box1.co, self.kpt1.co));
            let (ob, ok) = (
                out.ch(0, 4 * REG_MAX),
                out.ch(4 * REG_MAX, 3 * NUM_KEYPOINTS),
            );
            if let Some(m) = min_logit {
                select(ar, out.ch(HEAD_C - 1, 1), m, scratch);
                // Dense GEMMs (and Winograd) beat gathered patches once many pixels are needed.
                if 4 * scratch.near.len() < h * w {
                    let (sel, near) = (&scratch.sel, &scratch.near);
                    if !sel.is_empty() {
                        ar.conv_at(&self.first, f, t1, near)?;
                        ar.conv_at(&self.box1, b1, b2, sel)?;
                        ar.conv_at(&self.kpt1, k1, k2, sel)?;
                        ar.conv_at(&self.box2, b2, ob, sel)?;
                        ar.conv_at(&self.kpt2, k2, ok, sel)?;
                    }
                    return Ok(());
                }
            }
            ar.conv(&self.first, f, t1, None)?;
            ar.conv(&self.box1, b1, b2, None)?;
            ar.conv(&self.kpt1, k1, k2, None)?;
            ar.conv(&self.box2, b2, ob, None)?;
            ar.conv(&self.kpt2, k2, ok, None)
        })
    }
}

/// Fills `scratch.sel` with the pixels of the one-channel `logits` above `m` and
/// `scratch.near` with those pixels and their in-image 3x3 neighbours (both ascending).
fn select(ar: &Arena, logits: View, m: f32, scratch: &mut Scratch) {
    let (h, w) = (logits.h, logits.w);
    let d = ar.data();
    scratch.sel.clear();
    scratch.near.clear();
    scratch.mark.clear();
    scratch.mark.resize(h * w, false);
    for p in 0..h * w {
        if d[logits.off + p * logits.ld] > m {
            scratch.sel.push(p as u32);
            let (y, x) = (p / w, p % w);
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    scratch.mark[ny * w + nx] = true;
                }
            }
        }
    }
    scratch
        .near
        .extend((0..h * w).filter(|&p| scratch.mark[p]).map(|p| p as u32));
}

/// The YOLO11-pose network for the fast path.
pub struct FastNet {
    convs: HashMap<usize, ConvW>,
    c3k2: HashMap<usize, C3k2>,
    sppf: Sppf,
    c2psa: C2psa,
    head: Vec<HeadLevel>,
}

/// The checkpoint's float tensors copied into plain vectors (read and checked as for the
/// reference network, without its warning when there is no sidecar to check the hash).
fn read_weights(path: &Path) -> Result<HashMap<String, HostTensor>, ModelError> {
    let mut map = HashMap::new();
    for (k, v) in weights::read(path)? {
        if v.dtype().is_float() {
            map.insert(k, HostTensor::from_tensor(&v)?);
        }
    }
    Ok(map)
}

impl FastNet {
    /// Loads YOLO11-pose weights (YOLOv8 checkpoints are rejected: use the reference path).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let map = read_weights(path)?;
        let ws = Ws {
            t: Weights::new(&map, path),
        };
        if Arch::of(&ws.t) != Some(Arch::Yolo11) {
            return Err(ws.invalid(
                "the fast path supports YOLO11-pose only (no C2PSA at model.10 / pose head at model.23)".into(),
            ));
        }
        let mut convs = HashMap::new();
        for i in [0, 1, 3, 5, 7, 17, 20] {
            convs.insert(i, ws.conv(&format!("model.{i}"), 2, true)?);
        }
        let mut c3k2 = HashMap::new();
        for i in [2, 4, 6, 8, 13, 16, 19, 22] {
            c3k2.insert(i, C3k2::load(&ws, &format!("model.{i}"))?);
        }
        let sppf = Sppf {
            cv1: ws.conv("model.9.cv1", 1, true)?,
            cv2: ws.conv("model.9.cv2", 1, true)?,
        };
        let c2psa = C2psa::load(&ws, "model.10")?;
        let head = (0..3)
            .map(|i| HeadLevel::load(&ws, "model.23", i))
            .collect::<Result<Vec<_>, _>>()?;
        if convs[&0].ci != 3 {
            return Err(ws.invalid(format!(
                "model.0 takes {} channels, expected RGB",
                convs[&0].ci
            )));
        }
        Ok(Self {
            convs,
            c3k2,
            sppf,
            c2psa,
            head,
        })
    }

    fn conv(&self, i: usize) -> Result<&ConvW, ModelError> {
        self.convs
            .get(&i)
            .ok_or_else(|| ModelError::Input(format!("fast path: layer {i} missing")))
    }

    fn c3k2(&self, i: usize) -> Result<&C3k2, ModelError> {
        self.c3k2
            .get(&i)
            .ok_or_else(|| ModelError::Input(format!("fast path: layer {i} missing")))
    }

    /// Output channels of a layer (conv or C3k2).
    fn co(&self, i: usize) -> Result<usize, ModelError> {
        match self.convs.get(&i) {
            Some(c) => Ok(c.co),
            None => Ok(self.c3k2(i)?.cv2.co),
        }
    }

    /// Backbone + neck + head into `ar`; returns the three head outputs (`HEAD_C` channels per
    /// pixel, strides 8, 16, 32).
    /// With `min_logit`, the head computes boxes and keypoints only where the class logit is
    /// above it (see [`HeadLevel::forward`]).
    pub fn features(
        &self,
        ar: &mut Arena,
        bufs: &mut Scratch,
        chw: &[f32],
        width: usize,
        height: usize,
        min_logit: Option<f32>,
    ) -> Result<[View; 3], ModelError> {
        let (h2, w2) = (height / 2, width / 2);
        let (h4, w4) = (height / 4, width / 4);
        let (h8, w8) = (height / 8, width / 8);
        let (h16, w16) = (height / 16, width / 16);
        let (h32, w32) = (height / 32, width / 32);
        ar.stage = 0;
        let x0 = ar.alloc(h2, w2, self.co(0)?);
        ar.conv_planar(self.conv(0)?, chw, height, width, x0)?;
        let x1 = ar.alloc(h4, w4, self.co(1)?);
        ar.conv(self.conv(1)?, x0, x1, None)?;
        let x2 = ar.alloc(h4, w4, self.co(2)?);
        self.c3k2(2)?.forward(ar, x1, x2)?;
        let x3 = ar.alloc(h8, w8, self.co(3)?);
        ar.conv(self.conv(3)?, x2, x3, None)?;
        // concat of layer 15 = [up(p13) | p4]: layer 4 writes straight into it
        let (c13, c4) = (self.co(13)?, self.co(4)?);
        let cat15 = ar.alloc(h8, w8, c13 + c4);
        let p4 = cat15.ch(c13, c4);
        self.c3k2(4)?.forward(ar, x3, p4)?;
        let x5 = ar.alloc(h16, w16, self.co(5)?);
        ar.conv(self.conv(5)?, p4, x5, None)?;
        // concat of layer 12 = [up(p10) | p6]
        let (c10, c6) = (self.c2psa.cv2.co, self.co(6)?);
        let cat12 = ar.alloc(h16, w16, c10 + c6);
        let p6 = cat12.ch(c10, c6);
        self.c3k2(6)?.forward(ar, x5, p6)?;
        let x7 = ar.alloc(h32, w32, self.co(7)?);
        ar.conv(self.conv(7)?, p6, x7, None)?;
        let x8 = ar.alloc(h32, w32, self.co(8)?);
        self.c3k2(8)?.forward(ar, x7, x8)?;
        let x9 = ar.alloc(h32, w32, self.sppf.cv2.co);
        self.sppf.forward(ar, x8, x9)?;
        // concat of layer 21 = [p20 | p10]
        let c20 = self.co(20)?;
        let cat21 = ar.alloc(h32, w32, c20 + c10);
        let p10 = cat21.ch(c20, c10);
        self.c2psa.forward(ar, bufs, x9, p10)?;
        ar.stage = 1;
        ar.upsample2(p10, cat12.ch(0, c10))?;
        // concat of layer 18 = [p17 | p13]
        let c17 = self.co(17)?;
        let cat18 = ar.alloc(h16, w16, c17 + c13);
        let p13 = cat18.ch(c17, c13);
        self.c3k2(13)?.forward(ar, cat12, p13)?;
        ar.upsample2(p13, cat15.ch(0, c13))?;
        let p16 = ar.alloc(h8, w8, self.co(16)?);
        self.c3k2(16)?.forward(ar, cat15, p16)?;
        ar.conv(self.conv(17)?, p16, cat18.ch(0, c17), None)?;
        let p19 = ar.alloc(h16, w16, self.co(19)?);
        self.c3k2(19)?.forward(ar, cat18, p19)?;
        ar.conv(self.conv(20)?, p19, cat21.ch(0, c20), None)?;
        let p22 = ar.alloc(h32, w32, self.co(22)?);
        self.c3k2(22)?.forward(ar, cat21, p22)?;
        ar.stage = 2;
        let mut outs = [p16; 3];
        for (i, f) in [p16, p19, p22].into_iter().enumerate() {
            let o = ar.alloc(f.h, f.w, HEAD_C);
            self.head[i].forward(ar, bufs, f, o, min_logit)?;
            outs[i] = o;
        }
        Ok(outs)
    }
}

/// Decodes the head outputs into the reference `(56, A)` channel-major layout. With
/// `min_logit`, anchors whose class logit is at or below it only get their score row (the
/// other rows stay 0): exact for any later `score > sigmoid(min_logit)` filter.
pub fn decode(ar: &Arena, outs: &[View; 3], min_logit: Option<f32>, raw: &mut Vec<f32>) {
    let a: usize = outs.iter().map(|o| o.pixels()).sum();
    raw.clear();
    raw.resize(RAW_ROWS * a, 0.0);
    let d = ar.data();
    let mut base = 0;
    for (li, o) in outs.iter().enumerate() {
        let s = (8usize << li) as f32;
        for row in 0..o.h {
            for col in 0..o.w {
                let j = row * o.w + col;
                let idx = base + j;
                let px = &d[o.off + j * o.ld..o.off + j * o.ld + HEAD_C];
                let logit = px[HEAD_C - 1];
                raw[4 * a + idx] = sigmoid(logit);
                if min_logit.is_some_and(|m| logit <= m) {
                    continue;
                }
                write_anchor(raw, a, idx, (row, col), s, |c| px[c]);
            }
        }
        base += o.pixels();
    }
}

/// Records the decode time in the arena's profile.
pub fn decode_timed(ar: &mut Arena, outs: &[View; 3], min_logit: Option<f32>, raw: &mut Vec<f32>) {
    ar.timed(Kind::Other, |ar| decode(ar, outs, min_logit, raw));
}
