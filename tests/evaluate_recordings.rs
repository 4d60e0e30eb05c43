//! `referee evaluate` over a folder of phrase recordings: phrases recorded by the daemon's
//! engine with the stand-in estimator, given referee's calls from the page (left, right,
//! no touch, none), plus a `.partial` file and a tar cut before its manifest. The harness
//! scores the labelled ones on the verdicts the daemon decided live, and counts the rest.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use referee_config::Settings;
use referee_daemon::offline::{OfflineFrame, OfflineSession};
use referee_daemon::record::{attach, settings_snapshot, Recorder, RecorderConfig};
use referee_daemon::Core;
use referee_engine::EngineConfig;
use referee_pose_api::testing::StandingFencers;
use referee_pose_api::FrameEncoding;
use referee_record::layout::phrase_path;
use referee_record::CallWinner;
use referee_record::{ModelId, Recording, Retention};
use referee_transport::messages::SessionStart;

const REFEREE: &str = env!("CARGO_BIN_EXE_referee");
const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.512s | Lockout period started (0.200s window)\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";

fn jpeg(seed: u8) -> Vec<u8> {
    let (w, h) = (160u16, 90u16);
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
        width: 160,
        height: 90,
        piste: "7".into(),
        camera: "test".into(),
        undistort: None,
        resume: false,
        resume_secret: None,
    }
}

/// Records one phrase per `(session, call)` under `root` and stores each call from the page.
async fn record(root: &Path, phrases: &[(&str, Option<CallWinner>)]) {
    let mut cfg = EngineConfig::default();
    cfg.rectify.target = (320, 192);
    cfg.signal_wait = Duration::from_secs(5);
    let core = Core::start(cfg, vec![Box::new(StandingFencers)]);
    let rec = Recorder::start(RecorderConfig {
        root: root.to_path_buf(),
        queue_frames: 1024,
        retention: Retention {
            max_bytes: None,
            max_age: None,
        },
        model: ModelId::stand_in("stand-in"),
        settings: settings_snapshot(&Settings::default()),
        engine_version: "test".into(),
    })
    .expect("recorder");
    attach(&core, rec.clone());
    for (id, call) in phrases {
        let mut s = OfflineSession::open(&core, start(id)).expect("session");
        for n in 0..15u64 {
            let f = OfflineFrame {
                encoding: FrameEncoding::Jpeg,
                bytes: jpeg(n as u8),
                capture_ts_us: 1_000_000 + n * 66_667,
            };
            s.push(f).await.expect("push");
        }
        s.finish(
            "signal.txt",
            SIGNAL.as_bytes().to_vec(),
            Duration::from_secs(30),
        )
        .await
        .expect("verdict");
        if let Some(c) = call {
            core.history
                .page_call(id, 0, *c)
                .expect("the phrase is in the history");
        }
    }
    rec.flush();
    rec.shutdown();
    core.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_scores_recordings_with_calls_and_counts_the_rest() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("recordings");
    record(
        &root,
        &[
            ("a-left", Some(CallWinner::Left)),
            ("b-right", Some(CallWinner::Right)),
            ("b-wrong", Some(CallWinner::Right)),
            ("c-none", Some(CallWinner::NoTouch)),
            ("d-open", None),
        ],
    )
    .await;
    // The stand-in's fencers stand still (an uncertain verdict): give two recordings a side,
    // as a live verdict with a clear movement would have, so that agreement is counted.
    for (id, side) in [("b-right", "right"), ("b-wrong", "left")] {
        referee_record::rewrite_manifest(&phrase_path(&root, id, 0), |m| {
            m.verdict["verdict"]["winner"] = side.into();
            m.verdict["verdict"]["confidence"] = 0.8.into();
        })
        .expect("rewrite");
    }
    // A crash mid-write, and a tar cut before its manifest.
    let done = phrase_path(&root, "a-left", 0);
    std::fs::create_dir_all(root.join("e-crash")).expect("dir");
    std::fs::copy(&done, root.join("e-crash/phrase-000.tar.partial")).expect("copy");
    let bytes = std::fs::read(&done).expect("read");
    std::fs::create_dir_all(root.join("f-cut")).expect("dir");
    std::fs::write(root.join("f-cut/phrase-000.tar"), &bytes[..bytes.len() / 2]).expect("cut");

    // What the daemon decided live, per labelled recording.
    let live = |id: &str| -> String {
        let r = Recording::open(&phrase_path(&root, id, 0)).expect("recorded");
        r.manifest.verdict["verdict"]["winner"]
            .as_str()
            .expect("winner")
            .to_string()
    };

    let out = Command::new(REFEREE)
        .args(["--log-level", "error", "evaluate", "--json"])
        .arg(&root)
        .output()
        .expect("run referee evaluate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(doc["found"], 7, "{doc:#}");
    let rows = doc["rows"].as_array().expect("rows");
    let labels: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["label"].as_str().unwrap()))
        .collect();
    assert_eq!(
        labels,
        [
            ("a-left/phrase-000.tar", "left"),
            ("b-right/phrase-000.tar", "right"),
            ("b-wrong/phrase-000.tar", "right")
        ]
    );
    for (r, id) in rows.iter().zip(["a-left", "b-right", "b-wrong"]) {
        assert_eq!(r["predicted"], live(id), "the live verdict is scored");
    }
    let agree: Vec<bool> = rows
        .iter()
        .map(|r| r["correct"].as_bool().unwrap())
        .collect();
    assert_eq!(agree, [live("a-left") == "left", true, false], "{doc:#}");
    assert_eq!(doc["overall"]["n"], 3);
    assert_eq!(
        doc["overall"]["correct"],
        1 + usize::from(live("a-left") == "left")
    );
    assert_eq!(
        doc["overall"]["decided"],
        2 + usize::from(live("a-left") != "uncertain")
    );
    assert_eq!(
        doc["no_touch"],
        serde_json::json!(["c-none/phrase-000.tar"])
    );
    assert_eq!(
        doc["unlabelled"],
        serde_json::json!(["d-open/phrase-000.tar"])
    );
    let skipped: Vec<&str> = doc["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(
        skipped,
        ["e-crash/phrase-000.tar.partial", "f-cut/phrase-000.tar"]
    );

    // The options that need phrase folders are refused, not ignored.
    let refused = Command::new(REFEREE)
        .args(["--log-level", "error", "evaluate", "--cv"])
        .arg(&root)
        .output()
        .expect("run referee evaluate --cv");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("phrase folders only"));
}
