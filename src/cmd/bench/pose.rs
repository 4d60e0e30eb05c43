//! `referee bench` part (not implemented yet).

/// Arguments of this benchmark.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("this benchmark is not implemented yet")
}
