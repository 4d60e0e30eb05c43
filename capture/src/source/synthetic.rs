//! Deterministic generated frames: two figures moving on a piste, plus a frame counter.
//!
//! The pixels depend only on the frame index and the size, so two sources with the same
//! parameters produce identical frames (only `capture_ts_us` differs). Useful for tests,
//! benches and as a demo fallback when no camera or video is at hand.

use super::{now_us, CapturedFrame, FrameData, FrameSource, SourceError, SourceInfo};

/// A synthetic source of `count` frames (or endless when `count` is `None`).
#[derive(Debug, Clone)]
pub struct Synthetic {
    info: SourceInfo,
    next: u64,
}

impl Synthetic {
    /// Creates a synthetic source. Width and height must be at least 16 and at most 8192,
    /// fps finite and positive.
    pub fn new(width: u32, height: u32, fps: f32, count: Option<u64>) -> Result<Self, SourceError> {
        if !(16..=8192).contains(&width) || !(16..=8192).contains(&height) {
            return Err(SourceError::InvalidArgument(format!(
                "synthetic frame size {width}x{height} is out of range (16..=8192 per side)"
            )));
        }
        if !(fps.is_finite() && fps > 0.0) {
            return Err(SourceError::InvalidArgument(format!(
                "synthetic fps {fps} must be a positive number"
            )));
        }
        Ok(Self {
            info: SourceInfo {
                name: "synthetic".into(),
                width,
                height,
                fps,
                frame_count: count,
            },
            next: 0,
        })
    }

    /// Renders frame `index` as packed RGB24 (pure function of index and size).
    pub fn render(&self, index: u64) -> Vec<u8> {
        render_frame(self.info.width, self.info.height, self.info.fps, index)
    }
}

impl FrameSource for Synthetic {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError> {
        if let Some(n) = self.info.frame_count {
            if self.next >= n {
                return Ok(None);
            }
        }
        let index = self.next;
        let rgb = self.render(index);
        self.next += 1;
        Ok(Some(CapturedFrame {
            index,
            capture_ts_us: now_us(),
            width: self.info.width,
            height: self.info.height,
            data: FrameData::Rgb(rgb),
            pts_us: Some((index as f64 * 1e6 / self.info.fps as f64) as u64),
        }))
    }
}

struct Canvas<'a> {
    buf: &'a mut [u8],
    w: i64,
    h: i64,
}

