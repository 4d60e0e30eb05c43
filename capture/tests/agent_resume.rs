//! The agent against a minimal fake daemon on loopback: the daemon drops the connection in the
//! middle of the phrase; the agent must reconnect, resume the session, and by the end every frame
//! must have arrived exactly once. Also: a fatal refusal ends the agent without retrying.

use referee_capture::agent::{run_agent, AgentConfig, AgentError, NoProgress, SignalInput};
use referee_capture::encode::Encoding;
use referee_capture::pacing::Pacing;
use referee_capture::source::Synthetic;
use referee_transport::messages::*;
use referee_transport::quinn;
use referee_transport::{
    read_frame, read_msg, server_endpoint, write_msg, EndpointLimits, ServerIdentity, Trust,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FRAMES: u64 = 90;
const DROP_AFTER: u64 = 30;

#[derive(Default)]
struct Seen {
    /// How many times each frame arrived completely.
    counts: BTreeMap<u64, u32>,
    connections: u32,
    resumes: Vec<bool>,
    /// The resume secret each `SessionStart` presented.
    secrets: Vec<Option<String>>,
    signals: Vec<Signal>,
    ended: bool,
}

fn ack_of(seen: &Seen) -> Ack {
    let mut next = 0;
    while seen.counts.contains_key(&next) {
        next += 1;
    }
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &f in seen.counts.keys().filter(|&&f| f > next) {
        match ranges.last_mut() {
            Some((_, end)) if *end == f => *end += 1,
            _ => ranges.push((f, f + 1)),
        }
    }
    Ack {
        next_expected: next,
        received_ranges: ranges,
    }
}

fn err(code: ErrorCode, message: &str) -> ServerMsg {
    ServerMsg::Error(ErrorMsg {
        code,
        message: message.into(),
        recoverable: false,
        session_id: None,
    })
}

/// Serves connections one after the other. The first connection is closed once `drop_after`
/// frames have arrived (if set).
async fn fake_daemon(
    endpoint: quinn::Endpoint,
    seen: Arc<Mutex<Seen>>,
    drop_after: Option<u64>,
    token: &'static str,
    pause: Duration,
) {
    while let Some(inc) = endpoint.accept().await {
        let Ok(conn) = referee_transport::accept(inc, Duration::from_secs(5)).await else {
            continue;
        };
        let first = {
            let mut s = seen.lock().unwrap();
            s.connections += 1;
            s.connections == 1
        };
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            continue;
        };
        match read_msg::<ClientMsg>(&mut recv, 1 << 20).await {
            Ok(Some(ClientMsg::Hello { token: t, .. })) if t == token => {}
            _ => {
                let _ = write_msg(&mut send, &err(ErrorCode::Unauthorized, "wrong token")).await;
                let _ = send.finish();
                let _ = send.stopped().await;
                continue;
            }
        }
        let welcome = ServerMsg::Welcome {
            server: "fake".into(),
            protocol: PROTOCOL_VERSION,
        };
        if write_msg(&mut send, &welcome).await.is_err() {
            continue;
        }
        let Ok(Some(ClientMsg::SessionStart(start))) =
            read_msg::<ClientMsg>(&mut recv, 1 << 20).await
        else {
            continue;
        };
        let ack = {
            let mut s = seen.lock().unwrap();
            s.resumes.push(start.resume);
            s.secrets.push(start.resume_secret.clone());
            ack_of(&s)
        };
        let started = ServerMsg::SessionStarted {
            session_id: start.session_id.clone(),
            ack,
            resume_secret: format!("secret-{}", start.session_id),
        };
        if write_msg(&mut send, &started).await.is_err() {
            continue;
        }
        // Frames: each on its own stream, recorded, then acked on the control stream.
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let frames = {
            let (conn, seen) = (conn.clone(), seen.clone());
            tokio::spawn(async move {
                let limits = referee_transport::FrameLimits::default();
                let mut readers = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        s = conn.accept_uni() => {
                            let Ok(stream) = s else { break };
                            readers.spawn(async move { read_frame(stream, &limits).await });
                        }
                        Some(Ok(Ok((h, bytes)))) = readers.join_next(), if !readers.is_empty() => {
                            assert_eq!(h.len as usize, bytes.len());
                            let n = {
                                let mut s = seen.lock().unwrap();
                                *s.counts.entry(h.frame).or_default() += 1;
                                s.counts.len() as u64
                            };
                            let _ = ack_tx.send(());
                            if first && drop_after.is_some_and(|d| n >= d) {
                                // Mid-phrase loss: stop every reader, then drop the connection.
                                readers.abort_all();
                                conn.close(0u32.into(), b"simulated loss");
                                break;
                            }
                        }
                    }
                }
            })
        };
        loop {
            tokio::select! {
                Some(()) = ack_rx.recv() => {
                    let ack = ack_of(&seen.lock().unwrap());
                    let m = ServerMsg::Ack { session_id: start.session_id.clone(), ack };
                    if write_msg(&mut send, &m).await.is_err() { break; }
                }
                m = read_msg::<ClientMsg>(&mut recv, 1 << 20) => {
                    match m {
                        Ok(Some(ClientMsg::Signal(sig))) => {
                            let phrase = sig.phrase;
                            seen.lock().unwrap().signals.push(sig);
                            let _ = write_msg(&mut send, &ServerMsg::SignalAck { session_id: start.session_id.clone(), phrase }).await;
                            let v = VerdictReport {
                                session_id: start.session_id.clone(),
                                piste: start.piste.clone(),
                                phrase,
                                winner: Winner::Left,
                                confidence: 0.9,
                                reason: "fake".into(),
                                evidence: vec![],
                                latency_ms: 1.0,
                                detail_json: "{}".into(),
                            };
                            let _ = write_msg(&mut send, &ServerMsg::Verdict(v)).await;
                        }
                        Ok(Some(ClientMsg::End { session_id })) => {
                            seen.lock().unwrap().ended = true;
                            let stats = SessionStats { received: seen.lock().unwrap().counts.len() as u64, ..Default::default() };
                            let _ = write_msg(&mut send, &ServerMsg::SessionEnded { session_id, stats }).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                            break;
                        }
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
            }
        }
        frames.abort();
        if first {
            // Stay away for a while (the agent keeps capturing meanwhile).
            tokio::time::sleep(pause).await;
        }
    }
}

