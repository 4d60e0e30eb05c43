//! Safe operations over one activation arena: every tensor is an NHWC view (offset, height,
//! width, pixel stride, channels) into a single `Vec<f32>` that is allocated on the first frame
//! of a given size and reused afterwards (no per-frame allocation in steady state).
//!
//! Each op checks its views against the arena bounds and that what it writes does not overlap
//! what it reads (a residual may be exactly the output) before calling the raw kernels.

use std::time::Instant;

use super::kernels::{self, ASrc, Epilogue, Im2col, PackedB};
use super::winograd::{self, WinogradW};
use crate::ModelError;

/// An NHWC view into the arena: element (y, x, ch) is at `off + (y*w + x)*ld + ch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Offset of (0, 0, 0).
    pub off: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Pixel stride (>= `c`).
    pub ld: usize,
    /// Channels.
    pub c: usize,
}

impl View {
    /// Channels `c0 .. c0+n` of this view.
    pub fn ch(&self, c0: usize, n: usize) -> View {
        View {
            off: self.off + c0,
            c: n,
            ..*self
        }
    }

    /// Pixels.
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }

    /// One past the last element touched.
    fn end(&self) -> usize {
        if self.pixels() == 0 || self.c == 0 {
            self.off
        } else {
            self.off + (self.pixels() - 1) * self.ld + self.c
        }
    }

    /// Whether no element of `self` is an element of `o`.
    fn disjoint(&self, o: &View) -> bool {
        if self.end() <= o.off || o.end() <= self.off {
            return true;
        }
        // Same pixel stride: with the later view starting r = (distance mod ld) columns after
        // the earlier one's grid, it must sit in the gap [c_first, ld) of every row.
        if self.ld == o.ld && self.ld > 0 {
            let (first, second) = if self.off <= o.off {
                (self, o)
            } else {
                (o, self)
            };
            let r = (second.off - first.off) % self.ld;
            return first.c <= r && r + second.c <= self.ld;
        }
        false
    }
}

/// Op categories of the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1x1 convolutions.
    Conv1x1 = 0,
    /// k x k (k > 1) dense convolutions.
    Conv3x3 = 1,
    /// Depthwise 3x3.
    Depthwise = 2,
    /// Attention core (QK^T, softmax, PV, packing).
    Attention = 3,
    /// Everything else (input layout, pooling, upsampling, decode).
    Other = 4,
}

/// Names of [`Kind`] in order.
pub const KIND_NAMES: [&str; 5] = ["conv1x1", "conv3x3", "depthwise", "attention", "other"];
/// Names of the stages in order.
pub const STAGE_NAMES: [&str; 3] = ["backbone", "neck", "head"];

/// Time per op kind and per stage of the last forward, and its floating-point operations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Profile {
    /// Seconds per [`Kind`].
    pub kind_s: [f64; 5],
    /// Seconds per stage (backbone, neck, head incl. decode).
    pub stage_s: [f64; 3],
    /// FLOPs per [`Kind`] (multiply-add = 2).
    pub kind_flops: [f64; 5],
    /// Total seconds.
    pub total_s: f64,
}

impl Profile {
    /// Total counted FLOPs.
    pub fn flops(&self) -> f64 {
        self.kind_flops.iter().sum()
    }
}

/// The activation arena plus the profile being recorded.
#[derive(Default)]
pub struct Arena {
    data: Vec<f32>,
    top: usize,
    /// Profile of the current/last forward.
    pub prof: Profile,
    /// Stage being recorded (index into [`STAGE_NAMES`]).
    pub stage: usize,
    /// Per-op records of the last forward when [`Arena::trace`] is on.
    pub ops: Vec<OpRecord>,
    /// Record every op into [`Arena::ops`].
    pub trace: bool,
    /// Gathered patches and their outputs for [`Arena::conv_at`] (grow only).
    gather: Vec<f32>,
    gathered_out: Vec<f32>,
}

