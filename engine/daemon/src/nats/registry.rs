//! The piste registry heartbeat: every [`referee_nats::HEARTBEAT`] the daemon rewrites one KV
//! entry per piste it serves (the configured `nats.pistes` and the pistes of its active
//! sessions) in the bucket [`referee_nats::REGISTRY_BUCKET`], whose max age is
//! [`referee_nats::REGISTRY_TTL`]: a daemon that dies stops writing and its entries expire.
//! A daemon shut down cleanly deletes its entries at once.

use std::collections::BTreeSet;
use std::time::Duration;

use referee_nats::async_nats::jetstream::{self, kv};
use referee_nats::{token, PisteEntry, FORMAT_VERSION, HEARTBEAT};
use tokio::sync::watch;

use super::stopped;
use crate::core::Core;

/// What the heartbeat says about this daemon.
#[derive(Debug, Clone)]
pub struct Identity {
    pub daemon_id: String,
    pub quic_addr: String,
    pub fingerprint: String,
    pub pistes: Vec<String>,
}

/// The entries to write now.
pub fn entries(core: &Core, id: &Identity) -> Vec<PisteEntry> {
    let sessions = core.engine.sessions();
    let max = core.engine.config().max_sessions.max(1);
    let mut pistes: BTreeSet<String> = id.pistes.iter().cloned().collect();
    pistes.extend(sessions.iter().map(|s| s.piste().to_string()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let in_flight = core.engine.in_flight();
    pistes
        .into_iter()
        .map(|piste| PisteEntry {
            v: FORMAT_VERSION,
            piste_sessions: sessions.iter().filter(|s| s.piste() == piste).count(),
            piste,
            daemon_id: id.daemon_id.clone(),
            quic_addr: id.quic_addr.clone(),
            fingerprint: id.fingerprint.clone(),
            load: sessions.len() as f32 / max as f32,
            sessions: sessions.len(),
            in_flight,
            updated_unix_ms: now,
        })
        .collect()
}

/// Heartbeats until `stop`, then deletes this daemon's entries.
pub async fn run(
    js: jetstream::Context,
    core: Core,
    id: Identity,
    mut stop: watch::Receiver<bool>,
) {
    let kv = loop {
        match referee_nats::registry(&js).await {
            Ok(kv) => break kv,
            Err(e) => {
                tracing::debug!(error = %e, "piste registry not reachable yet");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    };
    let mut written: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        for e in entries(&core, &id) {
            let key = token(&e.piste);
            let Ok(body) = serde_json::to_vec(&e) else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(2), kv.put(&key, body.into())).await {
                Ok(Ok(_)) => {
                    metrics::counter!("referee_nats_heartbeats_total").increment(1);
                    written.insert(key);
                }
                _ => {
                    metrics::counter!("referee_nats_heartbeat_failures_total").increment(1);
                }
            }
        }
    }
    deregister(&kv, &id, &written).await;
}

/// Deletes the entries still naming this daemon.
async fn deregister(kv: &kv::Store, id: &Identity, keys: &BTreeSet<String>) {
    for key in keys {
        let ours = match kv.get(key).await {
            Ok(Some(b)) => serde_json::from_slice::<PisteEntry>(&b)
                .map(|e| e.daemon_id == id.daemon_id)
                .unwrap_or(false),
            _ => false,
        };
        if ours {
            let _ = tokio::time::timeout(Duration::from_secs(2), kv.delete(key)).await;
        }
    }
}
