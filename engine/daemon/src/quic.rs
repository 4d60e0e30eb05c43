//! The daemon's QUIC side: accepts agents and feed subscribers and connects them to the engine.
//!
//! One bidirectional control stream per connection carries length-prefixed postcard messages;
//! each frame arrives on its own unidirectional stream. A connection reads a few frames at a
//! time, and each waits for room in the pipeline (a permit) before it is submitted, so a full
//! pipeline stops the reading and QUIC flow control slows the agent down; no runtime thread
//! ever blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use referee_transport::auth::AuthPolicy;
use referee_transport::codec::{read_frame, read_msg, write_msg};
use referee_transport::messages::{
    Ack, ClientMsg, ErrorCode, ErrorMsg, Role, ServerMsg, PROTOCOL_VERSION,
};
use referee_transport::EndpointLimits;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use referee_engine::{Admission, Session};

use crate::core::Core;
use crate::map;

/// How long a new connection may take to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often cumulative acks are sent while frames arrive.
const ACK_INTERVAL: Duration = Duration::from_millis(50);

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

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, ctx: QuicContext) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                metrics::counter!("referee_connections_total").increment(1);
                match referee_transport::accept(incoming, ctx.limits.handshake_timeout).await {
                    Ok(conn) => {
                        if let Err(e) = handle_connection(conn, ctx).await {
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

async fn handle_connection(conn: quinn::Connection, ctx: QuicContext) -> Result<(), ConnError> {
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ConnError::Protocol("no control stream within 10 s".into()))??;
    let hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        read_msg::<ClientMsg>(&mut recv, ctx.limits.control_message_limit()),
    )
    .await
    .map_err(|_| ConnError::Protocol("no hello within 10 s".into()))??;
    let Some(ClientMsg::Hello {
        role,
        token,
        client,
    }) = hello
    else {
        let err = error(
            ErrorCode::ProtocolViolation,
            "the first message must be Hello",
            false,
        );
        let _ = write_msg(&mut send, &ServerMsg::Error(err)).await;
        let _ = send.finish();
        return Err(ConnError::Protocol("first message was not Hello".into()));
    };
    if let Err(e) = ctx.auth.authorize(role, &token) {
        metrics::counter!("referee_auth_failures_total").increment(1);
        warn!(?role, %client, error = %e, "refused");
        let err = error(ErrorCode::Unauthorized, &e.to_string(), false);
        let _ = write_msg(&mut send, &ServerMsg::Error(err)).await;
        let _ = send.finish();
        // Give the error a moment to leave before closing.
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(referee_transport::CLOSE_UNAUTHORIZED, b"unauthorized");
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
        Role::Capture => capture_connection(conn, send, recv, ctx).await,
        Role::Feed => feed_connection(send, recv, ctx).await,
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
    conn: quinn::Connection,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: QuicContext,
) -> Result<(), ConnError> {
    let (outbox, inbox) = mpsc::unbounded_channel::<ServerMsg>();
    let owned: Owned = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn(control_writer(send, inbox, owned.clone()));
    let frames = tokio::spawn(frame_acceptor(conn.clone(), ctx.clone(), outbox.clone()));

    let result = loop {
        let msg = match read_msg::<ClientMsg>(&mut recv, ctx.limits.control_message_limit()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break Ok(()),
            Err(e) => {
                let _ = outbox.send(ServerMsg::Error(error(
                    ErrorCode::ProtocolViolation,
                    &format!("bad control message: {e}"),
                    false,
                )));
                break Err(ConnError::Transport(e));
            }
        };
        handle_capture_msg(msg, &ctx, &outbox, &owned);
    };
    // The agent is gone (or misbehaved): its sessions stay open for a resume until they time out.
    for s in owned.lock().iter() {
        ctx.core.router.detach(s.id());
    }
    frames.abort();
    drop(outbox);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    result
}

fn handle_capture_msg(
    msg: ClientMsg,
    ctx: &QuicContext,
    outbox: &mpsc::UnboundedSender<ServerMsg>,
    owned: &Owned,
) {
    let reply_err = |e: ErrorMsg| {
        let _ = outbox.send(ServerMsg::Error(e));
    };
    match msg {
        ClientMsg::SessionStart(start) => {
            let id = start.session_id.clone();
            match ctx.core.engine.open_session(map::session_spec(start)) {
                Ok(session) => {
                    ctx.core.router.attach(&id, outbox.clone());
                    let ack = session.received.lock().to_ack();
                    owned.lock().push(session);
                    let _ = outbox.send(ServerMsg::SessionStarted {
                        session_id: id,
                        ack,
                    });
                }
                Err(e) => reply_err(map::engine_error(&e, Some(&id))),
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
            if let Err(e) = ctx.core.engine.end_session(&session_id) {
                reply_err(map::engine_error(&e, Some(&session_id)));
            }
        }
        ClientMsg::Abort { session_id, reason } => {
            info!(session = %session_id, %reason, "agent aborted the session");
            if let Err(e) = ctx.core.engine.abort_session(&session_id) {
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

/// Writes queued messages to the control stream and sends cumulative acks as frames arrive.
async fn control_writer(
    mut send: quinn::SendStream,
    mut inbox: mpsc::UnboundedReceiver<ServerMsg>,
    owned: Owned,
) {
    let mut last_acks: HashMap<String, Ack> = HashMap::new();
    let mut tick = tokio::time::interval(ACK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                if write_msg(&mut send, &msg).await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                let sessions: Vec<_> = owned.lock().clone();
                for s in sessions {
                    let ack = s.received.lock().to_ack();
                    if last_acks.get(s.id()) != Some(&ack) {
                        last_acks.insert(s.id().to_string(), ack.clone());
                        let msg = ServerMsg::Ack { session_id: s.id().to_string(), ack };
                        if write_msg(&mut send, &msg).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
    let _ = send.finish();
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
        tokio::spawn(async move {
            let _slot = slot;
            let (header, bytes) = match read_frame(stream, &limits).await {
                Ok(f) => f,
                Err(e) => {
                    metrics::counter!("referee_frame_stream_errors_total").increment(1);
                    warn!(error = %e, "bad frame stream");
                    let _ = outbox.send(ServerMsg::Error(ErrorMsg {
                        code: ErrorCode::BadFrame,
                        message: format!("frame stream rejected: {e}"),
                        recoverable: true,
                        session_id: None,
                    }));
                    return;
                }
            };
            let id = header.session_id.clone();
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
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: QuicContext,
) -> Result<(), ConnError> {
    let pistes = match read_msg::<ClientMsg>(&mut recv, ctx.limits.control_message_limit()).await? {
        Some(ClientMsg::FeedSubscribe { pistes }) => pistes,
        Some(_) => {
            let err = error(
                ErrorCode::ProtocolViolation,
                "a feed connection must send FeedSubscribe",
                false,
            );
            let _ = write_msg(&mut send, &ServerMsg::Error(err)).await;
            return Err(ConnError::Protocol("expected FeedSubscribe".into()));
        }
        None => return Ok(()),
    };
    info!(?pistes, "feed subscriber joined");
    let mut sub = ctx.core.feed().subscribe(pistes);
    // Reading happens in its own task: a partially read message must never be cancelled.
    let (pings_tx, mut pings) = mpsc::channel::<u64>(8);
    let max = ctx.limits.control_message_limit();
    let reader = tokio::spawn(async move {
        while let Ok(Some(msg)) = read_msg::<ClientMsg>(&mut recv, max).await {
            if let ClientMsg::Ping { nonce } = msg {
                if pings_tx.send(nonce).await.is_err() {
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
            nonce = pings.recv() => {
                let Some(nonce) = nonce else { break };
                write_msg(&mut send, &ServerMsg::Pong { nonce }).await?;
            }
        }
    }
    reader.abort();
    let _ = send.finish();
    Ok(())
}
