//! Retention: recordings older than the age limit go, then the oldest while the folder is
//! over its size limit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::reader::list;

/// How much to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Total bytes of every recording together; `None` = no size limit.
    pub max_bytes: Option<u64>,
    /// Age (since the file was last written); `None` = no age limit.
    pub max_age: Option<Duration>,
}

/// What [`enforce`] removed and what is left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Files deleted, oldest first.
    pub deleted: Vec<PathBuf>,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Recordings left.
    pub kept: usize,
    /// Their bytes.
    pub kept_bytes: u64,
}

/// Applies `policy` to the recordings under `root` as of `now`, oldest first (by modification
/// time, then path). Files in `busy` (recordings being written) are never deleted but count
/// towards the size. Empty session folders are removed. Files that vanish meanwhile are
/// skipped; a file that cannot be deleted is logged and kept.
pub fn enforce(root: &Path, policy: Retention, now: SystemTime, busy: &HashSet<PathBuf>) -> Pruned {
    let paths = match list(root) {
        Ok(p) => p,
        Err(e) => {
            if root.exists() {
                tracing::warn!(error = %e, "retention: cannot list the recordings");
            }
            return Pruned::default();
        }
    };
    let mut files: Vec<(SystemTime, PathBuf, u64)> = paths
        .into_iter()
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            Some((meta.modified().unwrap_or(now), p, meta.len()))
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.2).sum();
    let mut pruned = Pruned::default();
    let mut kept = Vec::new();
    for (modified, path, len) in files {
        let too_old = policy
            .max_age
            .is_some_and(|age| now.duration_since(modified).unwrap_or_default() > age);
        let too_big = policy.max_bytes.is_some_and(|max| total > max);
        if (too_old || too_big) && !busy.contains(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    pruned.deleted_bytes += len;
                    if let Some(dir) = path.parent() {
                        // Only succeeds once the session folder is empty.
                        let _ = std::fs::remove_dir(dir);
                    }
                    pruned.deleted.push(path);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    total -= len;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "retention: cannot delete")
                }
            }
        }
        kept.push(len);
    }
    pruned.kept = kept.len();
    pruned.kept_bytes = kept.iter().sum();
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, len: usize, age_s: u64, now: SystemTime) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; len]).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(now - Duration::from_secs(age_s)).unwrap();
        p
    }

    #[test]
    fn deletes_the_oldest_first_until_under_the_size_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let a = file(&tmp.path().join("s1"), "phrase-000.tar", 1000, 300, now);
        let b = file(&tmp.path().join("s1"), "phrase-001.tar", 1000, 200, now);
        let c = file(&tmp.path().join("s2"), "phrase-000.tar", 1000, 100, now);
        let other = file(&tmp.path().join("s2"), "notes.txt", 5000, 900, now);
        let policy = Retention {
            max_bytes: Some(2000),
            max_age: None,
        };
        let p = enforce(tmp.path(), policy, now, &HashSet::new());
        assert_eq!(p.deleted, vec![a.clone()]);
        assert_eq!((p.deleted_bytes, p.kept, p.kept_bytes), (1000, 2, 2000));
        assert!(!a.exists() && b.exists() && c.exists() && other.exists());
        // Under the limit now: nothing more goes.
        assert!(enforce(tmp.path(), policy, now, &HashSet::new())
            .deleted
            .is_empty());
    }

    #[test]
    fn deletes_by_age_spares_busy_files_and_empty_folders_go() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let old = file(&tmp.path().join("s1"), "phrase-000.tar", 10, 7200, now);
        let busy = file(
            &tmp.path().join("s2"),
            "phrase-000.tar.partial",
            10,
            7200,
            now,
        );
        let fresh = file(&tmp.path().join("s3"), "phrase-000.tar", 10, 10, now);
        let policy = Retention {
            max_bytes: None,
            max_age: Some(Duration::from_secs(3600)),
        };
        let p = enforce(tmp.path(), policy, now, &HashSet::from([busy.clone()]));
        assert_eq!(p.deleted, vec![old]);
        assert!(
            !tmp.path().join("s1").exists(),
            "empty session folder removed"
        );
        assert!(busy.exists() && fresh.exists());
    }
}
