//! Pose estimators built from settings: the fast path once per pose worker (the engine's
//! default), or the unoptimised reference network for checks.

use std::path::{Path, PathBuf};

use referee_config::Settings;
use referee_models::{ModelError, PoseOptions};
use referee_pose_api::PoseEstimator;

/// Why the pose estimators could not be built.
#[derive(Debug, thiserror::Error)]
#[error("loading pose weights {path}: {source}")]
pub struct PoseLoadError {
    /// The weights file.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: ModelError,
}

/// Pose options from the settings.
pub fn pose_options(s: &Settings) -> PoseOptions {
    PoseOptions {
        input_width: s.pose.width as usize,
        input_height: s.pose.height as usize,
        ..Default::default()
    }
}

/// The weights the settings name, else the cached default.
pub fn weights_path(s: &Settings) -> PathBuf {
    s.pose
        .model
        .clone()
        .unwrap_or_else(referee_models::default_weights_path)
}

/// The model's name as shown on /status: the weights' file name.
pub fn model_name(weights: &Path) -> String {
    weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Pose workers and threads per worker from the settings (0 = from the number of cores).
pub fn pose_parallelism(s: &Settings) -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if s.pose.workers == 0 {
        cores
    } else {
        s.pose.workers
    };
    let threads = if s.pose.threads == 0 {
        (cores / workers).max(1)
    } else {
        s.pose.threads
    };
    (workers, threads)
}

/// The fast pose estimator once per pose worker (see [`pose_parallelism`]), and the model name.
pub fn load_estimators(
    s: &Settings,
) -> Result<(Vec<Box<dyn PoseEstimator>>, String), PoseLoadError> {
    let weights = weights_path(s);
    let err = |source| PoseLoadError {
        path: weights.clone(),
        source,
    };
    let (workers, threads) = pose_parallelism(s);
    let mut estimators: Vec<Box<dyn PoseEstimator>> = Vec::new();
    let mut isa = None;
    for _ in 0..workers {
        let mut model =
            referee_models::fast::FastYoloPose::load_isa(&weights, pose_options(s), &s.pose.isa)
                .map_err(err)?;
        model.set_threads(threads).map_err(err)?;
        isa = Some(model.isa());
        estimators.push(Box::new(model));
    }
    if let Some(isa) = isa {
        // the first daemon in the process sets it (one configuration per process)
        let _ = POSE_ISA.set(isa.name());
    }
    let isa = isa.map_or("none", |i| i.name());
    tracing::info!(workers, threads, isa, requested = %s.pose.isa, "pose workers");
    Ok((estimators, model_name(&weights)))
}

/// The instruction set the fast pose path was loaded on (`pose.isa`), shown on /status.
static POSE_ISA: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The fast pose path's instruction set, once [`load_estimators`] has run.
pub fn pose_isa() -> Option<&'static str> {
    POSE_ISA.get().copied()
}

/// The unoptimised reference estimator (for checks and comparisons), and the model name.
pub fn load_reference_estimator(
    s: &Settings,
) -> Result<(Box<dyn PoseEstimator>, String), PoseLoadError> {
    let weights = weights_path(s);
    let model = referee_models::YoloPose::load(&weights, pose_options(s)).map_err(|source| {
        PoseLoadError {
            path: weights.clone(),
            source,
        }
    })?;
    Ok((
        Box::new(model),
        format!("{} (reference)", model_name(&weights)),
    ))
}
