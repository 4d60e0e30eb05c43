//! QUIC endpoints (server and client), connection set-up with timeouts and ALPN checks.

use crate::error::TransportError;
use crate::messages::ALPN;
use crate::tls::{client_crypto, server_crypto, ServerIdentity, Trust};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Connection-level limits of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Concurrent unidirectional (frame) streams the peer may open.
    pub max_concurrent_uni_streams: u32,
    /// Close a connection silent for this long.
    pub idle_timeout: Duration,
    /// Time allowed for the QUIC/TLS handshake.
    pub handshake_timeout: Duration,
    /// Largest control message.
    pub max_message_bytes: usize,
    /// Largest frame image.
    pub max_frame_bytes: usize,
    /// Largest signal log.
    pub max_signal_bytes: usize,
    /// Once a control message's length prefix arrived, time allowed for the rest of it.
    pub message_read_timeout: Duration,
    /// Time allowed from accepting a frame stream to its end.
    pub frame_read_timeout: Duration,
    /// Connections the daemon holds at once (handshakes included).
    pub max_connections: usize,
    /// Connections one source IP address may hold at once.
    pub max_connections_per_ip: usize,
    /// New phrases' signals a session may send at once (the bucket's size)...
    pub signal_burst: u32,
    /// ...and the rate the bucket refills at, per minute.
    pub signals_per_minute: u32,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self::from_config(&referee_config::Settings::default().limits)
    }
}

impl EndpointLimits {
    /// Builds the limits from the daemon's configuration.
    pub fn from_config(l: &referee_config::Limits) -> Self {
        EndpointLimits {
            max_concurrent_uni_streams: l.max_concurrent_streams,
            idle_timeout: Duration::from_secs(l.idle_timeout_s),
            handshake_timeout: Duration::from_secs(l.handshake_timeout_s),
            max_message_bytes: l.max_message_bytes,
            max_frame_bytes: l.max_frame_bytes,
            max_signal_bytes: l.max_signal_bytes,
            message_read_timeout: Duration::from_secs(l.message_read_timeout_s),
            frame_read_timeout: Duration::from_secs(l.frame_read_timeout_s),
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            signal_burst: l.signal_burst,
            signals_per_minute: l.signals_per_minute,
        }
    }

    /// The limits that apply to one frame stream.
    pub fn frame_limits(&self) -> crate::codec::FrameLimits {
        crate::codec::FrameLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_header_bytes: crate::codec::MAX_FRAME_HEADER_BYTES,
            read_timeout: Some(self.frame_read_timeout),
        }
    }

    /// The largest control message to accept: the message limit, or enough for a maximal
    /// signal log plus its envelope when that is larger.
    pub fn control_message_limit(&self) -> usize {
        self.max_message_bytes.max(self.max_signal_bytes + 4096)
    }
}

fn transport_config(
    idle: Duration,
    max_uni: u32,
) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle)
        .map_err(|_| TransportError::Config(format!("idle timeout {idle:?} is too large")))?;
    t.max_idle_timeout(Some(idle));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(max_uni));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4));
    // Keep-alives well inside the idle timeout so a quiet but healthy peer is not dropped.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // Room for a couple of 150 KB frames per stream and ~60 frames in flight per connection.
    t.stream_receive_window(quinn::VarInt::from_u32(2 << 20));
    t.receive_window(quinn::VarInt::from_u32(16 << 20));
    t.send_window(16 << 20);
    Ok(t)
}

/// Binds a QUIC server endpoint speaking ALPN `referee/2` over TLS 1.3.
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &ServerIdentity,
    limits: &EndpointLimits,
) -> Result<quinn::Endpoint, TransportError> {
    let crypto = QuicServerConfig::try_from(server_crypto(identity)?)
        .map_err(|e| TransportError::Tls(format!("no TLS 1.3 cipher suite for QUIC: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config(
        limits.idle_timeout,
        limits.max_concurrent_uni_streams,
    )?));
    quinn::Endpoint::server(cfg, addr)
        .map_err(|e| TransportError::io(format!("binding the QUIC endpoint on {addr}"), e))
}

