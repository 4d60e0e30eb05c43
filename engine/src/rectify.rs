//! Rectification: fisheye undistortion, crop to valid pixels, crop to the piste band and
//! letterbox to the pose network's input, fused into ONE precomputed remap table per geometry.
//!
//! Geometry, stage by stage (all coordinates are pixel indices, pixel centres at integers):
//! 1. **Undistort** (when enabled) with OpenCV's fisheye (equidistant) model exactly as the old
//!    system did: `K = [[f, 0, w/2], [0, f, h/2], [0, 0, 1]]` with `f = max(w, h)`,
//!    `D = [strength, 0, 0, 0]`, and the output camera matrix of
//!    `cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, D, (w, h), I, balance)`
//!    (fov_scale 1, output size = input size). Checked against OpenCV by the test
//!    `fisheye_matches_opencv` (numbers from `engine/tools/fisheye_reference.py`).
//! 2. **Auto-crop** to the largest axis-aligned rectangle whose pixels all map inside the
//!    source. The result is the *rectified* image ([`RemapTable::rectified_size`],
//!    [`RemapTable::undistort_rgb`]): keypoints are reported in its coordinates.
//! 3. **Band crop**: rows `round(y0 * h_r) .. round(y1 * h_r)` of the rectified image.
//! 4. **Letterbox** to the target size like `referee_pose_api::letterbox_rgb` (scale = min ratio,
//!    rounded content size, centred, pad value 114, half-pixel bilinear sampling).
//!
//! [`RemapTable::build`] composes the four steps once into, for every content pixel of the model
//! input, a source base index and 12-bit bilinear weights; [`RemapTable::apply`] then writes
//! the CHW f32 `[0, 1]` tensor in one pass. [`RemapTable::apply_reference`] computes the same
//! thing per pixel with the undistort math inline (no table); the two differ by at most
//! [`TABLE_TOLERANCE`] (weight quantisation).

use std::collections::VecDeque;
use std::sync::Arc;

use referee_pose_api::{Letterbox, PreparedFrame, RgbImage};

/// Letterbox padding value (as YOLO/ultralytics), in 8-bit units.
pub const PAD_VALUE: u8 = 114;
/// Largest difference between [`RemapTable::apply`] and [`RemapTable::apply_reference`]
/// outputs (values in `[0, 1]`), from the 12-bit bilinear weights.
pub const TABLE_TOLERANCE: f32 = 1e-3;

const WEIGHT_BITS: u32 = 12;
const WEIGHT_ONE: u32 = 1 << WEIGHT_BITS;

/// Rectification settings for one camera geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RectifyParams {
    /// Undistort with the fisheye model; when false only band crop + letterbox apply.
    pub fisheye_enabled: bool,
    /// Fisheye `k1` (`D = [strength, 0, 0, 0]`); the old system's knob, negative = barrel.
    pub strength: f32,
    /// OpenCV's balance in `[0, 1]`: 0 keeps only valid pixels, 1 keeps the whole source.
    pub balance: f32,
    /// Vertical band `(y0, y1)` kept for pose, fractions of the rectified height, `0 <= y0 < y1 <= 1`.
    pub band: (f32, f32),
    /// Model input `(width, height)`, both positive multiples of 32.
    pub target: (usize, usize),
}

/// Why a remap table could not be built or applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RectifyError {
    #[error("source image {width}x{height} is too small (need at least 2x2) or too large")]
    BadSource { width: usize, height: usize },
    #[error("model input {width}x{height} must be positive multiples of 32")]
    BadTarget { width: usize, height: usize },
    #[error("piste band {y0}..{y1} must satisfy 0 <= y0 < y1 <= 1 and keep at least one row")]
    BadBand { y0: f32, y1: f32 },
    #[error("fisheye balance {0} must be in [0, 1]")]
    BadBalance(f32),
    #[error("fisheye strength {0} must be finite and in [-1, 1]")]
    BadStrength(f32),
    #[error("fisheye strength {strength} has no inverse at the edges of a {width}x{height} frame (OpenCV returns a degenerate camera matrix here): use a weaker strength")]
    NoInverse {
        strength: f32,
        width: usize,
        height: usize,
    },
    #[error("no output pixel maps inside the source for strength {strength}, balance {balance}")]
    NoValidRegion { strength: f32, balance: f32 },
    #[error(
        "frame is {got_w}x{got_h} ({got_len} bytes) but the table was built for {want_w}x{want_h}"
    )]
    SizeMismatch {
        got_w: usize,
        got_h: usize,
        got_len: usize,
        want_w: usize,
        want_h: usize,
    },
}

/// OpenCV fisheye undistortion for one frame size: maps undistorted (output) pixels to source
/// pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fisheye {
    /// Source camera: focal length and principal point.
    f: f64,
    cx: f64,
    cy: f64,
    k1: f64,
    /// New camera matrix (from `balance`).
    nf: f64,
    ncx: f64,
    ncy: f64,
}

impl Fisheye {
    fn new(w: usize, h: usize, strength: f32, balance: f32) -> Result<Self, RectifyError> {
        Self::with_f64(w, h, strength as f64, balance as f64)
    }

