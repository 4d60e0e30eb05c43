//! Failure 3 of issue 16: 1,000 signals in a millisecond started one artifact thread per
//! verdict (~300 at once). Now a fixed pool writes them: never more writer threads than
//! `artifact_workers`, and every phrase is written, failed or refused (counted), none lost.
//!
//! Alone in its test binary so that the writer threads counted are this engine's only.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use referee_engine::{Engine, EngineConfig, EngineEvent, FrameMeta, PhraseSignal, SessionSpec};
use referee_pose_api::testing::StandingFencers;
use referee_pose_api::{FrameEncoding, PoseEstimator};

const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";

/// Threads of this process whose name starts with the artifact writers' (15 characters are
/// kept by the kernel). Threads a writer starts inherit its name: saving a workbook uses one
/// short-lived thread per worksheet.
fn writer_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with("referee-artifac"))
        })
        .count()
}

fn jpeg(seed: u8) -> Vec<u8> {
    let (w, h) = (320u16, 180u16);
    let rgb: Vec<u8> = (0..w as usize * h as usize)
        .flat_map(|i| [(i % 256) as u8, seed, 90])
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 80)
        .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .expect("encode test jpeg");
    out
}

#[test]
fn unbounded_artifacts_many_signals_use_a_fixed_pool_and_none_is_lost() {
    if !std::path::Path::new("/proc/self/task").exists() {
        assert!(
            !referee_test_support::in_ci(),
            "/proc/self/task is needed to count threads"
        );
        eprintln!("skipped: no /proc/self/task to count threads");
        return;
    }
    let out = tempfile::tempdir().expect("tmp");
    let mut cfg = EngineConfig::default();
    cfg.rectify.target = (320, 192);
    cfg.output_dir = Some(out.path().to_path_buf());
    cfg.artifact_workers = 2;
    cfg.artifact_queue = 2;
    let (tx, events) = crossbeam_channel::unbounded();
    let estimators: Vec<Box<dyn PoseEstimator>> = vec![Box::new(StandingFencers)];
    let engine = Engine::start(cfg, estimators, Arc::new(tx));

    // Count the writer threads the whole time.
    let (stop, most) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let sampler = {
        let (stop, most) = (stop.clone(), most.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(writer_threads(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    engine
        .open_session(SessionSpec {
            id: "flood".into(),
            fps: 15.0,
            width: 320,
            height: 180,
            piste: "1".into(),
            camera: "test".into(),
            undistort: None,
            resume: false,
        })
        .expect("open");
    for f in 0..12u64 {
        let bytes = jpeg(f as u8);
        let permit = engine.reserve().expect("permit");
        let meta = FrameMeta {
            session_id: "flood".into(),
            frame: f,
            capture_ts_us: 1_000_000 + f * 66_667,
            encoding: FrameEncoding::Jpeg,
            len: bytes.len() as u32,
        };
        engine.submit(permit, meta, bytes).expect("submit");
    }
    const PHRASES: u32 = 150;
    for phrase in 0..PHRASES {
        let signal = PhraseSignal {
            session_id: "flood".into(),
            phrase,
            filename: "signal.txt".into(),
            bytes: SIGNAL.as_bytes().to_vec(),
            phrase_start_us: None,
        };
        engine.signal(signal, engine.now()).expect("signal");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut verdicts = 0;
    while verdicts < PHRASES {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(EngineEvent::Verdict {
                repeated: false, ..
            }) => verdicts += 1,
            Ok(_) => {}
            Err(e) => panic!("{verdicts} of {PHRASES} verdicts, then {e}"),
        }
    }
    engine.shutdown();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");

    // Two writers, each with at most one helper thread per worksheet while saving a workbook.
    let bound = 2 * (1 + referee_engine::artifacts::WORKBOOK_SHEETS.len());
    let most = most.load(Ordering::Relaxed);
    assert!(
        (1..=bound).contains(&most),
        "{most} artifact writer threads at once (at most {bound})"
    );
    assert_eq!(writer_threads(), 0, "the writers are joined at shutdown");
    let h = engine.artifacts();
    eprintln!("{PHRASES} verdicts: at most {most} writer threads; {h:?}");
    assert_eq!(
        h.written + h.failed + h.refused,
        PHRASES as u64,
        "every phrase is accounted for: {h:?}"
    );
    assert_eq!(h.failed, 0, "{h:?}");
    // What was refused is missing from disk, nothing else is.
    let written = std::fs::read_dir(out.path().join("flood"))
        .expect("session folder")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("phrase-"))
        .count();
    assert_eq!(written as u64, h.written, "{h:?}");
}
