//! `referee demo` (not implemented yet).

/// Arguments of `referee demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`referee demo` is not implemented yet")
}
