//! The engine as the daemon drives it: the engine core, the router that delivers its events
//! to agents' control streams, to the feed and to the phrase history, the async wait for
//! pipeline room, and the janitor that gives the engine its idle-timeout ticks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use referee_engine::{
    Admission, Engine, EngineConfig, EngineError, EngineEvent, EventSink, FrameMeta, FramePermit,
    PhraseSignal,
};
use referee_pose_api::PoseEstimator;
use referee_transport::messages::{FeedEvent, ServerMsg};
use tokio::sync::{mpsc, Notify};

use crate::feed::{FeedHub, DEFAULT_SUBSCRIBER_BUFFER};
use crate::history::History;
use crate::map;
use crate::record::Recorder;

/// How often idle sessions are looked for.
const JANITOR_TICK: Duration = Duration::from_millis(200);

/// Phrases kept by [`Core::start`] (the daemon sizes its own from `history.max_phrases`).
pub const DEFAULT_HISTORY_PHRASES: usize = 1000;

/// Delivers engine events: to the control stream of the agent attached to the session, to
/// the feed, and each verdict to the phrase history.
pub struct EventRouter {
    outboxes: Mutex<HashMap<String, mpsc::UnboundedSender<ServerMsg>>>,
    feed: FeedHub,
    history: Arc<History>,
    /// The model's threshold: a verdict at or above it (and not `uncertain`) is "sure".
    min_confidence: f32,
    /// Also sees every feed event (the NATS side, when configured); must not block.
    tap: std::sync::OnceLock<FeedTap>,
    /// The phrase recorder, when recording is on.
    recorder: std::sync::OnceLock<Recorder>,
}

/// A consumer of every feed event besides the hub.
pub type FeedTap = Box<dyn Fn(&FeedEvent) + Send + Sync>;

impl EventRouter {
    fn new(history: Arc<History>, min_confidence: f32) -> Self {
        Self {
            outboxes: Mutex::new(HashMap::new()),
            feed: FeedHub::new(DEFAULT_SUBSCRIBER_BUFFER),
            history,
            min_confidence,
            tap: std::sync::OnceLock::new(),
            recorder: std::sync::OnceLock::new(),
        }
    }

    /// Records every later phrase with `recorder` (once; a second one is ignored).
    pub fn set_recorder(&self, recorder: Recorder) {
        let _ = self.recorder.set(recorder);
    }

