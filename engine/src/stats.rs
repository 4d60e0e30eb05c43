//! Engine-wide counters, stage latencies and queue depths, mirrored into the `metrics` registry.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

/// Pipeline stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Decode,
    Rectify,
    Pose,
    Track,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 4] = [Stage::Decode, Stage::Rectify, Stage::Pose, Stage::Track];

    /// Lower-case name used in metrics and /status.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Rectify => "rectify",
            Stage::Pose => "pose",
            Stage::Track => "track",
        }
    }
}

/// Why a frame did not make it through the pipeline (every drop is counted by reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A second copy of a frame already received.
    Duplicate,
    /// Bytes that do not decode as an image.
    BadImage,
    /// The header's length did not match the bytes received.
    BadLength,
    /// Arrived after the reorder window had moved past it.
    Late,
    /// The session's frame limit was reached.
    FrameLimit,
    /// The frame's geometry cannot be rectified.
    Geometry,
    /// Pose inference failed for the frame.
    PoseFailed,
    /// The session was closed while the frame was in flight.
    SessionClosed,
}

impl DropReason {
    fn name(self) -> &'static str {
        match self {
            DropReason::Duplicate => "duplicate",
            DropReason::BadImage => "bad_image",
            DropReason::BadLength => "bad_length",
            DropReason::Late => "late",
            DropReason::FrameLimit => "frame_limit",
            DropReason::Geometry => "geometry",
            DropReason::PoseFailed => "pose_failed",
            DropReason::SessionClosed => "session_closed",
        }
    }
}

/// Running latency summary of one stage.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct StageSummary {
    /// Items that went through the stage.
    pub count: u64,
    /// Mean time per item, milliseconds.
    pub mean_ms: f64,
    /// Time of the most recent item, milliseconds.
    pub last_ms: f64,
    /// Longest time per item, milliseconds.
    pub max_ms: f64,
}

type QueueProbe = Box<dyn Fn() -> usize + Send + Sync>;

/// Engine-wide statistics (for /status and benches); every update also goes to `metrics`.
#[derive(Default)]
pub struct EngineStats {
    /// Frames admitted into the pipeline.
    pub frames_received: AtomicU64,
    /// Frames that went through tracking.
    pub frames_processed: AtomicU64,
    drops: Mutex<BTreeMap<DropReason, u64>>,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    stages: Mutex<BTreeMap<Stage, StageSummary>>,
    queues: Mutex<Vec<(Stage, QueueProbe)>>,
    verdict_latencies_ms: Mutex<Vec<f64>>,
}

impl EngineStats {
    pub(crate) fn register_queue<T: Send + 'static>(
        &self,
        stage: Stage,
        rx: crossbeam_channel::Receiver<T>,
    ) {
        self.queues.lock().push((stage, Box::new(move || rx.len())));
    }

    /// Records the time one item spent in `stage`.
    pub fn record_stage(&self, stage: Stage, took: Duration) {
        let ms = took.as_secs_f64() * 1e3;
        metrics::histogram!("referee_stage_seconds", "stage" => stage.name())
            .record(took.as_secs_f64());
        let mut stages = self.stages.lock();
        let s = stages.entry(stage).or_default();
        s.count += 1;
        s.mean_ms += (ms - s.mean_ms) / s.count as f64;
        s.last_ms = ms;
        s.max_ms = s.max_ms.max(ms);
    }

    /// Counts a dropped frame.
    pub fn count_drop(&self, reason: DropReason) {
        metrics::counter!("referee_frames_dropped_total", "reason" => reason.name()).increment(1);
        *self.drops.lock().entry(reason).or_default() += 1;
    }

    /// Counts a refused request (session limits).
    pub fn count_refusal(&self, what: &'static str) {
        metrics::counter!("referee_refused_total", "reason" => what).increment(1);
        *self.refusals.lock().entry(what).or_default() += 1;
    }

    /// Records the time from a signal's arrival to its verdict being sent.
    pub fn record_verdict_latency(&self, took: Duration) {
        metrics::histogram!("referee_verdict_latency_seconds").record(took.as_secs_f64());
        self.verdict_latencies_ms
            .lock()
            .push(took.as_secs_f64() * 1e3);
    }

    /// All signal-to-verdict latencies so far, milliseconds.
    pub fn verdict_latencies_ms(&self) -> Vec<f64> {
        self.verdict_latencies_ms.lock().clone()
    }

    /// Frames dropped, by reason.
    pub fn drops(&self) -> BTreeMap<String, u64> {
        self.drops
            .lock()
            .iter()
            .map(|(r, n)| (r.name().to_string(), *n))
            .collect()
    }

    /// Requests refused, by reason.
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refusals
            .lock()
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect()
    }

    /// Latency summary per stage.
    pub fn stages(&self) -> BTreeMap<String, StageSummary> {
        self.stages
            .lock()
            .iter()
            .map(|(s, v)| (s.name().to_string(), *v))
            .collect()
    }

    /// Current depth of each stage's input queue (also exported as a gauge).
    pub fn queue_depths(&self) -> BTreeMap<String, usize> {
        self.queues
            .lock()
            .iter()
            .map(|(stage, probe)| {
                let depth = probe();
                metrics::gauge!("referee_queue_depth", "stage" => stage.name()).set(depth as f64);
                (stage.name().to_string(), depth)
            })
            .collect()
    }
}

/// Percentile by nearest rank over a copy of `values` (None when empty).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_summary_tracks_mean_and_max() {
        let stats = EngineStats::default();
        stats.record_stage(Stage::Pose, Duration::from_millis(10));
        stats.record_stage(Stage::Pose, Duration::from_millis(30));
        let s = stats.stages()["pose"];
        assert_eq!(s.count, 2);
        assert!((s.mean_ms - 20.0).abs() < 1e-6);
        assert!((s.max_ms - 30.0).abs() < 1e-6);
        assert!((s.last_ms - 30.0).abs() < 1e-6);
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let stats = EngineStats::default();
        stats.count_drop(DropReason::BadImage);
        stats.count_drop(DropReason::BadImage);
        stats.count_drop(DropReason::Duplicate);
        let d = stats.drops();
        assert_eq!(d["bad_image"], 2);
        assert_eq!(d["duplicate"], 1);
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 95.0), Some(5.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
