//! `referee bench e2e`: agent -> daemon on loopback QUIC at real-time pacing, against the old
//! approach (buffer the whole phrase, process every frame after the signal) on the same frames,
//! in the same run; and the cost of recording every phrase: two daemons in the same process,
//! one recording and one not, take the phrases in turn (alternating which goes first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use referee_capture::agent::{run_agent, AgentConfig, NoProgress, SignalInput};
use referee_capture::encode::{encode, Encoding};
use referee_capture::pacing::Pacing;
use referee_capture::source::{now_us, FrameSource, Replay};
use referee_daemon::offline::{buffered_verdict, OfflineFrame};
use referee_engine::stats::percentile;
use referee_transport::messages::{FrameEncoding, SessionStart};
use referee_transport::Trust;
use serde::Serialize;

/// Arguments of `referee bench e2e`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Camera pacing in frames per second; repeat to measure several (e.g. --fps 15 --fps 30).
    #[arg(long, default_values_t = vec![15.0f32])]
    fps: Vec<f32>,
    /// Phrases streamed per pacing (and buffered baseline runs).
    #[arg(long, default_value_t = 3)]
    phrases: usize,
    /// Clip to stream (default: ../shared/data/3809.MP4).
    #[arg(long, requires = "signal")]
    clip: Option<PathBuf>,
    /// Its signal log (default: ../shared/data/3809_signal.txt).
    #[arg(long)]
    signal: Option<PathBuf>,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}
// The pose size and piste band come from the usual settings (REFEREE_POSE_SIZE,
// REFEREE_PISTE_BAND), so the effect of cropping can be measured with the same command.

#[derive(Serialize)]
struct Row {
    fps: f32,
    /// The daemon recorded every phrase (`recording.enabled`).
    recording: bool,
    /// Mean size of one phrase's recording on disk (recording rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_bytes_per_phrase: Option<f64>,
    sustained_fps: f64,
    verdict_ms_p50: f64,
    verdict_ms_p95: f64,
    buffered_verdict_ms_p50: f64,
    speedup: f64,
    phrases: usize,
    frames_per_phrase: usize,
    stage_mean_ms: std::collections::BTreeMap<String, f64>,
    pose_workers: usize,
    threads_per_worker: usize,
    pose_size: String,
    piste_band: (f32, f32),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let shared = crate::cmd::shared_dir().unwrap_or_else(|| PathBuf::from("../shared"));
    let clip = args
        .clip
        .clone()
        .unwrap_or_else(|| shared.join("data/3809.MP4"));
    let signal_path = args
        .signal
        .clone()
        .unwrap_or_else(|| shared.join("data/3809_signal.txt"));
    if args.phrases == 0 || args.fps.iter().any(|f| !(*f > 0.0 && *f <= 240.0)) {
        bail!("--phrases must be at least 1 and every --fps in (0, 240]");
    }
    let signal = std::fs::read(&signal_path)
        .with_context(|| format!("reading the signal log {}", signal_path.display()))?;

    // Decode and JPEG-encode the clip once, so both approaches get the same bytes.
    let mut source = referee_capture::source::open_video(&clip)
        .with_context(|| format!("opening {}", clip.display()))?;
    let info = source.info().clone();
    let mut jpegs = Vec::new();
    while let Some(f) = source.next_frame()? {
        let (enc, bytes) = encode(&f, Encoding::Jpeg { quality: 80 })?;
        debug_assert_eq!(enc, FrameEncoding::Jpeg);
        jpegs.push(bytes);
    }
    if jpegs.is_empty() {
        bail!("{} has no frames", clip.display());
    }
    let mean_kb = jpegs.iter().map(Vec::len).sum::<usize>() as f64 / jpegs.len() as f64 / 1024.0;
    // Shared by every phrase's replay.
    let jpegs: std::sync::Arc<[Vec<u8>]> = jpegs.into();

