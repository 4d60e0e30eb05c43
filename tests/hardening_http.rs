//! Issue 16, failures 2 and 8, over the daemon's real HTTP side: the feed and status behind
//! the feed token, HTTP on loopback by default, slow and idle connections closed, the
//! connection cap; a read-only output dir refused at start, artifact failures on /status and
//! /healthz.
//!
//! The daemons run the stand-in pose estimator, so these tests need neither weights nor
//! shared data.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use referee_config::Settings;
use referee_daemon::{Daemon, DaemonError};
use referee_pose_api::testing::StandingFencers as StandIn;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::http_request;

const TOKEN: &str = "feed-secret";

const LOG: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Left scores on Right!\n 0.600s | Phrase recording ended\nScores -> Fencer 1: NO HIT, Fencer 2: HIT\n";

fn settings(tmp: &Path, pairs: &[(&str, &str)]) -> Settings {
    let mut s = common::settings(tmp);
    s.set("pose.size", "320x192").expect("size");
    for (k, v) in pairs {
        s.set(k, v).expect("test setting");
    }
    s
}

async fn daemon(s: &Settings) -> Daemon {
    Daemon::start(s, vec![Box::new(StandIn)], "stand-in")
        .await
        .expect("daemon starts")
}

async fn get_json(addr: SocketAddr, path: &str, token: Option<&str>) -> Value {
    let (code, body) = http_request(addr, "GET", path, token, None).await;
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON")
}

