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
    /// Session time (seconds, see [`Timebase`]) of `origin_frame`: the signal log's 0.
    origin_t: f64,
    /// Session time at which the phrase ends (`origin_t` + the log's end).
    end_t: f64,
    /// The frame at the phrase's end: frames up to it are waited for before deciding. Estimated
    /// from the capture rate when the signal lands, then narrowed by every frame whose stamp is
    /// known ([`Pending::narrow`]).
    end_frame: u64,
    /// True once a frame at or after `end_t` is known, so `end_frame` is exact.
    end_known: bool,
    /// A quarter of a frame period: a frame starting this close to the end shows (almost)
    /// nothing of the phrase, and rounding in the measured rate must not make the phrase wait
    /// for a frame that starts exactly at its end.
    tolerance: f64,
}

impl Pending {
    /// A frame at session time `t` bounds the phrase's last frame: before the end it is in the
    /// phrase (so the end is at least this frame), at or after it the end is before it.
    fn narrow(&mut self, frame: u64, t: Option<f64>, max_frame: u64) {
        let Some(t) = t else { return };
        if frame < self.origin_frame {
            return;
        }
        if t < self.end_t - self.tolerance {
            if frame > self.end_frame && !self.end_known {
                self.end_frame = frame.min(max_frame);
            }
        } else if frame > 0 && (frame - 1 < self.end_frame || !self.end_known) {
            self.end_frame = (frame - 1).max(self.origin_frame).min(max_frame);
            self.end_known = true;
        }
    }
}

/// Session time from the frames' capture stamps (`capture_ts_us`), so a phrase's times do not
/// depend on the rate the agent declared, its pacing, dropped frames or a camera's real rate.
/// Time 0 is frame 0: the first stamped frame `f` anchors the clock at `f / declared fps`
/// (frames before it never arrived, so the declared rate is the only guess for them).
///
/// Fallback: a frame whose stamp is missing (0), not later than the previous frame's, or that
/// would not move time forward, is placed `frames / declared fps` after the previous frame; a
/// session without any stamp is timed by frame number / declared fps, as before.
struct Timebase {
    fps: f64,
    /// (frame, stamp µs, session time) of the first stamped frame.
    anchor: Option<(u64, u64, f64)>,
    /// (frame, stamp µs or 0, session time) of the last frame timed.
    last: Option<(u64, u64, f64)>,
    /// Frames timed by their own stamp.
    stamped: u64,
}

impl Timebase {
    fn new(fps: f64) -> Self {
        Self {
            fps,
            anchor: None,
            last: None,
            stamped: 0,
        }
    }

    /// The session time of a stamp, without timing a frame (None before the first stamp).
    fn time_of_stamp(&self, ts_us: u64) -> Option<f64> {
        let (_, a_ts, a_t) = self.anchor?;
        (ts_us > 0).then(|| a_t + (ts_us as f64 - a_ts as f64) / 1e6)
    }

    /// Times the next frame (frames come in increasing order).
    fn time(&mut self, frame: u64, ts_us: u64) -> f64 {
        let t = match (self.anchor, self.last) {
            (None, last) => {
                let t = match last {
                    Some((lf, _, lt)) => lt + frame.saturating_sub(lf) as f64 / self.fps,
                    None => frame as f64 / self.fps,
                };
                if ts_us > 0 {
                    self.anchor = Some((frame, ts_us, t));
                    self.stamped += 1;
                }
                t
            }
            (Some(_), Some((lf, lts, lt))) => {
                let by_rate = lt + frame.saturating_sub(lf) as f64 / self.fps;
                match self.time_of_stamp(ts_us) {
                    Some(t) if ts_us > lts && t > lt => {
                        self.stamped += 1;
                        t
                    }
                    _ => by_rate,
                }
            }
            (Some(_), None) => unreachable!("an anchor is set with the first frame"),
        };
        self.last = Some((frame, ts_us, t));
        t
    }

    /// Frames per second of capture time over the poses given (frame numbers count captures, so
    /// dropped frames do not lower it); the declared rate while fewer than two are stamped.
    fn rate(&self, poses: &[TrackedPose]) -> f64 {
        let stamped = || poses.iter().filter(|p| p.capture_ts_us > 0);
        match (stamped().next(), stamped().next_back()) {
            (Some(a), Some(b)) if self.stamped >= 2 && b.t > a.t => {
                let r = (b.tracked.frame - a.tracked.frame) as f64 / (b.t - a.t);
                if r.is_finite() && r > 0.0 {
                    r
                } else {
                    self.fps
                }
            }
            _ => self.fps,
        }
    }
}