    fn with_f64(w: usize, h: usize, k1: f64, b: f64) -> Result<Self, RectifyError> {
        let strength = k1 as f32;
        let f = w.max(h) as f64;
        let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
        // estimateNewCameraMatrixForUndistortRectify: undistort the four edge midpoints
        // (OpenCV uses integer halves here), take their mean and extents.
        let (wi, hi) = (w as i64, h as i64);
        let probes = [(wi / 2, 0), (wi, hi / 2), (wi / 2, hi), (0, hi / 2)];
        let mut pts = [(0.0f64, 0.0f64); 4];
        for (p, &(px, py)) in pts.iter_mut().zip(&probes) {
            let (x, y) = ((px as f64 - cx) / f, (py as f64 - cy) / f);
            *p = undistort_normalized(x, y, k1).ok_or(RectifyError::NoInverse {
                strength,
                width: w,
                height: h,
            })?;
        }
        let cn = (
            pts.iter().map(|p| p.0).sum::<f64>() / 4.0,
            pts.iter().map(|p| p.1).sum::<f64>() / 4.0,
        );
        let minx = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let maxx = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let miny = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let maxy = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let (wf, hf) = (w as f64, h as f64);
        let cands = [
            wf * 0.5 / (cn.0 - minx),
            wf * 0.5 / (maxx - cn.0),
            hf * 0.5 / (cn.1 - miny),
            hf * 0.5 / (maxy - cn.1),
        ];
        let fmin = cands.iter().copied().fold(f64::INFINITY, f64::min);
        let fmax = cands.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let nf = b * fmin + (1.0 - b) * fmax;
        if !(nf.is_finite() && nf > 0.0) {
            return Err(RectifyError::NoInverse {
                strength,
                width: w,
                height: h,
            });
        }
        Ok(Self {
            f,
            cx,
            cy,
            k1,
            nf,
            ncx: wf * 0.5 - cn.0 * nf,
            ncy: hf * 0.5 - cn.1 * nf,
        })
    }

    /// initUndistortRectifyMap at a (possibly fractional) output position.
    #[inline]
    fn map(&self, x: f64, y: f64) -> (f64, f64) {
        let (xn, yn) = ((x - self.ncx) / self.nf, (y - self.ncy) / self.nf);
        let r = (xn * xn + yn * yn).sqrt();
        let theta = r.atan();
        let theta_d = theta * (1.0 + self.k1 * theta * theta);
        let scale = if r == 0.0 { 1.0 } else { theta_d / r };
        (self.f * xn * scale + self.cx, self.f * yn * scale + self.cy)
    }
}

/// cv::fisheye::undistortPoints for normalized coordinates with `D = [k1, 0, 0, 0]`; `None`
/// where OpenCV's Newton iteration does not converge or flips sign (it returns -1e6 there).
fn undistort_normalized(x: f64, y: f64, k1: f64) -> Option<(f64, f64)> {
    let theta_d = (x * x + y * y)
        .sqrt()
        .clamp(-std::f64::consts::FRAC_PI_2, std::f64::consts::FRAC_PI_2);
    if theta_d <= 1e-8 {
        return Some((x, y));
    }
    let mut theta = theta_d;
    let mut converged = false;
    for _ in 0..10 {
        let t2 = theta * theta;
        let fix = (theta * (1.0 + k1 * t2) - theta_d) / (1.0 + 3.0 * k1 * t2);
        theta -= fix;
        if fix.abs() < 1e-8 {
            converged = true;
            break;
        }
    }
    if !converged || theta < 0.0 || !theta.is_finite() {
        return None;
    }
    let scale = theta.tan() / theta_d;
    Some((x * scale, y * scale))
}

/// Largest axis-aligned rectangle of `true` cells in a row-major mask: (x, y, w, h).
fn largest_rectangle(mask: &[bool], w: usize, h: usize) -> Option<(usize, usize, usize, usize)> {
    let mut heights = vec![0usize; w];
    let mut best: Option<(usize, usize, usize, usize)> = None;
    let mut best_area = 0usize;
    let mut stack: Vec<usize> = Vec::with_capacity(w + 1);
    for row in 0..h {
        for (x, hgt) in heights.iter_mut().enumerate() {
            *hgt = if mask[row * w + x] { *hgt + 1 } else { 0 };
        }
        stack.clear();
        for x in 0..=w {
            let cur = if x < w { heights[x] } else { 0 };
            while let Some(&top) = stack.last() {
                if heights[top] <= cur {
                    break;
                }
                stack.pop();
                let height = heights[top];
                let left = stack.last().map_or(0, |&l| l + 1);
                let width = x - left;
                if width * height > best_area {
                    best_area = width * height;
                    best = Some((left, row + 1 - height, width, height));
                }
            }
            stack.push(x);
        }
    }
    best
}

/// The composed geometry, shared by the table and the reference path.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    src_w: usize,
    src_h: usize,
    fisheye: Option<Fisheye>,
    /// Auto-crop rectangle in the undistorted image: origin and size (= rectified size).
    crop_x: usize,
    crop_y: usize,
    rect_w: usize,
    rect_h: usize,
    /// Band rows of the rectified image: `band_y0 .. band_y0 + band_h`.
    band_y0: usize,
    band_h: usize,
    target_w: usize,
    target_h: usize,
    scale: f32,
    new_w: usize,
    new_h: usize,
    pad_x: usize,
    pad_y: usize,
}

