//! The YOLO11-pose / YOLOv8-pose network on candle (reference path: plain candle ops, f32, CPU).
//!
//! The architecture (YOLO11 with C3k2/C3k/C2PSA and the depthwise class branch, or YOLOv8 with
//! C2f) and its width/depth scale are inferred from the tensor names and shapes of the converted
//! Ultralytics checkpoint; BatchNorm is folded into the convolutions at load time.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::decode::RAW_ROWS;
use crate::weights;
use crate::{ModelError, NUM_KEYPOINTS};

/// DFL bins per box side.
pub(crate) const REG_MAX: usize = 16;

/// Which family the weights belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// YOLO11-pose (C3k2, C2PSA, depthwise class branch).
    Yolo11,
    /// YOLOv8-pose (C2f).
    Yolov8,
}

impl Arch {
    /// The family of a checkpoint, from the names of its tensors (None: neither).
    pub(crate) fn of<T>(ws: &weights::Weights<'_, T>) -> Option<Self> {
        if ws.has("model.23.cv4.0.0.conv.weight") && ws.has("model.10.m.0.attn.qkv.conv.weight") {
            Some(Arch::Yolo11)
        } else if ws.has("model.22.cv4.0.0.conv.weight") && ws.has("model.2.cv1.conv.weight") {
            Some(Arch::Yolov8)
        } else {
            None
        }
    }
}

/// The checkpoint's tensors by name (see [`weights::Weights`]).
type Weights<'a> = weights::Weights<'a, Tensor>;

/// Convolution with folded BatchNorm (or a plain biased conv), optional SiLU.
struct Conv {
    w: Tensor,
    /// (1, co, 1, 1)
    b: Tensor,
    /// (1, c, 1, 1) per tap for the depthwise path
    dw_taps: Option<Vec<Tensor>>,
    k: usize,
    stride: usize,
    groups: usize,
    act: bool,
}

impl Conv {
    /// `prefix.conv.weight` + `prefix.bn.*`, folded.
    fn load(ws: &Weights, prefix: &str, stride: usize, act: bool) -> Result<Self, ModelError> {
        let f = ws.folded(prefix)?;
        let co = f.bias.len();
        let w = Tensor::from_vec(f.w, f.dims, &Device::Cpu)?;
        let b = Tensor::from_vec(f.bias, co, &Device::Cpu)?;
        Self::new(ws, prefix, w, b, stride, act)
    }

    /// `prefix.weight` + `prefix.bias`, no activation.
    fn plain(ws: &Weights, prefix: &str) -> Result<Self, ModelError> {
        let w = ws.get(&format!("{prefix}.weight"))?.clone();
        let b = ws.get(&format!("{prefix}.bias"))?.clone();
        Self::new(ws, prefix, w, b, 1, false)
    }

    fn new(
        ws: &Weights,
        prefix: &str,
        w: Tensor,
        b: Tensor,
        stride: usize,
        act: bool,
    ) -> Result<Self, ModelError> {
        let (co, ci_g, kh, kw) = w
            .dims4()
            .map_err(|_| ws.invalid(format!("{prefix}: weight is not 4-D")))?;
        if kh != kw || b.dims() != [co] {
            return Err(ws.invalid(format!(
                "{prefix}: unexpected shapes {:?} / {:?}",
                w.dims(),
                b.dims()
            )));
        }
        let groups = if ci_g == 1 && co > 1 { co } else { 1 };
        let dw_taps = if groups > 1 && stride == 1 {
            let w2 = w.reshape((co, kh * kw))?;
            let taps = (0..kh * kw)
                .map(|t| w2.narrow(1, t, 1)?.reshape((1, co, 1, 1)))
                .collect::<Result<Vec<_>, _>>()?;
            Some(taps)
        } else {
            None
        };
        Ok(Self {
            w: w.contiguous()?,
            b: b.reshape((1, co, 1, 1))?,
            dw_taps,
            k: kh,
            stride,
            groups,
            act,
        })
    }