/// The per-session referee of the track stage: puts frames back in order, tracks both fencers,
/// keeps the phrase features, and decides when a signal's phrase is complete.
pub(crate) struct SessionReferee {
    session: Arc<Session>,
    fps: f64,
    timebase: Timebase,
    /// The largest frame pushed into the incremental analyzer.
    analyzed_upto: Option<u64>,
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
            timebase: Timebase::new(fps),
            analyzed_upto: None,
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
        let t = self.timebase.time_of_stamp(posed.capture_ts_us);
        let max_frame = ctx.cfg.max_frames_per_session.saturating_sub(1);
        if let Some(p) = &mut self.pending {
            p.narrow(posed.frame, t, max_frame);
        }
        self.reorder.insert(posed.frame, posed);
        self.drain(ctx, None);
    }

    /// Processes buffered frames in order. Gaps are skipped when the buffer exceeds the reorder
    /// window, or (with `flush_to`) for every frame up to that number. A frame that was admitted
    /// is inside the pipeline and will come out of it (every stage forwards even the frames it
    /// fails), so the window never skips it: only frames the agent has not delivered are
    /// given up on.
    fn drain(&mut self, ctx: &StageContext, flush_to: Option<u64>) {
        loop {
            let Some((&first, _)) = self.reorder.first_key_value() else {
                return;
            };
            let may_skip = flush_to.is_some_and(|end| first <= end)
                || (self.reorder.len() > ctx.cfg.reorder_window
                    && !self.gap_in_pipeline(self.next_frame, first));
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

    /// True when a frame in `from..to` was admitted but has not come out of the pipeline yet.
    fn gap_in_pipeline(&self, from: u64, to: u64) -> bool {
        let admitted = self.session.received.lock();
        (from..to).any(|f| admitted.contains(f) && !self.arrived.contains(f))
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
        let t = self.timebase.time(posed.frame, posed.capture_ts_us);
        self.analyzed_upto = Some(posed.frame);
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
        let origin_t = self.time_of_frame(origin_frame);
        let end = timeline.phrase_end().unwrap_or(0.0).max(0.0);
        // Frame k shows [t_k, t_k+1): the last frame of the phrase is the one that starts
        // strictly before its end. First guess from the capture rate measured on the stamps
        // (the declared rate without them); the frames whose stamps are known then narrow it.
        let rate = self.timebase.rate(&self.poses);
        let tolerance = 0.25 / rate.max(1e-3);
        let phrase_frames = ((end - tolerance) * rate).floor().max(0.0) as u64;
        let max_frame = ctx.cfg.max_frames_per_session.saturating_sub(1);
        let mut pending = Pending {
            signal,
            timeline,
            received_at,
            origin_frame,
            origin_t,
            end_t: origin_t + end,
            end_frame: origin_frame.saturating_add(phrase_frames).min(max_frame),
            end_known: false,
            tolerance,
        };
        let tracked = self.poses.iter().map(|p| (p.tracked.frame, Some(p.t)));
        let buffered = self
            .reorder
            .values()
            .map(|p| (p.frame, self.timebase.time_of_stamp(p.capture_ts_us)));
        let mut known: Vec<(u64, Option<f64>)> = tracked.chain(buffered).collect();
        known.sort_by_key(|(f, _)| *f);
        for (frame, t) in known {
            pending.narrow(frame, t, max_frame);
        }
        self.pending = Some(pending);
        self.try_decide(ctx, now);
    }

    /// The session time of a frame already tracked (or still buffered), else its place at the
    /// declared rate after the last frame timed.
    fn time_of_frame(&self, frame: u64) -> f64 {
        if let Some(p) = self.poses.iter().find(|p| p.tracked.frame == frame) {
            return p.t;
        }
        if let Some(t) = self
            .reorder
            .get(&frame)
            .and_then(|p| self.timebase.time_of_stamp(p.capture_ts_us))
        {
            return t;
        }
        match self.timebase.last {
            Some((lf, _, lt)) => lt + (frame as f64 - lf as f64) / self.fps,
            None => frame as f64 / self.fps,
        }
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
        let rate = self.phrase_rate(&p);
        let incremental_fits = p.origin_frame == 0
            && self.phrases_decided == 0
            && self.analyzed_upto.is_none_or(|f| f <= p.end_frame)
            && (rate - self.fps).abs() <= 0.05 * self.fps;
        let decision = if incremental_fits {
            // The phrase started with the session and nothing past its end was pushed: the
            // incremental features are up to date.
            self.analyzer
                .decide_model(&p.timeline, &ctx.cfg.referee_model)
        } else {
            // Continuous bout, frames past the end, or a capture rate other than the declared
            // one: the phrase is the window the log describes, at the measured rate.
            self.reanalyze(&p, rate, &ctx.cfg.referee_model)
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
                    warn!(session = self.session.id(), error = %e, "artifacts not written");
                    ctx.artifacts.record_failure(e.to_string());
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
                overlay: self.overlay_frame(&p),
                rectify: self.session.rectify,
            };
            // A refusal is warned about and counted by the pool.
            let _ = ctx.artifacts.submit(job);
        }
        if self.verdicts.len() >= 16 {
            self.verdicts.remove(0);
        }
        self.verdicts.push(verdict);
        if self.phrases_decided > 0 {
            self.analyzer = PhraseAnalyzer::new(self.fps);
            self.analyzer
                .set_frame_width(self.rectified.0.max(1) as f32);
            self.analyzed_upto = None;
            let keep_from = p.end_frame + 1;
            self.poses.retain(|tp| tp.tracked.frame >= keep_from);
        }
    }

    /// The phrase's poses: frames from its origin to its end (poses are in frame order).
    fn phrase_poses(&self, p: &Pending) -> &[TrackedPose] {
        let from = self
            .poses
            .partition_point(|tp| tp.tracked.frame < p.origin_frame);
        let to = self
            .poses
            .partition_point(|tp| tp.tracked.frame <= p.end_frame);
        &self.poses[from..to.max(from)]
    }

    /// The capture rate over the phrase (the declared rate without stamps).
    fn phrase_rate(&self, p: &Pending) -> f64 {
        self.timebase.rate(self.phrase_poses(p))
    }

    fn reanalyze(&self, p: &Pending, rate: f64, model: &referee_rules::Model) -> Decision {
        let mut analyzer = PhraseAnalyzer::new(rate);
        analyzer.set_frame_width(self.rectified.0.max(1) as f32);
        for tp in self.phrase_poses(p) {
            analyzer.push(&PoseFrame {
                frame: tp.tracked.frame,
                t: tp.t - p.origin_t,
                left: tp.tracked.left,
                right: tp.tracked.right,
            });
        }
        analyzer.decide_model(&p.timeline, model)
    }

    fn overlay_frame(&self, p: &Pending) -> Option<OverlayFrame> {
        let hit_t = p.timeline.first_hit().map_or(0.0, |(t, _)| t);
        let at = p.origin_t + hit_t;
        let target = self
            .poses
            .iter()
            .min_by(|a, b| (a.t - at).abs().total_cmp(&(b.t - at).abs()))
            .map_or(p.origin_frame, |tp| tp.tracked.frame);
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
        rig_with(15.0)
    }

    fn rig_with(fps: f32) -> Rig {
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
            artifacts: crate::artifacts::job::start_pool(None, 1, 1),
        };
        let spec = SessionSpec {
            id: "s".into(),
            piste: "1".into(),
            camera: "test".into(),
            fps,
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

        /// Frames the agent sent and the pipeline delivered, in order, now.
        fn stream(&mut self, frames: std::ops::RangeInclusive<u64>) {
            self.admit(frames.clone());
            for f in frames {
                self.arrive(f);
            }
        }

        /// A frame comes out of the pose stage now (stamped at 15 fps).
        fn arrive(&mut self, frame: u64) {
            self.arrive_stamped(frame, 1_000_000 + frame * 66_667);
        }

        fn arrive_stamped(&mut self, frame: u64, capture_ts_us: u64) {
            let now = self.clock.now();
            let posed = PosedFrame {
                session: self.session.clone(),
                frame,
                capture_ts_us,
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

    /// CI failure (2026-12-02): a frame held up inside the pipeline while more than the reorder
    /// window of later frames came out was skipped, then dropped as late when it arrived.
    #[test]
    fn a_frame_held_up_in_the_pipeline_is_not_skipped_by_the_reorder_window() {
        let mut r = rig();
        let window = r.ctx.cfg.reorder_window as u64;
        let last = window + 10;
        r.admit(0..=last);
        for f in (0..=last).filter(|&f| f != 3) {
            r.arrive(f);
        }
        assert_eq!(
            r.session.counters.snapshot().processed,
            3,
            "waits at frame 3"
        );
        r.arrive(3);
        let stats = r.session.counters.snapshot();
        assert_eq!(stats.processed, last + 1);
        assert_eq!(stats.dropped, 0);
    }

    #[test]
    fn a_frame_never_admitted_is_skipped_once_the_reorder_window_is_full() {
        let mut r = rig();
        let window = r.ctx.cfg.reorder_window as u64;
        let last = window + 10;
        r.admit(0..=2);
        r.admit(4..=last);
        for f in (0..=last).filter(|&f| f != 3) {
            r.arrive(f);
        }
        let stats = r.session.counters.snapshot();
        assert!(
            stats.processed >= last - window,
            "frames past the gap are processed: {stats:?}"
        );
        r.admit(3..=3);
        r.arrive(3);
        assert_eq!(
            r.session.counters.snapshot().dropped,
            1,
            "frame 3 came too late"
        );
    }

    #[test]
    fn frames_never_sent_are_waited_for_only_the_quiet_limit() {
        let mut r = rig();
        // The agent sent frames 0-5 only; 6-8 may still come.
        r.stream(0..=5);
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
        r.stream(0..=4);
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
        r.stream(0..=END_FRAME);
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

    /// Issue #16 item 5: the frames to wait for were counted at the declared rate (60 fps: up
    /// to frame 35 of a 0.6 s phrase that a 15 fps camera ends with frame 8), so the verdict
    /// waited out the signal wait. The end comes from the capture stamps now.
    #[test]
    fn time_from_the_wrong_clock_end_frame_comes_from_capture_stamps() {
        let mut r = rig_with(60.0);
        r.admit(0..=END_FRAME);
        for f in 0..=6 {
            r.arrive(f);
        }
        r.signal();
        assert!(
            r.referee.is_deciding(),
            "frames 7 and 8 are still in flight"
        );
        r.arrive(7);
        assert!(r.verdict().is_none());
        r.arrive(8);
        let v = r
            .verdict()
            .expect("frame 8 (t = 0.53 s) is the phrase's last");
        let detail: serde_json::Value = serde_json::from_str(&v.detail_json).unwrap();
        assert_eq!(detail["frames_tracked"], 9);
        assert_eq!(v.latency, Duration::ZERO, "no signal wait");
    }

    /// A phrase that ends exactly on a frame boundary (0.6 s = 9 frames at 15 fps) with stamps a
    /// hair faster than 15 fps (66,666 us apart): the last frame is 8, so nothing is waited for
    /// (the sample clip did this: 3 s of signal wait for a frame that never came).
    #[test]
    fn a_phrase_ending_on_a_frame_boundary_does_not_wait_for_the_next_frame() {
        let mut r = rig_with(15.0);
        r.admit(0..=END_FRAME);
        for f in 0..=END_FRAME {
            r.arrive_stamped(f, 1_000_000 + f * 66_666);
        }
        r.signal();
        let v = r.verdict().expect("frame 8 closes the phrase");
        assert_eq!(v.latency, Duration::ZERO, "no signal wait");
        let detail: serde_json::Value = serde_json::from_str(&v.detail_json).unwrap();
        assert_eq!(detail["frames_tracked"], 9);
    }

    /// A frame at or past the phrase's end, once known, bounds it exactly even when the first
    /// guess (the measured rate) was too long.
    #[test]
    fn a_frame_past_the_phrase_end_closes_it() {
        let mut r = rig_with(10.0);
        // The camera slowed down: frames 0-4 at 15 fps, then 5 fps; frame 6 is past 0.6 s.
        let ts = |f: u64| {
            1_000_000
                + if f <= 4 {
                    f * 66_667
                } else {
                    266_668 + (f - 4) * 200_000
                }
        };
        r.admit(0..=6);
        for f in 0..=4 {
            r.arrive_stamped(f, ts(f));
        }
        r.signal();
        assert!(r.referee.is_deciding());
        r.arrive_stamped(5, ts(5));
        assert!(
            r.verdict().is_none(),
            "frame 5 (0.47 s) is inside the phrase"
        );
        r.arrive_stamped(6, ts(6));
        let v = r.verdict().expect("frame 6 (0.67 s) is past the end");
        let detail: serde_json::Value = serde_json::from_str(&v.detail_json).unwrap();
        assert_eq!(detail["frames_tracked"], 7);
    }

    /// Without stamps (0) time falls back to frame number / declared rate, as before.
    #[test]
    fn frames_without_capture_stamps_are_timed_at_the_declared_rate() {
        let mut r = rig();
        r.admit(0..=END_FRAME);
        for f in 0..=END_FRAME {
            r.arrive_stamped(f, 0);
        }
        let t: Vec<f64> = r.referee.poses.iter().map(|p| p.t).collect();
        assert!((t[3] - 0.2).abs() < 1e-9, "{t:?}");
        r.signal();
        let v = r.verdict().expect("frame 8 ends a 0.6 s phrase at 15 fps");
        let detail: serde_json::Value = serde_json::from_str(&v.detail_json).unwrap();
        assert_eq!(detail["frames_tracked"], 9);
    }

    #[test]
    fn timebase_ignores_stamps_that_go_backwards() {
        let mut tb = Timebase::new(10.0);
        assert_eq!(tb.time(0, 0), 0.0);
        assert_eq!(
            tb.time(1, 2_000_000),
            0.1,
            "the first stamp anchors at the declared rate"
        );
        assert!((tb.time(2, 2_050_000) - 0.15).abs() < 1e-9);
        assert!(
            (tb.time(3, 1_000_000) - 0.25).abs() < 1e-9,
            "backwards: declared rate"
        );
        assert!((tb.time(4, 2_200_000) - 0.3).abs() < 1e-9, "stamps again");
    }
}
