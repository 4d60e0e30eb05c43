//! Track: per session, the reorder buffer, the two-fencer tracker, the referee's incremental
//! features, live state, and the verdict once the signal lands and the frames up to the
//! phrase's end are through. [`SessionReferee`] is the per-session state machine; every call
//! takes `now` from the caller, so its waits are testable without sleeping.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{select, Receiver};
use referee_pose_api::FrameEncoding;
use referee_rules::signal::{parse_signal, Timeline};
use referee_rules::{Decision, PhraseAnalyzer, PoseFrame};
use tracing::{info, info_span, warn};

use super::{Control, EndReason, PosedFrame, StageContext};
use crate::artifacts::job::{ArtifactJob, OverlayFrame};
use crate::event::{EngineEvent, FailureKind, PhraseSignal, Verdict};
use crate::session::{image_ring_len, Session};
use crate::stats::{DropReason, Stage};
use crate::tracker::{TrackedPose, TrackerConfig, TwoFencerTracker};
use crate::verdict::result_document;
use referee_pose_api::ReceivedFrames;

struct Pending {
    signal: PhraseSignal,
    timeline: Timeline,
    received_at: Instant,
    /// The frame at the phrase's start (signal times are seconds from this frame).
    origin_frame: u64,
    /// The frame at the phrase's end: frames up to it are waited for before deciding.
    end_frame: u64,
}

/// The per-session referee of the track stage: puts frames back in order, tracks both fencers,
/// keeps the phrase features, and decides when a signal's phrase is complete.
pub(crate) struct SessionReferee {
    session: Arc<Session>,
    fps: f64,
    reorder: BTreeMap<u64, PosedFrame>,
    next_frame: u64,
    arrived: ReceivedFrames,
    tracker: TwoFencerTracker,
    analyzer: PhraseAnalyzer,
    poses: Vec<TrackedPose>,
    ring: VecDeque<(u64, FrameEncoding, Arc<Vec<u8>>)>,
    rectified: (usize, usize),
    pending: Option<Pending>,
    phrases_decided: u32,
    /// When the last frame came out of the pipeline (for the signal wait).
    last_arrival: Instant,
    /// The latest verdicts, to answer a repeated signal without deciding twice.
    verdicts: Vec<Verdict>,
}

impl SessionReferee {
    pub(crate) fn new(session: Arc<Session>, now: Instant) -> Self {
        let fps = session.spec.fps as f64;
        Self {
            session,
            fps,
            reorder: BTreeMap::new(),
            next_frame: 0,
            arrived: ReceivedFrames::default(),
            tracker: TwoFencerTracker::new(TrackerConfig::default()),
            analyzer: PhraseAnalyzer::new(fps),
            poses: Vec::new(),
            ring: VecDeque::new(),
            rectified: (0, 0),
            pending: None,
            phrases_decided: 0,
            last_arrival: now,
            verdicts: Vec::new(),
        }
    }

    /// Accepts a frame from the pose stage and processes every frame now in order.
    pub(crate) fn accept(&mut self, ctx: &StageContext, posed: PosedFrame, now: Instant) {
        if !self.arrived.insert(posed.frame) {
            return;
        }
        self.last_arrival = now;
        if posed.frame < self.next_frame {
            // The reorder window moved past this frame while it was in flight.
            self.session
                .counters
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            ctx.stats.count_drop(DropReason::Late);
            return;
        }
        self.reorder.insert(posed.frame, posed);
        self.drain(ctx, None);
    }

    /// Processes buffered frames in order. Gaps are skipped when the buffer exceeds the reorder
    /// window, or (with `flush_to`) for every frame up to that number.
    fn drain(&mut self, ctx: &StageContext, flush_to: Option<u64>) {
        loop {
            let Some((&first, _)) = self.reorder.first_key_value() else {
                return;
            };
            let may_skip = self.reorder.len() > ctx.cfg.reorder_window
                || flush_to.is_some_and(|end| first <= end);
            if first != self.next_frame && !may_skip {
                return;
            }
            let Some(posed) = self.reorder.remove(&first) else {
                return;
            };
            self.next_frame = first + 1;
            self.process(ctx, posed);
        }
    }

