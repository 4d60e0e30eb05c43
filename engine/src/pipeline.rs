//! The frame pipeline: threads joined by bounded crossbeam channels.
//!
//! ```text
//! network (tokio) --permit--> decode --> rectify --> pose (batched) --> track + referee --> publish
//!                                                                           ^
//!                                       control (signal / end / abort) -----+
//! ```
//! A frame enters only with a [`FramePermit`]. Permits bound the number of frames inside the
//! pipeline, so every channel send below has room and never blocks a runtime thread; when
//! permits run out the network side stops reading streams and QUIC flow control pushes back on
//! the agent. A permit is released when its frame leaves the pose stage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use referee_models::{Person, PoseEstimator, PreparedFrame};
use referee_transport::messages::{
    ErrorCode, ErrorMsg, FeedEvent, FrameEncoding, FrameHeader, ServerMsg, SessionStart, Signal,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, info_span, warn};

use crate::decode::{decode_frame, RgbImage};
use crate::feed::FeedHub;
use crate::rectify::{RectifyParams, RemapCache};
use crate::session::SessionShared;
use crate::stats::{DropReason, EngineStats, Stage};

/// Settings of the engine core (the daemon maps its configuration onto these).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Frames allowed inside the pipeline at once (the backpressure window).
    pub queue_depth: usize,
    /// Frames the per-session reorder buffer may hold while waiting for a gap to fill.
    pub reorder_window: usize,
    /// Largest pose batch (frames waiting from several sessions are inferred together).
    pub pose_batch: usize,
    /// Concurrent sessions allowed.
    pub max_sessions: usize,
    /// Memory budget for session buffers, in bytes.
    pub max_memory_bytes: u64,
    /// Frames allowed per session.
    pub max_frames_per_session: u64,
    /// Largest decoded image accepted, in pixels.
    pub max_frame_pixels: usize,
    /// How long to wait after a signal for frames still in flight before deciding anyway.
    pub signal_wait: Duration,
    /// Sessions idle this long are closed and their resources released.
    pub session_timeout: Duration,
    /// Where per-phrase artifacts go; `None` writes none.
    pub output_dir: Option<PathBuf>,
    /// Default rectification (fisheye, piste band, pose input size).
    pub rectify: RectifyParams,
    /// True to let the agent's undistort hint override the configured fisheye settings.
    pub honour_undistort_hint: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_depth: 8,
            reorder_window: 32,
            pose_batch: 2,
            max_sessions: 4,
            max_memory_bytes: 1024 * 1024 * 1024,
            max_frames_per_session: 100_000,
            max_frame_pixels: 4096 * 4096,
            signal_wait: Duration::from_secs(3),
            session_timeout: Duration::from_secs(60),
            output_dir: None,
            rectify: RectifyParams {
                fisheye_enabled: false,
                strength: 0.0,
                balance: 0.0,
                band: (0.0, 1.0),
                target: (640, 384),
            },
            honour_undistort_hint: false,
        }
    }
}

/// Why the engine refused a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "too many sessions: {active} active, the limit is {max} (REFEREE_MAX_STREAMING_SESSIONS)"
    )]
    TooManySessions { active: usize, max: usize },
    #[error("memory budget exceeded: a {width}x{height} session needs ~{needed_mb} MB, {free_mb} MB of {max_mb} MB are free (REFEREE_MAX_STREAMING_MEMORY_MB)")]
    MemoryBudget {
        width: u32,
        height: u32,
        needed_mb: u64,
        free_mb: u64,
        max_mb: u64,
    },
    #[error("session {0:?} already exists (send resume: true to continue it)")]
    SessionExists(String),
    #[error("unknown session {0:?}")]
    UnknownSession(String),
    #[error("invalid session start: {0}")]
    BadSessionStart(String),
    #[error("session {session:?} reached its limit of {max} frames")]
    TooManyFrames { session: String, max: u64 },
    #[error("frame {frame} of session {session:?} claims {len} bytes but {actual} arrived")]
    LengthMismatch {
        session: String,
        frame: u64,
        len: u32,
        actual: usize,
    },
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl EngineError {
    /// The protocol error for this refusal.
    pub fn to_msg(&self, session_id: Option<&str>) -> ErrorMsg {
        let (code, recoverable) = match self {
            EngineError::TooManySessions { .. } => (ErrorCode::TooManySessions, true),
            EngineError::MemoryBudget { .. } => (ErrorCode::MemoryBudget, true),
            EngineError::SessionExists(_) => (ErrorCode::SessionExists, false),
            EngineError::UnknownSession(_) => (ErrorCode::UnknownSession, false),
            EngineError::BadSessionStart(_) => (ErrorCode::ProtocolViolation, false),
            EngineError::TooManyFrames { .. } => (ErrorCode::Overloaded, false),
            EngineError::LengthMismatch { .. } => (ErrorCode::BadFrame, true),
            EngineError::ShuttingDown => (ErrorCode::Overloaded, true),
        };
        ErrorMsg {
            code,
            message: self.to_string(),
            recoverable,
            session_id: session_id.map(str::to_string),
        }
    }
}

