//! What the agent reports: its counters ([`AgentStats`]), its result ([`AgentOutcome`]) and
//! the progress it hands to a [`ProgressSink`] while it runs.

use referee_transport::messages::{LiveState, SessionStats, VerdictReport};

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
