//! Running the engine on frames in the same process (no network): `referee analyze --video`,
//! and the "buffered" baseline of the end-to-end bench (the old system's way: receive the
//! whole phrase, then process every frame after the signal).

use std::time::{Duration, Instant};

use referee_transport::messages::{
    FrameEncoding, FrameHeader, ServerMsg, SessionStart, Signal, VerdictReport,
};
use tokio::sync::mpsc;

use crate::pipeline::{Engine, EngineError};

/// Why an offline run failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the daemon reported an error: {0}")]
    Refused(String),
    #[error("no verdict within {0:?}")]
    NoVerdict(Duration),
}

/// One encoded frame.
pub struct OfflineFrame {
    /// How `bytes` are encoded.
    pub encoding: FrameEncoding,
    /// Image bytes.
    pub bytes: Vec<u8>,
    /// Capture time, microseconds since the epoch.
    pub capture_ts_us: u64,
}

/// A session fed in-process.
pub struct OfflineSession {
    engine: Engine,
    start: SessionStart,
    inbox: mpsc::UnboundedReceiver<ServerMsg>,
    next_frame: u64,
}

impl OfflineSession {
    /// Opens a session on `engine`.
    pub fn open(engine: &Engine, start: SessionStart) -> Result<Self, OfflineError> {
        let (tx, inbox) = mpsc::unbounded_channel();
        engine.open_session(start.clone(), tx)?;
        Ok(Self {
            engine: engine.clone(),
            start,
            inbox,
            next_frame: 0,
        })
    }

    /// Submits the next frame, waiting for room in the pipeline (backpressure).
    pub async fn push(&mut self, frame: OfflineFrame) -> Result<(), OfflineError> {
        let permit = self.engine.reserve().await?;
        let header = FrameHeader {
            session_id: self.start.session_id.clone(),
            frame: self.next_frame,
            capture_ts_us: frame.capture_ts_us,
            encoding: frame.encoding,
            len: frame.bytes.len() as u32,
        };
        self.next_frame += 1;
        self.engine.submit(permit, header, frame.bytes)?;
        Ok(())
    }

    /// Frames submitted so far.
    pub fn frames(&self) -> u64 {
        self.next_frame
    }

    /// Sends the signal log and waits for the verdict; ends the session afterwards.
    pub async fn finish(
        mut self,
        filename: &str,
        signal: Vec<u8>,
        timeout: Duration,
    ) -> Result<VerdictReport, OfflineError> {
        self.engine.signal(
            Signal {
                session_id: self.start.session_id.clone(),
                phrase: 0,
                filename: filename.to_string(),
                bytes: signal,
                phrase_start_us: None,
            },
            Instant::now(),
        )?;
        let deadline = Instant::now() + timeout;
        let verdict = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.inbox.recv()).await {
                Ok(Some(ServerMsg::Verdict(v))) => break v,
                Ok(Some(ServerMsg::Error(e))) => return Err(OfflineError::Refused(e.message)),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Err(OfflineError::NoVerdict(timeout)),
            }
        };
        self.engine.end_session(&self.start.session_id)?;
        Ok(verdict)
    }
}

/// The old system's approach, as a baseline: every frame is already buffered when the signal
/// lands; only then are they all processed. Returns the verdict and the time from the signal's
/// arrival (the start of this call) to the verdict.
pub async fn buffered_verdict(
    engine: &Engine,
    start: SessionStart,
    frames: Vec<OfflineFrame>,
    filename: &str,
    signal: Vec<u8>,
) -> Result<(VerdictReport, Duration), OfflineError> {
    let t0 = Instant::now();
    let mut session = OfflineSession::open(engine, start)?;
    for f in frames {
        session.push(f).await?;
    }
    let verdict = session
        .finish(filename, signal, Duration::from_secs(600))
        .await?;
    Ok((verdict, t0.elapsed()))
}
