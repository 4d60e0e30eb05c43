//! Reading recordings: [`Recording::open`] loads a complete one (or says why it is not
//! complete), [`list`] finds every recording under a folder.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::layout::{self, FRAMES_JSON, MANIFEST, SIGNAL_DIR};
use crate::manifest::{FrameRecord, Manifest, FORMAT_VERSION};

/// Why a recording cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The recording was never finished (a crash, a kill, a full disk) or is damaged.
    #[error("incomplete recording {path}: {reason}")]
    Incomplete {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Written by a newer version.
    #[error("{path} has format {found}; this build reads up to {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
}

impl ReadError {
    fn incomplete(path: &Path, reason: impl Into<String>) -> Self {
        ReadError::Incomplete {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Why a `.partial` file is not a recording.
const PARTIAL: &str =
    "still being written, or left behind when the daemon stopped (a .partial file)";

/// One complete recording, in memory.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its frames in arrival order, each with its bytes.
    pub frames: Vec<(FrameRecord, Vec<u8>)>,
    /// The signal log's bytes.
    pub signal: Vec<u8>,
}

/// Every entry of a tar as (name, bytes); an error when the tar is cut short or damaged.
fn entries(path: &Path) -> Result<Vec<(String, Vec<u8>)>, ReadError> {
    entries_named(path, |_| true)
}

/// The entries of a tar whose name `wanted` accepts, as (name, bytes); the others are passed
/// over unread. An error when the file is a `.partial` one or the tar is cut short or damaged.
fn entries_named(
    path: &Path,
    wanted: impl Fn(&[u8]) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, ReadError> {
    if layout::is_partial(path) {
        return Err(ReadError::incomplete(path, PARTIAL));
    }
    let file = File::open(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let damaged = |e: std::io::Error| {
        ReadError::incomplete(path, format!("the tar is cut short or damaged: {e}"))
    };
    let mut archive = tar::Archive::new(file);
    let mut out = Vec::new();
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        if !wanted(&entry.path_bytes()) {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(damaged)?;
        out.push((name, bytes));
    }
    Ok(out)
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, ReadError> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| ReadError::incomplete(path, format!("manifest.json is not complete: {e}")))?;
    if m.format > FORMAT_VERSION {
        return Err(ReadError::Version {
            path: path.to_path_buf(),
            found: m.format,
        });
    }
    Ok(m)
}

/// The manifest of a complete recording (without loading the frames into memory).
pub fn read_manifest(path: &Path) -> Result<Manifest, ReadError> {
    // The manifest is the last entry; a recording without one is incomplete.
    let (_, bytes) = entries_named(path, |name| name == MANIFEST.as_bytes())?
        .pop()
        .ok_or_else(|| ReadError::incomplete(path, "no manifest.json"))?;
    parse_manifest(path, &bytes)
}

impl Recording {
    /// Loads the recording at `path`. Incomplete when it is a `.partial` file, the tar is cut
    /// short, the manifest is missing or unreadable, or an entry the manifest relies on is
    /// missing. A manifest that says `complete: false` is loaded: check
    /// [`Recording::incomplete_reason`] before replaying.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let mut all: HashMap<String, Vec<u8>> = entries(path)?.into_iter().collect();
        let manifest = all
            .remove(MANIFEST)
            .ok_or_else(|| ReadError::incomplete(path, "no manifest.json (it is written last)"))?;
        let manifest = parse_manifest(path, &manifest)?;
        let index = all
            .remove(FRAMES_JSON)
            .ok_or_else(|| ReadError::incomplete(path, "no frames.json"))?;
        let index: Vec<FrameRecord> = serde_json::from_slice(&index)
            .map_err(|e| ReadError::incomplete(path, format!("frames.json: {e}")))?;
        let signal_name = layout::signal_entry(&manifest.signal_file);
        let signal = all
            .remove(&signal_name)
            .ok_or_else(|| ReadError::incomplete(path, format!("no {signal_name}")))?;
        debug_assert!(signal_name.starts_with(SIGNAL_DIR));
        let mut frames = Vec::with_capacity(index.len());
        for rec in index {
            let bytes = all
                .remove(&rec.file)
                .ok_or_else(|| ReadError::incomplete(path, format!("no {}", rec.file)))?;
            if bytes.len() != rec.len as usize {
                return Err(ReadError::incomplete(
                    path,
                    format!(
                        "{} has {} bytes, frames.json says {}",
                        rec.file,
                        bytes.len(),
                        rec.len
                    ),
                ));
            }
            frames.push((rec, bytes));
        }
        Ok(Self {
            path: path.to_path_buf(),
            manifest,
            frames,
            signal,
        })
    }

    /// Why the recording must not be replayed as complete (frames were lost), if so.
    pub fn incomplete_reason(&self) -> Option<String> {
        (!self.manifest.complete).then(|| {
            self.manifest
                .incomplete_reason
                .clone()
                .unwrap_or_else(|| "marked incomplete".into())
        })
    }
}

/// Every recording (complete, or `.partial`) in `dir` and its sub-folders, sorted by path; a
/// recording file itself gives just that file.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReadError::Io { path, source }
    };
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && layout::is_recording_name(&entry.file_name().to_string_lossy())
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}
