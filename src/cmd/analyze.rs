//! `referee analyze` (not implemented yet).

/// Arguments of `referee analyze`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`referee analyze` is not implemented yet")
}
