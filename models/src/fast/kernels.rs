//! Hot kernels of the fast path: a packed-weight GEMM with a fused bias + SiLU + residual
//! epilogue (AVX2/FMA 6x16 micro-kernel, scalar fallback), implicit im2col for k x k
//! convolutions, a depthwise 3x3 kernel, a vectorised exp for SiLU and softmax.
//!
//! Activations are NHWC (pixel-major, channels contiguous, row stride `ld` >= channels) so a
//! 1x1 convolution is `C[pixels x co] = A[pixels x ci] * B[ci x co]` with A read in place, and a
//! channel slice of a wider buffer (a concat or split) is just an offset plus the stride.
//!
//! All functions taking raw pointers are `unsafe`; the safe wrappers in [`super::ops`] check
//! every region against the arena before calling them.

use std::cell::{Cell, RefCell};

/// Output channels per packed weight panel (two AVX registers, one AVX-512 register).
pub const NR: usize = 16;
/// Pixels per micro-tile (AVX2 and portable).
pub const MR: usize = 6;
/// Pixels per AVX-512 micro-tile (two panels wide: 24 of the 32 zmm registers accumulate).
pub const MR512: usize = 12;
/// Largest K (reduction) block; K is split into equal blocks of at most this (a B micro-panel
/// of up to 32 KiB). Measured on the 640x384 network: 256 and 768 were both slower.
const KC: usize = 512;
/// M (pixel) block: one A block of `MC x KC` floats (96 KiB) stays in L2.
const MC: usize = 48;

/// The instruction set the fast path's kernels run on, chosen once per estimator (best
/// available unless forced; see [`Isa::select`]). Ordered: each level may use the kernels of
/// the levels below it (the AVX-512 path keeps the AVX2 depthwise, Winograd transforms and
/// softmax; only the GEMM micro-kernel differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Scalar Rust, any CPU.
    Portable,
    /// AVX2 + FMA: the 6x16 GEMM micro-kernel and the vectorised depthwise, exp, softmax.
    Avx2,
    /// AVX-512 F: a 12x32 GEMM micro-kernel (two 16-column panels at once), the rest AVX2.
    Avx512,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name used by `pose.isa` / `REFEREE_POSE_ISA` and printed by `referee bench pose`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the level (cached by std's feature detection).
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.supported() && std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best level this CPU runs (whose start-up self-check passes, see
    /// [`Isa::self_check`]).
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.supported() && i.self_check().is_ok())
            .unwrap_or(Isa::Portable)
    }

    /// Checks the level's GEMM micro-kernel against the portable one once per process, on
    /// every tile shape (1..=12 rows, one and two panels, masked column tails, SiLU,
    /// residual). Only the AVX-512 level is checked: it was written on a machine without
    /// AVX-512, so a CPU that has it verifies it before use (microseconds) instead of
    /// trusting it blindly; [`Isa::best`] falls back to AVX2 where it fails.
    pub fn self_check(self) -> Result<(), String> {
        static AVX512: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        if self < Isa::Avx512 {
            return Ok(());
        }
        if !self.supported() {
            return Err(format!("{self}: not supported by this CPU"));
        }
        AVX512.get_or_init(|| gemm_self_check(self)).clone()
    }

    /// The levels this CPU runs, lowest first (what the per-ISA tests iterate).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// The level for a `pose.isa` value: `auto` (or empty) = [`Isa::best`]; a named level
    /// this CPU lacks, or an unknown name, is an error.
    pub fn select(name: &str) -> Result<Isa, String> {
        let n = name.trim().to_ascii_lowercase();
        if n.is_empty() || n == "auto" {
            return Ok(Isa::best());
        }
        if n == "amx" {
            return Err(
                "pose.isa = amx: this build has no AMX kernels (auto picks avx512 on AMX CPUs)"
                    .into(),
            );
        }
        let isa = Isa::ALL
            .into_iter()
            .find(|i| i.name() == n)
            .ok_or_else(|| {
                format!("pose.isa = {name:?}: expected auto, amx, avx512, avx2 or portable")
            })?;
        if !isa.supported() {
            return Err(format!(
                "pose.isa = {}: this CPU lacks it (best here: {})",
                isa.name(),
                Isa::best().name()
            ));
        }
        isa.self_check()
            .map_err(|e| format!("pose.isa = {}: self-check failed: {e}", isa.name()))?;
        Ok(isa)
    }
}

/// [`Isa::self_check`]: `C = silu(A B + bias) + R` at `isa` and portable, M = 1..=12 rows
/// (every micro-tile height), K = 19, N = 45 (a two-panel tile, then a one-panel tile with
/// 13 of 16 columns), compared to 1e-5 relative.
fn gemm_self_check(isa: Isa) -> Result<(), String> {
    let (k, n) = (19usize, 45usize);
    let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 1999) as f32 / 999.5) - 1.0;
    let w: Vec<f32> = (0..k * n).map(|i| val(i, 1)).collect();
    let bias: Vec<f32> = (0..n).map(|i| val(i, 2)).collect();
    let b = PackedB::pack(k, n, |kk, o| w[kk * n + o], Some(&bias));
    for m in 1..=MR512 {
        let a: Vec<f32> = (0..m * k).map(|i| val(i, 3 + m)).collect();
        let res: Vec<f32> = (0..m * n).map(|i| val(i, 5)).collect();
        let ldc = n + 3;
        let mut got = vec![f32::NAN; m * ldc];
        let mut want = vec![f32::NAN; m * ldc];
        for (isa, out) in [(isa, &mut got), (Isa::Portable, &mut want)] {
            let epi = Epilogue {
                silu: true,
                residual: Some((res.as_ptr(), n)),
            };
            let src = ASrc::Direct {
                ptr: a.as_ptr(),
                ld: k,
            };
            // SAFETY: A is m x k, B k x n, C m rows of ldc >= n, the residual m x n and
            // disjoint from C; `isa` is supported (checked by the caller).
            unsafe { gemm_rows(isa, 0, m, src, &b, out.as_mut_ptr(), ldc, epi) };
        }
        for i in 0..m * ldc {
            let (g, e) = (got[i], want[i]);
            let ok = if i % ldc < n {
                (g - e).abs() <= 1e-5 * (1.0 + e.abs())
            } else {
                g.is_nan()
            };
            if !ok {
                return Err(format!(
                    "{isa} GEMM m {m} row {} col {}: {g} vs portable {e}",
                    i / ldc,
                    i % ldc
                ));
            }
        }
    }
    Ok(())
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    /// The level kernels on this thread use (`None`: [`Isa::best`]); set by [`with_isa`].
    static ISA: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The level the kernels called on this thread use: the estimator's while it loads or runs a
/// forward (see [`with_isa`]), else the best available. Parallel kernels read it on the
/// calling thread and hand it to their chunks (team helpers do not see it).
#[inline]
pub fn current_isa() -> Isa {
    ISA.with(Cell::get).unwrap_or_else(Isa::best)
}

/// Runs `f` with the kernels on this thread at `isa` (which must be [`Isa::supported`]).
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ISA.with(|c| c.set(self.0));
        }
    }
    debug_assert!(isa.supported());
    let _restore = Restore(ISA.with(|c| c.replace(Some(isa))));
    f()
}

/// Whether the AVX2 + FMA kernels may run: the current level (see [`current_isa`]) is AVX2
/// or above, which implies the CPU has them.
#[inline]
pub fn has_avx2() -> bool {
    current_isa() >= Isa::Avx2
}

