//! `referee bench soak`: several pistes stream at real-time pacing for a long time into an
//! in-process daemon, each through a UDP relay that cuts the network (drops every datagram)
//! for a random 0.5-2 s at random times. Reports frames sent/acked/lost, verdicts, and the
//! process's memory and open file descriptors over time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use referee_capture::agent::{run_agent, AgentConfig, AgentOutcome, ProgressSink, SignalInput};
use referee_capture::pacing::Pacing;
use referee_capture::source::Synthetic;
use referee_pose_api::PoseEstimator;
use referee_transport::Trust;
use serde::Serialize;
use tokio::net::UdpSocket;

/// Arguments of `referee bench soak`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pistes streaming at once (one agent, one session, one relay each).
    #[arg(long, default_value_t = 4)]
    pistes: usize,
    /// How long each piste streams, in seconds.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Camera pacing of every piste, frames per second.
    #[arg(long, default_value_t = 15.0)]
    fps: f32,
    /// Frame size WxH of the synthetic camera.
    #[arg(long, default_value = "640x360")]
    size: String,
    /// A scoring-box log closes a phrase every this many seconds on each piste.
    #[arg(long, default_value_t = 8)]
    phrase_s: u64,
    /// Shortest and longest network cut, in milliseconds.
    #[arg(long, default_value_t = 500)]
    cut_min_ms: u64,
    #[arg(long, default_value_t = 2000)]
    cut_max_ms: u64,
    /// Mean time between two cuts on one piste's path, in seconds (uniform in 0.5x..1.5x).
    #[arg(long, default_value_t = 6.0)]
    cut_every_s: f64,
    /// Pose estimator: `stand-in` (two fencers standing still, no weights: the bench then
    /// measures transport and daemon, not the model) or `fast` (the real model's fast path).
    #[arg(long, default_value = "stand-in", value_parser = ["stand-in", "fast"])]
    estimator: String,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

/// One piste's figures.
#[derive(Debug, Serialize)]
struct PisteRow {
    piste: String,
    frames_captured: u64,
    frames_sent: u64,
    frames_acked: u64,
    frames_resent: u64,
    frames_lost: u64,
    reconnects: u32,
    verdicts: usize,
    signals_written: u32,
    cuts: u64,
    cut_ms: u64,
    datagrams_dropped: u64,
    error: Option<String>,
}

