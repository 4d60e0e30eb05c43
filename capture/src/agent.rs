//! The capture agent's network side: streams frames to the daemon over QUIC, sends the scoring
//! box's signal log, and returns the verdict; reconnects and resumes the session on loss.
//!
//! Protocol (one connection at a time):
//! 1. connect (ALPN `referee/1`), open ONE bidirectional control stream;
//! 2. `Hello{Capture, token}` -> `Welcome` (or `Error`);
//! 3. `SessionStart{resume}` -> `SessionStarted{ack}` (on resume the ack is cumulative: the agent
//!    resends every frame of its ring that the ack does not cover);
//! 4. each frame on its own unidirectional stream; `Ack`s arrive on the control stream;
//! 5. after the last frame: `Signal` -> `SignalAck` -> `Verdict`; then `End` -> `SessionEnded`.
//!
//! In watch mode ([`SignalInput::Watch`]) the agent streams continuously and sends a `Signal`
//! (phrase 0, 1, 2, ...) each time the scoring box writes a new log into the folder.

use crate::encode::{encode, EncodeError, Encoding};
use crate::pacing::{Pacer, Pacing};
use crate::source::{FrameSource, SourceError, SourceInfo};
use referee_transport::messages::{
    Ack, ClientMsg, ErrorCode, ErrorMsg, FrameEncoding, FrameHeader, LiveState, Role, ServerMsg,
    SessionStart, SessionStats, Signal, UndistortHint, VerdictReport,
};
use referee_transport::quinn;
use referee_transport::{read_msg, send_frame, write_msg, TransportError, Trust};
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Everything the agent needs besides its frame source and signal.
#[derive(Clone)]
pub struct AgentConfig {
    /// Daemon's QUIC address.
    pub server: SocketAddr,
    /// Name the server certificate is checked against (CA mode); "localhost" for loopback.
    pub server_name: String,
    /// How the daemon's identity is trusted.
    pub trust: Trust,
    /// Capture token (empty when the daemon runs open on loopback).
    pub token: String,
    /// Session identifier (unique per phrase or bout).
    pub session_id: String,
    /// Piste identifier.
    pub piste: String,
    /// Camera identifier.
    pub camera: String,
    /// Wire encoding of frames.
    pub encoding: Encoding,
    /// Real-time or as fast as possible.
    pub pacing: Pacing,
    /// Frame rate announced to the daemon; `None` = the source's.
    pub fps: Option<f32>,
    /// Fisheye hint sent with the session start.
    pub undistort: Option<UndistortHint>,
    /// Un-acknowledged frames kept for resending after a reconnect.
    pub ring_capacity: usize,
    /// The source is live (a camera): when the ring is full its oldest frame is dropped (and
    /// counted as lost if never acked) instead of pausing capture. Real-time pacing implies it.
    pub live_source: bool,
    /// Frame streams in flight at once.
    pub max_inflight: usize,
    /// Consecutive failed connection attempts before giving up.
    pub max_retries: u32,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Time allowed for the handshake, `Welcome` and `SessionStarted`.
    pub handshake_timeout: Duration,
    /// Time allowed, after the last frame, for the acks to cover every frame; restarts whenever
    /// the daemon acknowledges more frames (a slow but working daemon is waited for).
    pub ack_timeout: Duration,
    /// Time allowed from sending a signal to receiving its verdict; restarts whenever the daemon
    /// acknowledges more frames.
    pub verdict_timeout: Duration,
    /// Largest control message accepted from the daemon.
    pub max_message_bytes: usize,
    /// Set to true to stop capturing (Ctrl-C); the agent then ends the session cleanly.
    pub stop: Arc<AtomicBool>,
    /// Client description sent in `Hello`.
    pub client_name: String,
}

