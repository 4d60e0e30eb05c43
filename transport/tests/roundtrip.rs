//! Loopback round trips: every control message, and 200 frames on parallel uni streams.

mod common;
use common::*;
use referee_transport::messages::{ClientMsg, ServerMsg};
use referee_transport::{read_frame, read_msg, send_frame, write_msg, FrameLimits};
use std::collections::HashSet;

#[tokio::test]
async fn every_client_and_server_message_round_trips() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (_s, sconn, _c, cconn) = connected().await;
        let server = tokio::spawn(async move {
            let (mut send, mut recv) = sconn.accept_bi().await.unwrap();
            let mut got = Vec::new();
            while let Some(m) = read_msg::<ClientMsg>(&mut recv, 1 << 20).await.unwrap() {
                got.push(m);
            }
            for m in all_server_msgs() {
                write_msg(&mut send, &m).await.unwrap();
            }
            send.finish().unwrap();
            let _ = send.stopped().await;
            got
        });
        let (mut send, mut recv) = cconn.open_bi().await.unwrap();
        for m in all_client_msgs() {
            write_msg(&mut send, &m).await.unwrap();
        }
        send.finish().unwrap();
        let mut back = Vec::new();
        while let Some(m) = read_msg::<ServerMsg>(&mut recv, 1 << 20).await.unwrap() {
            back.push(m);
        }
        assert_eq!(server.await.unwrap(), all_client_msgs());
        assert_eq!(back, all_server_msgs());
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn two_hundred_frames_on_parallel_streams_all_arrive_intact() {
    const N: u64 = 200;
    const SIZE: usize = 150_000;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (_s, sconn, _c, cconn) = connected().await;
        let server = tokio::spawn(async move {
            let limits = FrameLimits::default();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..N {
                let recv = sconn.accept_uni().await.unwrap();
                tasks.spawn(async move { read_frame(recv, &limits).await });
            }
            let mut order = Vec::new();
            while let Some(r) = tasks.join_next().await {
                let (h, bytes) = r.unwrap().unwrap();
                assert_eq!(h.len as usize, bytes.len());
                assert_eq!(bytes, pattern(h.frame, SIZE - (h.frame as usize % 7)));
                assert_eq!(h, header(h.frame, bytes.len()));
                order.push(h.frame);
            }
            order
        });
        let mut sends = tokio::task::JoinSet::new();
        for f in 0..N {
            let conn = cconn.clone();
            sends.spawn(async move {
                let bytes = pattern(f, SIZE - (f as usize % 7));
                send_frame(&conn, &header(f, bytes.len()), &bytes).await
            });
        }
        while let Some(r) = sends.join_next().await {
            r.unwrap().unwrap();
        }
        let order = server.await.unwrap();
        let unique: HashSet<u64> = order.iter().copied().collect();
        assert_eq!(unique.len() as u64, N, "every frame exactly once");
        assert_eq!(unique, (0..N).collect());
        let displaced = order.iter().enumerate().filter(|(i, f)| *i as u64 != **f).count();
        println!("arrival order (completion order of reads): {displaced} of {N} frames completed out of send order; first 20: {:?}", &order[..20]);
    })
    .await
    .expect("test timed out");
}
