//! The engine: its entry points (sessions, frames, signals) and the stage threads it wires
//! together with bounded crossbeam channels.
//!
//! ```text
//! driver --permit--> decode --> rectify --> pose (workers) --> track (reorder, referee) --> sink
//!                                                                ^
//!                                  control (signal / end / abort)+
//! ```
//! A frame enters only with a [`FramePermit`]. Permits bound the number of frames inside the
//! pipeline, so every channel send below has room and never blocks the caller; when permits
//! run out the driver stops reading frames (and QUIC flow control pushes back on the agent).
//! A permit is released when its frame leaves the pose stage.
//!
//! The engine has no clock and no IO of its own: time comes from the [`Clock`] it is given
//! (and `now` arguments), and everything it has to say leaves through one [`EventSink`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded, Sender};
use parking_lot::Mutex;
use referee_pose_api::{Ack, PoseEstimator};
use tracing::{info, warn};

use crate::admission::{self, FramePermit, Permits, ReleaseHook};
use crate::clock::{Clock, SystemClock};
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::event::{EngineEvent, EventSink, FailureKind, FrameMeta, PhraseSignal, SessionSpec};
use crate::session::Session;
use crate::stage::StageContext;
use crate::stage::{self, Control, DecodedJob, EndReason, FrameJob, PosedFrame, PreparedJob};
use crate::stats::{DropReason, EngineStats, Stage};

/// What happened to a submitted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The frame entered the pipeline.
    Accepted,
    /// The frame had already been received; this copy was discarded.
    Duplicate,
}

struct Shared {
    ctx: Arc<StageContext>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    shutdown: AtomicBool,
}

/// The running engine: owns the stage threads; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    permits: Arc<Permits>,
    inputs: Arc<Inputs>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// The pipeline's input senders; taken (dropped) at shutdown so the stages drain and exit.
struct Inputs {
    decode: Mutex<Option<Sender<FrameJob>>>,
    control: Mutex<Option<Sender<Control>>>,
}

impl Engine {
    /// Starts the stage threads with one pose worker per estimator, events going to `sink`
    /// and time from the system clock. Several single-threaded workers give the most frames
    /// per second; one worker whose estimator splits each frame over the cores gives the
    /// lowest latency per frame. The track stage puts frames back in order either way.
    pub fn start(
        cfg: EngineConfig,
        estimators: Vec<Box<dyn PoseEstimator>>,
        sink: Arc<dyn EventSink>,
    ) -> Self {
        Self::start_with_clock(cfg, estimators, sink, Arc::new(SystemClock))
    }

