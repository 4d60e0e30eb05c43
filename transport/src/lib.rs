//! Wire protocol, postcard codec and QUIC endpoints (quinn + rustls) for the referee system.
pub mod messages;
