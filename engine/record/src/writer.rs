//! Writing recordings: [`PhraseWriter`] streams frames into `phrase-NNN.tar.partial` as they
//! arrive and makes the recording complete atomically (JSON entries, manifest last, fsync,
//! rename); [`rewrite_manifest`] changes a finished recording's manifest the same way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::layout::{self, FRAMES_JSON, MANIFEST};
use crate::manifest::{FrameRecord, Manifest};
use crate::RecordError;

/// A writer that counts the bytes through it (frame data offsets for reading them back).
struct Counting<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A phrase's recording being written: frames go straight to the `.partial` file.
pub struct PhraseWriter {
    path: PathBuf,
    partial: PathBuf,
    tar: tar::Builder<Counting<BufWriter<File>>>,
    frames: Vec<FrameRecord>,
    /// Frame number -> (data offset in the partial file, length).
    offsets: HashMap<u64, (u64, u32)>,
    frame_bytes: u64,
}

fn header(len: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    h.set_mtime(now);
    h
}

impl PhraseWriter {
    /// Starts the recording that will end up at `path` (`phrase-NNN.tar`), writing to
    /// `path.partial`; creates the session's folder.
    pub fn create(path: &Path) -> Result<Self, RecordError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(RecordError::io("creating", dir))?;
        }
        let partial = layout::partial_path(path);
        let file = File::create(&partial).map_err(RecordError::io("creating", &partial))?;
        let counting = Counting {
            inner: BufWriter::with_capacity(1 << 16, file),
            pos: 0,
        };
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            tar: tar::Builder::new(counting),
            frames: Vec::new(),
            offsets: HashMap::new(),
            frame_bytes: 0,
        })
    }

    /// Where the recording will be once finished.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file being written.
    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Moves the unfinished recording to the name of `path` (the phrase number became known).
    pub fn rename_to(&mut self, path: &Path) -> Result<(), RecordError> {
        if path == self.path {
            return Ok(());
        }
        let partial = layout::partial_path(path);
        std::fs::rename(&self.partial, &partial).map_err(RecordError::io("renaming", &partial))?;
        self.path = path.to_path_buf();
        self.partial = partial;
        Ok(())
    }

    /// Appends one frame (its entry name is taken from `rec.file`).
    pub fn add_frame(&mut self, rec: FrameRecord, bytes: &[u8]) -> Result<(), RecordError> {
        let mut h = header(bytes.len() as u64);
        self.tar
            .append_data(&mut h, &rec.file, bytes)
            .map_err(RecordError::io("writing a frame to", &self.partial))?;
        // The data ends at the padded end of the entry.
        let end = self.tar.get_ref().pos;
        let offset = end - (bytes.len() as u64).div_ceil(512) * 512;
        self.offsets.insert(rec.frame, (offset, rec.len));
        self.frame_bytes += bytes.len() as u64;
        self.frames.push(rec);
        Ok(())
    }

    /// The frames written so far, in arrival order.
    pub fn frames(&self) -> &[FrameRecord] {
        &self.frames
    }

    /// Bytes of the frames written so far.
    pub fn frame_bytes(&self) -> u64 {
        self.frame_bytes
    }

    /// Reads a frame written earlier back from the file (frames carried over to the next
    /// phrase of a continuous bout).
    pub fn read_frame(&mut self, frame: u64) -> Result<Option<Vec<u8>>, RecordError> {
        let Some(&(offset, len)) = self.offsets.get(&frame) else {
            return Ok(None);
        };
        let err = RecordError::io("reading back", &self.partial);
        let mut read = || -> std::io::Result<Vec<u8>> {
            self.tar.get_mut().flush()?;
            let mut f = File::open(&self.partial)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        };
        read().map(Some).map_err(err)
    }

    /// Completes the recording: `frames.json`, the signal log, then the manifest; flushes,
    /// fsyncs and renames the file to its final name. Returns the file's size.
    pub fn finish(
        mut self,
        signal_file: &str,
        signal: &[u8],
        manifest: &Manifest,
    ) -> Result<u64, RecordError> {
        let frames =
            serde_json::to_vec_pretty(&self.frames).map_err(|source| RecordError::Json {
                what: "frames.json",
                source,
            })?;
        let manifest = serde_json::to_vec_pretty(manifest).map_err(|source| RecordError::Json {
            what: "manifest.json",
            source,
        })?;
        let partial = self.partial.clone();
        let write = |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| {
            tar.append_data(&mut header(data.len() as u64), name, data)
                .map_err(RecordError::io("writing", &partial))
        };
        write(&mut self.tar, FRAMES_JSON, &frames)?;
        write(&mut self.tar, &layout::signal_entry(signal_file), signal)?;
        write(&mut self.tar, MANIFEST, &manifest)?;
        let counting = self
            .tar
            .into_inner()
            .map_err(RecordError::io("finishing", &partial))?;
        let size = counting.pos;
        let file = counting.inner.into_inner().map_err(|e| RecordError::Io {
            what: "flushing",
            path: partial.clone(),
            source: e.into_error(),
        })?;
        commit(file, &partial, &self.path)?;
        Ok(size)
    }

    /// Gives the recording up: the partial file is removed.
    pub fn discard(self) {
        let partial = self.partial.clone();
        drop(self);
        if let Err(e) = std::fs::remove_file(&partial) {
            tracing::warn!(path = %partial.display(), error = %e, "cannot remove an unfinished recording");
        }
    }
}

/// fsyncs `file` (at `partial`), renames it to `path` and fsyncs the folder, so that after a
/// crash either the old file or the complete new one is there.
fn commit(file: File, partial: &Path, path: &Path) -> Result<(), RecordError> {
    file.sync_all()
        .map_err(RecordError::io("syncing", partial))?;
    drop(file);
    std::fs::rename(partial, path).map_err(RecordError::io("renaming", partial))?;
    if let Some(dir) = path.parent() {
        // Best effort: not every platform can open a folder to sync it.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Changes the manifest of the complete recording at `path` (e.g. to store the referee's call)
/// and replaces the file atomically; every other entry is copied unchanged.
pub fn rewrite_manifest(
    path: &Path,
    change: impl FnOnce(&mut Manifest),
) -> Result<(), RecordError> {
    // Refuses incomplete recordings: there is no manifest to change.
    let mut manifest = crate::reader::read_manifest(path)?;
    change(&mut manifest);
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(|source| RecordError::Json {
        what: "manifest.json",
        source,
    })?;
    let partial = layout::partial_path(path);
    let src = File::open(path).map_err(RecordError::io("opening", path))?;
    let out = File::create(&partial).map_err(RecordError::io("creating", &partial))?;
    let mut tar_out = tar::Builder::new(BufWriter::new(out));
    let copy = || -> std::io::Result<()> {
        let mut archive = tar::Archive::new(src);
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.path_bytes().as_ref() == MANIFEST.as_bytes() {
                continue;
            }
            let h = entry.header().clone();
            tar_out.append(&h, &mut entry)?;
        }
        tar_out.append_data(&mut header(manifest.len() as u64), MANIFEST, &manifest[..])?;
        Ok(())
    };
    if let Err(e) = copy() {
        let _ = std::fs::remove_file(&partial);
        return Err(RecordError::Io {
            what: "rewriting",
            path: path.to_path_buf(),
            source: e,
        });
    }
    let file = tar_out
        .into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(RecordError::io("finishing", &partial))?;
    commit(file, &partial, path)
}
