//! The daemon's QUIC side: accepts agents and feed subscribers and connects them to the engine.
//!
//! One bidirectional control stream per connection carries length-prefixed postcard messages;
//! each frame arrives on its own unidirectional stream. A connection reads a few frames at a
//! time, and each waits for room in the pipeline (a permit) before it is submitted, so a full
//! pipeline stops the reading and QUIC flow control slows the agent down; no runtime thread
//! ever blocks.
//!
//! Bounds: connections are capped in all and per address ([`crate::conns`]); a session is used
//! only by the connection holding it ([`crate::owners`]), which also bounds its signals; a
//! control message must be completed within `limits.message_read_timeout_s` once begun and a
//! frame stream within `limits.frame_read_timeout_s`. A connection ended on purpose gets its
//! `Error` first, then a close with a non-zero code (`referee_transport::CLOSE_*`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use referee_transport::auth::AuthPolicy;
use referee_transport::codec::{read_frame, read_msg_within, write_msg};
use referee_transport::messages::{
    Ack, ClientMsg, ErrorCode, ErrorMsg, Role, ServerMsg, PROTOCOL_VERSION,
};
use referee_transport::{EndpointLimits, TransportError};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use referee_engine::{Admission, Session};

use crate::conns::{ConnLimits, ConnSlot};
use crate::core::Core;
use crate::map;
use crate::owners::{Agent, ConnId, Owners, SignalPolicy};

/// How long a new connection may take to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often cumulative acks are sent while frames arrive.
const ACK_INTERVAL: Duration = Duration::from_millis(50);
/// How long a closing connection waits for its last `Error` to be acknowledged.
const ERROR_LINGER: Duration = Duration::from_secs(1);

/// What every connection handler needs.
#[derive(Clone)]
pub struct QuicContext {
    /// The engine frames and signals go to, with its event router.
    pub core: Core,
    /// Who may connect in which role.
    pub auth: Arc<AuthPolicy>,
    /// Size limits.
    pub limits: EndpointLimits,
    /// Name announced in `Welcome`.
    pub server_name: String,
}

