//! Truncated, oversize, garbage and wrong-version input: each refused with its specific error.

mod common;
use common::*;
use referee_transport::endpoint::client_endpoint_with_alpn;
use referee_transport::messages::{ClientMsg, FrameHeader};
use referee_transport::{
    decode_msg, encode_msg, read_frame, read_msg, send_frame, FrameLimits, TransportError, Trust,
};
use std::time::Duration;

/// Sends `raw` on a fresh uni stream and returns what `read_frame` makes of it.
async fn frame_result(
    raw: Vec<u8>,
    limits: FrameLimits,
    finish: bool,
) -> Result<(FrameHeader, Vec<u8>), TransportError> {
    let (_s, sconn, _c, cconn) = connected().await;
    let mut send = cconn.open_uni().await.unwrap();
    send.write_all(&raw).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let recv = sconn.accept_uni().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), read_frame(recv, &limits))
        .await
        .expect("read_frame must not hang");
    drop(send);
    r
}

/// Sends `raw` on a bi stream (then finishes it) and returns what `read_msg` makes of it.
async fn msg_result(raw: Vec<u8>, max: usize) -> Result<Option<ClientMsg>, TransportError> {
    let (_s, sconn, _c, cconn) = connected().await;
    let (mut send, _recv) = cconn.open_bi().await.unwrap();
    send.write_all(&raw).await.unwrap();
    send.finish().unwrap();
    let (_ssend, mut recv) = sconn.accept_bi().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        read_msg::<ClientMsg>(&mut recv, max),
    )
    .await
    .expect("read_msg must not hang")
}

fn frame_bytes(h: &FrameHeader, body: &[u8]) -> Vec<u8> {
    let mut v = encode_msg(h).unwrap();
    v.extend_from_slice(body);
    v
}

#[tokio::test]
async fn truncated_input_is_refused_as_truncated() {
    // Frame body shorter than the header says.
    let r = frame_result(
        frame_bytes(&header(0, 1000), &[1; 10]),
        FrameLimits::default(),
        true,
    )
    .await;
    assert!(
        matches!(
            r,
            Err(TransportError::Truncated {
                what: "frame",
                expected: 1000,
                got: 10
            })
        ),
        "{r:?}"
    );
    // Header cut short.
    let mut raw = encode_msg(&header(0, 10)).unwrap();
    raw.truncate(8);
    let r = frame_result(raw, FrameLimits::default(), true).await;
    assert!(
        matches!(
            r,
            Err(TransportError::Truncated {
                what: "frame header",
                ..
            })
        ),
        "{r:?}"
    );
    // Empty stream.
    let r = frame_result(Vec::new(), FrameLimits::default(), true).await;
    assert!(matches!(r, Err(TransportError::Truncated { .. })), "{r:?}");
    // Message cut inside its body, and inside its prefix.
    let mut raw = encode_msg(&ClientMsg::Ping { nonce: 99 }).unwrap();
    raw.pop();
    let r = msg_result(raw, 1 << 20).await;
    assert!(
        matches!(
            r,
            Err(TransportError::Truncated {
                what: "message",
                ..
            })
        ),
        "{r:?}"
    );
    let r = msg_result(vec![5, 0], 1 << 20).await;
    assert!(
        matches!(
            r,
            Err(TransportError::Truncated {
                what: "message length prefix",
                ..
            })
        ),
        "{r:?}"
    );
    // A clean end between messages is not an error.
    let r = msg_result(Vec::new(), 1 << 20).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
}

#[tokio::test]
async fn oversize_input_is_refused_before_allocation() {
    let limits = FrameLimits {
        max_frame_bytes: 4096,
        max_header_bytes: 256,
        read_timeout: None,
    };
    // Only the header is sent and the stream is left open: the refusal must come from the
    // header alone, without waiting for (or allocating) the announced 4 GB.
    let r = frame_result(
        encode_msg(&header(0, u32::MAX as usize)).unwrap(),
        limits,
        false,
    )
    .await;
    assert!(
        matches!(r, Err(TransportError::TooLarge { what: "frame", len, max: 4096 }) if len == u32::MAX as u64),
        "{r:?}"
    );
    let r = frame_result(vec![0xff, 0xff, 0, 0], limits, false).await;
    assert!(
        matches!(
            r,
            Err(TransportError::TooLarge {
                what: "frame header",
                ..
            })
        ),
        "{r:?}"
    );
    let r = msg_result(vec![0xff, 0xff, 0xff, 0x7f], 1 << 20).await;
    assert!(
        matches!(
            r,
            Err(TransportError::TooLarge {
                what: "message",
                max: 1048576,
                ..
            })
        ),
        "{r:?}"
    );
    let e = decode_msg::<ClientMsg>(&[0, 0, 0x20, 0], 1 << 20).unwrap_err();
    assert!(
        matches!(e, TransportError::TooLarge { len: 0x200000, .. }),
        "{e:?}"
    );
    // The sender refuses a header whose len contradicts the bytes.
    let (_s, _sconn, _c, cconn) = connected().await;
    let e = send_frame(&cconn, &header(0, 5), &[0; 6])
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Malformed { .. }), "{e:?}");
}

