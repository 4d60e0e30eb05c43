//! What survives reconnects: counters, the ring and the last ack, the signals, the end of the
//! session, and the verdicts received.

use super::progress::{AgentOutcome, AgentStats, ProgressSink};
use super::ring::Ring;
use super::signals::Signals;
use referee_transport::messages::{Ack, SessionStats, VerdictReport};
use std::sync::Arc;
use std::time::Instant;

/// The agent's state across connections.
pub(super) struct State {
    pub started: Instant,
    pub stats: AgentStats,
    /// Un-acked frames, filled by the capture thread.
    pub ring: Arc<Ring>,
    pub last_ack: Ack,
    /// Last time the daemon acknowledged new frames.
    pub last_ack_progress: Instant,
    /// Frame number of the next frame never sent yet.
    pub next_new: u64,
    /// Connections that reached `SessionStarted` (the next one resumes when non-zero).
    pub sessions_started: u32,
    /// The secret of the last `SessionStarted`: a resume presents it to prove the session is
    /// this agent's (never logged).
    pub resume_secret: Option<String>,
    pub signals: Signals,
    /// When the last frame was written (every frame handed out, none in flight).
    pub all_sent_at: Option<Instant>,
    /// `End` was sent (it is sent again after a reconnect).
    pub end_sent: bool,
    /// `SessionEnded` arrived: the session is over.
    pub done: bool,
    pub verdicts: Vec<VerdictReport>,
    pub server_stats: Option<SessionStats>,
}

impl State {
    /// The state before the first connection; `once_signal` is the clip's log, if any.
    pub fn new(ring: Arc<Ring>, once_signal: Option<(String, Vec<u8>)>) -> Self {
        State {
            started: Instant::now(),
            stats: AgentStats::default(),
            ring,
            last_ack: Ack::default(),
            last_ack_progress: Instant::now(),
            next_new: 0,
            sessions_started: 0,
            resume_secret: None,
            signals: Signals::new(once_signal),
            all_sent_at: None,
            end_sent: false,
            done: false,
            verdicts: Vec::new(),
            server_stats: None,
        }
    }

    /// Takes in an ack from the daemon: drops the frames it covers, counts progress.
    pub fn apply_ack(&mut self, ack: Ack) {
        let queue = self.ring.apply_ack(&ack);
        let count = ack.acked_count();
        if count > self.stats.frames_acked {
            self.last_ack_progress = Instant::now();
        }
        self.stats.frames_acked = self.stats.frames_acked.max(count);
        self.last_ack = ack;
        self.stats.queue = queue as u64;
    }

    /// Brings the counters up to date (captured, ring, lost, rates).
    pub fn refresh(&mut self) {
        let (captured, queue, lost) = self.ring.counts(&self.last_ack);
        self.stats.frames_captured = captured;
        self.stats.queue = queue as u64;
        self.stats.lost = lost;
        let t = self.started.elapsed().as_secs_f64();
        self.stats.elapsed_s = t;
        if t > 0.0 {
            self.stats.fps = captured as f64 / t;
            self.stats.mb_per_s = self.stats.bytes_sent as f64 / t / 1e6;
        }
    }

    /// Takes in a verdict: its signal is answered; a second verdict for the same phrase (a
    /// signal resent after a reconnect) replaces the first without being reported again.
    pub fn record_verdict(&mut self, v: VerdictReport, progress: &mut impl ProgressSink) {
        self.signals.answered(v.phrase);
        match self.verdicts.iter_mut().find(|x| x.phrase == v.phrase) {
            Some(old) => *old = v,
            None => {
                progress.verdict(&v);
                self.verdicts.push(v);
            }
        }
    }

    /// The agent's result.
    pub fn into_outcome(self) -> AgentOutcome {
        AgentOutcome {
            verdict: self.verdicts.last().cloned(),
            verdicts: self.verdicts,
            stats: self.stats,
            server_stats: self.server_stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::NoProgress;
    use referee_transport::messages::Winner;

    fn verdict(phrase: u32, reason: &str) -> VerdictReport {
        VerdictReport {
            session_id: "s".into(),
            piste: "p".into(),
            phrase,
            winner: Winner::Uncertain,
            confidence: 0.0,
            reason: reason.into(),
            evidence: vec![],
            latency_ms: 0.0,
            detail_json: String::new(),
        }
    }

    #[test]
    fn acks_count_progress_and_never_go_back() {
        let mut st = State::new(Arc::new(Ring::new(4, false)), None);
        let before = st.last_ack_progress;
        st.apply_ack(Ack {
            next_expected: 3,
            received_ranges: vec![(5, 7)],
        });
        assert_eq!(st.stats.frames_acked, 5);
        assert!(st.last_ack_progress >= before);
        // An older ack (reordered) does not lower the count.
        st.apply_ack(Ack {
            next_expected: 2,
            received_ranges: vec![],
        });
        assert_eq!(st.stats.frames_acked, 5);
    }

    #[test]
    fn a_verdict_answered_twice_is_kept_once() {
        struct Count(u32);
        impl ProgressSink for Count {
            fn verdict(&mut self, _: &VerdictReport) {
                self.0 += 1;
            }
        }
        let mut st = State::new(Arc::new(Ring::new(4, false)), None);
        let mut seen = Count(0);
        st.record_verdict(verdict(0, "first"), &mut seen);
        st.record_verdict(verdict(0, "again"), &mut seen);
        st.record_verdict(verdict(1, "next"), &mut NoProgress);
        assert_eq!(seen.0, 1);
        let out = st.into_outcome();
        assert_eq!(out.verdicts.len(), 2);
        assert_eq!(out.verdicts[0].reason, "again");
        assert_eq!(out.verdict.map(|v| v.phrase), Some(1));
    }
}
