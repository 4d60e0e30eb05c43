//! Log output of the binaries (`referee` and `referee-capture`): `tracing` to stderr, colour
//! only when stderr is a terminal, so that a log file or a pipe gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber once. The filter is `directive` when given, else `RUST_LOG`, else
/// `default` (e.g. "info"). A second call changes nothing.
pub fn init(directive: Option<&str>, default: &str) {
    let filter = match directive {
        Some(d) => EnvFilter::new(d),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
