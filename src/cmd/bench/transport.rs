//! `referee bench transport`: frames of ~150 KB over loopback QUIC through the real endpoints
//! (`server_endpoint`, `client_endpoint`, `send_frame`, `read_frame`), then Ping/Pong round trips
//! on the control stream.

use anyhow::Context;
use referee_transport::messages::{ClientMsg, FrameEncoding, FrameHeader, ServerMsg};
use referee_transport::{
    client_endpoint, connect, read_frame, read_msg, send_frame, server_endpoint, write_msg,
    EndpointLimits, ServerIdentity, Trust,
};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of this benchmark.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of frames to send.
    #[arg(long, default_value_t = 2000)]
    pub frames: u64,
    /// Bytes per frame.
    #[arg(long, default_value_t = 150_000)]
    pub size: usize,
    /// Frames in flight at once (each on its own stream).
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
    /// Ping/Pong round trips to time.
    #[arg(long, default_value_t = 500)]
    pub pings: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    frames: u64,
    frame_bytes: usize,
    inflight: usize,
    seconds: f64,
    frames_per_s: f64,
    mb_per_s: f64,
    handshake_ms: f64,
    ping_rtt_median_us: f64,
    ping_rtt_p99_us: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.frames > 0, "--frames must be at least 1");
    anyhow::ensure!(
        (1..=8 << 20).contains(&args.size),
        "--size must be 1..=8388608 bytes (the default frame limit)"
    );
    anyhow::ensure!(args.inflight > 0, "--inflight must be at least 1");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = crate::cmd::runtime(cores)?;
    let report = rt.block_on(bench(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "transport (loopback QUIC, TLS 1.3): {} frames of {} bytes, {} in flight",
            report.frames, report.frame_bytes, report.inflight
        );
        println!("  handshake        {:.2} ms", report.handshake_ms);
        println!(
            "  throughput       {:.0} frames/s, {:.1} MB/s ({:.2} s)",
            report.frames_per_s, report.mb_per_s, report.seconds
        );
        println!(
            "  ping round trip  median {:.0} us, p99 {:.0} us",
            report.ping_rtt_median_us, report.ping_rtt_p99_us
        );
    }
    Ok(())
}

async fn bench(args: &Args) -> anyhow::Result<Report> {
    let id = ServerIdentity::generate_self_signed(&["localhost".into()])?;
    let limits = EndpointLimits::default();
    let server = server_endpoint("127.0.0.1:0".parse()?, &id, &limits)?;
    let addr = server.local_addr()?;
    let n = args.frames;
    let frame_limits = limits.frame_limits();

    // Server: count frames on uni streams; answer pings on the control stream.
    let srv = tokio::spawn(async move {
        let inc = server.accept().await.context("server endpoint closed")?;
        let conn = referee_transport::accept(inc, Duration::from_secs(10)).await?;
        let c2 = conn.clone();
        let pinger = tokio::spawn(async move {
            let (mut send, mut recv) = c2.accept_bi().await?;
            while let Some(m) = read_msg::<ClientMsg>(&mut recv, 1 << 20).await? {
                if let ClientMsg::Ping { nonce } = m {
                    write_msg(&mut send, &ServerMsg::Pong { nonce }).await?;
                }
            }
            anyhow::Ok(())
        });
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let recv = conn.accept_uni().await?;
            tasks.spawn(async move { read_frame(recv, &frame_limits).await });
        }
        let mut bytes = 0u64;
        while let Some(r) = tasks.join_next().await {
            let (h, b) = r??;
            anyhow::ensure!(
                h.len as usize == b.len(),
                "frame {} length mismatch",
                h.frame
            );
            bytes += b.len() as u64;
        }
        let done = Instant::now();
        pinger.await??;
        anyhow::Ok((bytes, done, conn))
    });

    let client = client_endpoint(&Trust::Fingerprint(id.fingerprint_hex()))?;
    let t0 = Instant::now();
    let conn = connect(&client, addr, "localhost").await?;
    let handshake = t0.elapsed();

    let payload: Arc<Vec<u8>> = Arc::new((0..args.size).map(|i| (i * 31 % 251) as u8).collect());
    let sem = Arc::new(tokio::sync::Semaphore::new(args.inflight));
    let start = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for f in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (conn, payload) = (conn.clone(), payload.clone());
        sends.spawn(async move {
            let h = FrameHeader {
                session_id: "bench".into(),
                frame: f,
                capture_ts_us: 0,
                encoding: FrameEncoding::Jpeg,
                len: payload.len() as u32,
            };
            let r = send_frame(&conn, &h, &payload).await;
            drop(permit);
            r
        });
        while let Some(r) = sends.try_join_next() {
            r??;
        }
    }
    while let Some(r) = sends.join_next().await {
        r??;
    }

    // Ping/Pong on one control stream while the frame reads drain.
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut rtts = Vec::with_capacity(args.pings as usize);
    for nonce in 0..u64::from(args.pings) {
        let t = Instant::now();
        write_msg(&mut send, &ClientMsg::Ping { nonce }).await?;
        match read_msg::<ServerMsg>(&mut recv, 1 << 20).await? {
            Some(ServerMsg::Pong { nonce: n2 }) if n2 == nonce => {}
            other => anyhow::bail!("expected Pong {nonce}, got {other:?}"),
        }
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    send.finish()?;
    let (bytes, done, _sconn) = srv.await??;
    let secs = done.duration_since(start).as_secs_f64();
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Report {
        frames: n,
        frame_bytes: args.size,
        inflight: args.inflight,
        seconds: secs,
        frames_per_s: n as f64 / secs,
        mb_per_s: bytes as f64 / secs / 1e6,
        handshake_ms: handshake.as_secs_f64() * 1e3,
        ping_rtt_median_us: pct(0.5),
        ping_rtt_p99_us: pct(0.99),
    })
}
