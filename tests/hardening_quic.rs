//! Issue #16, the QUIC side: each failure found by trying the daemon as an attacker or a
//! careless user would, as a test named after it. The daemon runs on loopback with the
//! stand-in pose estimator, so no weights are needed.

use std::time::{Duration, Instant};

use referee_capture::agent::{run_agent, AgentConfig, ProgressSink, SignalInput};
use referee_capture::pacing::Pacing;
use referee_capture::source::Synthetic;
use referee_config::Settings;
use referee_daemon::Daemon;
use referee_pose_api::testing::StandingFencers;
use referee_transport::messages::{
    ClientMsg, ErrorCode, ErrorMsg, FrameEncoding, FrameHeader, Role, ServerMsg, SessionStart,
    Signal,
};
use referee_transport::{
    client_endpoint, connect, encode_msg, read_msg, send_frame, write_msg, TransportError, Trust,
};

const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";

/// Loopback settings with ephemeral ports under `tmp`, plus `extra` overrides.
fn settings(tmp: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
    let mut s = Settings::default();
    let out = tmp.join("out").display().to_string();
    let data = tmp.join("data").display().to_string();
    let base = [
        ("server.host", "127.0.0.1"),
        ("server.port", "0"),
        ("server.http_port", "0"),
        ("server.output_dir", out.as_str()),
        ("server.data_dir", data.as_str()),
    ];
    for (k, v) in base.iter().chain(extra) {
        s.set(k, v).expect("test setting");
    }
    s
}

async fn daemon(settings: &Settings) -> Daemon {
    Daemon::start(
        settings,
        vec![Box::new(StandingFencers)],
        "standing-fencers",
    )
    .await
    .expect("daemon starts")
}

/// A raw client connection after `Hello`/`Welcome`.
struct Client {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _ep: quinn::Endpoint,
}

async fn client(daemon: &Daemon) -> Client {
    let ep = client_endpoint(&Trust::Fingerprint(daemon.fingerprint.clone())).expect("endpoint");
    let conn = connect(&ep, daemon.quic_addr, "localhost")
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let hello = ClientMsg::Hello {
        role: Role::Capture,
        token: String::new(),
        client: "hardening-test".into(),
    };
    write_msg(&mut send, &hello).await.expect("hello");
    match read_msg::<ServerMsg>(&mut recv, 1 << 22).await {
        Ok(Some(ServerMsg::Welcome { .. })) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    Client {
        conn,
        send,
        recv,
        _ep: ep,
    }
}

impl Client {
    async fn send(&mut self, msg: ClientMsg) {
        write_msg(&mut self.send, &msg).await.expect("write");
    }

    /// The next message other than acks, progress and live states (within 10 s).
    async fn next(&mut self) -> ServerMsg {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, read_msg::<ServerMsg>(&mut self.recv, 1 << 22))
                .await
                .expect("a message within 10 s")
                .expect("read");
            match msg {
                Some(ServerMsg::Ack { .. } | ServerMsg::Progress { .. } | ServerMsg::Live(_)) => {}
                Some(m) => return m,
                None => panic!("the daemon closed the control stream"),
            }
        }
    }

    async fn error(&mut self) -> ErrorMsg {
        match self.next().await {
            ServerMsg::Error(e) => e,
            other => panic!("expected an Error, got {other:?}"),
        }
    }

    /// Starts (or resumes) `id`; returns the daemon's answer.
    async fn start(&mut self, id: &str, resume: bool, secret: Option<&str>) -> ServerMsg {
        self.send(ClientMsg::SessionStart(SessionStart {
            session_id: id.into(),
            fps: 30.0,
            width: 64,
            height: 48,
            piste: "p".into(),
            camera: "c".into(),
            undistort: None,
            resume,
            resume_secret: secret.map(str::to_string),
        }))
        .await;
        self.next().await
    }

    async fn frame(&self, id: &str, frame: u64) {
        let jpeg = tiny_jpeg();
        let header = FrameHeader {
            session_id: id.into(),
            frame,
            capture_ts_us: frame * 33_000,
            encoding: FrameEncoding::Jpeg,
            len: jpeg.len() as u32,
        };
        send_frame(&self.conn, &header, &jpeg).await.expect("frame");
    }
}

fn tiny_jpeg() -> Vec<u8> {
    let rgb = vec![90u8; 64 * 48 * 3];
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 80)
        .encode(&rgb, 64, 48, jpeg_encoder::ColorType::Rgb)
        .expect("jpeg");
    out
}

fn signal(id: &str, phrase: u32) -> ClientMsg {
    ClientMsg::Signal(Signal {
        session_id: id.into(),
        phrase,
        filename: format!("signal-{phrase}.txt"),
        bytes: SIGNAL.as_bytes().to_vec(),
        phrase_start_us: None,
    })
}