impl AgentConfig {
    /// A configuration with sensible defaults for `server`.
    pub fn new(server: SocketAddr, trust: Trust, session_id: impl Into<String>) -> Self {
        AgentConfig {
            server,
            server_name: "localhost".into(),
            trust,
            token: String::new(),
            session_id: session_id.into(),
            piste: "piste-1".into(),
            camera: "camera-0".into(),
            encoding: Encoding::default(),
            pacing: Pacing::AsFastAsPossible,
            fps: None,
            undistort: None,
            ring_capacity: 512,
            live_source: false,
            max_inflight: 16,
            max_retries: 8,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(20),
            verdict_timeout: Duration::from_secs(60),
            max_message_bytes: 4 << 20,
            stop: Arc::new(AtomicBool::new(false)),
            client_name: format!("referee-capture/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("session_id", &self.session_id)
            .field("piste", &self.piste)
            .field("camera", &self.camera)
            .field("encoding", &self.encoding)
            .field("pacing", &self.pacing)
            .field("ring_capacity", &self.ring_capacity)
            .field("live_source", &self.live_source)
            .field("max_inflight", &self.max_inflight)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// The scoring box's signal log(s).
#[derive(Debug, Clone)]
pub enum SignalInput {
    /// One log, sent after the last frame (the clip is one phrase).
    Once { filename: String, bytes: Vec<u8> },
    /// Watch a folder: each new log closes a phrase (continuous mode).
    Watch { dir: PathBuf, poll: Duration },
}

impl SignalInput {
    /// Reads a signal log file (refusing files above `max_bytes`).
    pub fn from_file(path: &Path, max_bytes: usize) -> Result<Self, AgentError> {
        let bytes = std::fs::read(path).map_err(|e| AgentError::Signal {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if bytes.len() > max_bytes {
            return Err(AgentError::Signal {
                path: path.to_path_buf(),
                reason: format!("{} bytes, more than the {max_bytes} allowed", bytes.len()),
            });
        }
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "signal.txt".into());
        Ok(SignalInput::Once { filename, bytes })
    }

    /// Watches `dir` for new logs (it must exist and be a folder).
    pub fn watch(dir: &Path) -> Result<Self, AgentError> {
        if !dir.is_dir() {
            return Err(AgentError::Signal {
                path: dir.to_path_buf(),
                reason: "not a readable folder".into(),
            });
        }
        Ok(SignalInput::Watch {
            dir: dir.to_path_buf(),
            poll: Duration::from_millis(200),
        })
    }
}

/// Counters of the agent.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AgentStats {
    /// Frames taken from the source.
    pub frames_captured: u64,
    /// Frame streams written (resends included).
    pub frames_sent: u64,
    /// Frames the daemon acknowledged (cumulative).
    pub frames_acked: u64,
    /// Frames resent after a reconnect.
    pub frames_resent: u64,
    /// Image bytes written (resends included).
    pub bytes_sent: u64,
    /// Frames captured per second since the start.
    pub fps: f64,
    /// Megabytes per second written since the start.
    pub mb_per_s: f64,
    /// Un-acked frames held in the ring.
    pub queue: u64,
    /// Daemon's pipeline queue depth (from its last Progress).
    pub server_queue: u32,
    /// Successful reconnects.
    pub reconnects: u32,
    /// Frames never acknowledged because the ring overflowed while the daemon was unreachable.
    pub lost: u64,
    /// Seconds since the start.
    pub elapsed_s: f64,
}

/// What the agent returns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentOutcome {
    /// The (last) verdict, when a signal was sent.
    pub verdict: Option<VerdictReport>,
    /// Every verdict received, in order (several in watch mode).
    pub verdicts: Vec<VerdictReport>,
    /// Agent counters.
    pub stats: AgentStats,
    /// The daemon's counters from `SessionEnded`, if it arrived.
    pub server_stats: Option<SessionStats>,
}

/// Receives progress while the agent runs (a progress bar, log lines, or nothing).
pub trait ProgressSink: Send {
    /// Called about four times a second and on notable changes.
    fn update(&mut self, _stats: &AgentStats) {}
    /// A notable event, as a sentence (connected, reconnecting, signal sent...).
    fn message(&mut self, _text: &str) {}
    /// A verdict arrived.
    fn verdict(&mut self, _verdict: &VerdictReport) {}
    /// Live state from the daemon.
    fn live(&mut self, _live: &LiveState) {}
}

/// A sink that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl ProgressSink for NoProgress {}

impl<S: ProgressSink + ?Sized> ProgressSink for &mut S {
    fn update(&mut self, s: &AgentStats) {
        (**self).update(s)
    }
    fn message(&mut self, t: &str) {
        (**self).message(t)
    }
    fn verdict(&mut self, v: &VerdictReport) {
        (**self).verdict(v)
    }
    fn live(&mut self, l: &LiveState) {
        (**self).live(l)
    }
}

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The frame source failed.
    #[error("frame source: {0}")]
    Source(#[from] SourceError),
    /// A frame could not be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] EncodeError),
    /// A transport failure that retrying cannot cure (TLS identity, version, configuration).
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The daemon refused with a non-recoverable error.
    #[error("the daemon refused: {code:?}: {message}")]
    Server { code: ErrorCode, message: String },
    /// The signal log could not be read.
    #[error("signal log {path}: {reason}")]
    Signal { path: PathBuf, reason: String },
    /// Invalid agent settings.
    #[error("invalid agent setting: {0}")]
    Config(String),
    /// The daemon answered something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The daemon stayed unreachable.
    #[error("gave up after {attempts} failed connection attempts; last error: {last}")]
    GaveUp { attempts: u32, last: String },
    /// No verdict arrived in time.
    #[error("no verdict for phrase {phrase} within {after:?} of sending the signal")]
    VerdictTimeout { phrase: u32, after: Duration },
}

impl AgentError {
    /// Process exit code for this error (2 usage/input, 3 network/TLS, 4 refused by the daemon,
    /// 5 timeout).
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Source(_) | AgentError::Signal { .. } | AgentError::Config(_) => 2,
            AgentError::Encode(_) => 2,
            AgentError::Transport(_) | AgentError::GaveUp { .. } => 3,
            AgentError::Server { .. } | AgentError::Protocol(_) => 4,
            AgentError::VerdictTimeout { .. } => 5,
        }
    }
}

/// An encoded frame ready for the wire.
#[derive(Debug, Clone)]
struct OutFrame {
    frame: u64,
    capture_ts_us: u64,
    encoding: FrameEncoding,
    bytes: Arc<Vec<u8>>,
}

/// Why one connection ended.
enum Failure {
    /// Reconnect and resume (the reason is logged).
    Retry(String),
    /// Stop with this error.
    Fatal(AgentError),
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        if e.is_retryable() {
            Failure::Retry(e.to_string())
        } else {
            Failure::Fatal(AgentError::Transport(e))
        }
    }
}