/// One sample of the process's resources.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    t_s: f64,
    rss_mb: f64,
    open_fds: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    pistes: Vec<PisteRow>,
    frames_sent: u64,
    frames_acked: u64,
    frames_lost: u64,
    verdicts: usize,
    daemon_frames_received: u64,
    daemon_frames_processed: u64,
    daemon_drops: std::collections::BTreeMap<String, u64>,
    resources: Vec<Sample>,
    duration_s: u64,
    fps: f32,
    estimator: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.pistes == 0 || args.duration_s == 0 || !(args.fps > 0.0 && args.fps <= 120.0) {
        bail!("--pistes and --duration-s must be at least 1, --fps in (0, 120]");
    }
    if args.cut_min_ms > args.cut_max_ms || args.cut_every_s <= 0.0 || args.phrase_s == 0 {
        bail!("--cut-min-ms must not exceed --cut-max-ms; --cut-every-s and --phrase-s must be positive");
    }
    let (width, height) = referee_config::parse_wxh(&args.size)
        .map_err(|e| anyhow::anyhow!("--size {:?}: {e}", args.size))?;
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let mut settings = crate::cmd::load_settings(None, &[])?;
    let out = tmp.path().join("out").display().to_string();
    let data = tmp.path().join("data").display().to_string();
    for (k, v) in [
        ("server.host", "127.0.0.1"),
        ("server.port", "0"),
        ("server.http_port", "0"),
        ("server.output_dir", out.as_str()),
        ("server.data_dir", data.as_str()),
    ] {
        settings.set(k, v)?;
    }
    let sessions = settings.limits.max_streaming_sessions.max(args.pistes);
    settings.set("limits.max_streaming_sessions", &sessions.to_string())?;
    let (estimators, model): (Vec<Box<dyn PoseEstimator>>, String) = match args.estimator.as_str() {
        "fast" => crate::cmd::load_estimators(&settings)?,
        _ => (
            vec![Box::new(referee_pose_api::testing::StandingFencers)],
            "stand-in (two fencers standing)".into(),
        ),
    };
    let rt = crate::cmd::runtime(2)?;
    let report = rt.block_on(soak(
        &args,
        &settings,
        estimators,
        &model,
        (width, height),
        tmp.path(),
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

async fn soak(
    args: &Args,
    settings: &referee_config::Settings,
    estimators: Vec<Box<dyn PoseEstimator>>,
    model: &str,
    (width, height): (u32, u32),
    tmp: &Path,
) -> anyhow::Result<Report> {
    let daemon = referee_daemon::Daemon::start(settings, estimators, model).await?;
    if !args.json {
        eprintln!(
            "soak: {} pistes x {} s at {} fps ({}x{}), cuts of {}-{} ms every ~{} s, estimator {}",
            args.pistes,
            args.duration_s,
            args.fps,
            width,
            height,
            args.cut_min_ms,
            args.cut_max_ms,
            args.cut_every_s,
            model
        );
    }
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_resources(started, stop.clone()));
    let mut pistes = tokio::task::JoinSet::new();
    for i in 0..args.pistes {
        let relay = Relay::start(daemon.quic_addr).await?;
        let dir = tmp.join(format!("signals-{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cfg = AgentConfig::new(
            relay.addr,
            Trust::Fingerprint(daemon.fingerprint.clone()),
            format!("soak-{i}"),
        );
        cfg.piste = format!("piste-{i}");
        cfg.pacing = Pacing::RealTime { fps: args.fps };
        let frames = (args.duration_s as f64 * args.fps as f64).round() as u64;
        let source = Box::new(Synthetic::new(width, height, args.fps, Some(frames))?);
        let cuts = relay.cut_randomly(
            Duration::from_millis(args.cut_min_ms),
            Duration::from_millis(args.cut_max_ms),
            args.cut_every_s,
            i as u64,
        );
        // Every log lands while the piste still streams (2 s before its last frame is due).
        let phrases = args.duration_s.saturating_sub(2) / args.phrase_s;
        let logs = write_signals(
            dir.clone(),
            Duration::from_secs(args.phrase_s),
            phrases as u32,
            cfg.stop.clone(),
        );
        let signal = SignalInput::watch(&dir)?;
        let piste = cfg.piste.clone();
        pistes.spawn(async move {
            let outcome = run_agent(cfg, source, Some(signal), Quiet).await;
            cuts.abort();
            let written = logs.await.unwrap_or(0);
            (piste, outcome, written, relay)
        });
    }
    let mut rows = Vec::new();
    while let Some(done) = pistes.join_next().await {
        let (piste, outcome, written, relay) = done.context("a piste's task failed")?;
        rows.push(row(piste, outcome, written, &relay));
        relay.stop();
    }
    rows.sort_by(|a, b| a.piste.cmp(&b.piste));
    stop.store(true, Ordering::Relaxed);
    let mut resources = sampler.await.unwrap_or_default();
    resources.push(sample(started));
    let stats = daemon.core.engine.stats();
    let report = Report {
        frames_sent: rows.iter().map(|r| r.frames_sent).sum(),
        frames_acked: rows.iter().map(|r| r.frames_acked).sum(),
        frames_lost: rows.iter().map(|r| r.frames_lost).sum(),
        verdicts: rows.iter().map(|r| r.verdicts).sum(),
        daemon_frames_received: stats.frames_received.load(Ordering::Relaxed),
        daemon_frames_processed: stats.frames_processed.load(Ordering::Relaxed),
        daemon_drops: stats.drops(),
        pistes: rows,
        resources,
        duration_s: args.duration_s,
        fps: args.fps,
        estimator: args.estimator.clone(),
    };
    daemon.shutdown().await;
    Ok(report)
}

fn row(
    piste: String,
    outcome: Result<AgentOutcome, referee_capture::agent::AgentError>,
    written: u32,
    relay: &Relay,
) -> PisteRow {
    let (stats, verdicts, error) = match outcome {
        Ok(o) => (o.stats, o.verdicts.len(), None),
        Err(e) => (Default::default(), 0, Some(e.to_string())),
    };
    PisteRow {
        piste,
        frames_captured: stats.frames_captured,
        frames_sent: stats.frames_sent,
        frames_acked: stats.frames_acked,
        frames_resent: stats.frames_resent,
        frames_lost: stats.lost,
        reconnects: stats.reconnects,
        verdicts,
        signals_written: written,
        cuts: relay.cuts.load(Ordering::Relaxed),
        cut_ms: relay.cut_ms.load(Ordering::Relaxed),
        datagrams_dropped: relay.dropped.load(Ordering::Relaxed),
        error,
    }
}

fn print_report(r: &Report) {
    println!(
        "{:<9} {:>8} {:>8} {:>8} {:>7} {:>5} {:>6} {:>8} {:>5} {:>7} {:>9}",
        "piste",
        "captured",
        "sent",
        "acked",
        "resent",
        "lost",
        "reconn",
        "verdicts",
        "cuts",
        "cut_s",
        "dropped"
    );
    for p in &r.pistes {
        println!(
            "{:<9} {:>8} {:>8} {:>8} {:>7} {:>5} {:>6} {:>5}/{:<2} {:>5} {:>7.1} {:>9}",
            p.piste,
            p.frames_captured,
            p.frames_sent,
            p.frames_acked,
            p.frames_resent,
            p.frames_lost,
            p.reconnects,
            p.verdicts,
            p.signals_written,
            p.cuts,
            p.cut_ms as f64 / 1e3,
            p.datagrams_dropped
        );
        if let Some(e) = &p.error {
            println!("  {}: {e}", p.piste);
        }
    }
    println!(
        "total: {} frames sent, {} acked, {} lost; {} verdicts; daemon received {}, processed {}, drops {:?}",
        r.frames_sent,
        r.frames_acked,
        r.frames_lost,
        r.verdicts,
        r.daemon_frames_received,
        r.daemon_frames_processed,
        r.daemon_drops
    );
    println!("{:>7} {:>8} {:>8}", "t_s", "rss_mb", "open_fds");
    for s in &r.resources {
        println!("{:>7.1} {:>8.1} {:>8}", s.t_s, s.rss_mb, s.open_fds);
    }
}

/// Writes up to `count` scoring-box logs into `dir`, one every `every`, until `stop`; returns
/// how many.
fn write_signals(
    dir: PathBuf,
    every: Duration,
    count: u32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u32> {
    const LOG: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";
    tokio::spawn(async move {
        let mut written = 0;
        while written < count {
            tokio::time::sleep(every).await;
            if stop.load(Ordering::Relaxed) {
                return written;
            }
            let path = dir.join(format!("phrase-{written:03}_signal.txt"));
            if std::fs::write(&path, LOG).is_ok() {
                written += 1;
            }
        }
        written
    })
}

/// A UDP relay between one agent and the daemon that can cut the path (drop everything).
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    cut_ms: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a loopback port; datagrams from the agent go to `daemon` and back.
    async fn start(daemon: SocketAddr) -> anyhow::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(daemon).await?;
        let addr = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(relay_loop(front, back, cut.clone(), dropped.clone()));
        Ok(Self {
            addr,
            cut,
            cuts: Arc::new(AtomicU64::new(0)),
            cut_ms: Arc::new(AtomicU64::new(0)),
            dropped,
            task,
        })
    }

    /// Cuts the path for a random `min..=max` at random intervals (mean `every_s`).
    fn cut_randomly(
        &self,
        min: Duration,
        max: Duration,
        every_s: f64,
        seed: u64,
    ) -> tokio::task::JoinHandle<()> {
        let (cut, cuts, cut_ms) = (self.cut.clone(), self.cuts.clone(), self.cut_ms.clone());
        tokio::spawn(async move {
            let mut rng = XorShift::new(seed);
            loop {
                let gap = every_s * (0.5 + rng.unit());
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
                let span = min + (max - min).mul_f64(rng.unit());
                cut.store(true, Ordering::Relaxed);
                tokio::time::sleep(span).await;
                cut.store(false, Ordering::Relaxed);
                cuts.fetch_add(1, Ordering::Relaxed);
                cut_ms.fetch_add(span.as_millis() as u64, Ordering::Relaxed);
            }
        })
    }

    fn stop(&self) {
        self.task.abort();
    }
}

async fn relay_loop(
    front: Arc<UdpSocket>,
    back: Arc<UdpSocket>,
    cut: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    let mut agent: Option<SocketAddr> = None;
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        tokio::select! {
            r = front.recv_from(&mut up) => {
                let Ok((n, from)) = r else { return };
                agent = Some(from);
                if cut.load(Ordering::Relaxed) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = back.send(&up[..n]).await;
                }
            }
            r = back.recv(&mut down) => {
                let Ok(n) = r else { continue };
                match agent {
                    Some(to) if !cut.load(Ordering::Relaxed) => {
                        let _ = front.send_to(&down[..n], to).await;
                    }
                    _ => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A small deterministic generator for the cut timings (reproducible runs per seed).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples RSS and open descriptors every few seconds until `stop`.
async fn sample_resources(started: Instant, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        samples.push(sample(started));
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    samples
}

fn sample(started: Instant) -> Sample {
    Sample {
        t_s: started.elapsed().as_secs_f64(),
        rss_mb: rss_kb() as f64 / 1024.0,
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
    }
}

/// Resident set size from /proc/self/status, in KiB (0 where unavailable).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The agents stay quiet: the report comes at the end.
struct Quiet;
impl ProgressSink for Quiet {}
