//! The engine core's settings (the daemon maps its configuration onto these).

use std::path::PathBuf;
use std::time::Duration;

use crate::rectify::RectifyParams;

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
    /// Artifact writer threads.
    pub artifact_workers: usize,
    /// Phrases waiting for an artifact writer; more are refused (counted).
    pub artifact_queue: usize,
    /// Default rectification (fisheye, piste band, pose input size).
    pub rectify: RectifyParams,
    /// True to let the agent's undistort hint override the configured fisheye settings.
    pub honour_undistort_hint: bool,
    /// How often the track stage looks at pending verdicts when no frame arrives.
    pub track_tick: Duration,
    /// The right-of-way model deciding double touches (default: the shipped rules).
    pub referee_model: std::sync::Arc<referee_rules::Model>,
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
            artifact_workers: 2,
            artifact_queue: 16,
            rectify: RectifyParams {
                fisheye_enabled: false,
                strength: 0.0,
                balance: 0.0,
                band: (0.0, 1.0),
                target: (640, 384),
            },
            honour_undistort_hint: false,
            track_tick: Duration::from_millis(50),
            referee_model: Default::default(),
        }
    }
}