fn secret_of(msg: ServerMsg) -> String {
    match msg {
        ServerMsg::SessionStarted { resume_secret, .. } => resume_secret,
        other => panic!("expected SessionStarted, got {other:?}"),
    }
}

fn received(daemon: &Daemon, id: &str) -> u64 {
    let s = daemon.core.engine.session(id).expect("session open");
    s.counters
        .received
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Item 1: any client could resume another piste's session (ids are listed by /status) and
/// get its verdict, abort it or inject frames. Now only the connection holding the session,
/// or an agent presenting its resume secret (with its token), may use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_hijack_is_refused_without_the_resume_secret() {
    let tmp = tempfile::tempdir().expect("tmp");
    let daemon = daemon(&settings(tmp.path(), &[])).await;
    let mut victim = client(&daemon).await;
    let secret = secret_of(victim.start("victim", false, None).await);
    assert_eq!(secret.len(), 32, "{secret}");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));

    let mut thief = client(&daemon).await;
    for guess in [None, Some("00000000000000000000000000000000")] {
        match thief.start("victim", true, guess).await {
            ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::NotSessionOwner, "{e:?}"),
            other => panic!("a resume without the secret was answered {other:?}"),
        }
    }
    // Signal, End, Abort and frames for a session this connection does not hold.
    for msg in [
        signal("victim", 0),
        ClientMsg::End {
            session_id: "victim".into(),
        },
        ClientMsg::Abort {
            session_id: "victim".into(),
            reason: "hijack".into(),
        },
    ] {
        thief.send(msg).await;
        assert_eq!(thief.error().await.code, ErrorCode::NotSessionOwner);
    }
    thief.frame("victim", 0).await;
    let e = thief.error().await;
    assert_eq!(e.code, ErrorCode::NotSessionOwner, "{e:?}");
    assert_eq!(
        received(&daemon, "victim"),
        0,
        "an injected frame was taken"
    );

    // The victim's own frame 0 is taken (not dropped as a duplicate of an injected one).
    victim.frame("victim", 0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while received(&daemon, "victim") == 0 {
        assert!(Instant::now() < deadline, "the owner's frame never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The owner reconnects and resumes with its secret, which is then replaced.
    victim.conn.close(0u32.into(), b"network lost");
    let mut back = client(&daemon).await;
    let renewed = secret_of(back.start("victim", true, Some(&secret)).await);
    assert_ne!(renewed, secret);
    let mut late = client(&daemon).await;
    match late.start("victim", true, Some(&secret)).await {
        ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::NotSessionOwner),
        other => panic!("the replaced secret still resumed: {other:?}"),
    }
    // A second start of the same id without resume is still `SessionExists`.
    match late.start("victim", false, None).await {
        ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::SessionExists),
        other => panic!("{other:?}"),
    }
    daemon.shutdown().await;
}

/// Records the agent's messages.
#[derive(Default)]
struct Messages(Vec<String>);
impl ProgressSink for Messages {
    fn message(&mut self, text: &str) {
        self.0.push(text.to_string());
    }
}

fn agent(daemon: &Daemon, id: &str, frames: u64) -> (AgentConfig, Box<Synthetic>) {
    let mut cfg = AgentConfig::new(
        daemon.quic_addr,
        Trust::Fingerprint(daemon.fingerprint.clone()),
        id,
    );
    cfg.pacing = Pacing::RealTime { fps: 30.0 };
    cfg.backoff_initial = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(500);
    let source = Box::new(Synthetic::new(64, 48, 30.0, Some(frames)).expect("synthetic"));
    (cfg, source)
}

fn once_signal() -> SignalInput {
    SignalInput::Once {
        filename: "signal.txt".into(),
        bytes: SIGNAL.as_bytes().to_vec(),
    }
}

