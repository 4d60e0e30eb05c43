//! The phrase recorder with the stand-in pose estimator (no weights): a phrase is recorded and
//! replays to the same verdict; the referee's call arriving later (a longer log, the page) is
//! stored in the recording and never changes the verdict; a continuous bout gives one
//! recording per phrase holding the frames since the previous phrase's end, and the bout
//! replays to the same verdicts; retention deletes
//! the oldest recording once the size limit is hit.

use std::path::Path;
use std::time::Duration;

use referee_config::Settings;
use referee_daemon::offline::{OfflineFrame, OfflineSession};
use referee_daemon::record::{attach, settings_snapshot, Recorder, RecorderConfig};
use referee_daemon::replay::replay_bout;
use referee_daemon::Core;
use referee_engine::{EngineConfig, PhraseSignal};
use referee_pose_api::testing::StandingFencers;
use referee_pose_api::FrameEncoding;
use referee_record::layout::phrase_path;
use referee_record::{compare_verdicts, CallOrigin, CallWinner, ModelId, Recording, Retention};
use referee_transport::messages::{ServerMsg, SessionStart, VerdictReport};
use tokio::sync::mpsc;

const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.512s | Lockout period started (0.200s window)\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";
const CALL: &str = "Awaiting manual winner selection\n[2025-10-20 20:59:27] Manual selection winner: Right Fencer (Green Lamp)\n";
const STEP_US: u64 = 66_667;

fn engine_config() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.rectify.target = (320, 192);
    cfg.signal_wait = Duration::from_secs(5);
    cfg
}

fn core() -> Core {
    Core::start(engine_config(), vec![Box::new(StandingFencers)])
}

fn recorder(root: &Path, retention: Retention) -> Recorder {
    Recorder::start(RecorderConfig {
        root: root.to_path_buf(),
        queue_frames: 1024,
        retention,
        model: ModelId::stand_in("stand-in"),
        settings: settings_snapshot(&Settings::default()),
        engine_version: "test".into(),
    })
    .expect("recorder")
}

const NO_LIMIT: Retention = Retention {
    max_bytes: None,
    max_age: None,
};

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
        .expect("jpeg");
    out
}

fn start(id: &str) -> SessionStart {
    SessionStart {
        session_id: id.into(),
        fps: 15.0,
        width: 320,
        height: 180,
        piste: "7".into(),
        camera: "test".into(),
        undistort: None,
        resume: false,
        resume_secret: None,
    }
}

fn frame(n: u64) -> OfflineFrame {
    OfflineFrame {
        encoding: FrameEncoding::Jpeg,
        bytes: jpeg(n as u8),
        capture_ts_us: 1_000_000 + n * STEP_US,
    }
}

fn signal(id: &str, phrase: u32, text: &str, phrase_start_us: Option<u64>) -> PhraseSignal {
    PhraseSignal {
        session_id: id.into(),
        phrase,
        filename: "signal.txt".into(),
        bytes: text.as_bytes().to_vec(),
        phrase_start_us,
    }
}

/// A whole phrase through `core` in a session of its own.
async fn phrase(core: &Core, id: &str, frames: u64) -> VerdictReport {
    let mut s = OfflineSession::open(core, start(id)).expect("session");
    for n in 0..frames {
        s.push(frame(n)).await.expect("push");
    }
    s.finish(
        "signal.txt",
        SIGNAL.as_bytes().to_vec(),
        Duration::from_secs(30),
    )
    .await
    .expect("verdict")
}

/// A session kept open, with its agent's inbox.
fn open(core: &Core, id: &str) -> mpsc::UnboundedReceiver<ServerMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    core.engine
        .open_session(referee_daemon::map::session_spec(start(id)))
        .expect("open");
    core.router.attach(id, tx);
    rx
}

async fn submit(core: &Core, id: &str, n: u64) {
    let f = frame(n);
    let meta = referee_engine::FrameMeta {
        session_id: id.into(),
        frame: n,
        capture_ts_us: f.capture_ts_us,
        encoding: f.encoding,
        len: f.bytes.len() as u32,
    };
    let permit = core.reserve().await.expect("permit");
    core.submit(permit, meta, f.bytes).expect("submit");
}

async fn next_verdict(rx: &mut mpsc::UnboundedReceiver<ServerMsg>) -> VerdictReport {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(ServerMsg::Verdict(v))) => return v,
            Ok(Some(_)) => continue,
            other => panic!("no verdict: {other:?}"),
        }
    }
}

