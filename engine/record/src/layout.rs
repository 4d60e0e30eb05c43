//! Names inside and around a recording: where a phrase's tar lives, and its entries.

use std::path::{Path, PathBuf};

use referee_pose_api::FrameEncoding;

/// The folder under the daemon's `output_dir` that holds the recordings.
pub const RECORDINGS_DIR: &str = "recordings";
/// Suffix of a recording being written (renamed away once complete).
pub const PARTIAL_SUFFIX: &str = ".partial";
/// The manifest entry (always the last one).
pub const MANIFEST: &str = "manifest.json";
/// The per-frame index entry.
pub const FRAMES_JSON: &str = "frames.json";
/// Folder of the frame entries.
pub const FRAMES_DIR: &str = "frames";
/// Folder of the signal log entry.
pub const SIGNAL_DIR: &str = "signal";

/// The recording of `phrase` of `session` under `root` (`<output_dir>/recordings`).
pub fn phrase_path(root: &Path, session: &str, phrase: u32) -> PathBuf {
    root.join(session).join(format!("phrase-{phrase:03}.tar"))
}

/// The file a recording is written to before it is complete.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

/// True for a recording still being written (or left behind by a crash).
pub fn is_partial(path: &Path) -> bool {
    path.to_string_lossy().ends_with(PARTIAL_SUFFIX)
}

/// True for a file name that is a recording, complete or not.
pub fn is_recording_name(name: &str) -> bool {
    let name = name.strip_suffix(PARTIAL_SUFFIX).unwrap_or(name);
    name.starts_with("phrase-") && name.ends_with(".tar")
}

/// The entry of a frame: `frames/NNNNN.jpg`, `.png`, or `.rgb` (packed RGB24).
pub fn frame_entry(frame: u64, encoding: FrameEncoding) -> String {
    let ext = match encoding {
        FrameEncoding::Jpeg => "jpg",
        FrameEncoding::Png => "png",
        FrameEncoding::Rgb24 { .. } => "rgb",
    };
    format!("{FRAMES_DIR}/{frame:05}.{ext}")
}

/// The entry of the signal log: `signal/<file name>` (path separators and `..` removed, so a
/// log name cannot escape the folder when the tar is extracted).
pub fn signal_entry(filename: &str) -> String {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or_default();
    let base = if base.is_empty() || base == "." || base == ".." {
        "signal.txt"
    } else {
        base
    };
    format!("{SIGNAL_DIR}/{base}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_layout() {
        let p = phrase_path(Path::new("/out/recordings"), "clip-1", 7);
        assert_eq!(p, Path::new("/out/recordings/clip-1/phrase-007.tar"));
        assert_eq!(
            partial_path(&p),
            Path::new("/out/recordings/clip-1/phrase-007.tar.partial")
        );
        assert!(is_partial(&partial_path(&p)) && !is_partial(&p));
        assert!(is_recording_name("phrase-007.tar") && is_recording_name("phrase-1.tar.partial"));
        assert!(!is_recording_name("notes.txt"));
        assert_eq!(frame_entry(3, FrameEncoding::Jpeg), "frames/00003.jpg");
        assert_eq!(frame_entry(123456, FrameEncoding::Png), "frames/123456.png");
        let rgb = FrameEncoding::Rgb24 {
            width: 2,
            height: 2,
        };
        assert_eq!(frame_entry(0, rgb), "frames/00000.rgb");
        assert_eq!(signal_entry("a/b/signal.txt"), "signal/signal.txt");
        assert_eq!(signal_entry("..\\x.txt"), "signal/x.txt");
        assert_eq!(signal_entry(".."), "signal/signal.txt");
    }
}
