//! Helpers shared by the integration tests: the official checkpoint and the converted weights
//! (located by `referee-test-support`), and reading the committed test vectors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The official checkpoint in the shared folder, or None after a skip line (a failure under CI).
pub fn shared_checkpoint() -> Option<PathBuf> {
    referee_test_support::require_shared(
        referee_test_support::SHARED_CHECKPOINT,
        "reading the official YOLO11n-pose checkpoint",
    )
}

/// Converted weights: `$REFEREE_WEIGHTS`, else `default_weights_path()`. Panics (test failure)
/// with instructions when absent: these tests must not skip silently.
pub fn weights() -> PathBuf {
    referee_test_support::require_weights(referee_models::default_weights_path)
}

/// Reads a little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
