//! The daemon's NATS side (tournament mode, on when `nats.url` is set):
//!
//! - live fan-out: every feed event goes to `<prefix>.piste.<id>.{live,verdict,session}` as a
//!   [`referee_nats::FeedMessage`], through a bounded queue that the engine's event sink never
//!   waits on; live and session events that do not fit are dropped and counted
//!   (`referee_nats_dropped_total{kind}`), verdicts never;
//! - the verdict log: each verdict is written to the on-disk [`outbox`] first, then appended to
//!   the JetStream stream [`referee_nats::VERDICT_STREAM`] with `Nats-Msg-Id = <session>/<phrase>`
//!   and removed once the stream acknowledged it (retried with backoff while NATS is away);
//! - the piste [`registry`] heartbeat;
//! - one view: the other daemons' events are mirrored into this daemon's feed hub, so its
//!   page, SSE and QUIC feed show every piste of the tournament.

pub mod outbox;
pub mod registry;

use std::net::SocketAddr;
use std::time::Duration;

use referee_config::Settings;
use referee_nats::async_nats::{self, jetstream};
use referee_nats::{FeedMessage, Subjects, FORMAT_VERSION};
use referee_transport::messages::{FeedEvent, VerdictReport};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::core::Core;
use crate::feed::FeedHub;
use outbox::{Outbox, Pending};

/// Feed events (live state, sessions) queued for publishing before drops start.
pub const LIVE_QUEUE: usize = 1024;
/// How long a shutdown waits for the outbox to drain.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// How long one publish acknowledgement is awaited.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the NATS side could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error("NATS settings: {0:#}")]
    Options(anyhow::Error),
}

/// The running NATS side.
pub struct NatsBridge {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    daemon_id: String,
}

/// What the engine's event sink hands over (never blocks).
struct Tap {
    live: mpsc::Sender<FeedEvent>,
    verdicts: mpsc::UnboundedSender<VerdictReport>,
}

