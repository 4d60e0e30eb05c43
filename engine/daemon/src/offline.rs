//! Driving the engine with frames from the same process (no network): `referee analyze --video`,
//! and the "buffered" baseline of the end-to-end bench (the old system's way: receive the
//! whole phrase, then process every frame after the signal).

use std::time::{Duration, Instant};

use referee_engine::{EngineError, FrameMeta, PhraseSignal};
use referee_transport::messages::{FrameEncoding, ServerMsg, SessionStart, VerdictReport};
use tokio::sync::mpsc;

use crate::core::Core;
use crate::map;

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
    core: Core,
    start: SessionStart,
    inbox: mpsc::UnboundedReceiver<ServerMsg>,
    next_frame: u64,
}

impl OfflineSession {
    /// Opens a session on `core`.
    pub fn open(core: &Core, start: SessionStart) -> Result<Self, OfflineError> {
        let (tx, inbox) = mpsc::unbounded_channel();
        core.engine.open_session(map::session_spec(start.clone()))?;
        core.router.attach(&start.session_id, tx);
        Ok(Self {
            core: core.clone(),
            start,
            inbox,
            next_frame: 0,
        })
    }

    /// Submits the next frame, waiting for room in the pipeline (backpressure).
    pub async fn push(&mut self, frame: OfflineFrame) -> Result<(), OfflineError> {
        self.push_numbered(self.next_frame, frame).await
    }

    /// Submits a frame under its own number (a recording's), waiting for room in the
    /// pipeline; later [`OfflineSession::push`]es continue after the highest number so far.
    pub async fn push_numbered(
        &mut self,
        number: u64,
        frame: OfflineFrame,
    ) -> Result<(), OfflineError> {
        let permit = self.core.reserve().await?;
        let meta = FrameMeta {
            session_id: self.start.session_id.clone(),
            frame: number,
            capture_ts_us: frame.capture_ts_us,
            encoding: frame.encoding,
            len: frame.bytes.len() as u32,
        };
        self.next_frame = self.next_frame.max(number + 1);
        self.core.submit(permit, meta, frame.bytes)?;
        Ok(())
    }

    /// Frames submitted so far.
    pub fn frames(&self) -> u64 {
        self.next_frame
    }

    /// Sends the signal log and waits for the verdict; ends the session afterwards.
    pub async fn finish(
        self,
        filename: &str,
        signal: Vec<u8>,
        timeout: Duration,
    ) -> Result<VerdictReport, OfflineError> {
        let signal = PhraseSignal {
            session_id: self.start.session_id.clone(),
            phrase: 0,
            filename: filename.to_string(),
            bytes: signal,
            phrase_start_us: None,
        };
        self.finish_phrase(signal, timeout).await
    }

    /// [`OfflineSession::finish`] with a phrase's whole signal (its number and start, as a
    /// recording has them); `signal.session_id` is this session's.
    pub async fn finish_phrase(
        mut self,
        signal: PhraseSignal,
        timeout: Duration,
    ) -> Result<VerdictReport, OfflineError> {
        let verdict = self.decide(signal, timeout).await?;
        self.core.engine.end_session(&self.start.session_id)?;
        Ok(verdict)
    }

    /// Sends a phrase's signal and waits for its verdict; the session stays open (the next
    /// phrase of a continuous bout). `signal.session_id` is this session's.
    pub async fn decide(
        &mut self,
        mut signal: PhraseSignal,
        timeout: Duration,
    ) -> Result<VerdictReport, OfflineError> {
        signal.session_id = self.start.session_id.clone();
        self.core.signal(signal, self.core.engine.now())?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.inbox.recv()).await {
                Ok(Some(ServerMsg::Verdict(v))) => return Ok(v),
                Ok(Some(ServerMsg::Error(e))) => return Err(OfflineError::Refused(e.message)),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Err(OfflineError::NoVerdict(timeout)),
            }
        }
    }

    /// Ends the session and waits until the engine has released it, so that a session of the
    /// same id can be opened next on this core.
    pub async fn close(mut self, timeout: Duration) -> Result<(), OfflineError> {
        self.core.engine.end_session(&self.start.session_id)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.inbox.recv()).await {
                Ok(Some(ServerMsg::SessionEnded { .. })) | Ok(None) => return Ok(()),
                Ok(Some(_)) => continue,
                Err(_) => return Err(OfflineError::NoVerdict(timeout)),
            }
        }
    }
}

/// The old system's approach, as a baseline: every frame is already buffered when the signal
/// lands; only then are they all processed. Returns the verdict and the time from the signal's
/// arrival (the start of this call) to the verdict.
pub async fn buffered_verdict(
    core: &Core,
    start: SessionStart,
    frames: Vec<OfflineFrame>,
    filename: &str,
    signal: Vec<u8>,
) -> Result<(VerdictReport, Duration), OfflineError> {
    let t0 = Instant::now();
    let mut session = OfflineSession::open(core, start)?;
    for f in frames {
        session.push(f).await?;
    }
    let verdict = session
        .finish(filename, signal, Duration::from_secs(600))
        .await?;
    Ok((verdict, t0.elapsed()))
}
