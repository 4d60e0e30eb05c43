//! What the agent is told: its settings ([`AgentConfig`]) and where the scoring box's signal
//! logs come from ([`SignalInput`]).

use super::AgentError;
use crate::encode::Encoding;
use crate::pacing::Pacing;
use referee_transport::messages::UndistortHint;
use referee_transport::Trust;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// A session id no other agent will pick: `capture-<host>-<unix ms>-<random>`. Two agents
/// started in the same second (or millisecond) on one host still differ by the random part,
/// and agents on different hosts by the host name. Only characters the daemon accepts in a
/// session id are used (the host name is filtered and shortened).
pub fn default_session_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let mut host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    if host.is_empty() {
        host = "host".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // RandomState is seeded from the OS's random source; mixing in the time, the process id and
    // a per-process counter makes every call differ even within one process.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!(
        "capture-{host}-{}-{:08x}",
        now.as_millis(),
        h.finish() as u32
    )
}

/// Everything the agent needs besides its frame source and signal.
#[derive(Clone)]
pub struct AgentConfig {
    /// Daemon's QUIC address.
    pub server: SocketAddr,
    /// Name the server certificate is checked against (CA mode); "localhost" for loopback.
    pub server_name: String,
    /// How the daemon's identity is trusted.
    pub trust: Trust,
    /// Capture token (empty when the daemon runs open on loopback).
    pub token: String,
    /// Session identifier (unique per phrase or bout).
    pub session_id: String,
    /// Piste identifier.
    pub piste: String,
    /// Camera identifier.
    pub camera: String,
    /// Wire encoding of frames.
    pub encoding: Encoding,
    /// Real-time or as fast as possible.
    pub pacing: Pacing,
    /// Frame rate announced to the daemon; `None` = the source's.
    pub fps: Option<f32>,
    /// Fisheye hint sent with the session start.
    pub undistort: Option<UndistortHint>,
    /// Un-acknowledged frames kept for resending after a reconnect.
    pub ring_capacity: usize,
    /// The source is live (a camera): when the ring is full its oldest frame is dropped (and
    /// counted as lost if never acked) instead of pausing capture. Real-time pacing implies it.
    pub live_source: bool,
    /// Frame streams in flight at once.
    pub max_inflight: usize,
    /// Consecutive failed connection attempts before giving up.
    pub max_retries: u32,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long to keep trying while the daemon is full (no free session slot, or too many
    /// connections); these refusals do not count against `max_retries`.
    pub slot_wait: Duration,
    /// Time allowed for the handshake, `Welcome` and `SessionStarted`.
    pub handshake_timeout: Duration,
    /// Time allowed, after the last frame, for the acks to cover every frame; restarts whenever
    /// the daemon acknowledges more frames (a slow but working daemon is waited for).
    pub ack_timeout: Duration,
    /// Time allowed from sending a signal to receiving its verdict; restarts whenever the daemon
    /// acknowledges more frames.
    pub verdict_timeout: Duration,
    /// Largest control message accepted from the daemon.
    pub max_message_bytes: usize,
    /// Set to true to stop capturing (Ctrl-C); the agent then ends the session cleanly.
    pub stop: Arc<AtomicBool>,
    /// Client description sent in `Hello`.
    pub client_name: String,
}

impl AgentConfig {
    /// A configuration with sensible defaults for `server`.
    pub fn new(server: SocketAddr, trust: Trust, session_id: impl Into<String>) -> Self {
        AgentConfig {
            server,
            server_name: "localhost".into(),
            trust,
            token: String::new(),
            session_id: session_id.into(),
            piste: "piste-1".into(),
            camera: "camera-0".into(),
            encoding: Encoding::default(),
            pacing: Pacing::AsFastAsPossible,
            fps: None,
            undistort: None,
            ring_capacity: 512,
            live_source: false,
            max_inflight: 16,
            max_retries: 8,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            slot_wait: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(20),
            verdict_timeout: Duration::from_secs(60),
            max_message_bytes: 4 << 20,
            stop: Arc::new(AtomicBool::new(false)),
            client_name: format!("referee-capture/{}", env!("CARGO_PKG_VERSION")),
        }
    }
    /// Refuses settings the agent cannot run with.
    pub(super) fn validate(&self) -> Result<(), AgentError> {
        if self.ring_capacity == 0 || self.max_inflight == 0 {
            return Err(AgentError::Config(
                "ring capacity and frames in flight must be at least 1".into(),
            ));
        }
        if self.session_id.is_empty() {
            return Err(AgentError::Config(
                "the session id must not be empty".into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("session_id", &self.session_id)
            .field("piste", &self.piste)
            .field("camera", &self.camera)
            .field("encoding", &self.encoding)
            .field("pacing", &self.pacing)
            .field("ring_capacity", &self.ring_capacity)
            .field("live_source", &self.live_source)
            .field("max_inflight", &self.max_inflight)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// The scoring box's signal log(s).
#[derive(Debug, Clone)]
pub enum SignalInput {
    /// One log, sent after the last frame (the clip is one phrase).
    Once { filename: String, bytes: Vec<u8> },
    /// Watch a folder: each new log closes a phrase (continuous mode).
    Watch { dir: PathBuf, poll: Duration },
}

impl SignalInput {
    /// Reads a signal log file (refusing files above `max_bytes`).
    pub fn from_file(path: &Path, max_bytes: usize) -> Result<Self, AgentError> {
        let bytes = std::fs::read(path).map_err(|e| AgentError::Signal {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if bytes.len() > max_bytes {
            return Err(AgentError::Signal {
                path: path.to_path_buf(),
                reason: format!("{} bytes, more than the {max_bytes} allowed", bytes.len()),
            });
        }
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "signal.txt".into());
        Ok(SignalInput::Once { filename, bytes })
    }

    /// Watches `dir` for new logs (it must exist and be a folder).
    pub fn watch(dir: &Path) -> Result<Self, AgentError> {
        if !dir.is_dir() {
            return Err(AgentError::Signal {
                path: dir.to_path_buf(),
                reason: "not a readable folder".into(),
            });
        }
        Ok(SignalInput::Watch {
            dir: dir.to_path_buf(),
            poll: Duration::from_millis(200),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::default_session_id;

    /// Issue #16 item 6b: the default id was `capture-<unix seconds>`, so two agents started in
    /// the same second took the same session (the second one was refused or resumed the first).
    #[test]
    fn two_agents_started_in_the_same_second_get_different_session_ids() {
        let ids: Vec<String> = (0..64).map(|_| default_session_id()).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        for id in &ids {
            assert!(id.len() <= 128, "{id}");
            assert!(!id.starts_with('.'), "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "{id} has characters the daemon refuses"
            );
        }
    }
}
