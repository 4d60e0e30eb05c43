//! One module per subcommand; each exposes `Args` (clap) and `run`.

pub mod analyze;
pub mod analyze_video;
pub mod bench;
pub mod demo;
pub mod evaluate;
pub mod evaluate_recordings;
pub mod feed;
pub mod model;
pub mod pistes;
pub mod pose;
pub mod replay;
pub mod serve;
pub mod train;

/// Installs the tracing subscriber: `--log-level`, else REFEREE_LOG_LEVEL, else RUST_LOG, else info.
/// Colour only on a terminal (see `referee_capture::logging`).
pub fn init_logging(flag: Option<&str>) {
    let directive = flag
        .map(str::to_string)
        .or_else(|| std::env::var("REFEREE_LOG_LEVEL").ok());
    referee_capture::logging::init(directive.as_deref(), "info");
}

/// The async runtime of a subcommand: `workers` threads (0 = one on the calling thread only).
pub fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    let mut builder = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
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

pub use referee_daemon::pose::{load_estimators, load_reference_estimator, pose_parallelism};

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