/// Weights `B[k x n]` packed as panels of 16 (`NR`) columns: panel `p` holds rows `0..k` of columns
/// `p*NR .. p*NR+NR` contiguously (zero padded), plus a bias padded to a multiple of `NR`.
#[derive(Debug, Clone, Default)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedB {
    /// Packs `B[kk][nn] = get(kk, nn)` with a bias (`None`: zeros).
    pub fn pack(
        k: usize,
        n: usize,
        get: impl Fn(usize, usize) -> f32,
        bias: Option<&[f32]>,
    ) -> Self {
        let mut p = Self::default();
        p.repack(k, n, get, bias);
        p
    }

    /// Packs again into the same storage (no allocation once it is large enough).
    pub fn repack(
        &mut self,
        k: usize,
        n: usize,
        get: impl Fn(usize, usize) -> f32,
        bias: Option<&[f32]>,
    ) {
        let panels = n.div_ceil(NR);
        self.k = k;
        self.n = n;
        self.data.clear();
        self.data.resize(panels * k * NR, 0.0);
        for p in 0..panels {
            let base = p * k * NR;
            for kk in 0..k {
                let row = &mut self.data[base + kk * NR..base + kk * NR + NR];
                for (j, v) in row.iter_mut().enumerate() {
                    let nn = p * NR + j;
                    if nn < n {
                        *v = get(kk, nn);
                    }
                }
            }
        }
        self.bias.clear();
        self.bias.resize(panels * NR, 0.0);
        if let Some(b) = bias {
            for (d, s) in self.bias.iter_mut().zip(b.iter().take(n)) {
                *d = *s;
            }
        }
    }

    /// Packs OIHW convolution weights `w` (`co x ci x k x k`) for the implicit im2col order
    /// (row `(ky*k + kx)*ci + c`, column `o`), with a bias.
    pub fn from_oihw(w: &[f32], co: usize, ci: usize, k: usize, bias: Option<&[f32]>) -> Self {
        Self::pack(
            k * k * ci,
            co,
            |kk, o| {
                let (tap, c) = (kk / ci, kk % ci);
                w[((o * ci + c) * k + tap / k) * k + tap % k]
            },
            bias,
        )
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Panel `p` (`k x NR`) and its bias (`NR`), if it exists.
    pub fn panel(&self, p: usize) -> Option<(&[f32], &[f32])> {
        let d = self.data.get(p * self.k * NR..(p + 1) * self.k * NR)?;
        let b = self.bias.get(p * NR..(p + 1) * NR)?;
        Some((d, b))
    }
}

/// Operands of [`conv_planar_direct`]: a k x k convolution (any stride, pad k/2) from planar
/// (CHW) input into NHWC output with at most [`NR`] channels.
#[derive(Debug, Clone, Copy)]
pub struct PlanarConv {
    /// `ci` planes of `ih*iw` floats.
    pub src: *const f32,
    /// Input height.
    pub ih: usize,
    /// Input width.
    pub iw: usize,
    /// Input channels (planes).
    pub ci: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// A packed panel of `k*k*ci` rows x [`NR`] (row = (ky*k + kx)*ci + c).
    pub w: *const f32,
    /// [`NR`] biases.
    pub bias: *const f32,
    /// SiLU after the bias.
    pub silu: bool,
    /// `oh*ow` output pixels at stride `ldd`.
    pub dst: *mut f32,
    /// Output pixel stride.
    pub ldd: usize,
    /// Output channels (`<= NR`).
    pub co: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

/// First-layer convolution straight from planar (CHW) input: 6 output pixels at a time
/// (12 accumulators), fused bias and SiLU, output rows split over the team. Avoids
/// materialising an im2col with 3-float runs.
///
/// # Safety
/// AVX2/FMA present; every pointer of `g` valid for what its field says; `dst` overlaps none
/// of the others.
pub unsafe fn conv_planar_direct(g: &PlanarConv) {
    let flops = 2.0 * (g.oh * g.ow * g.k * g.k * g.ci * NR) as f64;
    let g = SendPtr(*g);
    par_rows(g.0.oh, 1, flops, |lo, hi| {
        let g = &g.get();
        // The kernel keeps its own argument list: passed the struct, it compiled to slower
        // inner loops (more stack reloads).
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: rows lo..hi of dst belong to this chunk; the caller vouches for the rest.
            unsafe {
                avx::conv_planar_rows(
                    g.src,
                    g.ih,
                    g.iw,
                    g.ci,
                    g.k,
                    g.stride,
                    g.w,
                    g.bias,
                    g.silu,
                    g.dst,
                    g.ldd,
                    g.co,
                    g.ow,
                    (lo, hi),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (g, lo, hi);
    });
}

/// Where the A operand's rows come from.
#[derive(Debug, Clone, Copy)]
pub enum ASrc {
    /// Row `m` is `ptr + m*ld`, `k` contiguous values (1x1 convolution, matmul).
    Direct {
        /// First row.
        ptr: *const f32,
        /// Row stride.
        ld: usize,
    },
    /// Row `m` is the k x k patch of output pixel `m` of a convolution over an NHWC input,
    /// ordered (ky, kx, channel); out-of-image taps read zero.
    Im2col(Im2col),
}

/// Geometry of an implicit im2col.
#[derive(Debug, Clone, Copy)]
pub struct Im2col {
    /// Input pixel (0, 0), channel 0.
    pub ptr: *const f32,
    /// Input pixel stride (floats).
    pub ld: usize,
    /// Input height.
    pub ih: usize,
    /// Input width.
    pub iw: usize,
    /// Input channels.
    pub ci: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Output width.
    pub ow: usize,
    /// Planar (CHW) input: element (y, x, c) at `ptr + c*ld + y*iw + x` (`ld` = plane size).
    pub planar: bool,
}

/// Fused epilogue: `C = act(A*B + bias) + residual`.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue {
    /// Apply SiLU.
    pub silu: bool,
    /// Residual added after the activation: `(ptr, ld)`, same shape as C (may equal C).
    pub residual: Option<(*const f32, usize)>,
}

/// Raw pointers (or a struct of them) that may cross threads, for the parallel kernels here
/// and in [`super::winograd`]: every user hands each thread a disjoint range of output rows
/// (or Winograd tiles) to write and only reads the rest.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) T);
// SAFETY: each thread writes only its own disjoint range of the output (rows of C, of a
// depthwise/first-layer/upsampled output, of a softmax matrix, or the pixels of its Winograd
// tiles); inputs, weights and the residual are only read (a residual row a thread reads is
// the C row it writes, if they alias).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T: Copy> SendPtr<T> {
    /// The pointer (a method call makes closures capture the whole wrapper).
    fn get(self) -> T {
        self.0
    }
}

thread_local! {
    static IM2COL_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Threads for one op of `flops` floating-point operations over `rows` rows: small ops run on
/// the calling thread (waking the pool costs more than it saves).
fn chunks_for(flops: f64, rows: usize, min_rows: usize) -> usize {
    let threads = super::team::current_threads();
    if threads == 1 || flops < 0.5e6 {
        return 1;
    }
    (rows / min_rows.max(1)).clamp(1, 8 * threads)
}

/// Runs `f(lo, hi)` over `0..rows` split into chunks (multiples of `align`), in parallel when
/// `flops` is large enough.
pub fn par_rows(rows: usize, align: usize, flops: f64, f: impl Fn(usize, usize) + Sync) {
    let n = chunks_for(flops, rows, align.max(1));
    if n <= 1 {
        f(0, rows);
        return;
    }
    let per = rows.div_ceil(n).div_ceil(align) * align;
    let n = rows.div_ceil(per);
    super::team::par_chunks(n, &|i| {
        let lo = i * per;
        let hi = ((i + 1) * per).min(rows);
        if lo < hi {
            f(lo, hi);
        }
    });
}

/// `C[m x n] = epilogue(A[m x k] * B)` for rows `0..m`, multi-threaded.
///
/// # Safety
/// A (every row/patch read), C (`m` rows of `b.n()` values at stride `ldc`) and the residual must
/// be valid for the reads/writes; C must not overlap A or the residual, except that the residual
/// may be exactly C.
pub unsafe fn gemm(m: usize, a: ASrc, b: &PackedB, c: *mut f32, ldc: usize, epi: Epilogue) {
    if m == 0 || b.n == 0 {
        return;
    }
    let flops = 2.0 * m as f64 * b.k as f64 * b.n as f64;
    let a = SendPtr(a);
    let c = SendPtr(c);
    let epi = SendPtr(epi);
    let isa = current_isa();
    par_rows(m, isa.mr(), flops, |lo, hi| {
        let (a, c, epi) = (a, c, epi);
        // SAFETY: rows lo..hi of C are written by this chunk only; the caller vouches for the
        // rest; `isa` is the current level, which is supported.
        unsafe { gemm_rows(isa, lo, hi, a.0, b, c.0, ldc, epi.0) }
    });
}

impl Isa {
    /// Rows per GEMM micro-tile at this level.
    pub(crate) fn mr(self) -> usize {
        if self >= Isa::Avx512 {
            MR512
        } else {
            MR
        }
    }
}

/// Rows `m0..m1` of [`gemm`], on the calling thread, on the micro-kernel of `isa` (the
/// scalar one for [`Isa::Portable`]).
///
/// # Safety
/// As [`gemm`]; `isa` must be [`Isa::supported`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_rows(
    isa: Isa,
    m0: usize,
    m1: usize,
    a: ASrc,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    epi: Epilogue,
) {
    let k = b.k;
    let panels = b.n.div_ceil(NR);
    let (mr, pstep) = (isa.mr(), if isa >= Isa::Avx512 { 2 } else { 1 });
    IM2COL_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if matches!(a, ASrc::Im2col(_)) && buf.len() < MC * KC {
            buf.resize(MC * KC, 0.0);
        }
        // K blocks of equal size (576 = 2 x 288, not 512 + 64: a thin last block pays the C
        // reload for few FMAs). A residual that is C itself is read in the last block's
        // epilogue, after the first block has overwritten C: then K stays one block.
        let in_place = epi
            .residual
            .is_some_and(|(r, _)| std::ptr::eq(r, c as *const f32));
        let kb = if in_place {
            k.max(1)
        } else {
            k.div_ceil(k.div_ceil(KC).max(1)).max(1)
        };
        let mut k0 = 0;
        // k == 0 still needs one pass for the bias/epilogue.
        loop {
            let kc = kb.min(k - k0);
            let first = k0 == 0;
            let last = k0 + kc == k;
            let mut mb = m0;
            while mb < m1 {
                let mc = MC.min(m1 - mb);
                let (ap, lda) = match a {
                    ASrc::Direct { ptr, ld } => (ptr.add(mb * ld + k0), ld),
                    ASrc::Im2col(g) => {
                        im2col_fill(&g, mb, mc, k0, kc, buf.as_mut_ptr());
                        (buf.as_ptr(), kc)
                    }
                };
                let mut p = 0;
                while p < panels {
                    // AVX-512 tiles span two panels (32 columns) where two are left.
                    let np = pstep.min(panels - p);
                    let nvalid = (np * NR).min(b.n - p * NR);
                    let bp = b.data.as_ptr().add(p * k * NR + k0 * NR);
                    let bias = b.bias.as_ptr().add(p * NR);
                    let mut mt = 0;
                    while mt < mc {
                        let r = mr.min(mc - mt);
                        let row = mb + mt;
                        let t = Tile {
                            k: kc,
                            a: ap.add(mt * lda),
                            lda,
                            b: bp,
                            b2: if np == 2 {
                                bp.add(k * NR)
                            } else {
                                std::ptr::null()
                            },
                            c: c.add(row * ldc + p * NR),
                            ldc,
                            nvalid,
                            first,
                            last,
                            bias,
                            silu: epi.silu,
                            res: epi
                                .residual
                                .map(|(rp, ldr)| (rp.add(row * ldr + p * NR), ldr)),
                        };
                        tile_dispatch(isa, r, np, &t);
                        mt += r;
                    }
                    p += np;
                }
                mb += mc;
            }
            k0 += kc;
            if k0 >= k {
                break;
            }
        }
    });
}

