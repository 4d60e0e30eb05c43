//! `referee pose` (not implemented yet).

/// Arguments of `referee pose`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`referee pose` is not implemented yet")
}