/// Item 6: with every session slot taken, an agent gave up after its few reconnect attempts
/// (9 in 16.7 s) while the others were still finishing. Now it waits for a free slot (with a
/// message saying so), without using up its retries, and then streams its phrase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_too_early_a_second_agent_waits_for_a_free_session_slot() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(tmp.path(), &[("limits.max_streaming_sessions", "1")]);
    let daemon = daemon(&s).await;
    // The first phrase takes about 2 s to stream.
    let (cfg_a, source_a) = agent(&daemon, "first", 60);
    let first = tokio::spawn(run_agent(
        cfg_a,
        source_a,
        Some(once_signal()),
        Messages::default(),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon.core.engine.sessions().is_empty() {
        assert!(Instant::now() < deadline, "the first session never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One retry only: giving up on a full daemon would end this agent at once.
    let (mut cfg_b, source_b) = agent(&daemon, "second", 15);
    cfg_b.max_retries = 1;
    cfg_b.slot_wait = Duration::from_secs(60);
    let mut messages = Messages::default();
    let second = run_agent(cfg_b, source_b, Some(once_signal()), &mut messages)
        .await
        .expect("the second agent waits for the slot and streams");
    assert!(second.verdict.is_some(), "no verdict for the second phrase");
    assert!(
        messages
            .0
            .iter()
            .any(|m| m.contains("waiting for a free session slot")),
        "{:?}",
        messages.0
    );
    let first = first.await.expect("join").expect("first agent");
    assert!(first.verdict.is_some());
    daemon.shutdown().await;
}

/// The slot wait is bounded: past `slot_wait` the agent stops with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_wait_ends_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(tmp.path(), &[("limits.max_streaming_sessions", "1")]);
    let daemon = daemon(&s).await;
    let mut holder = client(&daemon).await;
    secret_of(holder.start("holder", false, None).await);
    let (mut cfg, source) = agent(&daemon, "waiter", 5);
    cfg.slot_wait = Duration::from_millis(800);
    let started = Instant::now();
    let err = run_agent(cfg, source, Some(once_signal()), Messages::default())
        .await
        .expect_err("no slot ever frees");
    assert!(
        matches!(err, referee_capture::agent::AgentError::NoSlot { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("TooManySessions"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    daemon.shutdown().await;
}

/// The close code the daemon ended `conn` with, as the agent shows it.
async fn closed_with(conn: &quinn::Connection) -> TransportError {
    let e = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the daemon closes the connection");
    TransportError::from(e)
}

/// Item 7: a protocol violation closed the connection with code 0 ("normal end") and its
/// Error was often lost. Now the Error arrives, then the close with code 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_errors_a_protocol_violation_sends_its_error_then_a_nonzero_close_code() {
    let tmp = tempfile::tempdir().expect("tmp");
    let daemon = daemon(&settings(tmp.path(), &[])).await;
    let mut c = client(&daemon).await;
    // A length prefix, then bytes that are no message.
    let mut junk = 6u32.to_le_bytes().to_vec();
    junk.extend_from_slice(&[0xff; 6]);
    c.send.write_all(&junk).await.expect("write");
    let e = c.error().await;
    assert_eq!(e.code, ErrorCode::ProtocolViolation, "{e:?}");
    let closed = closed_with(&c.conn).await;
    match &closed {
        TransportError::ClosedByPeer { code, name, .. } => {
            assert_eq!(*code, referee_transport::CLOSE_PROTOCOL.into_inner());
            assert_eq!(*name, "protocol violation");
        }
        other => panic!("expected a close by the daemon, got {other:?}"),
    }
    assert!(!closed.is_retryable());
    assert!(
        closed.to_string().contains("code 1 (protocol violation)"),
        "{closed}"
    );
    daemon.shutdown().await;
}

/// Item 7: a control message whose length prefix arrived without its body held the
/// connection 40 s or more. Now it is cut off after `limits.message_read_timeout_s`, with an
/// Error (Timeout) and close code 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_a_half_sent_control_message_is_cut_off_after_the_read_timeout() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(tmp.path(), &[("limits.message_read_timeout_s", "1")]);
    let daemon = daemon(&s).await;
    let mut c = client(&daemon).await;
    let start = Instant::now();
    let whole = encode_msg(&ClientMsg::Ping { nonce: 7 }).expect("encode");
    c.send.write_all(&whole[..4]).await.expect("prefix only");
    let e = c.error().await;
    assert_eq!(e.code, ErrorCode::Timeout, "{e:?}");
    match closed_with(&c.conn).await {
        TransportError::ClosedByPeer { code, .. } => {
            assert_eq!(code, referee_transport::CLOSE_TIMEOUT.into_inner())
        }
        other => panic!("{other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    daemon.shutdown().await;
}

/// Item 7: four frame streams that stall (a header, then nothing) took every reading slot of
/// the connection for good. Now each is given up after `limits.frame_read_timeout_s` and the
/// next frame goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_four_stalled_frame_streams_no_longer_block_the_connection() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(tmp.path(), &[("limits.frame_read_timeout_s", "1")]);
    let daemon = daemon(&s).await;
    let mut c = client(&daemon).await;
    secret_of(c.start("stall", false, None).await);
    let mut stalled = Vec::new();
    for frame in 0..4u64 {
        let header = FrameHeader {
            session_id: "stall".into(),
            frame,
            capture_ts_us: 0,
            encoding: FrameEncoding::Jpeg,
            len: 1000,
        };
        let mut uni = c.conn.open_uni().await.expect("uni");
        uni.write_all(&encode_msg(&header).expect("header"))
            .await
            .expect("header");
        stalled.push(uni);
    }
    c.frame("stall", 4).await;
    let deadline = Instant::now() + Duration::from_secs(6);
    while received(&daemon, "stall") == 0 {
        assert!(
            Instant::now() < deadline,
            "the frame behind the stalled streams never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = c.error().await;
    assert_eq!(e.code, ErrorCode::Timeout, "{e:?}");
    drop(stalled);
    daemon.shutdown().await;
}

/// Item 3: there was no limit on connections. Now one address gets at most
/// `limits.max_connections_per_ip`; the next is closed with code 6 and a reason naming the
/// setting, and the refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_connections_are_capped_per_address_with_a_clear_close() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(tmp.path(), &[("limits.max_connections_per_ip", "2")]);
    let daemon = daemon(&s).await;
    let _a = client(&daemon).await;
    let _b = client(&daemon).await;
    let ep = client_endpoint(&Trust::Fingerprint(daemon.fingerprint.clone())).expect("endpoint");
    let conn = connect(&ep, daemon.quic_addr, "localhost")
        .await
        .expect("the handshake completes, then the daemon closes");
    match closed_with(&conn).await {
        TransportError::ClosedByPeer { code, reason, .. } => {
            assert_eq!(
                code,
                referee_transport::CLOSE_TOO_MANY_CONNECTIONS.into_inner()
            );
            assert!(
                reason.contains("REFEREE_MAX_CONNECTIONS_PER_IP"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A slot given back is free again.
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = client(&daemon).await;
    again.send(ClientMsg::Ping { nonce: 1 }).await;
    assert!(matches!(again.next().await, ServerMsg::Pong { nonce: 1 }));
    daemon.shutdown().await;
}

/// Item 3: 1,000 Signals sent at once started hundreds of decisions (and artifact writers).
/// Now a session gets `limits.signal_burst` new phrases at once; the rest are refused with
/// `TooManySignals`, and a repeated phrase is answered without costing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_work_a_flood_of_signals_is_refused_past_the_session_budget() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = settings(
        tmp.path(),
        &[
            ("limits.signal_burst", "3"),
            ("limits.signals_per_minute", "1"),
        ],
    );
    let daemon = daemon(&s).await;
    let mut c = client(&daemon).await;
    secret_of(c.start("flood", false, None).await);
    for phrase in 0..1000 {
        c.send(signal("flood", phrase)).await;
    }
    // A phrase already accepted goes through again (a resend after a reconnect).
    c.send(signal("flood", 1)).await;
    c.send(ClientMsg::Ping { nonce: 99 }).await;
    let (mut acked, mut refused) = (Vec::new(), 0);
    loop {
        match c.next().await {
            ServerMsg::SignalAck { phrase, .. } => acked.push(phrase),
            ServerMsg::Error(e) if e.code == ErrorCode::TooManySignals => refused += 1,
            ServerMsg::Pong { nonce: 99 } => break,
            _ => {}
        }
    }
    assert_eq!(
        acked,
        [0, 1, 2, 1],
        "only the burst (and the repeat) is taken"
    );
    assert_eq!(refused, 997);
    daemon.shutdown().await;
}

/// `referee bench soak` (the long multi-piste run through network cuts), shortened:
/// every frame is acked, none lost, each phrase gets its verdict, the cuts happened.
#[test]
fn bench_soak_streams_through_network_cuts_without_losing_frames() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_referee"))
        .args(["bench", "soak", "--pistes", "2", "--duration-s", "5"])
        .args(["--phrase-s", "2", "--cut-every-s", "1.5", "--json"])
        .env("REFEREE_LOG_LEVEL", "warn")
        .output()
        .expect("run referee bench soak");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["frames_lost"], 0, "{r}");
    assert_eq!(r["frames_sent"], r["frames_acked"], "{r}");
    assert_eq!(r["frames_acked"], 2 * 75, "{r}");
    let pistes = r["pistes"].as_array().expect("pistes");
    assert!(pistes.iter().all(|p| p["error"].is_null()), "{r}");
    assert!(
        pistes
            .iter()
            .all(|p| p["verdicts"] == p["signals_written"] && p["verdicts"] == 1),
        "{r}"
    );
    let cuts: u64 = pistes.iter().filter_map(|p| p["cuts"].as_u64()).sum();
    assert!(cuts >= 1, "no network cut happened: {r}");
    assert!(r["resources"].as_array().is_some_and(|s| !s.is_empty()));
}
