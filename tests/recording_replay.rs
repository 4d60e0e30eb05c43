//! Phrase recordings end to end: the sample clip streamed through a daemon over QUIC is
//! recorded as a tar that standard `tar` opens, and `referee replay` reproduces its verdict;
//! a frame byte changed is reported as different where it matters and identical where it
//! cannot; a daemon killed mid-phrase leaves a `.partial` file that replay skips with a
//! message, as it skips a tar without its manifest.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use referee_capture::agent::{run_agent, AgentConfig, NoProgress, SignalInput};
use referee_transport::Trust;

const REFEREE: &str = env!("CARGO_BIN_EXE_referee");

/// Waits for `path` to exist (recordings are written off the verdict path).
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `referee replay ARGS --json`: (exit success, the JSON report).
fn replay(target: &Path) -> (bool, serde_json::Value) {
    let out = Command::new(REFEREE)
        .args(["--log-level", "warn", "replay", "--json"])
        .arg(target)
        .output()
        .expect("run referee replay");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "replay printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), doc)
}

/// The report entry for the recording at `path`.
fn entry<'a>(doc: &'a serde_json::Value, path: &Path) -> &'a serde_json::Value {
    doc["recordings"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["path"] == path.display().to_string()))
        .unwrap_or_else(|| panic!("{} not in the report: {doc:#}", path.display()))
}

/// A copy of the recording at `src` with `change` applied to the bytes of frame entry `frame`.
fn with_changed_frame(src: &Path, dst: &Path, frame: &str, change: impl Fn(&mut Vec<u8>)) {
    let mut archive = tar::Archive::new(std::fs::File::open(src).expect("open recording"));
    let mut out = tar::Builder::new(std::fs::File::create(dst).expect("create copy"));
    let mut changed = false;
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).expect("read entry");
        if name == frame {
            change(&mut bytes);
            changed = true;
        }
        let mut h = e.header().clone();
        out.append_data(&mut h, &name, &bytes[..])
            .expect("write entry");
    }
    out.finish().expect("finish copy");
    assert!(changed, "{frame} is not in {}", src.display());
}

fn live_frames_tracked(detail_json: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(detail_json).expect("verdict json");
    v["frames_tracked"].as_u64().expect("frames_tracked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_clip_is_recorded_and_replays_to_the_same_verdict() {
    let Some((clip, signal)) = common::sample_clip() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let mut settings = common::settings(tmp.path());
    // The recording names the weights the daemon ran with; replay loads and checks them.
    let weights = common::weights().display().to_string();
    settings.set("pose.model", &weights).expect("pose.model");
    let daemon = common::daemon(&settings).await;
    let source = referee_capture::source::open_video(&clip).expect("open clip");
    let signal = SignalInput::from_file(&signal, 1 << 20).expect("signal");
    let mut cfg = AgentConfig::new(
        daemon.quic_addr,
        Trust::Fingerprint(daemon.fingerprint.clone()),
        "clip-rec",
    );
    cfg.piste = "piste-3".into();
    let outcome = run_agent(cfg, source, Some(signal), NoProgress)
        .await
        .expect("agent run");
    let live = outcome.verdict.expect("a verdict");
    let rec = tmp.path().join("out/recordings/clip-rec/phrase-000.tar");
    wait_for(&rec);
    daemon.shutdown().await;

    // Standard tar opens it: frames, frames.json, the log, and the manifest last.
    let listing = Command::new("tar").arg("tf").arg(&rec).output();
    let Ok(listing) = listing else {
        referee_test_support::skip("`tar` is not installed");
        return;
    };
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(names.contains(&"frames/00000.jpg".to_string()), "{names:?}");
    assert!(names.contains(&"frames.json".to_string()));
    assert!(names.iter().any(|n| n.starts_with("signal/")));
    assert_eq!(names.last().map(String::as_str), Some("manifest.json"));

    let recording = referee_record::Recording::open(&rec).expect("complete recording");
    let m = &recording.manifest;
    assert!(m.complete, "{m:?}");
    assert_eq!(
        (m.session_id.as_str(), m.piste.as_str(), m.phrase),
        ("clip-rec", "piste-3", 0)
    );
    // Every frame admitted before the verdict (all 63 unless a loaded box made the engine
    // decide before the last ones came: then the verdict was made without them too).
    let frame_entries = names.iter().filter(|n| n.starts_with("frames/")).count();
    assert_eq!(frame_entries as u64, m.frames);
    assert!(m.frames >= live_frames_tracked(&live.detail_json), "{m:?}");
    assert_eq!(m.pose_model.sha256.as_ref().map(String::len), Some(64));
    assert_eq!(m.settings.values["pose.model"], weights);
    let live_detail: serde_json::Value = serde_json::from_str(&live.detail_json).expect("json");
    assert_eq!(
        m.verdict, live_detail,
        "the manifest holds the verdict sent"
    );
    assert!(recording
        .frames
        .iter()
        .all(|(f, b)| f.len as usize == b.len()));

    // A folder of variants: the regression suite.
    let suite = tmp.path().join("suite/clip-rec");
    std::fs::create_dir_all(&suite).expect("suite dir");
    let original = suite.join("phrase-000.tar");
    std::fs::copy(&rec, &original).expect("copy");
    // The SOI marker of a frame shortly before the hit (1.65 s): that frame no longer decodes,
    // so the fencers' movement into the hit is measured without it: reported field by field.
    let broken = suite.join("phrase-001.tar");
    with_changed_frame(&rec, &broken, "frames/00045.jpg", |b| b[1] = 0x00);
    // The JFIF density of a frame: decoders ignore it, the pixels are the same, so the verdict
    // cannot change and must be reported identical.
    let density = suite.join("phrase-002.tar");
    with_changed_frame(&rec, &density, "frames/00020.jpg", |b| {
        let at = b
            .windows(5)
            .position(|w| w == b"JFIF\0")
            .expect("the agent's JPEGs carry a JFIF header");
        b[at + 8] ^= 0x01; // low byte of the X density
    });
    // A crash mid-write: a .partial file, and a tar cut before its manifest.
    let partial = suite.join("phrase-003.tar.partial");
    std::fs::copy(&rec, &partial).expect("copy");
    let cut = suite.join("phrase-004.tar");
    let bytes = std::fs::read(&rec).expect("read");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write cut");

    let (ok, doc) = replay(&suite);
    assert!(!ok, "a difference fails the suite: {doc:#}");
    assert_eq!(entry(&doc, &original)["outcome"], "identical", "{doc:#}");
    let b = entry(&doc, &broken);
    assert_eq!(b["outcome"], "different", "{doc:#}");
    let fields: Vec<&str> = b["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    assert!(
        !fields.is_empty() && fields.iter().all(|f| f.starts_with("verdict.")),
        "{fields:?}"
    );
    assert_eq!(entry(&doc, &density)["outcome"], "identical", "{doc:#}");
    for skipped in [&partial, &cut] {
        let e = entry(&doc, skipped);
        assert_eq!(e["outcome"], "skipped", "{doc:#}");
        assert!(
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("incomplete")),
            "{e}"
        );
    }
    assert_eq!(
        (
            doc["identical"].as_u64(),
            doc["different"].as_u64(),
            doc["skipped"].as_u64()
        ),
        (Some(2), Some(1), Some(2))
    );
}

