//! `referee analyze --video V --signal S`: the daemon's pipeline in one process on a file
//! (decode -> rectify -> pose -> track -> referee), with a progress bar.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use referee_daemon::offline::{OfflineFrame, OfflineSession};
use referee_daemon::Core;
use referee_transport::messages::{SessionStart, VerdictReport};

/// Streams `video` through an in-process engine, then decides with `signal`.
pub fn analyze_video(
    video: &Path,
    signal: &Path,
    settings: &referee_config::Settings,
) -> anyhow::Result<VerdictReport> {
    let signal_bytes = std::fs::read(signal)
        .with_context(|| format!("cannot read signal log {}", signal.display()))?;
    let mut source = referee_capture::source::open_video(video)
        .with_context(|| format!("cannot open video {}", video.display()))?;
    let info = source.info().clone();
    let (estimators, _model) = super::load_estimators(settings)?;
    let core = Core::start(referee_daemon::engine_config(settings), estimators);
    let bar = super::progress_bar(info.frame_count, "frames");
    let rt = super::runtime(0)?;
    let started = Instant::now();
    let result = rt.block_on(async {
        let stem = video
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "video".into());
        let session_id: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut session = OfflineSession::open(
            &core,
            SessionStart {
                session_id,
                fps: info.fps,
                width: info.width,
                height: info.height,
                piste: "offline".into(),
                camera: info.name.clone(),
                undistort: None,
                resume: false,
                resume_secret: None,
            },
        )?;
        // Read as fast as possible: frames carry their media time, not the time read.
        let mut stamps = referee_capture::source::CaptureStamps::default();
        while let Some(frame) = source.next_frame()? {
            let capture_ts_us = stamps.stamp(frame.capture_ts_us, frame.pts_us);
            let (encoding, bytes) = frame.into_wire();
            session
                .push(OfflineFrame {
                    encoding,
                    bytes,
                    capture_ts_us,
                })
                .await?;
            bar.inc(1);
        }
        let name = signal
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let verdict = session
            .finish(&name, signal_bytes, Duration::from_secs(600))
            .await?;
        anyhow::Ok(verdict)
    });
    bar.finish_and_clear();
    core.shutdown();
    let verdict = result?;
    tracing::info!(seconds = started.elapsed().as_secs_f32(), "video analysed");
    Ok(verdict)
}
