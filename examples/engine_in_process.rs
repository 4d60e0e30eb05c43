//! Runs the engine library in one process, without the network: frames from a video go through
//! decode -> rectify -> pose -> tracking -> referee, then the signal log gives the verdict.
//!
//! ```sh
//! cargo run --release --example engine_in_process -- ../shared/data/3809.MP4 ../shared/data/3809_signal.txt
//! ```
//! Needs the pose weights (`cargo run --release -- model fetch`).

use std::time::Duration;

use anyhow::Context;
use referee_engine::offline::{OfflineFrame, OfflineSession};
use referee_engine::{Engine, EngineConfig};
use referee_models::fast::FastYoloPose;
use referee_models::{default_weights_path, PoseOptions};
use referee_transport::messages::SessionStart;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(video), Some(signal)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: engine_in_process VIDEO SIGNAL_LOG");
    };
    let pose = FastYoloPose::load(&default_weights_path(), PoseOptions::default())
        .context("loading the pose weights (run `cargo run --release -- model fetch`)")?;
    let engine = Engine::start(EngineConfig::default(), Box::new(pose));

    let mut source = referee_capture::source::open_video(video.as_ref())?;
    let info = source.info().clone();
    let mut session = OfflineSession::open(
        &engine,
        SessionStart {
            session_id: "example".into(),
            fps: info.fps,
            width: info.width,
            height: info.height,
            piste: "1".into(),
            camera: info.name.clone(),
            undistort: None,
            resume: false,
        },
    )?;
    while let Some(frame) = source.next_frame()? {
        let capture_ts_us = frame.capture_ts_us;
        let (encoding, bytes) = frame.into_wire();
        session
            .push(OfflineFrame {
                encoding,
                bytes,
                capture_ts_us,
            })
            .await?;
    }
    let log = std::fs::read(&signal).with_context(|| format!("reading {signal}"))?;
    let verdict = session
        .finish("signal.txt", log, Duration::from_secs(120))
        .await?;
    println!(
        "{:?} ({:.0}%): {}",
        verdict.winner,
        verdict.confidence * 100.0,
        verdict.reason
    );
    engine.shutdown();
    Ok(())
}
