//! The daemon's HTTP side: `/healthz`, `/status`, `/metrics` (Prometheus), `/feed/events`
//! (Server-Sent Events), the live feed page at `/`, and the phrase history's routes
//! ([`crate::review`]: `/phrases`, pictures, the referee's call).
//!
//! `/status`, `/streaming/stats` and `/feed/events` need a feed token when feed tokens are
//! configured ([`crate::http_auth::FeedToken`]); `/`, `/healthz` and `/metrics` stay open
//! (the page carries no data: it passes its own `?token=` on to the event stream).

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use referee_transport::messages::FeedEvent;
use serde::{Deserialize, Serialize};

use referee_engine::stats::{percentile, StageSummary};

use crate::core::Core;
use crate::http_auth::FeedToken;
use referee_transport::auth::AuthPolicy;

const FEED_PAGE: &str = include_str!("web/index.html");

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding program):
            // then our handle renders an empty registry, which is still a valid answer.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// What the HTTP handlers need.
#[derive(Clone)]
pub struct HttpState {
    core: Core,
    metrics: PrometheusHandle,
    started: Instant,
    info: Arc<ServerInfo>,
    auth: Arc<AuthPolicy>,
    connections: Arc<crate::http_server::HttpCounters>,
}

/// Facts about the daemon shown on /status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerInfo {
    /// QUIC address agents connect to.
    pub quic_addr: String,
    /// SHA-256 fingerprint of the daemon's TLS certificate.
    pub fingerprint: String,
    /// Pose model in use.
    pub model: String,
}

impl HttpState {
    /// State for the router; `auth` decides who may read the feed and the status.
    pub fn new(core: Core, info: ServerInfo, auth: AuthPolicy) -> Self {
        Self {
            core,
            metrics: prometheus(),
            started: Instant::now(),
            info: Arc::new(info),
            auth: Arc::new(auth),
            connections: Arc::default(),
        }
    }

    /// Who may read the feed ([`crate::http_auth::require_feed_token`]).
    pub fn auth(&self) -> &AuthPolicy {
        &self.auth
    }
}

/// The router with every endpoint.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/streaming/stats", get(status))
        .route("/metrics", get(prometheus_metrics))
        .route("/feed/events", get(feed_events))
        .merge(crate::review::routes())
        .with_state(state)
}

/// Serves the router on `listener` within `limits` ([`crate::http_server`]) until
/// `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    limits: crate::http_server::HttpLimits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let counters = state.connections.clone();
    crate::http_server::serve(listener, router(state), limits, counters, shutdown).await
}

impl HttpState {
    /// The engine core the routes report on.
    pub fn core(&self) -> &Core {
        &self.core
    }
}

async fn page() -> Html<&'static str> {
    Html(FEED_PAGE)
}

/// What is wrong with the daemon now, in words; empty = healthy.
pub fn health_problems(s: &HttpState) -> Vec<String> {
    let mut problems = Vec::new();
    let a = s.core.engine.artifacts();
    if a.degraded {
        problems.push(format!(
            "artifacts: the last phrase's were not written ({} failed, {} refused so far): {}",
            a.failed,
            a.refused,
            a.last_error.as_deref().unwrap_or("unknown error")
        ));
    }
    if let Some(r) = s.core.router.recorder().map(|r| r.health()) {
        if r.degraded {
            problems.push(format!(
                "recordings: the last phrase's was not recorded whole ({} errors, {} incomplete so far): {}",
                r.errors,
                r.incomplete,
                r.last_problem.as_deref().unwrap_or("unknown problem")
            ));
        }
    }
    problems
}

