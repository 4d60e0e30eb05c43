//! One session on one connection: after the handshake, resend what the daemon's ack does not
//! cover, stream new frames (at most `max_inflight` streams at once), send the signals, end the
//! session, and take in the daemon's acks, verdicts and errors until `SessionEnded`.

use super::error::{error_is_per_frame, server_error, Failure};
use super::handshake::start_session;
use super::progress::ProgressSink;
use super::ring::OutFrame;
use super::state::State;
use super::{AgentConfig, AgentError};
use crate::source::SourceInfo;
use referee_transport::messages::{ClientMsg, FrameHeader, ServerMsg};
use referee_transport::quinn;
use referee_transport::{read_msg, write_frame, write_msg, TransportError};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};

/// A control message as the reader task hands it over (`Ok(None)`: the stream ended).
type Incoming = Result<Option<ServerMsg>, TransportError>;
/// What a frame-send task returns: the image bytes written.
type SendResult = Result<u64, TransportError>;

/// Runs the session on `conn` until it ends (`Ok`) or the connection fails.
pub(super) async fn run_session<P: ProgressSink>(
    conn: &quinn::Connection,
    cfg: &AgentConfig,
    info: &SourceInfo,
    st: &mut State,
    watch_rx: &mut Option<mpsc::Receiver<(String, Vec<u8>)>>,
    progress: &mut P,
) -> Result<(), Failure> {
    let (mut ctrl, mut recv) = conn.open_bi().await.map_err(TransportError::from)?;
    let resume = start_session(&mut ctrl, &mut recv, cfg, info, st).await?;
    // Everything in the ring not covered by the server's ack goes again, oldest first.
    let resend = st.ring.unsent_before(st.next_new);
    announce(cfg, st, resume, resend.len(), progress);
    resend_control(&mut ctrl, cfg, st).await?;
    let (msgs, reader) = spawn_reader(recv, cfg.max_message_bytes);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let session = Session {
        conn,
        cfg,
        st,
        progress,
        watch_rx,
        ctrl,
        resend,
        sends: JoinSet::new(),
        last_opened: None,
        msgs,
        _reader: reader,
        tick,
    };
    session.run().await
}

/// Tells the log and the progress sink that the session started or resumed.
fn announce(
    cfg: &AgentConfig,
    st: &mut State,
    resume: bool,
    to_resend: usize,
    progress: &mut impl ProgressSink,
) {
    let text = if resume {
        format!(
            "resumed session {} at frame {} ({to_resend} frames to resend)",
            cfg.session_id, st.last_ack.next_expected,
        )
    } else {
        format!("session {} started", cfg.session_id)
    };
    tracing::info!("{text}");
    progress.message(&text);
    if resume {
        st.stats.reconnects += 1;
    }
}

/// After a reconnect: signals sent before the loss whose verdict never came go again (same
/// phrase), and so does `End` if it had been sent.
async fn resend_control(
    ctrl: &mut quinn::SendStream,
    cfg: &AgentConfig,
    st: &mut State,
) -> Result<(), Failure> {
    for (sig, at) in st.signals.waiting_mut() {
        write_msg(ctrl, &ClientMsg::Signal(sig.clone())).await?;
        *at = Instant::now();
    }
    if st.end_sent {
        write_msg(ctrl, &end_msg(cfg)).await?;
    }
    Ok(())
}

fn end_msg(cfg: &AgentConfig) -> ClientMsg {
    ClientMsg::End {
        session_id: cfg.session_id.clone(),
    }
}