/// Fills `dst[mc x kc]` with columns `k0..k0+kc` of the im2col rows `mb..mb+mc`.
///
/// # Safety
/// `g` must describe a readable input; `dst` must hold `mc*kc` floats.
unsafe fn im2col_fill(g: &Im2col, mb: usize, mc: usize, k0: usize, kc: usize, dst: *mut f32) {
    let tap0 = k0 / g.ci;
    let c_start = k0 - tap0 * g.ci;
    let (ky0, kx0) = (tap0 / g.k, tap0 % g.k);
    let mut oy = mb / g.ow;
    let mut ox = mb - oy * g.ow;
    for row in 0..mc {
        let by = (oy * g.stride) as isize - g.pad as isize;
        let bx = (ox * g.stride) as isize - g.pad as isize;
        let d = dst.add(row * kc);
        let (mut ky, mut kx, mut c, mut col) = (ky0, kx0, c_start, 0);
        while col < kc {
            let n = (g.ci - c).min(kc - col);
            let iy = by + ky as isize;
            let ix = bx + kx as isize;
            let out = d.add(col);
            if iy >= 0 && ix >= 0 && (iy as usize) < g.ih && (ix as usize) < g.iw {
                let pix = iy as usize * g.iw + ix as usize;
                if g.planar {
                    let src = g.ptr.add(pix + c * g.ld);
                    for i in 0..n {
                        *out.add(i) = *src.add(i * g.ld);
                    }
                } else {
                    copy_small(g.ptr.add(pix * g.ld + c), out, n);
                }
            } else {
                for i in 0..n {
                    *out.add(i) = 0.0;
                }
            }
            col += n;
            c = 0;
            kx += 1;
            if kx == g.k {
                kx = 0;
                ky += 1;
            }
        }
        ox += 1;
        if ox == g.ow {
            ox = 0;
            oy += 1;
        }
    }
}

/// Copies `n` floats without a `memcpy` call: 8 at a time (one AVX load/store each), then
/// the rest one by one. Channel runs of im2col rows are 3 to 512 floats, mostly multiples of 8.
///
/// # Safety
/// `src` readable and `dst` writable for `n` floats, not overlapping.
#[inline(always)]
unsafe fn copy_small(src: *const f32, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i + 8 <= n {
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), 8);
        i += 8;
    }
    while i < n {
        *dst.add(i) = *src.add(i);
        i += 1;
    }
}

/// One micro-tile: `r <= MR` rows x one panel (AVX-512: `r <= MR512` rows x one or two).
pub(crate) struct Tile {
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    /// The next panel's rows (same `k` range), for two-panel tiles; null otherwise.
    b2: *const f32,
    c: *mut f32,
    ldc: usize,
    nvalid: usize,
    first: bool,
    last: bool,
    bias: *const f32,
    silu: bool,
    res: Option<(*const f32, usize)>,
}

/// # Safety
/// `t` must describe valid memory for `r` rows and `np` panels (`np == 2` only at
/// [`Isa::Avx512`]); `isa` supported.
#[inline]
unsafe fn tile_dispatch(isa: Isa, r: usize, np: usize, t: &Tile) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        macro_rules! rows {
            ($p:literal) => {
                match r {
                    12 => avx512::tile::<12, $p>(t),
                    11 => avx512::tile::<11, $p>(t),
                    10 => avx512::tile::<10, $p>(t),
                    9 => avx512::tile::<9, $p>(t),
                    8 => avx512::tile::<8, $p>(t),
                    7 => avx512::tile::<7, $p>(t),
                    6 => avx512::tile::<6, $p>(t),
                    5 => avx512::tile::<5, $p>(t),
                    4 => avx512::tile::<4, $p>(t),
                    3 => avx512::tile::<3, $p>(t),
                    2 => avx512::tile::<2, $p>(t),
                    _ => avx512::tile::<1, $p>(t),
                }
            };
        }
        if np == 2 {
            rows!(2)
        } else {
            rows!(1)
        }
        return;
    }
    let _ = np;
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        match r {
            6 => avx::tile::<6>(t),
            5 => avx::tile::<5>(t),
            4 => avx::tile::<4>(t),
            3 => avx::tile::<3>(t),
            2 => avx::tile::<2>(t),
            _ => avx::tile::<1>(t),
        }
        return;
    }
    tile_scalar(r, t);
}