fn detail(v: &VerdictReport) -> serde_json::Value {
    serde_json::from_str(&v.detail_json).expect("verdict json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_phrase_replays_to_the_same_verdict() {
    let tmp = tempfile::tempdir().expect("tmp");
    let core = core();
    let rec = recorder(tmp.path(), NO_LIMIT);
    attach(&core, rec.clone());
    let live = phrase(&core, "one", 20).await;
    rec.flush();
    let path = phrase_path(tmp.path(), "one", 0);
    let recording = Recording::open(&path).expect("complete recording");
    let m = &recording.manifest;
    assert!(m.complete && m.incomplete_reason.is_none(), "{m:?}");
    assert_eq!((m.frames, m.fps, m.width, m.height), (20, 15.0, 320, 180));
    assert_eq!(m.verdict, detail(&live));
    assert_eq!(recording.signal, SIGNAL.as_bytes());
    assert_eq!(
        m.pose_model.sha256, None,
        "a stand-in has no weights to hash"
    );
    let numbers: Vec<u64> = recording.frames.iter().map(|(f, _)| f.frame).collect();
    assert_eq!(numbers, (0..20).collect::<Vec<_>>());
    assert_eq!(recording.frames[3].1, jpeg(3), "bytes exactly as received");
    assert_eq!(recording.frames[3].0.capture_ts_us, 1_000_000 + 3 * STEP_US);
    assert!(recording.frames[3].0.arrival_us > 0);

    // The same frames and log through a fresh engine: the same verdict.
    let fresh = core_without_recorder();
    let replayed = referee_daemon::replay::replay(&fresh, &recording, Duration::from_secs(30))
        .await
        .expect("replay");
    let diffs = compare_verdicts(&m.verdict, &detail(&replayed));
    assert!(diffs.is_empty(), "{diffs:?}");
    // A frame fewer cannot matter here: the stand-in sees the same two fencers in every frame.
    let mut shorter = recording.clone();
    shorter.frames.remove(5);
    let same = referee_daemon::replay::replay(&fresh, &shorter, Duration::from_secs(30))
        .await
        .expect("replay");
    assert!(compare_verdicts(&m.verdict, &detail(&same)).is_empty());
    // A log with the hit elsewhere does: the differences are named.
    let mut moved = recording.clone();
    moved.signal = SIGNAL
        .replace(" 0.500s | HIT", " 0.300s | HIT")
        .into_bytes();
    let other = referee_daemon::replay::replay(&fresh, &moved, Duration::from_secs(30))
        .await
        .expect("replay");
    let diffs = compare_verdicts(&m.verdict, &detail(&other));
    assert!(
        diffs.iter().any(|d| d.field == "verdict.features.hit_t"),
        "{diffs:?}"
    );
    fresh.shutdown();
    core.shutdown();
}

fn core_without_recorder() -> Core {
    core()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_call_is_stored_in_the_recording_and_never_changes_the_verdict() {
    let tmp = tempfile::tempdir().expect("tmp");
    let core = core();
    let rec = recorder(tmp.path(), NO_LIMIT);
    attach(&core, rec.clone());
    let mut inbox = open(&core, "watch");
    for n in 0..15 {
        submit(&core, "watch", n).await;
    }
    core.signal(signal("watch", 0, SIGNAL, None), core.engine.now())
        .expect("signal");
    let first = next_verdict(&mut inbox).await;
    rec.flush();
    let path = phrase_path(tmp.path(), "watch", 0);
    let before = Recording::open(&path).expect("recorded");
    assert_eq!(
        before.manifest.referee_call, None,
        "the log had no call yet"
    );

    // Watch mode sends the log again once the referee's selection is in it.
    let longer = format!("{SIGNAL}{CALL}");
    core.signal(signal("watch", 0, &longer, None), core.engine.now())
        .expect("signal again");
    let again = next_verdict(&mut inbox).await;
    assert_eq!(
        detail(&again),
        detail(&first),
        "the same verdict, answered again"
    );
    rec.flush();
    let after = Recording::open(&path).expect("rewritten");
    let call = after.manifest.referee_call.clone().expect("call stored");
    assert_eq!(
        (call.winner, call.origin),
        (CallWinner::Right, CallOrigin::Log)
    );
    assert_eq!(call.at.as_deref(), Some("2025-10-20 20:59:27"));
    assert_eq!(after.manifest.verdict, before.manifest.verdict);
    assert_eq!(
        after.signal,
        SIGNAL.as_bytes(),
        "the log decided on is kept"
    );
    assert_eq!(after.frames.len(), before.frames.len());

    // From the page: replaces the stored call; the verdict stays.
    core.history
        .page_call("watch", 0, CallWinner::NoTouch)
        .expect("phrase in the history");
    rec.flush();
    let paged = Recording::open(&path).expect("rewritten again");
    let call = paged.manifest.referee_call.clone().expect("call");
    assert_eq!(
        (call.winner, call.origin),
        (CallWinner::NoTouch, CallOrigin::Page)
    );
    assert_eq!(paged.manifest.verdict, before.manifest.verdict);
    core.engine.end_session("watch").expect("end");
    core.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_bout_gives_one_recording_per_phrase() {
    let tmp = tempfile::tempdir().expect("tmp");
    let core = core();
    let rec = recorder(tmp.path(), NO_LIMIT);
    attach(&core, rec.clone());
    let mut inbox = open(&core, "bout");
    for n in 0..20 {
        submit(&core, "bout", n).await;
    }
    core.signal(signal("bout", 0, SIGNAL, None), core.engine.now())
        .expect("signal 0");
    next_verdict(&mut inbox).await;
    for n in 20..40 {
        submit(&core, "bout", n).await;
    }
    let start_us = 1_000_000 + 25 * STEP_US;
    core.signal(signal("bout", 1, SIGNAL, Some(start_us)), core.engine.now())
        .expect("signal 1");
    next_verdict(&mut inbox).await;
    rec.flush();
    let frames = |phrase| -> Vec<u64> {
        let r = Recording::open(&phrase_path(tmp.path(), "bout", phrase)).expect("recorded");
        assert_eq!(r.manifest.phrase, phrase);
        r.frames.iter().map(|(f, _)| f.frame).collect()
    };
    // Phrase 0 ends 0.6 s after frame 0: frame 9 (at 0.600003 s) is the first after it.
    assert_eq!(frames(0), (0..20).collect::<Vec<_>>());
    assert_eq!(frames(1), (9..40).collect::<Vec<_>>());
    let r1 = Recording::open(&phrase_path(tmp.path(), "bout", 1)).expect("recorded");
    assert_eq!(r1.manifest.phrase_start_us, Some(start_us));
    // Replayed as the bout it was (phrase 0, then 1 in the same session): both identical.
    // Phrase 1 alone would start a fresh session clock at its first frame, and its times
    // would differ in the last digits.
    let r0 = Recording::open(&phrase_path(tmp.path(), "bout", 0)).expect("recorded");
    let fresh = core_without_recorder();
    let replayed = replay_bout(&fresh, &[&r0, &r1], Duration::from_secs(30))
        .await
        .expect("replay");
    for (rec, v) in [&r0, &r1].into_iter().zip(&replayed) {
        let diffs = compare_verdicts(&rec.manifest.verdict, &detail(v));
        assert!(
            diffs.is_empty(),
            "phrase {}: {diffs:?}",
            rec.manifest.phrase
        );
    }
    fresh.shutdown();
    core.engine.end_session("bout").expect("end");
    core.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_oldest_recording_when_the_limit_is_hit() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Measure one recording, then allow a little over two.
    let probe = tempfile::tempdir().expect("probe");
    {
        let core = core();
        let rec = recorder(probe.path(), NO_LIMIT);
        attach(&core, rec.clone());
        phrase(&core, "p", 10).await;
        rec.flush();
        core.shutdown();
    }
    let one = std::fs::metadata(phrase_path(probe.path(), "p", 0))
        .expect("probe recording")
        .len();
    let core = core();
    let limit = Retention {
        max_bytes: Some(one * 5 / 2),
        max_age: None,
    };
    let rec = recorder(tmp.path(), limit);
    attach(&core, rec.clone());
    for id in ["a", "b"] {
        phrase(&core, id, 10).await;
        rec.flush();
        // Distinct modification times, oldest first.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(phrase_path(tmp.path(), "a", 0).exists());
    phrase(&core, "c", 10).await;
    rec.flush();
    assert!(!phrase_path(tmp.path(), "a", 0).exists(), "the oldest went");
    assert!(
        !tmp.path().join("a").exists(),
        "with its empty session folder"
    );
    assert!(phrase_path(tmp.path(), "b", 0).exists());
    assert!(phrase_path(tmp.path(), "c", 0).exists());
    core.shutdown();
}
