//! Engine core behaviour without the network or an async runtime: limits, duplicates,
//! reordering, bad frames, timeouts, and the verdict after a signal. A fake pose stage keeps
//! these tests fast; a manual clock makes the idle timeout a matter of moving time, not of
//! sleeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use referee_engine::{
    Admission, Engine, EngineConfig, EngineError, EngineEvent, FailureKind, FrameMeta, ManualClock,
    PhraseSignal, SessionSpec, Verdict,
};
use referee_pose_api::{FrameEncoding, Person, PoseError, PoseEstimator, PreparedFrame};

/// Two standing fencers at fixed places (no weights needed).
use referee_pose_api::testing::{standing_person as person, StandingFencers as FakePose};

fn config() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.rectify.target = (320, 192);
    cfg.signal_wait = Duration::from_secs(5);
    cfg
}

/// An engine with the fake pose stage(s), and the receiving end of its event sink.
fn engine_with(cfg: EngineConfig, workers: usize) -> (Engine, Receiver<EngineEvent>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let estimators: Vec<Box<dyn PoseEstimator>> =
        (0..workers).map(|_| Box::new(FakePose) as _).collect();
    (Engine::start(cfg, estimators, Arc::new(tx)), rx)
}

fn start(id: &str) -> SessionSpec {
    SessionSpec {
        id: id.to_string(),
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

fn header(id: &str, frame: u64, bytes: &[u8]) -> FrameMeta {
    FrameMeta {
        session_id: id.to_string(),
        frame,
        capture_ts_us: 1_000_000 + frame * 66_667,
        encoding: FrameEncoding::Jpeg,
        len: bytes.len() as u32,
    }
}

fn submit(engine: &Engine, id: &str, frame: u64, bytes: Vec<u8>) -> Admission {
    let permit = engine.reserve().expect("permit");
    engine
        .submit(permit, header(id, frame, &bytes), bytes)
        .expect("submit")
}

const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.512s | Lockout period started (0.200s window)\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";

fn signal(id: &str) -> PhraseSignal {
    PhraseSignal {
        session_id: id.to_string(),
        phrase: 0,
        filename: "signal.txt".into(),
        bytes: SIGNAL.as_bytes().to_vec(),
        phrase_start_us: None,
    }
}

/// The next verdict event for session `id` (events of other sessions are skipped).
fn wait_verdict(rx: &Receiver<EngineEvent>, id: &str) -> Verdict {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(EngineEvent::Verdict { verdict, .. }) if verdict.session_id == id => return verdict,
            Ok(_) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                panic!("sink closed before a verdict")
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => panic!("no verdict within 20 s"),
        }
    }
}

#[test]
fn session_limit_and_memory_budget_are_enforced() {
    let mut cfg = config();
    cfg.max_sessions = 1;
    let (engine, _events) = engine_with(cfg, 1);
    engine.open_session(start("a")).expect("first");
    match engine.open_session(start("b")) {
        Err(EngineError::TooManySessions { active: 1, max: 1 }) => {}
        other => panic!(
            "expected TooManySessions, got {:?}",
            other.map(|s| s.id().to_string())
        ),
    }
    match engine.open_session(start("a")) {
        Err(EngineError::SessionExists(id)) => assert_eq!(id, "a"),
        other => panic!(
            "expected SessionExists, got {:?}",
            other.map(|s| s.id().to_string())
        ),
    }
    engine.shutdown();

    let mut cfg = config();
    cfg.max_memory_bytes = 1024 * 1024;
    let (engine, _events) = engine_with(cfg, 1);
    let mut big = start("big");
    big.width = 3840;
    big.height = 2160;
    let err = engine.open_session(big).err().expect("over budget");
    assert!(matches!(err, EngineError::MemoryBudget { .. }), "{err}");
    assert!(err.to_string().contains("REFEREE_MAX_STREAMING_MEMORY_MB"));
    engine.shutdown();
}

