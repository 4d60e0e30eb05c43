//! `referee bench ...`: benchmarks that print figures (human-readable, or JSON with --json).

pub mod e2e;
pub mod pose;
pub mod rules;
pub mod soak;
pub mod transport;

/// Arguments of `referee bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand, Debug)]
enum Which {
    /// Pose inference: fast path vs the reference path on real frames.
    Pose(pose::Args),
    /// QUIC transport: 150 KB frames on loopback.
    Transport(transport::Args),
    /// Offline analysis time per phrase (workbook + signal -> verdict).
    Analyze(rules::Args),
    /// Agent -> daemon on loopback at real-time pacing vs the old buffered approach.
    E2e(e2e::Args),
    /// Several pistes streaming for a long time through random network cuts: frames, verdicts,
    /// memory and file descriptors over time.
    Soak(soak::Args),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.which {
        Which::Pose(a) => pose::run(a),
        Which::Transport(a) => transport::run(a),
        Which::Analyze(a) => rules::run(a),
        Which::E2e(a) => e2e::run(a),
        Which::Soak(a) => soak::run(a),
    }
}
