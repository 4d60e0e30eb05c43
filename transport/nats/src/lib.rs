//! Tournament mode over NATS, the parts every side shares: the daemon (publisher, registry
//! heartbeat), the capture agent (finds its piste's daemon) and the CLI (`referee feed --nats`,
//! `referee pistes`).
//!
//! - Subjects ([`Subjects`]): `<prefix>.piste.<id>.live`, `.verdict`, `.session` (core NATS,
//!   fire and forget) and `<prefix>.verdicts.<id>` (the JetStream stream [`VERDICT_STREAM`]).
//! - Formats: [`FeedMessage`] on the piste subjects and in the stream, [`PisteEntry`] in the KV
//!   bucket [`REGISTRY_BUCKET`]; each carries `"v": 1` ([`FORMAT_VERSION`]).
//! - [`ConnectArgs`]: URL, token or credentials file, CA file; [`connect`].
//!
//! Piste and daemon ids become subject tokens through [`token`] (letters, digits, `-`, `_`;
//! anything else becomes `_`), so `piste 3/A` publishes on `referee.piste.piste_3_A.live`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use referee_transport::messages::FeedEvent;
use serde::{Deserialize, Serialize};

pub use async_nats;

/// Version of the JSON formats ([`FeedMessage`], [`PisteEntry`]): the `"v"` field.
pub const FORMAT_VERSION: u32 = 1;
/// The JetStream stream every verdict is appended to.
pub const VERDICT_STREAM: &str = "REFEREE_VERDICTS";
/// How long the stream remembers message ids (`Nats-Msg-Id`) to drop resent verdicts.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);
/// The KV bucket of the piste registry.
pub const REGISTRY_BUCKET: &str = "referee_pistes";
/// How long a registry entry lives without a heartbeat.
pub const REGISTRY_TTL: Duration = Duration::from_secs(10);
/// How often a daemon rewrites its entries.
pub const HEARTBEAT: Duration = Duration::from_secs(3);

/// `id` as one subject token / KV key: ASCII letters, digits, `-` and `_` are kept, anything
/// else (dots, wildcards, spaces, non-ASCII) becomes `_`; empty becomes `_`.
pub fn token(id: &str) -> String {
    let t: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// The subjects under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (already validated by the config: dot-separated tokens).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// Live state of a piste during a phrase.
    pub fn live(&self, piste: &str) -> String {
        format!("{}.piste.{}.live", self.prefix, token(piste))
    }

    /// Verdicts of a piste (live fan-out; the durable copy is [`Subjects::verdict_log`]).
    pub fn verdict(&self, piste: &str) -> String {
        format!("{}.piste.{}.verdict", self.prefix, token(piste))
    }

    /// Session started/ended and bad-signal errors of a piste.
    pub fn session(&self, piste: &str) -> String {
        format!("{}.piste.{}.session", self.prefix, token(piste))
    }

    /// Every piste's live subjects (what `referee feed --nats` subscribes to).
    pub fn all_pistes(&self) -> String {
        format!("{}.piste.*.>", self.prefix)
    }

    /// The subject a piste's verdicts are stored under in [`VERDICT_STREAM`].
    pub fn verdict_log(&self, piste: &str) -> String {
        format!("{}.verdicts.{}", self.prefix, token(piste))
    }

    /// The stream's subjects.
    pub fn verdict_log_all(&self) -> String {
        format!("{}.verdicts.>", self.prefix)
    }

    /// The subject for a feed event (`None`: not published, e.g. `Lagged`).
    pub fn for_event(&self, event: &FeedEvent) -> Option<String> {
        Some(match event {
            FeedEvent::Live(l) => self.live(&l.piste),
            FeedEvent::Verdict(v) => self.verdict(&v.piste),
            FeedEvent::SessionStarted { piste, .. } | FeedEvent::SessionEnded { piste, .. } => {
                self.session(piste)
            }
            FeedEvent::Error(_) | FeedEvent::Lagged { .. } => return None,
        })
    }
}

/// The idempotency key of a verdict in the stream: `<session>/<phrase>`.
pub fn verdict_msg_id(session_id: &str, phrase: u32) -> String {
    format!("{session_id}/{phrase}")
}

/// One feed event on NATS: `{"v":1,"daemon":"...","event":"verdict","data":{...}}`. `event`
/// and `data` are exactly what the daemon's SSE stream sends (`session_started`, `live`,
/// `verdict`, `session_ended`, `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedMessage {
    pub v: u32,
    /// Id of the daemon that published it.
    pub daemon: String,
    pub event: String,
    pub data: serde_json::Value,
}

impl FeedMessage {
    /// The wire feed event again, when `event` is one this version knows.
    pub fn to_event(&self) -> Option<FeedEvent> {
        let d = &self.data;
        let text = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Some(match self.event.as_str() {
            "live" => FeedEvent::Live(serde_json::from_value(d.clone()).ok()?),
            "verdict" => FeedEvent::Verdict(serde_json::from_value(d.clone()).ok()?),
            "error" => FeedEvent::Error(serde_json::from_value(d.clone()).ok()?),
            "session_started" => FeedEvent::SessionStarted {
                session_id: text("session_id")?,
                piste: text("piste")?,
            },
            "session_ended" => FeedEvent::SessionEnded {
                session_id: text("session_id")?,
                piste: text("piste")?,
                stats: serde_json::from_value(d.get("stats")?.clone()).ok()?,
            },
            _ => return None,
        })
    }
}

