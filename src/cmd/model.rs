//! `referee model` (not implemented yet).

/// Arguments of `referee model`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`referee model` is not implemented yet")
}
