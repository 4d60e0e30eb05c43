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
    /// Address the QUIC and HTTP listeners bind to.
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
}

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
    /// tracing filter: error, warn, info, debug, trace, or a directive such as `referee=debug`.
    pub log_level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: ServerSettings {
                host: IpAddr::from([127, 0, 0, 1]),
                port: 4433,
                http_port: None,
                output_dir: PathBuf::from("./referee-output"),
                data_dir: PathBuf::from("./referee-data"),
            },
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            limits: Limits {
                max_frame_bytes: 8 * 1024 * 1024,
                max_signal_bytes: 256 * 1024,
                max_message_bytes: 1024 * 1024,
                max_concurrent_streams: 256,
                idle_timeout_s: 30,
                handshake_timeout_s: 10,
                max_frames_per_session: 100_000,
                max_streaming_sessions: 4,
                max_streaming_memory_mb: 1024,
                streaming_session_timeout_s: 60,
            },
            pose: PoseSettings {
                model: None,
                width: 640,
                height: 384,
                piste_band: (0.0, 1.0),
                threads: 0,
                workers: 0,
            },
            fisheye: FisheyeSettings {
                enabled: false,
                strength: -0.3,
                balance: 0.0,
            },
            pipeline: PipelineSettings {
                queue_depth: 8,
                reorder_window: 32,
            },
            log_level: "info".to_string(),
        }
    }
}

/// Description of one setting: its dotted key, environment variable and allowed values.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo {
    /// Dotted key, as in the TOML file and for [`Settings::set`].
    pub key: &'static str,
    /// Environment variable that overrides it.
    pub env: &'static str,
    /// Human description of the allowed values.
    pub allowed: &'static str,
}

const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

