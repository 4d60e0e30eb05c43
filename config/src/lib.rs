//! Typed settings for the referee daemon and tools.
//!
//! Layering, lowest to highest priority: built-in defaults, a TOML file (see
//! `config/referee.toml`, which documents every key), `REFEREE_*` environment variables, and
//! CLI overrides given as dotted keys (`server.port=5000`) through [`Settings::set`].
//!
//! Every key goes through the same validation, whatever its source, so an invalid value always
//! produces a [`ConfigError::Invalid`] naming the key, the value and what is allowed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Errors while loading or overriding settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not fit its key.
    #[error("invalid value {value:?} for `{key}` (from {origin}): allowed: {allowed}")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
        origin: String,
    },
    /// A key that does not exist.
    #[error("unknown setting `{key}` (from {origin}); known keys: {known}")]
    UnknownKey {
        key: String,
        origin: String,
        known: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file is not valid TOML: {0}")]
    Parse(String),
    /// Values that are fine on their own but not together.
    #[error("inconsistent settings: {0}")]
    Conflict(String),
}

/// Network addresses and directories of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Address the QUIC listener binds to (HTTP binds `http.host`).
    pub host: IpAddr,
    /// UDP port of the QUIC endpoint.
    pub port: u16,
    /// TCP port of the HTTP endpoint (status, metrics, feed page); `None` = `port + 1`.
    pub http_port: Option<u16>,
    /// Where per-phrase artifacts are written.
    pub output_dir: PathBuf,
    /// Where the persistent state lives (the generated TLS identity).
    pub data_dir: PathBuf,
}

impl ServerSettings {
    /// The HTTP port actually used: `http_port`, or `port + 1`.
    pub fn effective_http_port(&self) -> u16 {
        match (self.http_port, self.port) {
            (Some(p), _) => p,
            // Any free QUIC port: any free HTTP port too.
            (None, 0) => 0,
            (None, p) => p.saturating_add(1),
        }
    }
}

/// TLS identity files; both empty = a self-signed identity persisted in `server.data_dir`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsSettings {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Tokens per role. With no tokens at all, the daemon only accepts a loopback bind.
#[derive(Clone, PartialEq, Default)]
pub struct AuthSettings {
    pub capture_tokens: Vec<String>,
    pub feed_tokens: Vec<String>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Settings get logged; tokens must not be.
        f.debug_struct("AuthSettings")
            .field(
                "capture_tokens",
                &format_args!("<{} redacted>", self.capture_tokens.len()),
            )
            .field(
                "feed_tokens",
                &format_args!("<{} redacted>", self.feed_tokens.len()),
            )
            .finish()
    }
}

/// Resource limits of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_signal_bytes: usize,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub idle_timeout_s: u64,
    pub handshake_timeout_s: u64,
    pub max_frames_per_session: u64,
    pub max_streaming_sessions: usize,
    pub max_streaming_memory_mb: u64,
    pub streaming_session_timeout_s: u64,
    /// QUIC connections held at once (handshakes included); further ones are closed.
    pub max_connections: usize,
    /// QUIC connections one source IP address may hold at once.
    pub max_connections_per_ip: usize,
    /// Seconds a control message may take to arrive once its length prefix began.
    pub message_read_timeout_s: u64,
    /// Seconds a frame stream may take from being accepted to its end.
    pub frame_read_timeout_s: u64,
    /// New phrases' signals a session may send at once...
    pub signal_burst: u32,
    /// ...and per minute after that.
    pub signals_per_minute: u32,
}

/// Pose stage settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseSettings {
    /// Path to the weights; `None` = the model cache's `yolo11n-pose.safetensors`.
    pub model: Option<PathBuf>,
    /// Network input width and height (multiples of 32).
    pub width: u32,
    pub height: u32,
    /// Vertical band of the frame (fractions of its height, top to bottom) kept for pose.
    pub piste_band: (f32, f32),
    /// Threads per pose worker; 0 = the cores divided among the workers.
    pub threads: usize,
    /// Pose workers, each inferring whole frames in parallel with the others; 0 = one per core.
    pub workers: usize,
    /// Instruction set of the fast pose path: `auto` (the best the CPU has) or one of
    /// [`POSE_ISAS`] forced (an error at start-up where the CPU lacks it).
    pub isa: String,
}

/// The values of `pose.isa` besides `auto`, best first.
pub const POSE_ISAS: [&str; 4] = ["amx", "avx512", "avx2", "portable"];

/// Fisheye correction defaults (an agent's hint may be overridden by these).
#[derive(Debug, Clone, PartialEq)]
pub struct FisheyeSettings {
    pub enabled: bool,
    pub strength: f32,
    pub balance: f32,
}

/// Pipeline queueing.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSettings {
    /// Capacity of each bounded channel between stages.
    pub queue_depth: usize,
    /// How many frames the per-session reorder buffer holds before giving up on a gap.
    pub reorder_window: usize,
    /// After a signal, how long (ms) without a new frame the engine waits for the phrase's
    /// frames before deciding with what it has.
    pub signal_wait_ms: u64,
}

