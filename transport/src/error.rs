//! The transport's error type and the mapping from quinn/rustls errors.

use std::time::Duration;

/// TLS alert `no_application_protocol` (RFC 7301): the peers share no ALPN, i.e. no protocol version.
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// Errors from the codec, the endpoints, TLS and authentication.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The stream ended in the middle of a length prefix, message, header or frame.
    #[error("truncated {what}: the stream ended after {got} of {expected} bytes")]
    Truncated {
        what: &'static str,
        expected: u64,
        got: u64,
    },
    /// A length prefix or frame header announced more bytes than allowed.
    #[error("{what} too large: {len} bytes, the limit is {max} bytes")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// Bytes that do not decode to the expected message, or contradict their header.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The peer speaks another protocol version (ALPN mismatch) or QUIC version.
    #[error("unsupported protocol version: {0} (this build speaks ALPN `referee/2`; upgrade the older side)")]
    UnsupportedVersion(String),
    /// A token was missing or wrong, or a role is not allowed.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The TLS handshake failed (unknown identity, expired certificate, bad signature...).
    #[error("TLS failure: {0}")]
    Tls(String),
    /// Loading or generating a certificate or key failed.
    #[error("TLS identity: {0}")]
    Identity(String),
    /// An operation did not finish in time.
    #[error("timed out after {after:?} while {what}")]
    Timeout { what: &'static str, after: Duration },
    /// A local I/O failure (binding a socket, reading a file).
    #[error("I/O error while {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection or stream was closed (by either side, or lost).
    #[error("connection closed: {0}")]
    Closed(String),
    /// The peer closed the connection on purpose, with an application close code (see
    /// [`crate::close_code_name`]) and a reason.
    #[error("the peer closed the connection: code {code} ({name}): {reason}")]
    ClosedByPeer {
        code: u64,
        name: &'static str,
        reason: String,
    },
    /// The settings given to the transport are not usable.
    #[error("invalid transport configuration: {0}")]
    Config(String),
}

impl TransportError {
    /// True for errors that a reconnect might cure (lost connection, timeout), false for errors
    /// that will repeat (bad identity, wrong version, unauthorized, malformed data).
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Closed(_) | TransportError::Timeout { .. } => true,
            TransportError::Io { .. } => true,
            // A normal end, a restart, a read timeout or a full daemon may pass; a protocol
            // violation or a refusal repeats.
            TransportError::ClosedByPeer { code, .. } => [
                crate::CLOSE_OK,
                crate::CLOSE_SHUTDOWN,
                crate::CLOSE_TIMEOUT,
                crate::CLOSE_TOO_MANY_CONNECTIONS,
            ]
            .iter()
            .any(|c| c.into_inner() == *code),
            _ => false,
        }
    }

    /// Short stable name of the error kind, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Truncated { .. } => "truncated",
            TransportError::TooLarge { .. } => "too_large",
            TransportError::Malformed { .. } => "malformed",
            TransportError::UnsupportedVersion(_) => "unsupported_version",
            TransportError::Unauthorized(_) => "unauthorized",
            TransportError::Tls(_) => "tls",
            TransportError::Identity(_) => "identity",
            TransportError::Timeout { .. } => "timeout",
            TransportError::Io { .. } => "io",
            TransportError::Closed(_) => "closed",
            TransportError::ClosedByPeer { .. } => "closed_by_peer",
            TransportError::Config(_) => "config",
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        TransportError::Io {
            what: what.into(),
            source,
        }
    }
}

impl From<quinn::ConnectionError> for TransportError {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as C;
        let no_alpn = quinn::TransportErrorCode::crypto(ALERT_NO_APPLICATION_PROTOCOL);
        match e {
            C::VersionMismatch => TransportError::UnsupportedVersion(
                "the peer supports no common QUIC version".into(),
            ),
            C::TransportError(te) if te.code == no_alpn => TransportError::UnsupportedVersion(
                format!("the peer offered no common ALPN ({te})"),
            ),
            C::ConnectionClosed(c) if c.error_code == no_alpn => {
                TransportError::UnsupportedVersion(format!("the peer refused our ALPN ({c})"))
            }
            C::TransportError(te) if is_crypto(te.code) => TransportError::Tls(te.to_string()),
            C::ConnectionClosed(c) if is_crypto(c.error_code) => {
                TransportError::Tls(format!("the peer aborted the handshake: {c}"))
            }
            C::ApplicationClosed(c) => TransportError::ClosedByPeer {
                code: c.error_code.into_inner(),
                name: crate::close_code_name(c.error_code),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            C::TimedOut => TransportError::Closed(
                "no packets from the peer within the idle timeout (network down or peer gone)"
                    .into(),
            ),
            other => TransportError::Closed(other.to_string()),
        }
    }
}

fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    let v = u64::from(code);
    (0x100..0x200).contains(&v)
}

impl From<quinn::ReadError> for TransportError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => c.into(),
            other => TransportError::Closed(format!("stream read failed: {other}")),
        }
    }
}

impl From<quinn::WriteError> for TransportError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => c.into(),
            other => TransportError::Closed(format!("stream write failed: {other}")),
        }
    }
}

impl From<quinn::ClosedStream> for TransportError {
    fn from(e: quinn::ClosedStream) -> Self {
        TransportError::Closed(format!("stream already closed: {e}"))
    }
}

impl From<quinn::ConnectError> for TransportError {
    fn from(e: quinn::ConnectError) -> Self {
        TransportError::Config(format!("cannot start a connection: {e}"))
    }
}

impl From<rustls::Error> for TransportError {
    fn from(e: rustls::Error) -> Self {
        TransportError::Tls(e.to_string())
    }
}
