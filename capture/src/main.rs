//! `referee-capture`: streams a camera, video file, image folder or synthetic frames to a referee
//! daemon over QUIC, sends the scoring box's signal log, and prints (and saves) the verdict.

use anyhow::Context;
use clap::{ArgGroup, Parser, ValueEnum};
use referee_capture::agent::{
    run_agent, AgentConfig, AgentError, AgentOutcome, AgentStats, ProgressSink, SignalInput,
};
use referee_capture::cli::TrustArgs;
use referee_capture::encode::Encoding;
use referee_capture::pacing::Pacing;
use referee_capture::source::{self, FrameSource};
use referee_transport::messages::{LiveState, VerdictReport, Winner};
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Streams frames and signal logs to a referee daemon and prints the verdict.
#[derive(Parser, Debug)]
#[command(name = "referee-capture", version, about)]
#[command(group(ArgGroup::new("source").required(true).args(["video", "camera", "images", "synthetic", "replay"])))]
#[command(mut_group(TrustArgs::GROUP, |g| g.required(true).arg("trust_registry")))]
struct Cli {
    /// Daemon address, HOST:PORT (port 4433 when omitted), e.g. 127.0.0.1:4433. With --nats it
    /// is the fallback used when NATS cannot be asked.
    #[arg(required_unless_present = "nats")]
    server: Option<String>,
    /// Find the daemon serving --piste in this NATS's piste registry (tournament mode).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// NATS token file (with --nats).
    #[arg(long, value_name = "FILE", requires = "nats")]
    nats_token_file: Option<PathBuf>,
    /// NATS credentials file (with --nats).
    #[arg(long, value_name = "FILE", requires = "nats")]
    nats_credentials: Option<PathBuf>,
    /// Pin the certificate fingerprint the NATS registry gives for the piste (instead of
    /// --server-fingerprint/--ca): only as safe as write access to that NATS.
    #[arg(long, requires = "nats")]
    trust_registry: bool,

    /// Stream a video file (MP4/H.264 natively, other formats through ffmpeg).
    #[arg(long, value_name = "FILE")]
    video: Option<PathBuf>,
    /// Stream camera number N (needs a build with the `camera` feature).
    #[arg(long, value_name = "N")]
    camera: Option<u32>,
    /// Stream the JPEG/PNG images of a folder, sorted by name.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// Stream a phrase the daemon recorded (`<output_dir>/recordings/<session>/phrase-NNN.tar`):
    /// its frames as received, at the rate of their capture stamps, then its signal log
    /// (unless --signal gives another).
    #[arg(long, value_name = "REC")]
    replay: Option<PathBuf>,
    /// Stream N generated frames (tests and demos).
    #[arg(long, value_name = "N")]
    synthetic: Option<u64>,
    /// Stop capturing after this many seconds (any source).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Frame size for camera and synthetic sources, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720", value_name = "WxH")]
    size: String,

    /// The scoring box's log for this phrase, sent after the last frame.
    #[arg(long, value_name = "FILE", conflicts_with = "signal_dir")]
    signal: Option<PathBuf>,
    /// Watch mode: stream continuously and close a phrase whenever a new log appears here.
    #[arg(long, value_name = "DIR")]
    signal_dir: Option<PathBuf>,

    /// Wire encoding of frames (JPEG sources are forwarded untouched with jpeg).
    #[arg(long, value_enum, default_value_t = EncodingArg::Jpeg)]
    encoding: EncodingArg,
    /// JPEG quality 1-100 when frames must be encoded.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: u8,
    /// Frame rate: pacing rate for files, rate of images/synthetic/camera (default: the source's, or 30).
    #[arg(long)]
    fps: Option<f32>,
    /// Release frames at the source's frame rate, like a live camera (default for files).
    #[arg(long, conflicts_with = "fast")]
    realtime: bool,
    /// Send frames as fast as possible.
    #[arg(long)]
    fast: bool,

    /// Session identifier (default: capture-<host>-<unix ms>-<random>, unique per agent).
    #[arg(long)]
    session_id: Option<String>,
    /// Piste identifier.
    #[arg(long, default_value = "piste-1")]
    piste: String,
    /// Write the verdict here as JSON (an array of verdicts in watch mode).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    #[command(flatten)]
    trust: TrustArgs,
    /// Name checked against the certificate in CA mode (default: the host part of SERVER).
    #[arg(long)]
    server_name: Option<String>,
    /// Capture token (or REFEREE_CAPTURE_TOKEN).
    #[arg(
        long,
        env = "REFEREE_CAPTURE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,

    /// Un-acked frames kept for resending after a reconnect.
    #[arg(long, default_value_t = 512)]
    ring: usize,
    /// Connection attempts before giving up.
    #[arg(long, default_value_t = 8)]
    retries: u32,
    /// Seconds to wait for a free session slot while the daemon is full (it streams at most
    /// limits.max_streaming_sessions at once); the wait does not use up --retries.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    slot_wait: u64,
    /// More log output.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EncodingArg {
    Jpeg,
    Png,
    Raw,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.verbose { "debug" } else { "info" };
    referee_capture::logging::init(None, filter);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e
                .downcast_ref::<AgentError>()
                .map(AgentError::exit_code)
                .unwrap_or(2);
            ExitCode::from(code as u8)
        }
    }
}

fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    referee_config::parse_wxh(s).map_err(|e| anyhow::anyhow!("--size {e}"))
}

/// Resolves SERVER to an address and the host name used for certificate checks.
fn resolve(server: &str) -> anyhow::Result<(SocketAddr, String)> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok((addr, addr.ip().to_string()));
    }
    let (host, with_port) = match server.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.is_empty() => {
            (h.to_string(), server.to_string())
        }
        _ => (server.to_string(), format!("{server}:4433")),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| {
            format!("cannot resolve the daemon address {server:?} (expected HOST:PORT)")
        })?
        .next()
        .with_context(|| format!("{server:?} resolves to no address"))?;
    Ok((addr, host))
}

/// The daemon to stream to: from the NATS registry with --nats (falling back to SERVER when
/// NATS fails and SERVER is given), else SERVER; and how to trust it.
fn locate(cli: &Cli) -> anyhow::Result<(SocketAddr, String, referee_transport::Trust)> {
    let given = |server: &str| -> anyhow::Result<_> {
        let (addr, host) = resolve(server)?;
        let trust = cli.trust.trust(addr)?;
        Ok((addr, host, trust))
    };
    let Some(url) = &cli.nats else {
        return given(cli.server.as_deref().unwrap_or_default());
    };
    let args = referee_nats::ConnectArgs {
        url: url.clone(),
        token_file: cli.nats_token_file.clone(),
        credentials_file: cli.nats_credentials.clone(),
        tls_ca: None,
        name: format!("referee-capture piste {}", cli.piste),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let found = rt.block_on(referee_capture::discover::find_daemon(
        &args,
        &cli.piste,
        Duration::from_secs(10),
    ));
    let entry = match (found, &cli.server) {
        (Ok(e), _) => e,
        (Err(e), Some(server)) => {
            eprintln!("NATS registry: {e:#}; using the given address {server}");
            return given(server);
        }
        (Err(e), None) => return Err(e),
    };
    let addr = referee_capture::discover::entry_addr(&entry)?;
    let t = &cli.trust;
    let user = if t.ca.is_some() || t.server_fingerprint.is_some() || t.insecure_loopback {
        Some(t.trust(addr)?)
    } else {
        None
    };
    let trust = referee_capture::discover::trust_for(&entry, user, cli.trust_registry)?;
    eprintln!(
        "piste {} is served by {} at {addr} (registry, load {:.0}%)",
        entry.piste,
        entry.daemon_id,
        entry.load * 100.0
    );
    Ok((addr, addr.ip().to_string(), trust))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (addr, host, trust) = locate(&cli)?;
    let (width, height) = parse_size(&cli.size)?;
    let encoding = match cli.encoding {
        EncodingArg::Jpeg => Encoding::Jpeg {
            quality: cli.jpeg_quality,
        },
        EncodingArg::Png => Encoding::Png,
        EncodingArg::Raw => Encoding::Raw,
    };
    let mut replayed = match &cli.replay {
        Some(rec) => Some(source::Replay::from_recording(rec).map_err(AgentError::from)?),
        None => None,
    };
    let signal = match (&cli.signal, &cli.signal_dir, &mut replayed) {
        (Some(f), _, _) => Some(SignalInput::from_file(f, 256 * 1024)?),
        (_, Some(d), _) => Some(SignalInput::watch(d)?),
        (_, _, Some((_, filename, bytes))) => Some(SignalInput::Once {
            filename: std::mem::take(filename),
            bytes: std::mem::take(bytes),
        }),
        _ => None,
    };
    if cli.output.is_some() && signal.is_none() {
        anyhow::bail!("--output needs --signal FILE or --signal-dir DIR: without a signal there is no verdict");
    }

    let src: Box<dyn FrameSource> = if let Some((r, _, _)) = replayed {
        Box::new(r)
    } else if let Some(v) = &cli.video {
        source::open_video(v).map_err(AgentError::from)?
    } else if let Some(n) = cli.camera {
        Box::new(
            source::Camera::open(n, width, height, cli.fps.unwrap_or(30.0))
                .map_err(AgentError::from)?,
        )
    } else if let Some(d) = &cli.images {
        Box::new(source::ImageFolder::open(d, cli.fps.unwrap_or(30.0)).map_err(AgentError::from)?)
    } else if let Some(n) = cli.synthetic {
        Box::new(
            source::Synthetic::new(width, height, cli.fps.unwrap_or(30.0), Some(n))
                .map_err(AgentError::from)?,
        )
    } else {
        anyhow::bail!("give a source: --video, --camera, --images, --synthetic or --replay");
    };
    let info = src.info().clone();
    let fps = cli.fps.unwrap_or(info.fps);
    // A camera paces itself; files default to real time unless --fast.
    let pacing = if cli.camera.is_some() || cli.fast {
        Pacing::AsFastAsPossible
    } else {
        Pacing::RealTime { fps }
    };
    let session_id = cli
        .session_id
        .clone()
        .unwrap_or_else(referee_capture::agent::default_session_id);
    let mut cfg = AgentConfig::new(addr, trust, session_id);
    cfg.server_name = cli.server_name.clone().unwrap_or(host);
    cfg.token = cli.token.clone();
    cfg.piste = cli.piste.clone();
    cfg.camera = match cli.camera {
        Some(n) => format!("camera-{n}"),
        None => info.name.clone(),
    };
    cfg.encoding = encoding;
    cfg.pacing = pacing;
    cfg.fps = Some(fps);
    cfg.ring_capacity = cli.ring;
    cfg.live_source = cli.camera.is_some();
    cfg.max_retries = cli.retries;
    cfg.slot_wait = std::time::Duration::from_secs(cli.slot_wait);
    tracing::info!(
        source = %info.name, width = info.width, height = info.height, fps,
        frames = ?info.frame_count, server = %addr, session = %cfg.session_id, "streaming"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stop = cfg.stop.clone();
    let duration = cli.duration;
    let watch_mode = cli.signal_dir.is_some();
    let outcome = rt.block_on(async move {
        let stop2 = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: ending the session (Ctrl-C again to abort)");
                stop2.store(true, Ordering::Relaxed);
                let _ = tokio::signal::ctrl_c().await;
                std::process::exit(130);
            }
        });
        if let Some(s) = duration {
            let stop3 = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await;
                stop3.store(true, Ordering::Relaxed);
            });
        }
        let sink = Sink::new(info.frame_count, watch_mode);
        run_agent(cfg, src, signal, sink).await
    })?;
    report(&outcome, cli.output.as_deref(), watch_mode)
}