/// Input range of the vectorised exp (2^-125 .. 2^126); the scalar tails clamp the same way.
const EXP_MIN: f32 = -125.0 * std::f32::consts::LN_2;
/// See [`EXP_MIN`].
const EXP_MAX: f32 = 126.0 * std::f32::consts::LN_2;

/// Scalar SiLU.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Portable micro-tile (also the fallback on CPUs without AVX2).
///
/// # Safety
/// `t` must describe valid memory for `r` rows.
unsafe fn tile_scalar(r: usize, t: &Tile) {
    for i in 0..r {
        let mut acc = [0f32; NR];
        let arow = t.a.add(i * t.lda);
        for kk in 0..t.k {
            let av = *arow.add(kk);
            let brow = t.b.add(kk * NR);
            for (j, s) in acc.iter_mut().enumerate() {
                *s += av * *brow.add(j);
            }
        }
        let crow = t.c.add(i * t.ldc);
        for (j, &s) in acc.iter().enumerate().take(t.nvalid) {
            let mut v = s;
            if !t.first {
                v += *crow.add(j);
            }
            if t.last {
                v += *t.bias.add(j);
                if t.silu {
                    v = silu(v);
                }
                if let Some((rp, ldr)) = t.res {
                    v += *rp.add(i * ldr + j);
                }
            }
            *crow.add(j) = v;
        }
    }
}

/// Operands of a depthwise 3x3 convolution (stride 1, pad 1) over NHWC with a fused bias
/// and optional SiLU.
#[derive(Debug, Clone, Copy)]
pub struct Depthwise {
    /// `h*w` input pixels at stride `lds`, `c` channels.
    pub src: *const f32,
    /// Input pixel stride.
    pub lds: usize,
    /// `h*w` output pixels at stride `ldd`, `c` channels.
    pub dst: *mut f32,
    /// Output pixel stride.
    pub ldd: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// `9 * wld` floats, tap-major: tap `t` of channel `ch` at `wt + t*wld + ch`.
    pub wt: *const f32,
    /// Tap stride of `wt`.
    pub wld: usize,
    /// `c` biases.
    pub bias: *const f32,
    /// SiLU after the bias.
    pub act: bool,
}

/// Reference depthwise 3x3 over rows `rows`, scalar: used as fallback and in tests.
///
/// # Safety
/// Every pointer of `g` valid for what its field says; `dst` does not overlap `src`.
pub unsafe fn dw3x3_scalar(g: &Depthwise, rows: (usize, usize)) {
    for y in rows.0..rows.1 {
        for x in 0..g.w {
            let d = g.dst.add((y * g.w + x) * g.ldd);
            for ch in 0..g.c {
                let mut s = *g.bias.add(ch);
                for ky in 0..3 {
                    let iy = y as isize + ky as isize - 1;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    for kx in 0..3 {
                        let ix = x as isize + kx as isize - 1;
                        if ix < 0 || ix as usize >= g.w {
                            continue;
                        }
                        let v = *g.src.add((iy as usize * g.w + ix as usize) * g.lds + ch);
                        s += v * *g.wt.add((ky * 3 + kx) * g.wld + ch);
                    }
                }
                *d.add(ch) = if g.act { silu(s) } else { s };
            }
        }
    }
}

/// Depthwise 3x3, multi-threaded over rows.
///
/// # Safety
/// As [`dw3x3_scalar`] for all rows.
pub unsafe fn dw3x3(g: &Depthwise) {
    let flops = 18.0 * (g.h * g.w * g.c) as f64;
    let avx = has_avx2() && g.c.is_multiple_of(8);
    let g = SendPtr(*g);
    par_rows(g.0.h, 1, flops, |lo, hi| {
        let g = &g.get();
        // The AVX kernel keeps its own argument list (see conv_planar_direct).
        #[cfg(target_arch = "x86_64")]
        if avx {
            // SAFETY: rows lo..hi of dst belong to this chunk; c is a multiple of 8.
            unsafe {
                avx::dw3x3(
                    g.src,
                    g.lds,
                    g.dst,
                    g.ldd,
                    g.h,
                    g.w,
                    g.c,
                    g.wt,
                    g.wld,
                    g.bias,
                    g.act,
                    (lo, hi),
                )
            };
            return;
        }
        let _ = avx;
        // SAFETY: as above.
        unsafe { dw3x3_scalar(g, (lo, hi)) };
    });
}

/// Nearest-neighbour 2x upsampling of `h x w` pixels (`c` channels at stride `lds`) into
/// `2h x 2w` pixels at stride `ldd`, output rows split over the team.
///
/// # Safety
/// `src` readable and `dst` writable for those pixels; they must not overlap.
pub unsafe fn upsample2(
    src: *const f32,
    lds: usize,
    h: usize,
    w: usize,
    c: usize,
    dst: *mut f32,
    ldd: usize,
) {
    let (s, d) = (SendPtr(src), SendPtr(dst));
    // cost in "flops" for the parallel threshold: a copied float counts like 4 FLOPs
    par_rows(2 * h, 1, (16 * h * w * c) as f64, |lo, hi| {
        let (s, d) = (s.get(), d.get());
        for y in lo..hi {
            for x in 0..2 * w {
                // SAFETY: pixel (y/2, x/2) of src and (y, x) of dst are in bounds (caller);
                // this chunk alone writes output rows lo..hi.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        s.add(((y / 2) * w + x / 2) * lds),
                        d.add((y * 2 * w + x) * ldd),
                        c,
                    )
                };
            }
        }
    });
}

/// In-place softmax of each row of `x` (`rows x n`, stride `ld`), multi-threaded.
pub fn softmax_rows(x: &mut [f32], rows: usize, n: usize, ld: usize) {
    if rows == 0 || n == 0 || x.len() < (rows - 1) * ld + n {
        return;
    }
    let avx = has_avx2();
    let p = SendPtr(x.as_mut_ptr());
    par_rows(rows, 1, 20.0 * (rows * n) as f64, |lo, hi| {
        let base = p.get();
        for r in lo..hi {
            // SAFETY: row r (n values inside the checked slice) belongs to this chunk only.
            let row = unsafe { std::slice::from_raw_parts_mut(base.add(r * ld), n) };
            softmax_row(row, avx);
        }
    });
}

fn softmax_row(row: &mut [f32], avx: bool) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: AVX2/FMA checked by the caller; the kernel stays within `row`.
        unsafe { avx::softmax_row(row, m) };
        return;
    }
    let _ = avx;
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// An element-wise function with a vectorised form ([`map_inplace`]).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    /// e^x, the input clamped to [`EXP_MIN`, `EXP_MAX`].
    Exp,
    /// x * sigmoid(x).
    Silu,
}

impl Map {
    /// The scalar form (also the tail of the vectorised one).
    #[cfg_attr(not(test), allow(dead_code))]
    fn scalar(self, v: f32) -> f32 {
        match self {
            Map::Exp => v.clamp(EXP_MIN, EXP_MAX).exp(),
            Map::Silu => silu(v),
        }
    }
}

