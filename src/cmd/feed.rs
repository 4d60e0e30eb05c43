//! `referee feed` (not implemented yet).

/// Arguments of `referee feed`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`referee feed` is not implemented yet")
}
