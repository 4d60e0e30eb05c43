//! End to end over loopback QUIC: the capture agent streams the real clip to a daemon, which
//! tracks both fencers as frames arrive and answers the signal with a verdict and artifacts.

mod common;

use std::time::{Duration, Instant};

use referee_capture::agent::{run_agent, AgentConfig, NoProgress, SignalInput};
use referee_transport::messages::{
    ClientMsg, FeedEvent, FrameEncoding, FrameHeader, Role, ServerMsg, SessionStart,
};
use referee_transport::{client_endpoint, connect, read_msg, send_frame, write_msg, Trust};

fn agent_config(daemon: &referee_daemon::Daemon, session: &str) -> AgentConfig {
    let mut cfg = AgentConfig::new(
        daemon.quic_addr,
        Trust::Fingerprint(daemon.fingerprint.clone()),
        session,
    );
    cfg.piste = "piste-7".into();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clip_gives_a_verdict_and_artifacts() {
    let Some((clip, signal)) = common::sample_clip() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = common::settings(tmp.path());
    let daemon = common::daemon(&settings).await;

    let source = referee_capture::source::open_video(&clip).expect("open clip");
    let signal = SignalInput::from_file(&signal, 1 << 20).expect("signal");
    let outcome = run_agent(
        agent_config(&daemon, "clip-1"),
        source,
        Some(signal),
        NoProgress,
    )
    .await
    .expect("agent run");
    let verdict = outcome.verdict.expect("a verdict");
    assert_eq!(verdict.session_id, "clip-1");
    assert!(!verdict.reason.is_empty());
    // Streamed as fast as possible, the signal lands while most frames are still queued, so
    // this latency includes that backlog; the real-time figure comes from `referee bench e2e`.
    assert!(verdict.latency_ms > 0.0);
    let detail: serde_json::Value = serde_json::from_str(&verdict.detail_json).expect("json");
    assert_eq!(detail["frames_tracked"], 63, "{detail}");
    assert!(
        detail["frames_both_visible"].as_u64().unwrap_or(0) >= 40,
        "both fencers tracked in too few frames: {detail}"
    );
    let server_stats = outcome.server_stats.expect("session ended with stats");
    assert_eq!(server_stats.received, 63);
    assert_eq!(server_stats.processed, 63);
    assert_eq!(outcome.stats.lost, 0);

    // Artifacts are written off the verdict path: wait for them.
    let dir = tmp.path().join("out/clip-1/phrase-000");
    let want = [
        "result.json",
        "keypoints.xlsx",
        "timeline.svg",
        "overlay.png",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !want.iter().all(|f| dir.join(f).exists()) {
        assert!(
            Instant::now() < deadline,
            "artifacts missing in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).expect("read"))
            .expect("result.json is JSON");
    assert_eq!(result["session_id"], "clip-1");
    assert!(result["timeline"]["events"]
        .as_array()
        .is_some_and(|e| !e.is_empty()));

    let (code, status) = common::http_get(daemon.http_addr, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(status["verdicts"], 1);
    assert!(status["verdict_latency_ms"]["p50"].as_f64().is_some());
    let (code, metrics) = common::http_get(daemon.http_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("referee_frames_received_total"),
        "{metrics}"
    );
    assert!(metrics.contains("referee_verdict_latency_seconds"));
    let (code, _) = common::http_get(daemon.http_addr, "/healthz").await;
    assert_eq!(code, 200);
    daemon.shutdown().await;
}

/// Connects as a raw client, says hello in `role`, and returns the connection and control stream.
async fn raw_client(
    daemon: &referee_daemon::Daemon,
    role: Role,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let ep = client_endpoint(&Trust::Fingerprint(daemon.fingerprint.clone())).expect("endpoint");
    let conn = connect(&ep, daemon.quic_addr, "localhost")
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    write_msg(
        &mut send,
        &ClientMsg::Hello {
            role,
            token: String::new(),
            client: "test".into(),
        },
    )
    .await
    .expect("hello");
    match read_msg::<ServerMsg>(&mut recv, 1 << 20).await {
        Ok(Some(ServerMsg::Welcome { .. })) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    (conn, send, recv)
}

fn tiny_jpeg() -> Vec<u8> {
    let rgb = vec![90u8; 64 * 48 * 3];
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 80)
        .encode(&rgb, 64, 48, jpeg_encoder::ColorType::Rgb)
        .expect("jpeg");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_phrase_leaves_the_daemon_healthy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut settings = common::settings(tmp.path());
    settings
        .set("limits.streaming_session_timeout_s", "1")
        .expect("timeout");
    let daemon = common::daemon(&settings).await;
    let (conn, mut send, mut recv) = raw_client(&daemon, Role::Capture).await;
    let start = SessionStart {
        session_id: "vanish".into(),
        fps: 15.0,
        width: 64,
        height: 48,
        piste: "p".into(),
        camera: "c".into(),
        undistort: None,
        resume: false,
        resume_secret: None,
    };
    write_msg(&mut send, &ClientMsg::SessionStart(start))
        .await
        .expect("start");
    loop {
        match read_msg::<ServerMsg>(&mut recv, 1 << 20)
            .await
            .expect("read")
        {
            Some(ServerMsg::SessionStarted { .. }) => break,
            Some(ServerMsg::Error(e)) => panic!("{e:?}"),
            Some(_) => continue,
            None => panic!("stream closed"),
        }
    }
    let jpeg = tiny_jpeg();
    for frame in 0..5u64 {
        let header = FrameHeader {
            session_id: "vanish".into(),
            frame,
            capture_ts_us: frame * 66_000,
            encoding: FrameEncoding::Jpeg,
            len: jpeg.len() as u32,
        };
        send_frame(&conn, &header, &jpeg).await.expect("frame");
    }
    // Bad bytes are counted and the session goes on.
    let junk = b"not an image at all".to_vec();
    let header = FrameHeader {
        session_id: "vanish".into(),
        frame: 5,
        capture_ts_us: 5 * 66_000,
        encoding: FrameEncoding::Jpeg,
        len: junk.len() as u32,
    };
    send_frame(&conn, &header, &junk).await.expect("junk frame");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Vanish without End.
    conn.close(0u32.into(), b"gone");
    drop((send, recv));

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = common::http_get(daemon.http_addr, "/status").await;
        assert_eq!(code, 200, "daemon unhealthy: {body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("json");
        // Released: no session, and nothing of it left inside the pipeline.
        if status["sessions"].as_array().is_some_and(|s| s.is_empty()) && status["in_flight"] == 0 {
            assert!(status["frames"]["dropped"]["bad_image"].as_u64() >= Some(1));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session never cleaned up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And it still serves new agents.
    let (_conn, _send, _recv) = raw_client(&daemon, Role::Capture).await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_subscriber_sees_live_state_then_the_verdict_and_a_stalled_one_delays_nothing() {
    let Some((clip, signal)) = common::sample_clip() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = common::settings(tmp.path());
    let daemon = common::daemon(&settings).await;

    // A subscriber that never reads: its buffer fills and it must not slow anything down.
    let (_stalled_conn, mut stalled_send, _stalled_recv) = raw_client(&daemon, Role::Feed).await;
    write_msg(
        &mut stalled_send,
        &ClientMsg::FeedSubscribe { pistes: vec![] },
    )
    .await
    .expect("subscribe");

    let (_conn, mut send, mut recv) = raw_client(&daemon, Role::Feed).await;
    write_msg(
        &mut send,
        &ClientMsg::FeedSubscribe {
            pistes: vec!["piste-7".into()],
        },
    )
    .await
    .expect("subscribe");
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Ok(Some(msg)) = read_msg::<ServerMsg>(&mut recv, 1 << 22).await {
            if let ServerMsg::Feed(ev) = msg {
                let done = matches!(ev, FeedEvent::Verdict(_));
                events.push(ev);
                if done {
                    break;
                }
            }
        }
        events
    });

    let source = referee_capture::source::open_video(&clip).expect("open clip");
    let signal = SignalInput::from_file(&signal, 1 << 20).expect("signal");
    let started = Instant::now();
    let outcome = run_agent(
        agent_config(&daemon, "feed-1"),
        source,
        Some(signal),
        NoProgress,
    )
    .await
    .expect("agent");
    let agent_verdict = outcome.verdict.expect("verdict to the agent");
    assert!(started.elapsed() < Duration::from_secs(120));

    let events = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("feed finished")
        .expect("reader task");
    assert!(
        matches!(events.first(), Some(FeedEvent::SessionStarted { .. })),
        "{:?}",
        events.first()
    );
    let lives = events
        .iter()
        .filter(|e| matches!(e, FeedEvent::Live(_)))
        .count();
    assert!(lives >= 30, "only {lives} live states");
    let Some(FeedEvent::Verdict(v)) = events.last() else {
        panic!("no verdict on the feed")
    };
    assert_eq!(v.winner, agent_verdict.winner);
    assert_eq!(v.session_id, "feed-1");
    // The stalled subscriber is still connected: it held nothing up.
    let (_, body) = common::http_get(daemon.http_addr, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        status["feed"]["subscribers"].as_u64() >= Some(1),
        "{status}"
    );
    daemon.shutdown().await;
}
