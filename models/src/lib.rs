//! Pose networks (YOLO11-pose, YOLOv8-pose) on Candle: weights fetch/convert/load, letterbox,
//! decode, NMS.
//!
//! Typical use:
//! ```no_run
//! use referee_models::{letterbox_rgb, PoseEstimator, PoseOptions, YoloPose, default_weights_path};
//! let mut model = YoloPose::load(&default_weights_path(), PoseOptions::default())?;
//! let (w, h) = model.input_size();
//! let rgb = vec![0u8; 1920 * 1080 * 3];
//! let frame = letterbox_rgb(&rgb, 1920, 1080, w, h);
//! let persons = model.estimate(&[frame])?;
//! # Ok::<(), referee_models::ModelError>(())
//! ```

pub mod convert;
pub mod decode;
pub mod fast;
pub mod fetch;
pub mod image;
pub mod net;
pub mod pickle;
mod weights;

use std::path::{Path, PathBuf};

pub use decode::{decode_raw, nms};
pub use fast::FastYoloPose;
pub use net::{Arch, YoloNet};

/// Number of COCO keypoints.
pub const NUM_KEYPOINTS: usize = 17;

/// COCO-17 keypoint names, in model order.
pub const KEYPOINT_NAMES: [&str; NUM_KEYPOINTS] = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
];

/// x, y, confidence per keypoint, in source-frame pixels after mapping.
pub type Keypoints = [[f32; 3]; NUM_KEYPOINTS];

/// One detected person.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// Detection score (sigmoid of the person logit).
    pub score: f32,
    /// Box x1, y1, x2, y2 in source-frame pixels.
    pub bbox: [f32; 4],
    /// Keypoints in source-frame pixels.
    pub keypoints: Keypoints,
}

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
    /// Model-input coordinates to source coordinates.
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        (
            (x - self.pad_x) / self.scale + self.offset_x,
            (y - self.pad_y) / self.scale + self.offset_y,
        )
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
    let pad_val = 114.0 / 255.0;
    let mut chw = vec![pad_val; 3 * target_w * target_h];
    if width == 0 || height == 0 || target_w == 0 || target_h == 0 {
        return PreparedFrame {
            width: target_w,
            height: target_h,
            chw,
            letterbox: Letterbox {
                scale: 1.0,
                pad_x: 0.0,
                pad_y: 0.0,
                offset_x: 0.0,
                offset_y: 0.0,
            },
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

/// Error of the pose models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No weights file.
    #[error(
        "pose weights not found at {0}: run `referee model fetch` to download and convert them"
    )]
    WeightsMissing(PathBuf),
    /// The weights file is truncated, corrupt, has the wrong hash or the wrong tensors.
    #[error("pose weights at {path} are unusable ({reason}): run `referee model fetch` to download and convert them again")]
    WeightsInvalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Input frames do not match the model.
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Anything that turns prepared frames into persons.
pub trait PoseEstimator: Send {
    /// Model input (width, height).
    fn input_size(&self) -> (usize, usize);
    /// Persons per frame, in source-frame pixels.
    fn estimate(&mut self, batch: &[PreparedFrame]) -> Result<Vec<Vec<Person>>, ModelError>;
}

/// Options of [`YoloPose`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoseOptions {
    /// Input width (multiple of 32).
    pub input_width: usize,
    /// Input height (multiple of 32).
    pub input_height: usize,
    /// Minimum person score.
    pub conf_threshold: f32,
    /// NMS IoU threshold.
    pub iou_threshold: f32,
}

impl Default for PoseOptions {
    fn default() -> Self {
        Self {
            input_width: 640,
            input_height: 384,
            conf_threshold: 0.25,
            iou_threshold: 0.7,
        }
    }
}

/// The reference YOLO pose estimator (straightforward Candle, f32, CPU).
pub struct YoloPose {
    net: YoloNet,
    opts: PoseOptions,
}

impl YoloPose {
    /// Loads converted safetensors weights (any YOLO11/YOLOv8 pose scale).
    pub fn load(weights: &Path, opts: PoseOptions) -> Result<Self, ModelError> {
        if opts.input_width == 0
            || opts.input_height == 0
            || !opts.input_width.is_multiple_of(32)
            || !opts.input_height.is_multiple_of(32)
        {
            return Err(ModelError::Input(format!(
                "input size {}x{} must be positive multiples of 32",
                opts.input_width, opts.input_height
            )));
        }
        let net = YoloNet::load(weights)?;
        Ok(Self { net, opts })
    }

    /// The underlying network.
    pub fn net(&self) -> &YoloNet {
        &self.net
    }

    /// Options in use.
    pub fn options(&self) -> PoseOptions {
        self.opts
    }
}

impl PoseEstimator for YoloPose {
    fn input_size(&self) -> (usize, usize) {
        (self.opts.input_width, self.opts.input_height)
    }

    fn estimate(&mut self, batch: &[PreparedFrame]) -> Result<Vec<Vec<Person>>, ModelError> {
        let mut out = Vec::with_capacity(batch.len());
        for f in batch {
            let raw = self.net.forward_raw(&f.chw, f.width, f.height)?;
            let a = raw.len() / 56;
            let mut persons =
                decode_raw(&raw, a, self.opts.conf_threshold, self.opts.iou_threshold);
            for p in &mut persons {
                let (x1, y1) = f.letterbox.to_source(p.bbox[0], p.bbox[1]);
                let (x2, y2) = f.letterbox.to_source(p.bbox[2], p.bbox[3]);
                p.bbox = [x1, y1, x2, y2];
                for k in p.keypoints.iter_mut() {
                    let (x, y) = f.letterbox.to_source(k[0], k[1]);
                    k[0] = x;
                    k[1] = y;
                }
            }
            out.push(persons);
        }
        Ok(out)
    }
}

/// The cache directory: `$REFEREE_MODEL_DIR`, else `$XDG_CACHE_HOME/referee/models`, else
/// `$HOME/.cache/referee/models` (else `./.cache/referee/models`).
pub fn default_model_dir() -> PathBuf {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = nonempty("REFEREE_MODEL_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("referee").join("models");
    }
    if let Some(h) = nonempty("HOME") {
        return PathBuf::from(h)
            .join(".cache")
            .join("referee")
            .join("models");
    }
    PathBuf::from(".cache").join("referee").join("models")
}

/// `default_model_dir()/yolo11n-pose.safetensors`.
pub fn default_weights_path() -> PathBuf {
    default_model_dir().join("yolo11n-pose.safetensors")
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
}
