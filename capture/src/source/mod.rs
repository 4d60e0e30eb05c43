//! Frame sources: where the capture agent's frames come from.
//!
//! Every source implements [`FrameSource`]: it describes itself with a [`SourceInfo`] and yields
//! [`CapturedFrame`]s one at a time, stamped with the wall-clock time at which the source
//! produced them. Sources never pace themselves: see [`crate::pacing`] for real-time pacing.
//!
//! - [`mp4::Mp4Source`]: MP4/H.264 files, pure Rust (re_mp4 + openh264), yields RGB.
//! - [`ffmpeg::FfmpegSource`]: any other format through the `ffmpeg` command, yields JPEG.
//! - [`folder::ImageFolder`]: a folder of JPEG/PNG images sorted by name.
//! - [`synthetic::Synthetic`]: deterministic generated frames for tests and demos.
//! - [`replay::Replay`]: JPEG frames captured earlier, replayed as if live (benches, tests),
//!   or a phrase the daemon recorded, at its recorded pace (`referee-capture --replay REC`).
//! - [`camera`]: V4L cameras through nokhwa (cargo feature `camera`).
//!
//! [`open_video`] picks the right file source for a path.
//!
//! ```no_run
//! use referee_capture::encode::{encode, Encoding};
//! use referee_capture::pacing::{Pacer, Pacing};
//! use referee_capture::source::{open_video, FrameSource};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut src = open_video(std::path::Path::new("clip.mp4"))?;
//! let mut pacer = Pacer::new(Pacing::RealTime { fps: src.info().fps })?;
//! loop {
//!     pacer.wait_blocking(); // wait first, so capture_ts_us follows the real-time schedule
//!     let Some(frame) = src.next_frame()? else { break };
//!     let (_encoding, _bytes) = encode(&frame, Encoding::Jpeg { quality: 80 })?;
//! }
//! # Ok(())
//! # }
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod camera;
pub mod ffmpeg;
pub mod folder;
pub mod jpeg;
pub mod mp4;
pub mod replay;
pub mod synthetic;

pub use camera::{list_cameras, require_camera_support, Camera, CameraInfo, CAMERA_SUPPORTED};
pub use ffmpeg::{ffmpeg_available, FfmpegSource};
pub use folder::ImageFolder;
pub use mp4::Mp4Source;
pub use replay::Replay;
pub use synthetic::Synthetic;

/// Static description of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Human-readable name (file name, camera name, "synthetic", ...).
    pub name: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Nominal frame rate (frames per second).
    pub fps: f32,
    /// Number of frames when known in advance (files, folders, finite synthetic runs).
    pub frame_count: Option<u64>,
}

/// Pixel payload of a captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameData {
    /// A complete JPEG file (SOI..EOI), forwarded without re-encoding when possible.
    Jpeg(Vec<u8>),
    /// Packed 8-bit RGB, `width * height * 3` bytes, rows top to bottom.
    Rgb(Vec<u8>),
}

impl FrameData {
    /// Number of payload bytes.
    pub fn len(&self) -> usize {
        match self {
            FrameData::Jpeg(b) | FrameData::Rgb(b) => b.len(),
        }
    }

    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One frame produced by a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Frame number within the source, starting at 0, contiguous.
    pub index: u64,
    /// Wall-clock time at which the source produced the frame, microseconds since the Unix epoch.
    pub capture_ts_us: u64,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// The pixels.
    pub data: FrameData,
    /// Media timestamp (presentation time within the file) in microseconds, for file sources.
    pub pts_us: Option<u64>,
}

impl CapturedFrame {
    /// The frame as it can travel without re-encoding: JPEG bytes as they are, RGB as `Rgb24`.
    pub fn into_wire(self) -> (referee_transport::messages::FrameEncoding, Vec<u8>) {
        use referee_transport::messages::FrameEncoding;
        match self.data {
            FrameData::Jpeg(b) => (FrameEncoding::Jpeg, b),
            FrameData::Rgb(b) => (
                FrameEncoding::Rgb24 {
                    width: self.width,
                    height: self.height,
                },
                b,
            ),
        }
    }
}

/// A producer of frames.
pub trait FrameSource: Send {
    /// Description of the source (size, frame rate, frame count when known).
    fn info(&self) -> &SourceInfo;
    /// The next frame, `Ok(None)` at the end of the source.
    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError>;
}

impl<S: FrameSource + ?Sized> FrameSource for Box<S> {
    fn info(&self) -> &SourceInfo {
        (**self).info()
    }
    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError> {
        (**self).next_frame()
    }
}