/// One op of a traced forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpRecord {
    /// Category.
    pub kind: Kind,
    /// Output (h, w, c).
    pub out: (usize, usize, usize),
    /// Kernel size * 10 + stride (convolutions), else 0.
    pub k: usize,
    /// Input channels (convolutions), else 0.
    pub ci: usize,
    /// FLOPs.
    pub flops: f64,
    /// Seconds.
    pub secs: f64,
}

/// `d = max(d, s)` elementwise (written so that it vectorises).
fn max_into(d: &mut [f32], s: &[f32]) {
    // an unconditional select (not a conditional store) becomes vmaxps
    for (d, &s) in d.iter_mut().zip(s) {
        *d = if s > *d { s } else { *d };
    }
}

fn bad(msg: String) -> ModelError {
    ModelError::Input(format!("fast path: {msg}"))
}

/// The fused epilogue: SiLU or not, and the view `res` of the arena starting at `base` (which
/// the caller has checked) as the residual.
fn epilogue(base: *mut f32, silu: bool, res: Option<View>) -> Epilogue {
    Epilogue {
        silu,
        residual: res.map(|r| (base.wrapping_add(r.off) as *const f32, r.ld)),
    }
}

impl Kind {
    /// The kind of a k x k dense convolution.
    fn conv(k: usize) -> Self {
        if k == 1 {
            Kind::Conv1x1
        } else {
            Kind::Conv3x3
        }
    }
}

impl Arena {
    /// Starts a new frame: all previous views become invalid.
    pub fn reset(&mut self) {
        self.top = 0;
        self.prof = Profile::default();
        self.stage = 0;
        self.ops.clear();
    }

    /// A fresh `h x w x c` tensor (contents unspecified). Grows the arena on the first frame
    /// of a size only.
    pub fn alloc(&mut self, h: usize, w: usize, c: usize) -> View {
        // Pad to 16 floats so tensors start on 64-byte boundaries relative to the arena.
        let n = (h * w * c).div_ceil(16) * 16;
        let v = View {
            off: self.top,
            h,
            w,
            ld: c,
            c,
        };
        self.top += n;
        if self.data.len() < self.top {
            self.data.resize(self.top, 0.0);
        }
        v
    }