/// Idle timeout of client connections: with keep-alives every 2 s, a path that stays silent
/// this long is dead, and the agent reconnects (the effective value is the smaller of both sides').
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// Binds a client endpoint on an ephemeral IPv4 port with `trust` as its default configuration.
/// With [`Trust::InsecureLoopback`] the socket is bound to 127.0.0.1, so only loopback is reachable.
pub fn client_endpoint(trust: &Trust) -> Result<quinn::Endpoint, TransportError> {
    client_endpoint_for(trust, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

/// Like [`client_endpoint`], picking the address family of `target` and refusing
/// [`Trust::InsecureLoopback`] for a non-loopback target.
pub fn client_endpoint_for(
    trust: &Trust,
    target: SocketAddr,
) -> Result<quinn::Endpoint, TransportError> {
    client_endpoint_with_alpn(trust, target, ALPN)
}

/// Client endpoint offering a chosen ALPN (tests of version negotiation).
pub fn client_endpoint_with_alpn(
    trust: &Trust,
    target: SocketAddr,
    alpn: &[u8],
) -> Result<quinn::Endpoint, TransportError> {
    let insecure = matches!(trust, Trust::InsecureLoopback);
    if insecure && !target.ip().is_loopback() {
        return Err(insecure_refused(target));
    }
    let bind_ip: IpAddr = match (target.is_ipv4(), insecure) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv4Addr::UNSPECIFIED.into(),
        (false, true) => Ipv6Addr::LOCALHOST.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let crypto = QuicClientConfig::try_from(client_crypto(trust, alpn)?)
        .map_err(|e| TransportError::Tls(format!("no TLS 1.3 cipher suite for QUIC: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let defaults = EndpointLimits::default();
    cfg.transport_config(Arc::new(transport_config(
        CLIENT_IDLE_TIMEOUT,
        defaults.max_concurrent_uni_streams,
    )?));
    let bind = SocketAddr::new(bind_ip, 0);
    let mut ep = quinn::Endpoint::client(bind)
        .map_err(|e| TransportError::io(format!("binding a client socket on {bind}"), e))?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

fn insecure_refused(target: SocketAddr) -> TransportError {
    TransportError::Config(format!(
        "--insecure-loopback trusts any certificate and is only allowed for loopback targets, not {target}; \
         pin the server's fingerprint or give its CA file"
    ))
}

/// Default time allowed for [`connect`]'s handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr`, verifying the server as `server_name`, within the default handshake timeout.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, TransportError> {
    connect_with_timeout(endpoint, addr, server_name, DEFAULT_HANDSHAKE_TIMEOUT).await
}

/// [`connect`] with an explicit handshake timeout.
pub async fn connect_with_timeout(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<quinn::Connection, TransportError> {
    // A loopback-bound endpoint (insecure mode) cannot reach anything else: say so clearly.
    if let Ok(local) = endpoint.local_addr() {
        if local.ip().is_loopback() && !addr.ip().is_loopback() {
            return Err(insecure_refused(addr));
        }
    }
    let connecting = endpoint.connect(addr, server_name)?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(TransportError::Timeout {
                what: "connecting (QUIC/TLS handshake)",
                after: timeout,
            })
        }
    };
    check_alpn(&conn)?;
    tracing::debug!(%addr, "connected");
    Ok(conn)
}

/// Completes an incoming connection within `timeout` and checks it negotiated `referee/2`.
pub async fn accept(
    incoming: quinn::Incoming,
    timeout: Duration,
) -> Result<quinn::Connection, TransportError> {
    let result = async {
        let connecting = incoming.accept()?;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(TransportError::Timeout {
                    what: "accepting a connection (QUIC/TLS handshake)",
                    after: timeout,
                })
            }
        };
        check_alpn(&conn)?;
        Ok(conn)
    }
    .await;
    match &result {
        Ok(_) => metrics::counter!("referee_transport_connections_accepted_total").increment(1),
        Err(e) => {
            tracing::debug!(error = %e, "incoming connection failed");
            metrics::counter!("referee_transport_handshake_failures_total", "reason" => e.kind())
                .increment(1)
        }
    }
    result
}

/// Errors unless the connection negotiated ALPN `referee/2` (closing it with a reason if not).
pub fn check_alpn(conn: &quinn::Connection) -> Result<(), TransportError> {
    let proto = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match proto.as_deref() {
        Some(p) if p == ALPN => Ok(()),
        other => {
            let offered = other
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_else(|| "no ALPN".to_string());
            conn.close(
                crate::CLOSE_UNSUPPORTED_VERSION,
                b"unsupported protocol version",
            );
            Err(TransportError::UnsupportedVersion(format!(
                "peer negotiated {offered:?}, expected \"referee/2\""
            )))
        }
    }
}
