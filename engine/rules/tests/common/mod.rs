//! Shared helpers for the integration tests: locating the real data.

use std::path::PathBuf;

/// `shared/data`, found from $REFEREE_SHARED_DIR or by walking up to the workspace root (the
/// directory holding Cargo.lock) and taking ../shared/data. `None` (with a printed skip line)
/// when absent.
pub fn shared_data() -> Option<PathBuf> {
    let dir = if let Ok(s) = std::env::var("REFEREE_SHARED_DIR") {
        PathBuf::from(s).join("data")
    } else {
        let mut d = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        loop {
            if d.join("Cargo.lock").is_file() {
                break d.join("../shared/data");
            }
            if !d.pop() {
                break PathBuf::from("../shared/data");
            }
        }
    };
    if dir.join("phrases").is_dir() {
        Some(dir)
    } else {
        println!("skipped: shared data not found at {}", dir.display());
        None
    }
}

/// Every phrase folder under shared/data/phrases, sorted.
pub fn phrase_dirs(data: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("phrases"))
        .expect("list phrases")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("signal.txt").is_file())
        .collect();
    v.sort();
    v
}