/// Server errors that concern one frame or a transient condition: logged, not fatal.
fn error_is_per_frame(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::BadFrame | ErrorCode::FrameTooLarge)
}

fn ack_covers(ack: &Ack, n: u64) -> bool {
    n < ack.next_expected || ack.received_ranges.iter().any(|&(a, b)| a <= n && n < b)
}

fn ack_count(ack: &Ack) -> u64 {
    ack.next_expected
        + ack
            .received_ranges
            .iter()
            .filter(|(a, b)| b > a && *a >= ack.next_expected)
            .map(|(a, b)| b - a)
            .sum::<u64>()
}

/// State that survives reconnects.
struct State {
    started: Instant,
    stats: AgentStats,
    /// Un-acked frames, filled by the capture thread.
    ring: Arc<Ring>,
    last_ack: Ack,
    /// Frame number of the next frame never sent yet.
    next_new: u64,
    session_started_once: bool,
    /// Connections that reached `SessionStarted`.
    sessions_started: u32,
    /// Signals sent (phrase, message) still waiting for their verdict.
    pending_signals: Vec<(u32, Signal, Instant)>,
    next_phrase: u32,
    once_signal: Option<(String, Vec<u8>)>,
    once_signal_sent: bool,
    all_sent_at: Option<Instant>,
    /// Last time the daemon acknowledged new frames.
    last_ack_progress: Instant,
    end_sent: bool,
    verdicts: Vec<VerdictReport>,
    server_stats: Option<SessionStats>,
    done: bool,
}

impl State {
    fn apply_ack(&mut self, ack: Ack) {
        let queue = self.ring.apply_ack(&ack);
        let count = ack_count(&ack);
        if count > self.stats.frames_acked {
            self.last_ack_progress = Instant::now();
        }
        self.stats.frames_acked = self.stats.frames_acked.max(count);
        self.last_ack = ack;
        self.stats.queue = queue as u64;
    }

    fn refresh(&mut self) {
        let (captured, queue, lost) = self.ring.counts(&self.last_ack);
        self.stats.frames_captured = captured;
        self.stats.queue = queue as u64;
        self.stats.lost = lost;
        let t = self.started.elapsed().as_secs_f64();
        self.stats.elapsed_s = t;
        if t > 0.0 {
            self.stats.fps = captured as f64 / t;
            self.stats.mb_per_s = self.stats.bytes_sent as f64 / t / 1e6;
        }
    }
}

/// The ring of un-acknowledged frames, shared by the capture thread (which pushes) and the
/// network side (which sends, resends and drops acked frames).
struct Ring {
    inner: std::sync::Mutex<RingInner>,
    /// Wakes the capture thread when space frees up (blocking policy).
    space: std::sync::Condvar,
    /// Wakes the network side when a frame arrives or the source ends.
    arrived: tokio::sync::Notify,
    capacity: usize,
    /// Full ring: evict the oldest frame (live sources) or wait for acks (files, fast mode).
    evict_when_full: bool,
}

#[derive(Default)]
struct RingInner {
    frames: VecDeque<OutFrame>,
    /// Frames evicted before being acknowledged.
    evicted: Vec<u64>,
    captured: u64,
    first_ts_us: Option<u64>,
    done: bool,
    error: Option<AgentError>,
}