/// The right-of-way decision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RefereeSettings {
    /// Model file written by `referee train`; `None` = the shipped default.
    pub model: Option<PathBuf>,
}

/// Tournament mode: live events, the verdict log and the piste registry on NATS. Off while
/// `url` is `None`; nothing else changes then.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated (`nats://host:4222`, `tls://...`); `None` = off.
    pub url: Option<String>,
    /// File holding the NATS token.
    pub token_file: Option<PathBuf>,
    /// NATS credentials file (`.creds`: JWT + NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// CA file (PEM) that the NATS server's certificate must chain to; also requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// First token(s) of every subject.
    pub subject_prefix: String,
    /// This daemon's id in the registry; empty = derived from the QUIC port and fingerprint.
    pub daemon_id: String,
    /// QUIC address agents should dial (HOST:PORT); empty = the bound address.
    pub advertise: Option<String>,
    /// Pistes this daemon serves, registered even before an agent connects.
    pub pistes: Vec<String>,
    /// Verdicts kept on disk while NATS is unreachable.
    pub outbox_max: usize,
}

/// The HTTP side (`/healthz`, `/status`, `/metrics`, the feed page and its events): where it
/// listens and how long a client may hold a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// Address the HTTP listener binds to (loopback unless set otherwise).
    pub host: IpAddr,
    /// Seconds a request may take to arrive (head and body), counted from its first byte.
    pub read_timeout_s: u64,
    /// Seconds a keep-alive connection may stay open between requests.
    pub idle_timeout_s: u64,
    /// HTTP connections open at once; the next is answered 503 and closed.
    pub max_connections: usize,
}

/// The per-phrase artifacts writer: a fixed pool of threads and a bounded queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactSettings {
    /// Writer threads.
    pub workers: usize,
    /// Phrases waiting for a writer; when full, a phrase's artifacts are refused (counted).
    pub queue: usize,
}

/// The daemon's history of recent phrases: the feed page's list, and the agreement of our
/// verdicts with the referee's calls.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySettings {
    /// Phrases kept (in memory and in `<data_dir>/phrase-history.jsonl`); the oldest go first.
    pub max_phrases: usize,
}

/// Phrase recordings (`<output_dir>/recordings/<session>/phrase-NNN.tar`): frames as
/// received, the signal log, settings, model and verdict of every phrase, for replay.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingSettings {
    /// Record every phrase.
    pub enabled: bool,
    /// Total size of the recordings in MiB before the oldest are deleted; 0 = no limit.
    pub max_total_mb: u64,
    /// Days a recording is kept; 0 = no limit.
    pub max_age_days: u64,
    /// Frames waiting for the recorder; a frame finding it full is lost to the recording
    /// (which is then marked incomplete), never to the engine.
    pub queue_frames: usize,
}

/// All settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub server: ServerSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub limits: Limits,
    pub pose: PoseSettings,
    pub fisheye: FisheyeSettings,
    pub pipeline: PipelineSettings,
    pub referee: RefereeSettings,
    pub nats: NatsSettings,
    pub http: HttpSettings,
    pub artifacts: ArtifactSettings,
    pub history: HistorySettings,
    pub recording: RecordingSettings,
    /// tracing filter: error, warn, info, debug, trace, or a directive such as `referee=debug`.
    pub log_level: String,
}

impl Default for Settings {
    /// The built-in defaults: each key's [`KeyInfo::default`] applied through its own parser, so
    /// a default is written once, in [`KEYS`], and is always a value the key accepts.
    fn default() -> Self {
        let mut s = Settings::unset();
        s.apply_defaults();
        s
    }
}

/// One setting, declared once: its dotted key, environment variable, default, allowed values
/// and the parser that sets its typed field. [`KEYS`] lists them all; `Settings::default()`,
/// the TOML file, the environment and [`Settings::set`] all go through this table.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo {
    /// Dotted key, as in the TOML file and for [`Settings::set`].
    pub key: &'static str,
    /// Environment variable that overrides it.
    pub env: &'static str,
    /// The built-in default, as text accepted by [`Settings::set`] (`""` = empty/none).
    pub default: &'static str,
    /// Human description of the allowed values.
    pub allowed: &'static str,
    /// Parses a value and stores it in the key's field; `Err` = not an allowed value.
    set: Setter,
}

/// Sets one typed field from a raw value, or refuses it (the caller names key, value and origin).
type Setter = fn(&mut Settings, &Raw) -> Result<(), Bad>;

/// A value refused by a key's parser; [`Settings::set_raw`] turns it into
/// [`ConfigError::Invalid`] with the key's `allowed` text.
#[derive(Debug)]
struct Bad;

const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

/// An integer key `section.field`: its range is written once, for both the parser and the
/// `allowed` text (`"an integer LO-HI"`, then the optional note).
macro_rules! int_key {
    ($sec:ident . $field:ident : $t:ty, $env:literal, default $def:literal,
     $lo:literal ..= $hi:literal $(, $note:literal)?) => {
        KeyInfo {
            key: concat!(stringify!($sec), ".", stringify!($field)),
            env: $env,
            default: stringify!($def),
            allowed: concat!("an integer ", $lo, "-", $hi $(, " ", $note)?),
            set: |s, v| {
                s.$sec.$field = int::<$t>(v, $lo, $hi)?;
                Ok(())
            },
        }
    };
}