/// What connections share: who holds which session, the connection caps, the numbering.
struct Guards {
    owners: Owners,
    conns: Arc<ConnLimits>,
    next_id: AtomicU64,
}

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, ctx: QuicContext) {
    let guards = Arc::new(Guards {
        owners: Owners::new(SignalPolicy {
            burst: ctx.limits.signal_burst,
            per_minute: ctx.limits.signals_per_minute,
        }),
        conns: ConnLimits::new(
            ctx.limits.max_connections,
            ctx.limits.max_connections_per_ip,
        ),
        next_id: AtomicU64::new(1),
    });
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        let guards = guards.clone();
        let remote = incoming.remote_address();
        let slot = guards.conns.try_take(remote.ip());
        let id = guards.next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(
            async move {
                metrics::counter!("referee_connections_total").increment(1);
                match referee_transport::accept(incoming, ctx.limits.handshake_timeout).await {
                    Ok(conn) => {
                        let slot = match slot {
                            Ok(slot) => slot,
                            Err(refusal) => {
                                warn!(%refusal, "connection refused");
                                let reason = refusal.to_string();
                                conn.close(
                                    referee_transport::CLOSE_TOO_MANY_CONNECTIONS,
                                    reason.as_bytes(),
                                );
                                return;
                            }
                        };
                        if let Err(e) = handle_connection(conn, ctx, guards, id, slot).await {
                            debug!(error = %e, "connection ended");
                        }
                    }
                    Err(e) => {
                        metrics::counter!("referee_handshake_failures_total").increment(1);
                        warn!(error = %e, "handshake failed");
                    }
                }
            }
            .instrument(info_span!("conn", %remote)),
        );
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Transport(#[from] referee_transport::TransportError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("control stream timed out: {0}")]
    Timeout(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

async fn handle_connection(
    conn: quinn::Connection,
    ctx: QuicContext,
    guards: Arc<Guards>,
    id: ConnId,
    _slot: ConnSlot,
) -> Result<(), ConnError> {
    let Ok(stream) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await else {
        close_connection(&conn, None, &timed_out("no control stream within 10 s")).await;
        return Err(ConnError::Protocol("no control stream within 10 s".into()));
    };
    let (mut send, mut recv) = stream?;
    let hello = read_msg_within::<ClientMsg>(
        &mut recv,
        ctx.limits.control_message_limit(),
        ctx.limits.message_read_timeout,
    );
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, hello).await {
        Err(_) => {
            close_connection(&conn, Some(send), &timed_out("no Hello within 10 s")).await;
            return Err(ConnError::Protocol("no hello within 10 s".into()));
        }
        Ok(Err(e)) => {
            if let Some(v) = Violation::of(&e) {
                close_connection(&conn, Some(send), &v).await;
            }
            return Err(e.into());
        }
        Ok(Ok(hello)) => hello,
    };
    let Some(ClientMsg::Hello {
        role,
        token,
        client,
    }) = hello
    else {
        let v = Violation::protocol("the first message must be Hello".into());
        close_connection(&conn, Some(send), &v).await;
        return Err(ConnError::Protocol("first message was not Hello".into()));
    };
    if let Err(e) = ctx.auth.authorize(role, &token) {
        metrics::counter!("referee_auth_failures_total").increment(1);
        warn!(?role, %client, error = %e, "refused");
        let v = Violation {
            error: error(ErrorCode::Unauthorized, &e.to_string(), false),
            close: referee_transport::CLOSE_UNAUTHORIZED,
        };
        close_connection(&conn, Some(send), &v).await;
        return Ok(());
    }
    info!(?role, %client, "client connected");
    write_msg(
        &mut send,
        &ServerMsg::Welcome {
            server: ctx.server_name.clone(),
            protocol: PROTOCOL_VERSION,
        },
    )
    .await?;
    match role {
        Role::Capture => {
            let peer = Peer {
                conn,
                id,
                token,
                guards,
            };
            capture_connection(peer, send, recv, ctx).await
        }
        Role::Feed => feed_connection(conn, send, recv, ctx).await,
    }
}

/// Why the daemon ends a connection on purpose: the error the peer is told, the close code.
struct Violation {
    error: ErrorMsg,
    close: quinn::VarInt,
}

impl Violation {
    /// The violation behind a control-stream read error; `None` when the peer just went away.
    fn of(e: &TransportError) -> Option<Self> {
        match e {
            TransportError::Closed(_) | TransportError::ClosedByPeer { .. } => None,
            TransportError::Io { .. } => None,
            TransportError::Timeout { .. } => Some(timed_out(&e.to_string())),
            other => Some(Self::protocol(format!("bad control message: {other}"))),
        }
    }

    fn protocol(message: String) -> Self {
        Violation {
            error: error(ErrorCode::ProtocolViolation, &message, false),
            close: referee_transport::CLOSE_PROTOCOL,
        }
    }
}

fn timed_out(message: &str) -> Violation {
    Violation {
        error: error(ErrorCode::Timeout, message, true),
        close: referee_transport::CLOSE_TIMEOUT,
    }
}

/// Ends `conn` on purpose: writes the violation's `Error` on the control stream (when there
/// is one), finishes it, waits (at most [`ERROR_LINGER`]) until the peer acknowledged it, then
/// closes with the violation's code and message.
async fn close_connection(
    conn: &quinn::Connection,
    send: Option<quinn::SendStream>,
    v: &Violation,
) {
    metrics::counter!(
        "referee_connections_closed_total",
        "reason" => referee_transport::close_code_name(v.close)
    )
    .increment(1);
    if let Some(mut send) = send {
        let _ = write_msg(&mut send, &ServerMsg::Error(v.error.clone())).await;
        linger(send).await;
    }
    let reason: String = v.error.message.chars().take(200).collect();
    conn.close(v.close, reason.as_bytes());
}

/// Finishes `send` and waits (at most [`ERROR_LINGER`]) for the peer to acknowledge its data.
async fn linger(mut send: quinn::SendStream) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(ERROR_LINGER, send.stopped()).await;
    }
}