    /// Runs `f`, then frees everything it allocated (stack discipline: a block's temporaries
    /// are reused by the next block, which keeps the working set in cache). Views allocated
    /// inside must not be used after it returns.
    pub fn scoped<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let mark = self.top;
        let r = f(self);
        self.top = mark;
        r
    }

    /// Floats reserved by the arena.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// The arena's contents.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Whether `v` lies inside the arena (`what` names it in the error, formatted only then).
    fn check(&self, v: &View, what: impl std::fmt::Display) -> Result<(), ModelError> {
        if v.c > v.ld || v.end() > self.data.len() {
            return Err(bad(format!(
                "{what} view {v:?} outside the arena ({})",
                self.data.len()
            )));
        }
        Ok(())
    }

    /// [`Arena::check`] of an op's input and output views (`"{op} input"`, `"{op} output"`).
    fn check_io(&self, src: &View, dst: &View, op: &str) -> Result<(), ModelError> {
        self.check(src, format_args!("{op} input"))?;
        self.check(dst, format_args!("{op} output"))
    }

    fn record(&mut self, kind: Kind, t0: Instant, flops: f64) {
        self.record_op(kind, t0, flops, (0, 0, 0), 0, 0);
    }

    fn record_op(
        &mut self,
        kind: Kind,
        t0: Instant,
        flops: f64,
        out: (usize, usize, usize),
        k: usize,
        ci: usize,
    ) {
        let dt = t0.elapsed().as_secs_f64();
        if self.trace {
            self.ops.push(OpRecord {
                kind,
                out,
                k,
                ci,
                flops,
                secs: dt,
            });
        }
        self.prof.kind_s[kind as usize] += dt;
        self.prof.stage_s[self.stage.min(2)] += dt;
        self.prof.kind_flops[kind as usize] += flops;
    }

    /// Times `f` as `kind` (for ops done outside this module, e.g. decode).
    pub fn timed<R>(&mut self, kind: Kind, f: impl FnOnce(&mut Self) -> R) -> R {
        let t0 = Instant::now();
        let r = f(self);
        self.record(kind, t0, 0.0);
        r
    }

    /// Convolution (k x k, stride s, pad k/2) with fused bias, SiLU and residual.
    pub fn conv(
        &mut self,
        cw: &ConvW,
        src: View,
        dst: View,
        res: Option<View>,
    ) -> Result<(), ModelError> {
        self.conv_impl(cw, src, dst, res, None)
    }

    /// [`Arena::conv`] of the CHW image `chw` (`cw.ci` planes of `h x w`, outside the arena):
    /// the first layer reads the caller's planes directly, no NHWC copy.
    pub fn conv_planar(
        &mut self,
        cw: &ConvW,
        chw: &[f32],
        h: usize,
        w: usize,
        dst: View,
    ) -> Result<(), ModelError> {
        let src = View {
            off: 0,
            h,
            w,
            ld: cw.ci,
            c: cw.ci,
        };
        self.conv_impl(cw, src, dst, None, Some(chw))
    }

    fn conv_impl(
        &mut self,
        cw: &ConvW,
        src: View,
        dst: View,
        res: Option<View>,
        planar: Option<&[f32]>,
    ) -> Result<(), ModelError> {
        match planar {
            // outside the arena (a shared borrow, so disjoint from it): only its size to check
            Some(chw) => {
                if chw.len() != src.c * src.pixels() || cw.k == 1 {
                    return Err(bad(format!(
                        "planar input of {} values for {src:?} (k = {})",
                        chw.len(),
                        cw.k
                    )));
                }
            }
            None => self.check(&src, "conv input")?,
        }
        self.check(&dst, "conv output")?;
        let pad = cw.k / 2;
        let oh = (src.h + 2 * pad).saturating_sub(cw.k) / cw.stride + 1;
        let ow = (src.w + 2 * pad).saturating_sub(cw.k) / cw.stride + 1;
        if src.c != cw.ci || dst.c != cw.co || dst.h != oh || dst.w != ow {
            return Err(bad(format!(
                "conv {}x{} s{} {}->{}: input {src:?} output {dst:?}",
                cw.k, cw.k, cw.stride, cw.ci, cw.co
            )));
        }
        if planar.is_none() && !dst.disjoint(&src) {
            return Err(bad(format!(
                "conv output {dst:?} overlaps its input {src:?}"
            )));
        }
        if let Some(r) = &res {
            self.check(r, "residual")?;
            if r.h != dst.h || r.w != dst.w || r.c != dst.c || (r != &dst && !r.disjoint(&dst)) {
                return Err(bad(format!("residual {r:?} does not fit output {dst:?}")));
            }
        }
        let t0 = Instant::now();
        let base = self.data.as_mut_ptr();
        // SAFETY: in bounds (checked above).
        let sp: *const f32 = match planar {
            Some(x) => x.as_ptr(),
            None => unsafe { base.add(src.off) },
        };
        let planar = planar.is_some();
        let epi = epilogue(base, cw.act, res);
        // the traced kernel tag: k * 10 + stride, 39 for Winograd
        let tag = 'run: {
            if let (Some(wn), false) = (&cw.wino, planar) {
                // SAFETY: input/output/residual checked in bounds, output disjoint from the
                // input and disjoint from or equal to the residual; `wino` exists only when
                // `winograd::supported(ci, co)`; stride 1, pad 1 (k = 3).
                unsafe {
                    winograd::conv3x3(sp, src.ld, src.h, src.w, wn, base.add(dst.off), dst.ld, epi)
                };
                break 'run 39;
            }
            if planar && cw.co <= kernels::NR && kernels::has_avx2() {
                if let Some((panel, pb)) = cw.b.panel(0) {
                    // SAFETY: the planar input (c planes of h*w, its length checked) is the
                    // caller's slice, the output view is inside the arena (checked), so they
                    // are disjoint; the panel has k*k*ci rows of NR and the bias NR floats;
                    // co <= NR; AVX2 checked.
                    unsafe {
                        kernels::conv_planar_direct(&kernels::PlanarConv {
                            src: sp,
                            ih: src.h,
                            iw: src.w,
                            ci: src.c,
                            k: cw.k,
                            stride: cw.stride,
                            w: panel.as_ptr(),
                            bias: pb.as_ptr(),
                            silu: cw.act,
                            dst: base.add(dst.off),
                            ldd: dst.ld,
                            co: cw.co,
                            oh,
                            ow,
                        })
                    };
                    break 'run cw.k * 10 + cw.stride;
                }
            }
            let a = if cw.k == 1 && cw.stride == 1 {
                ASrc::Direct {
                    ptr: sp,
                    ld: src.ld,
                }
            } else {
                ASrc::Im2col(Im2col {
                    ptr: sp,
                    // planar: c planes of h*w
                    ld: if planar { src.pixels() } else { src.ld },
                    ih: src.h,
                    iw: src.w,
                    ci: src.c,
                    k: cw.k,
                    stride: cw.stride,
                    pad,
                    ow,
                    planar,
                })
            };
            // SAFETY: A (the input view, or its k x k patches, pads excluded) and C (the
            // output view) and the residual are inside the arena (checked); C is disjoint
            // from A and is either disjoint from the residual or exactly it.
            unsafe { kernels::gemm(dst.pixels(), a, &cw.b, base.add(dst.off), dst.ld, epi) };
            cw.k * 10 + cw.stride
        };
        let out = (dst.h, dst.w, dst.c);
        let flops = cw.flops(dst.pixels());
        self.record_op(Kind::conv(cw.k), t0, flops, out, tag, cw.ci);
        Ok(())
    }

    /// [`Arena::conv`] (stride 1) at the output pixels `at` only (indices `y * w + x`); the
    /// other pixels of `dst` are left as they were. For the pose head, whose box and keypoint
    /// branches are needed only where the class score passes the threshold.
    pub fn conv_at(
        &mut self,
        cw: &ConvW,
        src: View,
        dst: View,
        at: &[u32],
    ) -> Result<(), ModelError> {
        self.check_io(&src, &dst, "conv")?;
        if cw.stride != 1
            || src.c != cw.ci
            || dst.c != cw.co
            || (src.h, src.w) != (dst.h, dst.w)
            || !dst.disjoint(&src)
        {
            return Err(bad(format!(
                "sparse conv {}x{} s{} {}->{}: input {src:?} output {dst:?}",
                cw.k, cw.k, cw.stride, cw.ci, cw.co
            )));
        }
        let (h, w) = (dst.h, dst.w);
        if let Some(p) = at.iter().find(|&&p| p as usize >= h * w) {
            return Err(bad(format!("sparse conv pixel {p} outside {h}x{w}")));
        }
        let t0 = Instant::now();
        let (k, ci, co, n) = (cw.k, cw.ci, cw.co, at.len());
        let kk = k * k * ci;
        let pad = k / 2;
        if self.gather.len() < n * kk {
            self.gather.resize(n * kk, 0.0);
        }
        if self.gathered_out.len() < n * co {
            self.gathered_out.resize(n * co, 0.0);
        }
        for (row, &p) in self.gather.chunks_exact_mut(kk).zip(at) {
            let (y, x) = (p as usize / w, p as usize % w);
            for ky in 0..k {
                for kx in 0..k {
                    let out = &mut row[(ky * k + kx) * ci..(ky * k + kx + 1) * ci];
                    let (iy, ix) = ((y + ky).wrapping_sub(pad), (x + kx).wrapping_sub(pad));
                    if iy < h && ix < w {
                        let o = src.off + (iy * w + ix) * src.ld;
                        out.copy_from_slice(&self.data[o..o + ci]);
                    } else {
                        out.fill(0.0);
                    }
                }
            }
        }
        let a = ASrc::Direct {
            ptr: self.gather.as_ptr(),
            ld: kk,
        };
        let epi = Epilogue {
            silu: cw.act,
            residual: None,
        };
        // SAFETY: A is `n` gathered rows of `kk` floats, C `n` rows of `co` floats: both sized
        // above and separate allocations, so C overlaps neither A nor a residual (none).
        unsafe { kernels::gemm(n, a, &cw.b, self.gathered_out.as_mut_ptr(), co, epi) };
        for (vals, &p) in self.gathered_out.chunks_exact(co).zip(at) {
            let o = dst.off + p as usize * dst.ld;
            self.data[o..o + co].copy_from_slice(vals);
        }
        self.record_op(Kind::conv(k), t0, cw.flops(n), (n, 1, co), k * 10 + 1, ci);
        Ok(())
    }

    /// Depthwise 3x3 (stride 1) over channels `c0..c0+src.c` of `dw`'s weights.
    pub fn dw(&mut self, dw: &DwW, c0: usize, src: View, dst: View) -> Result<(), ModelError> {
        self.check_io(&src, &dst, "depthwise")?;
        if src.h != dst.h
            || src.w != dst.w
            || src.c != dst.c
            || c0 + src.c > dw.c
            || !dst.disjoint(&src)
        {
            return Err(bad(format!(
                "depthwise {} ch at {c0}: input {src:?} output {dst:?}",
                dw.c
            )));
        }
        let t0 = Instant::now();
        let base = self.data.as_mut_ptr();
        // SAFETY: views checked in bounds and disjoint; weights hold 9 x dw.c and bias dw.c,
        // and c0 + src.c <= dw.c.
        unsafe {
            kernels::dw3x3(&kernels::Depthwise {
                src: base.add(src.off),
                lds: src.ld,
                dst: base.add(dst.off),
                ldd: dst.ld,
                h: src.h,
                w: src.w,
                c: src.c,
                wt: dw.w.as_ptr().add(c0),
                wld: dw.c,
                bias: dw.bias.as_ptr().add(c0),
                act: dw.act,
            })
        };
        self.record(Kind::Depthwise, t0, 18.0 * (src.pixels() * src.c) as f64);
        Ok(())
    }

    /// Max pool 5x5, stride 1, padding 2 (padding never wins).
    pub fn maxpool5(&mut self, src: View, dst: View) -> Result<(), ModelError> {
        self.check_io(&src, &dst, "pool")?;
        // (the temporary goes on top of the arena: both views must lie below it)
        if src.h != dst.h
            || src.w != dst.w
            || src.c != dst.c
            || !dst.disjoint(&src)
            || src.end().max(dst.end()) > self.top
        {
            return Err(bad(format!("maxpool: input {src:?} output {dst:?}")));
        }
        let t0 = Instant::now();
        // Separable: max over 5 columns into a temporary, then over 5 rows of it.
        let (h, w, c) = (src.h, src.w, src.c);
        let mark = self.top;
        let tmp = self.alloc(h, w, c);
        {
            let (lower, upper) = self.data.split_at_mut(tmp.off);
            for y in 0..h {
                for x in 0..w {
                    let t = &mut upper[(y * w + x) * c..(y * w + x + 1) * c];
                    let first = src.off + (y * w + x.saturating_sub(2)) * src.ld;
                    t.copy_from_slice(&lower[first..first + c]);
                    for ix in x.saturating_sub(2) + 1..(x + 3).min(w) {
                        let o = src.off + (y * w + ix) * src.ld;
                        max_into(t, &lower[o..o + c]);
                    }
                }
            }
            for y in 0..h {
                for x in 0..w {
                    let d = dst.off + (y * w + x) * dst.ld;
                    let d = &mut lower[d..d + c];
                    let first = (y.saturating_sub(2) * w + x) * c;
                    d.copy_from_slice(&upper[first..first + c]);
                    for iy in y.saturating_sub(2) + 1..(y + 3).min(h) {
                        let o = (iy * w + x) * c;
                        max_into(d, &upper[o..o + c]);
                    }
                }
            }
        }
        self.top = mark;
        self.record(Kind::Other, t0, 0.0);
        Ok(())
    }

    /// Nearest-neighbour 2x upsampling.
    pub fn upsample2(&mut self, src: View, dst: View) -> Result<(), ModelError> {
        self.check_io(&src, &dst, "upsample")?;
        if dst.h != 2 * src.h || dst.w != 2 * src.w || src.c != dst.c || !dst.disjoint(&src) {
            return Err(bad(format!("upsample: input {src:?} output {dst:?}")));
        }
        let t0 = Instant::now();
        let base = self.data.as_mut_ptr();
        // SAFETY: both views checked in bounds above and disjoint; dst is 2h x 2w of src.
        unsafe {
            kernels::upsample2(
                base.add(src.off),
                src.ld,
                src.h,
                src.w,
                src.c,
                base.add(dst.off),
                dst.ld,
            )
        };
        self.record(Kind::Other, t0, 0.0);
        Ok(())
    }

    /// `dst = epilogue(a * b)` for matrices stored as views (`h*w` rows of `c` values): `a` has
    /// `b.k()` columns, `dst` has `b.n()`; `res` as in [`Arena::conv`].
    pub fn matmul(
        &mut self,
        a: View,
        b: &PackedB,
        dst: View,
        res: Option<View>,
    ) -> Result<(), ModelError> {
        self.check(&a, "matmul A")?;
        self.check(&dst, "matmul C")?;
        if a.pixels() != dst.pixels() || a.c != b.k() || dst.c != b.n() || !dst.disjoint(&a) {
            return Err(bad(format!(
                "matmul {}x{}: A {a:?} C {dst:?}",
                b.k(),
                b.n()
            )));
        }
        if let Some(r) = &res {
            self.check(r, "matmul residual")?;
            if r.pixels() != dst.pixels() || r.c != dst.c || (r != &dst && !r.disjoint(&dst)) {
                return Err(bad(format!("residual {r:?} does not fit output {dst:?}")));
            }
        }
        let t0 = Instant::now();
        let base = self.data.as_mut_ptr();
        let epi = epilogue(base, false, res);
        // SAFETY: A, C and the residual are checked in bounds; C is disjoint from A and either
        // disjoint from the residual or exactly it.
        unsafe {
            kernels::gemm(
                dst.pixels(),
                ASrc::Direct {
                    ptr: base.add(a.off),
                    ld: a.ld,
                },
                b,
                base.add(dst.off),
                dst.ld,
                epi,
            )
        };
        self.record(
            Kind::Attention,
            t0,
            2.0 * (dst.pixels() * b.k() * b.n()) as f64,
        );
        Ok(())
    }

    /// Row-wise softmax of a `rows x n` matrix view.
    pub fn softmax(&mut self, v: View) -> Result<(), ModelError> {
        self.check(&v, "softmax")?;
        let t0 = Instant::now();
        let end = v.end();
        kernels::softmax_rows(&mut self.data[v.off..end], v.pixels(), v.c, v.ld);
        self.record(Kind::Attention, t0, 0.0);
        Ok(())
    }

    /// Packs `B[kk][nn] = view[row kk][col nn] * scale` (rows = pixels) into `out`
    /// (`transpose`: `B[kk][nn] = view[row nn][col kk] * scale`).
    pub fn pack(
        &mut self,
        v: View,
        transpose: bool,
        scale: f32,
        out: &mut PackedB,
    ) -> Result<(), ModelError> {
        self.check(&v, "pack")?;
        let t0 = Instant::now();
        let d = &self.data;
        let at = |r: usize, c: usize| d[v.off + r * v.ld + c] * scale;
        if transpose {
            out.repack(v.c, v.pixels(), |kk, nn| at(nn, kk), None);
        } else {
            out.repack(v.pixels(), v.c, at, None);
        }
        self.record(Kind::Attention, t0, 0.0);
        Ok(())
    }
}

