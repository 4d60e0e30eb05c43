//! Letterboxing: a frame resized into the network's input with its aspect ratio kept, and the
//! mapping of what the network finds back to the source image.

use crate::Person;

/// The value of padding pixels (YOLO's grey, 114/255).
pub const LETTERBOX_PAD: f32 = 114.0 / 255.0;

/// Maps model-input (letterboxed) coordinates back to the image that was letterboxed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Resize factor from source to model input.
    pub scale: f32,
    /// Left padding in model-input pixels.
    pub pad_x: f32,
    /// Top padding in model-input pixels.
    pub pad_y: f32,
    /// Offset added after unscaling (e.g. a crop's origin in the full frame).
    pub offset_x: f32,
    /// Offset added after unscaling (e.g. a crop's origin in the full frame).
    pub offset_y: f32,
}

impl Letterbox {
    /// No scaling, no padding, no offset.
    pub const IDENTITY: Letterbox = Letterbox {
        scale: 1.0,
        pad_x: 0.0,
        pad_y: 0.0,
        offset_x: 0.0,
        offset_y: 0.0,
    };

    /// Model-input coordinates to source coordinates.
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        (
            (x - self.pad_x) / self.scale + self.offset_x,
            (y - self.pad_y) / self.scale + self.offset_y,
        )
    }

    /// Maps a person found in model-input pixels (box and keypoints) back to the source.
    pub fn person_to_source(&self, p: &mut Person) {
        let (x1, y1) = self.to_source(p.bbox[0], p.bbox[1]);
        let (x2, y2) = self.to_source(p.bbox[2], p.bbox[3]);
        p.bbox = [x1, y1, x2, y2];
        for k in p.keypoints.iter_mut() {
            let (x, y) = self.to_source(k[0], k[1]);
            k[0] = x;
            k[1] = y;
        }
    }
}

/// A frame ready for the network.
#[derive(Debug, Clone)]
pub struct PreparedFrame {
    /// Model input width.
    pub width: usize,
    /// Model input height.
    pub height: usize,
    /// RGB in [0, 1], CHW, padding 114/255.
    pub chw: Vec<f32>,
    /// How to map detections back.
    pub letterbox: Letterbox,
}

/// Letterboxes packed RGB8 (`width*height*3`) into `target_w x target_h` keeping the aspect ratio:
/// bilinear resize, centred, padded with 114/255. A too-short `rgb` is treated as black.
pub fn letterbox_rgb(
    rgb: &[u8],
    width: usize,
    height: usize,
    target_w: usize,
    target_h: usize,
) -> PreparedFrame {
    let pad_val = LETTERBOX_PAD;
    let mut chw = vec![pad_val; 3 * target_w * target_h];
    if width == 0 || height == 0 || target_w == 0 || target_h == 0 {
        return PreparedFrame {
            width: target_w,
            height: target_h,
            chw,
            letterbox: Letterbox::IDENTITY,
        };
    }
    let scale = (target_w as f32 / width as f32).min(target_h as f32 / height as f32);
    let new_w = ((width as f32 * scale).round() as usize).clamp(1, target_w);
    let new_h = ((height as f32 * scale).round() as usize).clamp(1, target_h);
    let pad_x = (target_w - new_w) / 2;
    let pad_y = (target_h - new_h) / 2;
    let px = |x: usize, y: usize, c: usize| -> f32 {
        rgb.get((y * width + x) * 3 + c).copied().unwrap_or(0) as f32
    };
    let sx = width as f32 / new_w as f32;
    let sy = height as f32 / new_h as f32;
    let plane = target_w * target_h;
    // Precompute horizontal taps.
    let xs: Vec<(usize, usize, f32)> = (0..new_w)
        .map(|x| {
            let fx = ((x as f32 + 0.5) * sx - 0.5).max(0.0);
            let x0 = (fx.floor() as usize).min(width - 1);
            let x1 = (x0 + 1).min(width - 1);
            (x0, x1, fx - x0 as f32)
        })
        .collect();
    for y in 0..new_h {
        let fy = ((y as f32 + 0.5) * sy - 0.5).max(0.0);
        let y0 = (fy.floor() as usize).min(height - 1);
        let y1 = (y0 + 1).min(height - 1);
        let wy = fy - y0 as f32;
        let row = (y + pad_y) * target_w + pad_x;
        for (x, &(x0, x1, wx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top = px(x0, y0, c) * (1.0 - wx) + px(x1, y0, c) * wx;
                let bot = px(x0, y1, c) * (1.0 - wx) + px(x1, y1, c) * wx;
                chw[c * plane + row + x] = (top * (1.0 - wy) + bot * wy) / 255.0;
            }
        }
    }
    PreparedFrame {
        width: target_w,
        height: target_h,
        chw,
        letterbox: Letterbox {
            scale,
            pad_x: pad_x as f32,
            pad_y: pad_y as f32,
            offset_x: 0.0,
            offset_y: 0.0,
        },
    }
}

impl PreparedFrame {
    /// A `width` x `height` input of padding only (warm-up runs, tests).
    pub fn blank(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            chw: vec![LETTERBOX_PAD; 3 * width * height],
            letterbox: Letterbox::IDENTITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_maps_back_to_source() {
        let (w, h) = (1920, 1080);
        let rgb = vec![200u8; w * h * 3];
        let f = letterbox_rgb(&rgb, w, h, 640, 384);
        assert_eq!(f.chw.len(), 3 * 640 * 384);
        assert!((f.letterbox.scale - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(f.letterbox.pad_x, 0.0);
        assert_eq!(f.letterbox.pad_y, 12.0);
        // pad rows are 114/255, the image is 200/255
        assert!((f.chw[0] - 114.0 / 255.0).abs() < 1e-6);
        assert!((f.chw[20 * 640 + 5] - 200.0 / 255.0).abs() < 1e-5);
        let (x, y) = f.letterbox.to_source(320.0, 12.0 + 180.0);
        assert!((x - 960.0).abs() < 1e-3 && (y - 540.0).abs() < 1e-3);
    }

    #[test]
    fn letterbox_tolerates_short_buffers() {
        let f = letterbox_rgb(&[1, 2, 3], 10, 10, 64, 64);
        assert_eq!(f.chw.len(), 3 * 64 * 64);
    }

    #[test]
    fn persons_map_back_through_the_letterbox() {
        let lb = Letterbox {
            scale: 0.5,
            pad_x: 10.0,
            pad_y: 20.0,
            offset_x: 100.0,
            offset_y: 0.0,
        };
        let mut p = Person {
            score: 0.9,
            bbox: [10.0, 20.0, 30.0, 60.0],
            keypoints: [[30.0, 40.0, 0.8]; crate::NUM_KEYPOINTS],
        };
        lb.person_to_source(&mut p);
        assert_eq!(p.bbox, [100.0, 0.0, 140.0, 80.0]);
        assert_eq!(p.keypoints[16], [140.0, 40.0, 0.8]);
    }
}