/// The right to put one frame into the pipeline.
pub struct FramePermit(OwnedSemaphorePermit);

/// What happened to a submitted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The frame entered the pipeline.
    Accepted,
    /// The frame had already been received; this copy was discarded.
    Duplicate,
}

struct FrameJob {
    session: Arc<SessionShared>,
    frame: u64,
    capture_ts_us: u64,
    encoding: FrameEncoding,
    bytes: Arc<Vec<u8>>,
    permit: OwnedSemaphorePermit,
    admitted_at: Instant,
}

impl FrameJob {
    /// The frame as a failure for the track stage (which must still learn that it arrived),
    /// releasing its pipeline permit.
    fn failed(self) -> PosedFrame {
        PosedFrame {
            session: self.session,
            frame: self.frame,
            capture_ts_us: self.capture_ts_us,
            encoding: self.encoding,
            bytes: self.bytes,
            persons: None,
            rectified: (0, 0),
            admitted_at: self.admitted_at,
        }
    }
}

struct DecodedJob {
    job: FrameJob,
    image: RgbImage,
}

struct PreparedJob {
    job: FrameJob,
    prepared: PreparedFrame,
    rectified: (usize, usize),
}

/// A frame after pose (or after failing to decode), on its way to the tracker.
pub(crate) struct PosedFrame {
    pub session: Arc<SessionShared>,
    pub frame: u64,
    pub capture_ts_us: u64,
    pub encoding: FrameEncoding,
    pub bytes: Arc<Vec<u8>>,
    /// None when the frame could not be decoded.
    pub persons: Option<Vec<Person>>,
    pub rectified: (usize, usize),
    pub admitted_at: Instant,
}

/// Session events for the track thread.
pub(crate) enum Control {
    Signal {
        session: Arc<SessionShared>,
        signal: Signal,
        received_at: Instant,
    },
    End {
        session: Arc<SessionShared>,
        reason: EndReason,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Ended,
    Aborted,
    TimedOut,
}

pub(crate) struct Shared {
    pub cfg: EngineConfig,
    pub sessions: Mutex<HashMap<String, Arc<SessionShared>>>,
    pub feed: FeedHub,
    pub stats: EngineStats,
    pub shutdown: AtomicBool,
    pub verdicts: AtomicU64,
    /// Artifact writers still running; joined at shutdown so no artifact is cut short.
    pub artifact_writers: Mutex<Vec<JoinHandle<()>>>,
}

/// The running engine: owns the stage threads; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    inputs: Arc<Inputs>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// The pipeline's input senders; taken (dropped) at shutdown so the stages drain and exit.
struct Inputs {
    decode: Mutex<Option<Sender<FrameJob>>>,
    control: Mutex<Option<Sender<Control>>>,
}

impl Engine {
    /// Starts the stage threads with `estimator` as the pose stage.
    pub fn start(cfg: EngineConfig, estimator: Box<dyn PoseEstimator>) -> Self {
        Self::start_workers(cfg, vec![estimator])
    }

