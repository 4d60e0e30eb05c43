//! Helpers shared by the end-to-end tests: the sample clip and the weights (located by
//! `referee-test-support`), the clip's frames as RGB, and a daemon on loopback with throw-away
//! directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use referee_capture::source::{open_video, FrameData};
use referee_config::Settings;
use referee_daemon::Daemon;
use referee_models::{PoseEstimator, PoseOptions};

/// The sample clip and its signal log, or None (with a message; a failure under CI) when the
/// shared data is absent.
pub fn sample_clip() -> Option<(PathBuf, PathBuf)> {
    referee_test_support::sample_clip("streaming the sample clip to a daemon")
}

/// The converted pose weights; panics with the command to run when they are missing.
pub fn weights() -> PathBuf {
    referee_test_support::require_weights(referee_models::default_weights_path)
}

/// Every frame of a video as (width, height, packed RGB), decoded as it is read.
pub fn rgb_frames(clip: &Path) -> impl Iterator<Item = (usize, usize, Vec<u8>)> {
    let mut src = open_video(clip).expect("open clip");
    std::iter::from_fn(move || {
        let f = src.next_frame().expect("decode frame")?;
        let rgb = match f.data {
            FrameData::Rgb(b) => b,
            FrameData::Jpeg(j) => referee_models::image::decode_image(&j).expect("jpeg").data,
        };
        Some((f.width as usize, f.height as usize, rgb))
    })
}

/// The fast pose estimator at 640x384.
pub fn estimator() -> Box<dyn PoseEstimator> {
    let opts = PoseOptions::default();
    Box::new(
        referee_models::fast::FastYoloPose::load(&weights(), opts)
            .expect("loading the pose weights"),
    )
}

/// Loopback settings with ephemeral ports and directories under `tmp`. The tests stream clips
/// as fast as the daemon takes them, so a signal lands while most frames are still queued: on a
/// loaded CI box pose can go quiet for longer than the default 3 s signal wait, so the tests
/// wait up to 60 s of quiet (a test that means to hit the wait sets its own).
pub fn settings(tmp: &Path) -> Settings {
    let mut s = Settings::default();
    for (k, v) in [
        ("pipeline.signal_wait_ms", "60000".to_string()),
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
    let (code, body) = http_request(addr, "GET", path, None, None).await;
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 request on loopback, with an optional bearer token and JSON body; returns
/// (status code, body bytes).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&str>,
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = json_body.unwrap_or("");
    let kind = if json_body.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, buf[head_end..].to_vec())
}

/// One short phrase (12 synthetic 160x96 frames, sent as fast as the daemon takes them) for
/// `session` on `piste`, closed by `log`; returns its verdict.
pub async fn synthetic_phrase(
    d: &Daemon,
    piste: &str,
    session: &str,
    log: &str,
) -> referee_transport::messages::VerdictReport {
    use referee_capture::agent::{run_agent, AgentConfig, NoProgress, SignalInput};
    use std::time::Duration;
    let mut cfg = AgentConfig::new(
        d.quic_addr,
        referee_transport::Trust::Fingerprint(d.fingerprint.clone()),
        session,
    );
    cfg.piste = piste.into();
    cfg.pacing = referee_capture::pacing::Pacing::AsFastAsPossible;
    cfg.verdict_timeout = Duration::from_secs(20);
    let source = Box::new(
        referee_capture::source::synthetic::Synthetic::new(160, 96, 15.0, Some(12))
            .expect("synthetic"),
    );
    let signal = SignalInput::Once {
        filename: "signal.txt".into(),
        bytes: log.as_bytes().to_vec(),
    };
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        run_agent(cfg, source, Some(signal), NoProgress),
    )
    .await
    .expect("agent timed out")
    .expect("agent failed");
    out.verdict.expect("a verdict")
}
