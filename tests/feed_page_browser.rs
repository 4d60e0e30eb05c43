//! The live feed page in a real browser: headless Chromium, driven over the WebDriver protocol
//! by chromedriver, loads the daemon's page, watches the sample clip's phrase unfold, sees the
//! verdict appear, and saves a screenshot (target/feed-page.png).
//!
//! Needs Debian's `chromium` and `chromium-driver` (installed by .ci/run). Without them the test
//! says so and passes, except under CI (CI=true), where their absence is a failure (the same
//! rule as for the shared data: `referee_test_support::skip`).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use referee_capture::agent::{run_agent, AgentConfig, NoProgress, SignalInput};
use referee_transport::Trust;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Kills chromedriver when the test ends, however it ends.
struct Driver(Child);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request with an optional JSON body; returns the JSON answer.
async fn webdriver(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("chromedriver");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    // chromedriver keeps the connection open: read the head, then exactly Content-Length bytes.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "chromedriver closed the connection early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "chromedriver closed the connection mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..head_end + len];
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "bad webdriver answer {e}: {}",
            String::from_utf8_lossy(body)
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_page_shows_live_state_and_the_verdict() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        referee_test_support::skip(
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
        );
        return;
    }
    let Some((clip, signal)) = common::sample_clip() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = common::settings(tmp.path());
    let daemon = common::daemon(&settings).await;

    let port = free_port();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let driver: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(driver).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tmp.path().join("chromium-profile");
    let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": CHROMIUM,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--window-size=1100,800",
                 format!("--user-data-dir={}", profile.display())]
    }}}});
    let session = webdriver(driver, "POST", "/session", Some(caps)).await;
    let sid = session["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no webdriver session: {session}"))
        .to_string();
    let url = format!("http://{}/", daemon.http_addr);
    webdriver(
        driver,
        "POST",
        &format!("/session/{sid}/url"),
        Some(json!({"url": url})),
    )
    .await;
    let eval = |script: &'static str| {
        let sid = sid.clone();
        async move {
            webdriver(
                driver,
                "POST",
                &format!("/session/{sid}/execute/sync"),
                Some(json!({"script": script, "args": []})),
            )
            .await["value"]
                .clone()
        }
    };
    // The page connects its event stream before the phrase starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while eval("return document.getElementById('conn').textContent").await != json!("connected") {
        assert!(
            Instant::now() < deadline,
            "the page never connected to /feed/events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut cfg = AgentConfig::new(
        daemon.quic_addr,
        Trust::Fingerprint(daemon.fingerprint.clone()),
        "browser-1",
    );
    cfg.piste = "piste-3".into();
    let source = referee_capture::source::open_video(&clip).expect("clip");
    let signal = SignalInput::from_file(&signal, 1 << 20).expect("signal");
    let outcome = run_agent(cfg, source, Some(signal), NoProgress)
        .await
        .expect("agent");
    let verdict = outcome.verdict.expect("verdict");

    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let v = eval(
            "const e = document.querySelector('.verdict .who'); return e ? e.textContent : null",
        )
        .await;
        if let Some(text) = v.as_str() {
            break text.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the verdict never appeared on the page"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected = match verdict.winner {
        referee_transport::messages::Winner::Left => "left",
        referee_transport::messages::Winner::Right => "right",
        referee_transport::messages::Winner::Uncertain => "Uncertain",
    };
    assert!(
        shown.contains(expected),
        "page shows {shown:?}, verdict {:?}",
        verdict.winner
    );
    let piste = eval("return document.querySelector('.piste h2').textContent").await;
    assert_eq!(piste, json!("Piste piste-3"));
    let state = eval("return document.querySelector('.piste .state').textContent").await;
    assert!(state.as_str().is_some_and(|s| !s.is_empty()), "{state}");
    let history = eval("return document.getElementById('history').children.length").await;
    assert_eq!(history, json!(1));

    let shot = webdriver(driver, "GET", &format!("/session/{sid}/screenshot"), None).await;
    let png = decode_base64(shot["value"].as_str().expect("screenshot data"));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // Cargo's scratch folder for integration tests: it exists wherever the target dir is.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("feed-page.png");
    std::fs::write(&out, &png).expect("save screenshot");
    eprintln!("screenshot saved to {}", out.display());
    webdriver(driver, "DELETE", &format!("/session/{sid}"), None).await;
    daemon.shutdown().await;
}

/// Standard base64 (the WebDriver screenshot encoding).
fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
