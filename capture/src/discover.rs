//! Finding the daemon that serves a piste through the tournament's NATS piste registry
//! (`referee-capture --nats URL --piste P`).
//!
//! The registry entry gives the daemon's QUIC address and its certificate fingerprint. The
//! address is used as is; the fingerprint is pinned only when the user says so
//! (`--trust-registry`): a fingerprint read from NATS is only as trustworthy as write access to
//! the registry bucket, so by default the agent still wants `--server-fingerprint` or `--ca`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use referee_nats::async_nats::jetstream;
use referee_nats::{ConnectArgs, PisteEntry};
use referee_transport::Trust;

/// The registry entry of `piste`, waiting up to `wait` for a daemon to register it.
pub async fn find_daemon(
    nats: &ConnectArgs,
    piste: &str,
    wait: Duration,
) -> anyhow::Result<PisteEntry> {
    let client = referee_nats::connect(nats).await?;
    let js = jetstream::new(client);
    let kv = js
        .get_key_value(referee_nats::REGISTRY_BUCKET)
        .await
        .with_context(|| {
            format!(
                "no piste registry (bucket {}) on NATS at {}: is any daemon started with nats.url?",
                referee_nats::REGISTRY_BUCKET,
                nats.url
            )
        })?;
    referee_nats::find_piste(&kv, piste, wait).await
}

/// The entry's QUIC address.
pub fn entry_addr(entry: &PisteEntry) -> anyhow::Result<SocketAddr> {
    entry
        .quic_addr
        .to_socket_addrs()
        .with_context(|| {
            format!(
                "registry address {:?} of piste {:?}",
                entry.quic_addr, entry.piste
            )
        })?
        .next()
        .with_context(|| format!("registry address {:?} resolves to nothing", entry.quic_addr))
}

/// How to trust the daemon found in the registry: the user's own trust when given, else the
/// entry's fingerprint when `trust_registry`, else an error saying what to pass.
pub fn trust_for(
    entry: &PisteEntry,
    user: Option<Trust>,
    trust_registry: bool,
) -> anyhow::Result<Trust> {
    if let Some(t) = user {
        return Ok(t);
    }
    if trust_registry {
        return Trust::fingerprint_from_arg(&entry.fingerprint)
            .context("the registry entry's fingerprint");
    }
    anyhow::bail!(
        "piste {:?} is served by {} ({}), fingerprint {}: pin it with --server-fingerprint, or \
         pass --trust-registry to trust what the NATS registry says (as safe as write access \
         to NATS)",
        entry.piste,
        entry.daemon_id,
        entry.quic_addr,
        entry.fingerprint
    )
}