/// A convolution with BatchNorm folded, weights packed for the GEMM.
#[derive(Debug, Clone)]
pub struct ConvW {
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Input channels.
    pub ci: usize,
    /// Output channels.
    pub co: usize,
    /// SiLU after the bias.
    pub act: bool,
    /// Packed `[(ky, kx, ci) x co]` weights and bias.
    pub b: PackedB,
    /// Winograd F(2x2, 3x3) weights for stride-1 3x3 convs the CPU and channel counts allow.
    pub wino: Option<WinogradW>,
}

impl ConvW {
    /// From OIHW weights `w` (`co x ci x k x k`) and a bias.
    pub fn new(
        w: &[f32],
        co: usize,
        ci: usize,
        k: usize,
        bias: &[f32],
        stride: usize,
        act: bool,
    ) -> Self {
        let b = PackedB::from_oihw(w, co, ci, k, Some(bias));
        let wino = (k == 3 && stride == 1 && winograd::supported(ci, co))
            .then(|| WinogradW::new(w, co, ci, bias));
        Self {
            k,
            stride,
            ci,
            co,
            act,
            b,
            wino,
        }
    }

    /// FLOPs for `pixels` output pixels.
    pub fn flops(&self, pixels: usize) -> f64 {
        2.0 * (pixels * self.k * self.k * self.ci * self.co) as f64
    }
}