const TOKENS_ALLOWED: &str =
    "a list of tokens (comma-separated in env/CLI), each non-empty without whitespace or commas";

/// Every setting, in file order.
pub const KEYS: &[KeyInfo] = &[
    KeyInfo {
        key: "log_level",
        env: "REFEREE_LOG_LEVEL",
        default: "info",
        allowed: "error, warn, info, debug, trace, off, or a tracing directive like `info,referee_engine=debug`",
        set: |s, v| {
            s.log_level = log_level(v.text()?)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "server.host",
        env: "REFEREE_HOST",
        default: "127.0.0.1",
        allowed: "an IPv4 or IPv6 address, or `localhost`",
        set: |s, v| {
            s.server.host = host(v.text()?)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "server.port",
        env: "REFEREE_PORT",
        default: "4433",
        allowed: "a port number 1-65535, or 0 for any free port",
        set: |s, v| {
            s.server.port = int(v, 0, u16::MAX)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "server.http_port",
        env: "REFEREE_HTTP_PORT",
        default: "",
        allowed: "a port number 1-65535, 0 for any free port, or empty for port + 1",
        set: |s, v| {
            s.server.http_port = match v.text()? {
                "" => None,
                _ => Some(int(v, 0, u16::MAX)?),
            };
            Ok(())
        },
    },
    KeyInfo {
        key: "server.output_dir",
        env: "REFEREE_OUTPUT_DIR",
        default: "./referee-output",
        allowed: "a non-empty directory path",
        set: |s, v| {
            s.server.output_dir = optional_path(v)?.ok_or(Bad)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "server.data_dir",
        env: "REFEREE_DATA_DIR",
        default: "./referee-data",
        allowed: "a non-empty directory path",
        set: |s, v| {
            s.server.data_dir = optional_path(v)?.ok_or(Bad)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "tls.cert",
        env: "REFEREE_TLS_CERT",
        default: "",
        allowed: "a PEM certificate chain file path, or empty",
        set: |s, v| {
            s.tls.cert = optional_path(v)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "tls.key",
        env: "REFEREE_TLS_KEY",
        default: "",
        allowed: "a PEM private key file path, or empty",
        set: |s, v| {
            s.tls.key = optional_path(v)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "auth.capture_tokens",
        env: "REFEREE_CAPTURE_TOKENS",
        default: "",
        allowed: TOKENS_ALLOWED,
        set: |s, v| {
            s.auth.capture_tokens = tokens(v)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "auth.feed_tokens",
        env: "REFEREE_FEED_TOKENS",
        default: "",
        allowed: TOKENS_ALLOWED,
        set: |s, v| {
            s.auth.feed_tokens = tokens(v)?;
            Ok(())
        },
    },
    int_key!(limits.max_frame_bytes: usize, "REFEREE_MAX_FRAME_BYTES",
        default 8388608, 1024..=268435456, "(bytes)"),
    int_key!(limits.max_signal_bytes: usize, "REFEREE_MAX_SIGNAL_BYTES",
        default 262144, 1024..=67108864, "(bytes)"),
    int_key!(limits.max_message_bytes: usize, "REFEREE_MAX_MESSAGE_BYTES",
        default 1048576, 1024..=268435456, "(bytes)"),
    int_key!(limits.max_concurrent_streams: u32, "REFEREE_MAX_CONCURRENT_STREAMS",
        default 256, 1..=100000),
    int_key!(limits.idle_timeout_s: u64, "REFEREE_IDLE_TIMEOUT",
        default 30, 1..=86400, "(seconds)"),
    int_key!(limits.handshake_timeout_s: u64, "REFEREE_HANDSHAKE_TIMEOUT",
        default 10, 1..=600, "(seconds)"),
    int_key!(limits.max_frames_per_session: u64, "REFEREE_MAX_FRAMES_PER_SESSION",
        default 100000, 1..=1000000000),
    int_key!(limits.max_streaming_sessions: usize, "REFEREE_MAX_STREAMING_SESSIONS",
        default 4, 1..=10000),
    int_key!(limits.max_streaming_memory_mb: u64, "REFEREE_MAX_STREAMING_MEMORY_MB",
        default 1024, 16..=1048576, "(MiB)"),
    int_key!(limits.streaming_session_timeout_s: u64, "REFEREE_STREAMING_SESSION_TIMEOUT",
        default 60, 1..=86400, "(seconds)"),
    int_key!(limits.max_connections: usize, "REFEREE_MAX_CONNECTIONS",
        default 256, 1..=100000, "(QUIC connections at once)"),
    int_key!(limits.max_connections_per_ip: usize, "REFEREE_MAX_CONNECTIONS_PER_IP",
        default 32, 1..=100000, "(QUIC connections from one IP address)"),
    int_key!(limits.message_read_timeout_s: u64, "REFEREE_MESSAGE_READ_TIMEOUT",
        default 5, 1..=600, "(seconds for a control message once it began)"),
    int_key!(limits.frame_read_timeout_s: u64, "REFEREE_FRAME_READ_TIMEOUT",
        default 10, 1..=600, "(seconds for a frame stream)"),
    int_key!(limits.signal_burst: u32, "REFEREE_SIGNAL_BURST",
        default 4, 1..=1000, "(new phrases' signals a session may send at once)"),
    int_key!(limits.signals_per_minute: u32, "REFEREE_SIGNALS_PER_MINUTE",
        default 30, 1..=60000, "(new phrases' signals per session after the burst)"),
    KeyInfo {
        key: "pose.model",
        env: "REFEREE_YOLO_MODEL",
        default: "",
        allowed: "a weights file path, or empty for the model cache's yolo11n-pose.safetensors",
        set: |s, v| {
            s.pose.model = optional_path(v)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "pose.size",
        env: "REFEREE_POSE_SIZE",
        default: "640x384",
        allowed: "WIDTHxHEIGHT, each a multiple of 32 in 32-4096, e.g. 640x384",
        set: |s, v| {
            (s.pose.width, s.pose.height) = parse_pose_size(v.text()?).map_err(|_| Bad)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "pose.piste_band",
        env: "REFEREE_PISTE_BAND",
        default: "0.0-1.0",
        allowed: "TOP-BOTTOM fractions of the frame height with 0 <= TOP < BOTTOM <= 1, e.g. 0.25-0.9",
        set: |s, v| {
            s.pose.piste_band = band(v.text()?)?;
            Ok(())
        },
    },
    int_key!(pose.threads: usize, "REFEREE_POSE_THREADS",
        default 0, 0..=1024, "(0 = the cores divided among the workers)"),
    int_key!(pose.workers: usize, "REFEREE_POSE_WORKERS",
        default 0, 0..=64, "(0 = one per core)"),
    KeyInfo {
        key: "pose.isa",
        env: "REFEREE_POSE_ISA",
        default: "auto",
        allowed: "auto, amx, avx512, avx2 or portable (auto = the best this CPU has)",
        set: |s, v| {
            let isa = v.text()?.trim().to_ascii_lowercase();
            if isa != "auto" && !POSE_ISAS.contains(&isa.as_str()) {
                return Err(Bad);
            }
            s.pose.isa = isa;
            Ok(())
        },
    },
    KeyInfo {
        key: "fisheye.enabled",
        env: "REFEREE_FISHEYE_ENABLED",
        default: "false",
        allowed: "true or false (also 1/0, yes/no, on/off)",
        set: |s, v| {
            s.fisheye.enabled = boolean(v.text()?)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "fisheye.strength",
        env: "REFEREE_FISHEYE_STRENGTH",
        default: "-0.3",
        allowed: "a number in -1.0..=1.0 (negative = barrel correction)",
        set: |s, v| {
            s.fisheye.strength = float_in(v.text()?, -1.0, 1.0)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "fisheye.balance",
        env: "REFEREE_FISHEYE_BALANCE",
        default: "0.0",
        allowed: "a number in 0.0..=1.0 (0 = crop to valid pixels, 1 = keep the whole frame)",
        set: |s, v| {
            s.fisheye.balance = float_in(v.text()?, 0.0, 1.0)?;
            Ok(())
        },
    },
    int_key!(pipeline.queue_depth: usize, "REFEREE_QUEUE_DEPTH",
        default 8, 1..=4096),
    int_key!(pipeline.reorder_window: usize, "REFEREE_REORDER_WINDOW",
        default 32, 1..=100000),
    int_key!(pipeline.signal_wait_ms: u64, "REFEREE_SIGNAL_WAIT_MS",
        default 3000, 1..=600000),
    KeyInfo {
        key: "referee.model",
        env: "REFEREE_MODEL",
        default: "",
        allowed: "a model file path written by `referee train`, or empty for the shipped default",
        set: |s, v| {
            s.referee.model = optional_path(v)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "nats.url",
        env: "REFEREE_NATS_URL",
        default: "",
        allowed: "a NATS URL such as nats://127.0.0.1:4222 (several comma-separated), or empty for no NATS",
        set: |s, v| {
            let t = v.text()?;
            if t.chars().any(char::is_whitespace) {
                return Err(Bad);
            }
            s.nats.url = (!t.is_empty()).then(|| t.to_string());
            Ok(())
        },
    },
    KeyInfo {
        key: "nats.token_file",
        env: "REFEREE_NATS_TOKEN_FILE",
        default: "",
        allowed: "a file holding the NATS token, or empty",
        set: |s, v| {
            s.nats.token_file = optional_path(v)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "nats.credentials_file",
        env: "REFEREE_NATS_CREDENTIALS_FILE",
        default: "",
        allowed: "a NATS .creds file (JWT and NKey seed), or empty",
        set: |s, v| {
            s.nats.credentials_file = optional_path(v)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "nats.tls_ca",
        env: "REFEREE_NATS_TLS_CA",
        default: "",
        allowed: "a PEM CA file for the NATS server's certificate (TLS is then required), or empty",
        set: |s, v| {
            s.nats.tls_ca = optional_path(v)?;
            Ok(())
        },
    },
    KeyInfo {
        key: "nats.subject_prefix",
        env: "REFEREE_NATS_SUBJECT_PREFIX",
        default: "referee",
        allowed: "dot-separated tokens of letters, digits, `-` and `_`, e.g. referee or paris2026.referee",
        set: |s, v| {
            let t = v.text()?;
            let token_ok = |tok: &str| {
                !tok.is_empty()
                    && tok
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if !t.split('.').all(token_ok) {
                return Err(Bad);
            }
            s.nats.subject_prefix = t.to_string();
            Ok(())
        },
    },
    KeyInfo {
        key: "nats.daemon_id",
        env: "REFEREE_NATS_DAEMON_ID",
        default: "",
        allowed: "letters, digits, `-` and `_` (at most 64), or empty to derive one from the port and fingerprint",
        set: |s, v| {
            let t = v.text()?;
            if t.len() > 64
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Bad);
            }
            s.nats.daemon_id = t.to_string();
            Ok(())
        },
    },
    KeyInfo {
        key: "nats.advertise",
        env: "REFEREE_NATS_ADVERTISE",
        default: "",
        allowed: "the HOST:PORT agents should dial, or empty for the bound QUIC address",
        set: |s, v| {
            let t = v.text()?;
            if !t.is_empty() && (t.chars().any(char::is_whitespace) || !t.contains(':')) {
                return Err(Bad);
            }
            s.nats.advertise = (!t.is_empty()).then(|| t.to_string());
            Ok(())
        },
    },
    KeyInfo {
        key: "nats.pistes",
        env: "REFEREE_NATS_PISTES",
        default: "",
        allowed: TOKENS_ALLOWED,
        set: |s, v| {
            s.nats.pistes = tokens(v)?;
            Ok(())
        },
    },
    int_key!(nats.outbox_max: usize, "REFEREE_NATS_OUTBOX_MAX",
        default 100000, 1..=10000000, "(verdicts kept on disk while NATS is unreachable)"),
    KeyInfo {
        key: "http.host",
        env: "REFEREE_HTTP_HOST",
        default: "127.0.0.1",
        allowed: "an IPv4 or IPv6 address, or `localhost`",
        set: |s, v| {
            s.http.host = host(v.text()?)?;
            Ok(())
        },
    },
    int_key!(http.read_timeout_s: u64, "REFEREE_HTTP_READ_TIMEOUT",
        default 10, 1..=600, "(seconds from a request's first byte to its last)"),
    int_key!(http.idle_timeout_s: u64, "REFEREE_HTTP_IDLE_TIMEOUT",
        default 60, 1..=86400, "(seconds a connection may wait between requests)"),
    int_key!(http.max_connections: usize, "REFEREE_HTTP_MAX_CONNECTIONS",
        default 512, 1..=100000),
    int_key!(artifacts.workers: usize, "REFEREE_ARTIFACT_WORKERS",
        default 2, 1..=64, "(writer threads)"),
    int_key!(artifacts.queue: usize, "REFEREE_ARTIFACT_QUEUE",
        default 16, 1..=10000, "(phrases waiting for a writer)"),
    int_key!(history.max_phrases: usize, "REFEREE_HISTORY_MAX_PHRASES",
        default 1000, 1..=100000, "(recent phrases kept for the feed page and agreement)"),
    KeyInfo {
        key: "recording.enabled",
        env: "REFEREE_RECORDING",
        default: "true",
        allowed: "true or false (also 1/0, yes/no, on/off)",
        set: |s, v| {
            s.recording.enabled = boolean(v.text()?)?;
            Ok(())
        },
    },
    int_key!(recording.max_total_mb: u64, "REFEREE_RECORDING_MAX_TOTAL_MB",
        default 20480, 0..=1073741824, "(MiB of recordings kept, oldest deleted first; 0 = no limit)"),
    int_key!(recording.max_age_days: u64, "REFEREE_RECORDING_MAX_AGE_DAYS",
        default 30, 0..=36500, "(days a recording is kept; 0 = no limit)"),
    int_key!(recording.queue_frames: usize, "REFEREE_RECORDING_QUEUE_FRAMES",
        default 512, 1..=1000000, "(frames waiting for the recorder before one is lost to the recording)"),
];

/// A value before validation: a scalar as text, or a list of strings (TOML arrays).
enum Raw {
    Text(String),
    List(Vec<String>),
}

impl Raw {
    fn display(&self) -> String {
        match self {
            Raw::Text(s) => s.clone(),
            Raw::List(v) => format!("[{}]", v.join(", ")),
        }
    }

    /// The trimmed text of a scalar; lists are only valid for the token keys.
    fn text(&self) -> Result<&str, Bad> {
        match self {
            Raw::Text(t) => Ok(t.trim()),
            Raw::List(_) => Err(Bad),
        }
    }
}

/// An integer in `lo..=hi`; `_` separators are allowed (`1_000_000`).
fn int<T: std::str::FromStr + PartialOrd>(v: &Raw, lo: T, hi: T) -> Result<T, Bad> {
    let n: T = v.text()?.replace('_', "").parse().map_err(|_| Bad)?;
    if lo <= n && n <= hi {
        Ok(n)
    } else {
        Err(Bad)
    }
}

/// A path, or `None` for empty text.
fn optional_path(v: &Raw) -> Result<Option<PathBuf>, Bad> {
    let t = v.text()?;
    Ok((!t.is_empty()).then(|| PathBuf::from(t)))
}

fn float_in(t: &str, lo: f32, hi: f32) -> Result<f32, Bad> {
    let v: f32 = t.parse().map_err(|_| Bad)?;
    if v.is_finite() && v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(Bad)
    }
}

fn log_level(t: &str) -> Result<String, Bad> {
    if t.is_empty() || t.chars().any(char::is_whitespace) {
        return Err(Bad);
    }
    // Plain words must be a known level; directives (with = , or ::) are passed on.
    let plain = !t.contains(['=', ',', ':']);
    if plain && !LEVELS.contains(&t.to_ascii_lowercase().as_str()) {
        return Err(Bad);
    }
    Ok(t.to_string())
}

fn host(t: &str) -> Result<IpAddr, Bad> {
    if t.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    t.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| Bad)
}

/// Tokens from a TOML array, or comma-separated text (empty items dropped).
fn tokens(v: &Raw) -> Result<Vec<String>, Bad> {
    let list: Vec<String> = match v {
        Raw::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Raw::List(v) => v.clone(),
    };
    if list
        .iter()
        .any(|t| t.is_empty() || t.contains(',') || t.chars().any(char::is_whitespace))
    {
        return Err(Bad);
    }
    Ok(list)
}

fn boolean(t: &str) -> Result<bool, Bad> {
    match t.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Bad),
    }
}

/// `TOP-BOTTOM` fractions of the frame height.
fn band(t: &str) -> Result<(f32, f32), Bad> {
    // Split on the '-' between the two numbers (neither may be negative).
    let (a, b) = t.split_once('-').ok_or(Bad)?;
    let a: f32 = a.trim().parse().map_err(|_| Bad)?;
    let b: f32 = b.trim().parse().map_err(|_| Bad)?;
    if a.is_finite() && b.is_finite() && 0.0 <= a && a < b && b <= 1.0 {
        Ok((a, b))
    } else {
        Err(Bad)
    }
}

fn known_keys() -> String {
    KEYS.iter().map(|k| k.key).collect::<Vec<_>>().join(", ")
}

/// Looks up the description of a dotted key.
pub fn key_info(key: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.key == key)
}

impl Settings {
    /// Loads defaults, then `file` (if given), then the process's `REFEREE_*` environment.
    ///
    /// Call [`Settings::set`] for CLI overrides afterwards, then [`Settings::validate`].
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match file {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
            ),
            None => None,
        };
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("REFEREE_"))
            .collect();
        Self::from_sources(text.as_deref(), &env)
    }

    /// Builds settings from TOML text and environment pairs (testable form of [`Settings::load`]).
    ///
    /// Unknown keys in the file are errors; environment variables that are not settings
    /// (e.g. `REFEREE_SHARED_DIR`) are ignored.
    pub fn from_sources(
        file_text: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut s = Settings::default();
        if let Some(text) = file_text {
            s.apply_toml(text)?;
        }
        for info in KEYS {
            if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == info.env) {
                s.set_raw(
                    info.key,
                    Raw::Text(v.clone()),
                    &format!("environment variable {}", info.env),
                )?;
            }
        }
        s.validate()?;
        Ok(s)
    }

    /// Sets one dotted key from text (CLI overrides, e.g. `set("server.port", "5000")`).
    /// List keys take comma-separated values. Call [`Settings::validate`] after the last override.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        self.set_raw(key, Raw::Text(value.to_string()), "command line")
    }

    /// Applies a `KEY=VALUE` override string (as given to a `--set` CLI flag).
    pub fn set_pair(&mut self, pair: &str) -> Result<(), ConfigError> {
        match pair.split_once('=') {
            Some((k, v)) => self.set(k.trim(), v.trim()),
            None => Err(ConfigError::Invalid {
                key: pair.to_string(),
                value: String::new(),
                allowed: "an override of the form KEY=VALUE, e.g. server.port=5000".into(),
                origin: "command line".into(),
            }),
        }
    }

    /// Checks rules that involve several keys (TLS cert and key together, distinct ports).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(ConfigError::Conflict(
                    "tls.cert is set but tls.key is not: give both, or neither to use a self-signed identity".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::Conflict(
                    "tls.key is set but tls.cert is not: give both, or neither to use a self-signed identity".into(),
                ))
            }
            _ => {}
        }
        if self.server.http_port.is_none() && self.server.port == u16::MAX {
            return Err(ConfigError::Conflict(
                "server.port is 65535 so the default HTTP port (port + 1) does not exist: set server.http_port".into(),
            ));
        }
        if self.server.port != 0 && self.server.effective_http_port() == self.server.port {
            // QUIC is UDP and HTTP is TCP, so the same number would work, but it is almost
            // always a mistake in a config file.
            return Err(ConfigError::Conflict(format!(
                "server.http_port equals server.port ({}): choose another HTTP port",
                self.server.port
            )));
        }
        Ok(())
    }

    fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        for (name, value) in table {
            match value {
                toml::Value::Table(section) => {
                    for (sub, v) in section {
                        let key = format!("{name}.{sub}");
                        self.apply_toml_value(&key, v)?;
                    }
                }
                v => self.apply_toml_value(&name, v)?,
            }
        }
        Ok(())
    }

    fn apply_toml_value(&mut self, key: &str, v: toml::Value) -> Result<(), ConfigError> {
        const ORIGIN: &str = "config file";
        if key_info(key).is_none() {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                origin: ORIGIN.into(),
                known: known_keys(),
            });
        }
        let raw = match v {
            toml::Value::String(s) => Raw::Text(s),
            toml::Value::Integer(i) => Raw::Text(i.to_string()),
            toml::Value::Float(f) => Raw::Text(f.to_string()),
            toml::Value::Boolean(b) => Raw::Text(b.to_string()),
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s),
                        other => {
                            return Err(ConfigError::Invalid {
                                key: key.to_string(),
                                value: other.to_string(),
                                allowed: "a list of strings".into(),
                                origin: ORIGIN.into(),
                            })
                        }
                    }
                }
                Raw::List(out)
            }
            other => Raw::Text(other.to_string()),
        };
        self.set_raw(key, raw, ORIGIN)
    }

    fn set_raw(&mut self, key: &str, raw: Raw, origin: &str) -> Result<(), ConfigError> {
        let Some(info) = key_info(key) else {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                origin: origin.to_string(),
                known: known_keys(),
            });
        };
        (info.set)(self, &raw).map_err(|Bad| ConfigError::Invalid {
            key: key.to_string(),
            value: raw.display(),
            allowed: info.allowed.to_string(),
            origin: origin.to_string(),
        })
    }

    /// Placeholder values, every one of them overwritten by [`Settings::apply_defaults`] (a
    /// unit test checks that no field is left out of [`KEYS`]).
    fn unset() -> Self {
        Settings {
            server: ServerSettings {
                host: IpAddr::from([0, 0, 0, 0]),
                port: 0,
                http_port: None,
                output_dir: PathBuf::new(),
                data_dir: PathBuf::new(),
            },
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            limits: Limits {
                max_frame_bytes: 0,
                max_signal_bytes: 0,
                max_message_bytes: 0,
                max_concurrent_streams: 0,
                idle_timeout_s: 0,
                handshake_timeout_s: 0,
                max_frames_per_session: 0,
                max_streaming_sessions: 0,
                max_streaming_memory_mb: 0,
                streaming_session_timeout_s: 0,
                max_connections: 0,
                max_connections_per_ip: 0,
                message_read_timeout_s: 0,
                frame_read_timeout_s: 0,
                signal_burst: 0,
                signals_per_minute: 0,
            },
            pose: PoseSettings {
                model: None,
                width: 0,
                height: 0,
                piste_band: (0.0, 0.0),
                threads: 0,
                workers: 0,
                isa: String::new(),
            },
            fisheye: FisheyeSettings {
                enabled: false,
                strength: 0.0,
                balance: 0.0,
            },
            pipeline: PipelineSettings {
                queue_depth: 0,
                reorder_window: 0,
                signal_wait_ms: 0,
            },
            referee: RefereeSettings::default(),
            nats: NatsSettings::default(),
            http: HttpSettings {
                host: IpAddr::from([0, 0, 0, 0]),
                read_timeout_s: 0,
                idle_timeout_s: 0,
                max_connections: 0,
            },
            artifacts: ArtifactSettings {
                workers: 0,
                queue: 0,
            },
            history: HistorySettings { max_phrases: 0 },
            recording: RecordingSettings {
                enabled: false,
                max_total_mb: 0,
                max_age_days: 0,
                queue_frames: 0,
            },
            log_level: String::new(),
        }
    }

    /// Applies every key's built-in default through its own parser.
    fn apply_defaults(&mut self) {
        for info in KEYS {
            if (info.set)(self, &Raw::Text(info.default.to_string())).is_err() {
                panic!(
                    "built-in default {:?} of `{}` is refused by its own parser",
                    info.default, info.key
                );
            }
        }
    }
}