    /// Starts the stage threads with one pose worker per estimator: each worker infers whole
    /// frames taken from the same queue, and the track stage puts them back in order. Several
    /// single-threaded workers give the most frames per second; one worker whose estimator
    /// splits each frame over the cores gives the lowest latency per frame.
    pub fn start_workers(cfg: EngineConfig, estimators: Vec<Box<dyn PoseEstimator>>) -> Self {
        if estimators.is_empty() {
            warn!("no pose worker given: frames will wait in the pipeline");
        }
        let depth = cfg.queue_depth.max(1);
        let shared = Arc::new(Shared {
            cfg,
            sessions: Mutex::new(HashMap::new()),
            feed: FeedHub::new(crate::feed::DEFAULT_SUBSCRIBER_BUFFER),
            stats: EngineStats::default(),
            shutdown: AtomicBool::new(false),
            verdicts: AtomicU64::new(0),
            artifact_writers: Mutex::new(Vec::new()),
        });
        // Every channel can hold every permitted frame, so sends never block.
        let (decode_tx, decode_rx) = bounded::<FrameJob>(depth);
        let (rectify_tx, rectify_rx) = bounded::<DecodedJob>(depth);
        let (pose_tx, pose_rx) = bounded::<PreparedJob>(depth);
        let (track_tx, track_rx) = bounded::<PosedFrame>(depth * 2);
        let (control_tx, control_rx) = unbounded::<Control>();
        shared
            .stats
            .register_queue(Stage::Decode, decode_rx.clone());
        shared
            .stats
            .register_queue(Stage::Rectify, rectify_rx.clone());
        shared.stats.register_queue(Stage::Pose, pose_rx.clone());
        shared.stats.register_queue(Stage::Track, track_rx.clone());

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .expect("the OS refused to start a pipeline thread")
        };
        {
            let (shared, track_tx) = (shared.clone(), track_tx.clone());
            threads.push(spawn(
                "referee-decode",
                Box::new(move || decode_stage(&shared, decode_rx, rectify_tx, track_tx)),
            ));
        }
        {
            let (shared, track_tx) = (shared.clone(), track_tx.clone());
            threads.push(spawn(
                "referee-rectify",
                Box::new(move || rectify_stage(&shared, rectify_rx, pose_tx, track_tx)),
            ));
        }
        for (i, estimator) in estimators.into_iter().enumerate() {
            let (shared, pose_rx, track_tx) = (shared.clone(), pose_rx.clone(), track_tx.clone());
            threads.push(spawn(
                &format!("referee-pose-{i}"),
                Box::new(move || pose_stage(&shared, estimator, pose_rx, track_tx)),
            ));
        }
        drop((pose_rx, track_tx));
        {
            let shared = shared.clone();
            threads.push(spawn(
                "referee-track",
                Box::new(move || crate::phrase::track_stage(&shared, track_rx, control_rx)),
            ));
        }
        let engine = Self {
            shared,
            permits: Arc::new(Semaphore::new(depth)),
            inputs: Arc::new(Inputs {
                decode: Mutex::new(Some(decode_tx)),
                control: Mutex::new(Some(control_tx)),
            }),
            threads: Arc::new(Mutex::new(threads)),
        };
        engine.spawn_janitor();
        engine
    }

    fn spawn_janitor(&self) {
        let engine = self.clone();
        let handle = std::thread::Builder::new()
            .name("referee-janitor".into())
            .spawn(move || {
                let tick = Duration::from_millis(200);
                while !engine.shared.shutdown.load(Ordering::Acquire) {
                    std::thread::sleep(tick);
                    engine.expire_idle_sessions();
                }
            })
            .expect("the OS refused to start the janitor thread");
        self.threads.lock().push(handle);
    }

    /// Closes sessions idle for longer than the session timeout; returns how many.
    pub fn expire_idle_sessions(&self) -> usize {
        let timeout = self.shared.cfg.session_timeout;
        let stale: Vec<Arc<SessionShared>> = self
            .shared
            .sessions
            .lock()
            .values()
            .filter(|s| s.idle_for() > timeout)
            .cloned()
            .collect();
        for s in &stale {
            warn!(
                session = s.id(),
                idle_s = s.idle_for().as_secs_f32(),
                "session timed out"
            );
            s.send(ServerMsg::Error(ErrorMsg {
                code: ErrorCode::Timeout,
                message: format!(
                    "session {:?} was idle for more than {} s and has been closed",
                    s.id(),
                    timeout.as_secs()
                ),
                recoverable: false,
                session_id: Some(s.id().to_string()),
            }));
            self.finish(s, EndReason::TimedOut);
        }
        stale.len()
    }

    /// The feed hub (live states and verdicts).
    pub fn feed(&self) -> &FeedHub {
        &self.shared.feed
    }

    /// Engine-wide statistics.
    pub fn stats(&self) -> &EngineStats {
        &self.shared.stats
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.cfg
    }

    /// Verdicts sent so far.
    pub fn verdicts(&self) -> u64 {
        self.shared.verdicts.load(Ordering::Relaxed)
    }

    /// Active sessions.
    pub fn sessions(&self) -> Vec<Arc<SessionShared>> {
        self.shared.sessions.lock().values().cloned().collect()
    }

    /// Frames currently inside the pipeline.
    pub fn in_flight(&self) -> usize {
        self.shared.cfg.queue_depth.max(1) - self.permits.available_permits()
    }

