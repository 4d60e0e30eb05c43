//! Helpers shared by the end-to-end tests: locating the shared data and the weights, and
//! starting a daemon on loopback with throw-away directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use referee_config::Settings;
use referee_engine::daemon::Daemon;
use referee_models::{PoseEstimator, PoseOptions};

/// The shared folder (`$REFEREE_SHARED_DIR`, else `../shared` beside the workspace).
pub fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REFEREE_SHARED_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// The sample clip and its signal log, or None (with a message) when the data is absent.
pub fn sample_clip() -> Option<(PathBuf, PathBuf)> {
    let data = shared_dir().join("data");
    let clip = data.join("3809.MP4");
    let signal = data.join("3809_signal.txt");
    if clip.exists() && signal.exists() {
        Some((clip, signal))
    } else {
        eprintln!(
            "skipped: shared data not found at {} (set REFEREE_SHARED_DIR)",
            data.display()
        );
        None
    }
}

/// The converted pose weights; panics with the command to run when they are missing.
pub fn weights() -> PathBuf {
    let p = std::env::var_os("REFEREE_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(referee_models::default_weights_path);
    assert!(
        p.exists(),
        "pose weights not found at {}: run `cargo run --release -- model fetch` first",
        p.display()
    );
    p
}

/// The fast pose estimator at 640x384.
pub fn estimator() -> Box<dyn PoseEstimator> {
    let opts = PoseOptions::default();
    Box::new(
        referee_models::fast::FastYoloPose::load(&weights(), opts)
            .expect("loading the pose weights"),
    )
}

/// Loopback settings with ephemeral ports and directories under `tmp`.
pub fn settings(tmp: &Path) -> Settings {
    let mut s = Settings::default();
    for (k, v) in [
        ("server.host", "127.0.0.1".to_string()),
        ("server.port", "0".to_string()),
        ("server.http_port", "0".to_string()),
        ("server.output_dir", tmp.join("out").display().to_string()),
        ("server.data_dir", tmp.join("data").display().to_string()),
    ] {
        s.set(k, &v).expect("test setting");
    }
    s
}

/// Starts a daemon with the fast estimator.
pub async fn daemon(settings: &Settings) -> Daemon {
    Daemon::start(settings, vec![estimator()], "yolo11n-pose")
        .await
        .expect("daemon starts")
}

/// A plain HTTP/1.1 GET on loopback; returns (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
