//! `referee pistes --nats URL`: the tournament's piste registry (which daemon serves which
//! piste, its address, fingerprint and load), read from the NATS KV bucket the daemons
//! heartbeat into.

use anyhow::Context;
use referee_nats::async_nats::jetstream;

/// Arguments of `referee pistes`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  referee pistes --nats nats://10.0.0.2:4222")]
pub struct Args {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Print the entries as a JSON array.
    #[arg(long)]
    json: bool,
}

/// How to reach the tournament's NATS (shared with `referee feed --nats`).
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, value_name = "URL", env = "REFEREE_NATS_URL")]
    pub nats: Option<String>,
    /// File holding the NATS token.
    #[arg(long, value_name = "FILE")]
    pub nats_token_file: Option<std::path::PathBuf>,
    /// NATS credentials file.
    #[arg(long, value_name = "FILE")]
    pub nats_credentials: Option<std::path::PathBuf>,
    /// CA file for a TLS NATS.
    #[arg(long, value_name = "FILE")]
    pub nats_ca: Option<std::path::PathBuf>,
}

impl NatsArgs {
    /// The connection arguments, or `None` without `--nats`.
    pub fn connect_args(&self, name: &str) -> Option<referee_nats::ConnectArgs> {
        Some(referee_nats::ConnectArgs {
            url: self.nats.clone()?,
            token_file: self.nats_token_file.clone(),
            credentials_file: self.nats_credentials.clone(),
            tls_ca: self.nats_ca.clone(),
            name: name.to_string(),
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let connect = args
        .nats
        .connect_args("referee pistes")
        .context("give --nats URL (or REFEREE_NATS_URL)")?;
    let rt = super::runtime(0)?;
    let entries = rt.block_on(async {
        let client = referee_nats::connect(&connect).await?;
        let js = jetstream::new(client);
        match js.get_key_value(referee_nats::REGISTRY_BUCKET).await {
            Ok(kv) => referee_nats::list_pistes(&kv).await,
            // No daemon has registered yet.
            Err(_) => Ok(Vec::new()),
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("no piste registered on {}", connect.url);
        return Ok(());
    }
    println!(
        "{:<12} {:<20} {:<22} {:>5} {:>8}  fingerprint",
        "piste", "daemon", "quic address", "load", "sessions"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    for e in entries {
        println!(
            "{:<12} {:<20} {:<22} {:>4.0}% {:>8}  {}  (seen {:.1} s ago)",
            e.piste,
            e.daemon_id,
            e.quic_addr,
            e.load * 100.0,
            e.sessions,
            e.fingerprint,
            now.saturating_sub(e.updated_unix_ms) as f64 / 1e3
        );
    }
    Ok(())
}
