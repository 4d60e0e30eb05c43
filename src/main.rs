//! `referee`: the engine daemon and its command-line tools.
//!
//! The binary is thin: every subcommand parses its arguments and calls into the library crates.

mod cmd;

use clap::{Parser, Subcommand};

/// Real-time saber referee: streams frames from capture agents, tracks both fencers and decides
/// right-of-way on double touches moments after the scoring box's signal lands.
#[derive(Parser)]
#[command(name = "referee", version, about, long_about = None)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace or a tracing directive); overrides REFEREE_LOG_LEVEL.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the headless engine daemon (QUIC for agents and subscribers, HTTP for status and feed).
    Serve(cmd::serve::Args),
    /// Decide one phrase offline: from an old keypoints workbook, or from a video file.
    Analyze(cmd::analyze::Args),
    /// Run `analyze` over a folder of labelled phrases and report accuracy.
    Evaluate(cmd::evaluate::Args),
    /// Fit the right-of-way model from labelled phrase folders (leave-one-date-out inside).
    Train(cmd::train::Args),
    /// Print pose keypoints (JSON lines) for every frame of a video or image.
    Pose(cmd::pose::Args),
    /// Manage the pose model weights (fetch, verify, convert).
    Model(cmd::model::Args),
    /// Subscribe to a daemon's progressive verdict feed and print events.
    Feed(cmd::feed::Args),
    /// List the tournament's pistes and the daemons serving them (NATS piste registry).
    Pistes(cmd::pistes::Args),
    /// Benchmarks that print figures (pose, transport, analyze, end-to-end).
    Bench(cmd::bench::Args),
    /// Start a local daemon, stream the sample clip through it and print the verdict.
    Demo(cmd::demo::Args),
    /// Replay recorded phrases through the engine and check that each verdict is reproduced.
    Replay(cmd::replay::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cmd::init_logging(cli.log_level.as_deref());
    match cli.command {
        Command::Serve(a) => cmd::serve::run(a),
        Command::Analyze(a) => cmd::analyze::run(a),
        Command::Evaluate(a) => cmd::evaluate::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Pose(a) => cmd::pose::run(a),
        Command::Model(a) => cmd::model::run(a),
        Command::Feed(a) => cmd::feed::run(a),
        Command::Pistes(a) => cmd::pistes::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Replay(a) => cmd::replay::run(a),
    }
}