    let tmp = tempfile::tempdir().context("temporary directory")?;
    // REFEREE_* settings apply (e.g. REFEREE_PISTE_BAND, REFEREE_POSE_SIZE); the addresses and
    // directories are the bench's own.
    let mut settings = crate::cmd::load_settings(None, &[])?;
    for (k, v) in [
        ("server.host", "127.0.0.1".to_string()),
        ("server.port", "0".to_string()),
        (
            "server.output_dir",
            tmp.path().join("out").display().to_string(),
        ),
        (
            "server.data_dir",
            tmp.path().join("data").display().to_string(),
        ),
    ] {
        settings.set(k, &v)?;
    }
    settings.set("recording.enabled", "false")?;
    let mut recording_settings = settings.clone();
    recording_settings.set("recording.enabled", "true")?;
    let rec_out = tmp.path().join("recording-out");
    recording_settings.set("server.output_dir", &rec_out.display().to_string())?;
    let rec_data = tmp.path().join("recording-data");
    recording_settings.set("server.data_dir", &rec_data.display().to_string())?;
    let (estimators, model) = crate::cmd::load_estimators(&settings)?;
    let (recording_estimators, _) = crate::cmd::load_estimators(&recording_settings)?;
    let (workers, threads) = crate::cmd::pose_parallelism(&settings);
    let rt = crate::cmd::runtime(2)?;
    let model_name = model.clone();
    let rows = rt.block_on(async {
        let daemon =
            referee_daemon::Daemon::start(&settings, estimators, &model_name).await?;
        let recorder_daemon =
            referee_daemon::Daemon::start(&recording_settings, recording_estimators, &model_name)
                .await?;
        let mut rows = Vec::new();
        for &fps in &args.fps {
            // [recording off, recording on]
            let mut latencies = [Vec::new(), Vec::new()];
            let mut sustained = [Vec::new(), Vec::new()];
            for i in 0..args.phrases {
                let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
                for rec in order {
                    let d = if rec == 1 { &recorder_daemon } else { &daemon };
                    let mut cfg = AgentConfig::new(
                        d.quic_addr,
                        Trust::Fingerprint(d.fingerprint.clone()),
                        format!("bench-{fps}-{i}-{}", ["plain", "recorded"][rec]),
                    );
                    cfg.pacing = Pacing::RealTime { fps };
                    let source = Replay::new(info.clone(), jpegs.clone());
                    let sig = SignalInput::Once {
                        filename: "signal.txt".into(),
                        bytes: signal.clone(),
                    };
                    let started = Instant::now();
                    let outcome = run_agent(cfg, Box::new(source), Some(sig), NoProgress).await?;
                    let v = outcome.verdict.context("no verdict")?;
                    let elapsed = started.elapsed().as_secs_f64();
                    sustained[rec].push(jpegs.len() as f64 / elapsed);
                    latencies[rec].push(v.latency_ms as f64);
                    if !args.json {
                        eprintln!(
                            "  {fps} fps phrase {i}{}: verdict {:?} {:.1} ms after the signal; {:.1} fps end to end",
                            ["", " (recorded)"][rec],
                            v.winner, v.latency_ms, jpegs.len() as f64 / elapsed
                        );
                    }
                }
            }
            let mut buffered = Vec::new();
            for i in 0..args.phrases {
                // Buffered frames carry their capture times at the clip's rate (the engine
                // times a phrase by them), not the instant they were queued.
                let t0 = now_us();
                let frames = jpegs
                    .iter()
                    .enumerate()
                    .map(|(k, b)| OfflineFrame {
                        encoding: FrameEncoding::Jpeg,
                        bytes: b.clone(),
                        capture_ts_us: t0 + (k as f64 * 1e6 / info.fps as f64) as u64,
                    })
                    .collect();
                let start = SessionStart {
                    session_id: format!("buffered-{fps}-{i}"),
                    fps: info.fps,
                    width: info.width,
                    height: info.height,
                    piste: "bench".into(),
                    camera: "replay".into(),
                    undistort: None,
                    resume: false,
                    resume_secret: None,
                };
                let (v, took) =
                    buffered_verdict(&daemon.core, start, frames, "signal.txt", signal.clone())
                        .await?;
                buffered.push(took.as_secs_f64() * 1e3);
                if !args.json {
                    eprintln!(
                        "  buffered baseline {i}: verdict {:?} {:.0} ms after the signal",
                        v.winner,
                        took.as_secs_f64() * 1e3
                    );
                }
            }
            let b50 = percentile(&buffered, 50.0).unwrap_or(f64::NAN);
            if let Some(r) = recorder_daemon.core.router.recorder() {
                r.flush();
            }
            let disk = recordings_bytes(&rec_out.join(referee_record::RECORDINGS_DIR));
            let recorded = recorder_daemon.core.engine.verdicts().max(1);
            for rec in [0, 1] {
                let d = if rec == 1 { &recorder_daemon } else { &daemon };
                let p50 = percentile(&latencies[rec], 50.0).unwrap_or(f64::NAN);
                rows.push(Row {
                    fps,
                    recording: rec == 1,
                    disk_bytes_per_phrase: (rec == 1).then(|| disk as f64 / recorded as f64),
                    sustained_fps: percentile(&sustained[rec], 50.0).unwrap_or(f64::NAN),
                    verdict_ms_p50: p50,
                    verdict_ms_p95: percentile(&latencies[rec], 95.0).unwrap_or(f64::NAN),
                    buffered_verdict_ms_p50: b50,
                    speedup: b50 / p50.max(1e-3),
                    phrases: args.phrases,
                    frames_per_phrase: jpegs.len(),
                    stage_mean_ms: d
                        .core
                        .engine
                        .stats()
                        .stages()
                        .into_iter()
                        .map(|(k, v)| (k, v.mean_ms))
                        .collect(),
                    pose_workers: workers,
                    threads_per_worker: threads,
                    pose_size: format!("{}x{}", settings.pose.width, settings.pose.height),
                    piste_band: settings.pose.piste_band,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        daemon.shutdown().await;
        recorder_daemon.shutdown().await;
        anyhow::Ok(rows)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "clip {} ({} frames, {}x{}, JPEG q80 ~{mean_kb:.0} KB/frame), model {model}",
            clip.display(),
            jpegs.len(),
            info.width,
            info.height
        );
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    }
    Ok(())
}

/// Bytes of every recording under `root`.
fn recordings_bytes(root: &std::path::Path) -> u64 {
    referee_record::list(root)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}