impl Canvas<'_> {
    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        let (x0, x1) = (x0.clamp(0, self.w), x1.clamp(0, self.w));
        let (y0, y1) = (y0.clamp(0, self.h), y1.clamp(0, self.h));
        for y in y0..y1 {
            let row = (y * self.w * 3) as usize;
            for x in x0..x1 {
                let i = row + (x * 3) as usize;
                self.buf[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    fn disc(&mut self, cx: i64, cy: i64, r: i64, c: [u8; 3]) {
        for y in (cy - r).max(0)..(cy + r + 1).min(self.h) {
            for x in (cx - r).max(0)..(cx + r + 1).min(self.w) {
                if (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r {
                    let i = ((y * self.w + x) * 3) as usize;
                    self.buf[i..i + 3].copy_from_slice(&c);
                }
            }
        }
    }

    /// Draws a stick-ish fencer: head, torso, legs apart, arm reaching towards `dir`.
    fn figure(&mut self, x: i64, floor: i64, height: i64, dir: i64, lunge: f64, c: [u8; 3]) {
        let u = (height / 10).max(1);
        let head = height / 8;
        let top = floor - height;
        self.disc(x, top + head, head, c);
        self.rect(x - u, top + 2 * head, x + u, floor - height / 2, c);
        let stride = (2.0 * u as f64 + lunge * 3.0 * u as f64) as i64;
        self.rect(
            x - stride - u / 2,
            floor - height / 2,
            x - stride + u / 2,
            floor,
            c,
        );
        self.rect(
            x + stride - u / 2,
            floor - height / 2,
            x + stride + u / 2,
            floor,
            c,
        );
        let arm_y = top + 3 * head;
        let reach = (3.0 * u as f64 + lunge * 3.0 * u as f64) as i64;
        if dir > 0 {
            self.rect(x, arm_y, x + reach, arm_y + u / 2 + 1, c);
        } else {
            self.rect(x - reach, arm_y, x, arm_y + u / 2 + 1, c);
        }
    }

    /// Draws decimal `n` with a 3x5 block font at (x, y), `s` pixels per block.
    fn number(&mut self, mut n: u64, x: i64, y: i64, s: i64, c: [u8; 3]) {
        const FONT: [[u8; 5]; 10] = [
            [7, 5, 5, 5, 7],
            [2, 6, 2, 2, 7],
            [7, 1, 7, 4, 7],
            [7, 1, 7, 1, 7],
            [5, 5, 7, 1, 1],
            [7, 4, 7, 1, 7],
            [7, 4, 7, 5, 7],
            [7, 1, 1, 1, 1],
            [7, 5, 7, 5, 7],
            [7, 5, 7, 1, 7],
        ];
        let mut digits = Vec::new();
        loop {
            digits.push((n % 10) as usize);
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (k, d) in digits.iter().rev().enumerate() {
            let ox = x + k as i64 * 4 * s;
            for (row, bits) in FONT[*d].iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        let (bx, by) = (ox + col * s, y + row as i64 * s);
                        self.rect(bx, by, bx + s, by + s, c);
                    }
                }
            }
        }
    }
}

/// Renders one synthetic frame as packed RGB24.
fn render_frame(width: u32, height: u32, fps: f32, index: u64) -> Vec<u8> {
    let (w, h) = (width as i64, height as i64);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    // Background: vertical gradient (hall), so no two rows are alike.
    for y in 0..h {
        let g = (40 + 50 * y / h) as u8;
        let row = (y * w * 3) as usize;
        for px in buf[row..row + (w * 3) as usize].chunks_exact_mut(3) {
            px.copy_from_slice(&[g / 2, g / 2, g]);
        }
    }
    let mut c = Canvas {
        buf: &mut buf,
        w,
        h,
    };
    // Piste: a light band in the lower part of the frame, with centre and warning lines.
    let floor = h * 4 / 5;
    c.rect(0, floor - h / 40, w, floor + h / 20, [170, 170, 160]);
    c.rect(
        w / 2 - 1,
        floor - h / 40,
        w / 2 + 1,
        floor + h / 20,
        [240, 240, 240],
    );
    // Motion: the fencers close in and separate on a 4-second cycle, lunging near contact.
    let t = index as f64 / fps.max(1e-3) as f64;
    let phase = (t * std::f64::consts::TAU / 4.0).sin(); // -1..1
    let gap = (0.15 + 0.25 * (1.0 + phase) / 2.0) * w as f64; // half-distance
    let lunge = ((1.0 - phase) / 2.0).powi(4);
    let fig_h = h / 2;
    let left_x = w / 2 - gap as i64;
    let right_x = w / 2 + gap as i64;
    c.figure(left_x, floor, fig_h, 1, lunge, [220, 60, 50]);
    c.figure(right_x, floor, fig_h, -1, lunge * 0.5, [60, 200, 80]);
    // Frame counter, top-left.
    let s = (h / 60).max(2);
    c.rect(0, 0, 4 * s * 7, 7 * s, [0, 0, 0]);
    c.number(index, s, s, s, [255, 255, 255]);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_deterministic_and_move() {
        let mut a = Synthetic::new(320, 180, 30.0, Some(3)).unwrap();
        let mut b = Synthetic::new(320, 180, 30.0, Some(3)).unwrap();
        let fa: Vec<_> = std::iter::from_fn(|| a.next_frame().unwrap()).collect();
        let fb: Vec<_> = std::iter::from_fn(|| b.next_frame().unwrap()).collect();
        assert_eq!(fa.len(), 3);
        for (x, y) in fa.iter().zip(&fb) {
            assert_eq!(x.data, y.data);
            assert_eq!(x.index, y.index);
            assert_eq!(x.data.len(), 320 * 180 * 3);
        }
        assert_ne!(fa[0].data, fa[1].data);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Synthetic::new(0, 10, 30.0, None).is_err());
        assert!(Synthetic::new(64, 64, 0.0, None).is_err());
        assert!(Synthetic::new(64, 64, f32::NAN, None).is_err());
    }
}