impl Ring {
    fn lock(&self) -> std::sync::MutexGuard<'_, RingInner> {
        // A panic elsewhere cannot leave the ring half-updated in a way that matters here.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a frame (capture thread). Returns false if the agent is stopping.
    fn push(&self, f: OutFrame, stop: &AtomicBool) -> bool {
        let mut g = self.lock();
        while g.frames.len() >= self.capacity {
            if self.evict_when_full {
                if let Some(old) = g.frames.pop_front() {
                    g.evicted.push(old.frame);
                }
            } else {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                g = match self.space.wait_timeout(g, Duration::from_millis(100)) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        g.captured += 1;
        g.first_ts_us.get_or_insert(f.capture_ts_us);
        g.frames.push_back(f);
        drop(g);
        self.arrived.notify_one();
        true
    }

    /// Marks the end of the source (capture thread), with the error that ended it, if any.
    fn finish(&self, error: Option<AgentError>) {
        let mut g = self.lock();
        g.done = true;
        g.error = error;
        drop(g);
        self.arrived.notify_one();
    }

    fn apply_ack(&self, ack: &Ack) -> usize {
        let mut g = self.lock();
        g.frames.retain(|f| !ack_covers(ack, f.frame));
        let n = g.frames.len();
        drop(g);
        self.space.notify_all();
        n
    }

    /// (frames captured, frames in the ring, evicted frames the ack does not cover).
    fn counts(&self, ack: &Ack) -> (u64, usize, u64) {
        let g = self.lock();
        let lost = g.evicted.iter().filter(|&&n| !ack_covers(ack, n)).count() as u64;
        (g.captured, g.frames.len(), lost)
    }

    /// Un-acked frames numbered below `next_new` (already sent once), for resending.
    fn unsent_before(&self, next_new: u64) -> VecDeque<OutFrame> {
        self.lock()
            .frames
            .iter()
            .filter(|f| f.frame < next_new)
            .cloned()
            .collect()
    }

    /// The first frame numbered `next_new` or more (never sent yet).
    fn next_new(&self, next_new: u64) -> Option<OutFrame> {
        self.lock()
            .frames
            .iter()
            .find(|f| f.frame >= next_new)
            .cloned()
    }

    /// True once the source ended and every captured frame was handed out.
    fn exhausted(&self, next_new: u64) -> bool {
        let g = self.lock();
        g.done && g.frames.iter().all(|f| f.frame < next_new)
    }

    fn take_error(&self) -> Option<AgentError> {
        self.lock().error.take()
    }

    fn is_empty(&self) -> bool {
        self.lock().frames.is_empty()
    }

    fn first_ts_us(&self) -> Option<u64> {
        self.lock().first_ts_us
    }
}

/// Streams `source` to the daemon, sends `signal`, and returns the verdict and statistics.
pub async fn run_agent(
    cfg: AgentConfig,
    source: Box<dyn FrameSource>,
    signal: Option<SignalInput>,
    mut progress: impl ProgressSink,
) -> Result<AgentOutcome, AgentError> {
    if cfg.ring_capacity == 0 || cfg.max_inflight == 0 {
        return Err(AgentError::Config(
            "ring capacity and frames in flight must be at least 1".into(),
        ));
    }
    if cfg.session_id.is_empty() {
        return Err(AgentError::Config(
            "the session id must not be empty".into(),
        ));
    }
    let info = source.info().clone();
    let pacer = Pacer::new(cfg.pacing).map_err(|e| AgentError::Config(e.to_string()))?;
    let endpoint = referee_transport::client_endpoint_for(&cfg.trust, cfg.server)?;
    let ring = Arc::new(Ring {
        inner: Default::default(),
        space: Default::default(),
        arrived: Default::default(),
        capacity: cfg.ring_capacity,
        evict_when_full: cfg.live_source || matches!(cfg.pacing, Pacing::RealTime { .. }),
    });
    let producer = spawn_producer(source, cfg.encoding, pacer, cfg.stop.clone(), ring.clone());

    let (mut watch_rx, once_signal) = match signal {
        Some(SignalInput::Watch { dir, poll }) => {
            (Some(spawn_watcher(dir, poll, cfg.stop.clone())?), None)
        }
        Some(SignalInput::Once { filename, bytes }) => (None, Some((filename, bytes))),
        None => (None, None),
    };

    let mut st = State {
        started: Instant::now(),
        stats: AgentStats::default(),
        ring,
        last_ack: Ack::default(),
        next_new: 0,
        session_started_once: false,
        sessions_started: 0,
        pending_signals: Vec::new(),
        next_phrase: 0,
        once_signal,
        once_signal_sent: false,
        all_sent_at: None,
        last_ack_progress: Instant::now(),
        end_sent: false,
        verdicts: Vec::new(),
        server_stats: None,
        done: false,
    };

    let mut failures = 0u32;
    let mut delay = cfg.backoff_initial;
    let result = loop {
        let acked_before = st.stats.frames_acked;
        let starts_before = st.sessions_started;
        let outcome = connection(
            &endpoint,
            &cfg,
            &info,
            &mut st,
            &mut watch_rx,
            &mut progress,
        )
        .await;
        match outcome {
            Ok(()) => break Ok(()),
            Err(Failure::Fatal(e)) => break Err(e),
            Err(Failure::Retry(reason)) => {
                // A connection that made progress resets the failure count and the delay.
                if st.stats.frames_acked > acked_before || st.sessions_started > starts_before {
                    failures = 0;
                    delay = cfg.backoff_initial;
                }
                failures += 1;
                if failures > cfg.max_retries {
                    break Err(AgentError::GaveUp {
                        attempts: failures,
                        last: reason,
                    });
                }
                let text = format!(
                    "connection lost ({reason}); reconnecting in {} ms (attempt {failures}/{})",
                    delay.as_millis(),
                    cfg.max_retries
                );
                tracing::warn!("{text}");
                progress.message(&text);
                // The capture thread keeps filling the ring meanwhile (evicting the oldest
                // frames of a live source when it is full).
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(cfg.backoff_max);
            }
        }
    };
    cfg.stop.store(true, Ordering::Relaxed);
    let _ = producer.await;
    endpoint.close(referee_transport::CLOSE_OK, b"agent done");
    // Let the close frame leave (bounded).
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    st.refresh();
    progress.update(&st.stats);
    result?;
    if st.stats.lost > 0 {
        let text = format!(
            "{} frames were lost: the ring of {} frames overflowed while the daemon was unreachable",
            st.stats.lost, cfg.ring_capacity
        );
        tracing::warn!("{text}");
        progress.message(&text);
    }
    Ok(AgentOutcome {
        verdict: st.verdicts.last().cloned(),
        verdicts: st.verdicts,
        stats: st.stats,
        server_stats: st.server_stats,
    })
}

fn spawn_producer(
    mut source: Box<dyn FrameSource>,
    encoding: Encoding,
    mut pacer: Pacer,
    stop: Arc<AtomicBool>,
    ring: Arc<Ring>,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let mut n = 0u64;
        let mut error = None;
        while !stop.load(Ordering::Relaxed) {
            pacer.wait_blocking();
            let frame = match source.next_frame() {
                Ok(None) => break,
                Ok(Some(frame)) => frame,
                Err(e) => {
                    error = Some(AgentError::Source(e));
                    break;
                }
            };
            let (enc, bytes) = match encode(&frame, encoding) {
                Ok(x) => x,
                Err(e) => {
                    error = Some(AgentError::Encode(e));
                    break;
                }
            };
            let out = OutFrame {
                frame: n,
                capture_ts_us: frame.capture_ts_us,
                encoding: enc,
                bytes: Arc::new(bytes),
            };
            if !ring.push(out, &stop) {
                break;
            }
            n += 1;
        }
        ring.finish(error);
    })
}