    fn out_channels(&self) -> usize {
        self.w.dims()[0]
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let pad = self.k / 2;
        let y = if let Some(taps) = &self.dw_taps {
            // Depthwise, stride 1: sum of shifted copies times per-channel weights (candle's
            // grouped conv loops over groups and is slow on CPU).
            let (_, _, h, w) = x.dims4()?;
            let xp = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
            let mut acc: Option<Tensor> = None;
            for ky in 0..self.k {
                for kx in 0..self.k {
                    let s = xp.narrow(2, ky, h)?.narrow(3, kx, w)?;
                    let term = s.broadcast_mul(&taps[ky * self.k + kx])?;
                    acc = Some(match acc {
                        None => term,
                        Some(a) => (a + term)?,
                    });
                }
            }
            acc.ok_or_else(|| ModelError::Input("empty depthwise kernel".into()))?
        } else {
            x.conv2d(&self.w, pad, self.stride, 1, self.groups)?
        };
        let y = y.broadcast_add(&self.b)?;
        Ok(if self.act {
            candle_nn::ops::silu(&y)?
        } else {
            y
        })
    }
}

struct Bottleneck {
    cv1: Conv,
    cv2: Conv,
    add: bool,
}

impl Bottleneck {
    fn load(ws: &Weights, p: &str, shortcut: bool) -> Result<Self, ModelError> {
        let cv1 = Conv::load(ws, &format!("{p}.cv1"), 1, true)?;
        let cv2 = Conv::load(ws, &format!("{p}.cv2"), 1, true)?;
        let c1 = cv1.w.dims()[1];
        let add = shortcut && c1 == cv2.out_channels();
        Ok(Self { cv1, cv2, add })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = self.cv2.forward(&self.cv1.forward(x)?)?;
        Ok(if self.add { (x + y)? } else { y })
    }
}

/// C3k: CSP block with 2 convs in front, bottlenecks, and a merge conv.
struct C3k {
    cv1: Conv,
    cv2: Conv,
    cv3: Conv,
    m: Vec<Bottleneck>,
}

