//! Drives the sans-IO engine core directly, without the network or an async runtime: frames
//! from a video go through decode -> rectify -> pose -> tracking -> referee, the signal log
//! closes the phrase, and the verdict arrives as an event on a plain channel.
//!
//! ```sh
//! cargo run --release --example engine_in_process -- ../shared/data/3809.MP4 ../shared/data/3809_signal.txt
//! ```
//! Needs the pose weights (`cargo run --release -- model fetch`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use referee_engine::{Engine, EngineConfig, EngineEvent, FrameMeta, PhraseSignal, SessionSpec};
use referee_models::fast::FastYoloPose;
use referee_models::{default_weights_path, PoseOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(video), Some(signal)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: engine_in_process VIDEO SIGNAL_LOG");
    };
    let pose = FastYoloPose::load(&default_weights_path(), PoseOptions::default())
        .context("loading the pose weights (run `cargo run --release -- model fetch`)")?;
    // The engine's one outbound interface: here, a channel.
    let (events, inbox) = crossbeam_channel::unbounded::<EngineEvent>();
    let engine = Engine::start(
        EngineConfig::default(),
        vec![Box::new(pose)],
        Arc::new(events),
    );

    let mut source = referee_capture::source::open_video(video.as_ref())?;
    let info = source.info().clone();
    let id = "example".to_string();
    engine.open_session(SessionSpec {
        id: id.clone(),
        piste: "1".into(),
        camera: info.name.clone(),
        fps: info.fps,
        width: info.width,
        height: info.height,
        undistort: None,
        resume: false,
    })?;
    while let Some(frame) = source.next_frame()? {
        let (frame_no, capture_ts_us) = (frame.index, frame.capture_ts_us);
        let (encoding, bytes) = frame.into_wire();
        // Blocks while the pipeline is full: the backpressure an agent would feel.
        let permit = engine.reserve()?;
        let meta = FrameMeta {
            session_id: id.clone(),
            frame: frame_no,
            capture_ts_us,
            encoding,
            len: bytes.len() as u32,
        };
        engine.submit(permit, meta, bytes)?;
    }
    let log = std::fs::read(&signal).with_context(|| format!("reading {signal}"))?;
    let signal = PhraseSignal {
        session_id: id.clone(),
        phrase: 0,
        filename: "signal.txt".into(),
        bytes: log,
        phrase_start_us: None,
    };
    engine.signal(signal, engine.now())?;
    loop {
        match inbox.recv_timeout(Duration::from_secs(120))? {
            EngineEvent::Verdict { verdict, .. } => {
                let d = &verdict.decision;
                println!(
                    "{:?} ({:.0}%): {}",
                    d.winner,
                    d.confidence * 100.0,
                    d.reason
                );
                break;
            }
            EngineEvent::Failure { message, .. } => anyhow::bail!("{message}"),
            _ => {}
        }
    }
    engine.end_session(&id)?;
    engine.shutdown();
    Ok(())
}