    fn process(&mut self, ctx: &StageContext, posed: PosedFrame) {
        let started = ctx.clock.now();
        self.ring
            .push_back((posed.frame, posed.encoding, posed.bytes.clone()));
        while self.ring.len() > image_ring_len(self.session.spec.fps) {
            self.ring.pop_front();
        }
        let Some(persons) = posed.persons else {
            return;
        };
        if posed.rectified.0 > 0 && posed.rectified != self.rectified {
            self.rectified = posed.rectified;
            self.analyzer.set_frame_width(posed.rectified.0 as f32);
        }
        let (w, h) = (self.rectified.0 as f32, self.rectified.1 as f32);
        let tracked = self.tracker.update(posed.frame, &persons, w, h);
        let t = posed.frame as f64 / self.fps;
        let frame = PoseFrame {
            frame: posed.frame,
            t,
            left: tracked.left,
            right: tracked.right,
        };
        self.analyzer.push(&frame);
        self.poses.push(TrackedPose {
            tracked,
            capture_ts_us: posed.capture_ts_us,
            t,
        });
        self.session
            .counters
            .processed
            .fetch_add(1, Ordering::Relaxed);
        ctx.stats.frames_processed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("referee_frames_processed_total").increment(1);
        let now = ctx.clock.now();
        ctx.stats.record_stage(Stage::Track, now - started);
        metrics::histogram!("referee_frame_latency_seconds").record(
            now.saturating_duration_since(posed.admitted_at)
                .as_secs_f64(),
        );
        self.publish_live(ctx, posed.frame);
    }

    fn publish_live(&self, ctx: &StageContext, frame: u64) {
        if frame.is_multiple_of(10) {
            ctx.sink.emit(EngineEvent::Progress {
                session_id: self.session.id().to_string(),
                stats: self.session.counters.snapshot(),
                queue_depth: ctx.stats.queue_depths().values().sum::<usize>() as u32,
            });
        }
        ctx.sink.emit(EngineEvent::Live {
            session_id: self.session.id().to_string(),
            piste: self.session.piste().to_string(),
            frame,
            estimate: self.analyzer.live(),
        });
    }

    pub(crate) fn on_signal(
        &mut self,
        ctx: &StageContext,
        signal: PhraseSignal,
        received_at: Instant,
        now: Instant,
    ) {
        // An agent that reconnects sends an unanswered signal again: answer once per phrase.
        if let Some(v) = self.verdicts.iter().find(|v| v.phrase == signal.phrase) {
            info!(
                session = self.session.id(),
                phrase = signal.phrase,
                "repeated signal: verdict sent again"
            );
            ctx.sink.emit(EngineEvent::Verdict {
                verdict: v.clone(),
                repeated: true,
            });
            return;
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.signal.phrase == signal.phrase)
        {
            info!(
                session = self.session.id(),
                phrase = signal.phrase,
                "repeated signal while deciding: ignored"
            );
            return;
        }
        let text = String::from_utf8_lossy(&signal.bytes);
        let timeline = match parse_signal(&text) {
            Ok(t) => t,
            Err(e) => {
                warn!(session = self.session.id(), error = %e, "bad signal log");
                ctx.sink.emit(EngineEvent::Failure {
                    session_id: self.session.id().to_string(),
                    kind: FailureKind::BadSignal,
                    message: format!("signal log {:?} rejected: {e}", signal.filename),
                });
                return;
            }
        };
        if self.pending.is_some() {
            warn!(
                session = self.session.id(),
                "a new signal arrived before the previous verdict; deciding the previous one now"
            );
            self.decide(ctx, now);
        }
        let origin_frame = match signal.phrase_start_us {
            Some(us) => self.frame_at_capture_time(us),
            None => 0,
        };
        // Frame k shows [k/fps, (k+1)/fps): the last frame of the phrase is the one that
        // starts strictly before its end.
        let phrase_frames = timeline.phrase_end().map_or(0, |end| {
            (end.max(0.0) * self.fps - 1e-6).floor().max(0.0) as u64
        });
        let end_frame = origin_frame
            .saturating_add(phrase_frames)
            .min(ctx.cfg.max_frames_per_session.saturating_sub(1));
        self.pending = Some(Pending {
            signal,
            timeline,
            received_at,
            origin_frame,
            end_frame,
        });
        self.try_decide(ctx, now);
    }

