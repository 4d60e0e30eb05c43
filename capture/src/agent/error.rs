//! Errors: [`AgentError`] ends the agent; [`Failure`] says why one connection ended (reconnect
//! and resume, or stop).

use crate::encode::EncodeError;
use crate::source::SourceError;
use referee_transport::messages::{ErrorCode, ErrorMsg};
use referee_transport::TransportError;
use std::path::PathBuf;
use std::time::Duration;

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The frame source failed.
    #[error("frame source: {0}")]
    Source(#[from] SourceError),
    /// A frame could not be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] EncodeError),
    /// A transport failure that retrying cannot cure (TLS identity, version, configuration).
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The daemon refused with a non-recoverable error.
    #[error("the daemon refused: {code:?}: {message}")]
    Server { code: ErrorCode, message: String },
    /// The signal log could not be read.
    #[error("signal log {path}: {reason}")]
    Signal { path: PathBuf, reason: String },
    /// Invalid agent settings.
    #[error("invalid agent setting: {0}")]
    Config(String),
    /// The daemon answered something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The daemon stayed unreachable.
    #[error("gave up after {attempts} failed connection attempts; last error: {last}")]
    GaveUp { attempts: u32, last: String },
    /// The daemon stayed full (no free session slot) for longer than the agent waits.
    #[error(
        "no free session slot on the daemon within {waited:?} (--slot-wait); last refusal: {last}"
    )]
    NoSlot { waited: Duration, last: String },
    /// No verdict arrived in time.
    #[error("no verdict for phrase {phrase} within {after:?} of sending the signal")]
    VerdictTimeout { phrase: u32, after: Duration },
}

impl AgentError {
    /// Process exit code for this error (2 usage/input, 3 network/TLS, 4 refused by the daemon,
    /// 5 timeout).
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Source(_) | AgentError::Signal { .. } | AgentError::Config(_) => 2,
            AgentError::Encode(_) => 2,
            AgentError::Transport(_) | AgentError::GaveUp { .. } => 3,
            AgentError::NoSlot { .. } => 3,
            AgentError::Server { .. } | AgentError::Protocol(_) => 4,
            AgentError::VerdictTimeout { .. } => 5,
        }
    }
}

/// Why one connection ended.
#[derive(Debug)]
pub(super) enum Failure {
    /// Reconnect and resume (the reason is logged).
    Retry(String),
    /// The daemon is full (no session slot, too many connections): wait and try again,
    /// within the agent's slot wait.
    Busy(String),
    /// Stop with this error.
    Fatal(AgentError),
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        let full = referee_transport::CLOSE_TOO_MANY_CONNECTIONS.into_inner();
        if matches!(e, TransportError::ClosedByPeer { code, .. } if code == full) {
            Failure::Busy(e.to_string())
        } else if e.is_retryable() {
            Failure::Retry(e.to_string())
        } else {
            Failure::Fatal(AgentError::Transport(e))
        }
    }
}

/// Server errors that concern one frame or a transient condition: logged, not fatal.
pub(super) fn error_is_per_frame(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::BadFrame | ErrorCode::FrameTooLarge)
}

/// A daemon error: retried when the daemon says it is recoverable, fatal otherwise.
pub(super) fn server_error(e: ErrorMsg) -> Failure {
    let full = matches!(
        e.code,
        ErrorCode::TooManySessions | ErrorCode::MemoryBudget | ErrorCode::TooManyConnections
    );
    if full {
        Failure::Busy(format!("daemon full: {:?}: {}", e.code, e.message))
    } else if e.recoverable {
        Failure::Retry(format!("daemon error {:?}: {}", e.code, e.message))
    } else {
        Failure::Fatal(AgentError::Server {
            code: e.code,
            message: e.message,
        })
    }
}