/// A capture agent's connection as its handlers see it.
struct Peer {
    conn: quinn::Connection,
    id: ConnId,
    token: String,
    guards: Arc<Guards>,
}

impl Peer {
    fn agent(&self) -> Agent<'_> {
        Agent {
            conn: self.id,
            token: &self.token,
        }
    }
}

fn error(code: ErrorCode, message: &str, recoverable: bool) -> ErrorMsg {
    ErrorMsg {
        code,
        message: message.to_string(),
        recoverable,
        session_id: None,
    }
}

type Owned = Arc<Mutex<Vec<Arc<Session>>>>;

async fn capture_connection(
    peer: Peer,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: QuicContext,
) -> Result<(), ConnError> {
    let (outbox, inbox) = mpsc::unbounded_channel::<ServerMsg>();
    let owned: Owned = Arc::new(Mutex::new(Vec::new()));
    let (stop_writer, writer_stop) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(control_writer(send, inbox, writer_stop, owned.clone()));
    let frames = tokio::spawn(frame_acceptor(
        peer.conn.clone(),
        ctx.clone(),
        outbox.clone(),
        peer.guards.clone(),
        peer.id,
    ));

    let (result, violation) = loop {
        let read = read_msg_within::<ClientMsg>(
            &mut recv,
            ctx.limits.control_message_limit(),
            ctx.limits.message_read_timeout,
        );
        let msg = match read.await {
            Ok(Some(msg)) => msg,
            Ok(None) => break (Ok(()), None),
            Err(e) => {
                let v = Violation::of(&e);
                break (Err(ConnError::Transport(e)), v);
            }
        };
        handle_capture_msg(msg, &ctx, &outbox, &owned, &peer);
    };
    // The agent is gone (or misbehaved): the sessions it held stay open for a resume until
    // they time out (one taken over by a resuming connection is that one's now).
    for id in peer.guards.owners.release(peer.id) {
        ctx.core.router.detach(&id);
    }
    frames.abort();
    drop(outbox);
    // The writer sends what is queued, then hands the stream back (frame tasks still waiting
    // for the pipeline hold senders of the outbox: it is told to stop rather than waiting).
    let _ = stop_writer.send(());
    let send = match tokio::time::timeout(Duration::from_secs(2), writer).await {
        Ok(Ok(send)) => send,
        _ => None,
    };
    match (violation, send) {
        (Some(v), send) => close_connection(&peer.conn, send, &v).await,
        (None, Some(mut send)) => {
            let _ = send.finish();
        }
        (None, None) => {}
    }
    result
}