fn report(
    outcome: &AgentOutcome,
    output: Option<&std::path::Path>,
    watch: bool,
) -> anyhow::Result<()> {
    let s = &outcome.stats;
    eprintln!(
        "sent {} frames ({} resent, {:.1} MB), {} acked, {:.1} fps, {} reconnects, {} lost",
        s.frames_sent,
        s.frames_resent,
        s.bytes_sent as f64 / 1e6,
        s.frames_acked,
        s.fps,
        s.reconnects,
        s.lost
    );
    if watch {
        eprintln!("{} verdicts", outcome.verdicts.len());
    } else if let Some(v) = &outcome.verdict {
        println!("{}", verdict_line(v));
    }
    if let Some(path) = output {
        let json = if watch {
            serde_json::to_string_pretty(&outcome.verdicts)?
        } else {
            serde_json::to_string_pretty(&outcome.verdict)?
        };
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the verdict to {}", path.display()))?;
        eprintln!("verdict written to {}", path.display());
    }
    Ok(())
}

fn verdict_line(v: &VerdictReport) -> String {
    let who = match v.winner {
        Winner::Left => "LEFT scores",
        Winner::Right => "RIGHT scores",
        Winner::Uncertain => "UNCERTAIN (ask the referee)",
    };
    format!(
        "verdict phrase {}: {who} (confidence {:.2}) - {} [{:.1} ms after the signal]",
        v.phrase, v.confidence, v.reason, v.latency_ms
    )
}

/// Progress bar on a terminal, periodic log lines otherwise.
struct Sink {
    bar: Option<indicatif::ProgressBar>,
    /// Print verdicts as they come (watch mode); otherwise the final one is printed at the end.
    watch: bool,
    last_log: Instant,
}

impl Sink {
    fn new(total: Option<u64>, watch: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} frames {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Sink {
            bar,
            watch,
            last_log: Instant::now(),
        }
    }
}

impl ProgressSink for Sink {
    fn update(&mut self, s: &AgentStats) {
        let msg = format!(
            "| acked {} | {:.1} fps | {:.1} MB/s | ring {} | server queue {}{}",
            s.frames_acked,
            s.fps,
            s.mb_per_s,
            s.queue,
            s.server_queue,
            if s.lost > 0 {
                format!(" | lost {}", s.lost)
            } else {
                String::new()
            }
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(s.frames_captured);
                bar.set_message(msg);
            }
            None => {
                if self.last_log.elapsed() >= Duration::from_secs(2) {
                    self.last_log = Instant::now();
                    tracing::info!("captured {} {msg}", s.frames_captured);
                }
            }
        }
    }
    fn message(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => tracing::info!("{text}"),
        }
    }
    fn verdict(&mut self, v: &VerdictReport) {
        if !self.watch {
            return;
        }
        // Verdicts go to stdout (one line each), the bar and logs to stderr.
        let line = verdict_line(v);
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }
    fn live(&mut self, l: &LiveState) {
        tracing::debug!(frame = l.frame, row = ?l.right_of_way, "live");
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