/// Starts `referee serve` on free ports under `dir`; returns the child and its QUIC address
/// and fingerprint (read from what it prints when ready).
fn serve(dir: &Path) -> (std::process::Child, std::net::SocketAddr, String) {
    let mut child = Command::new(REFEREE)
        .args([
            "--log-level",
            "warn",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(["--http-port", "0", "--output-dir"])
        .arg(dir.join("out"))
        .args(["--set"])
        .arg(format!("server.data_dir={}", dir.join("data").display()))
        .args(["--set"])
        .arg(format!("pose.model={}", common::weights().display()))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start referee serve");
    let stderr = child.stderr.take().expect("stderr");
    let (mut addr, mut fingerprint) = (None, None);
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read serve output");
        if let Some(a) = line.split("QUIC (agents, feed): ").nth(1) {
            addr = a.trim().parse().ok();
        }
        if let Some(f) = line.split("--server-fingerprint): ").nth(1) {
            fingerprint = Some(f.trim().to_string());
        }
        if addr.is_some() && fingerprint.is_some() {
            break;
        }
    }
    match (addr, fingerprint) {
        (Some(a), Some(f)) => (child, a, f),
        _ => {
            let _ = child.kill();
            panic!("referee serve did not print its address and fingerprint");
        }
    }
}

fn tiny_jpeg(seed: u8) -> Vec<u8> {
    let rgb: Vec<u8> = (0..64 * 48 * 3)
        .map(|i| (i as u8).wrapping_add(seed))
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 80)
        .encode(&rgb, 64, 48, jpeg_encoder::ColorType::Rgb)
        .expect("jpeg");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_phrase_leaves_a_partial_recording_that_replay_skips() {
    use referee_transport::messages::{ClientMsg, FrameEncoding, FrameHeader, Role, SessionStart};
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut child, addr, fingerprint) = serve(tmp.path());
    let ep = referee_transport::client_endpoint(&Trust::Fingerprint(fingerprint)).expect("ep");
    let conn = referee_transport::connect(&ep, addr, "localhost")
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("control");
    let hello = ClientMsg::Hello {
        role: Role::Capture,
        token: String::new(),
        client: "test".into(),
    };
    referee_transport::write_msg(&mut send, &hello)
        .await
        .expect("hello");
    let _welcome =
        referee_transport::read_msg::<referee_transport::messages::ServerMsg>(&mut recv, 1 << 20)
            .await;
    let start = SessionStart {
        session_id: "killed".into(),
        fps: 30.0,
        width: 64,
        height: 48,
        piste: "p".into(),
        camera: "c".into(),
        undistort: None,
        resume: false,
        resume_secret: None,
    };
    referee_transport::write_msg(&mut send, &ClientMsg::SessionStart(start))
        .await
        .expect("start");
    let _started =
        referee_transport::read_msg::<referee_transport::messages::ServerMsg>(&mut recv, 1 << 20)
            .await;
    for frame in 0..10u64 {
        let bytes = tiny_jpeg(frame as u8);
        let header = FrameHeader {
            session_id: "killed".into(),
            frame,
            capture_ts_us: 1_000_000 + frame * 33_333,
            encoding: FrameEncoding::Jpeg,
            len: bytes.len() as u32,
        };
        referee_transport::send_frame(&conn, &header, &bytes)
            .await
            .expect("send frame");
    }
    // The phrase is being recorded (no signal yet): kill the daemon now.
    let partial: PathBuf = tmp
        .path()
        .join("out/recordings/killed/phrase-000.tar.partial");
    wait_for(&partial);
    child.kill().expect("kill -9 the daemon");
    let _ = child.wait();
    conn.close(0u32.into(), b"done");

    let out = Command::new(REFEREE)
        .args(["--log-level", "warn", "replay"])
        .arg(tmp.path().join("out/recordings"))
        .output()
        .expect("replay");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "nothing was replayed: {text}");
    assert!(
        text.contains("skipped") && text.contains("phrase-000.tar.partial"),
        "{text}"
    );
    assert!(
        text.contains("0 identical, 0 different, 1 skipped"),
        "{text}"
    );
}