fn handle_capture_msg(
    msg: ClientMsg,
    ctx: &QuicContext,
    outbox: &mpsc::UnboundedSender<ServerMsg>,
    owned: &Owned,
    peer: &Peer,
) {
    let reply_err = |e: ErrorMsg| {
        let _ = outbox.send(ServerMsg::Error(e));
    };
    let owners = &peer.guards.owners;
    let engine = &ctx.core.engine;
    match msg {
        ClientMsg::SessionStart(mut start) => {
            let id = start.session_id.clone();
            let secret = start.resume_secret.take();
            let spec = map::session_spec(start);
            match owners.open(engine, spec, secret.as_deref(), peer.agent()) {
                Ok(opened) => {
                    ctx.core.router.attach(&id, outbox.clone());
                    let ack = opened.session.received.lock().to_ack();
                    owned.lock().push(opened.session);
                    let _ = outbox.send(ServerMsg::SessionStarted {
                        session_id: id,
                        ack,
                        resume_secret: opened.resume_secret,
                    });
                }
                Err(e) => reply_err(map::owner_error(&e, Some(&id))),
            }
        }
        ClientMsg::Signal(signal) => {
            let received_at = ctx.core.engine.now();
            let id = signal.session_id.clone();
            if signal.bytes.len() > ctx.limits.max_signal_bytes {
                metrics::counter!("referee_signals_rejected_total").increment(1);
                reply_err(ErrorMsg {
                    code: ErrorCode::SignalTooLarge,
                    message: format!(
                        "signal log {:?} is {} bytes; the limit is {}",
                        signal.filename,
                        signal.bytes.len(),
                        ctx.limits.max_signal_bytes
                    ),
                    recoverable: false,
                    session_id: Some(id),
                });
                return;
            }
            let phrase = signal.phrase;
            if let Err(e) = owners.admit_signal(engine, &id, phrase, peer.id) {
                reply_err(map::owner_error(&e, Some(&id)));
                return;
            }
            match ctx.core.signal(map::phrase_signal(signal), received_at) {
                Ok(()) => {
                    let _ = outbox.send(ServerMsg::SignalAck {
                        session_id: id,
                        phrase,
                    });
                }
                Err(e) => reply_err(map::engine_error(&e, Some(&id))),
            }
        }
        ClientMsg::End { session_id } => {
            if let Err(e) = owners.check(engine, &session_id, peer.id) {
                reply_err(map::owner_error(&e, Some(&session_id)));
            } else if let Err(e) = engine.end_session(&session_id) {
                reply_err(map::engine_error(&e, Some(&session_id)));
            }
        }
        ClientMsg::Abort { session_id, reason } => {
            if let Err(e) = owners.check(engine, &session_id, peer.id) {
                reply_err(map::owner_error(&e, Some(&session_id)));
                return;
            }
            info!(session = %session_id, %reason, "agent aborted the session");
            if let Err(e) = engine.abort_session(&session_id) {
                reply_err(map::engine_error(&e, Some(&session_id)));
            }
        }
        ClientMsg::Ping { nonce } => {
            let _ = outbox.send(ServerMsg::Pong { nonce });
        }
        ClientMsg::Hello { .. } | ClientMsg::FeedSubscribe { .. } => reply_err(error(
            ErrorCode::ProtocolViolation,
            "unexpected message on a capture connection",
            true,
        )),
    }
}

/// Writes queued messages to the control stream and sends cumulative acks as frames arrive;
/// once the inbox closes or `stop` fires, writes what is queued and returns the stream
/// (unfinished) for the caller to end, or `None` when a write failed.
async fn control_writer(
    mut send: quinn::SendStream,
    mut inbox: mpsc::UnboundedReceiver<ServerMsg>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    owned: Owned,
) -> Option<quinn::SendStream> {
    let mut last_acks: HashMap<String, Ack> = HashMap::new();
    let mut tick = tokio::time::interval(ACK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                if write_msg(&mut send, &msg).await.is_err() {
                    return None;
                }
            }
            _ = &mut stop => {
                while let Ok(msg) = inbox.try_recv() {
                    if write_msg(&mut send, &msg).await.is_err() {
                        return None;
                    }
                }
                break;
            }
            _ = tick.tick() => {
                let sessions: Vec<_> = owned.lock().clone();
                for s in sessions {
                    let ack = s.received.lock().to_ack();
                    if last_acks.get(s.id()) != Some(&ack) {
                        last_acks.insert(s.id().to_string(), ack.clone());
                        let msg = ServerMsg::Ack { session_id: s.id().to_string(), ack };
                        if write_msg(&mut send, &msg).await.is_err() {
                            return None;
                        }
                    }
                }
            }
        }
    }
    Some(send)
}

/// Frame streams one connection may have open (being read or waiting for the pipeline).
const READING_SLOTS: usize = 4;