/// Parses `WIDTHxHEIGHT` (`x` or `X`; spaces around either number are allowed) into two
/// positive integers. The one parser of frame and network sizes for the config, the CLIs and
/// the capture agent.
pub fn parse_wxh(s: &str) -> Result<(u32, u32), String> {
    let expected = "expected WIDTHxHEIGHT, e.g. 640x384";
    let Some((w, h)) = s.split_once(['x', 'X']) else {
        return Err(format!("{s:?}: {expected}"));
    };
    let number = |part: &str, what: &str| -> Result<u32, String> {
        let part = part.trim();
        let n = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u32>().ok())
            .flatten()
            .filter(|&n| n > 0);
        n.ok_or_else(|| {
            format!("{s:?}: the {what} {part:?} is not a positive integer ({expected})")
        })
    };
    Ok((number(w, "width")?, number(h, "height")?))
}

/// Largest pose network input side accepted (`pose.size`, `referee pose --size`).
pub const POSE_SIZE_MAX: u32 = 4096;

/// Parses a pose network input size: [`parse_wxh`], each side a multiple of 32 in
/// 32..=[`POSE_SIZE_MAX`] (the network downsamples by 32).
pub fn parse_pose_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = parse_wxh(s)?;
    let ok = |v: u32| v <= POSE_SIZE_MAX && v.is_multiple_of(32);
    if ok(w) && ok(h) {
        Ok((w, h))
    } else {
        Err(format!(
            "{s:?}: width and height must be multiples of 32 in 32-{POSE_SIZE_MAX}, e.g. 640x384"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_every_field() {
        // Start from values that differ from both the placeholders and the defaults in every
        // field: if a field had no key in KEYS, applying the defaults would leave it different.
        let mut s = Settings {
            server: ServerSettings {
                host: IpAddr::from([10, 1, 2, 3]),
                port: 1,
                http_port: Some(2),
                output_dir: PathBuf::from("x"),
                data_dir: PathBuf::from("y"),
            },
            tls: TlsSettings {
                cert: Some(PathBuf::from("c")),
                key: Some(PathBuf::from("k")),
            },
            auth: AuthSettings {
                capture_tokens: vec!["a".into()],
                feed_tokens: vec!["b".into()],
            },
            limits: Limits {
                max_frame_bytes: 1,
                max_signal_bytes: 1,
                max_message_bytes: 1,
                max_concurrent_streams: 1,
                idle_timeout_s: 1,
                handshake_timeout_s: 1,
                max_frames_per_session: 1,
                max_streaming_sessions: 1,
                max_streaming_memory_mb: 1,
                streaming_session_timeout_s: 1,
                max_connections: 1,
                max_connections_per_ip: 1,
                message_read_timeout_s: 1,
                frame_read_timeout_s: 1,
                signal_burst: 1,
                signals_per_minute: 1,
            },
            pose: PoseSettings {
                model: Some(PathBuf::from("m")),
                width: 1,
                height: 1,
                piste_band: (0.5, 0.5),
                threads: 1,
                workers: 1,
                isa: "x".into(),
            },
            fisheye: FisheyeSettings {
                enabled: true,
                strength: 0.5,
                balance: 0.5,
            },
            pipeline: PipelineSettings {
                queue_depth: 1,
                reorder_window: 1,
                signal_wait_ms: 1,
            },
            nats: NatsSettings {
                url: Some("nats://x:1".into()),
                token_file: Some(PathBuf::from("t")),
                credentials_file: Some(PathBuf::from("c")),
                tls_ca: Some(PathBuf::from("a")),
                subject_prefix: "p".into(),
                daemon_id: "d".into(),
                advertise: Some("h:1".into()),
                pistes: vec!["1".into()],
                outbox_max: 1,
            },
            referee: RefereeSettings {
                model: Some(PathBuf::from("m")),
            },
            http: HttpSettings {
                host: IpAddr::from([10, 1, 2, 3]),
                read_timeout_s: 1,
                idle_timeout_s: 1,
                max_connections: 1,
            },
            artifacts: ArtifactSettings {
                workers: 99,
                queue: 99,
            },
            history: HistorySettings { max_phrases: 99 },
            recording: RecordingSettings {
                enabled: false,
                max_total_mb: 99,
                max_age_days: 99,
                queue_frames: 99,
            },
            log_level: "x".into(),
        };
        s.apply_defaults();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn wxh_accepts_sizes() {
        assert_eq!(parse_wxh("640x384"), Ok((640, 384)));
        assert_eq!(parse_wxh("1280X720"), Ok((1280, 720)));
        assert_eq!(parse_wxh(" 1 x 1 "), Ok((1, 1)));
        assert_eq!(parse_wxh("1920x1080"), Ok((1920, 1080)));
    }

    #[test]
    fn wxh_refuses_bad_input_with_a_clear_message() {
        for bad in [
            "",
            " ",
            "640",
            "x",
            "640x",
            "x384",
            "0x384",
            "640x0",
            "axb",
            "640xb",
            "640x384x2",
            "6 40x384",
            "640x3 84",
            "-640x384",
            "+640x384",
            "640.0x384",
            "640*384",
            "99999999999x1",
        ] {
            let err = parse_wxh(bad).expect_err(bad);
            assert!(err.contains("WIDTHxHEIGHT"), "{bad:?}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        assert!(parse_wxh("axb").unwrap_err().contains("width"));
        assert!(parse_wxh("640xb").unwrap_err().contains("height"));
    }

    #[test]
    fn pose_size_wants_multiples_of_32() {
        assert_eq!(parse_pose_size("640x384"), Ok((640, 384)));
        assert_eq!(parse_pose_size("1280X736"), Ok((1280, 736)));
        assert_eq!(parse_pose_size("32x4096"), Ok((32, 4096)));
        for bad in ["640x360", "0x32", "4128x32", "16x32", "640"] {
            assert!(parse_pose_size(bad).is_err(), "{bad}");
        }
        assert!(parse_pose_size("640x360")
            .unwrap_err()
            .contains("multiples of 32"));
    }
}