    /// Opens a session (or re-attaches to it when `start.resume` is set) and routes the agent's
    /// messages to `outbox`. Returns the session and its cumulative ack.
    pub fn open_session(
        &self,
        start: SessionStart,
        outbox: mpsc::UnboundedSender<ServerMsg>,
    ) -> Result<Arc<SessionShared>, EngineError> {
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        validate_start(&start)?;
        let mut sessions = self.shared.sessions.lock();
        if let Some(existing) = sessions.get(&start.session_id) {
            if start.resume {
                existing.attach(outbox);
                info!(session = existing.id(), "session resumed");
                return Ok(existing.clone());
            }
            return Err(EngineError::SessionExists(start.session_id));
        }
        let max = self.shared.cfg.max_sessions;
        if sessions.len() >= max {
            self.shared.stats.count_refusal("too_many_sessions");
            return Err(EngineError::TooManySessions {
                active: sessions.len(),
                max,
            });
        }
        let needed = session_memory_estimate(&start, &self.shared.cfg);
        let used: u64 = sessions
            .values()
            .map(|s| session_memory_estimate(&s.start, &self.shared.cfg))
            .sum();
        let budget = self.shared.cfg.max_memory_bytes;
        if used + needed > budget {
            self.shared.stats.count_refusal("memory_budget");
            return Err(EngineError::MemoryBudget {
                width: start.width,
                height: start.height,
                needed_mb: needed.div_ceil(1 << 20),
                free_mb: budget.saturating_sub(used) >> 20,
                max_mb: budget >> 20,
            });
        }
        let mut rectify = self.shared.cfg.rectify;
        if let (true, Some(hint)) = (self.shared.cfg.honour_undistort_hint, start.undistort) {
            rectify.fisheye_enabled = hint.enabled;
            rectify.strength = hint.strength;
            rectify.balance = hint.balance;
        }
        let session = Arc::new(SessionShared::new(start, rectify));
        session.attach(outbox);
        sessions.insert(session.id().to_string(), session.clone());
        drop(sessions);
        metrics::gauge!("referee_sessions_active").increment(1.0);
        metrics::counter!("referee_sessions_total").increment(1);
        info!(
            session = session.id(),
            piste = session.piste(),
            "session opened"
        );
        self.shared.feed.publish(FeedEvent::SessionStarted {
            session_id: session.id().to_string(),
            piste: session.piste().to_string(),
        });
        Ok(session)
    }