/// Errors from frame sources. Messages say what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file or folder does not exist.
    #[error("{path}: not found (check the path)")]
    NotFound { path: PathBuf },
    /// An I/O error while reading a file.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a video this build can read.
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    /// The MP4 container could not be parsed.
    #[error("{path}: invalid MP4 file: {reason}")]
    Mp4 { path: PathBuf, reason: String },
    /// The video stream could not be decoded.
    #[error("{path}: cannot decode frame {frame}: {reason}")]
    Decode {
        path: PathBuf,
        frame: u64,
        reason: String,
    },
    /// The ffmpeg command is needed but missing.
    #[error(
        "{path}: this format needs the ffmpeg command, which was not found: install Debian's \
         ffmpeg package (apt-get install ffmpeg), or convert the file to MP4/H.264"
    )]
    FfmpegMissing { path: PathBuf },
    /// ffmpeg or ffprobe failed.
    #[error("{path}: ffmpeg failed: {reason}")]
    Ffmpeg { path: PathBuf, reason: String },
    /// A problem with an image folder or one of its images.
    #[error("{path}: {reason}")]
    Image { path: PathBuf, reason: String },
    /// A camera could not be listed, opened or read.
    #[error("camera: {0}")]
    Camera(String),
    /// The binary was compiled without the `camera` feature.
    #[error("built without camera support: rebuild with --features camera")]
    CameraSupportMissing,
    /// A parameter given to a source is out of range.
    #[error("invalid source parameter: {0}")]
    InvalidArgument(String),
}

/// The capture time sent with each frame. A camera's frame is stamped when it was taken. A
/// file's frames are stamped with their media time, anchored at the wall-clock time the first
/// one was read: read as fast as possible, a file must still say when its frames were filmed,
/// or the daemon would see the phrase compressed into the time it took to read it.
#[derive(Debug, Default)]
pub struct CaptureStamps {
    /// (wall-clock µs, media µs) of the first frame with a media time.
    anchor: Option<(u64, u64)>,
}

impl CaptureStamps {
    /// The stamp for a frame the source stamped `wall_us`, with media time `pts_us` if any.
    pub fn stamp(&mut self, wall_us: u64, pts_us: Option<u64>) -> u64 {
        let Some(pts) = pts_us else { return wall_us };
        let (wall0, pts0) = *self.anchor.get_or_insert((wall_us, pts));
        wall0.saturating_add(pts.saturating_sub(pts0))
    }
}

/// Current wall-clock time in microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Opens a video file: MP4/H.264 with the pure-Rust decoder, anything else through ffmpeg.
///
/// MP4 files whose video is not H.264 (HEVC, AV1, ...) also go to ffmpeg.
pub fn open_video(path: &Path) -> Result<Box<dyn FrameSource>, SourceError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        return Err(SourceError::Unsupported {
            path: path.to_path_buf(),
            reason: "is a folder, not a video file (use the image-folder source for a folder of \
                     images)"
                .into(),
        });
    }
    let mut head = [0u8; 12];
    let n = std::fs::File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(|e| io_error(path, e))?;
    if n == 0 {
        return Err(SourceError::Unsupported {
            path: path.to_path_buf(),
            reason: "file is empty, not a video".into(),
        });
    }
    if mp4::looks_like_mp4(&head[..n]) {
        match Mp4Source::open(path) {
            Ok(src) => return Ok(Box::new(src)),
            Err(SourceError::Unsupported { reason, .. }) => {
                tracing::info!(path = %path.display(), %reason, "MP4 not decodable in pure Rust, trying ffmpeg");
            }
            // A container variant re_mp4 cannot parse may still be readable by ffmpeg.
            Err(e @ SourceError::Mp4 { .. }) if ffmpeg::ffmpeg_available() => {
                tracing::info!(path = %path.display(), error = %e, "MP4 parse failed, trying ffmpeg");
                return FfmpegSource::open(path)
                    .map(|s| Box::new(s) as Box<dyn FrameSource>)
                    .map_err(|_| e);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Box::new(FfmpegSource::open(path)?))
}

/// Maps an I/O error on `path` to a [`SourceError`], turning "not found" into [`SourceError::NotFound`].
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> SourceError {
    if e.kind() == std::io::ErrorKind::NotFound {
        SourceError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        SourceError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Reads until `buf` is full or the reader ends; returns the number of bytes read.
pub(crate) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Display name of a path: its file name, or the whole path.
pub(crate) fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