impl Geometry {
    fn new(src_w: usize, src_h: usize, p: &RectifyParams) -> Result<Self, RectifyError> {
        if src_w < 2 || src_h < 2 || src_w > 1 << 15 || src_h > 1 << 15 {
            return Err(RectifyError::BadSource {
                width: src_w,
                height: src_h,
            });
        }
        let (target_w, target_h) = p.target;
        if target_w == 0
            || target_h == 0
            || target_w % 32 != 0
            || target_h % 32 != 0
            || target_w > 1 << 14
            || target_h > 1 << 14
        {
            return Err(RectifyError::BadTarget {
                width: target_w,
                height: target_h,
            });
        }
        let (y0, y1) = p.band;
        if !(y0.is_finite() && y1.is_finite() && 0.0 <= y0 && y0 < y1 && y1 <= 1.0) {
            return Err(RectifyError::BadBand { y0, y1 });
        }
        let (fisheye, crop_x, crop_y, rect_w, rect_h) = if p.fisheye_enabled {
            if !(0.0..=1.0).contains(&p.balance) {
                return Err(RectifyError::BadBalance(p.balance));
            }
            if !(p.strength.is_finite() && (-1.0..=1.0).contains(&p.strength)) {
                return Err(RectifyError::BadStrength(p.strength));
            }
            let fe = Fisheye::new(src_w, src_h, p.strength, p.balance)?;
            let (maxx, maxy) = ((src_w - 1) as f64, (src_h - 1) as f64);
            let mask: Vec<bool> = (0..src_h)
                .flat_map(|y| (0..src_w).map(move |x| (x, y)))
                .map(|(x, y)| {
                    let (u, v) = fe.map(x as f64, y as f64);
                    (0.0..=maxx).contains(&u) && (0.0..=maxy).contains(&v)
                })
                .collect();
            let (cx, cy, cw, ch) = largest_rectangle(&mask, src_w, src_h)
                .filter(|r| r.2 >= 2 && r.3 >= 2)
                .ok_or(RectifyError::NoValidRegion {
                    strength: p.strength,
                    balance: p.balance,
                })?;
            (Some(fe), cx, cy, cw, ch)
        } else {
            (None, 0, 0, src_w, src_h)
        };
        let band_y0 = ((y0 as f64 * rect_h as f64).round() as usize).min(rect_h - 1);
        let band_y1 = ((y1 as f64 * rect_h as f64).round() as usize).min(rect_h);
        if band_y1 <= band_y0 {
            return Err(RectifyError::BadBand { y0, y1 });
        }
        let band_h = band_y1 - band_y0;
        // Same rounding as referee_pose_api::letterbox_rgb.
        let scale = (target_w as f32 / rect_w as f32).min(target_h as f32 / band_h as f32);
        let new_w = ((rect_w as f32 * scale).round() as usize).clamp(1, target_w);
        let new_h = ((band_h as f32 * scale).round() as usize).clamp(1, target_h);
        Ok(Self {
            src_w,
            src_h,
            fisheye,
            crop_x,
            crop_y,
            rect_w,
            rect_h,
            band_y0,
            band_h,
            target_w,
            target_h,
            scale,
            new_w,
            new_h,
            pad_x: (target_w - new_w) / 2,
            pad_y: (target_h - new_h) / 2,
        })
    }

    /// Rectified-image coordinate sampled by content column `x` / row `y` of the letterbox
    /// (half-pixel mapping, clamped to the image, as `letterbox_rgb`).
    fn content_to_rectified(&self, x: usize, y: usize) -> (f64, f64) {
        let sx = self.rect_w as f32 / self.new_w as f32;
        let sy = self.band_h as f32 / self.new_h as f32;
        let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (self.rect_w - 1) as f32);
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (self.band_h - 1) as f32);
        (fx as f64, fy as f64 + self.band_y0 as f64)
    }

    /// Source-image position of a rectified-image position, clamped inside the source.
    #[inline]
    fn rectified_to_source(&self, xr: f64, yr: f64) -> (f64, f64) {
        let (u, v) = match &self.fisheye {
            Some(fe) => fe.map(xr + self.crop_x as f64, yr + self.crop_y as f64),
            None => (xr, yr),
        };
        (
            u.clamp(0.0, (self.src_w - 1) as f64),
            v.clamp(0.0, (self.src_h - 1) as f64),
        )
    }

    fn letterbox(&self) -> Letterbox {
        Letterbox {
            scale: self.scale,
            pad_x: self.pad_x as f32,
            pad_y: self.pad_y as f32,
            offset_x: 0.0,
            offset_y: self.band_y0 as f32,
        }
    }

    fn check(&self, rgb: &RgbImage) -> Result<(), RectifyError> {
        if rgb.width != self.src_w
            || rgb.height != self.src_h
            || rgb.data.len() != self.src_w * self.src_h * 3
        {
            return Err(RectifyError::SizeMismatch {
                got_w: rgb.width,
                got_h: rgb.height,
                got_len: rgb.data.len(),
                want_w: self.src_w,
                want_h: self.src_h,
            });
        }
        Ok(())
    }

    /// Bilinear tap for a source position: byte offset of the top-left pixel (always with a
    /// right and a lower neighbour) and 12-bit weights of the right / lower neighbours.
    fn tap(&self, u: f64, v: f64) -> Tap {
        let x0 = (u.floor() as usize).min(self.src_w - 2);
        let y0 = (v.floor() as usize).min(self.src_h - 2);
        let q = |frac: f64| ((frac * WEIGHT_ONE as f64).round() as u32).min(WEIGHT_ONE) as u16;
        Tap {
            base: ((y0 * self.src_w + x0) * 3) as u32,
            wx: q(u - x0 as f64),
            wy: q(v - y0 as f64),
        }
    }
}

/// One precomputed bilinear sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tap {
    base: u32,
    wx: u16,
    wy: u16,
}

/// The fused undistort + crop + band + letterbox map for one geometry (source size + params).
#[derive(Debug, Clone)]
pub struct RemapTable {
    geo: Geometry,
    params: RectifyParams,
    /// One tap per content pixel of the letterbox, row-major (`new_w * new_h`).
    taps: Vec<Tap>,
}

impl RemapTable {
    /// Builds the table for `src_w x src_h` frames (tens of milliseconds for 1280x720 with
    /// fisheye on: build once per geometry, see [`RemapCache`]).
    pub fn build(src_w: usize, src_h: usize, p: &RectifyParams) -> Result<Self, RectifyError> {
        let geo = Geometry::new(src_w, src_h, p)?;
        let mut taps = Vec::with_capacity(geo.new_w * geo.new_h);
        for y in 0..geo.new_h {
            for x in 0..geo.new_w {
                let (xr, yr) = geo.content_to_rectified(x, y);
                let (u, v) = geo.rectified_to_source(xr, yr);
                taps.push(geo.tap(u, v));
            }
        }
        tracing::debug!(
            src_w,
            src_h,
            rect_w = geo.rect_w,
            rect_h = geo.rect_h,
            crop_x = geo.crop_x,
            crop_y = geo.crop_y,
            band_y0 = geo.band_y0,
            band_h = geo.band_h,
            content_w = geo.new_w,
            content_h = geo.new_h,
            "remap table built"
        );
        Ok(Self {
            geo,
            params: *p,
            taps,
        })
    }