#[tokio::test]
async fn garbage_input_is_refused_as_malformed() {
    let mut raw = vec![12, 0, 0, 0];
    raw.extend_from_slice(&[0xff; 12]);
    let r = frame_result(raw.clone(), FrameLimits::default(), true).await;
    assert!(
        matches!(
            r,
            Err(TransportError::Malformed {
                what: "frame header",
                ..
            })
        ),
        "{r:?}"
    );
    let r = msg_result(raw, 1 << 20).await;
    assert!(
        matches!(
            r,
            Err(TransportError::Malformed {
                what: "message",
                ..
            })
        ),
        "{r:?}"
    );
    // More bytes than the header announced.
    let r = frame_result(
        frame_bytes(&header(0, 4), &[1; 9]),
        FrameLimits::default(),
        true,
    )
    .await;
    assert!(
        matches!(r, Err(TransportError::Malformed { what: "frame", .. })),
        "{r:?}"
    );
    // Trailing bytes inside a message's length.
    let mut m = encode_msg(&ClientMsg::Ping { nonce: 1 }).unwrap();
    m.push(0);
    let n = (m.len() - 4) as u32;
    m[..4].copy_from_slice(&n.to_le_bytes());
    let e = decode_msg::<ClientMsg>(&m, 1 << 20).unwrap_err();
    assert!(matches!(e, TransportError::Malformed { .. }), "{e:?}");
}

#[tokio::test]
async fn wrong_alpn_fails_the_handshake_as_unsupported_version() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (server, addr, _client) = pair();
        let srv = tokio::spawn(async move {
            let inc = server.accept().await.unwrap();
            referee_transport::accept(inc, Duration::from_secs(5)).await
        });
        let id_fp = {
            // Any trust works: the ALPN check fails before certificates matter for the test's
            // purpose; use insecure loopback so only ALPN can be the cause.
            Trust::InsecureLoopback
        };
        // The previous protocol version: an agent of an older build.
        let client = client_endpoint_with_alpn(&id_fp, addr, b"referee/1").unwrap();
        let e = referee_transport::connect(&client, addr, "localhost")
            .await
            .unwrap_err();
        assert!(matches!(e, TransportError::UnsupportedVersion(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("referee/2"), "{msg}");
        println!("client sees: {msg}");
        let s = srv.await.unwrap().unwrap_err();
        println!("server sees: {s}");
        assert!(matches!(s, TransportError::UnsupportedVersion(_)), "{s:?}");
    })
    .await
    .expect("test timed out");
}

/// Issue #16 item 7: a control message whose length prefix arrived without its body held the
/// reader for good; with a body timeout it ends in `Timeout`, while waiting for a message
/// that has not begun is not limited.
#[tokio::test]
async fn a_half_sent_control_message_times_out_once_it_began() {
    let (_s, sconn, _c, cconn) = connected().await;
    let (mut send, _recv) = cconn.open_bi().await.unwrap();
    send.write_all(&100u32.to_le_bytes()).await.unwrap();
    let (_ssend, mut recv) = sconn.accept_bi().await.unwrap();
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        referee_transport::codec::read_msg_within::<ClientMsg>(
            &mut recv,
            1 << 20,
            Duration::from_millis(300),
        ),
    )
    .await
    .expect("the body timeout must fire");
    assert!(matches!(r, Err(TransportError::Timeout { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Between messages the wait has no limit: a message sent long after the previous one
    // is read whole.
    let (mut send2, _recv2) = cconn.open_bi().await.unwrap();
    let ping = |nonce| encode_msg(&ClientMsg::Ping { nonce }).unwrap();
    send2.write_all(&ping(1)).await.unwrap();
    let (_ssend2, mut recv2) = sconn.accept_bi().await.unwrap();
    assert!(matches!(
        read_within_100ms(&mut recv2).await,
        Ok(Some(ClientMsg::Ping { nonce: 1 }))
    ));
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        send2.write_all(&ping(2)).await.unwrap();
        send2
    });
    let r = read_within_100ms(&mut recv2).await;
    assert!(matches!(r, Ok(Some(ClientMsg::Ping { nonce: 2 }))), "{r:?}");
    drop(later.await);
}

/// Issue #16 item 7: a frame stream that stalls after its header is given up after the
/// frame read timeout instead of holding its reading slot for good.
#[tokio::test]
async fn a_stalled_frame_stream_times_out() {
    let limits = FrameLimits {
        read_timeout: Some(Duration::from_millis(300)),
        ..FrameLimits::default()
    };
    let started = std::time::Instant::now();
    let r = frame_result(encode_msg(&header(0, 1000)).unwrap(), limits, false).await;
    assert!(matches!(r, Err(TransportError::Timeout { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn read_within_100ms(
    recv: &mut quinn::RecvStream,
) -> Result<Option<ClientMsg>, TransportError> {
    referee_transport::codec::read_msg_within(recv, 1 << 20, Duration::from_millis(100)).await
}
