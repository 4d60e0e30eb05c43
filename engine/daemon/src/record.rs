//! The phrase recorder: every phrase the daemon sees, written as a recording
//! (`<output_dir>/recordings/<session>/phrase-NNN.tar`, layout in `referee-record`) off the
//! engine's path.
//!
//! - [`crate::Core::submit`] tees each admitted frame (bytes as received, header, arrival
//!   time) and [`crate::Core::signal`] each signal log to the [`Recorder`]; the
//!   [`crate::EventRouter`] hands it each verdict (which closes the phrase's recording) and each
//!   session's end; the phrase history hands it every referee's call it stores
//!   ([`Recorder::set_human_call`]).
//! - Frames travel through a bounded queue (`recording.queue_frames`): when the recorder cannot
//!   keep up, the frame is not recorded, the phrase's recording is marked incomplete and
//!   `referee_recording_frames_lost_total` counts it. Nothing on the engine's path waits.
//! - A recording is streamed to `phrase-NNN.tar.partial` and renamed once complete; a phrase
//!   whose session ends (or whose daemon stops) before its verdict leaves nothing behind, and a
//!   kill leaves the `.partial` file that readers skip.
//! - Continuous bouts (watch mode): the frames captured after a phrase's end (by the capture
//!   stamps and the signal log's phrase end) that arrived before its verdict are copied to the
//!   next phrase's recording too, so each recording holds the frames since the previous
//!   phrase's end.
//! - A call arriving after the phrase was recorded rewrites its manifest atomically; the
//!   verdict in it never changes.
//! - Retention (`recording.max_total_mb`, `recording.max_age_days`) runs after each
//!   recording: oldest first, counted in `referee_recordings_deleted_total`.
//! - [`Recorder::health`]: what was written, incomplete or failed, the last problem and when,
//!   for `/status` and `/healthz` (degraded from a problem until a later phrase is recorded
//!   whole).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use referee_config::Settings;
use referee_engine::{FrameMeta, PhraseSignal, Session, SessionSpec};
use referee_record::layout::{frame_entry, phrase_path};
use referee_record::{
    FrameRecord, HumanCall, Manifest, ModelId, PhraseWriter, RecordError, Retention,
    SettingsSnapshot, FORMAT_VERSION, RECORDINGS_DIR,
};
use serde::Serialize;
use tracing::{debug, info, warn};

/// What the recorder has done, for `/status` and `/healthz`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecordingHealth {
    /// Recordings finished (whole or marked incomplete).
    pub written: u64,
    /// Recordings finished but marked incomplete (frames lost or not written).
    pub incomplete: u64,
    /// Writes that failed (a recording, a frame, a call, frames carried to the next phrase).
    pub errors: u64,
    /// Frames the recorder's queue had no room for.
    pub frames_lost: u64,
    /// The last problem.
    pub last_problem: Option<String>,
    /// When it happened, milliseconds since the Unix epoch.
    pub last_problem_at_ms: Option<u64>,
    /// True from a problem until a later phrase is recorded whole.
    pub degraded: bool,
}

/// The shared [`RecordingHealth`], with the metrics beside each count (one home for both).
#[derive(Clone, Default)]
struct Health(Arc<Mutex<RecordingHealth>>);

impl Health {
    fn problem(&self, h: &mut RecordingHealth, what: String) {
        h.last_problem = Some(what);
        h.last_problem_at_ms = Some(unix_us(SystemTime::now()) / 1000);
        h.degraded = true;
    }

    /// A write failed: counted, logged by the caller.
    fn error(&self, what: String) {
        metrics::counter!("referee_recording_errors_total").increment(1);
        let mut h = self.0.lock();
        h.errors += 1;
        self.problem(&mut h, what);
    }

    fn frame_lost(&self) {
        metrics::counter!("referee_recording_frames_lost_total").increment(1);
        self.0.lock().frames_lost += 1;
    }

    /// A recording was finished; `incomplete` says why it is not whole.
    fn written(&self, bytes: u64, incomplete: Option<String>) {
        metrics::counter!("referee_recordings_total").increment(1);
        metrics::counter!("referee_recording_bytes_total").increment(bytes);
        let mut h = self.0.lock();
        h.written += 1;
        match incomplete {
            Some(why) => {
                metrics::counter!("referee_recordings_incomplete_total").increment(1);
                h.incomplete += 1;
                self.problem(&mut h, format!("recording incomplete: {why}"));
            }
            None => h.degraded = false,
        }
    }
}

