//! Helpers shared by the integration tests: locating the shared data and the converted weights.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root: the first ancestor of this crate holding Cargo.lock.
pub fn workspace_root() -> PathBuf {
    let mut d = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    loop {
        if d.join("Cargo.lock").exists() {
            return d;
        }
        if !d.pop() {
            return PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        }
    }
}

/// `$REFEREE_SHARED_DIR`, else `<workspace>/../shared`, when it exists.
pub fn shared_dir() -> Option<PathBuf> {
    let d = std::env::var_os("REFEREE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("..").join("shared"));
    d.exists().then_some(d)
}

/// The official checkpoint in the shared folder, or None after printing a skip line.
pub fn shared_checkpoint() -> Option<PathBuf> {
    let p = shared_dir().map(|d| d.join("models").join("yolo11n-pose.pt"));
    match p {
        Some(p) if p.exists() => Some(p),
        other => {
            println!(
                "skipped: shared data not found at {:?}",
                other.unwrap_or_else(|| workspace_root().join("../shared/models/yolo11n-pose.pt"))
            );
            None
        }
    }
}

/// Converted weights: `$REFEREE_WEIGHTS`, else `default_weights_path()`. Panics (test failure)
/// with instructions when absent: these tests must not skip silently.
pub fn weights() -> PathBuf {
    let p = std::env::var_os("REFEREE_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(referee_models::default_weights_path);
    assert!(
        p.exists(),
        "pose weights not found at {}: run `cargo run --release -- model fetch` first \
         (or set REFEREE_WEIGHTS to a converted .safetensors)",
        p.display()
    );
    p
}

/// Reads a little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