/// Sends `request` and reads the response head only (event streams never end).
async fn response_head(addr: SocketAddr, request: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("a response head in time")
            .expect("read");
        assert!(n > 0, "closed before the head: {head:?}");
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Seconds until the daemon closes `s` (reads and discards whatever it sends first).
async fn closed_after(mut s: TcpStream, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((t0 + within).into(), s.read(&mut buf)).await {
            Err(_) => panic!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// One short phrase (12 synthetic frames) for `session`, as fast as possible.
async fn phrase(d: &Daemon, session: &str) {
    common::synthetic_phrase(d, "p1", session, LOG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_auth_feed_and_status_need_the_feed_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(&settings(tmp.path(), &[("auth.feed_tokens", TOKEN)])).await;
    let a = d.http_addr;
    for path in ["/status", "/streaming/stats", "/feed/events"] {
        let (code, body) = http_request(a, "GET", path, None, None).await;
        assert_eq!(code, 401, "{path} without a token");
        let body: Value = serde_json::from_slice(&body).expect("JSON error");
        assert!(
            body["hint"].as_str().unwrap_or("").contains("Bearer"),
            "{body}"
        );
        let (code, _) = http_request(a, "GET", path, Some("wrong"), None).await;
        assert_eq!(code, 401, "{path} with a wrong token");
        let (code, _) = http_request(a, "GET", &format!("{path}?token=wrong"), None, None).await;
        assert_eq!(code, 401, "{path} with a wrong ?token=");
    }
    // With the token as a header or (what EventSource can do) in the query.
    let status = get_json(a, "/status", Some(TOKEN)).await;
    assert!(
        status["http"]["accepted"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    get_json(a, &format!("/status?token={TOKEN}"), None).await;
    let (_s, head) = response_head(
        a,
        &format!("GET /feed/events?piste=p1&token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // Health, metrics and the page stay open; the page hands its ?token= to the stream.
    for path in ["/healthz", "/metrics", "/"] {
        assert_eq!(
            http_request(a, "GET", path, None, None).await.0,
            200,
            "{path}"
        );
    }
    let (_, page) = http_request(a, "GET", "/", None, None).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("location.search") && page.contains("\"token\""),
        "the page passes its token on"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_auth_listens_on_loopback_unless_told_otherwise() {
    let tmp = tempfile::tempdir().expect("tmp");
    // QUIC on every address with a capture token only: HTTP stays on loopback.
    let s = settings(
        tmp.path(),
        &[
            ("server.host", "0.0.0.0"),
            ("auth.capture_tokens", "cap-secret"),
        ],
    );
    let d = daemon(&s).await;
    assert!(d.http_addr.ip().is_loopback(), "HTTP on {}", d.http_addr);
    d.shutdown().await;

    // Told otherwise, without feed tokens: it listens, but nobody reads the feed or status.
    let tmp = tempfile::tempdir().expect("tmp");
    let mut s = s.clone();
    for (k, v) in [
        ("server.output_dir", tmp.path().join("out")),
        ("server.data_dir", tmp.path().join("data")),
    ] {
        s.set(k, &v.display().to_string()).expect("dir");
    }
    s.set("http.host", "0.0.0.0").expect("host");
    let d = daemon(&s).await;
    assert!(d.http_addr.ip().is_unspecified(), "HTTP on {}", d.http_addr);
    let local = SocketAddr::from(([127, 0, 0, 1], d.http_addr.port()));
    assert_eq!(
        http_request(local, "GET", "/status", None, None).await.0,
        401
    );
    assert_eq!(
        http_request(local, "GET", "/healthz", None, None).await.0,
        200
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_timeouts_slow_and_idle_connections_are_closed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(&settings(
        tmp.path(),
        &[("http.read_timeout_s", "1"), ("http.idle_timeout_s", "2")],
    ))
    .await;
    let a = d.http_addr;
    // Slowloris: half a request head, then nothing.
    let mut half = TcpStream::connect(a).await.expect("connect");
    half.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let took = closed_after(half, Duration::from_secs(6)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    // A connection that never sends anything is closed at the idle timeout.
    let idle = TcpStream::connect(a).await.expect("connect");
    let took = closed_after(idle, Duration::from_secs(8)).await;
    assert!(took >= Duration::from_millis(1900), "closed after {took:?}");
    // So is a keep-alive connection after its answer.
    let (s, head) = response_head(a, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let took = closed_after(s, Duration::from_secs(8)).await;
    assert!(took >= Duration::from_millis(1900), "closed after {took:?}");
    // A request whose body never finishes arriving is answered 408 at the read timeout.
    let t0 = Instant::now();
    let (s, head) = response_head(
        a,
        "POST /phrases/x/0/call HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"call\":",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    closed_after(s, Duration::from_secs(5)).await;
    // An event stream is a request in progress: it outlives the idle timeout.
    let (mut sse, head) = response_head(a, "GET /feed/events HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let mut buf = [0u8; 256];
    let still_open = tokio::time::timeout(Duration::from_millis(200), sse.read(&mut buf))
        .await
        .map_or(true, |r| r.is_ok_and(|n| n > 0));
    assert!(still_open, "the event stream was closed as idle");
    drop(sse);

    let status = get_json(a, "/status", None).await;
    let http = &status["http"];
    assert!(http["read_timeouts"].as_u64() >= Some(2), "{http}");
    assert!(http["idle_timeouts"].as_u64() >= Some(2), "{http}");
    let (_, metrics) = http_request(a, "GET", "/metrics", None, None).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("referee_http_timeouts_total{kind=\"read\"}")
            && metrics.contains("referee_http_timeouts_total{kind=\"idle\"}"),
        "timeouts in /metrics"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_timeouts_the_connection_cap_refuses_the_next_and_counts_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(&settings(tmp.path(), &[("http.max_connections", "3")])).await;
    let a = d.http_addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(a).await.expect("connect"));
    }
    // The fourth is answered 503 and closed at once.
    let mut fourth = TcpStream::connect(a).await.expect("connect");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // Once they go, the daemon answers again and has counted the refusal.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (code, body) = http_request(a, "GET", "/status", None, None).await;
        if code == 200 {
            break serde_json::from_slice::<Value>(&body).expect("JSON");
        }
        assert!(Instant::now() < deadline, "no slot came free: {code}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let http = &status["http"];
    assert!(http["refused"].as_u64() >= Some(1), "{http}");
    assert!(http["open"].as_u64() <= Some(3), "{http}");
    let (_, metrics) = http_request(a, "GET", "/metrics", None, None).await;
    assert!(String::from_utf8_lossy(&metrics).contains("referee_http_connections_refused_total"));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_read_only_output_dir_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let ro = tmp.path().join("read-only");
    std::fs::create_dir(&ro).expect("dir");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    if std::fs::write(ro.join("probe"), b"x").is_ok() {
        // Root (or a capability) writes through permissions: nothing to test here.
        eprintln!("skipped: this user can write into a 0o555 directory (root?)");
        return;
    }
    let s = settings(
        tmp.path(),
        &[("server.output_dir", &ro.display().to_string())],
    );
    let err = Daemon::start(&s, vec![Box::new(StandIn)], "stand-in")
        .await
        .err()
        .expect("a read-only output dir is refused");
    assert!(
        matches!(
            err,
            DaemonError::NotWritable {
                key: "server.output_dir",
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&ro.display().to_string()) && msg.contains("server.output_dir"),
        "{msg}"
    );
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_artifact_failures_show_on_status_and_degrade_healthz() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(tmp.path(), &[]);
    let d = daemon(&s).await;
    let a = d.http_addr;
    let health = get_json(a, "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");
    // The session's folder cannot be created: a file has its name.
    std::fs::write(s.server.output_dir.join("blocked"), b"not a folder").expect("blocker");
    phrase(&d, "blocked").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = get_json(a, "/status", None).await;
        if status["artifacts"]["failed"].as_u64() >= Some(1) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no failure reported: {}",
            status["artifacts"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let art = &status["artifacts"];
    assert_eq!(art["failed"], 1, "{art}");
    assert!(
        art["last_error"].as_str().unwrap_or("").contains("blocked"),
        "{art}"
    );
    assert!(art["last_error_at_unix_s"].as_f64().is_some(), "{art}");
    let (code, body) = http_request(a, "GET", "/healthz", None, None).await;
    let health: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        (code, &health["status"]),
        (200, &Value::from("degraded")),
        "{health}"
    );
    assert!(
        health["problems"][0]
            .as_str()
            .unwrap_or("")
            .contains("artifacts"),
        "{health}"
    );

    // The next phrase is written: healthy again, the failure still counted.
    phrase(&d, "fine").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_json(a, "/status", None).await["artifacts"]["written"].as_u64() < Some(1) {
        assert!(
            Instant::now() < deadline,
            "the second phrase was not written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = get_json(a, "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert!(s
        .server
        .output_dir
        .join("fine/phrase-000/result.json")
        .exists());
    d.shutdown().await;
}

/// Issue 16, failure 8 (disk), for recordings: a phrase that cannot be recorded shows on /status
/// and makes /healthz degraded until a later phrase is recorded whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_recording_failures_show_on_status_and_degrade_healthz() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(tmp.path(), &[]);
    let d = daemon(&s).await;
    let a = d.http_addr;
    // The session's recordings folder cannot be created: a file has its name.
    let recordings = s.server.output_dir.join("recordings");
    std::fs::create_dir_all(&recordings).expect("recordings dir");
    std::fs::write(recordings.join("rblocked"), b"not a folder").expect("blocker");
    phrase(&d, "rblocked").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = get_json(a, "/status", None).await;
        if status["recording"]["errors"].as_u64() >= Some(1) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no recording failure reported: {}",
            status["recording"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rec = &status["recording"];
    assert_eq!(rec["degraded"], true, "{rec}");
    assert!(
        rec["last_problem"]
            .as_str()
            .unwrap_or("")
            .contains("rblocked"),
        "{rec}"
    );
    let health = get_json(a, "/healthz", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["problems"].as_array().is_some_and(|p| p
            .iter()
            .any(|m| m.as_str().unwrap_or("").contains("recordings"))),
        "{health}"
    );

    // The next phrase is recorded whole: healthy again, the failure still counted.
    phrase(&d, "rfine").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = get_json(a, "/status", None).await;
        if status["recording"]["written"].as_u64() >= Some(1)
            && status["artifacts"]["written"].as_u64() >= Some(2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second phrase was not recorded: {}",
            status["recording"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = get_json(a, "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert!(recordings.join("rfine/phrase-000.tar").exists());
    d.shutdown().await;
}
