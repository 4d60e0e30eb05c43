//! The signal-folder watcher of watch mode: each new log the scoring box writes closes a phrase.
//!
//! The folder is polled: a file present at the start is never sent; a new file is sent when its
//! size is non-zero and the same in two polls in a row (the box has finished writing), and again
//! each time it grows and settles (the box appends the referee's call to the phrase's log after
//! the phrase; the daemon keeps it beside the verdict).

use super::AgentError;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Polls `dir` and yields each new file (not present at start) once its size is stable across
/// two polls, and again whenever its size changes and settles, as (file name, contents).
pub(super) fn spawn_watcher(
    dir: PathBuf,
    poll: Duration,
    stop: Arc<AtomicBool>,
) -> Result<mpsc::Receiver<(String, Vec<u8>)>, AgentError> {
    let initial = list_files(&dir).map_err(|e| AgentError::Signal {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let mut new_files = NewFiles::after(initial);
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
            tokio::time::sleep(poll).await;
            let Ok(files) = list_files(&dir) else {
                continue;
            };
            for path in new_files.settled(files) {
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let name = path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        if tx.send((name, bytes)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot read new signal log")
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// The regular files of `dir` with their sizes, sorted by path.
fn list_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let md = e.metadata()?;
        if md.is_file() {
            v.push((e.path(), md.len()));
        }
    }
    v.sort();
    Ok(v)
}

/// Which files of successive listings are new (or changed) and finished.
struct NewFiles {
    /// Files present at the start: never yielded.
    initial: HashSet<PathBuf>,
    /// Files yielded, with their size when yielded.
    yielded: HashMap<PathBuf, u64>,
    /// Size of each new or changed file at the previous poll.
    sizes: HashMap<PathBuf, u64>,
}

impl NewFiles {
    /// Files of `initial` (the listing at the start) are never yielded.
    fn after(initial: Vec<(PathBuf, u64)>) -> Self {
        NewFiles {
            initial: initial.into_iter().map(|(p, _)| p).collect(),
            yielded: HashMap::new(),
            sizes: HashMap::new(),
        }
    }

    /// The files of this listing that are new, or changed size since they were yielded, and
    /// whose non-zero size did not change since the previous listing.
    fn settled(&mut self, files: Vec<(PathBuf, u64)>) -> Vec<PathBuf> {
        let mut ready = Vec::new();
        for (path, len) in files {
            if self.initial.contains(&path) || self.yielded.get(&path) == Some(&len) {
                self.sizes.remove(&path);
                continue;
            }
            let stable = self.sizes.get(&path) == Some(&len) && len > 0;
            if !stable {
                self.sizes.insert(path, len);
                continue;
            }
            self.sizes.remove(&path);
            self.yielded.insert(path.clone(), len);
            ready.push(path);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(files: &[(&str, u64)]) -> Vec<(PathBuf, u64)> {
        files.iter().map(|&(p, n)| (PathBuf::from(p), n)).collect()
    }

    #[test]
    fn new_files_are_yielded_once_their_size_settles() {
        let mut w = NewFiles::after(listing(&[("old.txt", 10)]));
        assert!(w
            .settled(listing(&[("old.txt", 12), ("a.txt", 0)]))
            .is_empty());
        // Empty, then growing: not finished yet.
        assert!(w.settled(listing(&[("a.txt", 0)])).is_empty());
        assert!(w.settled(listing(&[("a.txt", 5)])).is_empty());
        assert_eq!(
            w.settled(listing(&[("a.txt", 5), ("b.txt", 3)])),
            [PathBuf::from("a.txt")]
        );
        // Yielded once only; b settles at the next poll.
        assert_eq!(
            w.settled(listing(&[("a.txt", 5), ("b.txt", 3)])),
            [PathBuf::from("b.txt")]
        );
        assert!(w.settled(listing(&[("a.txt", 5), ("b.txt", 3)])).is_empty());
    }

    #[test]
    fn a_log_that_grows_after_it_was_sent_is_yielded_again_once_settled() {
        let mut w = NewFiles::after(listing(&[("old.txt", 10)]));
        assert!(w.settled(listing(&[("a.txt", 5)])).is_empty());
        assert_eq!(
            w.settled(listing(&[("a.txt", 5)])),
            [PathBuf::from("a.txt")]
        );
        // The referee's call is appended: yielded again when it settles, once.
        assert!(w.settled(listing(&[("a.txt", 9)])).is_empty());
        assert_eq!(
            w.settled(listing(&[("a.txt", 9)])),
            [PathBuf::from("a.txt")]
        );
        assert!(w.settled(listing(&[("a.txt", 9)])).is_empty());
        // A file present at the start stays ignored, whatever happens to it.
        assert!(w.settled(listing(&[("old.txt", 12)])).is_empty());
        assert!(w.settled(listing(&[("old.txt", 12)])).is_empty());
    }

    #[tokio::test]
    async fn watcher_sends_new_logs_but_not_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("before.txt"), b"old").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let poll = Duration::from_millis(10);
        let mut rx = spawn_watcher(dir.path().to_path_buf(), poll, stop.clone()).unwrap();
        std::fs::write(dir.path().join("phrase1.txt"), b"log 1").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(
            got.unwrap(),
            Some(("phrase1.txt".into(), b"log 1".to_vec()))
        );
        stop.store(true, Ordering::Relaxed);
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(end.unwrap(), None, "the watcher ends when stopped");
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let stop = Arc::new(AtomicBool::new(false));
        let missing = PathBuf::from("/nonexistent/signal-logs");
        let err = spawn_watcher(missing, Duration::from_millis(10), stop).unwrap_err();
        assert!(matches!(err, AgentError::Signal { .. }), "{err}");
    }
}
