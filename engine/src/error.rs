//! Why the engine refuses a request.

/// Why the engine refused a request.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "too many sessions: {active} active, the limit is {max} (REFEREE_MAX_STREAMING_SESSIONS)"
    )]
    TooManySessions { active: usize, max: usize },
    #[error("memory budget exceeded: a {width}x{height} session needs ~{needed_mb} MB, {free_mb} MB of {max_mb} MB are free (REFEREE_MAX_STREAMING_MEMORY_MB)")]
    MemoryBudget {
        width: u32,
        height: u32,
        needed_mb: u64,
        free_mb: u64,
        max_mb: u64,
    },
    #[error("session {0:?} already exists (send resume: true to continue it)")]
    SessionExists(String),
    #[error("unknown session {0:?}")]
    UnknownSession(String),
    #[error("invalid session start: {0}")]
    BadSessionStart(String),
    #[error("session {session:?} reached its limit of {max} frames")]
    TooManyFrames { session: String, max: u64 },
    #[error("frame {frame} of session {session:?} claims {len} bytes but {actual} arrived")]
    LengthMismatch {
        session: String,
        frame: u64,
        len: u32,
        actual: usize,
    },
    #[error("the engine is shutting down")]
    ShuttingDown,
}