/// Accepts frame streams. A connection reads at most [`READING_SLOTS`] frames at a time and a
/// frame waits for a pipeline permit only once its bytes are in: a slow or vanished agent ties
/// up its own slots, never the pipeline. When the pipeline is full the slots stay taken, no
/// more streams are accepted, and QUIC flow control slows the agent down.
async fn frame_acceptor(
    conn: quinn::Connection,
    ctx: QuicContext,
    outbox: mpsc::UnboundedSender<ServerMsg>,
    guards: Arc<Guards>,
    conn_id: ConnId,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(READING_SLOTS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match conn.accept_uni().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let core = ctx.core.clone();
        let limits = ctx.limits.frame_limits();
        let outbox = outbox.clone();
        let guards = guards.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (header, bytes) = match read_frame(stream, &limits).await {
                Ok(f) => f,
                Err(e) => {
                    // A stalled stream is given up (its slot freed); the agent resends the
                    // frame after reconnecting, since it was never acked.
                    let code = match e {
                        TransportError::Timeout { .. } => ErrorCode::Timeout,
                        _ => ErrorCode::BadFrame,
                    };
                    metrics::counter!("referee_frame_stream_errors_total", "reason" => e.kind())
                        .increment(1);
                    warn!(error = %e, "bad frame stream");
                    let _ = outbox.send(ServerMsg::Error(ErrorMsg {
                        code,
                        message: format!("frame stream rejected: {e}"),
                        recoverable: true,
                        session_id: None,
                    }));
                    return;
                }
            };
            let id = header.session_id.clone();
            // Only the connection holding the session may add frames to it.
            if let Err(e) = guards.owners.check(&core.engine, &id, conn_id) {
                metrics::counter!("referee_frames_refused_total", "reason" => "not_owner")
                    .increment(1);
                let _ = outbox.send(ServerMsg::Error(map::owner_error(&e, Some(&id))));
                return;
            }
            let Ok(permit) = core.reserve().await else {
                return;
            };
            match core.submit(permit, map::frame_meta(header), bytes) {
                Ok(Admission::Accepted | Admission::Duplicate) => {}
                Err(e) => {
                    let _ = outbox.send(ServerMsg::Error(map::engine_error(&e, Some(&id))));
                }
            }
        });
    }
}

async fn feed_connection(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: QuicContext,
) -> Result<(), ConnError> {
    let (max, body_timeout) = (
        ctx.limits.control_message_limit(),
        ctx.limits.message_read_timeout,
    );
    let pistes = match read_msg_within::<ClientMsg>(&mut recv, max, body_timeout).await {
        Ok(Some(ClientMsg::FeedSubscribe { pistes })) => pistes,
        Ok(Some(_)) => {
            let v = Violation::protocol("a feed connection must send FeedSubscribe".into());
            close_connection(&conn, Some(send), &v).await;
            return Err(ConnError::Protocol("expected FeedSubscribe".into()));
        }
        Ok(None) => return Ok(()),
        Err(e) => {
            if let Some(v) = Violation::of(&e) {
                close_connection(&conn, Some(send), &v).await;
            }
            return Err(e.into());
        }
    };
    info!(?pistes, "feed subscriber joined");
    let mut sub = ctx.core.feed().subscribe(pistes);
    // Reading happens in its own task: a partially read message must never be cancelled.
    let (pings_tx, mut pings) = mpsc::channel::<Result<u64, Violation>>(8);
    let reader = tokio::spawn(async move {
        loop {
            let msg = match read_msg_within::<ClientMsg>(&mut recv, max, body_timeout).await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => {
                    if let Some(v) = Violation::of(&e) {
                        let _ = pings_tx.send(Err(v)).await;
                    }
                    break;
                }
            };
            if let ClientMsg::Ping { nonce } = msg {
                if pings_tx.send(Ok(nonce)).await.is_err() {
                    break;
                }
            }
        }
    });
    loop {
        tokio::select! {
            event = sub.next() => {
                let Some(event) = event else { break };
                write_msg(&mut send, &ServerMsg::Feed(event)).await?;
            }
            nonce = pings.recv() => match nonce {
                Some(Ok(nonce)) => write_msg(&mut send, &ServerMsg::Pong { nonce }).await?,
                Some(Err(v)) => {
                    reader.abort();
                    close_connection(&conn, Some(send), &v).await;
                    return Ok(());
                }
                None => break,
            }
        }
    }
    reader.abort();
    let _ = send.finish();
    Ok(())
}