    /// [`Engine::start`] with the caller's clock (tests move a manual clock by hand).
    pub fn start_with_clock(
        cfg: EngineConfig,
        estimators: Vec<Box<dyn PoseEstimator>>,
        sink: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        if estimators.is_empty() {
            warn!("no pose worker given: frames will wait in the pipeline");
        }
        let depth = cfg.queue_depth.max(1);
        let ctx = Arc::new(StageContext {
            stats: EngineStats::default(),
            clock,
            sink,
            verdicts: AtomicU64::new(0),
            artifacts: crate::artifacts::job::start_pool(
                cfg.output_dir.as_deref(),
                cfg.artifact_workers,
                cfg.artifact_queue,
            ),
            cfg,
        });
        // Every channel can hold every permitted frame, so sends never block.
        let (decode_tx, decode_rx) = bounded::<FrameJob>(depth);
        let (rectify_tx, rectify_rx) = bounded::<DecodedJob>(depth);
        let (pose_tx, pose_rx) = bounded::<PreparedJob>(depth);
        let (track_tx, track_rx) = bounded::<PosedFrame>(depth * 2);
        let (control_tx, control_rx) = unbounded::<Control>();
        ctx.stats.register_queue(Stage::Decode, decode_rx.clone());
        ctx.stats.register_queue(Stage::Rectify, rectify_rx.clone());
        ctx.stats.register_queue(Stage::Pose, pose_rx.clone());
        ctx.stats.register_queue(Stage::Track, track_rx.clone());

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .expect("the OS refused to start a pipeline thread")
        };
        {
            let (ctx, track_tx) = (ctx.clone(), track_tx.clone());
            threads.push(spawn(
                "referee-decode",
                Box::new(move || stage::decode::run(&ctx, decode_rx, rectify_tx, track_tx)),
            ));
        }
        {
            let (ctx, track_tx) = (ctx.clone(), track_tx.clone());
            threads.push(spawn(
                "referee-rectify",
                Box::new(move || stage::rectify::run(&ctx, rectify_rx, pose_tx, track_tx)),
            ));
        }
        for (i, estimator) in estimators.into_iter().enumerate() {
            let (ctx, pose_rx, track_tx) = (ctx.clone(), pose_rx.clone(), track_tx.clone());
            threads.push(spawn(
                &format!("referee-pose-{i}"),
                Box::new(move || stage::pose::run(&ctx, estimator, pose_rx, track_tx)),
            ));
        }
        drop((pose_rx, track_tx));
        {
            let ctx = ctx.clone();
            threads.push(spawn(
                "referee-track",
                Box::new(move || stage::track::run(&ctx, track_rx, control_rx)),
            ));
        }
        Self {
            shared: Arc::new(Shared {
                ctx,
                sessions: Mutex::new(HashMap::new()),
                shutdown: AtomicBool::new(false),
            }),
            permits: Permits::new(depth),
            inputs: Arc::new(Inputs {
                decode: Mutex::new(Some(decode_tx)),
                control: Mutex::new(Some(control_tx)),
            }),
            threads: Arc::new(Mutex::new(threads)),
        }
    }

    /// The engine's clock (drivers stamp arrivals with it).
    pub fn now(&self) -> Instant {
        self.shared.ctx.clock.now()
    }

    /// Closes sessions idle for longer than the session timeout at the clock's `now`; returns
    /// how many. The driver calls this periodically (the engine has no timer of its own).
    pub fn expire_idle_sessions(&self) -> usize {
        let now = self.now();
        let timeout = self.shared.ctx.cfg.session_timeout;
        let stale: Vec<Arc<Session>> = self
            .shared
            .sessions
            .lock()
            .values()
            .filter(|s| s.idle_for(now) > timeout)
            .cloned()
            .collect();
        for s in &stale {
            warn!(
                session = s.id(),
                idle_s = s.idle_for(now).as_secs_f32(),
                "session timed out"
            );
            self.shared.ctx.sink.emit(EngineEvent::Failure {
                session_id: s.id().to_string(),
                kind: FailureKind::IdleTimeout,
                message: format!(
                    "session {:?} was idle for more than {} s and has been closed",
                    s.id(),
                    timeout.as_secs()
                ),
            });
            self.finish(s, EndReason::TimedOut);
        }
        stale.len()
    }

    /// Engine-wide statistics.
    pub fn stats(&self) -> &EngineStats {
        &self.shared.ctx.stats
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.ctx.cfg
    }

    /// Verdicts given so far.
    pub fn verdicts(&self) -> u64 {
        self.shared.ctx.verdicts.load(Ordering::Relaxed)
    }

    /// What the artifacts writer has written, failed and refused (for /status and /healthz).
    pub fn artifacts(&self) -> crate::artifacts::pool::ArtifactHealth {
        self.shared.ctx.artifacts.health()
    }

    /// Active sessions.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.shared.sessions.lock().values().cloned().collect()
    }

    /// Frames currently inside the pipeline.
    pub fn in_flight(&self) -> usize {
        self.permits.in_use()
    }

    /// Opens a session, or returns the existing one when `spec.resume` is set.
    pub fn open_session(&self, spec: SessionSpec) -> Result<Arc<Session>, EngineError> {
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        admission::validate_spec(&spec)?;
        let cfg = &self.shared.ctx.cfg;
        let now = self.now();
        let mut sessions = self.shared.sessions.lock();
        if let Some(existing) = sessions.get(&spec.id) {
            if spec.resume {
                existing.touch(now);
                info!(session = existing.id(), "session resumed");
                return Ok(existing.clone());
            }
            return Err(EngineError::SessionExists(spec.id));
        }
        let max = cfg.max_sessions;
        if sessions.len() >= max {
            self.stats().count_refusal("too_many_sessions");
            return Err(EngineError::TooManySessions {
                active: sessions.len(),
                max,
            });
        }
        let needed = admission::session_memory_estimate(&spec, cfg);
        let used: u64 = sessions
            .values()
            .map(|s| admission::session_memory_estimate(&s.spec, cfg))
            .sum();
        let budget = cfg.max_memory_bytes;
        if used + needed > budget {
            self.stats().count_refusal("memory_budget");
            return Err(EngineError::MemoryBudget {
                width: spec.width,
                height: spec.height,
                needed_mb: needed.div_ceil(1 << 20),
                free_mb: budget.saturating_sub(used) >> 20,
                max_mb: budget >> 20,
            });
        }
        let mut rectify = cfg.rectify;
        if let (true, Some(hint)) = (cfg.honour_undistort_hint, spec.undistort) {
            rectify.fisheye_enabled = hint.enabled;
            rectify.strength = hint.strength;
            rectify.balance = hint.balance;
        }
        let session = Arc::new(Session::new(spec, rectify, now));
        sessions.insert(session.id().to_string(), session.clone());
        drop(sessions);
        metrics::gauge!("referee_sessions_active").increment(1.0);
        metrics::counter!("referee_sessions_total").increment(1);
        info!(
            session = session.id(),
            piste = session.piste(),
            "session opened"
        );
        self.shared.ctx.sink.emit(EngineEvent::SessionStarted {
            session_id: session.id().to_string(),
            piste: session.piste().to_string(),
        });
        Ok(session)
    }

    /// Looks up an open session.
    pub fn session(&self, id: &str) -> Result<Arc<Session>, EngineError> {
        self.shared
            .sessions
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::UnknownSession(id.to_string()))
    }

    /// The cumulative ack of an open session's frames.
    pub fn ack(&self, id: &str) -> Result<Ack, EngineError> {
        Ok(self.session(id)?.received.lock().to_ack())
    }

    /// A permit when the pipeline has room now, `None` when it is full.
    pub fn try_reserve(&self) -> Result<Option<FramePermit>, EngineError> {
        self.permits.try_acquire()
    }

    /// Waits, blocking this thread, for room in the pipeline (in-process runners, tests).
    /// Async drivers use [`Engine::try_reserve`] with [`Engine::on_permit_released`].
    pub fn reserve(&self) -> Result<FramePermit, EngineError> {
        self.permits.acquire()
    }

    /// Calls `hook` (from a pipeline thread; it must not block) whenever a permit comes back.
    pub fn on_permit_released(&self, hook: ReleaseHook) {
        self.permits.set_release_hook(hook);
    }

    /// Puts a frame into the pipeline. Never blocks: the permit guarantees room.
    pub fn submit(
        &self,
        permit: FramePermit,
        meta: FrameMeta,
        bytes: Vec<u8>,
    ) -> Result<Admission, EngineError> {
        let session = self.session(&meta.session_id)?;
        let stats = self.stats();
        if bytes.len() != meta.len as usize {
            session.counters.dropped.fetch_add(1, Ordering::Relaxed);
            stats.count_drop(DropReason::BadLength);
            return Err(EngineError::LengthMismatch {
                session: meta.session_id,
                frame: meta.frame,
                len: meta.len,
                actual: bytes.len(),
            });
        }
        let now = self.now();
        session.touch(now);
        let max = self.shared.ctx.cfg.max_frames_per_session;
        {
            let mut received = session.received.lock();
            if meta.frame >= max {
                session.counters.dropped.fetch_add(1, Ordering::Relaxed);
                stats.count_drop(DropReason::FrameLimit);
                return Err(EngineError::TooManyFrames {
                    session: meta.session_id,
                    max,
                });
            }
            if !received.insert(meta.frame) {
                session.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                stats.count_drop(DropReason::Duplicate);
                return Ok(Admission::Duplicate);
            }
        }
        session.counters.received.fetch_add(1, Ordering::Relaxed);
        session
            .counters
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        stats.frames_received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("referee_frames_received_total").increment(1);
        metrics::counter!("referee_frame_bytes_total").increment(bytes.len() as u64);
        let job = FrameJob {
            session,
            frame: meta.frame,
            capture_ts_us: meta.capture_ts_us,
            encoding: meta.encoding,
            bytes: Arc::new(bytes),
            permit,
            admitted_at: now,
        };
        match self.inputs.decode.lock().as_ref() {
            Some(tx) => tx.try_send(job).map_err(|_| EngineError::ShuttingDown)?,
            None => return Err(EngineError::ShuttingDown),
        }
        Ok(Admission::Accepted)
    }

    /// Hands the phrase's signal log (received at `received_at`) to the referee; the verdict
    /// leaves through the sink as soon as the frames still in flight up to the phrase's end
    /// are processed.
    pub fn signal(&self, signal: PhraseSignal, received_at: Instant) -> Result<(), EngineError> {
        let session = self.session(&signal.session_id)?;
        session.touch(received_at);
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

    fn finish(&self, session: &Arc<Session>, reason: EndReason) {
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
        self.shared.ctx.artifacts.shutdown();
    }
}