fn setup(
    drop_after: Option<u64>,
    token: &'static str,
) -> (AgentConfig, Arc<Mutex<Seen>>, quinn::Endpoint) {
    setup_with_pause(drop_after, token, Duration::ZERO)
}

fn setup_with_pause(
    drop_after: Option<u64>,
    token: &'static str,
    pause: Duration,
) -> (AgentConfig, Arc<Mutex<Seen>>, quinn::Endpoint) {
    let id = ServerIdentity::generate_self_signed(&["localhost".into()]).unwrap();
    let endpoint = server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &id,
        &EndpointLimits::default(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(fake_daemon(
        endpoint.clone(),
        seen.clone(),
        drop_after,
        token,
        pause,
    ));
    let mut cfg = AgentConfig::new(
        addr,
        Trust::Fingerprint(id.fingerprint_hex()),
        "resume-test",
    );
    cfg.token = "capture-token".into();
    cfg.encoding = Encoding::Raw;
    // Real-time pacing keeps the agent streaming while the connection drops.
    cfg.pacing = Pacing::RealTime { fps: 120.0 };
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.verdict_timeout = Duration::from_secs(10);
    cfg.ack_timeout = Duration::from_secs(10);
    (cfg, seen, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_resumes_after_a_dropped_connection_and_every_frame_arrives_once() {
    let (mut cfg, seen, _ep) = setup(Some(DROP_AFTER), "capture-token");
    // As fast as possible: many frames are in flight when the connection drops.
    cfg.pacing = Pacing::AsFastAsPossible;
    let source = Box::new(Synthetic::new(64, 48, 30.0, Some(FRAMES)).unwrap());
    let signal = SignalInput::Once {
        filename: "signal.txt".into(),
        bytes: b"0.000 | Phrase recording started\n".to_vec(),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        run_agent(cfg, source, Some(signal), NoProgress),
    )
    .await
    .expect("agent timed out")
    .expect("agent failed");

    let s = seen.lock().unwrap();
    assert!(
        s.connections >= 2,
        "the connection was dropped, so the agent reconnected"
    );
    assert_eq!(s.resumes.first(), Some(&false));
    // A resume proves the session is this agent's with the secret its SessionStarted gave.
    assert_eq!(s.secrets.first(), Some(&None));
    assert!(
        s.secrets[1..]
            .iter()
            .all(|x| x.as_deref() == Some("secret-resume-test")),
        "{:?}",
        s.secrets
    );
    assert!(
        s.resumes[1..].iter().all(|r| *r),
        "later starts are resumes: {:?}",
        s.resumes
    );
    let missing: Vec<u64> = (0..FRAMES).filter(|f| !s.counts.contains_key(f)).collect();
    let dups: Vec<(u64, u32)> = s
        .counts
        .iter()
        .filter(|(_, c)| **c != 1)
        .map(|(f, c)| (*f, *c))
        .collect();
    assert!(missing.is_empty(), "frames never arrived: {missing:?}");
    assert!(dups.is_empty(), "frames arrived more than once: {dups:?}");
    assert_eq!(s.counts.len() as u64, FRAMES);
    // The signal is resent after the reconnect when its verdict had not arrived yet: the
    // daemon sees the same phrase again, never another one.
    assert!(!s.signals.is_empty() && s.signals.iter().all(|x| x.phrase == 0));
    assert_eq!(outcome.verdicts.len(), 1);
    assert!(s.ended);
    let st = &outcome.stats;
    println!("agent stats: {st:?}; server connections: {}", s.connections);
    assert_eq!(st.frames_captured, FRAMES);
    assert_eq!(st.frames_acked, FRAMES);
    assert_eq!(st.lost, 0);
    assert!(st.reconnects >= 1);
    assert!(
        st.frames_resent > 0,
        "frames in flight at the drop are resent"
    );
    assert_eq!(
        outcome.verdict.as_ref().map(|v| v.winner),
        Some(Winner::Left)
    );
    assert_eq!(
        outcome.server_stats.as_ref().map(|s| s.received),
        Some(FRAMES)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_refusal_ends_the_agent_without_retrying() {
    let (mut cfg, seen, _ep) = setup(None, "capture-token");
    cfg.token = "wrong".into();
    let source = Box::new(Synthetic::new(64, 48, 30.0, Some(10)).unwrap());
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        run_agent(cfg, source, None, NoProgress),
    )
    .await
    .expect("agent timed out")
    .unwrap_err();
    assert!(
        matches!(
            e,
            AgentError::Server {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.exit_code(), 4);
    assert_eq!(
        seen.lock().unwrap().connections,
        1,
        "no retry after a fatal error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_daemon_is_given_up_after_the_retries() {
    // Bind then drop a socket to get a port where nothing listens.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = AgentConfig::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Trust::InsecureLoopback,
        "nobody-home",
    );
    cfg.max_retries = 2;
    cfg.backoff_initial = Duration::from_millis(20);
    cfg.handshake_timeout = Duration::from_millis(500);
    let source = Box::new(Synthetic::new(64, 48, 30.0, Some(5)).unwrap());
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        run_agent(cfg, source, None, NoProgress),
    )
    .await
    .expect("agent timed out")
    .unwrap_err();
    assert!(matches!(e, AgentError::GaveUp { attempts: 3, .. }), "{e:?}");
    assert_eq!(e.exit_code(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_overflow_during_an_outage_is_reported_as_lost_frames() {
    const N: u64 = 60;
    let (mut cfg, seen, _ep) =
        setup_with_pause(Some(10), "capture-token", Duration::from_millis(400));
    cfg.ring_capacity = 8;
    cfg.pacing = Pacing::RealTime { fps: 100.0 };
    let source = Box::new(Synthetic::new(64, 48, 30.0, Some(N)).unwrap());
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        run_agent(cfg, source, None, NoProgress),
    )
    .await
    .expect("agent timed out")
    .expect("agent failed");
    let s = seen.lock().unwrap();
    let st = &outcome.stats;
    println!("agent stats: {st:?}; frames received: {}", s.counts.len());
    assert!(s.connections >= 2);
    assert!(
        st.lost > 0,
        "a ring of 8 frames cannot hold a 400 ms outage at 100 fps"
    );
    assert!(s.counts.values().all(|c| *c == 1), "no duplicates");
    assert_eq!(st.frames_captured, N);
    assert_eq!(
        s.counts.len() as u64 + st.lost,
        N,
        "every frame either arrived or is counted as lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_mode_closes_a_phrase_for_each_new_signal_log() {
    let (mut cfg, seen, _ep) = setup(None, "capture-token");
    cfg.pacing = Pacing::RealTime { fps: 60.0 };
    let stop = cfg.stop.clone();
    let dir = tempfile::tempdir().unwrap();
    // A log already present before the agent starts is not a new phrase.
    std::fs::write(dir.path().join("old.txt"), "0.000 | old\n").unwrap();
    let signal = SignalInput::Watch {
        dir: dir.path().to_path_buf(),
        poll: Duration::from_millis(50),
    };
    let source = Box::new(Synthetic::new(64, 48, 60.0, None).unwrap());
    let agent = tokio::spawn(run_agent(cfg, source, Some(signal), NoProgress));
    for name in ["phrase-a.txt", "phrase-b.txt"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(dir.path().join(name), format!("0.000 | {name}\n")).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().signals.len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcome = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("agent timed out")
        .unwrap()
        .expect("agent failed");
    let s = seen.lock().unwrap();
    let names: Vec<&str> = s.signals.iter().map(|x| x.filename.as_str()).collect();
    assert_eq!(names, ["phrase-a.txt", "phrase-b.txt"]);
    let phrases: Vec<u32> = outcome.verdicts.iter().map(|v| v.phrase).collect();
    assert_eq!(phrases, [0, 1]);
    assert!(s.ended);
    assert!(s.counts.values().all(|c| *c == 1));
    assert_eq!(s.counts.len() as u64, outcome.stats.frames_captured);
}