/// `f` over a slice in place: vectorised (the kernels' exp and SiLU), scalar without AVX2.
#[cfg_attr(not(test), allow(dead_code))]
pub fn map_inplace(x: &mut [f32], f: Map) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA present; the kernel stays within `x`.
        unsafe { avx::map_slice(x, f) };
        return;
    }
    for v in x.iter_mut() {
        *v = f.scalar(*v);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx {
    use super::{Map, Tile, NR};
    use std::arch::x86_64::*;

    /// 2^t for `t` in [-125, 126]: t = n + f with n = round(t), |f| <= 1/2; 2^f by a degree-5
    /// polynomial (coefficients fitted here for relative error; 2.4e-7 in f32), evaluated in
    /// Estrin form for a short dependency chain; 2^n added to the exponent bits.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp2_clamped(t: __m256) -> __m256 {
        let n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let f = _mm256_sub_ps(t, n);
        let f2 = _mm256_mul_ps(f, f);
        let a = _mm256_fmadd_ps(f, _mm256_set1_ps(0.693_146_94), _mm256_set1_ps(1.000_000_1));
        let b = _mm256_fmadd_ps(
            f,
            _mm256_set1_ps(0.055_507_13),
            _mm256_set1_ps(0.240_221_22),
        );
        let c = _mm256_fmadd_ps(
            f,
            _mm256_set1_ps(0.001_327_628),
            _mm256_set1_ps(0.009_675_476),
        );
        let f4 = _mm256_mul_ps(f2, f2);
        let p = _mm256_fmadd_ps(c, f4, _mm256_fmadd_ps(b, f2, a));
        // p is in [0.70, 1.42] and n in [-125, 126]: the sum stays a normal float.
        let e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
        _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e))
    }

    /// e^(k x) with `t = k log2(e) x` clamped to [-125, 126] (e^x for x in about [-86.6, 87.3]).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_scaled(x: __m256, k: f32) -> __m256 {
        let t = _mm256_mul_ps(x, _mm256_set1_ps(k * std::f32::consts::LOG2_E));
        let t = _mm256_min_ps(
            _mm256_max_ps(t, _mm256_set1_ps(-125.0)),
            _mm256_set1_ps(126.0),
        );
        exp2_clamped(t)
    }

    /// e^x; relative error 3e-7 near 0, growing by 9e-8 per unit of |x| (the f32 rounding of
    /// x log2 e) over [-86.6, 87.3]; beyond, the clamped limits.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        exp_scaled(x, 1.0)
    }

    /// x * sigmoid(x).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu8(x: __m256) -> __m256 {
        let e = exp_scaled(x, -1.0);
        // x / d through a reciprocal estimate and one Newton step (rel. error ~1e-7), cheaper
        // than a division in the GEMM epilogue. d is in [1, 1 + 2^126]: no zero, no overflow.
        let d = _mm256_add_ps(_mm256_set1_ps(1.0), e);
        let r = _mm256_rcp_ps(d);
        let r = _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0)));
        _mm256_mul_ps(x, r)
    }

    /// [`super::map_inplace`]: 8 floats at a time, the scalar form for the tail.
    ///
    /// # Safety
    /// AVX2/FMA present.
    #[cfg_attr(not(test), allow(dead_code))]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn map_slice(x: &mut [f32], f: Map) {
        let mut ch = x.chunks_exact_mut(8);
        for c in &mut ch {
            // SAFETY: c has 8 floats.
            let v = _mm256_loadu_ps(c.as_ptr());
            let y = match f {
                Map::Exp => exp8(v),
                Map::Silu => silu8(v),
            };
            _mm256_storeu_ps(c.as_mut_ptr(), y);
        }
        for v in ch.into_remainder() {
            *v = f.scalar(*v);
        }
    }

    /// # Safety
    /// AVX2/FMA present.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_row(row: &mut [f32], m: f32) {
        let mv = _mm256_set1_ps(m);
        let mut acc = _mm256_setzero_ps();
        let mut ch = row.chunks_exact_mut(8);
        for c in &mut ch {
            // SAFETY: c has 8 floats.
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum: f32 = lanes.iter().sum();
        for v in ch.into_remainder() {
            *v = (*v - m).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        let iv = _mm256_set1_ps(inv);
        let mut ch = row.chunks_exact_mut(8);
        for c in &mut ch {
            // SAFETY: c has 8 floats.
            _mm256_storeu_ps(
                c.as_mut_ptr(),
                _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), iv),
            );
        }
        for v in ch.into_remainder() {
            *v *= inv;
        }
    }

    /// Rows `rows` of [`super::conv_planar_direct`].
    ///
    /// # Safety
    /// As [`super::conv_planar_direct`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn conv_planar_rows(
        src: *const f32,
        ih: usize,
        iw: usize,
        ci: usize,
        k: usize,
        stride: usize,
        w: *const f32,
        bias: *const f32,
        silu: bool,
        dst: *mut f32,
        ldd: usize,
        co: usize,
        ow: usize,
        rows: (usize, usize),
    ) {
        // 6 pixels x 16 channels: 12 accumulators, like the GEMM micro-kernel.
        const P: usize = 6;
        let pad = k / 2;
        let plane = ih * iw;
        let (b0, b1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
        for oy in rows.0..rows.1 {
            // taps ky with 0 <= oy*stride + ky - pad < ih
            let top = oy * stride;
            let ky_lo = pad.saturating_sub(top);
            let ky_hi = k.min((ih + pad).saturating_sub(top));
            let mut ox = 0;
            while ox < ow {
                let np = P.min(ow - ox);
                let mut a0 = [b0; P];
                let mut a1 = [b1; P];
                let left = ox * stride;
                // every tap of the P pixels inside the row: no per-element checks
                let interior = np == P && left >= pad && left + (P - 1) * stride + k - pad <= iw;
                for ky in ky_lo..ky_hi {
                    let row = src.add((top + ky - pad) * iw);
                    for kx in 0..k {
                        let wrow = w.add((ky * k + kx) * ci * NR);
                        for c in 0..ci {
                            let wv0 = _mm256_loadu_ps(wrow.add(c * NR));
                            let wv1 = _mm256_loadu_ps(wrow.add(c * NR + 8));
                            let pl = row.add(c * plane);
                            if interior {
                                let first = pl.add(left + kx - pad);
                                for r in 0..P {
                                    let vv = _mm256_broadcast_ss(&*first.add(r * stride));
                                    a0[r] = _mm256_fmadd_ps(vv, wv0, a0[r]);
                                    a1[r] = _mm256_fmadd_ps(vv, wv1, a1[r]);
                                }
                            } else {
                                for r in 0..np {
                                    let ix = ((ox + r) * stride + kx).wrapping_sub(pad);
                                    if ix < iw {
                                        let vv = _mm256_broadcast_ss(&*pl.add(ix));
                                        a0[r] = _mm256_fmadd_ps(vv, wv0, a0[r]);
                                        a1[r] = _mm256_fmadd_ps(vv, wv1, a1[r]);
                                    }
                                }
                            }
                        }
                    }
                }
                for r in 0..np {
                    let (mut v0, mut v1) = (a0[r], a1[r]);
                    if silu {
                        v0 = silu8(v0);
                        v1 = silu8(v1);
                    }
                    let out = dst.add((oy * ow + ox + r) * ldd);
                    if co == NR {
                        _mm256_storeu_ps(out, v0);
                        _mm256_storeu_ps(out.add(8), v1);
                    } else {
                        let mut tmp = [0f32; NR];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), out, co);
                    }
                }
                ox += np;
            }
        }
    }

    /// R x 16 micro-kernel: 2R accumulators, A broadcast from R row streams, B from the panel.
    ///
    /// # Safety
    /// AVX2/FMA present; `t` describes valid memory for R rows (A: R rows of `k`, B: `k x 16`,
    /// C/residual: R rows of `nvalid`, bias: 16).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(t: &Tile) {
        let mut acc0 = [_mm256_setzero_ps(); R];
        let mut acc1 = [_mm256_setzero_ps(); R];
        let mut ap = [t.a; R];
        for (i, p) in ap.iter_mut().enumerate() {
            *p = t.a.add(i * t.lda);
        }
        let mut b = t.b;
        for kk in 0..t.k {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for i in 0..R {
                let av = _mm256_broadcast_ss(&*ap[i].add(kk));
                acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
                acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
            }
            b = b.add(NR);
        }
        let full = t.nvalid == NR;
        let mut tmp = [0f32; NR];
        let (bias0, bias1) = (_mm256_loadu_ps(t.bias), _mm256_loadu_ps(t.bias.add(8)));
        for i in 0..R {
            let crow = t.c.add(i * t.ldc);
            let (mut v0, mut v1) = (acc0[i], acc1[i]);
            if !t.first {
                if full {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(crow));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(crow.add(8)));
                } else {
                    tmp = [0f32; NR];
                    std::ptr::copy_nonoverlapping(crow, tmp.as_mut_ptr(), t.nvalid);
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(tmp.as_ptr()));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(tmp.as_ptr().add(8)));
                }
            }
            if t.last {
                v0 = _mm256_add_ps(v0, bias0);
                v1 = _mm256_add_ps(v1, bias1);
                if t.silu {
                    v0 = silu8(v0);
                    v1 = silu8(v1);
                }
                if let Some((rp, ldr)) = t.res {
                    let rrow = rp.add(i * ldr);
                    if full {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(rrow));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(rrow.add(8)));
                    } else {
                        tmp = [0f32; NR];
                        std::ptr::copy_nonoverlapping(rrow, tmp.as_mut_ptr(), t.nvalid);
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(tmp.as_ptr()));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(tmp.as_ptr().add(8)));
                    }
                }
            }
            if full {
                _mm256_storeu_ps(crow, v0);
                _mm256_storeu_ps(crow.add(8), v1);
            } else {
                _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), crow, t.nvalid);
            }
        }
    }

    /// Depthwise 3x3 over rows `rows`, channels in groups of 8.
    ///
    /// # Safety
    /// AVX2/FMA present; `c % 8 == 0`; pointers as in `super::dw3x3_scalar`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dw3x3(
        src: *const f32,
        lds: usize,
        dst: *mut f32,
        ldd: usize,
        h: usize,
        w: usize,
        c: usize,
        wt: *const f32,
        wld: usize,
        bias: *const f32,
        act: bool,
        rows: (usize, usize),
    ) {
        for y in rows.0..rows.1 {
            let ky0 = if y == 0 { 1 } else { 0 };
            let ky1 = if y + 1 == h { 2 } else { 3 };
            for x in 0..w {
                let kx0 = if x == 0 { 1 } else { 0 };
                let kx1 = if x + 1 == w { 2 } else { 3 };
                let d = dst.add((y * w + x) * ldd);
                let mut ch = 0;
                while ch < c {
                    let mut acc = _mm256_loadu_ps(bias.add(ch));
                    for ky in ky0..ky1 {
                        let iy = y + ky - 1;
                        for kx in kx0..kx1 {
                            let ix = x + kx - 1;
                            let v = _mm256_loadu_ps(src.add((iy * w + ix) * lds + ch));
                            let wv = _mm256_loadu_ps(wt.add((ky * 3 + kx) * wld + ch));
                            acc = _mm256_fmadd_ps(v, wv, acc);
                        }
                    }
                    if act {
                        acc = silu8(acc);
                    }
                    _mm256_storeu_ps(d.add(ch), acc);
                    ch += 8;
                }
            }
        }
    }
}