impl C3k {
    fn load(ws: &Weights, p: &str, shortcut: bool) -> Result<Self, ModelError> {
        let n = ws.count(&format!("{p}.m."), ".cv1.conv.weight");
        Ok(Self {
            cv1: Conv::load(ws, &format!("{p}.cv1"), 1, true)?,
            cv2: Conv::load(ws, &format!("{p}.cv2"), 1, true)?,
            cv3: Conv::load(ws, &format!("{p}.cv3"), 1, true)?,
            m: (0..n)
                .map(|j| Bottleneck::load(ws, &format!("{p}.m.{j}"), shortcut))
                .collect::<Result<_, _>>()?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut a = self.cv1.forward(x)?;
        for b in &self.m {
            a = b.forward(&a)?;
        }
        let b = self.cv2.forward(x)?;
        self.cv3.forward(&Tensor::cat(&[&a, &b], 1)?)
    }
}

enum Inner {
    Bottleneck(Bottleneck),
    C3k(C3k),
}

/// C2f (YOLOv8) and C3k2 (YOLO11, whose inner blocks may be C3k).
struct C2f {
    cv1: Conv,
    cv2: Conv,
    m: Vec<Inner>,
}

impl C2f {
    fn load(ws: &Weights, p: &str, shortcut: bool) -> Result<Self, ModelError> {
        let n = ws.count(&format!("{p}.m."), ".cv1.conv.weight");
        let m = (0..n)
            .map(|j| {
                let q = format!("{p}.m.{j}");
                if ws.has(&format!("{q}.cv3.conv.weight")) {
                    C3k::load(ws, &q, shortcut).map(Inner::C3k)
                } else {
                    Bottleneck::load(ws, &q, shortcut).map(Inner::Bottleneck)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cv1: Conv::load(ws, &format!("{p}.cv1"), 1, true)?,
            cv2: Conv::load(ws, &format!("{p}.cv2"), 1, true)?,
            m,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = self.cv1.forward(x)?;
        let c = y.dim(1)? / 2;
        let mut ys = vec![y.narrow(1, 0, c)?, y.narrow(1, c, c)?];
        for b in &self.m {
            let last = ys
                .last()
                .ok_or_else(|| ModelError::Input("empty C2f".into()))?;
            let next = match b {
                Inner::Bottleneck(b) => b.forward(last)?,
                Inner::C3k(b) => b.forward(last)?,
            };
            ys.push(next);
        }
        self.cv2.forward(&Tensor::cat(&ys, 1)?)
    }
}

struct Sppf {
    cv1: Conv,
    cv2: Conv,
}

impl Sppf {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let x = self.cv1.forward(x)?;
        let pool = |t: &Tensor| -> Result<Tensor, ModelError> {
            // replicate padding gives exactly the -inf padded max pool for a stride-1 window
            let p = t.pad_with_same(2, 2, 2)?.pad_with_same(3, 2, 2)?;
            Ok(p.max_pool2d_with_stride(5, 1)?)
        };
        let y1 = pool(&x)?;
        let y2 = pool(&y1)?;
        let y3 = pool(&y2)?;
        self.cv2.forward(&Tensor::cat(&[&x, &y1, &y2, &y3], 1)?)
    }
}

struct Attention {
    qkv: Conv,
    proj: Conv,
    pe: Conv,
    num_heads: usize,
    key_dim: usize,
    head_dim: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let qkv = self.qkv.forward(x)?.reshape((
            b,
            self.num_heads,
            2 * self.key_dim + self.head_dim,
            n,
        ))?;
        let q = qkv.narrow(2, 0, self.key_dim)?;
        let k = qkv.narrow(2, self.key_dim, self.key_dim)?.contiguous()?;
        let v = qkv
            .narrow(2, 2 * self.key_dim, self.head_dim)?
            .contiguous()?;
        let scale = (self.key_dim as f64).powf(-0.5);
        let attn = (q.transpose(2, 3)?.contiguous()?.matmul(&k)? * scale)?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let out = v
            .matmul(&attn.transpose(2, 3)?.contiguous()?)?
            .reshape((b, c, h, w))?;
        let pe = self.pe.forward(&v.reshape((b, c, h, w))?)?;
        self.proj.forward(&(out + pe)?)
    }
}

struct PsaBlock {
    attn: Attention,
    ffn0: Conv,
    ffn1: Conv,
}

struct C2psa {
    cv1: Conv,
    cv2: Conv,
    m: Vec<PsaBlock>,
}

impl C2psa {
    fn load(ws: &Weights, p: &str) -> Result<Self, ModelError> {
        let cv1 = Conv::load(ws, &format!("{p}.cv1"), 1, true)?;
        let c = cv1.out_channels() / 2;
        let n = ws.count(&format!("{p}.m."), ".attn.qkv.conv.weight");
        let num_heads = (c / 64).max(1);
        let head_dim = c / num_heads;
        let m = (0..n)
            .map(|j| {
                let q = format!("{p}.m.{j}");
                let qkv = Conv::load(ws, &format!("{q}.attn.qkv"), 1, false)?;
                let h = qkv.out_channels();
                // h = c + 2 * key_dim * num_heads
                let key_dim = h.saturating_sub(c) / (2 * num_heads);
                if key_dim == 0 || c + 2 * key_dim * num_heads != h {
                    return Err(ws.invalid(format!(
                        "{q}.attn.qkv: {h} channels do not fit {c} with {num_heads} heads"
                    )));
                }
                Ok(PsaBlock {
                    attn: Attention {
                        qkv,
                        proj: Conv::load(ws, &format!("{q}.attn.proj"), 1, false)?,
                        pe: Conv::load(ws, &format!("{q}.attn.pe"), 1, false)?,
                        num_heads,
                        key_dim,
                        head_dim,
                    },
                    ffn0: Conv::load(ws, &format!("{q}.ffn.0"), 1, true)?,
                    ffn1: Conv::load(ws, &format!("{q}.ffn.1"), 1, false)?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cv1,
            cv2: Conv::load(ws, &format!("{p}.cv2"), 1, true)?,
            m,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = self.cv1.forward(x)?;
        let c = y.dim(1)? / 2;
        let a = y.narrow(1, 0, c)?;
        let mut b = y.narrow(1, c, c)?;
        for blk in &self.m {
            b = (&b + blk.attn.forward(&b)?)?;
            b = (&b + blk.ffn1.forward(&blk.ffn0.forward(&b)?)?)?;
        }
        self.cv2.forward(&Tensor::cat(&[&a, &b], 1)?)
    }
}

/// One branch of the head: a chain of convs then a plain biased 1x1.
struct Branch {
    convs: Vec<Conv>,
    out: Conv,
}

impl Branch {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward(&y)?;
        }
        self.out.forward(&y)
    }
}

struct PoseHead {
    boxes: Vec<Branch>,
    cls: Vec<Branch>,
    kpts: Vec<Branch>,
}

impl PoseHead {
    fn load(ws: &Weights, p: &str, arch: Arch) -> Result<Self, ModelError> {
        let mut boxes = Vec::new();
        let mut cls = Vec::new();
        let mut kpts = Vec::new();
        for i in 0..3 {
            let simple = |name: &str| -> Result<Branch, ModelError> {
                Ok(Branch {
                    convs: vec![
                        Conv::load(ws, &format!("{p}.{name}.{i}.0"), 1, true)?,
                        Conv::load(ws, &format!("{p}.{name}.{i}.1"), 1, true)?,
                    ],
                    out: Conv::plain(ws, &format!("{p}.{name}.{i}.2"))?,
                })
            };
            boxes.push(simple("cv2")?);
            kpts.push(simple("cv4")?);
            cls.push(match arch {
                Arch::Yolov8 => simple("cv3")?,
                Arch::Yolo11 => Branch {
                    convs: vec![
                        Conv::load(ws, &format!("{p}.cv3.{i}.0.0"), 1, true)?,
                        Conv::load(ws, &format!("{p}.cv3.{i}.0.1"), 1, true)?,
                        Conv::load(ws, &format!("{p}.cv3.{i}.1.0"), 1, true)?,
                        Conv::load(ws, &format!("{p}.cv3.{i}.1.1"), 1, true)?,
                    ],
                    out: Conv::plain(ws, &format!("{p}.cv3.{i}.2"))?,
                },
            });
            if boxes[i].out.out_channels() != 4 * REG_MAX {
                return Err(ws.invalid(format!(
                    "{p}.cv2.{i}.2: expected {} box channels",
                    4 * REG_MAX
                )));
            }
            if kpts[i].out.out_channels() != 3 * NUM_KEYPOINTS {
                return Err(ws.invalid(format!(
                    "{p}.cv4.{i}.2: expected {} keypoint channels",
                    3 * NUM_KEYPOINTS
                )));
            }
        }
        Ok(Self { boxes, cls, kpts })
    }
}

enum Layer {
    Conv(Conv),
    C2f(C2f),
    Sppf(Sppf),
    C2psa(C2psa),
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Layer::Conv(l) => l.forward(x),
            Layer::C2f(l) => l.forward(x),
            Layer::Sppf(l) => l.forward(x),
            Layer::C2psa(l) => l.forward(x),
        }
    }
}

/// A loaded YOLO pose network.
pub struct YoloNet {
    arch: Arch,
    /// backbone + neck layers by index (Upsample/Concat are implicit in `forward`)
    layers: HashMap<usize, Layer>,
    head: PoseHead,
    num_tensors: usize,
    width0: usize,
}

impl YoloNet {
    /// Loads a converted safetensors file. Missing file, corrupt data, a hash that disagrees with
    /// the fetch sidecar, or unexpected tensors give a [`ModelError`] telling to run `referee model fetch`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let map = weights::read(path)?;
        Self::from_tensors(&map, path)
    }

    /// Builds the network from named f32 tensors (`path` only labels errors).
    pub fn from_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<Self, ModelError> {
        let ws = Weights::new(map, path);
        let arch = Arch::of(&ws).ok_or_else(|| {
            ws.invalid(
                "not a YOLO11-pose or YOLOv8-pose model (no pose head at model.23 / model.22)"
                    .into(),
            )
        })?;
        let mut layers = HashMap::new();
        let conv_s2 = |i: usize| -> Result<Layer, ModelError> {
            Ok(Layer::Conv(Conv::load(
                &ws,
                &format!("model.{i}"),
                2,
                true,
            )?))
        };
        let c2f = |i: usize, sc: bool| -> Result<Layer, ModelError> {
            Ok(Layer::C2f(C2f::load(&ws, &format!("model.{i}"), sc)?))
        };
        for i in [0, 1, 3, 5, 7] {
            layers.insert(i, conv_s2(i)?);
        }
        for i in [2, 4, 6, 8] {
            layers.insert(i, c2f(i, true)?);
        }
        layers.insert(
            9,
            Layer::Sppf(Sppf {
                cv1: Conv::load(&ws, "model.9.cv1", 1, true)?,
                cv2: Conv::load(&ws, "model.9.cv2", 1, true)?,
            }),
        );
        let head_idx = match arch {
            Arch::Yolo11 => {
                layers.insert(10, Layer::C2psa(C2psa::load(&ws, "model.10")?));
                for i in [13, 16, 19, 22] {
                    layers.insert(i, c2f(i, true)?);
                }
                for i in [17, 20] {
                    layers.insert(i, conv_s2(i)?);
                }
                23
            }
            Arch::Yolov8 => {
                for i in [12, 15, 18, 21] {
                    layers.insert(i, c2f(i, false)?);
                }
                for i in [16, 19] {
                    layers.insert(i, conv_s2(i)?);
                }
                22
            }
        };
        let head = PoseHead::load(&ws, &format!("model.{head_idx}"), arch)?;
        let width0 = ws.get("model.0.conv.weight")?.dim(0)?;
        Ok(Self {
            arch,
            layers,
            head,
            num_tensors: map.len(),
            width0,
        })
    }

    /// The architecture family.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// A short description, e.g. `YOLO11n-pose (454 tensors)`; the scale letter comes from the tensor shapes.
    pub fn describe(&self) -> String {
        let fam = match self.arch {
            Arch::Yolo11 => "YOLO11",
            Arch::Yolov8 => "YOLOv8",
        };
        let depth2 = match self.layers.get(&2) {
            Some(Layer::C2f(c)) => c.m.len(),
            _ => 0,
        };
        // Ultralytics scales: YOLO11 widths n/s/m/l/x = 16/32/64/64/96 (m and l differ in depth),
        // YOLOv8 widths 16/32/48/64/80.
        let scale = match (self.arch, self.width0) {
            (_, 16) => "n",
            (_, 32) => "s",
            (Arch::Yolo11, 64) if depth2 <= 1 => "m",
            (Arch::Yolo11, 64) => "l",
            (Arch::Yolo11, 96) => "x",
            (Arch::Yolov8, 48) => "m",
            (Arch::Yolov8, 64) => "l",
            (Arch::Yolov8, 80) => "x",
            _ => "?",
        };
        format!("{fam}{scale}-pose ({} tensors)", self.num_tensors)
    }

    fn layer(&self, i: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        self.layers
            .get(&i)
            .ok_or_else(|| ModelError::Input(format!("layer {i} missing")))?
            .forward(x)
    }

    /// Runs backbone + neck + head; returns the three (box 64, cls, kpt 51) maps per level.
    fn features(&self, x: &Tensor) -> Result<[Tensor; 3], ModelError> {
        let up = |t: &Tensor| -> Result<Tensor, ModelError> {
            let (_, _, h, w) = t.dims4()?;
            Ok(t.upsample_nearest2d(2 * h, 2 * w)?)
        };
        let cat =
            |a: &Tensor, b: &Tensor| -> Result<Tensor, ModelError> { Ok(Tensor::cat(&[a, b], 1)?) };
        let mut x = x.clone();
        let mut keep: HashMap<usize, Tensor> = HashMap::new();
        for i in 0..=9 {
            x = self.layer(i, &x)?;
            if matches!(i, 4 | 6 | 9) {
                keep.insert(i, x.clone());
            }
        }
        let get = |k: &HashMap<usize, Tensor>, i: usize| -> Result<Tensor, ModelError> {
            k.get(&i)
                .cloned()
                .ok_or_else(|| ModelError::Input(format!("skip {i} missing")))
        };
        Ok(match self.arch {
            Arch::Yolo11 => {
                let p10 = self.layer(10, &x)?;
                let p13 = self.layer(13, &cat(&up(&p10)?, &get(&keep, 6)?)?)?;
                let p16 = self.layer(16, &cat(&up(&p13)?, &get(&keep, 4)?)?)?;
                let p19 = self.layer(19, &cat(&self.layer(17, &p16)?, &p13)?)?;
                let p22 = self.layer(22, &cat(&self.layer(20, &p19)?, &p10)?)?;
                [p16, p19, p22]
            }
            Arch::Yolov8 => {
                let p9 = x;
                let p12 = self.layer(12, &cat(&up(&p9)?, &get(&keep, 6)?)?)?;
                let p15 = self.layer(15, &cat(&up(&p12)?, &get(&keep, 4)?)?)?;
                let p18 = self.layer(18, &cat(&self.layer(16, &p15)?, &p12)?)?;
                let p21 = self.layer(21, &cat(&self.layer(19, &p18)?, &p9)?)?;
                [p15, p18, p21]
            }
        })
    }

    /// Runs the network on one CHW f32 image (`width`, `height` multiples of 32) and returns the
    /// decoded pre-NMS output, channel-major `(56, A)`: cx, cy, w, h, score, 17 x (x, y, conf)
    /// in model-input pixels (the Ultralytics `output0` layout).
    pub fn forward_raw(
        &self,
        chw: &[f32],
        width: usize,
        height: usize,
    ) -> Result<Vec<f32>, ModelError> {
        if width == 0 || height == 0 || !width.is_multiple_of(32) || !height.is_multiple_of(32) {
            return Err(ModelError::Input(format!(
                "input {width}x{height} is not a multiple of 32"
            )));
        }
        if chw.len() != 3 * width * height {
            return Err(ModelError::Input(format!(
                "input has {} values, expected 3x{height}x{width}",
                chw.len()
            )));
        }
        let x = Tensor::from_slice(chw, (1, 3, height, width), &Device::Cpu)?;
        let feats = self.features(&x)?;
        let mut levels = Vec::with_capacity(3);
        for (i, f) in feats.iter().enumerate() {
            let (_, _, h, w) = f.dims4()?;
            let bx = self.head.boxes[i]
                .forward(f)?
                .reshape((4 * REG_MAX, h * w))?;
            let cl = self.head.cls[i].forward(f)?;
            let nc = cl.dim(1)?;
            let cl = cl.reshape((nc, h * w))?.max_keepdim(0)?;
            let kp = self.head.kpts[i]
                .forward(f)?
                .reshape((3 * NUM_KEYPOINTS, h * w))?;
            levels.push((
                h,
                w,
                8usize << i,
                bx.to_vec2::<f32>()?,
                cl.to_vec2::<f32>()?,
                kp.to_vec2::<f32>()?,
            ));
        }
        let a: usize = levels.iter().map(|l| l.0 * l.1).sum();
        let mut out = vec![0f32; RAW_ROWS * a];
        let mut base = 0;
        for (h, w, stride, bx, cl, kp) in &levels {
            let s = *stride as f32;
            for row in 0..*h {
                for col in 0..*w {
                    let j = row * w + col;
                    let idx = base + j;
                    out[4 * a + idx] = sigmoid(cl[0][j]);
                    let head = |c: usize| {
                        if c < 4 * REG_MAX {
                            bx[c][j]
                        } else {
                            kp[c - 4 * REG_MAX][j]
                        }
                    };
                    write_anchor(&mut out, a, idx, (row, col), s, head);
                }
            }
            base += h * w;
        }
        Ok(out)
    }
}

/// The person score from its logit.
pub(crate) fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Decodes the box and keypoints of anchor `idx` (of `a`) into the channel-major `(56, a)`
/// layout of [`YoloNet::forward_raw`] (all rows but the score, row 4). The anchor is the cell
/// `(row, col)` of a level of stride `stride`; `head(c)` is its raw head output channel `c`:
/// `c < 64` the 4 x 16 DFL bins (left, top, right, bottom), then 17 x (x, y, conf logit).
/// (Inlined: the fast path's decode calls it per anchor.)
#[inline]
pub(crate) fn write_anchor(
    out: &mut [f32],
    a: usize,
    idx: usize,
    (row, col): (usize, usize),
    stride: f32,
    head: impl Fn(usize) -> f32,
) {
    let s = stride;
    let (ax, ay) = (col as f32 + 0.5, row as f32 + 0.5);
    let mut d = [0f32; 4];
    for (side, dv) in d.iter_mut().enumerate() {
        // the expected bin under the softmax of the side's bins
        let bin = |k: usize| head(side * REG_MAX + k);
        let m = (0..REG_MAX).map(bin).fold(f32::NEG_INFINITY, f32::max);
        let (mut sum, mut wsum) = (0f32, 0f32);
        for k in 0..REG_MAX {
            let e = (bin(k) - m).exp();
            sum += e;
            wsum += k as f32 * e;
        }
        *dv = wsum / sum;
    }
    let (x1, y1, x2, y2) = (ax - d[0], ay - d[1], ax + d[2], ay + d[3]);
    out[idx] = (x1 + x2) / 2.0 * s;
    out[a + idx] = (y1 + y2) / 2.0 * s;
    out[2 * a + idx] = (x2 - x1) * s;
    out[3 * a + idx] = (y2 - y1) * s;
    let kp = |k: usize| head(4 * REG_MAX + k);
    for k in 0..NUM_KEYPOINTS {
        out[(5 + 3 * k) * a + idx] = (kp(3 * k) * 2.0 + (ax - 0.5)) * s;
        out[(6 + 3 * k) * a + idx] = (kp(3 * k + 1) * 2.0 + (ay - 0.5)) * s;
        out[(7 + 3 * k) * a + idx] = sigmoid(kp(3 * k + 2));
    }
}
