//! The track stage: per-session reorder buffer, two-fencer tracking, the referee's incremental
//! features, live state, and the verdict when the signal lands.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use referee_rules::signal::{parse_signal, Timeline};
use referee_rules::{Decision, PhraseAnalyzer, PoseFrame};
use referee_transport::messages::{
    ErrorCode, ErrorMsg, Evidence, FeedEvent, FencerState, FrameEncoding, LiveState, ServerMsg,
    Side, Signal, VerdictReport, Winner,
};
use serde::Serialize;
use tracing::{info, info_span, warn};

use crate::ack::AckTracker;
use crate::artifacts_job::{ArtifactJob, OverlayFrame};
use crate::pipeline::{Control, EndReason, PosedFrame, Shared};
use crate::session::SessionShared;
use crate::stats::{DropReason, Stage};
use crate::tracker::{TrackedFrame, TrackerConfig, TwoFencerTracker};

/// Encoded frames kept per session for the overlay artifact: two seconds' worth.
pub(crate) fn image_ring_len(fps: f32) -> usize {
    ((fps.max(1.0) * 2.0).ceil() as usize).clamp(8, 240)
}

/// One tracked frame with its time, as kept for the verdict and the artifacts.
#[derive(Debug, Clone)]
pub struct TrackedPose {
    /// The tracker's output (keypoints in rectified-image pixels).
    pub tracked: TrackedFrame,
    /// Capture timestamp from the agent, microseconds since the epoch.
    pub capture_ts_us: u64,
    /// Seconds since the session's first frame, from the frame number and the session fps.
    pub t: f64,
}

struct Pending {
    signal: Signal,
    timeline: Timeline,
    received_at: Instant,
    /// The frame at the phrase's start (signal times are seconds from this frame).
    origin_frame: u64,
    /// The frame at the phrase's end: frames up to it are waited for before deciding.
    end_frame: u64,
}

/// Track-stage state of one session.
pub(crate) struct PhraseTracker {
    session: Arc<SessionShared>,
    fps: f64,
    reorder: BTreeMap<u64, PosedFrame>,
    next_frame: u64,
    arrived: AckTracker,
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
    verdicts: Vec<VerdictReport>,
}

impl PhraseTracker {
    fn new(session: Arc<SessionShared>) -> Self {
        let fps = session.start.fps as f64;
        Self {
            session,
            fps,
            reorder: BTreeMap::new(),
            next_frame: 0,
            arrived: AckTracker::default(),
            tracker: TwoFencerTracker::new(TrackerConfig::default()),
            analyzer: PhraseAnalyzer::new(fps),
            poses: Vec::new(),
            ring: VecDeque::new(),
            rectified: (0, 0),
            pending: None,
            phrases_decided: 0,
            last_arrival: Instant::now(),
            verdicts: Vec::new(),
        }
    }

    /// Accepts a frame from the pose stage and processes every frame now in order.
    fn accept(&mut self, shared: &Shared, posed: PosedFrame) {
        if !self.arrived.insert(posed.frame) {
            return;
        }
        self.last_arrival = Instant::now();
        if posed.frame < self.next_frame {
            // The reorder window moved past this frame while it was in flight.
            self.session
                .counters
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            shared.stats.count_drop(DropReason::Late);
            return;
        }
        self.reorder.insert(posed.frame, posed);
        self.drain(shared, None);
    }

    /// Processes buffered frames in order. Gaps are skipped when the buffer exceeds the reorder
    /// window, or (with `flush_to`) for every frame up to that number.
    fn drain(&mut self, shared: &Shared, flush_to: Option<u64>) {
        loop {
            let Some((&first, _)) = self.reorder.first_key_value() else {
                return;
            };
            let may_skip = self.reorder.len() > shared.cfg.reorder_window
                || flush_to.is_some_and(|end| first <= end);
            if first != self.next_frame && !may_skip {
                return;
            }
            let Some(posed) = self.reorder.remove(&first) else {
                return;
            };
            self.next_frame = first + 1;
            self.process(shared, posed);
        }
    }