/// Always 200 while the daemon answers (it still gives verdicts, so a liveness probe must
/// not restart it); `status` is "degraded", with `problems`, while something needs a person
/// (e.g. artifacts failing to be written).
async fn healthz(State(s): State<HttpState>) -> Response {
    let problems = health_problems(&s);
    let body = serde_json::json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "problems": problems,
        "uptime_s": s.started.elapsed().as_secs_f64(),
        "sessions": s.core.engine.sessions().len(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// The /status document.
#[derive(Serialize)]
struct StatusDoc {
    version: &'static str,
    uptime_s: f64,
    server: ServerInfo,
    /// Instruction set of the fast pose path (`pose.isa`), once loaded.
    pose_isa: Option<&'static str>,
    sessions: Vec<SessionDoc>,
    queues: std::collections::BTreeMap<String, usize>,
    in_flight: usize,
    stages: std::collections::BTreeMap<String, StageSummary>,
    frames: FramesDoc,
    refused: std::collections::BTreeMap<String, u64>,
    verdicts: u64,
    verdict_latency_ms: LatencyDoc,
    memory: MemoryDoc,
    feed: FeedDoc,
    /// HTTP connections: open, accepted, refused at the cap, timed out.
    http: crate::http_server::HttpCountersDoc,
    /// The artifacts writer: written, failed, refused, the last error and when.
    artifacts: referee_engine::artifacts::pool::ArtifactHealth,
    /// The phrase recorder (absent when recording is off): written, incomplete, errors.
    recording: Option<crate::record::RecordingHealth>,
    /// The recent phrases kept (`/phrases`).
    history: HistoryDoc,
    /// Our verdicts against the referee's calls, over the phrases in the history.
    agreement: crate::history::AgreementReport,
    /// The figures the old system's /streaming/stats reported.
    streaming_stats: StreamingStats,
}

#[derive(Serialize)]
struct SessionDoc {
    session_id: String,
    piste: String,
    fps: f32,
    width: u32,
    height: u32,
    attached: bool,
    idle_s: f64,
    age_s: f64,
    stats: referee_engine::SessionStats,
    bytes: u64,
}

#[derive(Serialize)]
struct FramesDoc {
    received: u64,
    processed: u64,
    dropped: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize, Default)]
struct LatencyDoc {
    count: usize,
    p50: Option<f64>,
    p95: Option<f64>,
    last: Option<f64>,
}

#[derive(Serialize)]
struct MemoryDoc {
    rss_mb: Option<f64>,
    budget_mb: u64,
}

#[derive(Serialize)]
struct FeedDoc {
    subscribers: usize,
    published: u64,
    dropped_for_slow_subscribers: u64,
}

#[derive(Serialize)]
struct HistoryDoc {
    phrases: usize,
    max_phrases: usize,
}

#[derive(Serialize)]
struct StreamingStats {
    active_sessions: usize,
    max_sessions: usize,
    memory_usage_mb: Option<f64>,
    max_memory_mb: u64,
    session_timeout_s: u64,
}

/// Resident set size of this process in MB (Linux), if readable.
pub fn rss_mb() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

async fn status(_: FeedToken, State(s): State<HttpState>) -> Json<StatusDoc> {
    let e = &s.core.engine;
    let now = e.now();
    let cfg = e.config();
    let sessions: Vec<SessionDoc> = e
        .sessions()
        .iter()
        .map(|sess| SessionDoc {
            session_id: sess.id().to_string(),
            piste: sess.piste().to_string(),
            fps: sess.spec.fps,
            width: sess.spec.width,
            height: sess.spec.height,
            attached: s.core.router.is_attached(sess.id()),
            idle_s: sess.idle_for(now).as_secs_f64(),
            age_s: now.saturating_duration_since(sess.opened_at).as_secs_f64(),
            stats: sess.counters.snapshot(),
            bytes: sess
                .counters
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
        })
        .collect();
    let lat = e.stats().verdict_latencies_ms();
    let rss = rss_mb();
    let stats = e.stats();
    Json(StatusDoc {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: s.started.elapsed().as_secs_f64(),
        server: (*s.info).clone(),
        pose_isa: crate::pose::pose_isa(),
        streaming_stats: StreamingStats {
            active_sessions: sessions.len(),
            max_sessions: cfg.max_sessions,
            memory_usage_mb: rss,
            max_memory_mb: cfg.max_memory_bytes >> 20,
            session_timeout_s: cfg.session_timeout.as_secs(),
        },
        sessions,
        queues: stats.queue_depths(),
        in_flight: e.in_flight(),
        stages: stats.stages(),
        frames: FramesDoc {
            received: stats
                .frames_received
                .load(std::sync::atomic::Ordering::Relaxed),
            processed: stats
                .frames_processed
                .load(std::sync::atomic::Ordering::Relaxed),
            dropped: stats.drops(),
        },
        refused: stats.refusals(),
        verdicts: e.verdicts(),
        verdict_latency_ms: LatencyDoc {
            count: lat.len(),
            p50: percentile(&lat, 50.0),
            p95: percentile(&lat, 95.0),
            last: lat.last().copied(),
        },
        memory: MemoryDoc {
            rss_mb: rss,
            budget_mb: cfg.max_memory_bytes >> 20,
        },
        feed: FeedDoc {
            subscribers: s.core.feed().subscribers(),
            published: s.core.feed().published(),
            dropped_for_slow_subscribers: s.core.feed().lagged(),
        },
        http: s.connections.snapshot(),
        artifacts: e.artifacts(),
        recording: s.core.router.recorder().map(|r| r.health()),
        history: HistoryDoc {
            phrases: s.core.history.len(),
            max_phrases: s.core.history.max_phrases(),
        },
        agreement: s.core.history.agreement(),
    })
}

async fn prometheus_metrics(State(s): State<HttpState>) -> Response {
    // Refresh the queue-depth gauges before rendering.
    let _ = s.core.engine.stats().queue_depths();
    metrics::gauge!("referee_memory_rss_bytes").set(rss_mb().unwrap_or(0.0) * 1024.0 * 1024.0);
    crate::review::export_agreement(&s.core.history);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct FeedQuery {
    /// Comma-separated pistes; absent or empty = all.
    piste: Option<String>,
}

/// The SSE event name and JSON payload for a feed event.
pub fn sse_parts(event: &FeedEvent) -> (&'static str, serde_json::Value) {
    let to = |v: Result<serde_json::Value, _>| v.unwrap_or(serde_json::Value::Null);
    match event {
        FeedEvent::SessionStarted { session_id, piste } => (
            "session_started",
            serde_json::json!({"session_id": session_id, "piste": piste}),
        ),
        FeedEvent::Live(l) => ("live", to(serde_json::to_value(l))),
        FeedEvent::Verdict(v) => ("verdict", to(serde_json::to_value(v))),
        FeedEvent::SessionEnded {
            session_id,
            piste,
            stats,
        } => (
            "session_ended",
            serde_json::json!({"session_id": session_id, "piste": piste, "stats": stats}),
        ),
        FeedEvent::Error(e) => ("error", to(serde_json::to_value(e))),
        FeedEvent::Lagged { count } => ("lagged", serde_json::json!({ "count": count })),
    }
}

async fn feed_events(
    _: FeedToken,
    State(s): State<HttpState>,
    Query(q): Query<FeedQuery>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let pistes: Vec<String> = q
        .piste
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let sub = s.core.feed().subscribe(pistes);
    let stream = futures_util::stream::unfold(sub, |mut sub| async move {
        let event = sub.next().await?;
        let (name, data) = sse_parts(&event);
        Some((Ok(Event::default().event(name).data(data.to_string())), sub))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}
