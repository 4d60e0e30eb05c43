//! A folder of JPEG/PNG images, played in file-name order.
//!
//! JPEG files are forwarded untouched ([`FrameData::Jpeg`]); PNG files are decoded to RGB.
//! All images must have the same size: headers are checked when the folder is opened, so a
//! mixed folder fails early with the name of the odd file. Other files are ignored.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::jpeg::{jpeg_size, JpegScan};
use super::{
    display_name, io_error, now_us, read_up_to, CapturedFrame, FrameData, FrameSource, SourceError,
    SourceInfo,
};

/// Bytes read from a JPEG to find its frame header (the whole file is read if needed).
const HEADER_PROBE_BYTES: usize = 64 * 1024;

/// Image formats accepted in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jpeg,
    Png,
}

fn kind_of(path: &Path) -> Option<Kind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => Some(Kind::Jpeg),
        "png" => Some(Kind::Png),
        _ => None,
    }
}

/// Frames read from a folder of images.
#[derive(Debug)]
pub struct ImageFolder {
    info: SourceInfo,
    files: Vec<(PathBuf, Kind)>,
    next: usize,
}

impl ImageFolder {
    /// Opens `dir`, listing its `.jpg`/`.jpeg`/`.png` files sorted by name, to be played at `fps`.
    pub fn open(dir: &Path, fps: f32) -> Result<Self, SourceError> {
        if !(fps.is_finite() && fps > 0.0) {
            return Err(SourceError::InvalidArgument(format!(
                "image folder fps {fps} must be a positive number"
            )));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            let path = entry.path();
            match kind_of(&path) {
                Some(kind) if path.is_file() => files.push((path, kind)),
                _ => tracing::debug!(path = %path.display(), "not a JPEG/PNG file, ignored"),
            }
        }
        if files.is_empty() {
            return Err(SourceError::Image {
                path: dir.to_path_buf(),
                reason: "no .jpg, .jpeg or .png images in this folder".into(),
            });
        }
        files.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
        let (width, height) = image_size(&files[0].0, files[0].1)?;
        for (path, kind) in &files[1..] {
            let size = image_size(path, *kind)?;
            if size != (width, height) {
                return Err(mixed_sizes(path, size, (width, height), &files[0].0));
            }
        }
        Ok(Self {
            info: SourceInfo {
                name: display_name(dir),
                width,
                height,
                fps,
                frame_count: Some(files.len() as u64),
            },
            files,
            next: 0,
        })
    }
}

fn mixed_sizes(path: &Path, got: (u32, u32), want: (u32, u32), first: &Path) -> SourceError {
    SourceError::Image {
        path: path.to_path_buf(),
        reason: format!(
            "image is {}x{} but {} is {}x{}: all images in a folder must have the same size",
            got.0,
            got.1,
            display_name(first),
            want.0,
            want.1
        ),
    }
}

fn bad_image(path: &Path, what: &str, why: impl std::fmt::Display) -> SourceError {
    SourceError::Image {
        path: path.to_path_buf(),
        reason: format!("not a readable {what} image: {why}"),
    }
}

/// Reads an image's size from its header.
fn image_size(path: &Path, kind: Kind) -> Result<(u32, u32), SourceError> {
    match kind {
        Kind::Jpeg => {
            let mut f = File::open(path).map_err(|e| io_error(path, e))?;
            let mut head = vec![0u8; HEADER_PROBE_BYTES];
            let n = read_up_to(&mut f, &mut head).map_err(|e| io_error(path, e))?;
            head.truncate(n);
            match jpeg_size(&head) {
                Ok(size) => Ok(size),
                Err(JpegScan::Incomplete) if n == HEADER_PROBE_BYTES => {
                    // Huge metadata before the frame header: read the whole file.
                    let all = std::fs::read(path).map_err(|e| io_error(path, e))?;
                    jpeg_size(&all).map_err(|e| bad_image(path, "JPEG", scan_reason(e)))
                }
                Err(e) => Err(bad_image(path, "JPEG", scan_reason(e))),
            }
        }
        Kind::Png => {
            let f = File::open(path).map_err(|e| io_error(path, e))?;
            let reader = png::Decoder::new(BufReader::new(f))
                .read_info()
                .map_err(|e| bad_image(path, "PNG", e))?;
            let info = reader.info();
            Ok((info.width, info.height))
        }
    }
}

fn scan_reason(e: JpegScan) -> &'static str {
    match e {
        JpegScan::Incomplete => "file is truncated",
        JpegScan::Invalid(why) => why,
    }
}

/// Decodes a PNG to packed RGB24, whatever its colour type and bit depth.
pub(crate) fn decode_png(path: &Path, bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), SourceError> {
    let mut dec = png::Decoder::new(bytes);
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(|e| bad_image(path, "PNG", e))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let out = reader
        .next_frame(&mut buf)
        .map_err(|e| bad_image(path, "PNG", e))?;
    let (w, h) = (out.width as usize, out.height as usize);
    let src = &buf[..out.buffer_size()];
    let rgb = match out.color_type {
        png::ColorType::Rgb => src.to_vec(),
        png::ColorType::Rgba => src
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => src.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => src
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        png::ColorType::Indexed => {
            return Err(bad_image(path, "PNG", "palette was not expanded"));
        }
    };
    if rgb.len() != w * h * 3 {
        return Err(bad_image(path, "PNG", "unexpected pixel layout"));
    }
    Ok((out.width, out.height, rgb))
}

impl FrameSource for ImageFolder {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError> {
        let Some((path, kind)) = self.files.get(self.next) else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let (w, h, data) = match kind {
            Kind::Jpeg => {
                let (w, h) =
                    jpeg_size(&bytes).map_err(|e| bad_image(path, "JPEG", scan_reason(e)))?;
                (w, h, FrameData::Jpeg(bytes))
            }
            Kind::Png => {
                let (w, h, rgb) = decode_png(path, &bytes)?;
                (w, h, FrameData::Rgb(rgb))
            }
        };
        let want = (self.info.width, self.info.height);
        if (w, h) != want {
            return Err(mixed_sizes(path, (w, h), want, &self.files[0].0));
        }
        let index = self.next as u64;
        self.next += 1;
        Ok(Some(CapturedFrame {
            index,
            capture_ts_us: now_us(),
            width: w,
            height: h,
            data,
            pts_us: Some((index as f64 * 1e6 / self.info.fps as f64) as u64),
        }))
    }
}
