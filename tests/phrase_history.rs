//! The daemon's phrase history over its real HTTP and QUIC sides: the referee's call kept
//! beside our verdict (from the log, from a log sent again later, from the page with the feed
//! token), the agreement figures on /status and /metrics, the phrase's pictures (and no path
//! out of the output folder), and the history across a restart.
//!
//! The daemons run the stand-in pose estimator (two fencers standing still), so these tests
//! need neither weights nor shared data. The logs are single lights: the verdict is the lit
//! side, whatever the pose, so a referee's call can be made to agree or differ with it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use referee_capture::source::synthetic::Synthetic;
use referee_config::Settings;
use referee_daemon::Daemon;
use referee_pose_api::testing::StandingFencers as StandIn;
use referee_transport::messages::{VerdictReport, Winner};
use referee_transport::Trust;
use serde_json::Value;

use common::http_request;

const TOKEN: &str = "feed-secret";

/// Only the left lamp: the left fencer scores.
const LEFT_LIGHT: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Left scores on Right!\n 0.600s | Phrase recording ended\nScores -> Fencer 1: NO HIT, Fencer 2: HIT\nPhrase ended\n";

/// Both lamps, the left one first: the verdict rests on the poses.
const DOUBLE: &str = " 0.000s | Phrase recording started\n 0.400s | HIT: Left scores on Right!\n 0.420s | Lockout period started (0.200s window)\n 0.500s | HIT: Right scores on Left!\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\nPhrase ended\n";

/// What the scoring box appends once the referee has decided (here: against our verdict).
const RIGHT_CALL: &str = "[2025-10-20 20:59:24] Awaiting manual winner selection (double hit)\n[2025-10-20 20:59:27] Manual selection winner: Right Fencer (Green Lamp)\n";

/// Loopback settings with a feed token and directories under `tmp`.
fn settings(tmp: &Path) -> Settings {
    let mut s = common::settings(tmp);
    s.set("auth.feed_tokens", TOKEN).expect("token");
    s.set("pose.size", "320x192").expect("size");
    s
}

async fn daemon(s: &Settings) -> Daemon {
    Daemon::start(s, vec![Box::new(StandIn)], "stand-in")
        .await
        .expect("daemon starts")
}

/// One short phrase (12 synthetic frames) on `piste` with `log`; returns its verdict.
async fn phrase(d: &Daemon, piste: &str, session: &str, log: &str) -> VerdictReport {
    common::synthetic_phrase(d, piste, session, log).await
}

/// GET with the feed token, as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = http_request(addr, "GET", path, Some(TOKEN), None).await;
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON")
}

/// The phrase's entry in `/phrases`.
async fn entry(addr: SocketAddr, session: &str, phrase: u64) -> Option<Value> {
    let doc = get_json(addr, "/phrases").await;
    doc["phrases"]
        .as_array()
        .expect("phrases")
        .iter()
        .find(|p| p["session_id"] == session && p["phrase"] == phrase)
        .cloned()
}

