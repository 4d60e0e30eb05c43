//! Wire protocol, postcard codec and QUIC endpoints (quinn + rustls, ring, TLS 1.3) for the
//! referee system.
//!
//! - [`messages`]: the protocol's message types (control stream and frame headers).
//! - [`ack`]: acknowledgement arithmetic ([`messages::Ack`]'s methods, [`ReceivedFrames`]),
//!   defined once in `referee-pose-api` and shared with the engine.
//! - [`codec`]: length-prefixed postcard messages; one unidirectional stream per frame.
//! - [`endpoint`]: server/client endpoints, connect/accept with timeouts and ALPN check.
//! - [`tls`]: server identity (files, or self-signed and persisted), client trust modes.
//! - [`auth`]: role tokens compared in constant time, loopback-only open mode.

pub use referee_pose_api::ack;
pub mod auth;
pub mod codec;
pub mod endpoint;
pub mod error;
pub mod messages;
pub mod tls;

pub use auth::{auth_policy, AuthPolicy, TokenSet};
pub use codec::{
    decode_msg, encode_msg, read_frame, read_msg, read_msg_within, send_frame, write_frame,
    write_msg, FrameLimits,
};
pub use endpoint::{
    accept, client_endpoint, client_endpoint_for, connect, connect_with_timeout, server_endpoint,
    EndpointLimits,
};
pub use error::TransportError;
pub use referee_pose_api::ReceivedFrames;
pub use tls::{ServerIdentity, Trust};

/// Re-export so dependants use the same quinn.
pub use quinn;

// Application close codes: every connection the daemon ends on purpose closes with one of
// these, after the control stream carried an `Error` saying why (when there was one);
// [`close_code_name`] gives each a name for messages.

/// Application close code: normal end.
pub const CLOSE_OK: quinn::VarInt = quinn::VarInt::from_u32(0);
/// Application close code: protocol violation.
pub const CLOSE_PROTOCOL: quinn::VarInt = quinn::VarInt::from_u32(1);
/// Application close code: unauthorized.
pub const CLOSE_UNAUTHORIZED: quinn::VarInt = quinn::VarInt::from_u32(2);
/// Application close code: unsupported protocol version.
pub const CLOSE_UNSUPPORTED_VERSION: quinn::VarInt = quinn::VarInt::from_u32(3);
/// Application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: quinn::VarInt = quinn::VarInt::from_u32(4);
/// Application close code: a control message or frame stream was not completed in time.
pub const CLOSE_TIMEOUT: quinn::VarInt = quinn::VarInt::from_u32(5);
/// Application close code: the daemon (or this source address) has too many connections.
pub const CLOSE_TOO_MANY_CONNECTIONS: quinn::VarInt = quinn::VarInt::from_u32(6);

/// A short name for an application close code ("unknown" for codes this build does not know).
pub fn close_code_name(code: quinn::VarInt) -> &'static str {
    match code.into_inner() {
        0 => "normal end",
        1 => "protocol violation",
        2 => "unauthorized",
        3 => "unsupported protocol version",
        4 => "server shutting down",
        5 => "timed out",
        6 => "too many connections",
        _ => "unknown",
    }
}
