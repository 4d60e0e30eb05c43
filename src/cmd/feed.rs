//! `referee feed`: subscribe to a daemon's progressive verdict feed and print events.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};
use referee_capture::cli::TrustArgs;
use referee_transport::messages::{ClientMsg, FeedEvent, Role, ServerMsg, Winner};
use referee_transport::{client_endpoint_for, connect, read_msg, write_msg, Trust};

/// Arguments of `referee feed`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  referee feed 127.0.0.1:4433 --server-fingerprint ./referee-data/identity.sha256"
)]
pub struct Args {
    /// Daemon address, HOST:PORT (the QUIC port, REFEREE_PORT); not with --nats.
    #[arg(required_unless_present = "nats", conflicts_with = "nats")]
    server: Option<String>,
    /// Every piste of the tournament instead of one daemon: subscribe to
    /// <prefix>.piste.*.> on this NATS.
    #[command(flatten)]
    nats: super::pistes::NatsArgs,
    /// Subject prefix of the tournament (the daemons' nats.subject_prefix).
    #[arg(long, default_value = "referee", requires = "nats")]
    nats_prefix: String,
    /// Only events of this piste (repeatable); all pistes when absent.
    #[arg(long = "piste", value_name = "P")]
    pistes: Vec<String>,
    /// Print one JSON object per event instead of readable lines.
    #[arg(long)]
    json: bool,
    /// Feed token (one of the daemon's REFEREE_FEED_TOKENS).
    #[arg(
        long,
        env = "REFEREE_FEED_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
    #[command(flatten)]
    #[command(next_help_heading = "Trust (QUIC)")]
    trust: TrustArgs,
    /// Name the certificate must carry (CA mode).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Stop after this many verdicts (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    verdicts: u64,
}