/// Every setting, in file order.
pub const KEYS: &[KeyInfo] = &[
    KeyInfo { key: "log_level", env: "REFEREE_LOG_LEVEL", allowed: "error, warn, info, debug, trace, off, or a tracing directive like `info,referee_engine=debug`" },
    KeyInfo { key: "server.host", env: "REFEREE_HOST", allowed: "an IPv4 or IPv6 address, or `localhost`" },
    KeyInfo { key: "server.port", env: "REFEREE_PORT", allowed: "a port number 1-65535, or 0 for any free port" },
    KeyInfo { key: "server.http_port", env: "REFEREE_HTTP_PORT", allowed: "a port number 1-65535, 0 for any free port, or empty for port + 1" },
    KeyInfo { key: "server.output_dir", env: "REFEREE_OUTPUT_DIR", allowed: "a non-empty directory path" },
    KeyInfo { key: "server.data_dir", env: "REFEREE_DATA_DIR", allowed: "a non-empty directory path" },
    KeyInfo { key: "tls.cert", env: "REFEREE_TLS_CERT", allowed: "a PEM certificate chain file path, or empty" },
    KeyInfo { key: "tls.key", env: "REFEREE_TLS_KEY", allowed: "a PEM private key file path, or empty" },
    KeyInfo { key: "auth.capture_tokens", env: "REFEREE_CAPTURE_TOKENS", allowed: "a list of tokens (comma-separated in env/CLI), each non-empty without whitespace or commas" },
    KeyInfo { key: "auth.feed_tokens", env: "REFEREE_FEED_TOKENS", allowed: "a list of tokens (comma-separated in env/CLI), each non-empty without whitespace or commas" },
    KeyInfo { key: "limits.max_frame_bytes", env: "REFEREE_MAX_FRAME_BYTES", allowed: "an integer 1024-268435456 (bytes)" },
    KeyInfo { key: "limits.max_signal_bytes", env: "REFEREE_MAX_SIGNAL_BYTES", allowed: "an integer 1024-67108864 (bytes)" },
    KeyInfo { key: "limits.max_message_bytes", env: "REFEREE_MAX_MESSAGE_BYTES", allowed: "an integer 1024-268435456 (bytes)" },
    KeyInfo { key: "limits.max_concurrent_streams", env: "REFEREE_MAX_CONCURRENT_STREAMS", allowed: "an integer 1-100000" },
    KeyInfo { key: "limits.idle_timeout_s", env: "REFEREE_IDLE_TIMEOUT", allowed: "an integer 1-86400 (seconds)" },
    KeyInfo { key: "limits.handshake_timeout_s", env: "REFEREE_HANDSHAKE_TIMEOUT", allowed: "an integer 1-600 (seconds)" },
    KeyInfo { key: "limits.max_frames_per_session", env: "REFEREE_MAX_FRAMES_PER_SESSION", allowed: "an integer 1-1000000000" },
    KeyInfo { key: "limits.max_streaming_sessions", env: "REFEREE_MAX_STREAMING_SESSIONS", allowed: "an integer 1-10000" },
    KeyInfo { key: "limits.max_streaming_memory_mb", env: "REFEREE_MAX_STREAMING_MEMORY_MB", allowed: "an integer 16-1048576 (MiB)" },
    KeyInfo { key: "limits.streaming_session_timeout_s", env: "REFEREE_STREAMING_SESSION_TIMEOUT", allowed: "an integer 1-86400 (seconds)" },
    KeyInfo { key: "pose.model", env: "REFEREE_YOLO_MODEL", allowed: "a weights file path, or empty for the model cache's yolo11n-pose.safetensors" },
    KeyInfo { key: "pose.size", env: "REFEREE_POSE_SIZE", allowed: "WIDTHxHEIGHT, each a multiple of 32 in 32-4096, e.g. 640x384" },
    KeyInfo { key: "pose.piste_band", env: "REFEREE_PISTE_BAND", allowed: "TOP-BOTTOM fractions of the frame height with 0 <= TOP < BOTTOM <= 1, e.g. 0.25-0.9" },
    KeyInfo { key: "pose.threads", env: "REFEREE_POSE_THREADS", allowed: "an integer 0-1024 (0 = the cores divided among the workers)" },
    KeyInfo { key: "pose.workers", env: "REFEREE_POSE_WORKERS", allowed: "an integer 0-64 (0 = one per core)" },
    KeyInfo { key: "fisheye.enabled", env: "REFEREE_FISHEYE_ENABLED", allowed: "true or false (also 1/0, yes/no, on/off)" },
    KeyInfo { key: "fisheye.strength", env: "REFEREE_FISHEYE_STRENGTH", allowed: "a number in -1.0..=1.0 (negative = barrel correction)" },
    KeyInfo { key: "fisheye.balance", env: "REFEREE_FISHEYE_BALANCE", allowed: "a number in 0.0..=1.0 (0 = crop to valid pixels, 1 = keep the whole frame)" },
    KeyInfo { key: "pipeline.queue_depth", env: "REFEREE_QUEUE_DEPTH", allowed: "an integer 1-4096" },
    KeyInfo { key: "pipeline.reorder_window", env: "REFEREE_REORDER_WINDOW", allowed: "an integer 1-100000" },
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
        let bad = || ConfigError::Invalid {
            key: key.to_string(),
            value: raw.display(),
            allowed: info.allowed.to_string(),
            origin: origin.to_string(),
        };
        // Lists are only valid for the token keys; everything else wants text.
        let text = match &raw {
            Raw::Text(t) => Some(t.trim()),
            Raw::List(_) => None,
        };
        let text_or_bad = || text.ok_or_else(bad);
        macro_rules! int {
            ($t:ty, $lo:expr, $hi:expr) => {{
                let v: $t = text_or_bad()?.replace('_', "").parse().map_err(|_| bad())?;
                if !($lo..=$hi).contains(&v) {
                    return Err(bad());
                }
                v
            }};
        }
        match key {
            "log_level" => {
                let t = text_or_bad()?;
                if t.is_empty() || t.chars().any(char::is_whitespace) {
                    return Err(bad());
                }
                // Plain words must be a known level; directives (with = , or ::) are passed on.
                let plain = !t.contains(['=', ',', ':']);
                if plain && !LEVELS.contains(&t.to_ascii_lowercase().as_str()) {
                    return Err(bad());
                }
                self.log_level = t.to_string();
            }
            "server.host" => {
                let t = text_or_bad()?;
                self.server.host = if t.eq_ignore_ascii_case("localhost") {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    t.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse()
                        .map_err(|_| bad())?
                };
            }
            "server.port" => self.server.port = int!(u16, 0, u16::MAX),
            "server.http_port" => {
                self.server.http_port = if text_or_bad()?.is_empty() {
                    None
                } else {
                    Some(int!(u16, 0, u16::MAX))
                }
            }
            "server.output_dir" => {
                self.server.output_dir = nonempty_path(text_or_bad()?).ok_or_else(bad)?
            }
            "server.data_dir" => {
                self.server.data_dir = nonempty_path(text_or_bad()?).ok_or_else(bad)?
            }
            "tls.cert" => self.tls.cert = nonempty_path(text_or_bad()?),
            "tls.key" => self.tls.key = nonempty_path(text_or_bad()?),
            "auth.capture_tokens" | "auth.feed_tokens" => {
                let list: Vec<String> = match &raw {
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
                    return Err(bad());
                }
                if key == "auth.capture_tokens" {
                    self.auth.capture_tokens = list;
                } else {
                    self.auth.feed_tokens = list;
                }
            }
            "limits.max_frame_bytes" => self.limits.max_frame_bytes = int!(usize, 1024, 256 << 20),
            "limits.max_signal_bytes" => self.limits.max_signal_bytes = int!(usize, 1024, 64 << 20),
            "limits.max_message_bytes" => {
                self.limits.max_message_bytes = int!(usize, 1024, 256 << 20)
            }
            "limits.max_concurrent_streams" => {
                self.limits.max_concurrent_streams = int!(u32, 1, 100_000)
            }
            "limits.idle_timeout_s" => self.limits.idle_timeout_s = int!(u64, 1, 86_400),
            "limits.handshake_timeout_s" => self.limits.handshake_timeout_s = int!(u64, 1, 600),
            "limits.max_frames_per_session" => {
                self.limits.max_frames_per_session = int!(u64, 1, 1_000_000_000)
            }
            "limits.max_streaming_sessions" => {
                self.limits.max_streaming_sessions = int!(usize, 1, 10_000)
            }
            "limits.max_streaming_memory_mb" => {
                self.limits.max_streaming_memory_mb = int!(u64, 16, 1_048_576)
            }
            "limits.streaming_session_timeout_s" => {
                self.limits.streaming_session_timeout_s = int!(u64, 1, 86_400)
            }
            "pose.model" => self.pose.model = nonempty_path(text_or_bad()?),
            "pose.size" => {
                let t = text_or_bad()?.to_ascii_lowercase();
                let (w, h) = t.split_once('x').ok_or_else(bad)?;
                let w: u32 = w.trim().parse().map_err(|_| bad())?;
                let h: u32 = h.trim().parse().map_err(|_| bad())?;
                let ok = |v: u32| (32..=4096).contains(&v) && v.is_multiple_of(32);
                if !ok(w) || !ok(h) {
                    return Err(bad());
                }
                self.pose.width = w;
                self.pose.height = h;
            }
            "pose.piste_band" => {
                let t = text_or_bad()?;
                // Split on the '-' between the two numbers (neither may be negative).
                let (a, b) = t.split_once('-').ok_or_else(bad)?;
                let a: f32 = a.trim().parse().map_err(|_| bad())?;
                let b: f32 = b.trim().parse().map_err(|_| bad())?;
                if !(a.is_finite() && b.is_finite() && 0.0 <= a && a < b && b <= 1.0) {
                    return Err(bad());
                }
                self.pose.piste_band = (a, b);
            }
            "pose.threads" => self.pose.threads = int!(usize, 0, 1024),
            "pose.workers" => self.pose.workers = int!(usize, 0, 64),
            "fisheye.enabled" => {
                self.fisheye.enabled = match text_or_bad()?.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    _ => return Err(bad()),
                }
            }
            "fisheye.strength" => {
                self.fisheye.strength = float_in(text_or_bad()?, -1.0, 1.0).ok_or_else(bad)?
            }
            "fisheye.balance" => {
                self.fisheye.balance = float_in(text_or_bad()?, 0.0, 1.0).ok_or_else(bad)?
            }
            "pipeline.queue_depth" => self.pipeline.queue_depth = int!(usize, 1, 4096),
            "pipeline.reorder_window" => self.pipeline.reorder_window = int!(usize, 1, 100_000),
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                    origin: origin.to_string(),
                    known: known_keys(),
                })
            }
        }
        Ok(())
    }
}

fn nonempty_path(t: &str) -> Option<PathBuf> {
    (!t.is_empty()).then(|| PathBuf::from(t))
}

fn float_in(t: &str, lo: f32, hi: f32) -> Option<f32> {
    let v: f32 = t.parse().ok()?;
    (v.is_finite() && v >= lo && v <= hi).then_some(v)
}
