//! Tournament mode against a REAL nats-server (JetStream on, loopback, throw-away store):
//! several daemons, agents on several pistes, one subscriber, the verdict stream, the piste
//! registry. Skipped (failing under CI=true) when `nats-server` is not installed
//! (`apt-get install nats-server`).
//!
//! The daemons run a stand-in pose estimator (two fixed fencers per frame) so these tests need
//! no weights and stay fast; the pose path itself is covered by `daemon_e2e`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use referee_capture::agent::{run_agent, AgentConfig, AgentOutcome, NoProgress, SignalInput};
use referee_capture::pacing::Pacing;
use referee_capture::source::synthetic::Synthetic;
use referee_config::Settings;
use referee_daemon::Daemon;
use referee_nats::async_nats::{self, jetstream};
use referee_nats::{FeedMessage, PisteEntry};
use referee_transport::messages::FeedEvent;
use referee_transport::Trust;

const SIGNAL: &str = " 0.000s | Phrase recording started\n 0.500s | HIT: Simultaneous valid hits!\n 0.512s | Lockout period started (0.200s window)\n 0.600s | Phrase recording ended\nScores -> Fencer 1: HIT, Fencer 2: HIT\n";

/// A nats-server child process with JetStream, killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl NatsServer {
    /// Starts one on a free loopback port; `None` (after `skip`) when nats-server is absent.
    fn start(store: &Path) -> Option<Self> {
        if Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            referee_test_support::skip(
                "nats-server is not installed (apt-get install nats-server)",
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut s = Self {
            child: None,
            port,
            store: store.to_path_buf(),
        };
        s.restart();
        Some(s)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and store (after [`NatsServer::kill`]).
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("nats-server")
            .args(["-js", "-sd"])
            .arg(&self.store)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two fencers standing still at a third and two thirds of the frame (no weights needed).
use referee_pose_api::testing::StandingFencers as StandIn;

fn settings(tmp: &Path, name: &str, nats: &str, pistes: &str) -> Settings {
    let mut s = Settings::default();
    for (k, v) in [
        ("server.host", "127.0.0.1".to_string()),
        ("server.port", "0".to_string()),
        ("server.http_port", "0".to_string()),
        (
            "server.output_dir",
            tmp.join(name).join("out").display().to_string(),
        ),
        (
            "server.data_dir",
            tmp.join(name).join("data").display().to_string(),
        ),
        ("pose.size", "320x192".to_string()),
        ("nats.url", nats.to_string()),
        ("nats.daemon_id", name.to_string()),
        ("nats.pistes", pistes.to_string()),
    ] {
        s.set(k, &v).expect("test setting");
    }
    s
}

async fn daemon(s: &Settings) -> Daemon {
    Daemon::start(s, vec![Box::new(StandIn)], "stand-in")
        .await
        .expect("daemon starts")
}

/// One short phrase (12 synthetic frames) on `piste`, to the daemon at `addr`.
async fn phrase(
    addr: std::net::SocketAddr,
    fingerprint: &str,
    piste: &str,
    session: &str,
) -> AgentOutcome {
    let mut cfg = AgentConfig::new(addr, Trust::Fingerprint(fingerprint.to_string()), session);
    cfg.piste = piste.into();
    cfg.pacing = Pacing::AsFastAsPossible;
    cfg.verdict_timeout = Duration::from_secs(20);
    let source = Box::new(Synthetic::new(160, 96, 15.0, Some(12)).expect("synthetic"));
    let signal = SignalInput::Once {
        filename: "signal.txt".into(),
        bytes: SIGNAL.as_bytes().to_vec(),
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        run_agent(cfg, source, Some(signal), NoProgress),
    )
    .await
    .expect("agent timed out")
    .expect("agent failed")
}

async fn js(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .expect("test client connects");
    jetstream::new(client)
}

/// Messages in the verdict stream, waiting up to `wait` for `want`.
async fn stream_count(url: &str, want: u64, wait: Duration) -> u64 {
    let deadline = Instant::now() + wait;
    loop {
        let n = async {
            let js = js(url).await;
            let mut st = js.get_stream(referee_nats::VERDICT_STREAM).await.ok()?;
            Some(st.info().await.ok()?.state.messages)
        }
        .await
        .unwrap_or(0);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The msg ids (`session/phrase`) of every stored verdict.
async fn stored_ids(url: &str) -> Vec<String> {
    use futures_util::StreamExt;
    let js = js(url).await;
    let st = js
        .get_stream(referee_nats::VERDICT_STREAM)
        .await
        .expect("stream");
    let consumer = st
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let n = stream_count(url, 0, Duration::ZERO).await as usize;
    let mut msgs = consumer.messages().await.expect("messages").take(n);
    let mut ids = Vec::new();
    while let Some(m) = msgs.next().await {
        let m = m.expect("message");
        let body: FeedMessage = serde_json::from_slice(&m.payload).expect("JSON");
        assert_eq!(body.v, 1);
        assert_eq!(body.event, "verdict");
        let Some(FeedEvent::Verdict(v)) = body.to_event() else {
            panic!("a verdict: {body:?}")
        };
        ids.push(referee_nats::verdict_msg_id(&v.session_id, v.phrase));
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_pistes_on_two_daemons_one_subscriber_sees_four_verdicts_and_the_stream_holds_four() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(nats) = NatsServer::start(&tmp.path().join("nats")) else {
        return;
    };
    let url = nats.url();
    let a = daemon(&settings(tmp.path(), "hall-a", &url, "1,2")).await;
    let b = daemon(&settings(tmp.path(), "hall-b", &url, "3,4")).await;

    let client = async_nats::connect(&url).await.expect("subscriber");
    let mut sub = client
        .subscribe("referee.piste.*.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    // Daemon A's own feed (its page, SSE, QUIC subscribers) must show B's pistes too.
    let mut feed_a = a.core.feed().subscribe(Vec::new());

    let runs = [("1", &a), ("2", &a), ("3", &b), ("4", &b)].map(|(p, d)| {
        let (addr, fp) = (d.quic_addr, d.fingerprint.clone());
        tokio::spawn(async move { phrase(addr, &fp, p, &format!("bout-{p}")).await })
    });
    for r in runs {
        let out = r.await.expect("agent task");
        assert!(out.verdict.is_some(), "every agent gets its verdict");
    }

    use futures_util::StreamExt;
    let mut verdict_pistes = std::collections::BTreeSet::new();
    let mut sessions = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while verdict_pistes.len() < 4 {
        let m = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("four verdicts on NATS in time")
            .expect("subscription open");
        let msg: FeedMessage = serde_json::from_slice(&m.payload).expect("JSON message");
        assert_eq!(msg.v, 1);
        match msg.to_event().expect("a known event") {
            FeedEvent::Verdict(v) => {
                assert_eq!(
                    m.subject.as_str(),
                    format!("referee.piste.{}.verdict", v.piste)
                );
                assert_eq!(
                    msg.daemon,
                    if v.piste.as_str() <= "2" {
                        "hall-a"
                    } else {
                        "hall-b"
                    }
                );
                assert_eq!(v.session_id, format!("bout-{}", v.piste));
                verdict_pistes.insert(v.piste);
            }
            FeedEvent::SessionStarted { .. } | FeedEvent::SessionEnded { .. } => sessions += 1,
            _ => {}
        }
    }
    assert_eq!(verdict_pistes.len(), 4);
    assert!(sessions >= 1, "session events are published too");
    let mut on_a = std::collections::BTreeSet::new();
    while on_a.len() < 4 {
        match tokio::time::timeout_at(deadline, feed_a.next()).await {
            Ok(Some(FeedEvent::Verdict(v))) => {
                on_a.insert(v.piste);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("daemon A's feed shows only {on_a:?}"),
        }
    }

    assert_eq!(stream_count(&url, 4, Duration::from_secs(10)).await, 4);
    assert_eq!(
        stored_ids(&url).await,
        ["bout-1/0", "bout-2/0", "bout-3/0", "bout-4/0"]
    );
    a.shutdown().await;
    b.shutdown().await;
    assert!(
        std::fs::read_dir(tmp.path().join("hall-a/data/nats-outbox"))
            .expect("outbox dir")
            .next()
            .is_none(),
        "acknowledged verdicts leave the outbox"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_run_the_daemons_keep_refereeing_and_every_verdict_is_stored_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(mut nats) = NatsServer::start(&tmp.path().join("nats")) else {
        return;
    };
    let url = nats.url();
    let a = daemon(&settings(tmp.path(), "hall-a", &url, "1")).await;
    let b = daemon(&settings(tmp.path(), "hall-b", &url, "2")).await;

    assert!(phrase(a.quic_addr, &a.fingerprint, "1", "before")
        .await
        .verdict
        .is_some());
    assert_eq!(stream_count(&url, 1, Duration::from_secs(10)).await, 1);

    nats.kill();
    // NATS is gone: the daemons still referee, and keep the verdicts on disk.
    let t = Instant::now();
    let out_a = phrase(a.quic_addr, &a.fingerprint, "1", "during-a").await;
    let out_b = phrase(b.quic_addr, &b.fingerprint, "2", "during-b").await;
    assert!(out_a.verdict.is_some() && out_b.verdict.is_some());
    eprintln!("two phrases refereed with NATS down in {:?}", t.elapsed());
    let waiting = |name: &str| {
        std::fs::read_dir(tmp.path().join(name).join("data/nats-outbox"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(
        waiting("hall-a") + waiting("hall-b"),
        2,
        "both verdicts wait on disk"
    );

    nats.restart();
    let t = Instant::now();
    assert_eq!(stream_count(&url, 3, Duration::from_secs(30)).await, 3);
    eprintln!("outbox drained {:?} after NATS came back", t.elapsed());
    // A verdict the stream already holds, sent again (as after a lost acknowledgement), is
    // dropped by its msg id.
    let js = js(&url).await;
    let again = js
        .send_publish(
            "referee.verdicts.1",
            jetstream::message::PublishMessage::build()
                .payload(b"{}".to_vec().into())
                .message_id("before/0"),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert!(again.duplicate);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stream_count(&url, 3, Duration::ZERO).await, 3);
    assert_eq!(
        stored_ids(&url).await,
        ["before/0", "during-a/0", "during-b/0"]
    );
    assert_eq!(waiting("hall-a") + waiting("hall-b"), 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_daemon_leaves_the_registry_within_the_ttl_and_agents_find_the_live_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(nats) = NatsServer::start(&tmp.path().join("nats")) else {
        return;
    };
    let url = nats.url();
    // Daemon A lives on its own runtime, so that it can die without deregistering: shutting
    // that runtime down drops its tasks and its NATS connection at once, like a killed process.
    let sa = settings(tmp.path(), "hall-a", &url, "7");
    let (rt_a, a) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let d = rt.block_on(daemon(&sa));
        (rt, d)
    })
    .join()
    .expect("daemon A");
    let b = daemon(&settings(tmp.path(), "hall-b", &url, "8")).await;

    let kv = referee_nats::registry(&js(&url).await)
        .await
        .expect("bucket");
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries: Vec<PisteEntry> = loop {
        let e = referee_nats::list_pistes(&kv).await.expect("list");
        if e.len() == 2 || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pistes: Vec<_> = entries
        .iter()
        .map(|e| (e.piste.as_str(), e.daemon_id.as_str()))
        .collect();
    assert_eq!(pistes, [("7", "hall-a"), ("8", "hall-b")]);
    assert_eq!(entries[0].fingerprint, a.fingerprint);
    assert_eq!(entries[1].quic_addr, b.quic_addr.to_string());

    // Kill A.
    let killed = Instant::now();
    rt_a.shutdown_background();
    std::mem::forget(a);
    loop {
        let gone = kv.get("7").await.expect("get").is_none();
        if gone {
            break;
        }
        assert!(
            killed.elapsed() < referee_nats::REGISTRY_TTL + Duration::from_secs(5),
            "the dead daemon's entry outlived the TTL"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expired_after = killed.elapsed();
    eprintln!("dead daemon's registry entry gone {expired_after:?} after the kill");
    assert!(
        kv.get("8").await.expect("get").is_some(),
        "the live daemon stays"
    );

    // An agent told only its piste and NATS finds B.
    let nats_args = referee_nats::ConnectArgs {
        url: url.clone(),
        name: "test agent".into(),
        ..Default::default()
    };
    let entry = referee_capture::discover::find_daemon(&nats_args, "8", Duration::from_secs(5))
        .await
        .expect("piste 8 found");
    let trust = referee_capture::discover::trust_for(&entry, None, true).expect("trust");
    assert!(referee_capture::discover::trust_for(&entry, None, false).is_err());
    let addr = referee_capture::discover::entry_addr(&entry).expect("addr");
    assert_eq!(addr, b.quic_addr);
    let Trust::Fingerprint(fp) = trust else {
        panic!("pinned by fingerprint")
    };
    let out = phrase(addr, &fp, "8", "found").await;
    assert!(out.verdict.is_some());
    assert!(
        referee_capture::discover::find_daemon(&nats_args, "7", Duration::from_millis(300))
            .await
            .is_err(),
        "nobody serves piste 7 any more"
    );
    b.shutdown().await;
    assert!(
        kv.get("8").await.expect("get").is_none(),
        "a clean shutdown deregisters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_left_on_disk_by_a_crashed_daemon_are_sent_at_the_next_start_and_off_means_off() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Without nats.url: no NATS side, no outbox.
    let mut off = settings(tmp.path(), "plain", "", "");
    off.set("nats.url", "").expect("off");
    let plain = daemon(&off).await;
    assert!(plain.nats.is_none());
    assert!(!tmp.path().join("plain/data/nats-outbox").exists());
    plain.shutdown().await;

    let Some(nats) = NatsServer::start(&tmp.path().join("nats")) else {
        return;
    };
    let url = nats.url();
    // What a daemon that crashed before the acknowledgement leaves behind.
    let s = settings(tmp.path(), "hall-a", &url, "1");
    let ob = referee_daemon::nats::outbox::Outbox::open(&s.server.data_dir.join("nats-outbox"), 10)
        .expect("outbox");
    let report = referee_transport::messages::VerdictReport {
        session_id: "crashed".into(),
        piste: "1".into(),
        phrase: 4,
        winner: referee_transport::messages::Winner::Uncertain,
        confidence: 0.5,
        reason: "left over".into(),
        evidence: vec![],
        latency_ms: 1.0,
        detail_json: "{}".into(),
    };
    let msg = referee_daemon::nats::feed_message("hall-a", &FeedEvent::Verdict(report));
    ob.push(&referee_daemon::nats::outbox::Pending {
        msg_id: "crashed/4".into(),
        subject: "referee.verdicts.1".into(),
        payload: serde_json::to_value(&msg).expect("json"),
    })
    .expect("push");
    let a = daemon(&s).await;
    assert_eq!(stream_count(&url, 1, Duration::from_secs(10)).await, 1);
    assert_eq!(stored_ids(&url).await, ["crashed/4"]);
    assert!(ob.is_empty(), "sent and removed");
    a.shutdown().await;
}
