//! One module per subcommand; each exposes `Args` (clap) and `run`.

pub mod analyze;
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
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