    /// Parameters the table was built with.
    pub fn params(&self) -> &RectifyParams {
        &self.params
    }

    /// Source frame size the table expects.
    pub fn source_size(&self) -> (usize, usize) {
        (self.geo.src_w, self.geo.src_h)
    }

    /// Size of the rectified image (undistorted + auto-cropped, before the band crop): the
    /// coordinate system of [`PreparedFrame::letterbox`]'s `to_source`.
    pub fn rectified_size(&self) -> (usize, usize) {
        (self.geo.rect_w, self.geo.rect_h)
    }

    /// Model input size `(width, height)`.
    pub fn target_size(&self) -> (usize, usize) {
        (self.geo.target_w, self.geo.target_h)
    }

    /// Maps model-input coordinates to rectified-image coordinates.
    pub fn letterbox(&self) -> Letterbox {
        self.geo.letterbox()
    }

    /// Maps a rectified-image position to the raw camera frame (None-free: clamped inside).
    pub fn rectified_to_source(&self, x: f32, y: f32) -> (f32, f32) {
        let (u, v) = self.geo.rectified_to_source(x as f64, y as f64);
        (u as f32, v as f32)
    }

    /// Writes the model input (CHW, RGB in `[0, 1]`, padding 114/255) into `out`, resizing it
    /// to `3 * W * H` (no allocation once it has that capacity).
    pub fn apply(&self, rgb: &RgbImage, out: &mut Vec<f32>) -> Result<(), RectifyError> {
        let g = &self.geo;
        g.check(rgb)?;
        let (tw, th) = (g.target_w, g.target_h);
        let plane = tw * th;
        out.resize(3 * plane, 0.0);
        let pad = PAD_VALUE as f32 / 255.0;
        let norm = 1.0 / (255.0 * (WEIGHT_ONE * WEIGHT_ONE) as f32);
        let src = rgb.data.as_slice();
        let stride = g.src_w * 3;
        let (r_plane, rest) = out.split_at_mut(plane);
        let (g_plane, b_plane) = rest.split_at_mut(plane);
        for y in 0..th {
            let row = y * tw..(y + 1) * tw;
            let (r_row, g_row, b_row) = (
                &mut r_plane[row.clone()],
                &mut g_plane[row.clone()],
                &mut b_plane[row],
            );
            if y < g.pad_y || y >= g.pad_y + g.new_h {
                r_row.fill(pad);
                g_row.fill(pad);
                b_row.fill(pad);
                continue;
            }
            let (left, right) = (g.pad_x, g.pad_x + g.new_w);
            for r in [&mut *r_row, &mut *g_row, &mut *b_row] {
                r[..left].fill(pad);
                r[right..].fill(pad);
            }
            let taps = &self.taps[(y - g.pad_y) * g.new_w..(y - g.pad_y + 1) * g.new_w];
            let dst = r_row[left..right]
                .iter_mut()
                .zip(&mut g_row[left..right])
                .zip(&mut b_row[left..right])
                .zip(taps);
            for (((r, gg), b), t) in dst {
                let i = t.base as usize;
                // Build guarantees i + stride + 5 < src.len(): the top-left tap has a right and
                // a lower neighbour; slicing once keeps the bounds checks out of the channel loop.
                let top = &src[i..i + 6];
                let bot = &src[i + stride..i + stride + 6];
                let (wx, wy) = (t.wx as u32, t.wy as u32);
                let (ix, iy) = (WEIGHT_ONE - wx, WEIGHT_ONE - wy);
                let px = |c: usize| -> f32 {
                    let t = top[c] as u32 * ix + top[c + 3] as u32 * wx;
                    let b = bot[c] as u32 * ix + bot[c + 3] as u32 * wx;
                    (t * iy + b * wy) as f32 * norm
                };
                *r = px(0);
                *gg = px(1);
                *b = px(2);
            }
        }
        Ok(())
    }

    /// [`apply`](Self::apply) into a fresh [`PreparedFrame`] carrying the letterbox mapping back
    /// to the rectified image.
    pub fn prepare(&self, rgb: &RgbImage) -> Result<PreparedFrame, RectifyError> {
        let mut chw = Vec::new();
        self.apply(rgb, &mut chw)?;
        Ok(self.prepared(chw))
    }

    /// Wraps an already filled CHW buffer (from [`apply`](Self::apply)) into a [`PreparedFrame`].
    pub fn prepared(&self, chw: Vec<f32>) -> PreparedFrame {
        PreparedFrame {
            width: self.geo.target_w,
            height: self.geo.target_h,
            chw,
            letterbox: self.geo.letterbox(),
        }
    }

    /// Slow reference of [`apply`](Self::apply): per pixel, the letterbox, band, crop and
    /// fisheye math evaluated directly in f64 with exact bilinear weights (no table).
    pub fn apply_reference(&self, rgb: &RgbImage, out: &mut Vec<f32>) -> Result<(), RectifyError> {
        let g = &self.geo;
        g.check(rgb)?;
        let plane = g.target_w * g.target_h;
        out.clear();
        out.resize(3 * plane, PAD_VALUE as f32 / 255.0);
        for y in 0..g.new_h {
            for x in 0..g.new_w {
                let (xr, yr) = g.content_to_rectified(x, y);
                let (u, v) = g.rectified_to_source(xr, yr);
                let px = bilinear(rgb, u, v);
                let o = (y + g.pad_y) * g.target_w + x + g.pad_x;
                for (c, val) in px.iter().enumerate() {
                    out[c * plane + o] = (*val / 255.0) as f32;
                }
            }
        }
        Ok(())
    }

