//! Any video format through the `ffmpeg` command (Debian package `ffmpeg`), as JPEG frames.
//!
//! Runs `ffmpeg -i FILE -f image2pipe -c:v mjpeg -q:v 3 -` and splits the JPEG stream on its
//! markers. Size and frame rate come from `ffprobe` when available, else from the first JPEG
//! (frame rate then defaults to 30). Used for the old recorder's `.avi` files and for MP4 files
//! whose video is not H.264.

use std::ffi::OsStr;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::jpeg::{jpeg_end, jpeg_size, JpegScan};
use super::{
    display_name, io_error, now_us, CapturedFrame, FrameData, FrameSource, SourceError, SourceInfo,
};

/// Frame rate assumed when ffprobe is not available to tell the real one.
const FALLBACK_FPS: f32 = 30.0;
/// A single JPEG larger than this means the stream is corrupt.
const MAX_JPEG_BYTES: usize = 64 << 20;
/// How much of ffmpeg's error output is kept for messages.
const STDERR_KEEP: usize = 4096;

/// A video decoded by an ffmpeg child process.
#[derive(Debug)]
pub struct FfmpegSource {
    info: SourceInfo,
    path: PathBuf,
    child: Child,
    stdout: ChildStdout,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    buf: Vec<u8>,
    /// Frame read at open time (to learn the size), returned first.
    first: Option<Vec<u8>>,
    produced: u64,
    done: bool,
}

/// What ffprobe reports about the first video stream.
#[derive(Debug, Default, Clone, PartialEq)]
struct Probe {
    width: Option<u32>,
    height: Option<u32>,
    fps: Option<f32>,
    frames: Option<u64>,
}

impl FfmpegSource {
    /// Starts decoding `path` with ffmpeg and reads its first frame.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        Self::open_with(path, "ffmpeg".as_ref(), "ffprobe".as_ref())
    }

    /// Like [`Self::open`] with explicit `ffmpeg` and `ffprobe` commands (e.g. a static build
    /// outside `PATH`).
    pub fn open_with(path: &Path, ffmpeg: &OsStr, ffprobe: &OsStr) -> Result<Self, SourceError> {
        std::fs::metadata(path).map_err(|e| io_error(path, e))?;
        let probe = probe(path, ffprobe)?;
        let mut child = Command::new(ffmpeg)
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
            .arg(path)
            .args([
                "-map",
                "0:v:0",
                "-f",
                "image2pipe",
                "-c:v",
                "mjpeg",
                "-q:v",
                "3",
                "-",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(path, e))?;
        let (Some(stdout), Some(mut err_pipe)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SourceError::Ffmpeg {
                path: path.to_path_buf(),
                reason: "could not capture ffmpeg's output".into(),
            });
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let stderr_thread = std::thread::Builder::new()
            .name("ffmpeg-stderr".into())
            .spawn(move || {
                let mut chunk = [0u8; 1024];
                while let Ok(n) = err_pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&chunk[..n]));
                        if s.len() > STDERR_KEEP {
                            let cut = s.len() - STDERR_KEEP;
                            let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                            s.drain(..cut);
                        }
                    }
                }
            })
            .ok();
        let mut src = Self {
            info: SourceInfo {
                name: display_name(path),
                width: probe.width.unwrap_or(0),
                height: probe.height.unwrap_or(0),
                fps: probe.fps.unwrap_or(FALLBACK_FPS),
                frame_count: probe.frames,
            },
            path: path.to_path_buf(),
            child,
            stdout,
            stderr,
            stderr_thread,
            buf: Vec::with_capacity(1 << 20),
            first: None,
            produced: 0,
            done: false,
        };
        let Some(first) = src.read_jpeg()? else {
            return Err(SourceError::Ffmpeg {
                path: path.to_path_buf(),
                reason: "the video has no frames".into(),
            });
        };
        let (w, h) = jpeg_size(&first).map_err(|e| src.stream_error(e))?;
        if (probe.width, probe.height) != (Some(w), Some(h)) && probe.width.is_some() {
            tracing::warn!(path = %path.display(), probe_w = ?probe.width, probe_h = ?probe.height, w, h,
                "ffprobe size differs from the decoded frames; using the frames' size");
        }
        if probe.fps.is_none() {
            tracing::warn!(path = %path.display(), "frame rate unknown (no ffprobe?), assuming {FALLBACK_FPS} fps");
        }
        src.info.width = w;
        src.info.height = h;
        src.first = Some(first);
        Ok(src)
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    fn stream_error(&self, e: JpegScan) -> SourceError {
        SourceError::Ffmpeg {
            path: self.path.clone(),
            reason: format!("unexpected data in ffmpeg's JPEG stream: {e:?}"),
        }
    }

    /// Reads the next complete JPEG from ffmpeg's output; `None` at a clean end.
    fn read_jpeg(&mut self) -> Result<Option<Vec<u8>>, SourceError> {
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            if !self.buf.is_empty() {
                match jpeg_end(&self.buf) {
                    Ok(n) => {
                        let rest = self.buf.split_off(n);
                        return Ok(Some(std::mem::replace(&mut self.buf, rest)));
                    }
                    Err(JpegScan::Incomplete) if self.buf.len() <= MAX_JPEG_BYTES => {}
                    Err(JpegScan::Incomplete) => {
                        return Err(self.stream_error(JpegScan::Invalid("frame larger than 64 MiB")))
                    }
                    Err(e) => return Err(self.stream_error(e)),
                }
            }
            if self.done {
                return Ok(None);
            }
            let n = match self.stdout.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(&self.path, e)),
            };
            if n > 0 {
                self.buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            // End of ffmpeg's output: check how it exited.
            self.done = true;
            let status = self.child.wait().map_err(|e| io_error(&self.path, e))?;
            if let Some(t) = self.stderr_thread.take() {
                let _ = t.join();
            }
            if !status.success() {
                let msg = self.stderr_text();
                return Err(SourceError::Ffmpeg {
                    path: self.path.clone(),
                    reason: if msg.is_empty() {
                        format!("ffmpeg exited with {status}")
                    } else {
                        format!("ffmpeg exited with {status}: {msg}")
                    },
                });
            }
            if !self.buf.is_empty() {
                return Err(SourceError::Ffmpeg {
                    path: self.path.clone(),
                    reason: format!(
                        "ffmpeg's output ended inside a JPEG ({} bytes)",
                        self.buf.len()
                    ),
                });
            }
            return Ok(None);
        }
    }
}