/// A registry entry (KV key = [`token`] of the piste): who serves the piste and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PisteEntry {
    pub v: u32,
    pub piste: String,
    pub daemon_id: String,
    /// QUIC address agents dial (HOST:PORT).
    pub quic_addr: String,
    /// SHA-256 of the daemon's TLS certificate (hex).
    pub fingerprint: String,
    /// Active sessions / session limit of the daemon (0 = idle, 1 = full).
    pub load: f32,
    /// Active sessions on the daemon.
    pub sessions: usize,
    /// Active sessions on this piste.
    pub piste_sessions: usize,
    /// Frames inside the daemon's pipeline.
    pub in_flight: usize,
    /// When the daemon wrote this entry (ms since the Unix epoch).
    pub updated_unix_ms: u64,
}

/// How to reach the NATS server.
#[derive(Debug, Clone, Default)]
pub struct ConnectArgs {
    /// URL(s), comma-separated.
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub credentials_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    /// Name shown in the server's connection list.
    pub name: String,
}

impl ConnectArgs {
    /// The connection part of the daemon's `[nats]` settings (`None` when NATS is off).
    pub fn from_settings(s: &referee_config::NatsSettings, name: &str) -> Option<Self> {
        Some(Self {
            url: s.url.clone()?,
            token_file: s.token_file.clone(),
            credentials_file: s.credentials_file.clone(),
            tls_ca: s.tls_ca.clone(),
            name: name.to_string(),
        })
    }

    /// Client options: credentials or token, CA, a 2 s connection timeout and unlimited
    /// reconnects (the daemon adds `retry_on_initial_connect` so that it starts without NATS).
    pub async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut o = match &self.credentials_file {
            Some(p) => async_nats::ConnectOptions::with_credentials_file(p.clone())
                .await
                .with_context(|| format!("reading the NATS credentials file {}", p.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(p) = &self.token_file {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading the NATS token file {}", p.display()))?;
            o = o.token(t.trim().to_string());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok(o.name(&self.name)
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None::<usize>))
    }

    /// The server list.
    pub fn servers(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Connects once (the CLI's and the agent's way: an error when NATS is not there).
pub async fn connect(args: &ConnectArgs) -> anyhow::Result<async_nats::Client> {
    let opts = args.options().await?;
    let servers = args.servers();
    tokio::time::timeout(Duration::from_secs(5), opts.connect(servers.clone()))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from NATS at {}", args.url))?
        .with_context(|| format!("connecting to NATS at {}", args.url))
}

/// The registry bucket (created when missing, with [`REGISTRY_TTL`] as max age).
pub async fn registry(
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    if let Ok(kv) = js.get_key_value(REGISTRY_BUCKET).await {
        return Ok(kv);
    }
    // The bucket's stream is created by hand, with the KV layout (`KV_<bucket>`, subjects
    // `$KV.<bucket>.>`, one message per key): async-nats's `create_key_value` sends settings
    // that nats-server 2.9 (Debian's) answers in a form the client cannot parse.
    use async_nats::jetstream::stream;
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{REGISTRY_BUCKET}"),
        description: Some("referee piste registry: piste -> daemon (TTL heartbeats)".into()),
        subjects: vec![format!("$KV.{REGISTRY_BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: REGISTRY_TTL,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the piste registry bucket: {e}"))?;
    js.get_key_value(REGISTRY_BUCKET)
        .await
        .context("opening the piste registry bucket")
}

/// Every live registry entry (expired ones are gone; unreadable ones are skipped).
pub async fn list_pistes(kv: &async_nats::jetstream::kv::Store) -> anyhow::Result<Vec<PisteEntry>> {
    use futures_util::StreamExt;
    let mut keys = kv.keys().await.context("listing the registry")?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let Ok(k) = k else { continue };
        if let Ok(Some(bytes)) = kv.get(&k).await {
            if let Ok(e) = serde_json::from_slice::<PisteEntry>(&bytes) {
                out.push(e);
            }
        }
    }
    out.sort_by(|a, b| a.piste.cmp(&b.piste));
    Ok(out)
}

/// The entry of `piste`, waiting up to `wait` for one to appear.
pub async fn find_piste(
    kv: &async_nats::jetstream::kv::Store,
    piste: &str,
    wait: Duration,
) -> anyhow::Result<PisteEntry> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(bytes) = kv
            .get(token(piste))
            .await
            .context("reading the piste registry")?
        {
            return serde_json::from_slice(&bytes).context("a registry entry that is not JSON");
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "no daemon serves piste {piste:?} in the registry (bucket {REGISTRY_BUCKET})"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_subject_tokens() {
        assert_eq!(token("3"), "3");
        assert_eq!(token("piste 3/A.*>"), "piste_3_A___");
        assert_eq!(token(""), "_");
        let s = Subjects::new("referee");
        assert_eq!(s.live("a.b"), "referee.piste.a_b.live");
        assert_eq!(s.verdict_log("7"), "referee.verdicts.7");
        assert_eq!(s.all_pistes(), "referee.piste.*.>");
    }

    #[test]
    fn feed_messages_round_trip() {
        let e = FeedEvent::SessionStarted {
            session_id: "s".into(),
            piste: "p".into(),
        };
        let m = FeedMessage {
            v: FORMAT_VERSION,
            daemon: "d".into(),
            event: "session_started".into(),
            data: serde_json::json!({"session_id": "s", "piste": "p"}),
        };
        assert_eq!(m.to_event(), Some(e));
    }
}
