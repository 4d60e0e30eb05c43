//! Engine core behaviour without the network: limits, duplicates, reordering, bad frames,
//! timeouts, and the verdict after a signal. A fake pose stage keeps these tests fast.

use std::time::{Duration, Instant};

use referee_engine::{Admission, Engine, EngineConfig, EngineError};
use referee_models::{Person, PoseEstimator, PreparedFrame};
use referee_transport::messages::{
    ErrorCode, FrameEncoding, FrameHeader, ServerMsg, SessionStart, Signal,
};
use tokio::sync::mpsc;

/// Two standing fencers at fixed places, a referee at the bottom edge.
struct FakePose;

fn person(cx: f32, cy: f32, h: f32) -> Person {
    let mut keypoints = [[0.0f32; 3]; 17];
    for (k, kp) in keypoints.iter_mut().enumerate() {
        // Head at the top, ankles at the bottom; a plausible vertical spread.
        let frac = k as f32 / 16.0;
        *kp = [
            cx + if k % 2 == 0 { -5.0 } else { 5.0 },
            cy - h / 2.0 + frac * h,
            0.9,
        ];
    }
    Person {
        score: 0.9,
        bbox: [cx - h / 4.0, cy - h / 2.0, cx + h / 4.0, cy + h / 2.0],
        keypoints,
    }
}

impl PoseEstimator for FakePose {
    fn input_size(&self) -> (usize, usize) {
        (320, 192)
    }
    fn estimate(
        &mut self,
        batch: &[PreparedFrame],
    ) -> Result<Vec<Vec<Person>>, referee_models::ModelError> {
        Ok(batch
            .iter()
            .map(|f| {
                let w = f.width as f32;
                let h = f.height as f32;
                vec![
                    person(w * 0.3, h * 0.5, h * 0.6),
                    person(w * 0.7, h * 0.5, h * 0.6),
                ]
            })
            .collect())
    }
}

fn config() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.rectify.target = (320, 192);
    cfg.signal_wait = Duration::from_secs(5);
    cfg
}

fn start(id: &str) -> SessionStart {
    SessionStart {
        session_id: id.to_string(),
        fps: 15.0,
        width: 320,
        height: 180,
        piste: "1".into(),
        camera: "test".into(),
        undistort: None,
        resume: false,
    }
}