/// Resolves HOST:PORT.
pub fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("{server:?} is not a HOST:PORT address"))?
        .next()
        .with_context(|| format!("{server:?} did not resolve to any address"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(connect) = args.nats.connect_args("referee feed") {
        let rt = super::runtime(0)?;
        return rt.block_on(subscribe_nats(&args, connect));
    }
    let addr = resolve(args.server.as_deref().unwrap_or_default())?;
    let trust = args.trust.trust(addr)?;
    let rt = super::runtime(0)?;
    rt.block_on(subscribe(args, addr, trust))
}

async fn subscribe(args: Args, addr: SocketAddr, trust: Trust) -> anyhow::Result<()> {
    let endpoint = client_endpoint_for(&trust, addr)?;
    let conn = connect(&endpoint, addr, &args.server_name)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut send, mut recv) = conn.open_bi().await.context("opening the control stream")?;
    let hello = ClientMsg::Hello {
        role: Role::Feed,
        token: args.token.clone(),
        client: format!("referee-feed/{}", env!("CARGO_PKG_VERSION")),
    };
    write_msg(&mut send, &hello).await?;
    match read_msg::<ServerMsg>(&mut recv, 1 << 22).await? {
        Some(ServerMsg::Welcome { server, .. }) => {
            if !args.json {
                eprintln!("connected to {server} at {addr}; waiting for events (Ctrl-C to stop)");
            }
        }
        Some(ServerMsg::Error(e)) => bail!("the daemon refused the subscription: {}", e.message),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    write_msg(
        &mut send,
        &ClientMsg::FeedSubscribe {
            pistes: args.pistes.clone(),
        },
    )
    .await?;
    let mut verdicts = 0u64;
    loop {
        let msg = tokio::select! {
            m = read_msg::<ServerMsg>(&mut recv, 1 << 22) => m?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(msg) = msg else {
            eprintln!("the daemon closed the feed");
            break;
        };
        let ServerMsg::Feed(event) = msg else {
            continue;
        };
        if args.json {
            let (kind, data) = referee_daemon::http::sse_parts(&event);
            println!("{}", serde_json::json!({"event": kind, "data": data}));
        } else {
            println!("{}", describe(&event));
        }
        if matches!(event, FeedEvent::Verdict(_)) {
            verdicts += 1;
            if args.verdicts > 0 && verdicts >= args.verdicts {
                break;
            }
        }
    }
    conn.close(0u32.into(), b"bye");
    Ok(())
}

/// Every piste's events from the tournament's NATS, printed like the QUIC feed.
async fn subscribe_nats(args: &Args, connect: referee_nats::ConnectArgs) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let client = referee_nats::connect(&connect).await?;
    let subjects = referee_nats::Subjects::new(&args.nats_prefix);
    let subject = subjects.all_pistes();
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .with_context(|| format!("subscribing to {subject}"))?;
    if !args.json {
        eprintln!(
            "subscribed to {subject} on {}; waiting for events (Ctrl-C to stop)",
            connect.url
        );
    }
    let mut verdicts = 0u64;
    loop {
        let m = tokio::select! {
            m = sub.next() => m,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(m) = m else {
            eprintln!("the NATS subscription ended");
            break;
        };
        let Ok(msg) = serde_json::from_slice::<referee_nats::FeedMessage>(&m.payload) else {
            continue;
        };
        let Some(event) = msg.to_event() else {
            continue;
        };
        if !args.pistes.is_empty() && !args.pistes.iter().any(|p| Some(p) == piste_of(&event)) {
            continue;
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({"event": msg.event, "daemon": msg.daemon, "data": msg.data})
            );
        } else {
            println!("{}", describe(&event));
        }
        if matches!(event, FeedEvent::Verdict(_)) {
            verdicts += 1;
            if args.verdicts > 0 && verdicts >= args.verdicts {
                break;
            }
        }
    }
    Ok(())
}

fn piste_of(event: &FeedEvent) -> Option<&String> {
    match event {
        FeedEvent::SessionStarted { piste, .. } | FeedEvent::SessionEnded { piste, .. } => {
            Some(piste)
        }
        FeedEvent::Live(l) => Some(&l.piste),
        FeedEvent::Verdict(v) => Some(&v.piste),
        FeedEvent::Error(_) | FeedEvent::Lagged { .. } => None,
    }
}

/// One readable line per event.
pub fn describe(event: &FeedEvent) -> String {
    match event {
        FeedEvent::SessionStarted { session_id, piste } => {
            format!("[{piste}] session {session_id} started")
        }
        FeedEvent::Live(l) => {
            let side = |f: &referee_transport::messages::FencerState| {
                if f.visible {
                    format!("x={:.2} {} ({:+.2})", f.x, f.action, f.speed)
                } else {
                    "unseen".to_string()
                }
            };
            let row = match l.right_of_way {
                Some(s) => format!("{s:?} ({:.0}%)", l.confidence * 100.0),
                None => "nobody".into(),
            };
            format!(
                "[{}] t={:5.2}s  left: {}  right: {}  right-of-way: {}",
                l.piste,
                l.t,
                side(&l.left),
                side(&l.right),
                row
            )
        }
        FeedEvent::Verdict(v) => {
            let who = match v.winner {
                Winner::Left => "POINT LEFT".to_string(),
                Winner::Right => "POINT RIGHT".to_string(),
                Winner::Uncertain => "UNCERTAIN (referee decides)".to_string(),
            };
            format!(
                "[{}] VERDICT {} phrase {}: {} ({:.0}%): {} [decided {:.1} ms after the signal]",
                v.piste,
                v.session_id,
                v.phrase,
                who,
                v.confidence * 100.0,
                v.reason,
                v.latency_ms
            )
        }
        FeedEvent::SessionEnded {
            session_id,
            piste,
            stats,
        } => format!(
            "[{piste}] session {session_id} ended: {} frames received, {} processed, {} bad",
            stats.received, stats.processed, stats.bad_frames
        ),
        FeedEvent::Error(e) => format!("error {:?}: {}", e.code, e.message),
        FeedEvent::Lagged { count } => {
            format!("(this terminal was too slow: {count} events were skipped)")
        }
    }
}