impl Tap {
    fn forward(&self, event: &FeedEvent) {
        let kind = match event {
            FeedEvent::Verdict(v) => {
                // Unbounded on purpose: verdicts are one per phrase and must not be dropped.
                let _ = self.verdicts.send(v.clone());
                return;
            }
            FeedEvent::Live(_) => "live",
            FeedEvent::SessionStarted { .. } | FeedEvent::SessionEnded { .. } => "session",
            FeedEvent::Error(_) | FeedEvent::Lagged { .. } => return,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.live.try_send(event.clone()) {
            metrics::counter!("referee_nats_dropped_total", "kind" => kind).increment(1);
        }
    }
}

/// The JSON message for a feed event.
pub fn feed_message(daemon_id: &str, event: &FeedEvent) -> FeedMessage {
    let (kind, data) = crate::http::sse_parts(event);
    FeedMessage {
        v: FORMAT_VERSION,
        daemon: daemon_id.to_string(),
        event: kind.to_string(),
        data,
    }
}

impl NatsBridge {
    /// Starts the NATS side when `nats.url` is set (`Ok(None)` otherwise). Returns at once:
    /// the connection is made, and remade, in the background, so a daemon starts and referees
    /// while NATS is down.
    pub async fn start(
        s: &Settings,
        core: &Core,
        quic_addr: SocketAddr,
        fingerprint: &str,
    ) -> Result<Option<Self>, NatsError> {
        let daemon_id = if s.nats.daemon_id.is_empty() {
            format!(
                "d{}-{}",
                quic_addr.port(),
                &fingerprint[..fingerprint.len().min(8)]
            )
        } else {
            s.nats.daemon_id.clone()
        };
        let Some(args) = referee_nats::ConnectArgs::from_settings(
            &s.nats,
            &format!("referee-daemon {daemon_id}"),
        ) else {
            return Ok(None);
        };
        let opts = args
            .options()
            .await
            .map_err(NatsError::Options)?
            .retry_on_initial_connect();
        let outbox = Outbox::open(&s.server.data_dir.join("nats-outbox"), s.nats.outbox_max)?;
        let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
        let (verdict_tx, verdict_rx) = mpsc::unbounded_channel();
        let tap = Tap {
            live: live_tx,
            verdicts: verdict_tx,
        };
        core.router.set_tap(Box::new(move |e| tap.forward(e)));
        let identity = registry::Identity {
            daemon_id: daemon_id.clone(),
            quic_addr: s
                .nats
                .advertise
                .clone()
                .unwrap_or_else(|| quic_addr.to_string()),
            fingerprint: fingerprint.to_string(),
            pistes: s.nats.pistes.clone(),
        };
        let subjects = Subjects::new(&s.nats.subject_prefix);
        let (stop, stopped) = watch::channel(false);
        let core = core.clone();
        let feed = core.feed().clone();
        let servers = args.servers();
        let id = daemon_id.clone();
        let task = tokio::spawn(async move {
            let client = match opts.connect(servers).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "NATS client cannot start: tournament mode off");
                    return;
                }
            };
            let mut js = jetstream::new(client.clone());
            js.set_timeout(ACK_TIMEOUT);
            let live = tokio::spawn(publish_live(
                client.clone(),
                subjects.clone(),
                id.clone(),
                live_rx,
            ));
            let mirror = tokio::spawn(mirror_remote(
                client.clone(),
                subjects.all_pistes(),
                id.clone(),
                feed,
            ));
            let reg = tokio::spawn(registry::run(js.clone(), core, identity, stopped.clone()));
            let log = VerdictLog {
                client: client.clone(),
                js,
                subjects,
                daemon_id: id,
                outbox,
            };
            log.run(verdict_rx, stopped).await;
            let _ = reg.await;
            live.abort();
            mirror.abort();
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        });
        tracing::info!(daemon = %daemon_id, url = %args.url, "tournament mode: publishing to NATS");
        Ok(Some(Self {
            stop,
            task,
            daemon_id,
        }))
    }

    /// This daemon's id in the registry and on the subjects.
    pub fn daemon_id(&self) -> &str {
        &self.daemon_id
    }

    /// Sends what the outbox holds (waiting a few seconds at most), deletes this daemon's
    /// registry entries and closes the connection. Call after the engine has drained.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH + Duration::from_secs(3), self.task).await;
    }
}

/// Resolves once `stop` says so (or its sender is gone).
/// Other daemons' feed events into this daemon's feed hub, so its page, SSE and QUIC feed
/// subscribers see every piste of the tournament (this daemon's own events are there already).
async fn mirror_remote(client: async_nats::Client, subject: String, own: String, feed: FeedHub) {
    use futures_util::StreamExt;
    let mut sub = match client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to the other daemons' feed");
            return;
        }
    };
    while let Some(m) = sub.next().await {
        let Ok(msg) = serde_json::from_slice::<FeedMessage>(&m.payload) else {
            continue;
        };
        if msg.daemon == own {
            continue;
        }
        if let Some(event) = msg.to_event() {
            feed.publish(event);
        }
    }
}

pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Publishes live and session events, in order, as fast as the connection takes them.
async fn publish_live(
    client: async_nats::Client,
    subjects: Subjects,
    daemon_id: String,
    mut rx: mpsc::Receiver<FeedEvent>,
) {
    while let Some(event) = rx.recv().await {
        let Some(subject) = subjects.for_event(&event) else {
            continue;
        };
        let Ok(body) = serde_json::to_vec(&feed_message(&daemon_id, &event)) else {
            continue;
        };
        if client.publish(subject, body.into()).await.is_ok() {
            metrics::counter!("referee_nats_published_total", "kind" => "live").increment(1);
        }
    }
}

/// The durable verdict path.
struct VerdictLog {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    daemon_id: String,
    outbox: Outbox,
}