    /// The rectified full image (undistorted and auto-cropped, no band crop, no letterbox),
    /// e.g. for the overlay artifact. Bilinear, one pass per pixel (not for the hot path).
    pub fn undistort_rgb(&self, rgb: &RgbImage) -> Result<RgbImage, RectifyError> {
        let g = &self.geo;
        g.check(rgb)?;
        if g.fisheye.is_none() {
            return Ok(rgb.clone());
        }
        let mut data = Vec::with_capacity(g.rect_w * g.rect_h * 3);
        for y in 0..g.rect_h {
            for x in 0..g.rect_w {
                let (u, v) = g.rectified_to_source(x as f64, y as f64);
                for c in bilinear(rgb, u, v) {
                    data.push(c.round().clamp(0.0, 255.0) as u8);
                }
            }
        }
        Ok(RgbImage {
            width: g.rect_w,
            height: g.rect_h,
            data,
        })
    }
}

/// Exact bilinear sample (replicated border) of a consistent image at a position inside it.
fn bilinear(rgb: &RgbImage, u: f64, v: f64) -> [f64; 3] {
    let (w, h) = (rgb.width, rgb.height);
    let u = u.clamp(0.0, (w - 1) as f64);
    let v = v.clamp(0.0, (h - 1) as f64);
    let (x0, y0) = (u.floor() as usize, v.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (u - x0 as f64, v - y0 as f64);
    let p = |x: usize, y: usize, c: usize| rgb.data[(y * w + x) * 3 + c] as f64;
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let top = p(x0, y0, c) * (1.0 - fx) + p(x1, y0, c) * fx;
        let bot = p(x0, y1, c) * (1.0 - fx) + p(x1, y1, c) * fx;
        *o = top * (1.0 - fy) + bot * fy;
    }
    out
}

/// A small most-recently-used cache of remap tables keyed by source size and parameters, so a
/// table is built once per camera geometry and shared between sessions.
#[derive(Debug)]
pub struct RemapCache {
    capacity: usize,
    entries: VecDeque<Arc<RemapTable>>,
}

