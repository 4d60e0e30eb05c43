//! Layering, validation and documentation tests for referee-config.

use referee_config::{ConfigError, Settings, KEYS};
use std::net::IpAddr;
use std::path::PathBuf;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn shipped_file() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("referee.toml");
    std::fs::read_to_string(&path).expect("config/referee.toml exists")
}

#[test]
fn defaults_match_the_issue() {
    let s = Settings::from_sources(None, &[]).unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(s.server.host, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(s.server.port, 4433);
    assert_eq!(s.server.effective_http_port(), 4434);
    assert_eq!(s.server.output_dir, PathBuf::from("./referee-output"));
    assert_eq!(s.server.data_dir, PathBuf::from("./referee-data"));
    assert_eq!(s.limits.max_frame_bytes, 8 << 20);
    assert_eq!(s.limits.max_signal_bytes, 256 << 10);
    assert_eq!(s.limits.max_message_bytes, 1 << 20);
    assert_eq!(s.limits.max_concurrent_streams, 256);
    assert_eq!(s.limits.idle_timeout_s, 30);
    assert_eq!(s.limits.handshake_timeout_s, 10);
    assert_eq!(s.limits.max_frames_per_session, 100_000);
    assert_eq!(s.limits.max_streaming_sessions, 4);
    assert_eq!(s.limits.max_streaming_memory_mb, 1024);
    assert_eq!(s.limits.streaming_session_timeout_s, 60);
    assert_eq!((s.pose.width, s.pose.height), (640, 384));
    assert_eq!(s.pose.piste_band, (0.0, 1.0));
    assert_eq!(s.pose.model, None);
    assert!(!s.fisheye.enabled);
    assert_eq!(s.fisheye.strength, -0.3);
    assert_eq!(s.pipeline.queue_depth, 8);
    assert_eq!(s.pipeline.reorder_window, 32);
    assert!(s.auth.capture_tokens.is_empty() && s.auth.feed_tokens.is_empty());
}

#[test]
fn shipped_file_documents_every_key_with_its_default() {
    let text = shipped_file();
    let s = Settings::from_sources(Some(&text), &[]).unwrap();
    assert_eq!(
        s,
        Settings::default(),
        "referee.toml values must equal the defaults"
    );
    let table: toml::Table = text.parse().unwrap();
    for info in KEYS {
        let present = match info.key.split_once('.') {
            Some((sec, k)) => table
                .get(sec)
                .and_then(|t| t.as_table())
                .is_some_and(|t| t.contains_key(k)),
            None => table.contains_key(info.key),
        };
        assert!(present, "referee.toml lacks key {}", info.key);
        assert!(
            text.contains(info.env),
            "referee.toml does not name {}",
            info.env
        );
    }
}

#[test]
fn file_values_are_applied() {
    let text = r#"
        log_level = "debug"
        [server]
        host = "::1"
        port = 5000
        output_dir = "/tmp/out"
        [auth]
        capture_tokens = ["abc", "def"]
        [pose]
        size = "320x256"
        piste_band = "0.25-0.9"
        model = "/models/x.safetensors"
        [fisheye]
        enabled = true
        strength = -0.5
    "#;
    let s = Settings::from_sources(Some(text), &[]).unwrap();
    assert_eq!(s.log_level, "debug");
    assert_eq!(s.server.host, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(s.server.port, 5000);
    assert_eq!(s.server.effective_http_port(), 5001);
    assert_eq!(s.server.output_dir, PathBuf::from("/tmp/out"));
    assert_eq!(s.auth.capture_tokens, vec!["abc", "def"]);
    assert_eq!((s.pose.width, s.pose.height), (320, 256));
    assert_eq!(s.pose.piste_band, (0.25, 0.9));
    assert_eq!(s.pose.model, Some(PathBuf::from("/models/x.safetensors")));
    assert!(s.fisheye.enabled);
    assert_eq!(s.fisheye.strength, -0.5);
}

#[test]
fn env_overrides_file_and_cli_overrides_env() {
    let text = "[server]\nport = 5000\nhttp_port = 8080\n[limits]\nidle_timeout_s = 5\n";
    let e = env(&[
        ("REFEREE_PORT", "6000"),
        ("REFEREE_CAPTURE_TOKENS", "t1, t2,,"),
        ("REFEREE_FISHEYE_ENABLED", "yes"),
        ("REFEREE_STREAMING_SESSION_TIMEOUT", "90"),
        ("REFEREE_YOLO_MODEL", ""),
        ("REFEREE_SHARED_DIR", "/ignored/not/a/setting"),
    ]);
    let mut s = Settings::from_sources(Some(text), &e).unwrap();
    assert_eq!(s.server.port, 6000, "env beats file");
    assert_eq!(
        s.server.http_port,
        Some(8080),
        "file value kept where env is silent"
    );
    assert_eq!(s.limits.idle_timeout_s, 5);
    assert_eq!(s.auth.capture_tokens, vec!["t1", "t2"]);
    assert!(s.fisheye.enabled);
    assert_eq!(s.limits.streaming_session_timeout_s, 90);
    s.set("server.port", "7000").unwrap();
    s.set_pair("limits.idle_timeout_s = 9").unwrap();
    s.validate().unwrap();
    assert_eq!(s.server.port, 7000, "CLI beats env");
    assert_eq!(s.limits.idle_timeout_s, 9);
}

#[test]
fn every_invalid_value_names_key_value_and_allowed() {
    let cases: &[(&str, &str)] = &[
        ("log_level", "loud"),
        ("server.host", "not-an-ip"),
        ("server.port", "-1"),
        ("server.port", "70000"),
        ("server.http_port", "http"),
        ("server.output_dir", ""),
        ("server.data_dir", ""),
        ("auth.capture_tokens", "has space"),
        ("auth.feed_tokens", "a b"),
        ("limits.max_frame_bytes", "12"),
        ("limits.max_signal_bytes", "-1"),
        ("limits.max_message_bytes", "lots"),
        ("limits.max_concurrent_streams", "0"),
        ("limits.idle_timeout_s", "0"),
        ("limits.handshake_timeout_s", "1000"),
        ("limits.max_frames_per_session", "0"),
        ("limits.max_streaming_sessions", "0"),
        ("limits.max_streaming_memory_mb", "1"),
        ("limits.streaming_session_timeout_s", "1.5"),
        ("pose.size", "640x380"),
        ("pose.size", "640"),
        ("pose.piste_band", "0.9-0.1"),
        ("pose.piste_band", "0.2-1.5"),
        ("pose.threads", "many"),
        ("fisheye.enabled", "maybe"),
        ("fisheye.strength", "-2"),
        ("fisheye.balance", "NaN"),
        ("pipeline.queue_depth", "0"),
        ("pipeline.reorder_window", "x"),
    ];
    for (key, value) in cases {
        let mut s = Settings::default();
        let err = s
            .set(key, value)
            .expect_err(&format!("{key}={value:?} must be refused"));
        match &err {
            ConfigError::Invalid {
                key: k,
                value: v,
                allowed,
                ..
            } => {
                assert_eq!(k, key);
                assert_eq!(v, value);
                assert!(!allowed.is_empty());
            }
            other => panic!("{key}={value}: wrong error {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(key) && msg.contains(value) && msg.contains("allowed"),
            "{msg}"
        );
    }
    // The same check through the environment and the file.
    let err = Settings::from_sources(None, &env(&[("REFEREE_POSE_SIZE", "10x10")])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("pose.size") && msg.contains("10x10") && msg.contains("REFEREE_POSE_SIZE"),
        "{msg}"
    );
    let err = Settings::from_sources(Some("[server]\nport = \"abc\"\n"), &[]).unwrap_err();
    assert!(err.to_string().contains("server.port") && err.to_string().contains("abc"));
    let err = Settings::from_sources(Some("[auth]\nfeed_tokens = [1, 2]\n"), &[]).unwrap_err();
    assert!(err.to_string().contains("auth.feed_tokens"), "{err}");
}

#[test]
fn unknown_keys_in_the_file_are_rejected_by_name() {
    for text in [
        "[server]\nprot = 1\n",
        "colour = \"red\"\n",
        "[serverz]\nport = 1\n",
    ] {
        let err = Settings::from_sources(Some(text), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    }
    let err = Settings::from_sources(Some("[server]\nprot = 1\n"), &[]).unwrap_err();
    assert!(err.to_string().contains("server.prot"), "{err}");
    let mut s = Settings::default();
    assert!(matches!(
        s.set("server.nope", "1"),
        Err(ConfigError::UnknownKey { .. })
    ));
}

#[test]
fn cross_key_conflicts_are_reported() {
    let err = Settings::from_sources(None, &env(&[("REFEREE_TLS_CERT", "/c.pem")])).unwrap_err();
    assert!(err.to_string().contains("tls.key"), "{err}");
    let err = Settings::from_sources(None, &env(&[("REFEREE_PORT", "65535")])).unwrap_err();
    assert!(err.to_string().contains("http_port"), "{err}");
    let ok = Settings::from_sources(
        None,
        &env(&[("REFEREE_PORT", "65535"), ("REFEREE_HTTP_PORT", "8080")]),
    )
    .unwrap();
    assert_eq!(ok.server.effective_http_port(), 8080);
    let err = Settings::from_sources(Some("not toml ["), &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Parse(_)));
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.toml");
    std::fs::write(&p, "[pipeline]\nqueue_depth = 3\n").unwrap();
    // Process env may hold REFEREE_* from the caller; only check what the file sets.
    if std::env::var_os("REFEREE_QUEUE_DEPTH").is_none() {
        assert_eq!(Settings::load(Some(&p)).unwrap().pipeline.queue_depth, 3);
    }
    let err = Settings::load(Some(&dir.path().join("missing.toml"))).unwrap_err();
    assert!(err.to_string().contains("missing.toml"), "{err}");
}

#[test]
fn debug_output_never_shows_tokens() {
    let s =
        Settings::from_sources(None, &env(&[("REFEREE_CAPTURE_TOKENS", "s3cret-token")])).unwrap();
    let text = format!("{s:?}");
    assert!(!text.contains("s3cret-token"), "{text}");
    assert!(text.contains("redacted"));
}

#[test]
fn every_key_is_declared_once_and_its_default_round_trips() {
    let defaults = Settings::default();
    let text = shipped_file();
    let table: toml::Table = text.parse().unwrap();
    for (i, info) in KEYS.iter().enumerate() {
        assert!(
            KEYS[..i]
                .iter()
                .all(|k| k.key != info.key && k.env != info.env),
            "{} or {} is declared twice",
            info.key,
            info.env
        );
        assert_eq!(
            referee_config::key_info(info.key).map(|k| k.env),
            Some(info.env)
        );
        // The default string is accepted by the key's parser and is the built-in default,
        // whether it comes from the command line, the environment or the file.
        let mut s = Settings::default();
        s.set(info.key, info.default)
            .unwrap_or_else(|e| panic!("default of {}: {e}", info.key));
        assert_eq!(s, defaults, "{} = {:?}", info.key, info.default);
        let from_env = Settings::from_sources(None, &env(&[(info.env, info.default)])).unwrap();
        assert_eq!(from_env, defaults, "{}={:?}", info.env, info.default);
        // referee.toml shows this key with a value equal to the default.
        let (section, name) = match info.key.split_once('.') {
            Some((sec, k)) => (Some(sec), k),
            None => (None, info.key),
        };
        let value = match section {
            Some(sec) => table.get(sec).and_then(|t| t.get(name)),
            None => table.get(name),
        }
        .unwrap_or_else(|| panic!("referee.toml lacks key {}", info.key));
        let line = match section {
            Some(sec) => format!("[{sec}]\n{name} = {value}\n"),
            None => format!("{name} = {value}\n"),
        };
        assert_eq!(
            Settings::from_sources(Some(&line), &[]).unwrap(),
            defaults,
            "referee.toml's {} = {value} is not the default {:?}",
            info.key,
            info.default
        );
    }
}
