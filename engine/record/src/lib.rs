//! Phrase recordings: every phrase the daemon sees, kept so that it can be replayed bit for bit
//! and used as a labelled example once the referee's call is known.
//!
//! # Layout
//!
//! One plain (ustar) tar file per phrase, so `tar tf` / `tar xf` open it:
//!
//! ```text
//! <output_dir>/recordings/<session>/phrase-NNN.tar
//!     frames/NNNNN.jpg        the frame's bytes exactly as received (.png, .rgb by encoding;
//!                             the number is the session's frame number, at least 5 digits)
//!     ...
//!     frames.json             one entry per frame, in arrival order: frame number,
//!                             capture_ts_us, encoding, len, arrival_us, file
//!     signal/<filename>       the signal log the verdict was decided on, byte for byte
//!     manifest.json           written last: format version, session, phrase, settings,
//!                             pose model sha256, engine version, verdict, referee's call
//! ```
//!
//! A recording is written as `phrase-NNN.tar.partial` (frames as they arrive), then the JSON
//! entries with the manifest last, `fsync`, and a rename to `phrase-NNN.tar`. A reader treats
//! a `.partial` file, a tar without a parseable `manifest.json`, or frames missing from the
//! tar as incomplete ([`ReadError::Incomplete`]); a manifest whose `complete` is false (the
//! recorder could not keep up and lost frames) is read but must not be replayed as complete.
//!
//! - [`layout`]: names and paths; [`manifest`]: the JSON documents.
//! - [`writer`]: [`PhraseWriter`] (streaming, atomic) and [`rewrite_manifest`].
//! - [`reader`]: [`Recording::open`], [`list`].
//! - [`compare`]: recorded vs replayed verdict, field by field.
//! - [`retention`]: oldest first by total size and age.

pub mod compare;
pub mod layout;
pub mod manifest;
pub mod reader;
pub mod retention;
pub mod writer;

pub use compare::{compare_verdicts, Difference};
pub use layout::{phrase_path, RECORDINGS_DIR};
pub use manifest::{
    CallOrigin, CallWinner, FrameRecord, HumanCall, Manifest, ModelId, SettingsSnapshot,
    FORMAT_VERSION,
};
pub use reader::{list, ReadError, Recording};
pub use retention::{enforce, Pruned, Retention};
pub use writer::{rewrite_manifest, PhraseWriter};

/// Why a recording could not be written or changed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document could not be serialised.
    #[error("serialising {what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The recording to change could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl RecordError {
    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| RecordError::Io { what, path, source }
    }
}