    /// The frame whose capture time is nearest `us` (the phrase's first frame in watch mode).
    fn frame_at_capture_time(&self, us: u64) -> u64 {
        let in_buffer = self.reorder.values().map(|p| (p.frame, p.capture_ts_us));
        let tracked = self
            .poses
            .iter()
            .map(|p| (p.tracked.frame, p.capture_ts_us));
        tracked
            .chain(in_buffer)
            .min_by_key(|(_, ts)| ts.abs_diff(us))
            .map_or(0, |(frame, _)| frame)
    }

    /// Decides once every frame up to the phrase's end is through the pipeline. Frames the
    /// agent has not delivered yet are waited for while frames keep arriving; gaps (frames that
    /// never came while later ones did) are not, and after `signal_wait` without any new frame
    /// the verdict is given with what is there.
    pub(crate) fn try_decide(&mut self, ctx: &StageContext, now: Instant) {
        let Some(p) = &self.pending else { return };
        let (admitted, admitted_max) = {
            let acks = self.session.received.lock();
            let ack = acks.to_ack();
            let max = ack
                .received_ranges
                .last()
                .map(|r| r.1)
                .unwrap_or(ack.next_expected)
                .checked_sub(1);
            (acks.count_upto(p.end_frame), max)
        };
        let arrived = self.arrived.count_upto(p.end_frame);
        let in_flight = arrived < admitted;
        let more_expected = admitted_max.is_none_or(|m| m < p.end_frame);
        let quiet_since = self.last_arrival.max(p.received_at);
        let waited_enough = now.saturating_duration_since(quiet_since) >= ctx.cfg.signal_wait;
        if (in_flight || more_expected) && !waited_enough {
            return;
        }
        if in_flight || more_expected {
            warn!(
                session = self.session.id(),
                missing_in_flight = admitted - arrived,
                last_frame = ?admitted_max,
                end_frame = p.end_frame,
                "deciding without every frame up to the phrase end (signal wait expired)"
            );
        }
        self.decide(ctx, now);
    }

    /// True while a signal waits for its phrase's frames.
    pub(crate) fn is_deciding(&self) -> bool {
        self.pending.is_some()
    }

    fn decide(&mut self, ctx: &StageContext, now: Instant) {
        let Some(p) = self.pending.take() else { return };
        let _span = info_span!(
            "verdict",
            session = self.session.id(),
            phrase = p.signal.phrase
        )
        .entered();
        self.drain(ctx, Some(p.end_frame));
        let decision = if p.origin_frame == 0 && self.phrases_decided == 0 {
            // The phrase started with the session: the incremental features are up to date.
            self.analyzer.decide(&p.timeline)
        } else {
            // Continuous bout: the phrase is the window the log describes.
            self.reanalyze(&p)
        };
        let latency = now.saturating_duration_since(p.received_at);
        let verdict = self.verdict(&p, decision, latency);
        info!(
            session = self.session.id(),
            winner = ?verdict.decision.winner,
            confidence = verdict.decision.confidence,
            latency_ms = latency.as_secs_f64() * 1e3,
            "verdict"
        );
        ctx.sink.emit(EngineEvent::Verdict {
            verdict: verdict.clone(),
            repeated: false,
        });
        ctx.stats.record_verdict_latency(latency);
        ctx.verdicts.fetch_add(1, Ordering::Relaxed);
        self.phrases_decided += 1;
        let dir = ctx.cfg.output_dir.as_deref().and_then(|out| {
            crate::artifacts::job::phrase_dir(out, self.session.id(), p.signal.phrase)
                .map_err(|e| {
                    metrics::counter!("referee_artifact_errors_total").increment(1);
                    warn!(session = self.session.id(), error = %e, "artifacts not written");
                })
                .ok()
        });
        if let Some(dir) = dir {
            let job = ArtifactJob {
                dir,
                title: format!(
                    "{} phrase {}: {:?} ({:.0}%)",
                    self.session.id(),
                    p.signal.phrase,
                    verdict.decision.winner,
                    verdict.decision.confidence * 100.0
                ),
                result_json: verdict.detail_json.clone(),
                poses: self.poses.clone(),
                timeline: p.timeline.clone(),
                rectified: self.rectified,
                overlay: self.overlay_frame(&p.timeline, p.origin_frame),
                rectify: self.session.rectify,
            };
            if let Some(handle) = crate::artifacts::job::spawn(job) {
                let mut writers = ctx.artifact_writers.lock();
                writers.retain(|h| !h.is_finished());
                writers.push(handle);
            }
        }
        if self.verdicts.len() >= 16 {
            self.verdicts.remove(0);
        }
        self.verdicts.push(verdict);
        if self.phrases_decided > 0 {
            self.analyzer = PhraseAnalyzer::new(self.fps);
            self.analyzer
                .set_frame_width(self.rectified.0.max(1) as f32);
            let keep_from = p.end_frame + 1;
            self.poses.retain(|tp| tp.tracked.frame >= keep_from);
        }
    }