impl RemapCache {
    /// A cache holding at most `capacity` tables (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
        }
    }

    /// The table for this geometry, built on first use.
    pub fn get(
        &mut self,
        src_w: usize,
        src_h: usize,
        p: &RectifyParams,
    ) -> Result<Arc<RemapTable>, RectifyError> {
        if let Some(i) = self
            .entries
            .iter()
            .position(|t| t.source_size() == (src_w, src_h) && t.params == *p)
        {
            if let Some(t) = self.entries.remove(i) {
                self.entries.push_front(t.clone());
                return Ok(t);
            }
        }
        let t = Arc::new(RemapTable::build(src_w, src_h, p)?);
        self.entries.push_front(t.clone());
        self.entries.truncate(self.capacity);
        Ok(t)
    }

    /// Number of cached tables.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no table is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by `python3 engine/tools/fisheye_reference.py` (OpenCV 4.14.0; 5.0.0 prints the
    /// same numbers): new camera matrix and cv2.fisheye.initUndistortRectifyMap values.
    #[allow(clippy::type_complexity, clippy::excessive_precision)]
    const OPENCV_CASES: &[(
        usize,
        usize,
        f64,
        f64,
        [f64; 4],
        &[(usize, usize, f64, f64)],
    )] = &[
        (
            1280,
            720,
            -0.3,
            0.0,
            [1213.2423566773957, 1213.2423566773957, 640.0, 360.0],
            &[
                (0, 0, 86.76972961425781, 48.8079719543457),
                (1279, 0, 1192.5919189453125, 48.680625915527344),
                (0, 719, 86.64248657226562, 670.3989868164062),
                (1279, 719, 1192.7191162109375, 670.5260620117188),
                (640, 0, 640.0, 0.0),
                (0, 360, 62.59040451049805, 360.0),
                (640, 360, 640.0, 360.0),
                (320, 240, 318.36260986328125, 239.38597106933594),
                (960, 480, 961.6373901367188, 480.614013671875),
                (17, 715, 97.10800170898438, 669.3526000976562),
            ],
        ),
        (
            1280,
            720,
            -0.5,
            1.0,
            [900.2101033075077, 900.2101033075077, 640.0, 360.0],
            &[
                (0, 0, 55.34402847290039, 31.13101577758789),
                (1279, 0, 1224.2425537109375, 30.849271774291992),
                (0, 719, 55.062557220458984, 688.1133422851562),
                (1279, 719, 1224.5240478515625, 688.3945922851562),
                (640, 0, 640.0, -91.70885467529297),
                (0, 360, 0.0, 360.0),
                (640, 360, 640.0, 360.0),
                (320, 240, 233.76454162597656, 207.66171264648438),
                (960, 480, 1046.2354736328125, 512.3383178710938),
                (17, 715, 61.177330017089844, 689.8267211914062),
            ],
        ),
        (
            1280,
            720,
            0.3,
            0.0,
            [1275.8733327314787, 1275.8733327314787, 640.0, 360.0],
            &[
                (0, 0, 9.721409797668457, 5.468292713165283),
                (1279, 0, 1269.328857421875, 5.448563575744629),
                (0, 719, 9.701689720153809, 713.5579833984375),
                (1279, 719, 1269.3485107421875, 713.57763671875),
                (640, 0, 640.0, 0.0),
                (0, 360, 6.281802654266357, 360.0),
                (640, 360, 640.0, 360.0),
                (320, 240, 319.88299560546875, 239.9561309814453),
                (960, 480, 960.1170043945312, 480.04388427734375),
                (17, 715, 25.798208236694336, 709.986572265625),
            ],
        ),
        (
            1280,
            720,
            0.3,
            0.5,
            [1269.3961510500271, 1269.3961510500271, 640.0, 360.0],
            &[
                (0, 0, 6.657653331756592, 3.7449300289154053),
                (1279, 0, 1272.388427734375, 3.724848508834839),
                (0, 719, 6.637581825256348, 715.2767333984375),
                (1279, 719, 1272.408447265625, 715.2967529296875),
                (640, 0, 640.0, -1.8230338096618652),
                (0, 360, 3.1559431552886963, 360.0),
                (640, 360, 640.0, 360.0),
                (320, 240, 318.26043701171875, 239.34767150878906),
                (960, 480, 961.7395629882812, 480.65234375),
                (17, 715, 22.803932189941406, 711.6928100585938),
            ],
        ),
        (
            1280,
            720,
            0.3,
            1.0,
            [1262.9189693685757, 1262.9189693685757, 640.0, 360.0],
            &[
                (0, 0, 3.5652098655700684, 2.0054306983947754),
                (1279, 0, 1275.4766845703125, 1.984989047050476),
                (0, 719, 3.544778347015381, 717.0115966796875),
                (1279, 719, 1275.4970703125, 717.031982421875),
                (640, 0, 640.0, -3.6645162105560303),
                (0, 360, 1.1368683772161603e-13, 360.0),
                (640, 360, 640.0, 360.0),
                (320, 240, 316.6214294433594, 238.7330322265625),
                (960, 480, 963.3786010742188, 481.2669677734375),
                (17, 715, 19.781465530395508, 713.4150390625),
            ],
        ),
        (
            1920,
            1080,
            0.1,
            0.0,
            [1884.4571268225563, 1884.4571268225563, 960.0, 540.0],
            &[
                (0, 0, 50.09450912475586, 28.17816162109375),
                (1919, 0, 1869.05224609375, 28.12491226196289),
                (0, 1079, 50.04128646850586, 1050.9039306640625),
                (1919, 1079, 1869.10546875, 1050.95703125),
                (960, 0, 960.0, 0.0),
                (0, 540, 35.2835693359375, 540.0),
                (960, 540, 960.0, 540.0),
                (480, 360, 479.133056640625, 359.6748962402344),
                (1440, 720, 1440.866943359375, 720.3251342773438),
                (17, 1075, 64.37284088134766, 1048.12353515625),
            ],
        ),
        (
            640,
            480,
            -0.2,
            0.5,
            [568.0640346530181, 568.0640346530181, 320.0, 240.0],
            &[
                (0, 0, 29.53201675415039, 22.149011611938477),
                (639, 0, 609.7672729492188, 21.993282318115234),
                (0, 479, 29.376407623291016, 457.05950927734375),
                (639, 479, 609.9226684570312, 457.2148132324219),
                (320, 0, 320.0, -7.657959461212158),
                (0, 240, 8.955500602722168, 240.0),
                (320, 240, 320.0, 240.0),
                (160, 160, 148.61654663085938, 154.3082733154297),
                (480, 320, 491.3834533691406, 325.69171142578125),
                (17, 475, 40.894718170166016, 456.4678039550781),
            ],
        ),
        (
            1281,
            721,
            0.5,
            0.25,
            [
                1309.9068953535284,
                1309.9068953535284,
                640.752798017406,
                360.7491238572168,
            ],
            &[
                (0, 0, -5.183094501495361, -3.0249216556549072),
                (1280, 0, 1284.6341552734375, -3.007020950317383),
                (0, 720, -5.16532039642334, 722.5051879882812),
                (1280, 720, 1284.6163330078125, 722.4873046875),
                (640, 0, 639.7556762695312, 3.8147573471069336),
                (0, 360, -2.582514524459839, 359.7481384277344),
                (640, 360, 639.7637939453125, 359.76739501953125),
                (320, 240, 323.65716552734375, 241.22279357910156),
                (960, 480, 955.8243408203125, 478.2855224609375),
                (17, 716, 12.371133804321289, 718.2432250976562),
            ],
        ),
    ];

    fn params(
        fisheye: bool,
        strength: f32,
        balance: f32,
        band: (f32, f32),
        target: (usize, usize),
    ) -> RectifyParams {
        RectifyParams {
            fisheye_enabled: fisheye,
            strength,
            balance,
            band,
            target,
        }
    }

    /// Deterministic textured test frame (gradients plus a checker so bilinear errors show).
    fn frame(w: usize, h: usize) -> RgbImage {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let checker = if (x / 7 + y / 5) % 2 == 0 { 40 } else { 0 };
                data.push(((x * 200 / w) + checker) as u8);
                data.push(((y * 200 / h) + checker) as u8);
                data.push(((x * 7 + y * 13) % 256) as u8);
            }
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn fisheye_matches_opencv() {
        for &(w, h, strength, balance, k, probes) in OPENCV_CASES {
            // f64 parameters: compare the math, not the f32 rounding of 0.3 and friends.
            let fe = Fisheye::with_f64(w, h, strength, balance).expect("fisheye");
            for (got, want) in [fe.nf, fe.nf, fe.ncx, fe.ncy].iter().zip(k) {
                assert!(
                    (got - want).abs() < 1e-6 * want.abs().max(1.0),
                    "{w}x{h} s={strength} b={balance}: K {got} vs {want}"
                );
            }
            for &(x, y, mx, my) in probes {
                let (u, v) = fe.map(x as f64, y as f64);
                // OpenCV stores the maps as f32 (ulp ~1e-4 at 1000 px).
                assert!(
                    (u - mx).abs() < 1e-3 && (v - my).abs() < 1e-3,
                    "{w}x{h} s={strength} b={balance} at ({x},{y}): ({u},{v}) vs ({mx},{my})"
                );
            }
        }
    }

    #[test]
    fn f32_params_stay_close_to_opencv() {
        // The production path takes f32 config values: its K differs from the f64 one by
        // f32 rounding of the strength only.
        for &(w, h, strength, balance, k, _) in OPENCV_CASES {
            let fe = Fisheye::new(w, h, strength as f32, balance as f32).expect("fisheye");
            assert!((fe.nf - k[0]).abs() < 1e-3, "{} vs {}", fe.nf, k[0]);
            assert!((fe.ncx - k[2]).abs() < 1e-3 && (fe.ncy - k[3]).abs() < 1e-3);
        }
    }

    #[test]
    fn too_strong_negative_strength_is_an_error() {
        // OpenCV returns a degenerate K (f = 0.00128) here; we refuse.
        let err = RemapTable::build(1280, 720, &params(true, -0.7, 0.0, (0.0, 1.0), (640, 384)))
            .unwrap_err();
        assert!(matches!(err, RectifyError::NoInverse { .. }), "{err:?}");
    }

    #[test]
    fn disabled_equals_plain_letterbox() {
        for &(w, h, tw, th) in &[
            (1280, 720, 640, 384),
            (640, 480, 320, 320),
            (97, 211, 64, 96),
            (50, 30, 640, 640),
        ] {
            let img = frame(w, h);
            let table = RemapTable::build(w, h, &params(false, 0.0, 0.0, (0.0, 1.0), (tw, th)))
                .expect("build");
            let mut out = Vec::new();
            table.apply(&img, &mut out).expect("apply");
            let plain = referee_pose_api::letterbox_rgb(&img.data, w, h, tw, th);
            let d = max_diff(&out, &plain.chw);
            println!("{w}x{h} -> {tw}x{th}: table vs letterbox_rgb max abs diff {d:.2e}");
            assert!(d < TABLE_TOLERANCE, "{w}x{h}->{tw}x{th}: max diff {d}");
            assert_eq!(table.letterbox(), plain.letterbox);
            assert_eq!(table.rectified_size(), (w, h));
        }
    }

    #[test]
    fn table_matches_reference() {
        let cases = [
            (1280, 720, params(true, -0.3, 0.0, (0.2, 0.95), (640, 384))),
            (1280, 720, params(true, 0.3, 0.5, (0.0, 1.0), (640, 640))),
            (640, 480, params(true, -0.5, 1.0, (0.1, 0.9), (320, 256))),
            (333, 177, params(false, 0.0, 0.0, (0.3, 0.6), (96, 64))),
        ];
        for (w, h, p) in cases {
            let img = frame(w, h);
            let table = RemapTable::build(w, h, &p).expect("build");
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            table.apply(&img, &mut fast).expect("apply");
            table.apply_reference(&img, &mut slow).expect("reference");
            let d = max_diff(&fast, &slow);
            println!("{w}x{h} {p:?}: table vs reference max abs diff {d:.2e}");
            assert!(d < TABLE_TOLERANCE, "max diff {d}");
            // The reference really differs from a wrong table (the test can fail).
            assert!(max_diff(&fast[1..], &slow[..slow.len() - 1]) > 0.01);
        }
    }

    #[test]
    fn crop_is_valid_and_maximal() {
        let p = params(true, -0.3, 0.0, (0.0, 1.0), (640, 384));
        let table = RemapTable::build(1280, 720, &p).expect("build");
        let g = table.geo;
        let fe = g.fisheye.expect("fisheye on");
        let inside = |x: usize, y: usize| {
            let (u, v) = fe.map(x as f64, y as f64);
            (0.0..=1279.0).contains(&u) && (0.0..=719.0).contains(&v)
        };
        let (x0, y0, x1, y1) = (
            g.crop_x,
            g.crop_y,
            g.crop_x + g.rect_w - 1,
            g.crop_y + g.rect_h - 1,
        );
        for y in y0..=y1 {
            assert!(
                inside(x0, y) && inside(x1, y),
                "edge column invalid at y={y}"
            );
        }
        for x in x0..=x1 {
            assert!(inside(x, y0) && inside(x, y1), "edge row invalid at x={x}");
        }
        println!(
            "1280x720 strength -0.3 balance 0: rectified {:?} at ({x0},{y0})",
            table.rectified_size()
        );
        // Growing the rectangle by one pixel on any side would take in an invalid pixel
        // (or leave the image).
        let row_ok = |y: usize| (x0..=x1).all(|x| inside(x, y));
        let col_ok = |x: usize| (y0..=y1).all(|y| inside(x, y));
        assert!(y0 == 0 || !row_ok(y0 - 1));
        assert!(y1 == 719 || !row_ok(y1 + 1));
        assert!(x0 == 0 || !col_ok(x0 - 1));
        assert!(x1 == 1279 || !col_ok(x1 + 1));
    }

    #[test]
    fn largest_rectangle_finds_the_block() {
        #[rustfmt::skip]
        let m = [
            0, 1, 1, 0, 0,
            1, 1, 1, 1, 0,
            1, 1, 1, 1, 1,
            0, 1, 1, 1, 0,
        ];
        let mask: Vec<bool> = m.iter().map(|&v| v == 1).collect();
        // 3 rows x 3 columns (x 1..=3, y 1..=3) = 9 beats 2x4 = 8.
        assert_eq!(largest_rectangle(&mask, 5, 4), Some((1, 1, 3, 3)));
        assert_eq!(largest_rectangle(&[false; 6], 3, 2), None);
    }

    #[test]
    fn letterbox_maps_back_to_the_rectified_image() {
        for p in [
            params(true, -0.3, 0.0, (0.25, 0.9), (640, 384)),
            params(false, 0.0, 0.0, (0.3, 0.8), (320, 320)),
        ] {
            let (w, h) = (1280, 720);
            let table = RemapTable::build(w, h, &p).expect("build");
            let (rw, rh) = table.rectified_size();
            // A bright blob at a known rectified position, drawn in the raw frame.
            for &(xr, yr) in &[
                (rw as f32 * 0.3, rh as f32 * 0.5),
                (rw as f32 * 0.8, rh as f32 * 0.7),
            ] {
                let (u, v) = table.rectified_to_source(xr, yr);
                let mut img = RgbImage::filled(w, h, [0, 0, 0]);
                for dy in -4i32..=4 {
                    for dx in -4i32..=4 {
                        let (x, y) = (u.round() as i32 + dx, v.round() as i32 + dy);
                        let i = (y as usize * w + x as usize) * 3;
                        img.data[i..i + 3].copy_from_slice(&[255, 255, 255]);
                    }
                }
                let prep = table.prepare(&img).expect("prepare");
                let plane = prep.width * prep.height;
                let (mut sx, mut sy, mut sw) = (0.0f32, 0.0f32, 0.0f32);
                for i in 0..plane {
                    let val = prep.chw[i];
                    if val > 0.5 && (val - PAD_VALUE as f32 / 255.0).abs() > 1e-3 {
                        sx += val * ((i % prep.width) as f32 + 0.5);
                        sy += val * ((i / prep.width) as f32 + 0.5);
                        sw += val;
                    }
                }
                assert!(sw > 0.0, "blob not found for {p:?}");
                let (bx, by) = prep.letterbox.to_source(sx / sw, sy / sw);
                // Continuous coordinates: the blob's centre pixel covers [xr, xr + 1).
                let (ex, ey) = (u.round() - u + xr + 0.5, v.round() - v + yr + 0.5);
                assert!(
                    (bx - ex).abs() < 2.0 && (by - ey).abs() < 2.0,
                    "{p:?}: mapped back to ({bx},{by}), expected ({ex},{ey})"
                );
            }
        }
    }

    #[test]
    fn apply_reuses_buffer_and_pads() {
        let img = frame(1280, 720);
        let table = RemapTable::build(1280, 720, &params(true, -0.3, 0.0, (0.2, 0.9), (640, 640)))
            .expect("build");
        let mut out = Vec::new();
        table.apply(&img, &mut out).expect("apply");
        let ptr = out.as_ptr();
        out.iter_mut().for_each(|v| *v = -1.0);
        table.apply(&img, &mut out).expect("apply again");
        assert_eq!(out.as_ptr(), ptr);
        assert!(
            out.iter().all(|v| (0.0..=1.0).contains(v)),
            "every value rewritten"
        );
        assert_eq!(
            out[0],
            PAD_VALUE as f32 / 255.0,
            "top-left is padding for a wide band"
        );
        assert_eq!(out.len(), 3 * 640 * 640);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ok = params(true, -0.3, 0.0, (0.0, 1.0), (640, 384));
        assert!(matches!(
            RemapTable::build(1, 720, &ok),
            Err(RectifyError::BadSource { .. })
        ));
        assert!(matches!(
            RemapTable::build(
                1280,
                720,
                &RectifyParams {
                    target: (600, 384),
                    ..ok
                }
            ),
            Err(RectifyError::BadTarget { .. })
        ));
        assert!(matches!(
            RemapTable::build(
                1280,
                720,
                &RectifyParams {
                    band: (0.5, 0.5),
                    ..ok
                }
            ),
            Err(RectifyError::BadBand { .. })
        ));
        assert!(matches!(
            RemapTable::build(
                1280,
                720,
                &RectifyParams {
                    band: (f32::NAN, 1.0),
                    ..ok
                }
            ),
            Err(RectifyError::BadBand { .. })
        ));
        assert!(matches!(
            RemapTable::build(1280, 720, &RectifyParams { balance: 1.5, ..ok }),
            Err(RectifyError::BadBalance(_))
        ));
        assert!(matches!(
            RemapTable::build(
                1280,
                720,
                &RectifyParams {
                    strength: f32::NAN,
                    ..ok
                }
            ),
            Err(RectifyError::BadStrength(_))
        ));
        let table = RemapTable::build(64, 48, &ok).expect("small build");
        let mut out = Vec::new();
        let wrong = frame(48, 64);
        assert!(matches!(
            table.apply(&wrong, &mut out),
            Err(RectifyError::SizeMismatch { .. })
        ));
        let short = RgbImage {
            width: 64,
            height: 48,
            data: vec![0; 100],
        };
        assert!(matches!(
            table.apply(&short, &mut out),
            Err(RectifyError::SizeMismatch { .. })
        ));
        assert!(table.apply_reference(&short, &mut out).is_err());
        assert!(table.undistort_rgb(&short).is_err());
    }

    #[test]
    fn undistort_rgb_has_the_rectified_size() {
        let img = frame(320, 180);
        let table = RemapTable::build(320, 180, &params(true, -0.3, 0.0, (0.0, 1.0), (320, 192)))
            .expect("build");
        let rect = table.undistort_rgb(&img).expect("undistort");
        assert_eq!((rect.width, rect.height), table.rectified_size());
        assert!(rect.is_consistent());
        let off = params(false, -0.3, 0.0, (0.0, 1.0), (320, 192));
        let same = RemapTable::build(320, 180, &off)
            .expect("build")
            .undistort_rgb(&img)
            .expect("plain");
        assert_eq!(same, img);
    }

    #[test]
    fn cache_builds_once_per_geometry() {
        let mut cache = RemapCache::new(2);
        let p = params(false, 0.0, 0.0, (0.0, 1.0), (64, 64));
        let a = cache.get(100, 80, &p).expect("a");
        let b = cache.get(100, 80, &p).expect("b");
        assert!(Arc::ptr_eq(&a, &b));
        let _c = cache.get(120, 80, &p).expect("c");
        let _d = cache.get(140, 80, &p).expect("d");
        assert_eq!(cache.len(), 2);
        let e = cache.get(100, 80, &p).expect("e");
        assert!(!Arc::ptr_eq(&a, &e), "evicted entry is rebuilt");
    }
}