    /// Looks up an open session.
    pub fn session(&self, id: &str) -> Result<Arc<SessionShared>, EngineError> {
        self.shared
            .sessions
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::UnknownSession(id.to_string()))
    }

    /// Waits for room in the pipeline; the permit is consumed by [`Engine::submit`].
    pub async fn reserve(&self) -> Result<FramePermit, EngineError> {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map(FramePermit)
            .map_err(|_| EngineError::ShuttingDown)
    }

    /// Puts a frame into the pipeline. Never blocks: the permit guarantees room.
    pub fn submit(
        &self,
        permit: FramePermit,
        header: FrameHeader,
        bytes: Vec<u8>,
    ) -> Result<Admission, EngineError> {
        let session = self.session(&header.session_id)?;
        if bytes.len() != header.len as usize {
            session.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.stats.count_drop(DropReason::BadLength);
            return Err(EngineError::LengthMismatch {
                session: header.session_id,
                frame: header.frame,
                len: header.len,
                actual: bytes.len(),
            });
        }
        session.touch();
        let max = self.shared.cfg.max_frames_per_session;
        {
            let mut acks = session.acks.lock();
            if header.frame >= max {
                session.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.stats.count_drop(DropReason::FrameLimit);
                return Err(EngineError::TooManyFrames {
                    session: header.session_id,
                    max,
                });
            }
            if !acks.insert(header.frame) {
                session.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                self.shared.stats.count_drop(DropReason::Duplicate);
                return Ok(Admission::Duplicate);
            }
        }
        session.counters.received.fetch_add(1, Ordering::Relaxed);
        session
            .counters
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.shared
            .stats
            .frames_received
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("referee_frames_received_total").increment(1);
        metrics::counter!("referee_frame_bytes_total").increment(bytes.len() as u64);
        let job = FrameJob {
            session,
            frame: header.frame,
            capture_ts_us: header.capture_ts_us,
            encoding: header.encoding,
            bytes: Arc::new(bytes),
            permit: permit.0,
            admitted_at: Instant::now(),
        };
        match self.inputs.decode.lock().as_ref() {
            Some(tx) => tx.try_send(job).map_err(|_| EngineError::ShuttingDown)?,
            None => return Err(EngineError::ShuttingDown),
        }
        Ok(Admission::Accepted)
    }

    /// Hands the phrase's signal log to the referee; the verdict goes to the session's outbox and
    /// the feed as soon as the frames still in flight up to the phrase's end are processed.
    pub fn signal(&self, signal: Signal, received_at: Instant) -> Result<(), EngineError> {
        let session = self.session(&signal.session_id)?;
        session.touch();
        self.send_control(Control::Signal {
            session,
            signal,
            received_at,
        })
    }

    /// Ends a session normally: a pending verdict is decided first, then resources are released.
    pub fn end_session(&self, id: &str) -> Result<(), EngineError> {
        let session = self.session(id)?;
        self.finish(&session, EndReason::Ended);
        Ok(())
    }

    /// Aborts a session: no verdict; resources are released.
    pub fn abort_session(&self, id: &str) -> Result<(), EngineError> {
        let session = self.session(id)?;
        self.finish(&session, EndReason::Aborted);
        Ok(())
    }

    fn finish(&self, session: &Arc<SessionShared>, reason: EndReason) {
        let removed = self.shared.sessions.lock().remove(session.id()).is_some();
        if !removed {
            return;
        }
        metrics::gauge!("referee_sessions_active").decrement(1.0);
        if reason != EndReason::Ended {
            session.close();
        }
        let _ = self.send_control(Control::End {
            session: session.clone(),
            reason,
        });
    }

    fn send_control(&self, msg: Control) -> Result<(), EngineError> {
        match self.inputs.control.lock().as_ref() {
            Some(tx) => tx.send(msg).map_err(|_| EngineError::ShuttingDown),
            None => Err(EngineError::ShuttingDown),
        }
    }

    /// Stops accepting work, lets the stages drain and joins their threads.
    pub fn shutdown(&self) {
        if self.shared.shutdown.swap(true, Ordering::AcqRel) {
            return;
        }
        self.permits.close();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        // Dropping the input senders lets each stage see its input close after draining.
        self.inputs.decode.lock().take();
        self.inputs.control.lock().take();
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        let writers: Vec<_> = std::mem::take(&mut *self.shared.artifact_writers.lock());
        for w in writers {
            let _ = w.join();
        }
    }
}

fn validate_start(start: &SessionStart) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::BadSessionStart(m));
    if start.session_id.is_empty() || start.session_id.len() > 128 {
        return bad("session_id must be 1-128 characters".into());
    }
    if !start
        .session_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return bad(format!(
            "session_id {:?} may only contain letters, digits, '-', '_' and '.'",
            start.session_id
        ));
    }
    if !(start.fps.is_finite() && start.fps > 0.0 && start.fps <= 1000.0) {
        return bad(format!("fps {} must be in (0, 1000]", start.fps));
    }
    if start.width == 0 || start.height == 0 || start.width > 8192 || start.height > 8192 {
        return bad(format!(
            "frame size {}x{} must be between 1x1 and 8192x8192",
            start.width, start.height
        ));
    }
    Ok(())
}

/// Bytes a session may hold: the reorder window of decoded poses is small; the image ring kept
/// for the overlay artifact (two seconds of encoded frames) and one decoded frame dominate.
fn session_memory_estimate(start: &SessionStart, cfg: &EngineConfig) -> u64 {
    let pixels = start.width as u64 * start.height as u64;
    let ring = crate::phrase::image_ring_len(start.fps) as u64 * pixels / 4;
    let working = pixels * 3 * 2 + (cfg.rectify.target.0 * cfg.rectify.target.1 * 12) as u64;
    ring + working
}

fn decode_stage(
    shared: &Shared,
    rx: Receiver<FrameJob>,
    tx: Sender<DecodedJob>,
    failed_tx: Sender<PosedFrame>,
) {
    for job in rx {
        if job.session.is_closed() {
            continue;
        }
        let _span = info_span!("decode", session = job.session.id(), frame = job.frame).entered();
        let started = Instant::now();
        match decode_frame(job.encoding, &job.bytes, shared.cfg.max_frame_pixels) {
            Ok(image) => {
                shared.stats.record_stage(Stage::Decode, started.elapsed());
                if tx.send(DecodedJob { job, image }).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "bad frame bytes; counted, session continues");
                job.session
                    .counters
                    .bad_frames
                    .fetch_add(1, Ordering::Relaxed);
                shared.stats.count_drop(DropReason::BadImage);
                let failed = job.failed();
                if failed_tx.send(failed).is_err() {
                    return;
                }
            }
        }
    }
}