/// A depthwise 3x3 convolution with BatchNorm folded: weights tap-major (`9 x c`).
#[derive(Debug, Clone)]
pub struct DwW {
    /// Channels.
    pub c: usize,
    /// `w[tap * c + ch]`.
    pub w: Vec<f32>,
    /// Bias per channel.
    pub bias: Vec<f32>,
    /// SiLU after the bias.
    pub act: bool,
}

impl DwW {
    /// From `c x 1 x 3 x 3` weights.
    pub fn new(w: &[f32], c: usize, bias: &[f32], act: bool) -> Self {
        let mut t = vec![0f32; 9 * c];
        for ch in 0..c {
            for tap in 0..9 {
                t[tap * c + ch] = w[ch * 9 + tap];
            }
        }
        Self {
            c,
            w: t,
            bias: bias.to_vec(),
            act,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::testing::rand_vec;

    #[test]
    fn disjoint_views() {
        let a = View {
            off: 0,
            h: 2,
            w: 2,
            ld: 8,
            c: 4,
        };
        assert!(a.disjoint(&a.ch(4, 4)));
        assert!(!a.disjoint(&a.ch(3, 4)));
        assert!(!a.disjoint(&a));
        let far = View { off: 100, ..a };
        assert!(a.disjoint(&far));
        // slices of a buffer whose start is not a multiple of its stride
        let b = View { off: 13, ..a };
        assert!(b.ch(0, 4).disjoint(&b.ch(4, 4)));
        assert!(b.ch(4, 4).disjoint(&b.ch(0, 4)));
        assert!(!b.ch(2, 4).disjoint(&b.ch(4, 4)));
        let wide = View { c: 5, ..b };
        assert!(!wide.disjoint(&View {
            off: 13 + 4,
            c: 4,
            ..b
        }));
    }

    #[test]
    fn conv_rejects_overlap_and_bad_shapes() {
        let mut ar = Arena::default();
        let x = ar.alloc(4, 4, 8);
        let cw = ConvW::new(&[0.5; 16], 4, 4, 1, &[0.0; 4], 1, false);
        // output overlapping its input
        assert!(ar.conv(&cw, x.ch(0, 4), x.ch(2, 4), None).is_err());
        // wrong channel count
        assert!(ar.conv(&cw, x, x.ch(0, 4), None).is_err());
        // fine: disjoint channel slices of one buffer
        assert!(ar.conv(&cw, x.ch(0, 4), x.ch(4, 4), None).is_ok());
        // outside the arena
        let out = View {
            off: 1 << 20,
            ..x.ch(4, 4)
        };
        assert!(ar.conv(&cw, x.ch(0, 4), out, None).is_err());
    }

    #[test]
    fn pool_and_upsample() {
        let mut ar = Arena::default();
        let x = ar.alloc(3, 4, 2);
        let y = ar.alloc(3, 4, 2);
        let u = ar.alloc(6, 8, 2);
        for p in 0..12 {
            ar.data[x.off + 2 * p] = p as f32;
            ar.data[x.off + 2 * p + 1] = -(p as f32);
        }
        ar.maxpool5(x, y).expect("pool");
        // pixel (0,0): window rows 0..2, cols 0..2 -> max index 2*4+2 = 10
        assert_eq!(ar.data[y.off], 10.0);
        assert_eq!(ar.data[y.off + 1], 0.0);
        ar.upsample2(x, u).expect("up");
        // against a direct 5x5 window on a larger random input, channel slices with a stride
        let (h, w, c) = (7, 9, 5);
        let big = ar.alloc(h, w, 2 * c + 1);
        let n = h * w * (2 * c + 1);
        ar.data[big.off..big.off + n].copy_from_slice(&rand_vec(n, 7));
        let (s, d) = (big.ch(0, c), big.ch(c + 1, c));
        ar.maxpool5(s, d).expect("pool");
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let mut m = f32::NEG_INFINITY;
                    for iy in y.saturating_sub(2)..(y + 3).min(h) {
                        for ix in x.saturating_sub(2)..(x + 3).min(w) {
                            m = m.max(ar.data[s.off + (iy * w + ix) * s.ld + ch]);
                        }
                    }
                    assert_eq!(
                        ar.data[d.off + (y * w + x) * d.ld + ch],
                        m,
                        "({y}, {x}, {ch})"
                    );
                }
            }
        }
        // a view above the arena's top is refused (the temporary would overlap it)
        let top = View { off: ar.top, ..y };
        assert!(ar.maxpool5(x, top).is_err());
        // (3, 5) in the output is (1, 2) in the input -> 6
        assert_eq!(ar.data[u.off + (3 * 8 + 5) * 2], 6.0);
    }

    #[test]
    fn conv_at_matches_the_dense_conv_at_its_pixels() {
        // 3x3 (Winograd-capable shape and not) and 1x1, with and without SiLU, on a channel
        // slice, border and interior pixels; other pixels of the output stay untouched.
        for (k, ci, co, act) in [(3, 16, 24, true), (3, 5, 7, false), (1, 12, 20, true)] {
            let (h, w) = (7, 9);
            let mut ar = Arena::default();
            let x = ar.alloc(h, w, ci + 3);
            let dense = ar.alloc(h, w, co);
            let sparse = ar.alloc(h, w, co);
            let n = h * w * (ci + 3);
            ar.data[x.off..x.off + n].copy_from_slice(&rand_vec(n, 1));
            let wt = rand_vec(co * ci * k * k, 2);
            let bias = rand_vec(co, 3);
            let cw = ConvW::new(&wt, co, ci, k, &bias, 1, act);
            let src = x.ch(3, ci);
            ar.conv(&cw, src, dense, None).expect("dense");
            for i in sparse.off..sparse.off + h * w * co {
                ar.data[i] = 99.0;
            }
            let at = [0u32, 4, 10, 31, 62];
            ar.conv_at(&cw, src, sparse, &at).expect("sparse");
            for p in 0..h * w {
                for c in 0..co {
                    let (d, s) = (
                        ar.data[dense.off + p * co + c],
                        ar.data[sparse.off + p * co + c],
                    );
                    if at.contains(&(p as u32)) {
                        assert!(
                            (d - s).abs() <= 1e-4 * (1.0 + d.abs()),
                            "k{k} pixel {p} ch {c}: {s} vs {d}"
                        );
                    } else {
                        assert_eq!(s, 99.0, "pixel {p} was not asked for");
                    }
                }
            }
            assert!(ar.conv_at(&cw, src, sparse, &[(h * w) as u32]).is_err());
        }
    }
}
