//! Command-line pieces shared by the agent (`referee-capture`) and the `referee` binary.
//!
//! [`TrustArgs`] is the one definition of the flags that say how the daemon's certificate is
//! trusted (`--ca`, `--server-fingerprint`, `--insecure-loopback`); flatten it into a clap
//! command and turn it into the transport's [`Trust`] with [`TrustArgs::trust`].

use anyhow::{bail, Context};
use referee_transport::Trust;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How a client trusts the daemon's certificate: at most one of the three flags (clap group
/// [`TrustArgs::GROUP`]).
///
/// ```
/// #[derive(clap::Parser)]
/// // Optional: make the choice a usage error when missing (otherwise `trust` explains it).
/// #[command(mut_group(referee_capture::cli::TrustArgs::GROUP, |g| g.required(true)))]
/// struct Cli {
///     #[command(flatten)]
///     trust: referee_capture::cli::TrustArgs,
/// }
/// # use clap::Parser;
/// let cli = Cli::parse_from(["client", "--insecure-loopback"]);
/// let trust = cli.trust.trust("127.0.0.1:4433".parse().unwrap()).unwrap();
/// assert!(matches!(trust, referee_transport::Trust::InsecureLoopback));
/// ```
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
#[group(id = "trust", multiple = false)]
pub struct TrustArgs {
    /// Trust the daemon's certificate through this CA file (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Pin the daemon's certificate: the SHA-256 it prints at start, or the path of its identity.sha256.
    #[arg(long, value_name = "HEX|FILE")]
    pub server_fingerprint: Option<String>,
    /// Accept any certificate (loopback addresses only; development).
    #[arg(long)]
    pub insecure_loopback: bool,
}

impl TrustArgs {
    /// Id of the clap group of the three flags (for `mut_group`).
    pub const GROUP: &'static str = "trust";

    /// The trust mode for a daemon at `server`. The CA file must be readable, a fingerprint
    /// must be 64 hex digits or name a file holding them, and `--insecure-loopback` is refused
    /// for a non-loopback `server`; with no flag at all, the error says what to give.
    pub fn trust(&self, server: SocketAddr) -> anyhow::Result<Trust> {
        if let Some(ca) = &self.ca {
            std::fs::metadata(ca)
                .with_context(|| format!("--ca {}: cannot read the CA file", ca.display()))?;
            return Ok(Trust::CaFile(ca.clone()));
        }
        if let Some(fp) = &self.server_fingerprint {
            return Trust::fingerprint_from_arg(fp).context("--server-fingerprint");
        }
        if !self.insecure_loopback {
            bail!(
                "say how to trust the daemon: --server-fingerprint (the value it prints at start, \
                 or its identity.sha256 file), --ca FILE, or --insecure-loopback for a local test"
            );
        }
        if !server.ip().is_loopback() {
            bail!(
                "--insecure-loopback is only allowed for loopback addresses, not {server}; use \
                 --server-fingerprint (the daemon prints it and writes identity.sha256) or --ca"
            );
        }
        Ok(Trust::InsecureLoopback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Optional {
        #[command(flatten)]
        trust: TrustArgs,
    }

    #[derive(Parser, Debug)]
    #[command(mut_group(TrustArgs::GROUP, |g| g.required(true)))]
    struct Required {
        #[command(flatten)]
        trust: TrustArgs,
    }

    const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn local() -> SocketAddr {
        "127.0.0.1:4433".parse().unwrap()
    }

    fn parse(args: &[&str]) -> Result<TrustArgs, clap::Error> {
        Optional::try_parse_from(["t"].iter().chain(args)).map(|c| c.trust)
    }

    fn message(r: anyhow::Result<Trust>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn clap_accepts_both_uses() {
        use clap::CommandFactory;
        Optional::command().debug_assert();
        Required::command().debug_assert();
    }

    #[test]
    fn each_flag_gives_its_trust_mode() {
        let t = parse(&["--server-fingerprint", FP]).unwrap().trust(local());
        assert_eq!(t.unwrap(), Trust::Fingerprint(FP.into()));
        let t = parse(&["--insecure-loopback"]).unwrap().trust(local());
        assert_eq!(t.unwrap(), Trust::InsecureLoopback);
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let t = parse(&["--ca", ca.to_str().unwrap()])
            .unwrap()
            .trust(local());
        assert_eq!(t.unwrap(), Trust::CaFile(ca));
        // A fingerprint may name the daemon's identity.sha256.
        let file = dir.path().join("identity.sha256");
        std::fs::write(&file, format!("{FP}\n")).unwrap();
        let t = parse(&["--server-fingerprint", file.to_str().unwrap()]).unwrap();
        assert_eq!(t.trust(local()).unwrap(), Trust::Fingerprint(FP.into()));
    }

    #[test]
    fn the_flags_exclude_one_another() {
        let e = parse(&["--insecure-loopback", "--server-fingerprint", FP]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = parse(&["--ca", "x.pem", "--insecure-loopback"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_values_are_named() {
        let m = message(
            parse(&["--ca", "/nonexistent/ca.pem"])
                .unwrap()
                .trust(local()),
        );
        assert!(
            m.contains("--ca /nonexistent/ca.pem: cannot read the CA file"),
            "{m}"
        );
        let m = message(
            parse(&["--server-fingerprint", "abc"])
                .unwrap()
                .trust(local()),
        );
        assert!(m.starts_with("--server-fingerprint: "), "{m}");
        let remote = "192.0.2.10:4433".parse().unwrap();
        let m = message(parse(&["--insecure-loopback"]).unwrap().trust(remote));
        assert!(
            m.contains("only allowed for loopback") && m.contains("192.0.2.10"),
            "{m}"
        );
    }

    #[test]
    fn a_missing_choice_is_explained_or_a_usage_error() {
        let m = message(parse(&[]).unwrap().trust(local()));
        for flag in ["--server-fingerprint", "--ca", "--insecure-loopback"] {
            assert!(m.contains(flag), "{m}");
        }
        let e = Required::try_parse_from(["t"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(Required::try_parse_from(["t", "--insecure-loopback"]).is_ok());
    }
}