/// Control messages are read by their own task so the session's select stays cancel-safe.
fn spawn_reader(
    mut recv: quinn::RecvStream,
    max_message_bytes: usize,
) -> (mpsc::Receiver<Incoming>, AbortOnDrop) {
    let (msg_tx, msg_rx) = mpsc::channel::<Incoming>(64);
    let reader = tokio::spawn(async move {
        loop {
            let r = read_msg::<ServerMsg>(&mut recv, max_message_bytes).await;
            let stop = !matches!(r, Ok(Some(_)));
            if msg_tx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    (msg_rx, AbortOnDrop(reader))
}

/// What woke the session up.
enum Event {
    Message(Option<Incoming>),
    Sent(Option<Result<SendResult, JoinError>>),
    FrameArrived,
    NewLog(Option<(String, Vec<u8>)>),
    Closed(quinn::ConnectionError),
    Tick,
}

/// The send/ack loop of one connection.
struct Session<'a, P: ProgressSink> {
    conn: &'a quinn::Connection,
    cfg: &'a AgentConfig,
    st: &'a mut State,
    progress: &'a mut P,
    watch_rx: &'a mut Option<mpsc::Receiver<(String, Vec<u8>)>>,
    ctrl: quinn::SendStream,
    /// Frames to send again, oldest first.
    resend: VecDeque<OutFrame>,
    /// Frame streams in flight.
    sends: JoinSet<SendResult>,
    /// Fires once the latest send task has opened its stream: the next one waits for it, so
    /// stream ids follow frame order and no frame is overtaken for long (the daemon reads
    /// streams in id order, a few at a time).
    last_opened: Option<oneshot::Receiver<()>>,
    msgs: mpsc::Receiver<Incoming>,
    _reader: AbortOnDrop,
    /// Progress updates and the verdict timeout.
    tick: tokio::time::Interval,
}

impl<P: ProgressSink> Session<'_, P> {
    async fn run(mut self) -> Result<(), Failure> {
        loop {
            self.top_up_resends();
            if let Some(e) = self.st.ring.take_error() {
                return Err(Failure::Fatal(e));
            }
            if self.send_next_new() {
                continue;
            }
            let source_done = self.st.ring.exhausted(self.st.next_new);
            // End-of-stream phases, once every frame has been written.
            if source_done && self.resend.is_empty() && self.sends.is_empty() {
                let now = Instant::now();
                let all_sent_at = *self.st.all_sent_at.get_or_insert(now);
                self.send_once_signal(now).await?;
                self.end_when_settled(now, all_sent_at).await?;
            }
            if self.st.done {
                let _ = self.ctrl.finish();
                return Ok(());
            }
            let event = self.next_event(source_done).await;
            self.handle(event).await?;
        }
    }

    /// Tops up the in-flight sends from the resend queue.
    fn top_up_resends(&mut self) {
        while self.sends.len() < self.cfg.max_inflight {
            let Some(f) = self.resend.pop_front() else {
                break;
            };
            // Frames acked meanwhile (ranges) need not go again.
            if self.st.last_ack.covers(f.frame) {
                continue;
            }
            self.st.stats.frames_resent += 1;
            self.spawn_send(f);
        }
    }

    /// Sends the next new frame once the resend queue is empty and a send slot is free;
    /// returns true when it did.
    fn send_next_new(&mut self) -> bool {
        if !self.resend.is_empty() || self.sends.len() >= self.cfg.max_inflight {
            return false;
        }
        let Some(f) = self.st.ring.next_new(self.st.next_new) else {
            return false;
        };
        self.st.next_new = f.frame + 1;
        self.spawn_send(f);
        true
    }

    fn spawn_send(&mut self, f: OutFrame) {
        let conn = self.conn.clone();
        let header = FrameHeader {
            session_id: self.cfg.session_id.clone(),
            frame: f.frame,
            capture_ts_us: f.capture_ts_us,
            encoding: f.encoding,
            len: f.bytes.len() as u32,
        };
        let (opened_tx, opened_rx) = oneshot::channel();
        let previous = self.last_opened.replace(opened_rx);
        self.sends.spawn(async move {
            if let Some(previous) = previous {
                // An error means that send ended before opening; this one goes on.
                let _ = previous.await;
            }
            let stream = conn.open_uni().await;
            let _ = opened_tx.send(());
            write_frame(stream?, &header, &f.bytes).await?;
            Ok(f.bytes.len() as u64)
        });
    }

    /// The clip's log, once, after its last frame.
    async fn send_once_signal(&mut self, now: Instant) -> Result<(), Failure> {
        let Some((filename, bytes)) = self.st.signals.once_unsent().cloned() else {
            return Ok(());
        };
        let first_ts = self.st.ring.first_ts_us();
        let sig = self
            .st
            .signals
            .compose(&self.cfg.session_id, filename.clone(), bytes, first_ts);
        write_msg(&mut self.ctrl, &ClientMsg::Signal(sig.clone())).await?;
        self.st.signals.sent_once(sig, now);
        self.progress.message(&format!(
            "all {} frames sent; signal {filename} sent, waiting for the verdict",
            self.st.next_new
        ));
        Ok(())
    }

    /// Sends `End` once every verdict arrived and the acks covered every frame (or stopped
    /// coming for `ack_timeout`).
    async fn end_when_settled(
        &mut self,
        now: Instant,
        all_sent_at: Instant,
    ) -> Result<(), Failure> {
        let st = &*self.st;
        let acks_settled = st.ring.is_empty()
            || now.duration_since(all_sent_at.max(st.last_ack_progress)) > self.cfg.ack_timeout;
        if st.end_sent || !st.signals.all_answered() || !acks_settled {
            return Ok(());
        }
        if !st.ring.is_empty() {
            tracing::warn!(
                unacked = st.ring.counts(&st.last_ack).1,
                "ending although some frames were never acknowledged"
            );
        }
        write_msg(&mut self.ctrl, &end_msg(self.cfg)).await?;
        self.st.end_sent = true;
        Ok(())
    }

    async fn next_event(&mut self, source_done: bool) -> Event {
        tokio::select! {
            biased;
            m = self.msgs.recv() => Event::Message(m),
            r = self.sends.join_next(), if !self.sends.is_empty() => Event::Sent(r),
            _ = self.st.ring.arrived.notified(), if !source_done => Event::FrameArrived,
            log = recv_opt(self.watch_rx) => Event::NewLog(log),
            e = self.conn.closed() => Event::Closed(e),
            _ = self.tick.tick() => Event::Tick,
        }
    }

    async fn handle(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::Message(m) => self.on_message(m),
            Event::Sent(r) => self.on_sent(r),
            Event::FrameArrived => Ok(()),
            Event::NewLog(Some((filename, bytes))) => self.send_new_log(filename, bytes).await,
            Event::NewLog(None) => {
                *self.watch_rx = None;
                Ok(())
            }
            Event::Closed(_) if self.st.done => Ok(()),
            Event::Closed(e) => Err(TransportError::from(e).into()),
            Event::Tick => self.on_tick(),
        }
    }

    fn on_message(&mut self, m: Option<Incoming>) -> Result<(), Failure> {
        let msg = match m {
            None => return Err(Failure::Retry("control stream reader stopped".into())),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(None)) if self.st.done => return Ok(()),
            Some(Ok(None)) => {
                return Err(Failure::Retry(
                    "the daemon closed the control stream".into(),
                ))
            }
            Some(Ok(Some(m))) => m,
        };
        handle_msg(msg, self.cfg, self.st, self.progress)
    }

    fn on_sent(&mut self, r: Option<Result<SendResult, JoinError>>) -> Result<(), Failure> {
        match r {
            Some(Ok(Ok(bytes))) => {
                self.st.stats.frames_sent += 1;
                self.st.stats.bytes_sent += bytes;
            }
            Some(Ok(Err(e))) => return Err(e.into()),
            Some(Err(join)) => return Err(Failure::Retry(format!("send task failed: {join}"))),
            None => {}
        }
        Ok(())
    }

    /// Watch mode: a new log closes the current phrase; a log that grew (the referee's call
    /// appended) goes again for its phrase.
    async fn send_new_log(&mut self, filename: String, bytes: Vec<u8>) -> Result<(), Failure> {
        let (sig, update) =
            self.st
                .signals
                .compose_log(&self.cfg.session_id, filename.clone(), bytes);
        let phrase = sig.phrase;
        // Waiting before the write: if the write fails, the reconnect sends it again.
        self.st.signals.sent(sig.clone(), Instant::now());
        write_msg(&mut self.ctrl, &ClientMsg::Signal(sig)).await?;
        let what = if update { "updated" } else { "new" };
        self.progress.message(&format!(
            "{what} signal log {filename}: phrase {phrase} sent"
        ));
        Ok(())
    }

    /// Progress update; gives up on a verdict that takes too long.
    fn on_tick(&mut self) -> Result<(), Failure> {
        self.st.refresh();
        self.progress.update(&self.st.stats);
        if let Some((phrase, at)) = self.st.signals.oldest_waiting() {
            if at.max(self.st.last_ack_progress).elapsed() > self.cfg.verdict_timeout {
                return Err(Failure::Fatal(AgentError::VerdictTimeout {
                    phrase,
                    after: self.cfg.verdict_timeout,
                }));
            }
        }
        Ok(())
    }
}