/// The AVX-512 GEMM micro-kernel (the rest of the AVX-512 level reuses [`avx`]).
///
/// The AVX-512 intrinsics and `target_feature(enable = "avx512f")` are stable since Rust
/// 1.89, the workspace's minimum Rust.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// x * sigmoid(x), the same formula as [`super::avx::silu8`] on 16 lanes: e^-x as
    /// 2^round(t) * p(f) (the degree-5 polynomial there), then x / (1 + e^-x) through
    /// `rcp14` and one Newton step (relative error ~1e-7).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu16(x: __m512) -> __m512 {
        let t = _mm512_mul_ps(x, _mm512_set1_ps(-std::f32::consts::LOG2_E));
        let t = _mm512_min_ps(
            _mm512_max_ps(t, _mm512_set1_ps(-125.0)),
            _mm512_set1_ps(126.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let f = _mm512_sub_ps(t, n);
        let f2 = _mm512_mul_ps(f, f);
        let a = _mm512_fmadd_ps(f, _mm512_set1_ps(0.693_146_94), _mm512_set1_ps(1.000_000_1));
        let b = _mm512_fmadd_ps(
            f,
            _mm512_set1_ps(0.055_507_13),
            _mm512_set1_ps(0.240_221_22),
        );
        let c = _mm512_fmadd_ps(
            f,
            _mm512_set1_ps(0.001_327_628),
            _mm512_set1_ps(0.009_675_476),
        );
        let f4 = _mm512_mul_ps(f2, f2);
        let p = _mm512_fmadd_ps(c, f4, _mm512_fmadd_ps(b, f2, a));
        // p is in [0.70, 1.42] and n in [-125, 126]: the sum stays a normal float.
        let e = _mm512_slli_epi32::<23>(_mm512_cvtps_epi32(n));
        let e = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
        // d is in [1, 1 + 2^126]: no zero, no overflow.
        let d = _mm512_add_ps(_mm512_set1_ps(1.0), e);
        let r = _mm512_rcp14_ps(d);
        let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)));
        _mm512_mul_ps(x, r)
    }

    /// Lane mask of the first `n.min(16)` columns.
    #[inline]
    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// R x (16 P) micro-kernel, P = 1 or 2 panels: R*P accumulators, A broadcast from R row
    /// streams, B from one or two panels; the epilogue (C reload, bias, SiLU, residual) uses
    /// lane masks for the last `nvalid` columns.
    ///
    /// # Safety
    /// AVX-512 F present; `t` describes valid memory for R rows (A: R rows of `k`, B: `k x 16`
    /// at `t.b` and, for P = 2, at `t.b2`; C/residual: R rows of `nvalid <= 16 P`; bias:
    /// 16 P floats).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const R: usize, const P: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let mut ap = [t.a; R];
        for (i, p) in ap.iter_mut().enumerate() {
            *p = t.a.add(i * t.lda);
        }
        let (mut b, mut b2) = (t.b, t.b2);
        for kk in 0..t.k {
            let b0 = _mm512_loadu_ps(b);
            let b1 = if P == 2 { _mm512_loadu_ps(b2) } else { b0 };
            for i in 0..R {
                let av = _mm512_set1_ps(*ap[i].add(kk));
                acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
                if P == 2 {
                    acc[i][P - 1] = _mm512_fmadd_ps(av, b1, acc[i][P - 1]);
                }
            }
            b = b.add(NR);
            if P == 2 {
                b2 = b2.add(NR);
            }
        }
        let mut masks = [0 as __mmask16; P];
        let mut bias = [_mm512_setzero_ps(); P];
        for j in 0..P {
            masks[j] = mask(t.nvalid.saturating_sub(j * NR));
            bias[j] = _mm512_loadu_ps(t.bias.add(j * NR));
        }
        for (i, row) in acc.iter().enumerate() {
            let crow = t.c.add(i * t.ldc);
            for j in 0..P {
                let (m, cp) = (masks[j], crow.add(j * NR));
                let mut v = row[j];
                if !t.first {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, cp));
                }
                if t.last {
                    v = _mm512_add_ps(v, bias[j]);
                    if t.silu {
                        v = silu16(v);
                    }
                    if let Some((rp, ldr)) = t.res {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, rp.add(i * ldr + j * NR)));
                    }
                }
                _mm512_mask_storeu_ps(cp, m, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fast::testing::rand_vec;

    /// Plain NHWC convolution, the safe reference.
    #[allow(clippy::too_many_arguments)]
    fn conv_ref(
        x: &[f32],
        ih: usize,
        iw: usize,
        ci: usize,
        w: &[f32],
        co: usize,
        k: usize,
        s: usize,
        bias: &[f32],
        silu_on: bool,
    ) -> (Vec<f32>, usize, usize) {
        let p = k / 2;
        let oh = (ih + 2 * p - k) / s + 1;
        let ow = (iw + 2 * p - k) / s + 1;
        let mut out = vec![0f32; oh * ow * co];
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..co {
                    let mut acc = 0.0f64;
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky) as isize - p as isize;
                            let ix = (ox * s + kx) as isize - p as isize;
                            if iy < 0 || ix < 0 || iy as usize >= ih || ix as usize >= iw {
                                continue;
                            }
                            for c in 0..ci {
                                acc += x[(iy as usize * iw + ix as usize) * ci + c] as f64
                                    * w[((o * ci + c) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                    let v = acc as f32 + bias[o];
                    out[(oy * ow + ox) * co + o] = if silu_on { silu(v) } else { v };
                }
            }
        }
        (out, oh, ow)
    }

    fn check_conv(ih: usize, iw: usize, ci: usize, co: usize, k: usize, s: usize, silu_on: bool) {
        let x = rand_vec(ih * iw * ci, 1 + ci as u64);
        let w = rand_vec(co * ci * k * k, 7 + co as u64);
        let bias = rand_vec(co, 3);
        let (want, oh, ow) = conv_ref(&x, ih, iw, ci, &w, co, k, s, &bias, silu_on);
        let b = PackedB::from_oihw(&w, co, ci, k, Some(&bias));
        // Output written into a wider buffer (stride co + 3) to exercise ldc.
        let ldc = co + 3;
        let mut out = vec![f32::NAN; oh * ow * ldc];
        let a = if k == 1 && s == 1 {
            ASrc::Direct {
                ptr: x.as_ptr(),
                ld: ci,
            }
        } else {
            ASrc::Im2col(Im2col {
                ptr: x.as_ptr(),
                ld: ci,
                ih,
                iw,
                ci,
                k,
                stride: s,
                pad: k / 2,
                ow,
                planar: false,
            })
        };
        for isa in Isa::available() {
            out.fill(f32::NAN);
            let epi = Epilogue {
                silu: silu_on,
                residual: None,
            };
            // SAFETY: all buffers sized for the geometry above; the level is available.
            with_isa(isa, || unsafe {
                gemm(oh * ow, a, &b, out.as_mut_ptr(), ldc, epi)
            });
            for p in 0..oh * ow {
                for o in 0..co {
                    let (g, e) = (out[p * ldc + o], want[p * co + o]);
                    assert!(
                        (g - e).abs() <= 1e-4 + 1e-4 * e.abs(),
                        "{isa} pixel {p} ch {o}: {g} vs {e}"
                    );
                }
                for o in co..ldc {
                    assert!(out[p * ldc + o].is_nan(), "wrote past the {co} channels");
                }
            }
        }
    }

    #[test]
    fn isa_self_check_passes_on_every_available_level() {
        for isa in Isa::available() {
            assert_eq!(isa.self_check(), Ok(()), "{isa}");
            // the checker itself, run on the levels it does not guard
            assert_eq!(gemm_self_check(isa), Ok(()), "{isa}");
        }
        assert_eq!(Isa::select("auto"), Ok(Isa::best()));
        assert!(Isa::select("amx").is_err());
        assert!(Isa::select("neon").is_err());
        assert_eq!(Isa::select(" Portable "), Ok(Isa::Portable));
        for isa in Isa::ALL {
            assert_eq!(Isa::select(isa.name()).is_ok(), isa.supported(), "{isa}");
        }
    }

    #[test]
    fn gemm_1x1_odd_sizes() {
        check_conv(7, 5, 13, 21, 1, 1, true);
        check_conv(3, 3, 1, 1, 1, 1, false);
        check_conv(11, 9, 600, 40, 1, 1, true); // K > KC, M > MC
                                                // every AVX-512 tile shape: rows 1..=12 (M = 13 * 5), one and two panels, masked tails
        check_conv(13, 5, 40, 64, 1, 1, true);
        check_conv(13, 5, 40, 48, 1, 1, false);
        check_conv(1, 7, 9, 33, 1, 1, true);
    }

    #[test]
    fn gemm_3x3_from_planar_input() {
        let (ih, iw, ci, co) = (10, 14, 3, 16);
        let x = rand_vec(ih * iw * ci, 4);
        let mut planar = vec![0f32; x.len()];
        for p in 0..ih * iw {
            for c in 0..ci {
                planar[c * ih * iw + p] = x[p * ci + c];
            }
        }
        let w = rand_vec(co * ci * 9, 8);
        let bias = rand_vec(co, 2);
        let (want, oh, ow) = conv_ref(&x, ih, iw, ci, &w, co, 3, 2, &bias, true);
        let b = PackedB::from_oihw(&w, co, ci, 3, Some(&bias));
        let a = ASrc::Im2col(Im2col {
            ptr: planar.as_ptr(),
            ld: ih * iw,
            ih,
            iw,
            ci,
            k: 3,
            stride: 2,
            pad: 1,
            ow,
            planar: true,
        });
        let mut out = vec![0f32; oh * ow * co];
        let epi = Epilogue {
            silu: true,
            residual: None,
        };
        // SAFETY: buffers sized for the geometry.
        unsafe { gemm(oh * ow, a, &b, out.as_mut_ptr(), co, epi) };
        for (g, e) in out.iter().zip(&want) {
            assert!((g - e).abs() <= 1e-4 + 1e-4 * e.abs(), "{g} vs {e}");
        }
    }

    #[test]
    fn planar_direct_matches_reference() {
        if !has_avx2() {
            return;
        }
        for (ih, iw, ci, co, k, st) in [
            (10, 14, 3, 16, 3, 2),
            (9, 7, 3, 13, 3, 2),
            (6, 11, 2, 16, 3, 1),
            // wide enough for the interior path (6 pixels without border checks)
            (12, 40, 3, 16, 3, 2),
            (7, 29, 3, 16, 3, 1),
            (11, 37, 3, 16, 5, 2),
        ] {
            let x = rand_vec(ih * iw * ci, 4);
            let mut planar = vec![0f32; x.len()];
            for p in 0..ih * iw {
                for c in 0..ci {
                    planar[c * ih * iw + p] = x[p * ci + c];
                }
            }
            let w = rand_vec(co * ci * k * k, 8);
            let bias = rand_vec(co, 2);
            let (want, oh, ow) = conv_ref(&x, ih, iw, ci, &w, co, k, st, &bias, true);
            let b = PackedB::from_oihw(&w, co, ci, k, Some(&bias));
            let (panel, pb) = b.panel(0).expect("one panel");
            let ldd = co + 1;
            let mut out = vec![f32::NAN; oh * ow * ldd];
            let g = PlanarConv {
                src: planar.as_ptr(),
                ih,
                iw,
                ci,
                k,
                stride: st,
                w: panel.as_ptr(),
                bias: pb.as_ptr(),
                silu: true,
                dst: out.as_mut_ptr(),
                ldd,
                co,
                oh,
                ow,
            };
            // SAFETY: buffers sized for the geometry; co <= NR.
            unsafe { conv_planar_direct(&g) };
            for p in 0..oh * ow {
                for o in 0..co {
                    let (g, e) = (out[p * ldd + o], want[p * co + o]);
                    assert!(
                        (g - e).abs() <= 1e-4 + 1e-4 * e.abs(),
                        "pixel {p} ch {o}: {g} vs {e}"
                    );
                }
                assert!(out[p * ldd + co].is_nan());
            }
        }
    }

    #[test]
    fn gemm_3x3_stride_and_padding() {
        check_conv(9, 7, 3, 16, 3, 2, true);
        check_conv(8, 10, 29, 17, 3, 1, false);
        check_conv(13, 12, 61, 51, 3, 2, true); // K = 549 > KC, odd channels
    }

    #[test]
    fn gemm_residual_in_place() {
        if !has_avx2() {
            return;
        }
        // k = 1100 > KC: the in-place residual must survive the K blocking (it did not, which
        // broke attention at inputs of 1280x704 and larger).
        for (m, k, n) in [(50, 20, 24), (20, 1100, 24), (37, 70, 45)] {
            gemm_residual_in_place_case(m, k, n);
        }
    }

    fn gemm_residual_in_place_case(m: usize, k: usize, n: usize) {
        for isa in Isa::available() {
            with_isa(isa, || gemm_residual_in_place_on(m, k, n));
        }
    }

    fn gemm_residual_in_place_on(m: usize, k: usize, n: usize) {
        let a = rand_vec(m * k, 5);
        let w = rand_vec(k * n, 6);
        let b = PackedB::pack(k, n, |kk, o| w[kk * n + o], None);
        let mut c = rand_vec(m * n, 9);
        let before = c.clone();
        let epi = Epilogue {
            silu: true,
            residual: Some((c.as_ptr(), n)),
        };
        // SAFETY: sizes match; the residual is exactly C (allowed).
        unsafe {
            gemm(
                m,
                ASrc::Direct {
                    ptr: a.as_ptr(),
                    ld: k,
                },
                &b,
                c.as_mut_ptr(),
                n,
                epi,
            )
        };
        for i in 0..m {
            for o in 0..n {
                let s: f32 = (0..k).map(|kk| a[i * k + kk] * w[kk * n + o]).sum();
                let e = silu(s) + before[i * n + o];
                assert!(
                    (c[i * n + o] - e).abs() < 1e-4 * (1.0 + e.abs()),
                    "k {k}: {i},{o}"
                );
            }
        }
    }

    #[test]
    fn depthwise_matches_scalar() {
        for (h, w, c) in [(5, 7, 16), (1, 1, 8), (6, 3, 24), (4, 5, 5)] {
            let x = rand_vec(h * w * c, 11);
            let wt = rand_vec(9 * c, 12);
            let bias = rand_vec(c, 13);
            let mut want = vec![0f32; h * w * c];
            let mut got = vec![0f32; h * w * c];
            let g = Depthwise {
                src: x.as_ptr(),
                lds: c,
                dst: want.as_mut_ptr(),
                ldd: c,
                h,
                w,
                c,
                wt: wt.as_ptr(),
                wld: c,
                bias: bias.as_ptr(),
                act: true,
            };
            // SAFETY: buffers sized h*w*c, weights 9*c, bias c.
            unsafe {
                dw3x3_scalar(&g, (0, h));
                dw3x3(&Depthwise {
                    dst: got.as_mut_ptr(),
                    ..g
                });
            }
            // Check the scalar one against an independent formula at one interior pixel.
            if h > 2 && w > 2 {
                let (y, xx, ch) = (1, 1, 0);
                let mut s = bias[ch];
                for ky in 0..3 {
                    for kx in 0..3 {
                        s += x[((y + ky - 1) * w + xx + kx - 1) * c + ch]
                            * wt[(ky * 3 + kx) * c + ch];
                    }
                }
                assert!((want[(y * w + xx) * c + ch] - silu(s)).abs() < 1e-5);
            }
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() < 1e-5, "{h}x{w}x{c}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn fast_exp_and_silu_accuracy() {
        let mut xs: Vec<f32> = (0..20001).map(|i| -100.0 + i as f32 * 0.01).collect();
        let orig = xs.clone();
        map_inplace(&mut xs, Map::Exp);
        for (&x, &e) in orig.iter().zip(&xs) {
            // The range is clamped; the f32 rounding of x * log2(e) (half an ulp of up to 126)
            // adds |x| * 9e-8 of relative error far from 0, where only sigmoid saturation and
            // softmax tails use it.
            let ln2 = std::f64::consts::LN_2;
            let want = (x as f64).clamp(-125.0 * ln2, 126.0 * ln2).exp();
            let tol = 3e-7 + 9e-8 * x.abs() as f64;
            assert!(
                ((e as f64) - want).abs() <= tol * want + 1e-37,
                "exp({x}) = {e}, want {want}"
            );
        }
        let mut s = orig.clone();
        map_inplace(&mut s, Map::Silu);
        for (&x, &v) in orig.iter().zip(&s) {
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            assert!(
                (v as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "silu({x}) = {v}, want {want}"
            );
        }
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let (rows, n, ld) = (5, 37, 40);
        let mut x = rand_vec(rows * ld, 21);
        let orig = x.clone();
        softmax_rows(&mut x, rows, n, ld);
        for r in 0..rows {
            let m = orig[r * ld..r * ld + n]
                .iter()
                .copied()
                .fold(f32::MIN, f32::max);
            let sum: f32 = orig[r * ld..r * ld + n].iter().map(|v| (v - m).exp()).sum();
            for j in 0..n {
                let want = (orig[r * ld + j] - m).exp() / sum;
                assert!((x[r * ld + j] - want).abs() < 1e-6);
            }
            assert_eq!(x[r * ld + n], orig[r * ld + n], "stride padding untouched");
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use std::time::Instant;

    /// Single-thread GFLOP/s of the GEMM on typical layer shapes (ignored; prints figures).
    #[test]
    #[ignore]
    fn gemm_gflops() {
        for (m, k, n, im2col) in [
            (15360usize, 48usize, 64usize, false),
            (15360, 32, 32, false),
            (3840, 576, 64, false),
            (3840, 64, 64, false),
            (960, 1152, 128, false),
            (240, 2304, 64, false),
            (3840, 64, 64, true),
        ] {
            let a = crate::fast::testing::rand_vec(m * k, 1);
            let w = crate::fast::testing::rand_vec(k * n, 2);
            let b = PackedB::pack(k, n, |kk, o| w[kk * n + o], None);
            let mut c = vec![0f32; m * n];
            let epi = Epilogue {
                silu: std::env::var_os("NO_SILU").is_none(),
                residual: None,
            };
            // a 3x3 conv with ci = k/9 over a 60x64 image when im2col
            let src = if im2col {
                let ci = k / 9;
                ASrc::Im2col(Im2col {
                    ptr: a.as_ptr(),
                    ld: ci,
                    ih: 60,
                    iw: 64,
                    ci,
                    k: 3,
                    stride: 1,
                    pad: 1,
                    ow: 64,
                    planar: false,
                })
            } else {
                ASrc::Direct {
                    ptr: a.as_ptr(),
                    ld: k,
                }
            };
            let reps = 5;
            let mut best = f64::MAX;
            for _ in 0..reps {
                let t0 = Instant::now();
                // SAFETY: sizes match the buffers.
                unsafe { gemm_rows(current_isa(), 0, m, src, &b, c.as_mut_ptr(), n, epi) };
                best = best.min(t0.elapsed().as_secs_f64());
            }
            println!(
                "m {m} k {k} n {n} im2col {im2col}: {:.1} GFLOP/s (1 thread)",
                2.0 * (m * k * n) as f64 / best / 1e9
            );
        }
    }
}