fn jpeg(seed: u8) -> Vec<u8> {
    let (w, h) = (320u16, 180u16);
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h {
        for x in 0..w {
            rgb.extend_from_slice(&[(x as u8).wrapping_add(seed), y as u8, seed]);
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 80)
        .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .expect("encode test jpeg");
    out
}

fn header(id: &str, frame: u64, bytes: &[u8]) -> FrameHeader {
    FrameHeader {
        session_id: id.to_string(),
        frame,
        capture_ts_us: 1_000_000 + frame * 66_667,
        encoding: FrameEncoding::Jpeg,
        len: bytes.len() as u32,
    }
}

async fn submit(engine: &Engine, id: &str, frame: u64, bytes: Vec<u8>) -> Admission {
    let permit = engine.reserve().await.expect("permit");
    engine
        .submit(permit, header(id, frame, &bytes), bytes)
        .expect("submit")
}

const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.512s | Lockout period started (0.200s window)\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";

fn signal(id: &str) -> Signal {
    Signal {
        session_id: id.to_string(),
        phrase: 0,
        filename: "signal.txt".into(),
        bytes: SIGNAL.as_bytes().to_vec(),
        phrase_start_us: None,
    }
}

async fn wait_verdict(rx: &mut mpsc::UnboundedReceiver<ServerMsg>) -> ServerMsg {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(m @ ServerMsg::Verdict(_))) => return m,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("outbox closed before a verdict"),
            Err(_) => panic!("no verdict within 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limit_and_memory_budget_are_enforced() {
    let mut cfg = config();
    cfg.max_sessions = 1;
    let engine = Engine::start(cfg, Box::new(FakePose));
    let (tx, _rx) = mpsc::unbounded_channel();
    engine.open_session(start("a"), tx.clone()).expect("first");
    match engine.open_session(start("b"), tx.clone()) {
        Err(EngineError::TooManySessions { active: 1, max: 1 }) => {}
        other => panic!(
            "expected TooManySessions, got {:?}",
            other.map(|s| s.id().to_string())
        ),
    }
    match engine.open_session(start("a"), tx.clone()) {
        Err(EngineError::SessionExists(id)) => assert_eq!(id, "a"),
        other => panic!(
            "expected SessionExists, got {:?}",
            other.map(|s| s.id().to_string())
        ),
    }
    engine.shutdown();

    let mut cfg = config();
    cfg.max_memory_bytes = 1024 * 1024;
    let engine = Engine::start(cfg, Box::new(FakePose));
    let mut big = start("big");
    big.width = 3840;
    big.height = 2160;
    let err = engine.open_session(big, tx).err().expect("over budget");
    assert!(matches!(err, EngineError::MemoryBudget { .. }), "{err}");
    assert!(err.to_string().contains("REFEREE_MAX_STREAMING_MEMORY_MB"));
    assert_eq!(err.to_msg(None).code, ErrorCode::MemoryBudget);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_start_is_refused_with_the_reason() {
    let engine = Engine::start(config(), Box::new(FakePose));
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut s = start("ok");
    s.fps = 0.0;
    let err = engine.open_session(s, tx.clone()).err().expect("fps 0");
    assert!(err.to_string().contains("fps"), "{err}");
    let mut s = start("bad id/../x");
    s.session_id = "bad id/../x".into();
    assert!(engine.open_session(s, tx).is_err());
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_out_of_order_and_bad_frames_are_accounted() {
    let engine = Engine::start(config(), Box::new(FakePose));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let session = engine.open_session(start("s1"), tx).expect("open");
    // Out of order, one duplicate, one corrupt frame.
    for f in [3u64, 1, 0, 2, 5, 4] {
        assert_eq!(
            submit(&engine, "s1", f, jpeg(f as u8)).await,
            Admission::Accepted
        );
    }
    assert_eq!(
        submit(&engine, "s1", 2, jpeg(2)).await,
        Admission::Duplicate
    );
    let garbage = b"\xff\xd8\xff\xe0 definitely not a jpeg".to_vec();
    assert_eq!(submit(&engine, "s1", 6, garbage).await, Admission::Accepted);
    // The phrase ends at 0.6 s: at 15 fps its last frame is frame 8.
    for f in 7..9u64 {
        submit(&engine, "s1", f, jpeg(f as u8)).await;
    }
    engine.signal(signal("s1"), Instant::now()).expect("signal");
    let ServerMsg::Verdict(v) = wait_verdict(&mut rx).await else {
        unreachable!()
    };
    let stats = session.counters.snapshot();
    assert_eq!(stats.received, 9, "{stats:?}");
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    assert_eq!(stats.bad_frames, 1, "{stats:?}");
    assert_eq!(stats.processed, 8, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert!(engine.stats().drops()["bad_image"] >= 1);
    let ack = session.acks.lock().to_ack();
    assert_eq!(ack.next_expected, 9);
    assert!(ack.received_ranges.is_empty());
    let detail: serde_json::Value = serde_json::from_str(&v.detail_json).expect("detail json");
    assert_eq!(detail["frames_tracked"], 8);
    assert!(v.latency_ms >= 0.0);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdict_waits_for_frames_in_flight() {
    // Two pose workers: frames leave pose out of order and are put back in order.
    let engine = Engine::start_workers(config(), vec![Box::new(FakePose), Box::new(FakePose)]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    engine.open_session(start("s2"), tx).expect("open");
    for f in 0..9u64 {
        submit(&engine, "s2", f, jpeg(f as u8)).await;
    }
    // The signal lands while frames are still in the pipeline.
    engine.signal(signal("s2"), Instant::now()).expect("signal");
    let ServerMsg::Verdict(v) = wait_verdict(&mut rx).await else {
        unreachable!()
    };
    let detail: serde_json::Value = serde_json::from_str(&v.detail_json).expect("json");
    assert_eq!(
        detail["frames_tracked"], 9,
        "every frame up to the phrase end (frame 8 at 15 fps)"
    );
    assert_eq!(engine.stats().verdict_latencies_ms().len(), 1);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_time_out_and_release_resources() {
    let mut cfg = config();
    cfg.session_timeout = Duration::from_millis(300);
    let engine = Engine::start(cfg, Box::new(FakePose));
    let (tx, mut rx) = mpsc::unbounded_channel();
    engine.open_session(start("idle"), tx).expect("open");
    submit(&engine, "idle", 0, jpeg(0)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.sessions().is_empty() {
        assert!(Instant::now() < deadline, "session never timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut saw_timeout = false;
    let mut saw_end = false;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        match msg {
            ServerMsg::Error(e) if e.code == ErrorCode::Timeout => saw_timeout = true,
            ServerMsg::SessionEnded { .. } => {
                saw_end = true;
                break;
            }
            _ => {}
        }
    }
    assert!(saw_timeout && saw_end);
    // The id is free again.
    let (tx, _rx) = mpsc::unbounded_channel();
    engine.open_session(start("idle"), tx).expect("reopen");
    assert_eq!(engine.in_flight(), 0);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_for_unknown_sessions_and_bad_lengths_are_refused() {
    let engine = Engine::start(config(), Box::new(FakePose));
    let permit = engine.reserve().await.expect("permit");
    let bytes = jpeg(1);
    let err = engine
        .submit(permit, header("nobody", 0, &bytes), bytes.clone())
        .expect_err("unknown session");
    assert!(matches!(err, EngineError::UnknownSession(_)));
    let (tx, _rx) = mpsc::unbounded_channel();
    engine.open_session(start("s3"), tx).expect("open");
    let permit = engine.reserve().await.expect("permit");
    let mut h = header("s3", 0, &bytes);
    h.len += 5;
    let err = engine.submit(permit, h, bytes).expect_err("length");
    assert!(matches!(err, EngineError::LengthMismatch { .. }), "{err}");
    // Permits came back: the pipeline is empty.
    assert_eq!(engine.in_flight(), 0);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_pistes_share_the_pose_stage_and_each_gets_its_verdict() {
    let engine = Engine::start(config(), Box::new(FakePose));
    let mut outboxes = Vec::new();
    for id in ["p1", "p2", "p3"] {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = start(id);
        s.piste = id.to_string();
        engine.open_session(s, tx).expect("open");
        outboxes.push((id, rx));
    }
    // Interleaved, as three agents streaming at once would deliver them.
    for f in 0..9u64 {
        for (id, _) in &outboxes {
            submit(&engine, id, f, jpeg(f as u8)).await;
        }
    }
    for (id, _) in &outboxes {
        engine.signal(signal(id), Instant::now()).expect("signal");
    }
    for (id, rx) in &mut outboxes {
        let ServerMsg::Verdict(v) = wait_verdict(rx).await else {
            unreachable!()
        };
        assert_eq!(v.session_id, *id);
        assert_eq!(v.piste, *id);
        let detail: serde_json::Value = serde_json::from_str(&v.detail_json).expect("json");
        assert_eq!(detail["frames_tracked"], 9, "{id}: {detail}");
    }
    assert_eq!(
        engine
            .stats()
            .frames_processed
            .load(std::sync::atomic::Ordering::Relaxed),
        27
    );
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_signal_gets_the_same_verdict_once_decided() {
    let engine = Engine::start(config(), Box::new(FakePose));
    let (tx, mut rx) = mpsc::unbounded_channel();
    engine.open_session(start("again"), tx).expect("open");
    for f in 0..9u64 {
        submit(&engine, "again", f, jpeg(f as u8)).await;
    }
    engine
        .signal(signal("again"), Instant::now())
        .expect("signal");
    let ServerMsg::Verdict(first) = wait_verdict(&mut rx).await else {
        unreachable!()
    };
    // The agent lost its connection before the verdict reached it and sends the signal again.
    engine
        .signal(signal("again"), Instant::now())
        .expect("signal again");
    let ServerMsg::Verdict(second) = wait_verdict(&mut rx).await else {
        unreachable!()
    };
    assert_eq!(first, second, "the same verdict, not a new decision");
    assert_eq!(engine.verdicts(), 1);
    assert_eq!(engine.stats().verdict_latencies_ms().len(), 1);
    engine.shutdown();
}
