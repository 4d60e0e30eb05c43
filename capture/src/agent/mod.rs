//! The capture agent's network side: streams frames to the daemon over QUIC, sends the scoring
//! box's signal log, and returns the verdict; reconnects and resumes the session on loss.
//!
//! Protocol (one connection at a time):
//! 1. connect (ALPN `referee/2`), open ONE bidirectional control stream;
//! 2. `Hello{Capture, token}` -> `Welcome` (or `Error`);
//! 3. `SessionStart{resume}` -> `SessionStarted{ack}` (on resume the ack is cumulative: the agent
//!    resends every frame of its ring that the ack does not cover);
//! 4. each frame on its own unidirectional stream; `Ack`s arrive on the control stream;
//! 5. after the last frame: `Signal` -> `SignalAck` -> `Verdict`; then `End` -> `SessionEnded`.
//!
//! In watch mode ([`SignalInput::Watch`]) the agent streams continuously and sends a `Signal`
//! (phrase 0, 1, 2, ...) each time the scoring box writes a new log into the folder.
//!
//! Inside, by job:
//! - `config`: what the agent is told ([`AgentConfig`], [`SignalInput`]);
//! - `progress`: what it reports ([`AgentStats`], [`AgentOutcome`], [`ProgressSink`]);
//! - `error`: [`AgentError`], and why one connection ended (retry or stop);
//! - `ring`: the bounded ring of un-acknowledged frames kept for resending after a reconnect;
//! - `producer`: the capture thread that encodes the source's frames into the ring;
//! - `watch`: the signal-folder watcher of watch mode;
//! - `signals`: phrase numbering and the signals still waiting for their verdict;
//! - `state`: what survives reconnects (counters, last ack, signals, verdicts);
//! - `reconnect`: the connection loop with exponential backoff;
//! - `handshake`: `Hello`/`Welcome` and `SessionStart`/`SessionStarted` on a new connection;
//! - `session`: one session's send/ack loop.

mod config;
mod error;
mod handshake;
mod producer;
mod progress;
mod reconnect;
mod ring;
mod session;
mod signals;
mod state;
mod watch;

pub use config::{default_session_id, AgentConfig, SignalInput};
pub use error::AgentError;
pub use progress::{AgentOutcome, AgentStats, NoProgress, ProgressSink};

use crate::pacing::{Pacer, Pacing};
use crate::source::FrameSource;
use ring::Ring;
use state::State;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Streams `source` to the daemon, sends `signal`, and returns the verdict and statistics.
pub async fn run_agent(
    cfg: AgentConfig,
    source: Box<dyn FrameSource>,
    signal: Option<SignalInput>,
    mut progress: impl ProgressSink,
) -> Result<AgentOutcome, AgentError> {
    cfg.validate()?;
    let info = source.info().clone();
    let pacer = Pacer::new(cfg.pacing).map_err(|e| AgentError::Config(e.to_string()))?;
    let endpoint = referee_transport::client_endpoint_for(&cfg.trust, cfg.server)?;
    let (mut watch_rx, once_signal) = match signal {
        Some(SignalInput::Watch { dir, poll }) => (
            Some(watch::spawn_watcher(dir, poll, cfg.stop.clone())?),
            None,
        ),
        Some(SignalInput::Once { filename, bytes }) => (None, Some((filename, bytes))),
        None => (None, None),
    };
    let evict_when_full = cfg.live_source || matches!(cfg.pacing, Pacing::RealTime { .. });
    let ring = Arc::new(Ring::new(cfg.ring_capacity, evict_when_full));
    let producer =
        producer::spawn_producer(source, cfg.encoding, pacer, cfg.stop.clone(), ring.clone());

    let mut st = State::new(ring, once_signal);
    let result = reconnect::run_connections(
        &endpoint,
        &cfg,
        &info,
        &mut st,
        &mut watch_rx,
        &mut progress,
    )
    .await;
    cfg.stop.store(true, Ordering::Relaxed);
    let _ = producer.await;
    endpoint.close(referee_transport::CLOSE_OK, b"agent done");
    // Let the close frame leave (bounded).
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    st.refresh();
    progress.update(&st.stats);
    result?;
    if st.stats.lost > 0 {
        let text = format!(
            "{} frames were lost: the ring of {} frames overflowed while the daemon was unreachable",
            st.stats.lost, cfg.ring_capacity
        );
        tracing::warn!("{text}");
        progress.message(&text);
    }
    Ok(st.into_outcome())
}