/// Polls `dir` and yields each new file (present neither at start nor before) once its size is
/// stable across two polls.
fn spawn_watcher(
    dir: PathBuf,
    poll: Duration,
    stop: Arc<AtomicBool>,
) -> Result<mpsc::Receiver<(String, Vec<u8>)>, AgentError> {
    let list = |dir: &Path| -> std::io::Result<Vec<(PathBuf, u64)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let md = e.metadata()?;
            if md.is_file() {
                v.push((e.path(), md.len()));
            }
        }
        v.sort();
        Ok(v)
    };
    let initial = list(&dir).map_err(|e| AgentError::Signal {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let mut seen: HashSet<PathBuf> = initial.into_iter().map(|(p, _)| p).collect();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut sizes: std::collections::HashMap<PathBuf, u64> = Default::default();
        while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
            tokio::time::sleep(poll).await;
            let Ok(files) = list(&dir) else { continue };
            for (path, len) in files {
                if seen.contains(&path) {
                    continue;
                }
                let stable = sizes.get(&path) == Some(&len) && len > 0;
                if !stable {
                    sizes.insert(path, len);
                    continue;
                }
                sizes.remove(&path);
                seen.insert(path.clone());
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let name = path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        if tx.send((name, bytes)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot read new signal log")
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// Reads one message within `timeout`, skipping Progress/Live/Feed/Ack notifications.
async fn expect_reply(
    recv: &mut quinn::RecvStream,
    st: &mut State,
    cfg: &AgentConfig,
    what: &'static str,
) -> Result<ServerMsg, Failure> {
    let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    loop {
        let msg = match tokio::time::timeout_at(
            deadline,
            read_msg::<ServerMsg>(recv, cfg.max_message_bytes),
        )
        .await
        {
            Err(_) => {
                return Err(Failure::Retry(format!(
                    "no {what} within {:?}",
                    cfg.handshake_timeout
                )))
            }
            Ok(r) => r?,
        };
        match msg {
            None => {
                return Err(Failure::Retry(format!(
                    "the daemon closed the control stream before {what}"
                )))
            }
            Some(ServerMsg::Ack { ack, .. }) => st.apply_ack(ack),
            Some(
                ServerMsg::Progress { .. }
                | ServerMsg::Live(_)
                | ServerMsg::Feed(_)
                | ServerMsg::Pong { .. },
            ) => {}
            Some(ServerMsg::Error(e)) => return Err(server_error(e)),
            Some(other) => return Ok(other),
        }
    }
}

fn server_error(e: ErrorMsg) -> Failure {
    if e.recoverable {
        Failure::Retry(format!("daemon error {:?}: {}", e.code, e.message))
    } else {
        Failure::Fatal(AgentError::Server {
            code: e.code,
            message: e.message,
        })
    }
}

/// One connection: handshake, (re)start the session, stream until done or failure.
async fn connection(
    endpoint: &quinn::Endpoint,
    cfg: &AgentConfig,
    info: &SourceInfo,
    st: &mut State,
    watch_rx: &mut Option<mpsc::Receiver<(String, Vec<u8>)>>,
    progress: &mut impl ProgressSink,
) -> Result<(), Failure> {
    let conn = referee_transport::connect_with_timeout(
        endpoint,
        cfg.server,
        &cfg.server_name,
        cfg.handshake_timeout,
    )
    .await?;
    let result = session_on(&conn, cfg, info, st, watch_rx, progress).await;
    match &result {
        Ok(()) => conn.close(referee_transport::CLOSE_OK, b"session ended"),
        Err(Failure::Fatal(_)) => conn.close(referee_transport::CLOSE_PROTOCOL, b"agent stopping"),
        Err(Failure::Retry(_)) => conn.close(referee_transport::CLOSE_OK, b"reconnecting"),
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn session_on(
    conn: &quinn::Connection,
    cfg: &AgentConfig,
    info: &SourceInfo,
    st: &mut State,
    watch_rx: &mut Option<mpsc::Receiver<(String, Vec<u8>)>>,
    progress: &mut impl ProgressSink,
) -> Result<(), Failure> {
    let (mut ctrl, mut recv) = conn.open_bi().await.map_err(TransportError::from)?;
    write_msg(
        &mut ctrl,
        &ClientMsg::Hello {
            role: Role::Capture,
            token: cfg.token.clone(),
            client: cfg.client_name.clone(),
        },
    )
    .await?;
    match expect_reply(&mut recv, st, cfg, "Welcome").await? {
        ServerMsg::Welcome { server, protocol } => {
            tracing::info!(%server, protocol, "connected to the daemon");
        }
        other => {
            return Err(Failure::Fatal(AgentError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))))
        }
    }
    let resume = st.session_started_once;
    write_msg(
        &mut ctrl,
        &ClientMsg::SessionStart(SessionStart {
            session_id: cfg.session_id.clone(),
            fps: cfg.fps.unwrap_or(info.fps),
            width: info.width,
            height: info.height,
            piste: cfg.piste.clone(),
            camera: cfg.camera.clone(),
            undistort: cfg.undistort,
            resume,
        }),
    )
    .await?;
    match expect_reply(&mut recv, st, cfg, "SessionStarted").await? {
        ServerMsg::SessionStarted { ack, .. } => st.apply_ack(ack),
        other => {
            return Err(Failure::Fatal(AgentError::Protocol(format!(
                "expected SessionStarted, got {other:?}"
            ))))
        }
    }
    st.session_started_once = true;
    st.sessions_started += 1;
    let text = if resume {
        format!(
            "resumed session {} at frame {} ({} frames to resend)",
            cfg.session_id,
            st.last_ack.next_expected,
            st.ring.unsent_before(st.next_new).len()
        )
    } else {
        format!("session {} started", cfg.session_id)
    };
    tracing::info!("{text}");
    progress.message(&text);
    if resume {
        st.stats.reconnects += 1;
    }

    // Everything in the ring not covered by the server's ack goes again, oldest first.
    let mut resend: VecDeque<OutFrame> = st.ring.unsent_before(st.next_new);
    // Signals sent before the loss whose verdict never came are sent again (same phrase).
    for (_, sig, at) in st.pending_signals.iter_mut() {
        write_msg(&mut ctrl, &ClientMsg::Signal(sig.clone())).await?;
        *at = Instant::now();
    }
    if st.end_sent {
        write_msg(
            &mut ctrl,
            &ClientMsg::End {
                session_id: cfg.session_id.clone(),
            },
        )
        .await?;
    }

    // Control messages are read by their own task so the select below stays cancel-safe.
    let (msg_tx, mut msg_rx) = mpsc::channel::<Result<Option<ServerMsg>, TransportError>>(64);
    let max_msg = cfg.max_message_bytes;
    let reader = tokio::spawn(async move {
        loop {
            let r = read_msg::<ServerMsg>(&mut recv, max_msg).await;
            let stop = !matches!(r, Ok(Some(_)));
            if msg_tx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    let _reader_guard = AbortOnDrop(reader);

    let mut sends: tokio::task::JoinSet<Result<u64, TransportError>> = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let session_id = cfg.session_id.clone();

    let spawn_send = |sends: &mut tokio::task::JoinSet<Result<u64, TransportError>>,
                      f: OutFrame| {
        let conn = conn.clone();
        let header = FrameHeader {
            session_id: session_id.clone(),
            frame: f.frame,
            capture_ts_us: f.capture_ts_us,
            encoding: f.encoding,
            len: f.bytes.len() as u32,
        };
        sends.spawn(async move {
            send_frame(&conn, &header, &f.bytes).await?;
            Ok(f.bytes.len() as u64)
        });
    };

    loop {
        // Top up the in-flight sends from the resend queue first.
        while sends.len() < cfg.max_inflight {
            let Some(f) = resend.pop_front() else { break };
            // Frames acked meanwhile (ranges) need not go again.
            if ack_covers(&st.last_ack, f.frame) {
                continue;
            }
            st.stats.frames_resent += 1;
            spawn_send(&mut sends, f);
        }
        if let Some(e) = st.ring.take_error() {
            return Err(Failure::Fatal(e));
        }
        // New frames go out once the resend queue is empty, up to `max_inflight` at a time.
        if resend.is_empty() && sends.len() < cfg.max_inflight {
            if let Some(f) = st.ring.next_new(st.next_new) {
                st.next_new = f.frame + 1;
                spawn_send(&mut sends, f);
                continue;
            }
        }
        let source_done = st.ring.exhausted(st.next_new);

        // End-of-stream phases, once every frame has been written.
        if source_done && resend.is_empty() && sends.is_empty() {
            let now = Instant::now();
            let all_sent_at = *st.all_sent_at.get_or_insert(now);
            if let (Some((filename, bytes)), false) = (&st.once_signal, st.once_signal_sent) {
                let sig = Signal {
                    session_id: cfg.session_id.clone(),
                    phrase: st.next_phrase,
                    filename: filename.clone(),
                    bytes: bytes.clone(),
                    phrase_start_us: st.ring.first_ts_us(),
                };
                write_msg(&mut ctrl, &ClientMsg::Signal(sig.clone())).await?;
                st.pending_signals.push((st.next_phrase, sig, now));
                st.next_phrase += 1;
                st.once_signal_sent = true;
                progress.message(&format!(
                    "all {} frames sent; signal {filename} sent, waiting for the verdict",
                    st.next_new
                ));
            }
            let acks_settled = st.ring.is_empty()
                || now.duration_since(all_sent_at.max(st.last_ack_progress)) > cfg.ack_timeout;
            if !st.end_sent && st.pending_signals.is_empty() && acks_settled {
                if !st.ring.is_empty() {
                    tracing::warn!(
                        unacked = st.ring.counts(&st.last_ack).1,
                        "ending although some frames were never acknowledged"
                    );
                }
                write_msg(
                    &mut ctrl,
                    &ClientMsg::End {
                        session_id: cfg.session_id.clone(),
                    },
                )
                .await?;
                st.end_sent = true;
            }
        }
        if st.done {
            let _ = ctrl.finish();
            return Ok(());
        }

        tokio::select! {
            biased;
            m = msg_rx.recv() => {
                let msg = match m {
                    None => return Err(Failure::Retry("control stream reader stopped".into())),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(None)) => {
                        if st.done { return Ok(()); }
                        return Err(Failure::Retry("the daemon closed the control stream".into()));
                    }
                    Some(Ok(Some(m))) => m,
                };
                handle_msg(msg, cfg, st, progress)?;
            }
            r = sends.join_next(), if !sends.is_empty() => {
                match r {
                    Some(Ok(Ok(bytes))) => {
                        st.stats.frames_sent += 1;
                        st.stats.bytes_sent += bytes;
                    }
                    Some(Ok(Err(e))) => return Err(e.into()),
                    Some(Err(join)) => return Err(Failure::Retry(format!("send task failed: {join}"))),
                    None => {}
                }
            }
            _ = st.ring.arrived.notified(), if !source_done => {}
            sig = recv_opt(watch_rx) => {
                match sig {
                    Some((filename, bytes)) => {
                        let phrase = st.next_phrase;
                        let sig = Signal {
                            session_id: cfg.session_id.clone(),
                            phrase,
                            filename: filename.clone(),
                            bytes,
                            phrase_start_us: None,
                        };
                        write_msg(&mut ctrl, &ClientMsg::Signal(sig.clone())).await?;
                        st.pending_signals.push((phrase, sig, Instant::now()));
                        st.next_phrase += 1;
                        progress.message(&format!("new signal log {filename}: phrase {phrase} sent"));
                    }
                    None => *watch_rx = None,
                }
            }
            e = conn.closed() => {
                if st.done { return Ok(()); }
                return Err(TransportError::from(e).into());
            }
            _ = tick.tick() => {
                st.refresh();
                progress.update(&st.stats);
                if let Some((phrase, _, at)) = st.pending_signals.first() {
                    if at.max(&st.last_ack_progress).elapsed() > cfg.verdict_timeout {
                        return Err(Failure::Fatal(AgentError::VerdictTimeout { phrase: *phrase, after: cfg.verdict_timeout }));
                    }
                }
            }
        }
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn handle_msg(
    msg: ServerMsg,
    cfg: &AgentConfig,
    st: &mut State,
    progress: &mut impl ProgressSink,
) -> Result<(), Failure> {
    match msg {
        ServerMsg::Ack { ack, .. } | ServerMsg::SessionStarted { ack, .. } => st.apply_ack(ack),
        ServerMsg::SignalAck { phrase, .. } => {
            tracing::debug!(phrase, "signal acknowledged");
        }
        ServerMsg::Progress { queue_depth, .. } => st.stats.server_queue = queue_depth,
        ServerMsg::Live(l) => progress.live(&l),
        ServerMsg::Verdict(v) => {
            st.pending_signals.retain(|(p, _, _)| *p != v.phrase);
            // A signal resent after a reconnect may be answered twice: keep one per phrase.
            match st.verdicts.iter_mut().find(|x| x.phrase == v.phrase) {
                Some(old) => *old = v,
                None => {
                    progress.verdict(&v);
                    st.verdicts.push(v);
                }
            }
        }
        ServerMsg::SessionEnded { stats, .. } => {
            if !st.end_sent {
                return Err(Failure::Fatal(AgentError::Protocol(format!(
                    "the daemon ended session {} before the agent did (it may have timed out)",
                    cfg.session_id
                ))));
            }
            st.server_stats = Some(stats);
            st.done = true;
        }
        ServerMsg::Error(e) if error_is_per_frame(e.code) => {
            let text = format!("daemon rejected a frame: {:?}: {}", e.code, e.message);
            tracing::warn!("{text}");
            progress.message(&text);
        }
        ServerMsg::Error(e) => return Err(server_error(e)),
        ServerMsg::Welcome { .. } => {
            return Err(Failure::Fatal(AgentError::Protocol(
                "unexpected second Welcome".into(),
            )))
        }
        ServerMsg::Pong { .. } | ServerMsg::Feed(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(next: u64, ranges: &[(u64, u64)]) -> Ack {
        Ack {
            next_expected: next,
            received_ranges: ranges.to_vec(),
        }
    }

    #[test]
    fn ack_coverage_and_count() {
        let a = ack(5, &[(7, 9), (12, 13)]);
        let covered: Vec<u64> = (0..15).filter(|&n| ack_covers(&a, n)).collect();
        assert_eq!(covered, [0, 1, 2, 3, 4, 7, 8, 12]);
        assert_eq!(ack_count(&a), 8);
        // Ranges below next_expected or empty do not count twice.
        assert_eq!(ack_count(&ack(5, &[(2, 4), (6, 6)])), 5);
    }

    fn frame(n: u64) -> OutFrame {
        OutFrame {
            frame: n,
            capture_ts_us: 1000 + n,
            encoding: FrameEncoding::Jpeg,
            bytes: Arc::new(vec![0; 4]),
        }
    }

    fn ring(capacity: usize, evict: bool) -> Ring {
        Ring {
            inner: Default::default(),
            space: Default::default(),
            arrived: Default::default(),
            capacity,
            evict_when_full: evict,
        }
    }

    #[test]
    fn ring_evicts_oldest_and_counts_unacked_evictions_as_lost() {
        let r = ring(3, true);
        let stop = AtomicBool::new(false);
        for n in 0..5 {
            assert!(r.push(frame(n), &stop));
        }
        // Frames 0 and 1 were evicted; only 2..5 remain.
        assert_eq!(r.counts(&Ack::default()), (5, 3, 2));
        // If the daemon did receive frame 0 after all, it is not lost.
        assert_eq!(r.counts(&ack(1, &[])), (5, 3, 1));
        assert_eq!(r.first_ts_us(), Some(1000));
        assert_eq!(r.next_new(0).map(|f| f.frame), Some(2));
        assert_eq!(r.unsent_before(4).len(), 2);
        assert_eq!(r.apply_ack(&ack(4, &[])), 1);
        assert!(!r.exhausted(5));
        r.finish(None);
        assert!(r.exhausted(5));
        assert!(!r.exhausted(4));
    }

    #[test]
    fn blocking_ring_waits_for_acks_and_gives_up_on_stop() {
        let r = Arc::new(ring(2, false));
        let stop = Arc::new(AtomicBool::new(false));
        assert!(r.push(frame(0), &stop));
        assert!(r.push(frame(1), &stop));
        let (r2, stop2) = (r.clone(), stop.clone());
        let t = std::thread::spawn(move || r2.push(frame(2), &stop2));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "a full blocking ring waits");
        r.apply_ack(&ack(1, &[]));
        assert!(t.join().unwrap(), "space freed by an ack lets the frame in");
        let (r3, stop3) = (r.clone(), stop.clone());
        let t = std::thread::spawn(move || r3.push(frame(3), &stop3));
        stop.store(true, Ordering::Relaxed);
        assert!(!t.join().unwrap(), "stop releases a waiting capture thread");
    }
}