#[test]
fn bad_session_start_is_refused_with_the_reason() {
    let (engine, _events) = engine_with(config(), 1);
    let mut s = start("ok");
    s.fps = 0.0;
    let err = engine.open_session(s).err().expect("fps 0");
    assert!(err.to_string().contains("fps"), "{err}");
    let mut s = start("bad id/../x");
    s.id = "bad id/../x".into();
    assert!(engine.open_session(s).is_err());
    engine.shutdown();
}

/// Issue #16 item 4: a session id of ".." made the daemon write artifacts outside its output
/// directory. Ids are safe names now; a refused id writes nothing anywhere.
#[test]
fn path_traversal_session_id_dotdot_is_refused() {
    let out = tempfile::tempdir().expect("tempdir");
    let inner = out.path().join("out");
    let mut cfg = config();
    cfg.output_dir = Some(inner.clone());
    let (engine, _events) = engine_with(cfg, 1);
    for id in ["..", ".", ".hidden", "../escape", "a/b", &"x".repeat(129)] {
        let err = engine
            .open_session(start(id))
            .err()
            .unwrap_or_else(|| panic!("{id:?} must be refused"));
        assert!(
            matches!(err, EngineError::BadSessionStart(_)),
            "{id:?}: {err}"
        );
        assert!(err.to_string().contains("session_id"), "{err}");
    }
    engine
        .open_session(start("piste-1.a_b"))
        .expect("a safe id");
    engine.shutdown();
    let escaped: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "out")
        .collect();
    assert!(
        escaped.is_empty(),
        "written outside the output dir: {escaped:?}"
    );
}