/// What the recorder needs to know besides the phrases.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// `<output_dir>/recordings`.
    pub root: PathBuf,
    /// Frames queued for the recorder before they are counted as lost.
    pub queue_frames: usize,
    /// How much to keep.
    pub retention: Retention,
    /// The pose model.
    pub model: ModelId,
    /// The settings, for replay.
    pub settings: SettingsSnapshot,
    /// This build's version.
    pub engine_version: String,
}

/// The keys whose values decide a verdict, as `Settings::set` accepts them: replay applies
/// them over the defaults.
pub fn settings_snapshot(s: &Settings) -> SettingsSnapshot {
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let values: BTreeMap<String, String> = [
        ("pose.model", path(&s.pose.model)),
        ("pose.size", format!("{}x{}", s.pose.width, s.pose.height)),
        (
            "pose.piste_band",
            format!("{}-{}", s.pose.piste_band.0, s.pose.piste_band.1),
        ),
        ("pose.isa", s.pose.isa.clone()),
        ("fisheye.enabled", s.fisheye.enabled.to_string()),
        ("fisheye.strength", s.fisheye.strength.to_string()),
        ("fisheye.balance", s.fisheye.balance.to_string()),
        ("pipeline.queue_depth", s.pipeline.queue_depth.to_string()),
        (
            "pipeline.reorder_window",
            s.pipeline.reorder_window.to_string(),
        ),
        ("referee.model", path(&s.referee.model)),
        (
            "limits.max_frames_per_session",
            s.limits.max_frames_per_session.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    SettingsSnapshot {
        values,
        all: format!("{s:#?}"),
    }
}

/// The pose model of the weights file the settings name: its sha256, computed once at start;
/// `model_name` starting with `stand-in` (an estimator without weights) gives no sha256.
pub fn model_id(s: &Settings, model_name: &str) -> ModelId {
    if model_name.starts_with("stand-in") {
        return ModelId::stand_in(model_name);
    }
    let weights = crate::pose::weights_path(s);
    match referee_models::fetch::sha256_file(&weights) {
        Ok(sha) => ModelId {
            name: model_name.to_string(),
            sha256: Some(sha),
        },
        Err(e) => {
            warn!(weights = %weights.display(), error = %e, "recordings: cannot hash the pose weights; recorded as a stand-in");
            ModelId::stand_in(model_name)
        }
    }
}

impl RecorderConfig {
    /// The recorder's configuration from the daemon's settings (`[recording]`).
    pub fn from_settings(s: &Settings, model: ModelId) -> Self {
        let r = &s.recording;
        Self {
            root: s.server.output_dir.join(RECORDINGS_DIR),
            queue_frames: r.queue_frames,
            retention: Retention {
                max_bytes: (r.max_total_mb > 0).then(|| r.max_total_mb * 1024 * 1024),
                max_age: (r.max_age_days > 0).then(|| Duration::from_secs(r.max_age_days * 86_400)),
            },
            model,
            settings: settings_snapshot(s),
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Records `core`'s phrases with `recorder`: frames, signals and verdicts through the router,
/// and every referee's call the phrase history stores.
pub fn attach(core: &crate::Core, recorder: Recorder) {
    core.router.set_recorder(recorder.clone());
    core.history.set_tap(Box::new(move |session, phrase, call| {
        recorder.set_human_call(session, phrase, human_call(call));
    }));
}

/// A call the phrase history stored, as a recording keeps it.
pub fn human_call(c: &crate::history::StoredCall) -> HumanCall {
    HumanCall {
        winner: c.call,
        origin: c.origin,
        how: c
            .log_source
            .and_then(|src| serde_json::to_value(src).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
        at: c.stamp.clone(),
    }
}

struct FrameMsg {
    /// Order among frames and commands (they travel on two queues).
    seq: u64,
    session: Arc<Session>,
    meta: FrameMeta,
    bytes: Vec<u8>,
    arrival_us: u64,
}

enum Command {
    Signal(PhraseSignal),
    Verdict {
        session_id: String,
        phrase: u32,
        detail_json: String,
    },
    SessionEnded(String),
    Call {
        session_id: String,
        phrase: u32,
        call: HumanCall,
    },
    /// A frame the queue had no room for.
    Lost(String),
    Flush(Sender<()>),
}

/// The recorder's handle: cheap to clone; its thread runs until [`Recorder::shutdown`].
#[derive(Clone)]
pub struct Recorder {
    frames: Sender<FrameMsg>,
    commands: Sender<(u64, Command)>,
    seq: Arc<AtomicU64>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    root: PathBuf,
    health: Health,
}

/// Why the recorder could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the phrase recorder: {0}")]
pub struct RecorderError(#[source] std::io::Error);

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Recorder {
    /// Starts the recorder thread (retention runs once at start).
    pub fn start(cfg: RecorderConfig) -> Result<Self, RecorderError> {
        let (frames, frames_rx) = bounded(cfg.queue_frames.max(1));
        let (commands, commands_rx) = unbounded();
        let root = cfg.root.clone();
        let health = Health::default();
        let mut worker = Worker::new(cfg, health.clone());
        let thread = std::thread::Builder::new()
            .name("referee-recorder".into())
            .spawn(move || worker.run(frames_rx, commands_rx))
            .map_err(RecorderError)?;
        info!(root = %root.display(), "recording every phrase");
        Ok(Self {
            frames,
            commands,
            seq: Arc::new(AtomicU64::new(0)),
            thread: Arc::new(Mutex::new(Some(thread))),
            root,
            health,
        })
    }

    /// What was written, incomplete or failed so far.
    pub fn health(&self) -> RecordingHealth {
        self.health.0.lock().clone()
    }

    /// Where the recordings go.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Records an admitted frame (never blocks: a full queue loses the frame, counted, and
    /// marks the phrase's recording incomplete).
    pub fn frame(
        &self,
        session: Arc<Session>,
        meta: FrameMeta,
        bytes: Vec<u8>,
        arrival: SystemTime,
    ) {
        let msg = FrameMsg {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            session,
            meta,
            bytes,
            arrival_us: unix_us(arrival),
        };
        match self.frames.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(m)) => {
                self.health.frame_lost();
                self.command(Command::Lost(m.meta.session_id));
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Records a phrase's signal log (handed over before the engine can answer it; for a
    /// phrase, the first log that parses is the one kept, as the engine decides on it).
    pub fn signal(&self, signal: PhraseSignal) {
        self.command(Command::Signal(signal));
    }

    /// Closes the phrase's recording with its verdict (the verdict's full document).
    pub fn verdict(&self, session_id: &str, phrase: u32, detail_json: &str) {
        self.command(Command::Verdict {
            session_id: session_id.to_string(),
            phrase,
            detail_json: detail_json.to_string(),
        });
    }

    /// The session ended: a phrase without a verdict is not kept.
    pub fn session_ended(&self, session_id: &str) {
        self.command(Command::SessionEnded(session_id.to_string()));
    }

    /// Stores the referee's call with the phrase's recording: at once when it is recorded
    /// (its manifest is rewritten atomically), else when its verdict comes. Never blocks;
    /// failures are logged and counted in `referee_recording_errors_total`.
    pub fn set_human_call(&self, session_id: &str, phrase: u32, call: HumanCall) {
        self.command(Command::Call {
            session_id: session_id.to_string(),
            phrase,
            call,
        });
    }

    /// Waits (blocking) until everything handed over so far is written.
    pub fn flush(&self) {
        let (tx, rx) = bounded(1);
        self.command(Command::Flush(tx));
        let _ = rx.recv();
    }

    fn command(&self, c: Command) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let _ = self.commands.send((seq, c));
    }

    /// Writes what is pending and stops the thread (blocking). Phrases still without a
    /// verdict are discarded.
    pub fn shutdown(&self) {
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        // Other handles may still exist, so the thread is asked to stop rather than left to
        // see its queues close.
        self.command(Command::Flush(stop_marker()));
        let _ = thread.join();
    }
}

/// A flush whose reply channel is already closed tells the worker to stop.
fn stop_marker() -> Sender<()> {
    let (tx, rx) = bounded(1);
    drop(rx);
    tx
}

/// One session's recording state (recorder thread only).
struct SessionRec {
    spec: SessionSpec,
    writer: Option<PhraseWriter>,
    /// The phrase the frames now arriving belong to.
    next_phrase: u32,
    /// Frames of the current phrase that could not be recorded, and why.
    lost: Vec<String>,
    /// Signals waiting for their verdict.
    signals: BTreeMap<u32, PhraseSignal>,
    /// Calls waiting for their phrase's recording.
    calls: HashMap<u32, HumanCall>,
}

struct Worker {
    cfg: RecorderConfig,
    sessions: HashMap<String, SessionRec>,
    /// Signals of sessions none of whose frames has reached the recorder yet (the daemon may
    /// still be waiting for pipeline room for them): taken over by the session's first frame.
    early_signals: HashMap<String, BTreeMap<u32, PhraseSignal>>,
    health: Health,
}

impl Worker {
    fn new(cfg: RecorderConfig, health: Health) -> Self {
        Self {
            cfg,
            sessions: HashMap::new(),
            early_signals: HashMap::new(),
            health,
        }
    }

    fn run(&mut self, frames: Receiver<FrameMsg>, commands: Receiver<(u64, Command)>) {
        self.retention();
        // A frame sent after the command being handled, read while looking for earlier ones.
        let mut held: Option<FrameMsg> = None;
        loop {
            if let Some(m) = held.take() {
                self.frame(m);
            }
            select! {
                recv(frames) -> msg => match msg {
                    Ok(m) => self.frame(m),
                    Err(_) => break,
                },
                recv(commands) -> msg => {
                    let Ok((seq, c)) = msg else { break };
                    // Frames sent before this command are handled first, later ones after it.
                    while let Ok(m) = frames.try_recv() {
                        if m.seq > seq {
                            held = Some(m);
                            break;
                        }
                        self.frame(m);
                    }
                    if let Command::Flush(reply) = &c {
                        if reply.send(()).is_err() {
                            break;
                        }
                        continue;
                    }
                    self.command(c);
                }
            }
        }
        for (_, s) in self.sessions.drain() {
            if let Some(w) = s.writer {
                w.discard();
            }
        }
    }

    fn state(&mut self, session: &Arc<Session>) -> &mut SessionRec {
        let early = &mut self.early_signals;
        self.sessions
            .entry(session.id().to_string())
            .or_insert_with(|| SessionRec {
                spec: session.spec.clone(),
                writer: None,
                next_phrase: 0,
                lost: Vec::new(),
                signals: early.remove(session.id()).unwrap_or_default(),
                calls: HashMap::new(),
            })
    }

    fn frame(&mut self, m: FrameMsg) {
        let root = self.cfg.root.clone();
        let st = self.state(&m.session);
        let rec = FrameRecord {
            frame: m.meta.frame,
            capture_ts_us: m.meta.capture_ts_us,
            encoding: m.meta.encoding,
            len: m.meta.len,
            arrival_us: m.arrival_us,
            file: frame_entry(m.meta.frame, m.meta.encoding),
        };
        if let Err(e) = add_frame(st, &root, rec, &m.bytes) {
            warn!(session = %st.spec.id, error = %e, "recording: frame not written");
            st.lost.push(format!("frame {}: {e}", m.meta.frame));
            self.health
                .error(format!("{}: frame not written: {e}", m.meta.session_id));
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Signal(signal) => self.signal(signal),
            Command::Verdict {
                session_id,
                phrase,
                detail_json,
            } => self.verdict(&session_id, phrase, &detail_json),
            Command::SessionEnded(id) => {
                self.early_signals.remove(&id);
                if let Some(st) = self.sessions.remove(&id) {
                    if let Some(w) = st.writer {
                        debug!(session = %id, frames = w.frames().len(), "recording: frames after the last verdict not kept");
                        w.discard();
                    }
                }
            }
            Command::Call {
                session_id,
                phrase,
                call,
            } => self.call(&session_id, phrase, call),
            Command::Lost(id) => {
                if let Some(st) = self.sessions.get_mut(&id) {
                    st.lost
                        .push("a frame found the recorder's queue full".into());
                }
            }
            Command::Flush(_) => {}
        }
    }

    fn signal(&mut self, signal: PhraseSignal) {
        let signals = match self.sessions.get_mut(&signal.session_id) {
            Some(st) if signal.phrase < st.next_phrase => {
                return; // already recorded: a later log's call reaches us through the history.
            }
            Some(st) => &mut st.signals,
            None => {
                // No frame recorded yet (still waiting for pipeline room): kept for the first.
                debug!(session = %signal.session_id, "recording: signal before any frame");
                self.early_signals
                    .entry(signal.session_id.clone())
                    .or_default()
            }
        };
        let parses = |s: &PhraseSignal| {
            referee_rules::signal::parse_signal(&String::from_utf8_lossy(&s.bytes)).is_ok()
        };
        // The engine decides on the first log of a phrase that parses; later copies (watch mode
        // resends the log with the referee's call) do not change what is replayed.
        match signals.get(&signal.phrase) {
            Some(old) if parses(old) => {}
            _ => {
                signals.insert(signal.phrase, signal);
            }
        }
    }

    fn call(&mut self, session_id: &str, phrase: u32, call: HumanCall) {
        if let Some(st) = self.sessions.get_mut(session_id) {
            if phrase >= st.next_phrase {
                st.calls.insert(phrase, call);
                return;
            }
        }
        let path = phrase_path(&self.cfg.root, session_id, phrase);
        if !path.exists() {
            debug!(
                session = session_id,
                phrase, "recording: no recording for this call"
            );
            return;
        }
        match referee_record::rewrite_manifest(&path, |m| m.referee_call = Some(call)) {
            Ok(()) => {
                metrics::counter!("referee_recording_calls_stored_total").increment(1);
                info!(path = %path.display(), "recording: referee's call stored");
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "recording: referee's call not stored");
                self.health.error(format!(
                    "{}: referee's call not stored: {e}",
                    path.display()
                ));
            }
        }
    }

    fn verdict(&mut self, session_id: &str, phrase: u32, detail_json: &str) {
        let root = self.cfg.root.clone();
        let Some(st) = self.sessions.get_mut(session_id) else {
            return;
        };
        let path = phrase_path(&root, session_id, phrase);
        let mut writer = match st.writer.take() {
            Some(w) => w,
            None => match PhraseWriter::create(&path) {
                Ok(w) => w,
                Err(e) => return failed(&self.health, session_id, &e),
            },
        };
        if let Err(e) = writer.rename_to(&path) {
            writer.discard();
            return failed(&self.health, session_id, &e);
        }
        let signal = st.signals.remove(&phrase);
        st.signals.retain(|p, _| *p > phrase);
        let mut lost = std::mem::take(&mut st.lost);
        if signal.is_none() {
            lost.push("the signal log was not recorded".into());
        }
        let next = phrase + 1;
        st.next_phrase = next;
        // Frames captured after this phrase's end belong to the next one as well.
        let carried = match signal
            .as_ref()
            .and_then(|s| phrase_end_us(s, writer.frames()))
        {
            Some(end_us) => carry_over(
                &mut writer,
                end_us,
                &phrase_path(&root, session_id, next),
                &self.health,
            ),
            None => None,
        };
        st.writer = carried;
        let call = st.calls.remove(&phrase);
        st.calls.retain(|p, _| *p > phrase);
        let verdict = serde_json::from_str(detail_json)
            .unwrap_or_else(|_| serde_json::Value::String(detail_json.to_string()));
        let (signal_file, signal_bytes, phrase_start_us) = match &signal {
            Some(s) => (s.filename.clone(), s.bytes.clone(), s.phrase_start_us),
            None => (String::new(), Vec::new(), None),
        };
        let spec = &st.spec;
        let manifest = Manifest {
            format: FORMAT_VERSION,
            complete: lost.is_empty(),
            incomplete_reason: (!lost.is_empty())
                .then(|| format!("{} problem(s), first: {}", lost.len(), lost[0])),
            session_id: session_id.to_string(),
            piste: spec.piste.clone(),
            camera: spec.camera.clone(),
            fps: spec.fps,
            width: spec.width,
            height: spec.height,
            undistort: spec.undistort.map(|u| (u.enabled, u.strength, u.balance)),
            phrase,
            phrase_start_us,
            signal_file: signal_file.clone(),
            frames: writer.frames().len() as u64,
            frame_bytes: writer.frame_bytes(),
            recorded_at_ms: (unix_us(SystemTime::now()) / 1000),
            engine_version: self.cfg.engine_version.clone(),
            pose_model: self.cfg.model.clone(),
            settings: self.cfg.settings.clone(),
            verdict,
            referee_call: call,
        };
        let complete = manifest.complete;
        match writer.finish(&signal_file, &signal_bytes, &manifest) {
            Ok(bytes) => {
                if !complete {
                    warn!(path = %path.display(), reason = ?manifest.incomplete_reason, "recording incomplete");
                }
                info!(path = %path.display(), bytes, frames = manifest.frames, "phrase recorded");
                let why = (!complete).then(|| {
                    let reason = manifest.incomplete_reason.as_deref().unwrap_or("unknown");
                    format!("{}: {reason}", path.display())
                });
                self.health.written(bytes, why);
            }
            Err(e) => failed(&self.health, session_id, &e),
        }
        self.retention();
    }

    fn retention(&mut self) {
        let busy: HashSet<PathBuf> = self
            .sessions
            .values()
            .filter_map(|s| s.writer.as_ref().map(|w| w.partial_path().to_path_buf()))
            .collect();
        let pruned =
            referee_record::enforce(&self.cfg.root, self.cfg.retention, SystemTime::now(), &busy);
        if !pruned.deleted.is_empty() {
            metrics::counter!("referee_recordings_deleted_total")
                .increment(pruned.deleted.len() as u64);
            metrics::counter!("referee_recording_deleted_bytes_total")
                .increment(pruned.deleted_bytes);
            info!(
                deleted = pruned.deleted.len(),
                bytes = pruned.deleted_bytes,
                "recordings: oldest deleted (retention)"
            );
        }
        metrics::gauge!("referee_recordings_disk_bytes").set(pruned.kept_bytes as f64);
    }
}

fn failed(health: &Health, session_id: &str, e: &RecordError) {
    warn!(session = session_id, error = %e, "recording not written");
    health.error(format!("{session_id}: recording not written: {e}"));
}

fn add_frame(
    st: &mut SessionRec,
    root: &Path,
    rec: FrameRecord,
    bytes: &[u8],
) -> Result<(), RecordError> {
    if st.writer.is_none() {
        st.writer = Some(PhraseWriter::create(&phrase_path(
            root,
            &st.spec.id,
            st.next_phrase,
        ))?);
    }
    match st.writer.as_mut() {
        Some(w) => w.add_frame(rec, bytes),
        None => Ok(()),
    }
}

/// Capture time (µs) of the phrase's end: its first frame's stamp (the agent's
/// `phrase_start_us`, else the earliest stamp recorded) plus the log's phrase end.
fn phrase_end_us(signal: &PhraseSignal, frames: &[FrameRecord]) -> Option<u64> {
    let timeline =
        referee_rules::signal::parse_signal(&String::from_utf8_lossy(&signal.bytes)).ok()?;
    let end_s = timeline.phrase_end()?.max(0.0);
    let start = signal.phrase_start_us.or_else(|| {
        frames
            .iter()
            .filter(|f| f.capture_ts_us > 0)
            .min_by_key(|f| f.frame)
            .map(|f| f.capture_ts_us)
    })?;
    Some(start + (end_s * 1e6) as u64)
}

/// Starts the next phrase's recording at `next` with the frames captured at or after
/// `end_us`; `None` when there are none (or they cannot be copied: logged, counted).
fn carry_over(
    writer: &mut PhraseWriter,
    end_us: u64,
    next: &Path,
    health: &Health,
) -> Option<PhraseWriter> {
    let after: Vec<FrameRecord> = writer
        .frames()
        .iter()
        .filter(|f| f.capture_ts_us >= end_us)
        .cloned()
        .collect();
    if after.is_empty() {
        return None;
    }
    let copy = || -> Result<PhraseWriter, RecordError> {
        let mut w = PhraseWriter::create(next)?;
        for rec in after {
            if let Some(bytes) = writer.read_frame(rec.frame)? {
                w.add_frame(rec, &bytes)?;
            }
        }
        Ok(w)
    };
    match copy() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "recording: frames after the phrase end not carried over");
            health.error(format!("frames after the phrase end not carried over: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_engine::{Engine, EngineConfig};
    use referee_pose_api::FrameEncoding;

    const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";

    /// Found in the final test run: under load the signal reached the recorder before the
    /// session's first frame (frames wait for pipeline room, the log does not), was dropped,
    /// and the recording was marked "signal log not recorded".
    #[test]
    fn a_signal_before_the_first_frame_is_kept_for_the_recording() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Recorder::start(RecorderConfig {
            root: tmp.path().to_path_buf(),
            queue_frames: 16,
            retention: Retention {
                max_bytes: None,
                max_age: None,
            },
            model: ModelId::stand_in("stand-in"),
            settings: SettingsSnapshot::default(),
            engine_version: "test".into(),
        })
        .unwrap();
        let (sink, _events) = crossbeam_channel::unbounded();
        let engine = Engine::start(EngineConfig::default(), Vec::new(), Arc::new(sink));
        let session = engine
            .open_session(SessionSpec {
                id: "s".into(),
                piste: "1".into(),
                camera: "c".into(),
                fps: 30.0,
                width: 64,
                height: 48,
                undistort: None,
                resume: false,
            })
            .unwrap();
        rec.signal(PhraseSignal {
            session_id: "s".into(),
            phrase: 0,
            filename: "signal.txt".into(),
            bytes: SIGNAL.as_bytes().to_vec(),
            phrase_start_us: None,
        });
        for n in 0..3u64 {
            let meta = FrameMeta {
                session_id: "s".into(),
                frame: n,
                capture_ts_us: 1_000_000 + n * 33_333,
                encoding: FrameEncoding::Jpeg,
                len: 3,
            };
            rec.frame(
                session.clone(),
                meta,
                vec![0xFF, 0xD8, n as u8],
                SystemTime::now(),
            );
        }
        rec.verdict("s", 0, "{\"verdict\": {}}");
        rec.flush();
        rec.shutdown();
        let r = referee_record::Recording::open(&phrase_path(tmp.path(), "s", 0)).unwrap();
        assert_eq!(r.incomplete_reason(), None);
        assert_eq!(r.signal, SIGNAL.as_bytes());
        assert_eq!(r.frames.len(), 3);
        engine.shutdown();
    }

    #[test]
    fn frames_the_queue_has_no_room_for_mark_the_recording_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = RecorderConfig {
            root: tmp.path().to_path_buf(),
            queue_frames: 2,
            retention: Retention {
                max_bytes: None,
                max_age: None,
            },
            model: ModelId::stand_in("stand-in"),
            settings: SettingsSnapshot::default(),
            engine_version: "test".into(),
        };
        // The recorder's queues without its thread: nothing drains them while frames come.
        let (frames, frames_rx) = bounded(cfg.queue_frames);
        let (commands, commands_rx) = unbounded();
        let rec = Recorder {
            frames,
            commands,
            seq: Arc::new(AtomicU64::new(0)),
            thread: Arc::new(Mutex::new(None)),
            root: cfg.root.clone(),
            health: Health::default(),
        };
        let (sink, _events) = crossbeam_channel::unbounded();
        let engine = Engine::start(EngineConfig::default(), Vec::new(), Arc::new(sink));
        let spec = SessionSpec {
            id: "s".into(),
            piste: "1".into(),
            camera: "c".into(),
            fps: 30.0,
            width: 64,
            height: 48,
            undistort: None,
            resume: false,
        };
        let session = engine.open_session(spec).unwrap();
        for n in 0..5u64 {
            let meta = FrameMeta {
                session_id: "s".into(),
                frame: n,
                capture_ts_us: 1_000_000 + n * 33_333,
                encoding: FrameEncoding::Jpeg,
                len: 3,
            };
            rec.frame(
                session.clone(),
                meta,
                vec![0xFF, 0xD8, n as u8],
                SystemTime::now(),
            );
        }
        rec.signal(PhraseSignal {
            session_id: "s".into(),
            phrase: 0,
            filename: "signal.txt".into(),
            bytes: SIGNAL.as_bytes().to_vec(),
            phrase_start_us: None,
        });
        rec.verdict("s", 0, "{\"verdict\": {}}");
        let mut worker = Worker::new(cfg, rec.health.clone());
        let thread = std::thread::spawn(move || worker.run(frames_rx, commands_rx));
        *rec.thread.lock() = Some(thread);
        rec.flush();
        rec.shutdown();
        let r = referee_record::Recording::open(&phrase_path(tmp.path(), "s", 0)).unwrap();
        assert_eq!(r.frames.len(), 2, "two frames fitted in the queue");
        let reason = r.incomplete_reason().expect("marked incomplete");
        assert!(
            reason.contains("3 problem(s)") && reason.contains("queue full"),
            "{reason}"
        );
        let h = rec.health();
        assert_eq!((h.written, h.incomplete, h.frames_lost), (1, 1, 3), "{h:?}");
        assert!(
            h.degraded,
            "an incomplete recording degrades the health: {h:?}"
        );
        engine.shutdown();
    }
}
