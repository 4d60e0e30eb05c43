//! `referee serve` (not implemented yet).

/// Arguments of `referee serve`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`referee serve` is not implemented yet")
}