/// Takes in one control message from the daemon during the session.
fn handle_msg(
    msg: ServerMsg,
    cfg: &AgentConfig,
    st: &mut State,
    progress: &mut impl ProgressSink,
) -> Result<(), Failure> {
    match msg {
        ServerMsg::Ack { ack, .. } | ServerMsg::SessionStarted { ack, .. } => st.apply_ack(ack),
        ServerMsg::SignalAck { phrase, .. } => {
            tracing::debug!(phrase, "signal acknowledged");
        }
        ServerMsg::Progress { queue_depth, .. } => st.stats.server_queue = queue_depth,
        ServerMsg::Live(l) => progress.live(&l),
        ServerMsg::Verdict(v) => st.record_verdict(v, progress),
        ServerMsg::SessionEnded { stats, .. } => {
            if !st.end_sent {
                return Err(Failure::Fatal(AgentError::Protocol(format!(
                    "the daemon ended session {} before the agent did (it may have timed out)",
                    cfg.session_id
                ))));
            }
            st.server_stats = Some(stats);
            st.done = true;
        }
        ServerMsg::Error(e) if error_is_per_frame(e.code) => {
            let text = format!("daemon rejected a frame: {:?}: {}", e.code, e.message);
            tracing::warn!("{text}");
            progress.message(&text);
        }
        ServerMsg::Error(e) => return Err(server_error(e)),
        ServerMsg::Welcome { .. } => {
            return Err(Failure::Fatal(AgentError::Protocol(
                "unexpected second Welcome".into(),
            )))
        }
        ServerMsg::Pong { .. } | ServerMsg::Feed(_) => {}
    }
    Ok(())
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Aborts the task when dropped (the control stream reader ends with its session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ring::Ring;
    use crate::agent::NoProgress;
    use referee_transport::messages::{ErrorCode, ErrorMsg, SessionStats};
    use referee_transport::Trust;
    use std::sync::Arc;

    fn setup() -> (AgentConfig, State) {
        let cfg = AgentConfig::new(
            "127.0.0.1:4433".parse().unwrap(),
            Trust::InsecureLoopback,
            "sess",
        );
        (cfg, State::new(Arc::new(Ring::new(4, false)), None))
    }

    fn error(code: ErrorCode, recoverable: bool) -> ServerMsg {
        ServerMsg::Error(ErrorMsg {
            code,
            message: "m".into(),
            recoverable,
            session_id: None,
        })
    }

    fn ended() -> ServerMsg {
        ServerMsg::SessionEnded {
            session_id: "sess".into(),
            stats: SessionStats::default(),
        }
    }

    #[test]
    fn the_session_ends_only_after_the_agent_said_end() {
        let (cfg, mut st) = setup();
        let early = handle_msg(ended(), &cfg, &mut st, &mut NoProgress);
        assert!(matches!(
            early,
            Err(Failure::Fatal(AgentError::Protocol(_)))
        ));
        assert!(!st.done);
        st.end_sent = true;
        assert!(handle_msg(ended(), &cfg, &mut st, &mut NoProgress).is_ok());
        assert!(st.done && st.server_stats.is_some());
    }

    #[test]
    fn daemon_errors_are_per_frame_retried_or_fatal() {
        let (cfg, mut st) = setup();
        let mut run = |m| handle_msg(m, &cfg, &mut st, &mut NoProgress);
        assert!(run(error(ErrorCode::BadFrame, false)).is_ok());
        assert!(run(error(ErrorCode::FrameTooLarge, false)).is_ok());
        assert!(matches!(
            run(error(ErrorCode::Overloaded, true)),
            Err(Failure::Retry(_))
        ));
        assert!(matches!(
            run(error(ErrorCode::Unauthorized, false)),
            Err(Failure::Fatal(AgentError::Server { .. }))
        ));
        let welcome = ServerMsg::Welcome {
            server: "d".into(),
            protocol: 1,
        };
        assert!(matches!(
            run(welcome),
            Err(Failure::Fatal(AgentError::Protocol(_)))
        ));
    }

    #[test]
    fn acks_and_progress_update_the_counters() {
        let (cfg, mut st) = setup();
        let ack = referee_transport::messages::Ack {
            next_expected: 4,
            received_ranges: vec![],
        };
        let msg = ServerMsg::Ack {
            session_id: "sess".into(),
            ack,
        };
        handle_msg(msg, &cfg, &mut st, &mut NoProgress).unwrap();
        let progress = ServerMsg::Progress {
            session_id: "sess".into(),
            stats: SessionStats::default(),
            queue_depth: 7,
        };
        handle_msg(progress, &cfg, &mut st, &mut NoProgress).unwrap();
        assert_eq!((st.stats.frames_acked, st.stats.server_queue), (4, 7));
    }
}
