//! `referee evaluate` (not implemented yet).

/// Arguments of `referee evaluate`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`referee evaluate` is not implemented yet")
}
