//! Winograd F(2x2, 3x3) for stride-1 3x3 convolutions over NHWC: 16 multiplications per
//! 2x2 output tile and channel pair instead of 36 (2.25x fewer FLOPs in the GEMMs).
//!
//! Tiles are processed in blocks that stay in L2: input transform of a block into
//! `V[tile][16][ci]`, 16 GEMMs `M_xi = V_xi * U_xi` (the packed-panel GEMM of
//! [`super::kernels`], reading `V_xi` in place with stride `16*ci`), then the output transform
//! with bias, SiLU (vectorised) and residual. Blocks are split over the thread pool.

use std::cell::RefCell;

use super::kernels::{self, ASrc, Epilogue, PackedB, SendPtr};

/// Transformed weights `U_xi = (G g G^T)_xi`, packed for the GEMM, one per tile position.
#[derive(Debug, Clone)]
pub struct WinogradW {
    /// Input channels.
    pub ci: usize,
    /// Output channels.
    pub co: usize,
    /// `ci` rounded up to a multiple of 8 (zero-padded in V and U).
    cip: usize,
    /// `co` rounded up to a multiple of 8 (zero-padded in U, M and the bias).
    cop: usize,
    u: Vec<PackedB>,
    bias: Vec<f32>,
}

impl WinogradW {
    /// From OIHW 3x3 weights (`co x ci x 3 x 3`) and a bias.
    pub fn new(w: &[f32], co: usize, ci: usize, bias: &[f32]) -> Self {
        // U[o][c] = G g G^T, G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]]
        let mut u_all = vec![0f32; co * ci * 16];
        for o in 0..co {
            for c in 0..ci {
                let g = &w[(o * ci + c) * 9..(o * ci + c) * 9 + 9];
                let mut gg = [[0f32; 3]; 4];
                for j in 0..3 {
                    let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                    gg[0][j] = g0;
                    gg[1][j] = 0.5 * (g0 + g1 + g2);
                    gg[2][j] = 0.5 * (g0 - g1 + g2);
                    gg[3][j] = g2;
                }
                let u = &mut u_all[(o * ci + c) * 16..(o * ci + c) * 16 + 16];
                for i in 0..4 {
                    let r = gg[i];
                    u[i * 4] = r[0];
                    u[i * 4 + 1] = 0.5 * (r[0] + r[1] + r[2]);
                    u[i * 4 + 2] = 0.5 * (r[0] - r[1] + r[2]);
                    u[i * 4 + 3] = r[2];
                }
            }
        }
        let (cip, cop) = (ci.div_ceil(8) * 8, co.div_ceil(8) * 8);
        let at = |c: usize, o: usize, xi: usize| {
            if c < ci && o < co {
                u_all[(o * ci + c) * 16 + xi]
            } else {
                0.0
            }
        };
        let u = (0..16)
            .map(|xi| PackedB::pack(cip, cop, |c, o| at(c, o, xi), None))
            .collect();
        let mut b = bias.to_vec();
        b.resize(cop, 0.0);
        Self {
            ci,
            co,
            cip,
            cop,
            u,
            bias: b,
        }
    }
}

