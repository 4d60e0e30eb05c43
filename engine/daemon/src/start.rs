//! Assembles the daemon from settings: engine, QUIC endpoint, HTTP server.
//!
//! `referee serve`, the demo, the end-to-end bench and the integration tests all start the
//! daemon through [`Daemon::start`], so they exercise the same code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use referee_config::Settings;
use referee_engine::rectify::RectifyParams;
use referee_engine::EngineConfig;
use referee_pose_api::PoseEstimator;
use referee_transport::auth::{auth_policy, TokenSet};
use referee_transport::tls::ServerIdentity;
use referee_transport::EndpointLimits;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::core::Core;
use crate::http::{HttpState, ServerInfo};
use crate::quic::QuicContext;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("TLS identity: {0}")]
    Identity(#[source] referee_transport::TransportError),
    #[error("authentication: {0}")]
    Auth(#[source] referee_transport::TransportError),
    #[error("cannot open the QUIC endpoint on {addr}: {source}")]
    Quic {
        addr: SocketAddr,
        #[source]
        source: referee_transport::TransportError,
    },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("right-of-way model: {0}")]
    Model(#[source] referee_rules::ModelError),
    #[error("NATS: {0}")]
    Nats(#[from] crate::nats::NatsError),
    #[error(transparent)]
    Recorder(#[from] crate::record::RecorderError),
    #[error("phrase history: {0}")]
    History(#[from] crate::history::HistoryError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Refused at start rather than run and lose every phrase's artifacts (or the identity).
    #[error("cannot write to {path} ({key}): {source}; the daemon does not start without a writable {key}: fix its permissions or point {key} elsewhere")]
    NotWritable {
        path: PathBuf,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that files can be created in `dir`: creates, writes and removes a probe file.
fn probe_writable(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let probe = dir.join(format!(".referee-write-check-{}", std::process::id()));
    let written = std::fs::File::create(&probe).and_then(|mut f| f.write_all(b"ok\n"));
    let _ = std::fs::remove_file(&probe);
    written
}

/// Maps the daemon settings onto the engine core's.
pub fn engine_config(s: &Settings) -> EngineConfig {
    EngineConfig {
        queue_depth: s.pipeline.queue_depth,
        reorder_window: s.pipeline.reorder_window,
        signal_wait: Duration::from_millis(s.pipeline.signal_wait_ms),
        max_sessions: s.limits.max_streaming_sessions,
        max_memory_bytes: s.limits.max_streaming_memory_mb * 1024 * 1024,
        max_frames_per_session: s.limits.max_frames_per_session,
        session_timeout: Duration::from_secs(s.limits.streaming_session_timeout_s),
        output_dir: Some(s.server.output_dir.clone()),
        artifact_workers: s.artifacts.workers,
        artifact_queue: s.artifacts.queue,
        rectify: RectifyParams {
            fisheye_enabled: s.fisheye.enabled,
            strength: s.fisheye.strength,
            balance: s.fisheye.balance,
            band: s.pose.piste_band,
            target: (s.pose.width as usize, s.pose.height as usize),
        },
        ..EngineConfig::default()
    }
}

/// [`engine_config`] with the right-of-way model the settings name loaded (the daemon's, and
/// a replay's).
pub fn load_engine_config(s: &Settings) -> Result<EngineConfig, DaemonError> {
    let mut cfg = engine_config(s);
    if let Some(path) = &s.referee.model {
        let model = referee_rules::Model::load(path).map_err(DaemonError::Model)?;
        info!(model = %path.display(), kind = ?model.kind, "right-of-way model loaded");
        cfg.referee_model = Arc::new(model);
    }
    Ok(cfg)
}

/// A running daemon.
pub struct Daemon {
    /// The engine core and its event router.
    pub core: Core,
    /// Address agents and subscribers connect to.
    pub quic_addr: SocketAddr,
    /// Address of /healthz, /status, /metrics and the feed page.
    pub http_addr: SocketAddr,
    /// SHA-256 fingerprint of the TLS certificate (what agents pin).
    pub fingerprint: String,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    /// The NATS side (tournament mode), when `nats.url` is set.
    pub nats: Option<crate::nats::NatsBridge>,
}

impl Daemon {
    /// Starts the engine with one pose worker per estimator, the QUIC endpoint and the HTTP
    /// server on the current
    /// tokio runtime. Port 0 in the settings picks a free port (see `quic_addr`/`http_addr`).
    pub async fn start(
        settings: &Settings,
        estimators: Vec<Box<dyn PoseEstimator>>,
        model_name: &str,
    ) -> Result<Self, DaemonError> {
        let s = settings;
        for (dir, key) in [
            (&s.server.output_dir, "server.output_dir"),
            (&s.server.data_dir, "server.data_dir"),
        ] {
            std::fs::create_dir_all(dir).map_err(|source| DaemonError::Dir {
                path: dir.clone(),
                source,
            })?;
            probe_writable(dir).map_err(|source| DaemonError::NotWritable {
                path: dir.clone(),
                key,
                source,
            })?;
        }
        let identity = match (&s.tls.cert, &s.tls.key) {
            (Some(cert), Some(key)) => ServerIdentity::from_files(cert, key),
            _ => ServerIdentity::load_or_generate(&s.server.data_dir),
        }
        .map_err(DaemonError::Identity)?;
        let fingerprint = identity.fingerprint_hex();
        let fp_file = s.server.data_dir.join("identity.sha256");
        std::fs::write(&fp_file, format!("{fingerprint}\n")).map_err(|source| {
            DaemonError::Dir {
                path: fp_file.clone(),
                source,
            }
        })?;
        let tokens = TokenSet::from_config(&s.auth);
        let auth = auth_policy(s.server.host, &tokens).map_err(DaemonError::Auth)?;
        if tokens.is_empty() {
            warn!("no tokens configured: accepting unauthenticated clients on loopback only");
        }
        let limits = EndpointLimits::from_config(&s.limits);
        let addr = SocketAddr::new(s.server.host, s.server.port);
        let endpoint = referee_transport::endpoint::server_endpoint(addr, &identity, &limits)
            .map_err(|source| DaemonError::Quic { addr, source })?;
        let quic_addr = endpoint.local_addr().map_err(|e| DaemonError::Quic {
            addr,
            source: referee_transport::TransportError::Io {
                what: "reading the bound address".into(),
                source: e,
            },
        })?;
        // HTTP has its own bind address (loopback by default) and the same token rules.
        let http_auth = auth_policy(s.http.host, &tokens).map_err(DaemonError::Auth)?;
        let http_addr = SocketAddr::new(s.http.host, s.server.effective_http_port());
        let listener = tokio::net::TcpListener::bind(http_addr)
            .await
            .map_err(|source| DaemonError::Http {
                addr: http_addr,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| DaemonError::Http {
            addr: http_addr,
            source,
        })?;

        let cfg = load_engine_config(s)?;
        let history = crate::history::History::open(
            &s.server.data_dir.join(crate::history::HISTORY_FILE),
            s.history.max_phrases,
        )?;
        let core = Core::start_with_history(cfg, estimators, Arc::new(history));
        if s.recording.enabled {
            let model = crate::record::model_id(s, model_name);
            let recorder = crate::record::Recorder::start(
                crate::record::RecorderConfig::from_settings(s, model),
            )?;
            crate::record::attach(&core, recorder);
        }
        let (stop, stopped) = watch::channel(false);
        let ctx = QuicContext {
            core: core.clone(),
            auth: Arc::new(auth),
            limits,
            server_name: format!("referee {}", env!("CARGO_PKG_VERSION")),
        };
        tokio::spawn(crate::quic::serve(endpoint.clone(), ctx));
        let state = HttpState::new(
            core.clone(),
            ServerInfo {
                quic_addr: quic_addr.to_string(),
                fingerprint: fingerprint.clone(),
                model: model_name.to_string(),
            },
            http_auth,
        );
        let http_limits = crate::http_server::HttpLimits::from_config(&s.http);
        tokio::spawn(crate::http::serve(listener, state, http_limits, stopped));
        let nats = crate::nats::NatsBridge::start(s, &core, quic_addr, &fingerprint).await?;
        info!(%quic_addr, %http_addr, %fingerprint, "daemon listening");
        Ok(Self {
            core,
            quic_addr,
            http_addr,
            fingerprint,
            endpoint,
            stop,
            nats,
        })
    }

    /// Stops accepting connections, drains the pipeline and stops the HTTP server.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"daemon shutting down");
        let _ = self.stop.send(true);
        let core = self.core.clone();
        let _ = tokio::task::spawn_blocking(move || core.shutdown()).await;
        if let Some(nats) = self.nats {
            nats.shutdown().await;
        }
        self.endpoint.wait_idle().await;
    }
}