    fn reanalyze(&self, p: &Pending) -> Decision {
        let mut analyzer = PhraseAnalyzer::new(self.fps);
        analyzer.set_frame_width(self.rectified.0.max(1) as f32);
        for tp in &self.poses {
            let f = tp.tracked.frame;
            if f < p.origin_frame || f > p.end_frame {
                continue;
            }
            analyzer.push(&PoseFrame {
                frame: f,
                t: (f - p.origin_frame) as f64 / self.fps,
                left: tp.tracked.left,
                right: tp.tracked.right,
            });
        }
        analyzer.decide(&p.timeline)
    }

    fn overlay_frame(&self, timeline: &Timeline, origin_frame: u64) -> Option<OverlayFrame> {
        let hit_t = timeline.first_hit().map_or(0.0, |(t, _)| t);
        let target = origin_frame + (hit_t * self.fps).round().max(0.0) as u64;
        let (frame, encoding, bytes) = self
            .ring
            .iter()
            .min_by_key(|(f, _, _)| f.abs_diff(target))?
            .clone();
        let pose = self.poses.iter().find(|tp| tp.tracked.frame == frame);
        Some(OverlayFrame {
            frame,
            encoding,
            bytes,
            left: pose.and_then(|tp| tp.tracked.left),
            right: pose.and_then(|tp| tp.tracked.right),
        })
    }

    fn verdict(&self, p: &Pending, decision: Decision, latency: std::time::Duration) -> Verdict {
        let stats = self.session.counters.snapshot();
        let both_visible = self
            .poses
            .iter()
            .filter(|tp| tp.tracked.left.is_some() && tp.tracked.right.is_some())
            .count();
        let detail_json = result_document(
            self.session.id(),
            self.session.piste(),
            &p.signal,
            &decision,
            &p.timeline,
            latency,
            self.poses.len(),
            both_visible,
            &stats,
        );
        Verdict {
            session_id: self.session.id().to_string(),
            piste: self.session.piste().to_string(),
            phrase: p.signal.phrase,
            decision,
            latency,
            detail_json,
        }
    }
}