/// POSTs a call from the page; returns the status code.
async fn post_call(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> u16 {
    http_request(addr, "POST", path, token, Some(body)).await.0
}

fn same_decision(a: &VerdictReport, b: &VerdictReport) {
    assert_eq!(
        (a.winner, a.confidence, &a.reason, &a.evidence),
        (b.winner, b.confidence, &b.reason, &b.evidence),
        "the referee's call changed the verdict"
    );
}

/// A capture connection speaking the protocol itself, with the same 12 frames and capture
/// stamps every time, so that two sessions differ only in their logs.
struct RawAgent {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: String,
    _endpoint: quinn::Endpoint,
}

impl RawAgent {
    /// Connects, opens `session` on `piste` and streams the frames.
    async fn start(d: &Daemon, piste: &str, session: &str) -> Self {
        use referee_transport::messages::{
            ClientMsg, FrameEncoding, FrameHeader, Role, ServerMsg, SessionStart,
        };
        use referee_transport::{client_endpoint, connect, send_frame, write_msg};
        let ep = client_endpoint(&Trust::Fingerprint(d.fingerprint.clone())).expect("endpoint");
        let conn = connect(&ep, d.quic_addr, "localhost")
            .await
            .expect("connect");
        let (mut send, recv) = conn.open_bi().await.expect("control stream");
        let hello = ClientMsg::Hello {
            role: Role::Capture,
            token: String::new(),
            client: "test".into(),
        };
        write_msg(&mut send, &hello).await.expect("hello");
        let start = SessionStart {
            session_id: session.into(),
            fps: 15.0,
            width: 160,
            height: 96,
            piste: piste.into(),
            camera: "c".into(),
            undistort: None,
            resume: false,
            resume_secret: None,
        };
        write_msg(&mut send, &ClientMsg::SessionStart(start))
            .await
            .expect("start");
        let mut agent = Self {
            conn,
            send,
            recv,
            session: session.into(),
            _endpoint: ep,
        };
        while !matches!(agent.next().await, ServerMsg::SessionStarted { .. }) {}
        let synthetic = Synthetic::new(160, 96, 15.0, None).expect("synthetic");
        for frame in 0..12u64 {
            let rgb = synthetic.render(frame);
            let mut jpeg = Vec::new();
            jpeg_encoder::Encoder::new(&mut jpeg, 80)
                .encode(&rgb, 160, 96, jpeg_encoder::ColorType::Rgb)
                .expect("jpeg");
            let header = FrameHeader {
                session_id: session.into(),
                frame,
                capture_ts_us: 1_000_000 + frame * 66_667,
                encoding: FrameEncoding::Jpeg,
                len: jpeg.len() as u32,
            };
            send_frame(&agent.conn, &header, &jpeg)
                .await
                .expect("frame");
        }
        agent
    }

    async fn next(&mut self) -> referee_transport::messages::ServerMsg {
        tokio::time::timeout(
            Duration::from_secs(20),
            referee_transport::read_msg(&mut self.recv, 1 << 22),
        )
        .await
        .expect("daemon answers in time")
        .expect("read")
        .expect("control stream open")
    }

    /// Sends phrase 0's log and waits for the verdict (a repeated one for a log sent again).
    async fn signal(&mut self, log: &str) -> VerdictReport {
        use referee_transport::messages::{ClientMsg, ServerMsg, Signal};
        let signal = ClientMsg::Signal(Signal {
            session_id: self.session.clone(),
            phrase: 0,
            filename: "phrase01.txt".into(),
            bytes: log.as_bytes().to_vec(),
            phrase_start_us: None,
        });
        referee_transport::write_msg(&mut self.send, &signal)
            .await
            .expect("signal");
        loop {
            match self.next().await {
                ServerMsg::Verdict(v) => return v,
                ServerMsg::Error(e) => panic!("{e:?}"),
                _ => {}
            }
        }
    }

    fn close(self) {
        self.conn.close(0u32.into(), b"done");
    }
}

/// One phrase by a [`RawAgent`]: its verdict.
async fn raw_phrase(d: &Daemon, piste: &str, session: &str, log: &str) -> VerdictReport {
    let mut agent = RawAgent::start(d, piste, session).await;
    let v = agent.signal(log).await;
    agent.close();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_the_log_is_kept_beside_the_verdict_and_never_reaches_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(&settings(tmp.path())).await;
    let with_call = |log: &str| format!("{log}{RIGHT_CALL}");
    let plain = raw_phrase(&d, "log-1", "plain", LEFT_LIGHT).await;
    let called = raw_phrase(&d, "log-1", "called", &with_call(LEFT_LIGHT)).await;
    assert_eq!(plain.winner, Winner::Left);
    same_decision(&plain, &called);
    // A double touch, decided on the poses: the same with the call as without.
    let double = raw_phrase(&d, "log-2", "double", DOUBLE).await;
    let double_called = raw_phrase(&d, "log-2", "double-called", &with_call(DOUBLE)).await;
    same_decision(&double, &double_called);
    assert_ne!(double.reason, plain.reason);

    let e = entry(d.http_addr, "called", 0).await.expect("in /phrases");
    assert_eq!(e["human_call"]["call"], "right", "{e}");
    assert_eq!(e["human_call"]["origin"], "log");
    assert_eq!(e["human_call"]["log_source"], "manual_selection");
    assert_eq!(e["human_call"]["stamp"], "2025-10-20 20:59:27");
    assert_eq!(e["agrees"], false);
    assert_eq!(e["winner"], "Left");
    let p = entry(d.http_addr, "plain", 0).await.expect("in /phrases");
    assert!(p["human_call"].is_null(), "{p}");
    let e = entry(d.http_addr, "double-called", 0)
        .await
        .expect("in /phrases");
    assert_eq!(e["human_call"]["call"], "right", "{e}");

    let status = get_json(d.http_addr, "/status").await;
    let a = &status["agreement"]["pistes"]["log-1"];
    assert_eq!(
        (a["calls"].as_u64(), a["agreeing"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(a["agreement"], 0.0);
    d.shutdown().await;
}

/// The log sent again once the referee's call has been appended (what watch mode does), on
/// the same session: the engine answers with the same verdict and the call is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_a_log_sent_again_after_the_verdict_is_stored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(&settings(tmp.path())).await;
    let mut agent = RawAgent::start(&d, "later-1", "later").await;
    let first = agent.signal(LEFT_LIGHT).await;
    assert!(entry(d.http_addr, "later", 0).await.expect("entry")["human_call"].is_null());
    // Seconds later the box has appended the referee's call: the log goes again.
    let again = agent.signal(&format!("{LEFT_LIGHT}{RIGHT_CALL}")).await;
    same_decision(&first, &again);
    let e = entry(d.http_addr, "later", 0).await.expect("entry");
    assert_eq!(e["human_call"]["call"], "right", "{e}");
    assert_eq!(e["human_call"]["origin"], "log");
    assert_eq!(e["winner"], "Left");
    agent.close();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_the_page_needs_the_feed_token_and_moves_the_agreement() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(&settings(tmp.path())).await;
    let v = phrase(&d, "page-1", "bout", LEFT_LIGHT).await;
    assert_eq!(v.winner, Winner::Left);
    let addr = d.http_addr;
    let url = "/phrases/bout/0/call";
    let left = r#"{"call":"left"}"#;
    let right = r#"{"call":"right"}"#;

    assert_eq!(post_call(addr, url, None, left).await, 401, "no token");
    assert_eq!(post_call(addr, url, Some("wrong"), left).await, 401);
    assert!(entry(addr, "bout", 0).await.unwrap()["human_call"].is_null());
    assert_eq!(
        post_call(addr, url, Some(TOKEN), r#"{"call":"maybe"}"#).await,
        400
    );
    let unknown = "/phrases/nobody/0/call";
    assert_eq!(post_call(addr, unknown, Some(TOKEN), left).await, 404);
    assert_eq!(
        post_call(addr, "/phrases/bout/x/call", Some(TOKEN), left).await,
        400
    );

    let agreement = |status: Value| status["agreement"]["pistes"]["page-1"].clone();
    // A call different from ours: agreement 0.
    assert_eq!(post_call(addr, url, Some(TOKEN), right).await, 200);
    let a = agreement(get_json(addr, "/status").await);
    assert_eq!(a["calls"], 1, "{a}");
    assert_eq!(a["agreement"], 0.0);
    assert_eq!(a["agreement_when_sure"], 0.0);
    let e = entry(addr, "bout", 0).await.unwrap();
    assert_eq!(e["human_call"]["origin"], "page");
    assert_eq!(e["agrees"], false);

    // The referee corrects it to our verdict: agreement 1.
    assert_eq!(post_call(addr, url, Some(TOKEN), left).await, 200);
    let a = agreement(get_json(addr, "/status").await);
    assert_eq!(
        (a["calls"].as_u64(), a["agreeing"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(a["agreement"], 1.0);
    assert_eq!(a["sure_calls"], 1);
    assert_eq!(a["agreement_when_sure"], 1.0);
    let (code, metrics) = http_request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(code, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        "referee_piste_human_calls{piste=\"page-1\"} 1",
        "referee_piste_agreement_ratio{piste=\"page-1\"} 1",
        "referee_piste_agreement_when_sure_ratio{piste=\"page-1\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in /metrics"
        );
    }
    // No token, no history either.
    assert_eq!(
        http_request(addr, "GET", "/phrases", None, None).await.0,
        401
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_and_its_calls_survive_a_daemon_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(tmp.path());
    let d = daemon(&s).await;
    phrase(&d, "restart-1", "before", LEFT_LIGHT).await;
    phrase(&d, "restart-1", "second", LEFT_LIGHT).await;
    let url = "/phrases/before/0/call";
    assert_eq!(
        post_call(d.http_addr, url, Some(TOKEN), r#"{"call":"no_touch"}"#).await,
        200
    );
    let before = get_json(d.http_addr, "/phrases").await["phrases"].clone();
    d.shutdown().await;

    let d = daemon(&s).await;
    let after = get_json(d.http_addr, "/phrases").await["phrases"].clone();
    assert_eq!(after, before, "the history changed across the restart");
    let e = entry(d.http_addr, "before", 0).await.expect("kept");
    assert_eq!(e["human_call"]["call"], "no_touch");
    let status = get_json(d.http_addr, "/status").await;
    assert_eq!(status["history"]["phrases"], 2);
    let a = &status["agreement"]["pistes"]["restart-1"];
    assert_eq!(
        (a["calls"].as_u64(), a["agreeing"].as_u64()),
        (Some(1), Some(0))
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phrases_pictures_are_served_and_no_path_leaves_the_output_folder() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(&settings(tmp.path())).await;
    phrase(&d, "pics-1", "pics", LEFT_LIGHT).await;
    let addr = d.http_addr;
    let e = entry(addr, "pics", 0).await.expect("entry");
    assert_eq!(e["overlay_url"], "/phrases/pics/0/overlay.png");
    assert_eq!(e["timeline_url"], "/phrases/pics/0/timeline.svg");
    // Artifacts are written off the verdict path: wait for them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let png = loop {
        let (code, body) = http_request(
            addr,
            "GET",
            "/phrases/pics/0/overlay.png",
            Some(TOKEN),
            None,
        )
        .await;
        if code == 200 {
            break body;
        }
        assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));
        assert!(Instant::now() < deadline, "no overlay.png in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let on_disk = std::fs::read(tmp.path().join("out/pics/phrase-000/overlay.png")).unwrap();
    assert_eq!(png, on_disk);
    let (code, svg) = http_request(
        addr,
        "GET",
        "/phrases/pics/0/timeline.svg",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&svg).contains("<svg"));
    assert_eq!(
        http_request(addr, "GET", "/phrases/pics/0/overlay.png", None, None)
            .await
            .0,
        401
    );

    // A file outside the output folder that a traversal would reach.
    std::fs::create_dir_all(tmp.path().join("phrase-000")).unwrap();
    std::fs::write(tmp.path().join("phrase-000/overlay.png"), b"secret").unwrap();
    for path in [
        "/phrases/..%2F/0/overlay.png",
        "/phrases/%2E%2E/0/overlay.png",
        "/phrases/.hidden/0/overlay.png",
        "/phrases/pics%2F..%2F../0/overlay.png",
        "/phrases/pics/0%2F..%2F..%2F/overlay.png",
        "/phrases/pics/-1/overlay.png",
    ] {
        let (code, body) = http_request(addr, "GET", path, Some(TOKEN), None).await;
        assert!(code == 400 || code == 404, "{path}: {code}");
        assert_ne!(body, b"secret", "{path} left the output folder");
    }
    assert_eq!(
        http_request(
            addr,
            "GET",
            "/phrases/pics/7/overlay.png",
            Some(TOKEN),
            None
        )
        .await
        .0,
        404
    );
    d.shutdown().await;
}
