//! Replaying a recording (`referee-record`) through the engine in this process: its frames,
//! with their own numbers, encodings and capture stamps, in the order they arrived, then its
//! signal log, on a [`Core`] started with the recorded settings; the phrases of a continuous
//! bout one after the other in one session ([`replay_bout`]). `referee replay` compares the
//! verdicts with the recorded ones.

use std::collections::HashSet;
use std::time::Duration;

use referee_config::{ConfigError, Settings};
use referee_engine::PhraseSignal;
use referee_record::{Recording, SettingsSnapshot};
use referee_transport::messages::{SessionStart, UndistortHint, VerdictReport};

use crate::core::Core;
use crate::offline::{OfflineError, OfflineFrame, OfflineSession};

/// The settings a recording was made with: the defaults, then the recorded values.
pub fn recorded_settings(snapshot: &SettingsSnapshot) -> Result<Settings, ConfigError> {
    let mut s = Settings::default();
    for (key, value) in &snapshot.values {
        s.set(key, value)?;
    }
    Ok(s)
}

/// The session a recording's frames were sent in, as the agent opened it.
pub fn session_start(rec: &Recording) -> SessionStart {
    let m = &rec.manifest;
    SessionStart {
        session_id: m.session_id.clone(),
        fps: m.fps,
        width: m.width,
        height: m.height,
        piste: m.piste.clone(),
        camera: m.camera.clone(),
        undistort: m
            .undistort
            .map(|(enabled, strength, balance)| UndistortHint {
                enabled,
                strength,
                balance,
            }),
        resume: false,
        resume_secret: None,
    }
}

/// Runs the recording's frames and signal through `core` and returns the verdict.
pub async fn replay(
    core: &Core,
    rec: &Recording,
    timeout: Duration,
) -> Result<VerdictReport, OfflineError> {
    let mut verdicts = replay_bout(core, &[rec], timeout).await?;
    verdicts.pop().ok_or(OfflineError::NoVerdict(timeout))
}

/// Runs consecutive phrases of one session (a continuous bout: `recs` are its phrases from 0,
/// in order) through one engine session, as the daemon saw them: each phrase's frames (those
/// already sent with the previous phrase are not sent again), then its signal, then the next.
/// The tracker and the session clock then carry over from phrase to phrase as they did live.
/// Returns each phrase's verdict.
pub async fn replay_bout(
    core: &Core,
    recs: &[&Recording],
    timeout: Duration,
) -> Result<Vec<VerdictReport>, OfflineError> {
    let Some(first) = recs.first() else {
        return Ok(Vec::new());
    };
    let mut session = OfflineSession::open(core, session_start(first))?;
    let mut sent = HashSet::new();
    let mut verdicts = Vec::with_capacity(recs.len());
    for rec in recs {
        for (frame, bytes) in &rec.frames {
            if !sent.insert(frame.frame) {
                continue;
            }
            let f = OfflineFrame {
                encoding: frame.encoding,
                bytes: bytes.clone(),
                capture_ts_us: frame.capture_ts_us,
            };
            session.push_numbered(frame.frame, f).await?;
        }
        let m = &rec.manifest;
        let signal = PhraseSignal {
            session_id: m.session_id.clone(),
            phrase: m.phrase,
            filename: m.signal_file.clone(),
            bytes: rec.signal.clone(),
            phrase_start_us: m.phrase_start_us,
        };
        verdicts.push(session.decide(signal, timeout).await?);
    }
    session.close(timeout).await?;
    Ok(verdicts)
}