impl VerdictLog {
    async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<VerdictReport>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut stream_ready = false;
        let mut backoff = Duration::from_millis(200);
        let mut retry_at: Option<tokio::time::Instant> =
            (!self.outbox.is_empty()).then(tokio::time::Instant::now);
        loop {
            let wake = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                v = rx.recv() => match v {
                    Some(v) => self.accept(v).await,
                    None => break,
                },
                _ = wake => {}
                _ = stopped(&mut stop) => break,
            }
            while let Ok(v) = rx.try_recv() {
                self.accept(v).await;
            }
            match self.flush(&mut stream_ready).await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    retry_at = None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "verdict log: NATS unreachable, retrying");
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Shutting down: what arrived meanwhile, then one last bounded attempt.
        while let Ok(v) = rx.try_recv() {
            self.accept(v).await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_FLUSH;
        while !self.outbox.is_empty() && tokio::time::Instant::now() < deadline {
            if self.flush(&mut stream_ready).await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !self.outbox.is_empty() {
            tracing::warn!(
                waiting = self.outbox.len(),
                "NATS unreachable at shutdown: verdicts stay in the outbox and are sent at the next start"
            );
        }
    }

    /// Queues a verdict on disk and sends it on the live subject.
    async fn accept(&self, v: VerdictReport) {
        let event = FeedEvent::Verdict(v);
        let msg = feed_message(&self.daemon_id, &event);
        let FeedEvent::Verdict(v) = &event else {
            unreachable!()
        };
        let payload = serde_json::to_value(&msg).unwrap_or(serde_json::Value::Null);
        let pending = Pending {
            msg_id: referee_nats::verdict_msg_id(&v.session_id, v.phrase),
            subject: self.subjects.verdict_log(&v.piste),
            payload: payload.clone(),
        };
        match self.outbox.push(&pending) {
            Ok(_) => metrics::gauge!("referee_nats_verdicts_pending").increment(1.0),
            Err(e) => {
                metrics::counter!("referee_nats_verdicts_refused_total").increment(1);
                tracing::error!(error = %e, msg_id = %pending.msg_id, "verdict NOT queued for the NATS stream");
            }
        }
        let live = serde_json::to_vec(&payload).unwrap_or_default();
        let subject = self.subjects.verdict(&v.piste);
        if let Ok(Ok(())) =
            tokio::time::timeout(ACK_TIMEOUT, self.client.publish(subject, live.into())).await
        {
            metrics::counter!("referee_nats_published_total", "kind" => "verdict").increment(1);
        }
    }

    /// Sends every waiting verdict, oldest first; stops at the first failure.
    async fn flush(&self, stream_ready: &mut bool) -> anyhow::Result<()> {
        let pending = self.outbox.pending();
        if pending.is_empty() {
            return Ok(());
        }
        if !*stream_ready {
            self.js
                .get_or_create_stream(jetstream::stream::Config {
                    name: referee_nats::VERDICT_STREAM.into(),
                    description: Some(
                        "every referee verdict, once (Nats-Msg-Id = session/phrase)".into(),
                    ),
                    subjects: vec![self.subjects.verdict_log_all()],
                    storage: jetstream::stream::StorageType::File,
                    duplicate_window: referee_nats::DUPLICATE_WINDOW,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("verdict stream: {e}"))?;
            *stream_ready = true;
        }
        for (path, p) in pending {
            let body = serde_json::to_vec(&p.payload)?;
            let publish = jetstream::message::PublishMessage::build()
                .payload(body.into())
                .message_id(&p.msg_id);
            let ack = self
                .js
                .send_publish(p.subject.clone(), publish)
                .await
                .map_err(|e| anyhow::anyhow!("publish {}: {e}", p.msg_id))?;
            let ack = ack
                .await
                .map_err(|e| anyhow::anyhow!("ack of {}: {e}", p.msg_id))?;
            self.outbox.remove(&path);
            metrics::gauge!("referee_nats_verdicts_pending").decrement(1.0);
            metrics::counter!("referee_nats_verdicts_stored_total", "duplicate" => if ack.duplicate { "true" } else { "false" }).increment(1);
        }
        Ok(())
    }
}