    fn process(&mut self, shared: &Shared, posed: PosedFrame) {
        let started = Instant::now();
        self.ring
            .push_back((posed.frame, posed.encoding, posed.bytes.clone()));
        while self.ring.len() > image_ring_len(self.session.start.fps) {
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
        shared
            .stats
            .frames_processed
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("referee_frames_processed_total").increment(1);
        shared.stats.record_stage(Stage::Track, started.elapsed());
        metrics::histogram!("referee_frame_latency_seconds")
            .record(posed.admitted_at.elapsed().as_secs_f64());
        self.publish_live(shared, posed.frame, t);
    }

    fn publish_live(&self, shared: &Shared, frame: u64, t: f64) {
        let live = self.analyzer.live();
        let fencer = |est: &referee_rules::SideLive| FencerState {
            x: est.x.unwrap_or(f32::NAN),
            speed: est.speed,
            action: est.action.to_string(),
            visible: est.visible,
        };
        let state = LiveState {
            session_id: self.session.id().to_string(),
            piste: self.session.piste().to_string(),
            frame,
            t: t as f32,
            left: fencer(&live.left),
            right: fencer(&live.right),
            right_of_way: live.right_of_way.map(side_to_wire),
            confidence: live.confidence,
        };
        if frame.is_multiple_of(10) {
            self.session.send(ServerMsg::Progress {
                session_id: self.session.id().to_string(),
                stats: self.session.counters.snapshot(),
                queue_depth: shared.stats.queue_depths().values().sum::<usize>() as u32,
            });
        }
        shared.feed.publish(FeedEvent::Live(state));
    }

    fn on_signal(&mut self, shared: &Shared, signal: Signal, received_at: Instant) {
        // An agent that reconnects sends an unanswered signal again: answer once per phrase.
        if let Some(v) = self.verdicts.iter().find(|v| v.phrase == signal.phrase) {
            info!(
                session = self.session.id(),
                phrase = signal.phrase,
                "repeated signal: verdict sent again"
            );
            self.session.send(ServerMsg::Verdict(v.clone()));
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
                let err = ErrorMsg {
                    code: ErrorCode::BadSignal,
                    message: format!("signal log {:?} rejected: {e}", signal.filename),
                    recoverable: true,
                    session_id: Some(self.session.id().to_string()),
                };
                self.session.send(ServerMsg::Error(err.clone()));
                shared.feed.publish(FeedEvent::Error(err));
                return;
            }
        };
        if self.pending.is_some() {
            warn!(
                session = self.session.id(),
                "a new signal arrived before the previous verdict; deciding the previous one now"
            );
            self.decide(shared);
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
            .min(shared.cfg.max_frames_per_session.saturating_sub(1));
        self.pending = Some(Pending {
            signal,
            timeline,
            received_at,
            origin_frame,
            end_frame,
        });
        self.try_decide(shared);
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
    fn try_decide(&mut self, shared: &Shared) {
        let Some(p) = &self.pending else { return };
        let (admitted, admitted_max) = {
            let acks = self.session.acks.lock();
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
        let waited_enough = quiet_since.elapsed() >= shared.cfg.signal_wait;
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
        self.decide(shared);
    }

    fn decide(&mut self, shared: &Shared) {
        let Some(p) = self.pending.take() else { return };
        let _span = info_span!(
            "verdict",
            session = self.session.id(),
            phrase = p.signal.phrase
        )
        .entered();
        self.drain(shared, Some(p.end_frame));
        let decision = if p.origin_frame == 0 && self.phrases_decided == 0 {
            // The phrase started with the session: the incremental features are up to date.
            self.analyzer.decide(&p.timeline)
        } else {
            // Continuous bout: the phrase is the window the log describes.
            self.reanalyze(&p)
        };
        let latency = p.received_at.elapsed();
        let report = self.report(&p, &decision, latency);
        info!(
            session = self.session.id(),
            winner = ?report.winner,
            confidence = report.confidence,
            latency_ms = report.latency_ms,
            "verdict"
        );
        self.session.send(ServerMsg::Verdict(report.clone()));
        shared.feed.publish(FeedEvent::Verdict(report.clone()));
        shared.stats.record_verdict_latency(latency);
        shared.verdicts.fetch_add(1, Ordering::Relaxed);
        self.phrases_decided += 1;
        if self.verdicts.len() >= 16 {
            self.verdicts.remove(0);
        }
        self.verdicts.push(report.clone());
        if let Some(dir) = &shared.cfg.output_dir {
            let job = ArtifactJob {
                dir: dir
                    .join(self.session.id())
                    .join(format!("phrase-{:03}", p.signal.phrase)),
                title: format!(
                    "{} phrase {}: {:?} ({:.0}%)",
                    self.session.id(),
                    p.signal.phrase,
                    report.winner,
                    report.confidence * 100.0
                ),
                result_json: report.detail_json.clone(),
                poses: self.poses.clone(),
                timeline: p.timeline.clone(),
                rectified: self.rectified,
                overlay: self.overlay_frame(&p.timeline, p.origin_frame),
                rectify: self.session.rectify,
            };
            if let Some(handle) = crate::artifacts_job::spawn(job) {
                let mut writers = shared.artifact_writers.lock();
                writers.retain(|h| !h.is_finished());
                writers.push(handle);
            }
        }
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

    fn report(&self, p: &Pending, d: &Decision, latency: Duration) -> VerdictReport {
        let winner = match d.winner {
            referee_rules::Winner::Left => Winner::Left,
            referee_rules::Winner::Right => Winner::Right,
            referee_rules::Winner::Uncertain => Winner::Uncertain,
        };
        let evidence: Vec<Evidence> = d
            .evidence
            .iter()
            .map(|e| Evidence {
                frame: e.frame,
                t: e.t as f32,
                what: e.what.clone(),
            })
            .collect();
        let latency_ms = latency.as_secs_f64() * 1e3;
        let stats = self.session.counters.snapshot();
        let both_visible = self
            .poses
            .iter()
            .filter(|tp| tp.tracked.left.is_some() && tp.tracked.right.is_some())
            .count();
        let detail = ResultDoc {
            session_id: self.session.id(),
            piste: self.session.piste(),
            phrase: p.signal.phrase,
            signal_file: &p.signal.filename,
            verdict: d,
            timeline: &p.timeline,
            latency_ms,
            frames_tracked: self.poses.len(),
            frames_both_visible: both_visible,
            stats: &stats,
        };
        VerdictReport {
            session_id: self.session.id().to_string(),
            piste: self.session.piste().to_string(),
            phrase: p.signal.phrase,
            winner,
            confidence: d.confidence,
            reason: d.reason.clone(),
            evidence,
            latency_ms: latency_ms as f32,
            detail_json: serde_json::to_string_pretty(&detail)
                .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise result: {e}\"}}")),
        }
    }
}

/// The document written to result.json and carried in `VerdictReport::detail_json`.
#[derive(Serialize)]
struct ResultDoc<'a> {
    session_id: &'a str,
    piste: &'a str,
    phrase: u32,
    signal_file: &'a str,
    verdict: &'a Decision,
    timeline: &'a Timeline,
    latency_ms: f64,
    frames_tracked: usize,
    frames_both_visible: usize,
    stats: &'a referee_transport::messages::SessionStats,
}

fn side_to_wire(side: referee_rules::Side) -> Side {
    match side {
        referee_rules::Side::Left => Side::Left,
        referee_rules::Side::Right => Side::Right,
    }
}

/// The track thread: runs until the pipeline shuts down.
pub(crate) fn track_stage(shared: &Shared, rx: Receiver<PosedFrame>, control: Receiver<Control>) {
    let mut states: HashMap<String, PhraseTracker> = HashMap::new();
    let tick = Duration::from_millis(50);
    loop {
        select! {
            recv(rx) -> msg => match msg {
                Ok(posed) => {
                    let id = posed.session.id().to_string();
                    if posed.session.is_closed() {
                        continue;
                    }
                    let state = states
                        .entry(id)
                        .or_insert_with(|| PhraseTracker::new(posed.session.clone()));
                    state.accept(shared, posed);
                    state.try_decide(shared);
                }
                Err(_) => break,
            },
            recv(control) -> msg => match msg {
                Ok(Control::Signal { session, signal, received_at }) => {
                    let state = states
                        .entry(session.id().to_string())
                        .or_insert_with(|| PhraseTracker::new(session.clone()));
                    state.on_signal(shared, signal, received_at);
                }
                Ok(Control::End { session, reason }) => {
                    end_session(shared, &mut states, &session, reason);
                }
                Err(_) => break,
            },
            default(tick) => {}
        }
        for state in states.values_mut() {
            if state.pending.is_some() {
                state.try_decide(shared);
            }
        }
    }
}

fn end_session(
    shared: &Shared,
    states: &mut HashMap<String, PhraseTracker>,
    session: &Arc<SessionShared>,
    reason: EndReason,
) {
    if let Some(mut state) = states.remove(session.id()) {
        if reason == EndReason::Ended && state.pending.is_some() {
            state.decide(shared);
        }
    }
    session.close();
    let stats = session.counters.snapshot();
    session.send(ServerMsg::SessionEnded {
        session_id: session.id().to_string(),
        stats: stats.clone(),
    });
    session.detach();
    shared.feed.publish(FeedEvent::SessionEnded {
        session_id: session.id().to_string(),
        piste: session.piste().to_string(),
        stats,
    });
    info!(session = session.id(), ?reason, "session closed");
}