fn rectify_stage(
    shared: &Shared,
    rx: Receiver<DecodedJob>,
    tx: Sender<PreparedJob>,
    failed_tx: Sender<PosedFrame>,
) {
    // One remap table per camera geometry, shared by every session that uses it.
    let mut tables = RemapCache::new(16);
    for DecodedJob { job, image } in rx {
        if job.session.is_closed() {
            continue;
        }
        let _span = info_span!("rectify", session = job.session.id(), frame = job.frame).entered();
        let started = Instant::now();
        let prepared = tables
            .get(image.width, image.height, &job.session.rectify)
            .and_then(|table| Ok((table.prepare(&image)?, table.rectified_size())));
        let (prepared, rectified) = match prepared {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot rectify this frame; dropped");
                job.session.counters.dropped.fetch_add(1, Ordering::Relaxed);
                shared.stats.count_drop(DropReason::Geometry);
                if failed_tx.send(job.failed()).is_err() {
                    return;
                }
                continue;
            }
        };
        shared.stats.record_stage(Stage::Rectify, started.elapsed());
        if tx
            .send(PreparedJob {
                job,
                prepared,
                rectified,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Runs one blank frame through the model so buffers, packed weights and worker threads are
/// ready before the first real frame (the first inference is otherwise several times slower).
fn warm_up(estimator: &mut dyn PoseEstimator) {
    let (w, h) = estimator.input_size();
    let blank = PreparedFrame {
        width: w,
        height: h,
        chw: vec![114.0 / 255.0; 3 * w * h],
        letterbox: referee_models::Letterbox {
            scale: 1.0,
            pad_x: 0.0,
            pad_y: 0.0,
            offset_x: 0.0,
            offset_y: 0.0,
        },
    };
    let started = Instant::now();
    match estimator.estimate(&[blank]) {
        Ok(_) => info!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            "pose model warmed up"
        ),
        Err(e) => warn!(error = %e, "pose warm-up failed"),
    }
}

fn pose_stage(
    shared: &Shared,
    mut estimator: Box<dyn PoseEstimator>,
    rx: Receiver<PreparedJob>,
    tx: Sender<PosedFrame>,
) {
    warm_up(estimator.as_mut());
    let max_batch = shared.cfg.pose_batch.max(1);
    let mut batch: Vec<PreparedJob> = Vec::with_capacity(max_batch);
    let mut frames: Vec<PreparedFrame> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        // Frames already waiting (often from other sessions) join the batch.
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch.retain(|j| !j.job.session.is_closed());
        if batch.is_empty() {
            continue;
        }
        let _span = info_span!("pose", batch = batch.len()).entered();
        let started = Instant::now();
        frames.clear();
        let mut jobs = Vec::with_capacity(batch.len());
        for PreparedJob {
            job,
            prepared,
            rectified,
        } in batch.drain(..)
        {
            frames.push(prepared);
            jobs.push((job, rectified));
        }
        let results = estimator.estimate(&frames);
        let elapsed = started.elapsed();
        shared
            .stats
            .record_stage(Stage::Pose, elapsed / jobs.len() as u32);
        metrics::histogram!("referee_pose_batch_size").record(jobs.len() as f64);
        let per_frame: Vec<Option<Vec<Person>>> = match results {
            Ok(r) if r.len() == jobs.len() => r.into_iter().map(Some).collect(),
            Ok(r) => {
                warn!(
                    expected = jobs.len(),
                    got = r.len(),
                    "pose returned the wrong number of results"
                );
                vec![None; jobs.len()]
            }
            Err(e) => {
                warn!(error = %e, "pose inference failed for a batch");
                vec![None; jobs.len()]
            }
        };
        for ((job, rectified), persons) in jobs.into_iter().zip(per_frame) {
            if persons.is_none() {
                shared.stats.count_drop(DropReason::PoseFailed);
            }
            let posed = PosedFrame {
                session: job.session,
                frame: job.frame,
                capture_ts_us: job.capture_ts_us,
                encoding: job.encoding,
                bytes: job.bytes,
                persons,
                rectified,
                admitted_at: job.admitted_at,
            };
            drop(job.permit);
            if tx.send(posed).is_err() {
                return;
            }
        }
    }
}