    /// The phrase recorder, when recording is on.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.get()
    }

    /// Sends every later feed event to `tap` too (once; a second tap is ignored).
    pub fn set_tap(&self, tap: FeedTap) {
        let _ = self.tap.set(tap);
    }

    fn publish(&self, event: FeedEvent) {
        if let Some(tap) = self.tap.get() {
            tap(&event);
        }
        self.feed.publish(event);
    }

    /// Routes the session's messages to `outbox` (a new or resuming agent).
    pub fn attach(&self, session_id: &str, outbox: mpsc::UnboundedSender<ServerMsg>) {
        self.outboxes.lock().insert(session_id.to_string(), outbox);
    }

    /// Stops routing the session's messages (its agent went away).
    pub fn detach(&self, session_id: &str) {
        self.outboxes.lock().remove(session_id);
    }

    /// True when an agent's control stream is attached to the session.
    pub fn is_attached(&self, session_id: &str) -> bool {
        self.outboxes
            .lock()
            .get(session_id)
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Sends `msg` to the session's agent; false when none is attached.
    pub fn to_agent(&self, session_id: &str, msg: ServerMsg) -> bool {
        match self.outboxes.lock().get(session_id) {
            Some(tx) => tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// The feed hub.
    pub fn feed(&self) -> &FeedHub {
        &self.feed
    }
}

impl EventSink for EventRouter {
    fn emit(&self, event: EngineEvent) {
        match event {
            EngineEvent::SessionStarted { session_id, piste } => {
                self.publish(FeedEvent::SessionStarted { session_id, piste });
            }
            EngineEvent::Progress {
                session_id,
                stats,
                queue_depth,
            } => {
                let msg = ServerMsg::Progress {
                    session_id: session_id.clone(),
                    stats: map::session_stats(&stats),
                    queue_depth,
                };
                self.to_agent(&session_id, msg);
            }
            EngineEvent::Live {
                session_id,
                piste,
                frame,
                estimate,
            } => {
                let live = map::live_state(&session_id, &piste, frame, &estimate);
                self.publish(FeedEvent::Live(live));
            }
            EngineEvent::Verdict { verdict, repeated } => {
                let report = map::verdict_report(&verdict);
                // In the history before anyone hears of it: whoever gets the verdict finds it
                // on /phrases.
                if !repeated {
                    let d = &verdict.decision;
                    let sure = d.winner != referee_rules::Winner::Uncertain
                        && d.confidence >= self.min_confidence;
                    self.history.record_verdict(&report, sure);
                    // The phrase's recording closes with the frames sent before the agent
                    // hears of the verdict (later ones belong to the next phrase).
                    if let Some(r) = self.recorder() {
                        r.verdict(&verdict.session_id, verdict.phrase, &verdict.detail_json);
                    }
                }
                self.to_agent(&verdict.session_id, ServerMsg::Verdict(report.clone()));
                if !repeated {
                    self.publish(FeedEvent::Verdict(report));
                }
            }
            EngineEvent::Failure {
                session_id,
                kind,
                message,
            } => {
                let err = map::failure(&session_id, kind, &message);
                self.to_agent(&session_id, ServerMsg::Error(err.clone()));
                if kind == referee_engine::FailureKind::BadSignal {
                    self.publish(FeedEvent::Error(err));
                }
            }
            EngineEvent::SessionEnded {
                session_id,
                piste,
                stats,
            } => {
                let stats = map::session_stats(&stats);
                self.to_agent(
                    &session_id,
                    ServerMsg::SessionEnded {
                        session_id: session_id.clone(),
                        stats: stats.clone(),
                    },
                );
                self.detach(&session_id);
                if let Some(r) = self.recorder() {
                    r.session_ended(&session_id);
                }
                self.publish(FeedEvent::SessionEnded {
                    session_id,
                    piste,
                    stats,
                });
            }
        }
    }
}

/// The engine with its router; cheap to clone.
#[derive(Clone)]
pub struct Core {
    /// The engine core.
    pub engine: Engine,
    /// Where its events go.
    pub router: Arc<EventRouter>,
    /// The recent phrases with the referee's calls.
    pub history: Arc<History>,
    room: Arc<Notify>,
    /// Frames waiting for room queue here in arrival order (tokio's mutex is fair): without
    /// it every release woke all waiters, and a frame could lose the race to later frames
    /// until the track stage gave up on it as late.
    room_queue: Arc<tokio::sync::Mutex<()>>,
    stopped: Arc<AtomicBool>,
}

impl Core {
    /// Starts the engine with one pose worker per estimator, and its janitor thread; the
    /// phrase history is kept in memory only.
    pub fn start(cfg: EngineConfig, estimators: Vec<Box<dyn PoseEstimator>>) -> Self {
        let history = Arc::new(History::in_memory(DEFAULT_HISTORY_PHRASES));
        Self::start_with_history(cfg, estimators, history)
    }

    /// [`Core::start`] with the given phrase history (the daemon's persisted one).
    pub fn start_with_history(
        cfg: EngineConfig,
        estimators: Vec<Box<dyn PoseEstimator>>,
        history: Arc<History>,
    ) -> Self {
        let min_confidence = cfg.referee_model.min_confidence;
        let router = Arc::new(EventRouter::new(history.clone(), min_confidence));
        let engine = Engine::start(cfg, estimators, router.clone());
        let room = Arc::new(Notify::new());
        let notify = room.clone();
        engine.on_permit_released(Arc::new(move || notify.notify_waiters()));
        let stopped = Arc::new(AtomicBool::new(false));
        let core = Self {
            engine,
            router,
            history,
            room,
            room_queue: Arc::new(tokio::sync::Mutex::new(())),
            stopped,
        };
        core.spawn_janitor();
        core
    }

    fn spawn_janitor(&self) {
        let (engine, stopped) = (self.engine.clone(), self.stopped.clone());
        let spawned = std::thread::Builder::new()
            .name("referee-janitor".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    std::thread::sleep(JANITOR_TICK);
                    engine.expire_idle_sessions();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the janitor: idle sessions will not time out");
        }
    }

    /// Waits without blocking the runtime for room in the pipeline.
    pub async fn reserve(&self) -> Result<FramePermit, EngineError> {
        // One waiter at a time looks for room, the others wait their turn in order.
        let _turn = self.room_queue.lock().await;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before looking, so a permit released in between is not missed.
            room.as_mut().enable();
            if let Some(permit) = self.engine.try_reserve()? {
                return Ok(permit);
            }
            room.await;
        }
    }

    /// Hands a phrase's signal log to the engine, and keeps the referee's call found in its
    /// tail (after `Awaiting manual winner selection`) in the history, beside the verdict. The
    /// engine never sees the call: it reads the log only up to that line. A log sent again
    /// for a decided phrase (watch mode, once the box has appended the call) is answered by
    /// the engine with the same verdict; the call it now holds is stored all the same.
    pub fn signal(&self, signal: PhraseSignal, received_at: Instant) -> Result<(), EngineError> {
        let call = referee_rules::signal::referee_call(&String::from_utf8_lossy(&signal.bytes));
        let (session_id, phrase) = (signal.session_id.clone(), signal.phrase);
        // Recorded before the engine can answer it, so the recorder has the log when the
        // verdict comes (a log the engine refuses has no verdict to go with).
        if let Some(r) = self.router.recorder() {
            r.signal(signal.clone());
        }
        let result = self.engine.signal(signal, received_at);
        if let Some(call) = call {
            // Held for a verdict to come only when the engine took the signal.
            self.history
                .log_call(&session_id, phrase, &call, result.is_ok());
        }
        result
    }

    /// Puts a frame into the pipeline ([`Engine::submit`]); an admitted frame is also handed,
    /// bytes as received, to the phrase recorder when recording is on (a copy; the recorder's
    /// queue never blocks).
    pub fn submit(
        &self,
        permit: FramePermit,
        meta: FrameMeta,
        bytes: Vec<u8>,
    ) -> Result<Admission, EngineError> {
        let Some(recorder) = self.router.recorder() else {
            return self.engine.submit(permit, meta, bytes);
        };
        let arrival = std::time::SystemTime::now();
        let session = self.engine.session(&meta.session_id).ok();
        let copy = (meta.clone(), bytes.clone());
        let admission = self.engine.submit(permit, meta, bytes)?;
        if let (Admission::Accepted, Some(session)) = (admission, session) {
            recorder.frame(session, copy.0, copy.1, arrival);
        }
        Ok(admission)
    }

    /// The feed hub.
    pub fn feed(&self) -> &FeedHub {
        self.router.feed()
    }

    /// Stops the janitor, drains the pipeline, joins its threads and writes out the phrase
    /// history (blocking).
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        self.engine.shutdown();
        if let Some(r) = self.router.recorder() {
            r.shutdown();
        }
        self.history.close();
    }
}