/// The track thread: runs until the pipeline shuts down.
pub(crate) fn run(ctx: &StageContext, rx: Receiver<PosedFrame>, control: Receiver<Control>) {
    let mut states: HashMap<String, SessionReferee> = HashMap::new();
    let tick = ctx.cfg.track_tick;
    loop {
        select! {
            recv(rx) -> msg => match msg {
                Ok(posed) => {
                    let id = posed.session.id().to_string();
                    if posed.session.is_closed() {
                        continue;
                    }
                    let now = ctx.clock.now();
                    let state = states
                        .entry(id)
                        .or_insert_with(|| SessionReferee::new(posed.session.clone(), now));
                    state.accept(ctx, posed, now);
                    state.try_decide(ctx, now);
                }
                Err(_) => break,
            },
            recv(control) -> msg => match msg {
                Ok(Control::Signal { session, signal, received_at }) => {
                    let now = ctx.clock.now();
                    let state = states
                        .entry(session.id().to_string())
                        .or_insert_with(|| SessionReferee::new(session.clone(), now));
                    state.on_signal(ctx, signal, received_at, now);
                }
                Ok(Control::End { session, reason }) => {
                    end_session(ctx, &mut states, &session, reason);
                }
                Err(_) => break,
            },
            default(tick) => {}
        }
        let now = ctx.clock.now();
        for state in states.values_mut() {
            if state.is_deciding() {
                state.try_decide(ctx, now);
            }
        }
    }
}

fn end_session(
    ctx: &StageContext,
    states: &mut HashMap<String, SessionReferee>,
    session: &Arc<Session>,
    reason: EndReason,
) {
    if let Some(mut state) = states.remove(session.id()) {
        if reason == EndReason::Ended && state.is_deciding() {
            state.decide(ctx, ctx.clock.now());
        }
    }
    session.close();
    ctx.sink.emit(EngineEvent::SessionEnded {
        session_id: session.id().to_string(),
        piste: session.piste().to_string(),
        stats: session.counters.snapshot(),
    });
    info!(session = session.id(), ?reason, "session closed");
}

#[cfg(test)]
mod tests {
    //! The verdict path driven by hand with a manual clock: no thread, no sleep.
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use crossbeam_channel::Receiver;
    use parking_lot::Mutex;
    use referee_pose_api::Person;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::config::EngineConfig;
    use crate::event::SessionSpec;
    use crate::stats::EngineStats;

    const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.512s | Lockout period started (0.200s window)\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";
    /// At 15 fps the phrase above (0.6 s) ends with frame 8.
    const END_FRAME: u64 = 8;

    struct Rig {
        ctx: StageContext,
        clock: Arc<ManualClock>,
        events: Receiver<EngineEvent>,
        session: Arc<Session>,
        referee: SessionReferee,
    }

    fn rig() -> Rig {
        let clock = Arc::new(ManualClock::new());
        let (tx, events) = crossbeam_channel::unbounded();
        let ctx = StageContext {
            cfg: EngineConfig {
                signal_wait: Duration::from_secs(3),
                ..EngineConfig::default()
            },
            stats: EngineStats::default(),
            clock: clock.clone(),
            sink: Arc::new(tx),
            verdicts: AtomicU64::new(0),
            artifact_writers: Mutex::new(Vec::new()),
        };
        let spec = SessionSpec {
            id: "s".into(),
            piste: "1".into(),
            camera: "test".into(),
            fps: 15.0,
            width: 320,
            height: 192,
            undistort: None,
            resume: false,
        };
        let session = Arc::new(Session::new(spec, ctx.cfg.rectify, clock.now()));
        let referee = SessionReferee::new(session.clone(), clock.now());
        Rig {
            ctx,
            clock,
            events,
            session,
            referee,
        }
    }

    fn person(cx: f32) -> Person {
        let mut keypoints = [[0.0f32; 3]; 17];
        for (k, kp) in keypoints.iter_mut().enumerate() {
            *kp = [
                cx + if k % 2 == 0 { -5.0 } else { 5.0 },
                40.0 + 6.0 * k as f32,
                0.9,
            ];
        }
        Person {
            score: 0.9,
            bbox: [cx - 30.0, 40.0, cx + 30.0, 140.0],
            keypoints,
        }
    }

    impl Rig {
        /// The agent's frames reached admission (what the ack covers).
        fn admit(&self, frames: std::ops::RangeInclusive<u64>) {
            let mut received = self.session.received.lock();
            for f in frames {
                received.insert(f);
            }
        }