thread_local! {
    static WINO_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Tiles per block: the block's V and M (16 x tiles x (ci + co) floats) stay within ~384 KiB.
/// A multiple of the micro-tile height `mr`.
fn block_tiles(ci: usize, co: usize, mr: usize) -> usize {
    ((24576 / (ci + co).max(1)) / mr * mr).clamp(mr, 96)
}

/// Stride-1, pad-1 3x3 convolution `dst = act(conv(src) + bias) + residual`.
///
/// # Safety
/// [`supported`]`(wt.ci, wt.co)` must hold.
/// `src` (h*w pixels at stride `lds`, `wt.ci` channels) readable; `dst` (stride `ldd`,
/// `wt.co` channels) writable and disjoint from `src`; the residual (if any) has the shape of
/// `dst` and is disjoint from it or exactly it.
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv3x3(
    src: *const f32,
    lds: usize,
    h: usize,
    w: usize,
    wt: &WinogradW,
    dst: *mut f32,
    ldd: usize,
    epi: Epilogue,
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = th * tw;
    // Blocks small enough that every thread gets a few (small maps have fewer tiles than
    // one cache-sized block), never below one micro-tile height.
    let threads = super::team::current_threads();
    let isa = kernels::current_isa();
    let mr = isa.mr();
    let per_thread = tiles.div_ceil(4 * threads).div_ceil(mr) * mr;
    let tb = block_tiles(wt.cip, wt.cop, mr).min(per_thread.max(mr));
    let flops = 2.0 * (tiles * 16 * wt.cip * wt.cop) as f64;
    let (s, d, e) = (SendPtr(src), SendPtr(dst), SendPtr(epi));
    kernels::par_rows(tiles, tb, flops, |lo, hi| {
        let (s, d, e) = (s, d, e);
        WINO_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = tb * 16 * (wt.cip + wt.cop) + 16 * wt.cip;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            let (v, rest) = buf.split_at_mut(tb * 16 * wt.cip);
            let (m, rest) = rest.split_at_mut(tb * 16 * wt.cop);
            let dtile = &mut rest[..16 * wt.cip];
            let mut t0 = lo;
            while t0 < hi {
                let n = tb.min(hi - t0);
                // SAFETY: the caller vouches for src/dst/residual; the scratch slices are sized
                // for n <= tb tiles above.
                unsafe {
                    block(
                        isa, s.0, lds, h, w, tw, wt, d.0, ldd, e.0, t0, n, v, m, dtile,
                    )
                };
                t0 += n;
            }
        });
    });
}

/// Input transform, 16 GEMMs and output transform for tiles `t0..t0+n`.
///
/// # Safety
/// As [`conv3x3`]; AVX2/FMA present and `isa` (the GEMM's level, at least AVX2) supported;
/// `v` holds `n*16*cip`, `m` `n*16*cop` and `dtile` `16*cip` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    isa: kernels::Isa,
    src: *const f32,
    lds: usize,
    h: usize,
    w: usize,
    tw: usize,
    wt: &WinogradW,
    dst: *mut f32,
    ldd: usize,
    epi: Epilogue,
    t0: usize,
    n: usize,
    v: &mut [f32],
    m: &mut [f32],
    dtile: &mut [f32],
) {
    let (ci, cip, cop) = (wt.ci, wt.cip, wt.cop);
    for t in 0..n {
        let tile = t0 + t;
        let (ty, tx) = (tile / tw, tile % tw);
        // gather the 4x4 input patch (zero outside the image)
        for i in 0..4 {
            let y = (2 * ty + i) as isize - 1;
            for j in 0..4 {
                let x = (2 * tx + j) as isize - 1;
                let out = &mut dtile[(i * 4 + j) * cip..(i * 4 + j + 1) * cip];
                if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                    let p = src.add((y as usize * w + x as usize) * lds);
                    out[..ci].copy_from_slice(std::slice::from_raw_parts(p, ci));
                    out[ci..].fill(0.0);
                } else {
                    out.fill(0.0);
                }
            }
        }
        avx::input_transform(dtile.as_ptr(), v.as_mut_ptr().add(t * 16 * cip), cip);
    }
    let none = Epilogue {
        silu: false,
        residual: None,
    };
    for (xi, u) in wt.u.iter().enumerate() {
        let a = ASrc::Direct {
            ptr: v.as_ptr().add(xi * cip),
            ld: 16 * cip,
        };
        kernels::gemm_rows(
            isa,
            0,
            n,
            a,
            u,
            m.as_mut_ptr().add(xi * cop),
            16 * cop,
            none,
        );
    }
    for t in 0..n {
        let tile = t0 + t;
        let (ty, tx) = (tile / tw, tile % tw);
        let mut outs = [std::ptr::null_mut::<f32>(); 4];
        let mut res = [std::ptr::null::<f32>(); 4];
        for a in 0..2 {
            for b in 0..2 {
                let (y, x) = (2 * ty + a, 2 * tx + b);
                if y < h && x < w {
                    outs[a * 2 + b] = dst.add((y * w + x) * ldd);
                    if let Some((rp, ldr)) = epi.residual {
                        res[a * 2 + b] = rp.add((y * w + x) * ldr);
                    }
                }
            }
        }
        avx::output_transform(
            m.as_ptr().add(t * 16 * cop),
            cop,
            wt.co,
            wt.bias.as_ptr(),
            epi.silu,
            &outs,
            &res,
        );
    }
}

