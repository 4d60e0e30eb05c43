//! Shared helpers for the transport tests: sample messages and loopback endpoints.
#![allow(dead_code)]

use referee_transport::messages::*;
use referee_transport::{client_endpoint, server_endpoint, EndpointLimits, ServerIdentity, Trust};
use std::net::SocketAddr;
use std::time::Duration;

/// Every test is bounded in time.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

pub fn identity() -> ServerIdentity {
    ServerIdentity::generate_self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap()
}

/// A server on 127.0.0.1 (ephemeral port) and a client pinned to its fingerprint.
pub fn pair() -> (quinn::Endpoint, SocketAddr, quinn::Endpoint) {
    let id = identity();
    let server = server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &id,
        &EndpointLimits::default(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let client = client_endpoint(&Trust::Fingerprint(id.fingerprint_hex())).unwrap();
    (server, addr, client)
}

/// Connects both sides of a pair.
pub async fn connected() -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::Endpoint,
    quinn::Connection,
) {
    let (server, addr, client) = pair();
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            let inc = server.accept().await.unwrap();
            referee_transport::accept(inc, Duration::from_secs(5))
                .await
                .unwrap()
        })
    };
    let cconn = referee_transport::connect(&client, addr, "localhost")
        .await
        .unwrap();
    let sconn = accept.await.unwrap();
    (server, sconn, client, cconn)
}

pub fn ack() -> Ack {
    Ack {
        next_expected: 17,
        received_ranges: vec![(19, 22), (30, 31)],
    }
}

pub fn stats() -> SessionStats {
    SessionStats {
        received: 10,
        processed: 9,
        duplicates: 1,
        dropped: 0,
        bad_frames: 2,
    }
}

pub fn live() -> LiveState {
    let f = |x| FencerState {
        x,
        speed: 1.5,
        action: "advance".into(),
        visible: true,
    };
    LiveState {
        session_id: "s1".into(),
        piste: "p1".into(),
        frame: 42,
        t: 1.4,
        left: f(0.3),
        right: f(0.7),
        right_of_way: Some(Side::Left),
        confidence: 0.6,
    }
}

pub fn verdict() -> VerdictReport {
    VerdictReport {
        session_id: "s1".into(),
        piste: "p1".into(),
        phrase: 3,
        winner: Winner::Right,
        confidence: 0.8,
        reason: "right attacked first".into(),
        evidence: vec![Evidence {
            frame: 12,
            t: 0.4,
            what: "lunge".into(),
        }],
        latency_ms: 3.5,
        detail_json: "{\"a\":1}".into(),
    }
}

pub fn error_msg() -> ErrorMsg {
    ErrorMsg {
        code: ErrorCode::TooManySessions,
        message: "busy".into(),
        recoverable: true,
        session_id: Some("s1".into()),
    }
}

pub fn all_client_msgs() -> Vec<ClientMsg> {
    vec![
        ClientMsg::Hello {
            role: Role::Capture,
            token: "tok".into(),
            client: "test/1".into(),
        },
        ClientMsg::Hello {
            role: Role::Feed,
            token: String::new(),
            client: "feed".into(),
        },
        ClientMsg::SessionStart(SessionStart {
            session_id: "s1".into(),
            fps: 29.97,
            width: 1280,
            height: 720,
            piste: "p1".into(),
            camera: "cam0".into(),
            undistort: Some(UndistortHint {
                enabled: true,
                strength: -0.3,
                balance: 0.1,
            }),
            resume: true,
            resume_secret: Some("00112233445566778899aabbccddeeff".into()),
        }),
        ClientMsg::Signal(Signal {
            session_id: "s1".into(),
            phrase: 2,
            filename: "3809_signal.txt".into(),
            bytes: b"0.000 | Phrase recording started\n".to_vec(),
            phrase_start_us: Some(1_700_000_000_000_000),
        }),
        ClientMsg::End {
            session_id: "s1".into(),
        },
        ClientMsg::Abort {
            session_id: "s1".into(),
            reason: "camera lost".into(),
        },
        ClientMsg::Ping { nonce: u64::MAX },
        ClientMsg::FeedSubscribe {
            pistes: vec!["p1".into(), "p2".into()],
        },
    ]
}

pub fn all_server_msgs() -> Vec<ServerMsg> {
    vec![
        ServerMsg::Welcome {
            server: "referee 0.1".into(),
            protocol: PROTOCOL_VERSION,
        },
        ServerMsg::SessionStarted {
            session_id: "s1".into(),
            ack: ack(),
            resume_secret: "00112233445566778899aabbccddeeff".into(),
        },
        ServerMsg::Ack {
            session_id: "s1".into(),
            ack: ack(),
        },
        ServerMsg::SignalAck {
            session_id: "s1".into(),
            phrase: 1,
        },
        ServerMsg::Progress {
            session_id: "s1".into(),
            stats: stats(),
            queue_depth: 3,
        },
        ServerMsg::Live(live()),
        ServerMsg::Verdict(verdict()),
        ServerMsg::SessionEnded {
            session_id: "s1".into(),
            stats: stats(),
        },
        ServerMsg::Error(error_msg()),
        ServerMsg::Pong { nonce: 7 },
        ServerMsg::Feed(FeedEvent::SessionStarted {
            session_id: "s1".into(),
            piste: "p1".into(),
        }),
        ServerMsg::Feed(FeedEvent::Live(live())),
        ServerMsg::Feed(FeedEvent::Verdict(verdict())),
        ServerMsg::Feed(FeedEvent::SessionEnded {
            session_id: "s1".into(),
            piste: "p1".into(),
            stats: stats(),
        }),
        ServerMsg::Feed(FeedEvent::Error(error_msg())),
        ServerMsg::Feed(FeedEvent::Lagged { count: 5 }),
    ]
}

pub fn header(frame: u64, len: usize) -> FrameHeader {
    FrameHeader {
        session_id: "s1".into(),
        frame,
        capture_ts_us: 1_700_000_000_000_000 + frame * 33_333,
        encoding: FrameEncoding::Jpeg,
        len: len as u32,
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so frame contents are checkable.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}
