//! `referee serve`: the headless engine daemon.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `referee serve`.
///
/// Settings come from the built-in defaults, then --config, then REFEREE_* environment
/// variables, then the flags below (see config/referee.toml for every key).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML settings file (config/referee.toml documents every key and its default).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override any setting with a dotted key, e.g. --set server.port=5000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Address the QUIC endpoint binds; same as --set server.host=ADDR.
    #[arg(long)]
    host: Option<String>,
    /// Address the HTTP side binds (loopback unless given); same as --set http.host=ADDR.
    /// On a network address, /status and the feed need a feed token (auth.feed_tokens).
    #[arg(long)]
    http_host: Option<String>,
    /// UDP port for agents and feed subscribers; HTTP listens on the next port unless set.
    #[arg(long)]
    port: Option<u16>,
    /// TCP port for /healthz, /status, /metrics and the feed page.
    #[arg(long)]
    http_port: Option<u16>,
    /// Where per-phrase artifacts (result.json, keypoints.xlsx, timeline.svg, overlay.png) go.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut overrides = args.set.clone();
    let mut flag = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            overrides.push(format!("{k}={v}"));
        }
    };
    flag("server.host", args.host);
    flag("http.host", args.http_host);
    flag("server.port", args.port.map(|p| p.to_string()));
    flag("server.http_port", args.http_port.map(|p| p.to_string()));
    flag(
        "server.output_dir",
        args.output_dir.map(|p| p.display().to_string()),
    );
    let settings = super::load_settings(args.config.as_deref(), &overrides)?;
    let (estimators, model) = super::load_estimators(&settings)?;
    let rt = super::runtime(2)?;
    rt.block_on(async move {
        let daemon = referee_daemon::Daemon::start(&settings, estimators, &model).await?;
        eprintln!("referee daemon ready");
        eprintln!("  QUIC (agents, feed): {}", daemon.quic_addr);
        eprintln!("  HTTP (status, feed page): http://{}/", daemon.http_addr);
        eprintln!(
            "  TLS fingerprint (pin with --server-fingerprint): {}",
            daemon.fingerprint
        );
        eprintln!(
            "  fingerprint file: {}",
            settings.server.data_dir.join("identity.sha256").display()
        );
        eprintln!("  artifacts: {}", settings.server.output_dir.display());
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        eprintln!("shutting down: draining the pipeline");
        daemon.shutdown().await;
        Ok(())
    })
}