/// Whether [`conv3x3`] can run these channel counts on this CPU.
pub fn supported(ci: usize, co: usize) -> bool {
    cfg!(target_arch = "x86_64") && kernels::has_avx2() && ci > 0 && co > 0
}

/// Never called: [`supported`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
mod avx {
    pub unsafe fn input_transform(_: *const f32, _: *mut f32, _: usize) {}
    pub unsafe fn output_transform(
        _: *const f32,
        _: usize,
        _: *const f32,
        _: bool,
        _: &[*mut f32; 4],
        _: &[*const f32; 4],
    ) {
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// Column `j` of a 4x4 tile stored as `[16][c]`: tile elements (0, j) .. (3, j), 8
    /// channels from `ch`.
    ///
    /// # Safety
    /// AVX2 present; `p` readable for `16*c` floats, `ch + 8 <= c`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn column(p: *const f32, c: usize, ch: usize, j: usize) -> [__m256; 4] {
        [
            _mm256_loadu_ps(p.add(j * c + ch)),
            _mm256_loadu_ps(p.add((4 + j) * c + ch)),
            _mm256_loadu_ps(p.add((8 + j) * c + ch)),
            _mm256_loadu_ps(p.add((12 + j) * c + ch)),
        ]
    }

    /// `V = B^T d B` for 8 channels at a time; `d`, `v` as `[16][c]`.
    ///
    /// # Safety
    /// AVX2/FMA present; `c % 8 == 0`; `d` readable and `v` writable for `16*c` floats.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn input_transform(d: *const f32, v: *mut f32, c: usize) {
        let mut ch = 0;
        while ch < c {
            let mut t = [[_mm256_setzero_ps(); 4]; 4];
            for j in 0..4 {
                let [a, b, cc, dd] = column(d, c, ch, j);
                t[0][j] = _mm256_sub_ps(a, cc);
                t[1][j] = _mm256_add_ps(b, cc);
                t[2][j] = _mm256_sub_ps(cc, b);
                t[3][j] = _mm256_sub_ps(b, dd);
            }
            for (i, r) in t.iter().enumerate() {
                _mm256_storeu_ps(v.add(i * 4 * c + ch), _mm256_sub_ps(r[0], r[2]));
                _mm256_storeu_ps(v.add((i * 4 + 1) * c + ch), _mm256_add_ps(r[1], r[2]));
                _mm256_storeu_ps(v.add((i * 4 + 2) * c + ch), _mm256_sub_ps(r[2], r[1]));
                _mm256_storeu_ps(v.add((i * 4 + 3) * c + ch), _mm256_sub_ps(r[1], r[3]));
            }
            ch += 8;
        }
    }

    /// `Y = A^T M A + bias`, SiLU, + residual, stored to the (non-null) output pixels.
    ///
    /// # Safety
    /// AVX2/FMA present; `c % 8 == 0`, `cvalid <= c`; `m` readable for `16*c`, `bias` for `c`;
    /// every non-null `outs[i]` writable and `res[i]` readable for `cvalid` floats.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn output_transform(
        m: *const f32,
        c: usize,
        cvalid: usize,
        bias: *const f32,
        silu: bool,
        outs: &[*mut f32; 4],
        res: &[*const f32; 4],
    ) {
        let mut ch = 0;
        while ch < c {
            let mut s0 = [_mm256_setzero_ps(); 4];
            let mut s1 = [_mm256_setzero_ps(); 4];
            for j in 0..4 {
                let [a, b, cc, d] = column(m, c, ch, j);
                s0[j] = _mm256_add_ps(_mm256_add_ps(a, b), cc);
                s1[j] = _mm256_sub_ps(_mm256_sub_ps(b, cc), d);
            }
            let bv = _mm256_loadu_ps(bias.add(ch));
            let y = [
                _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0[0], s0[1]), s0[2]), bv),
                _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s0[1], s0[2]), s0[3]), bv),
                _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s1[0], s1[1]), s1[2]), bv),
                _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s1[1], s1[2]), s1[3]), bv),
            ];
            for i in 0..4 {
                if outs[i].is_null() {
                    continue;
                }
                let mut val = y[i];
                if silu {
                    val = crate::fast::kernels::avx::silu8(val);
                }
                if ch + 8 <= cvalid {
                    if !res[i].is_null() {
                        val = _mm256_add_ps(val, _mm256_loadu_ps(res[i].add(ch)));
                    }
                    _mm256_storeu_ps(outs[i].add(ch), val);
                } else {
                    // last, partial group of channels
                    let mut tmp = [0f32; 8];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), val);
                    for (k, &tv) in tmp.iter().enumerate().take(cvalid - ch) {
                        let r = if res[i].is_null() {
                            0.0
                        } else {
                            *res[i].add(ch + k)
                        };
                        *outs[i].add(ch + k) = tv + r;
                    }
                }
            }
            ch += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fast::testing::rand_vec;

    /// Direct NHWC 3x3 convolution (stride 1, pad 1) in f64: the reference.
    fn conv_ref(
        x: &[f32],
        h: usize,
        w: usize,
        ci: usize,
        wt: &[f32],
        co: usize,
        bias: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0f32; h * w * co];
        for y in 0..h {
            for xx in 0..w {
                for o in 0..co {
                    let mut acc = bias[o] as f64;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) =
                                (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                continue;
                            }
                            for c in 0..ci {
                                acc += x[(iy as usize * w + ix as usize) * ci + c] as f64
                                    * wt[((o * ci + c) * 3 + ky) * 3 + kx] as f64;
                            }
                        }
                    }
                    out[(y * w + xx) * co + o] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn winograd_matches_direct_conv() {
        // odd sizes (partial tiles), several channel counts, SiLU and residual
        if !kernels::has_avx2() {
            return;
        }
        for (h, w, ci, co, silu) in [
            (5, 7, 8, 16, false),
            (9, 4, 16, 24, true),
            (1, 1, 3, 5, true),
            (12, 13, 64, 40, true),
            (6, 5, 51, 51, true),
            (4, 9, 64, 115, false),
        ] {
            let x = rand_vec(h * w * ci, 3);
            let wts = rand_vec(co * ci * 9, 4);
            let bias = rand_vec(co, 5);
            let mut want = conv_ref(&x, h, w, ci, &wts, co, &bias);
            let ww = WinogradW::new(&wts, co, ci, &bias);
            let res = rand_vec(h * w * co, 6);
            for (i, v) in want.iter_mut().enumerate() {
                if silu {
                    *v = kernels::silu(*v);
                }
                *v += res[i];
            }
            let ldd = co + 2;
            let mut got = vec![f32::NAN; h * w * ldd];
            let mut resw = vec![0f32; h * w * ldd];
            for p in 0..h * w {
                resw[p * ldd..p * ldd + co].copy_from_slice(&res[p * co..(p + 1) * co]);
            }
            let epi = Epilogue {
                silu,
                residual: Some((resw.as_ptr(), ldd)),
            };
            for isa in kernels::Isa::available() {
                if isa < kernels::Isa::Avx2 {
                    continue;
                }
                got.fill(f32::NAN);
                // SAFETY: buffers sized for the geometry; residual disjoint from the output;
                // the level is available and at least AVX2 (what `supported` asks).
                kernels::with_isa(isa, || unsafe {
                    conv3x3(x.as_ptr(), ci, h, w, &ww, got.as_mut_ptr(), ldd, epi)
                });
                for p in 0..h * w {
                    for o in 0..co {
                        let (g, e) = (got[p * ldd + o], want[p * co + o]);
                        assert!(
                            (g - e).abs() <= 1e-4 + 1e-4 * e.abs(),
                            "{isa}: {h}x{w}x{ci}->{co} pixel {p} ch {o}: {g} vs {e}"
                        );
                    }
                    assert!(got[p * ldd + co].is_nan(), "wrote past the channels");
                }
            }
        }
    }
}
