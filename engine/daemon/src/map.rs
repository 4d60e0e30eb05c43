//! The one place where engine values become wire messages and wire messages become engine
//! values: sessions, frames, signals in; verdicts, live states, counters and errors out.

use referee_engine::{
    EngineError, FailureKind, FrameMeta, PhraseSignal, SessionSpec, SessionStats, Undistort,
    Verdict,
};
use referee_rules::LiveEstimate;
use referee_transport::messages as wire;

/// A wire `SessionStart` as the engine's request.
pub fn session_spec(start: wire::SessionStart) -> SessionSpec {
    SessionSpec {
        id: start.session_id,
        piste: start.piste,
        camera: start.camera,
        fps: start.fps,
        width: start.width,
        height: start.height,
        undistort: start.undistort.map(|u| Undistort {
            enabled: u.enabled,
            strength: u.strength,
            balance: u.balance,
        }),
        resume: start.resume,
    }
}

/// A wire frame header as the engine's frame metadata.
pub fn frame_meta(h: wire::FrameHeader) -> FrameMeta {
    FrameMeta {
        session_id: h.session_id,
        frame: h.frame,
        capture_ts_us: h.capture_ts_us,
        encoding: h.encoding,
        len: h.len,
    }
}

/// A wire signal as the engine's phrase signal.
pub fn phrase_signal(s: wire::Signal) -> PhraseSignal {
    PhraseSignal {
        session_id: s.session_id,
        phrase: s.phrase,
        filename: s.filename,
        bytes: s.bytes,
        phrase_start_us: s.phrase_start_us,
    }
}

/// Session counters on the wire.
pub fn session_stats(s: &SessionStats) -> wire::SessionStats {
    wire::SessionStats {
        received: s.received,
        processed: s.processed,
        duplicates: s.duplicates,
        dropped: s.dropped,
        bad_frames: s.bad_frames,
    }
}

/// A verdict on the wire.
pub fn verdict_report(v: &Verdict) -> wire::VerdictReport {
    let d = &v.decision;
    wire::VerdictReport {
        session_id: v.session_id.clone(),
        piste: v.piste.clone(),
        phrase: v.phrase,
        winner: match d.winner {
            referee_rules::Winner::Left => wire::Winner::Left,
            referee_rules::Winner::Right => wire::Winner::Right,
            referee_rules::Winner::Uncertain => wire::Winner::Uncertain,
        },
        confidence: d.confidence,
        reason: d.reason.clone(),
        evidence: d
            .evidence
            .iter()
            .map(|e| wire::Evidence {
                frame: e.frame,
                t: e.t as f32,
                what: e.what.clone(),
            })
            .collect(),
        latency_ms: (v.latency.as_secs_f64() * 1e3) as f32,
        detail_json: v.detail_json.clone(),
    }
}

/// The live state of a piste on the wire.
pub fn live_state(session_id: &str, piste: &str, frame: u64, e: &LiveEstimate) -> wire::LiveState {
    let fencer = |s: &referee_rules::SideLive| wire::FencerState {
        x: s.x.unwrap_or(f32::NAN),
        speed: s.speed,
        action: s.action.to_string(),
        visible: s.visible,
    };
    wire::LiveState {
        session_id: session_id.to_string(),
        piste: piste.to_string(),
        frame,
        t: e.t as f32,
        left: fencer(&e.left),
        right: fencer(&e.right),
        right_of_way: e.right_of_way,
        confidence: e.confidence,
    }
}

/// The protocol error for an engine refusal.
pub fn engine_error(e: &EngineError, session_id: Option<&str>) -> wire::ErrorMsg {
    use wire::ErrorCode;
    let (code, recoverable) = match e {
        EngineError::TooManySessions { .. } => (ErrorCode::TooManySessions, true),
        EngineError::MemoryBudget { .. } => (ErrorCode::MemoryBudget, true),
        EngineError::SessionExists(_) => (ErrorCode::SessionExists, false),
        EngineError::UnknownSession(_) => (ErrorCode::UnknownSession, false),
        EngineError::BadSessionStart(_) => (ErrorCode::ProtocolViolation, false),
        EngineError::TooManyFrames { .. } => (ErrorCode::Overloaded, false),
        EngineError::LengthMismatch { .. } => (ErrorCode::BadFrame, true),
        EngineError::ShuttingDown => (ErrorCode::Overloaded, true),
    };
    wire::ErrorMsg {
        code,
        message: e.to_string(),
        recoverable,
        session_id: session_id.map(str::to_string),
    }
}

/// The protocol error for a refusal about who holds a session (or an engine refusal behind it).
pub fn owner_error(e: &crate::owners::OwnerError, session_id: Option<&str>) -> wire::ErrorMsg {
    use crate::owners::OwnerError;
    use wire::ErrorCode;
    let (code, recoverable) = match e {
        OwnerError::Engine(inner) => return engine_error(inner, session_id),
        OwnerError::NotOwner(_) => (ErrorCode::NotSessionOwner, false),
        // Waiting and resending the unanswered signal (after a reconnect) succeeds later.
        OwnerError::TooManySignals { .. } => (ErrorCode::TooManySignals, true),
        OwnerError::Secret(_) => (ErrorCode::Internal, true),
    };
    wire::ErrorMsg {
        code,
        message: e.to_string(),
        recoverable,
        session_id: session_id.map(str::to_string),
    }
}

/// The protocol error for a failure inside a session.
pub fn failure(session_id: &str, kind: FailureKind, message: &str) -> wire::ErrorMsg {
    let (code, recoverable) = match kind {
        FailureKind::BadSignal => (wire::ErrorCode::BadSignal, true),
        FailureKind::IdleTimeout => (wire::ErrorCode::Timeout, false),
    };
    wire::ErrorMsg {
        code,
        message: message.to_string(),
        recoverable,
        session_id: Some(session_id.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_transport::messages::ErrorCode;

    #[test]
    fn engine_refusals_keep_their_codes_and_reasons() {
        let e = EngineError::MemoryBudget {
            width: 3840,
            height: 2160,
            needed_mb: 40,
            free_mb: 1,
            max_mb: 1,
        };
        let msg = engine_error(&e, Some("big"));
        assert_eq!(msg.code, ErrorCode::MemoryBudget);
        assert!(msg.recoverable);
        assert!(msg.message.contains("REFEREE_MAX_STREAMING_MEMORY_MB"));
        assert_eq!(msg.session_id.as_deref(), Some("big"));
        let busy = engine_error(&EngineError::TooManySessions { active: 4, max: 4 }, None);
        assert_eq!(busy.code, ErrorCode::TooManySessions);
        let t = failure("s", FailureKind::IdleTimeout, "idle");
        assert_eq!((t.code, t.recoverable), (ErrorCode::Timeout, false));
        let b = failure("s", FailureKind::BadSignal, "bad");
        assert_eq!((b.code, b.recoverable), (ErrorCode::BadSignal, true));
    }
}
