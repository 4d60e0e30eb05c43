//! Pose networks (YOLO11-pose, YOLOv8-pose) on Candle: weights fetch/convert/load, the
//! reference network, the fast CPU path, decode, NMS. They implement the Candle-free
//! `referee_pose_api::PoseEstimator` that the engine is given.
//!
//! Typical use:
//! ```no_run
//! use referee_models::{letterbox_rgb, PoseEstimator, PoseOptions, YoloPose, default_weights_path};
//! let mut model = YoloPose::load(&default_weights_path(), PoseOptions::default())?;
//! let (w, h) = model.input_size();
//! let rgb = vec![0u8; 1920 * 1080 * 3];
//! let frame = letterbox_rgb(&rgb, 1920, 1080, w, h);
//! let persons = model.estimate(&[frame])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod convert;
pub mod decode;
pub mod fast;
pub mod fetch;
pub mod net;
pub mod pickle;
mod weights;

use std::path::{Path, PathBuf};

pub use decode::{decode_raw, nms};
pub use fast::FastYoloPose;
pub use net::{Arch, YoloNet};
pub use referee_pose_api::{
    image, letterbox_rgb, Keypoints, Letterbox, Person, PoseError, PoseEstimator, PreparedFrame,
    KEYPOINT_NAMES, NUM_KEYPOINTS,
};

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

impl From<ModelError> for PoseError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Input(m) => PoseError::Input(m),
            other => PoseError::Backend(other.to_string()),
        }
    }
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

    fn estimate(&mut self, batch: &[PreparedFrame]) -> Result<Vec<Vec<Person>>, PoseError> {
        let mut out = Vec::with_capacity(batch.len());
        for f in batch {
            let raw = self.net.forward_raw(&f.chw, f.width, f.height)?;
            let a = raw.len() / decode::RAW_ROWS;
            let mut persons =
                decode_raw(&raw, a, self.opts.conf_threshold, self.opts.iou_threshold);
            for p in &mut persons {
                f.letterbox.person_to_source(p);
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
