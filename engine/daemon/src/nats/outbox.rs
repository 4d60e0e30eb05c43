//! The on-disk outbox of verdicts bound for the JetStream stream: one JSON file per verdict in
//! `<data_dir>/nats-outbox/`, written atomically (temporary file, fsync, rename) before any
//! attempt to send it, removed only after the stream acknowledged it. A daemon restarted after
//! a crash sends what its predecessor left; the stream drops any copy it already holds (same
//! `Nats-Msg-Id` within [`referee_nats::DUPLICATE_WINDOW`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One verdict waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// `Nats-Msg-Id`: `<session>/<phrase>`.
    pub msg_id: String,
    /// Stream subject (`<prefix>.verdicts.<piste>`).
    pub subject: String,
    /// The JSON body (a `FeedMessage`).
    pub payload: serde_json::Value,
}

/// Why a verdict could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("the NATS outbox {dir} holds {max} verdicts already (nats.outbox_max)")]
    Full { dir: PathBuf, max: usize },
    #[error("NATS outbox {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The outbox directory.
pub struct Outbox {
    dir: PathBuf,
    max: usize,
    seq: AtomicU64,
}

impl Outbox {
    /// Opens (creating) `dir`; files left there by an earlier run are kept and sent first.
    pub fn open(dir: &Path, max: usize) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        // Names sort by time of queuing; the counter keeps them apart within a nanosecond.
        Ok(Self {
            dir: dir.to_path_buf(),
            max: max.max(1),
            seq: AtomicU64::new(0),
        })
    }

    /// Writes `p` durably; after this returns Ok the verdict survives a crash.
    pub fn push(&self, p: &Pending) -> Result<PathBuf, OutboxError> {
        if self.len() >= self.max {
            return Err(OutboxError::Full {
                dir: self.dir.clone(),
                max: self.max,
            });
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{now:024}-{seq:06}.json");
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |source| OutboxError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec(p).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }

    /// The waiting verdicts, oldest first (unreadable files are skipped with a warning and
    /// left in place for a human).
    pub fn pending(&self) -> Vec<(PathBuf, Pending)> {
        let mut files = self.files();
        files.sort();
        files
            .into_iter()
            .filter_map(|path| {
                let bytes = std::fs::read(&path).ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(p) => Some((path, p)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable NATS outbox file left in place");
                        None
                    }
                }
            })
            .collect()
    }

    /// Forgets a verdict the stream acknowledged.
    pub fn remove(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an acknowledged verdict from the NATS outbox");
        }
    }

    /// Verdicts waiting.
    pub fn len(&self) -> usize {
        self.files().len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "json")
                            && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(i: u32) -> Pending {
        Pending {
            msg_id: format!("s/{i}"),
            subject: "referee.verdicts.1".into(),
            payload: serde_json::json!({ "i": i }),
        }
    }

    #[test]
    fn keeps_order_survives_reopen_and_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let ob = Outbox::open(&dir, 3).unwrap();
        for i in 0..3 {
            ob.push(&pending(i)).unwrap();
        }
        assert!(matches!(
            ob.push(&pending(9)),
            Err(OutboxError::Full { .. })
        ));
        drop(ob);
        let ob = Outbox::open(&dir, 3).unwrap();
        let p = ob.pending();
        let ids: Vec<_> = p.iter().map(|(_, p)| p.msg_id.clone()).collect();
        assert_eq!(ids, ["s/0", "s/1", "s/2"]);
        ob.remove(&p[0].0);
        assert_eq!(ob.len(), 2);
    }
}
