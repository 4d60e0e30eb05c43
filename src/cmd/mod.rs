//! One module per subcommand; each exposes `Args` (clap) and `run`.

pub mod analyze;
pub mod analyze_video;
pub mod bench;
pub mod demo;
pub mod evaluate;
pub mod feed;
pub mod model;
pub mod pose;
pub mod serve;

/// Installs the tracing subscriber: `--log-level`, else REFEREE_LOG_LEVEL, else RUST_LOG, else info.
pub fn init_logging(flag: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = flag
        .map(str::to_string)
        .or_else(|| std::env::var("REFEREE_LOG_LEVEL").ok())
        .map(EnvFilter::new)
        .unwrap_or_else(|| {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Settings from `--config`, then REFEREE_* variables, then each `--set KEY=VALUE`.
pub fn load_settings(
    file: Option<&std::path::Path>,
    overrides: &[String],
) -> anyhow::Result<referee_config::Settings> {
    use anyhow::Context;
    let mut s = referee_config::Settings::load(file).context("loading settings")?;
    for pair in overrides {
        s.set_pair(pair).context("applying --set")?;
    }
    s.validate().context("checking settings")?;
    Ok(s)
}

/// Pose options from the settings.
fn pose_options(s: &referee_config::Settings) -> referee_models::PoseOptions {
    referee_models::PoseOptions {
        input_width: s.pose.width as usize,
        input_height: s.pose.height as usize,
        ..Default::default()
    }
}

fn weights_path(s: &referee_config::Settings) -> std::path::PathBuf {
    s.pose
        .model
        .clone()
        .unwrap_or_else(referee_models::default_weights_path)
}

fn model_name(weights: &std::path::Path) -> String {
    weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Pose workers and threads per worker from the settings (0 = from the number of cores).
pub fn pose_parallelism(s: &referee_config::Settings) -> (usize, usize) {
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

/// Loads the fast pose estimator on the weights the settings name (or the cached default),
/// once per pose worker (see [`pose_parallelism`]).
pub fn load_estimators(
    s: &referee_config::Settings,
) -> anyhow::Result<(Vec<Box<dyn referee_models::PoseEstimator>>, String)> {
    use anyhow::Context;
    let weights = weights_path(s);
    let (workers, threads) = pose_parallelism(s);
    let mut estimators: Vec<Box<dyn referee_models::PoseEstimator>> = Vec::new();
    for _ in 0..workers {
        let mut model = referee_models::fast::FastYoloPose::load(&weights, pose_options(s))
            .with_context(|| format!("loading pose weights {}", weights.display()))?;
        model.set_threads(threads)?;
        estimators.push(Box::new(model));
    }
    tracing::info!(workers, threads, "pose workers");
    Ok((estimators, model_name(&weights)))
}

/// Loads the unoptimised reference estimator (for checks and comparisons).
pub fn load_reference_estimator(
    s: &referee_config::Settings,
) -> anyhow::Result<(Box<dyn referee_models::PoseEstimator>, String)> {
    use anyhow::Context;
    let weights = weights_path(s);
    let model = referee_models::YoloPose::load(&weights, pose_options(s))
        .with_context(|| format!("loading pose weights {}", weights.display()))?;
    Ok((
        Box::new(model),
        format!("{} (reference)", model_name(&weights)),
    ))
}

/// A progress bar on a terminal (hidden otherwise), counting `unit`.
pub fn progress_bar(total: Option<u64>, unit: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// The shared folder with the sample clip, recordings and checkpoint: `$REFEREE_SHARED_DIR`,
/// else `../shared` beside the workspace holding the current directory, else `../shared` from
/// the current directory, else beside the workspace this binary was built in (the first that
/// holds `data/` or `models/`).
pub fn shared_dir() -> Option<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("REFEREE_SHARED_DIR") {
        candidates.push(PathBuf::from(d));
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(ws) = cwd.ancestors().find(|d| d.join("Cargo.lock").exists()) {
            candidates.push(ws.join("../shared"));
        }
    }
    candidates.push(PathBuf::from("../shared"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    candidates
        .into_iter()
        .find(|d| d.join("data").is_dir() || d.join("models").is_dir())
}