impl FrameSource for FfmpegSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError> {
        let jpeg = match self.first.take() {
            Some(j) => j,
            None => match self.read_jpeg()? {
                Some(j) => j,
                None => return Ok(None),
            },
        };
        let (w, h) = jpeg_size(&jpeg).map_err(|e| self.stream_error(e))?;
        if (w, h) != (self.info.width, self.info.height) {
            return Err(SourceError::Ffmpeg {
                path: self.path.clone(),
                reason: format!(
                    "frame {} is {w}x{h} but the video started at {}x{}: size changes are not supported",
                    self.produced, self.info.width, self.info.height
                ),
            });
        }
        let index = self.produced;
        self.produced += 1;
        Ok(Some(CapturedFrame {
            index,
            capture_ts_us: now_us(),
            width: w,
            height: h,
            data: FrameData::Jpeg(jpeg),
            pts_us: Some((index as f64 * 1e6 / self.info.fps as f64) as u64),
        }))
    }
}

impl Drop for FfmpegSource {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn_error(path: &Path, e: std::io::Error) -> SourceError {
    if e.kind() == ErrorKind::NotFound {
        SourceError::FfmpegMissing {
            path: path.to_path_buf(),
        }
    } else {
        SourceError::Ffmpeg {
            path: path.to_path_buf(),
            reason: format!("cannot start ffmpeg: {e}"),
        }
    }
}

/// True when the `ffmpeg` command can be started.
pub fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Asks ffprobe about the first video stream. A missing ffprobe gives an empty probe; a file
/// ffprobe cannot read, or one without video, is an error.
fn probe(path: &Path, ffprobe: &OsStr) -> Result<Probe, SourceError> {
    let out = match Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,avg_frame_rate,r_frame_rate,nb_frames",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            tracing::debug!("ffprobe not found; reading the size from the first frame");
            return Ok(Probe::default());
        }
        Err(e) => {
            return Err(SourceError::Ffmpeg {
                path: path.to_path_buf(),
                reason: format!("cannot start ffprobe: {e}"),
            })
        }
    };
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(SourceError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("not a video file ffmpeg can read: {msg}"),
        });
    }
    let p = parse_probe(&String::from_utf8_lossy(&out.stdout));
    if p.width.is_none() {
        return Err(SourceError::Unsupported {
            path: path.to_path_buf(),
            reason: "the file has no video stream".into(),
        });
    }
    Ok(p)
}

/// Parses ffprobe's `key=value` lines.
fn parse_probe(text: &str) -> Probe {
    let mut p = Probe::default();
    let mut r_rate = None;
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        match k {
            "width" => p.width = v.parse().ok().filter(|&w| w > 0),
            "height" => p.height = v.parse().ok().filter(|&h| h > 0),
            "avg_frame_rate" => p.fps = parse_rate(v),
            "r_frame_rate" => r_rate = parse_rate(v),
            "nb_frames" => p.frames = v.parse().ok().filter(|&n| n > 0),
            _ => {}
        }
    }
    if p.fps.is_none() {
        p.fps = r_rate;
    }
    p
}

/// Parses `30000/1001` or `25` into a positive frame rate.
fn parse_rate(v: &str) -> Option<f32> {
    let rate = match v.split_once('/') {
        Some((n, d)) => {
            let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
            if d == 0.0 {
                return None;
            }
            n / d
        }
        None => v.parse().ok()?,
    };
    (rate.is_finite() && rate > 0.0 && rate < 10_000.0).then_some(rate as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_is_parsed() {
        let p = parse_probe(
            "width=1280\nheight=720\nr_frame_rate=30/1\navg_frame_rate=30000/1001\nnb_frames=N/A\n",
        );
        assert_eq!(p.width, Some(1280));
        assert_eq!(p.height, Some(720));
        assert!((p.fps.unwrap() - 29.97).abs() < 0.01);
        assert_eq!(p.frames, None);
        let p = parse_probe(
            "width=640\nheight=480\navg_frame_rate=0/0\nr_frame_rate=15/1\nnb_frames=63",
        );
        assert_eq!(p.fps, Some(15.0));
        assert_eq!(p.frames, Some(63));
    }
}