        /// A frame comes out of the pose stage now.
        fn arrive(&mut self, frame: u64) {
            let now = self.clock.now();
            let posed = PosedFrame {
                session: self.session.clone(),
                frame,
                capture_ts_us: 1_000_000 + frame * 66_667,
                encoding: FrameEncoding::Jpeg,
                bytes: Arc::new(Vec::new()),
                persons: Some(vec![person(100.0), person(220.0)]),
                rectified: (320, 192),
                admitted_at: now,
            };
            self.referee.accept(&self.ctx, posed, now);
            self.referee.try_decide(&self.ctx, now);
        }

        fn signal(&mut self) {
            let now = self.clock.now();
            let signal = PhraseSignal {
                session_id: "s".into(),
                phrase: 0,
                filename: "signal.txt".into(),
                bytes: SIGNAL.as_bytes().to_vec(),
                phrase_start_us: None,
            };
            self.referee.on_signal(&self.ctx, signal, now, now);
        }

        fn tick(&mut self, d: Duration) {
            self.clock.advance(d);
            let now = self.clock.now();
            self.referee.try_decide(&self.ctx, now);
        }

        fn verdict(&self) -> Option<Verdict> {
            self.events.try_iter().find_map(|e| match e {
                EngineEvent::Verdict { verdict, .. } => Some(verdict),
                _ => None,
            })
        }
    }

    #[test]
    fn waits_for_frames_still_in_flight_then_decides_at_once() {
        let mut r = rig();
        r.admit(0..=END_FRAME);
        for f in 0..=6 {
            r.arrive(f);
        }
        r.signal();
        assert!(
            r.referee.is_deciding(),
            "frames 7 and 8 are still in the pipeline"
        );
        r.tick(Duration::from_secs(2));
        assert!(r.verdict().is_none(), "inside the signal wait");
        r.arrive(7);
        assert!(r.verdict().is_none());
        r.arrive(8);
        let v = r.verdict().expect("the last frame of the phrase closes it");
        let detail: serde_json::Value = serde_json::from_str(&v.detail_json).unwrap();
        assert_eq!(detail["frames_tracked"], 9);
        assert_eq!(
            v.latency,
            Duration::from_secs(2),
            "latency is measured on the clock"
        );
        assert!(!r.referee.is_deciding());
    }

    #[test]
    fn frames_never_sent_are_waited_for_only_the_quiet_limit() {
        let mut r = rig();
        // The agent sent frames 0-5 only; 6-8 may still come.
        r.admit(0..=5);
        for f in 0..=5 {
            r.arrive(f);
        }
        r.signal();
        r.tick(Duration::from_millis(2_999));
        assert!(r.verdict().is_none(), "quiet for less than the signal wait");
        r.tick(Duration::from_millis(1));
        let v = r.verdict().expect("decided with what is there");
        assert_eq!(v.latency, Duration::from_secs(3));
        let detail: serde_json::Value = serde_json::from_str(&v.detail_json).unwrap();
        assert_eq!(detail["frames_tracked"], 6);
    }

    #[test]
    fn a_frame_arriving_restarts_the_quiet_limit() {
        let mut r = rig();
        r.admit(0..=4);
        for f in 0..=4 {
            r.arrive(f);
        }
        r.signal();
        r.tick(Duration::from_secs(2));
        r.admit(5..=5);
        r.arrive(5);
        r.tick(Duration::from_secs(2));
        assert!(r.verdict().is_none(), "2 s since the last frame, not 3");
        r.tick(Duration::from_secs(1));
        assert!(r.verdict().is_some());
    }

    #[test]
    fn a_repeated_signal_is_answered_with_the_same_verdict() {
        let mut r = rig();
        r.admit(0..=END_FRAME);
        for f in 0..=END_FRAME {
            r.arrive(f);
        }
        r.signal();
        let first = r.verdict().expect("all frames were there");
        r.signal();
        let again: Vec<EngineEvent> = r.events.try_iter().collect();
        assert!(
            matches!(&again[..], [EngineEvent::Verdict { verdict, repeated: true }] if *verdict == first),
            "{again:?}"
        );
        assert_eq!(r.ctx.verdicts.load(Ordering::Relaxed), 1);
    }
}