#[test]
fn duplicates_out_of_order_and_bad_frames_are_accounted() {
    let (engine, events) = engine_with(config(), 1);
    let session = engine.open_session(start("s1")).expect("open");
    // Out of order, one duplicate, one corrupt frame.
    for f in [3u64, 1, 0, 2, 5, 4] {
        assert_eq!(submit(&engine, "s1", f, jpeg(f as u8)), Admission::Accepted);
    }
    assert_eq!(submit(&engine, "s1", 2, jpeg(2)), Admission::Duplicate);
    let garbage = b"\xff\xd8\xff\xe0 definitely not a jpeg".to_vec();
    assert_eq!(submit(&engine, "s1", 6, garbage), Admission::Accepted);
    // The phrase ends at 0.6 s: at 15 fps its last frame is frame 8.
    for f in 7..9u64 {
        submit(&engine, "s1", f, jpeg(f as u8));
    }
    engine.signal(signal("s1"), engine.now()).expect("signal");
    let v = wait_verdict(&events, "s1");
    let stats = session.counters.snapshot();
    assert_eq!(stats.received, 9, "{stats:?}");
    assert_eq!(stats.duplicates, 1, "{stats:?}");
    assert_eq!(stats.bad_frames, 1, "{stats:?}");
    assert_eq!(stats.processed, 8, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert!(engine.stats().drops()["bad_image"] >= 1);
    let ack = session.received.lock().to_ack();
    assert_eq!(ack.next_expected, 9);
    assert!(ack.received_ranges.is_empty());
    let detail: serde_json::Value = serde_json::from_str(&v.detail_json).expect("detail json");
    assert_eq!(detail["frames_tracked"], 8);
    assert!(v.latency >= Duration::ZERO);
    engine.shutdown();
}

#[test]
fn verdict_waits_for_frames_in_flight() {
    // Two pose workers: frames leave pose out of order and are put back in order.
    let (engine, events) = engine_with(config(), 2);
    engine.open_session(start("s2")).expect("open");
    for f in 0..9u64 {
        submit(&engine, "s2", f, jpeg(f as u8));
    }
    // The signal lands while frames are still in the pipeline.
    engine.signal(signal("s2"), engine.now()).expect("signal");
    let v = wait_verdict(&events, "s2");
    let detail: serde_json::Value = serde_json::from_str(&v.detail_json).expect("json");
    assert_eq!(
        detail["frames_tracked"], 9,
        "every frame up to the phrase end (frame 8 at 15 fps)"
    );
    assert_eq!(engine.stats().verdict_latencies_ms().len(), 1);
    engine.shutdown();
}

#[test]
fn idle_sessions_time_out_and_release_resources() {
    let mut cfg = config();
    cfg.session_timeout = Duration::from_millis(300);
    let clock = Arc::new(ManualClock::new());
    let (tx, events) = crossbeam_channel::unbounded();
    let engine =
        Engine::start_with_clock(cfg, vec![Box::new(FakePose)], Arc::new(tx), clock.clone());
    engine.open_session(start("idle")).expect("open");
    submit(&engine, "idle", 0, jpeg(0));
    // Not idle long enough yet: nothing expires, whatever the wall clock does.
    clock.advance(Duration::from_millis(299));
    assert_eq!(engine.expire_idle_sessions(), 0);
    clock.advance(Duration::from_millis(2));
    assert_eq!(engine.expire_idle_sessions(), 1);
    assert!(engine.sessions().is_empty());
    let mut saw_timeout = false;
    let mut saw_end = false;
    while let Ok(event) = events.recv_timeout(Duration::from_secs(2)) {
        match event {
            EngineEvent::Failure {
                kind: FailureKind::IdleTimeout,
                ..
            } => saw_timeout = true,
            EngineEvent::SessionEnded { .. } => {
                saw_end = true;
                break;
            }
            _ => {}
        }
    }
    assert!(saw_timeout && saw_end);
    // The id is free again.
    engine.open_session(start("idle")).expect("reopen");
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.in_flight() != 0 {
        assert!(
            Instant::now() < deadline,
            "the frame never left the pipeline"
        );
        std::thread::yield_now();
    }
    engine.shutdown();
}

#[test]
fn frames_for_unknown_sessions_and_bad_lengths_are_refused() {
    let (engine, _events) = engine_with(config(), 1);
    let permit = engine.reserve().expect("permit");
    let bytes = jpeg(1);
    let err = engine
        .submit(permit, header("nobody", 0, &bytes), bytes.clone())
        .expect_err("unknown session");
    assert!(matches!(err, EngineError::UnknownSession(_)));
    engine.open_session(start("s3")).expect("open");
    let permit = engine.reserve().expect("permit");
    let mut h = header("s3", 0, &bytes);
    h.len += 5;
    let err = engine.submit(permit, h, bytes).expect_err("length");
    assert!(matches!(err, EngineError::LengthMismatch { .. }), "{err}");
    // Permits came back: the pipeline is empty.
    assert_eq!(engine.in_flight(), 0);
    engine.shutdown();
}

#[test]
fn several_pistes_share_the_pose_stage_and_each_gets_its_verdict() {
    let (engine, events) = engine_with(config(), 1);
    let ids = ["p1", "p2", "p3"];
    for id in ids {
        let mut s = start(id);
        s.piste = id.to_string();
        engine.open_session(s).expect("open");
    }
    // Interleaved, as three agents streaming at once would deliver them.
    for f in 0..9u64 {
        for id in ids {
            submit(&engine, id, f, jpeg(f as u8));
        }
    }
    for id in ids {
        engine.signal(signal(id), engine.now()).expect("signal");
    }
    let mut verdicts = std::collections::HashMap::new();
    while verdicts.len() < ids.len() {
        match events.recv_timeout(Duration::from_secs(20)) {
            Ok(EngineEvent::Verdict { verdict, .. }) => {
                verdicts.insert(verdict.session_id.clone(), verdict);
            }
            Ok(_) => {}
            Err(e) => panic!("only {} of 3 verdicts: {e}", verdicts.len()),
        }
    }
    for id in ids {
        let v = &verdicts[id];
        assert_eq!(v.session_id, id);
        assert_eq!(v.piste, id);
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

#[test]
fn a_repeated_signal_gets_the_same_verdict_once_decided() {
    let (engine, events) = engine_with(config(), 1);
    engine.open_session(start("again")).expect("open");
    for f in 0..9u64 {
        submit(&engine, "again", f, jpeg(f as u8));
    }
    engine
        .signal(signal("again"), engine.now())
        .expect("signal");
    let first = wait_verdict(&events, "again");
    // The agent lost its connection before the verdict reached it and sends the signal again.
    engine
        .signal(signal("again"), engine.now())
        .expect("signal again");
    let second = wait_verdict(&events, "again");
    assert_eq!(first, second, "the same verdict, not a new decision");
    assert_eq!(engine.verdicts(), 1);
    assert_eq!(engine.stats().verdict_latencies_ms().len(), 1);
    engine.shutdown();
}

/// A left fencer whose place is written into the frame itself (the blue level of a uniform
/// image), so a clip's motion travels with its frames whatever their pacing or declared rate.
struct MovingPose;

impl PoseEstimator for MovingPose {
    fn input_size(&self) -> (usize, usize) {
        (320, 192)
    }
    fn estimate(&mut self, batch: &[PreparedFrame]) -> Result<Vec<Vec<Person>>, PoseError> {
        Ok(batch
            .iter()
            .map(|f| {
                let (w, h) = (f.width as f32, f.height as f32);
                let plane = f.width * f.height;
                let centre = f.height / 2 * f.width + f.width / 2;
                let blue = f.chw[2 * plane + centre];
                vec![
                    person(w * (0.2 + 0.3 * blue), h * 0.5, h * 0.6),
                    person(w * 0.75, h * 0.5, h * 0.6),
                ]
            })
            .collect())
    }
}

fn uniform_jpeg(blue: u8) -> Vec<u8> {
    let (w, h) = (320u16, 180u16);
    let rgb: Vec<u8> = (0..w as usize * h as usize)
        .flat_map(|_| [90, 90, blue])
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .expect("encode test jpeg");
    out
}

/// Streams the same clip (a left attack captured at 15 fps: frame k stamped k/15 s after the
/// first) to a session that declares `declared_fps`, and returns the verdict.
fn verdict_for_clip(declared_fps: f32, frames: &[u64]) -> referee_rules::Decision {
    let (tx, rx) = crossbeam_channel::unbounded();
    let engine = Engine::start(config(), vec![Box::new(MovingPose)], Arc::new(tx));
    let mut spec = start("clip");
    spec.fps = declared_fps;
    let session = engine.open_session(spec).expect("open");
    for &k in frames {
        let bytes = uniform_jpeg((k * 20).min(255) as u8);
        let meta = FrameMeta {
            session_id: "clip".into(),
            frame: k,
            capture_ts_us: 5_000_000 + k * 1_000_000 / 15,
            encoding: FrameEncoding::Jpeg,
            len: bytes.len() as u32,
        };
        let permit = engine.reserve().expect("permit");
        engine.submit(permit, meta, bytes).expect("submit");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while session
        .counters
        .processed
        .load(std::sync::atomic::Ordering::Relaxed)
        < frames.len() as u64
    {
        assert!(Instant::now() < deadline, "frames not processed");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.signal(signal("clip"), engine.now()).expect("signal");
    let v = wait_verdict(&rx, "clip");
    engine.shutdown();
    v.decision
}

/// Issue #16 item 5: phrase time was frame_number / declared fps, so the same clip gave other
/// verdicts when the agent declared another rate (or paced differently). Time now comes from
/// the frames' capture stamps, the phrase's first frame at t = 0.
#[test]
fn time_from_the_wrong_clock_same_clip_same_verdict_at_any_declared_fps() {
    let clip: Vec<u64> = (0..12).collect();
    let at_15 = verdict_for_clip(15.0, &clip);
    for declared in [10.0, 60.0] {
        let other = verdict_for_clip(declared, &clip);
        assert_eq!(other, at_15, "declared {declared} fps vs 15 fps");
    }
}
