//! MP4/H.264 files decoded in pure Rust: re_mp4 demuxes, openh264 decodes, frames come out as RGB.
//!
//! The video track is picked by type (the sample clip has its audio track first). Samples are
//! read from the file one at a time, so long recordings do not have to fit in memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::OpenH264API;
use re_mp4::{StsdBoxContent, TrackKind};

use super::{
    display_name, io_error, now_us, CapturedFrame, FrameData, FrameSource, SourceError, SourceInfo,
};

/// Largest accepted sample (one compressed frame), a guard against corrupt sizes.
const MAX_SAMPLE_BYTES: u64 = 64 << 20;

/// True when `head` (the first bytes of a file) looks like an ISO-BMFF/MP4 file.
pub fn looks_like_mp4(head: &[u8]) -> bool {
    head.len() >= 8 && matches!(&head[4..8], b"ftyp" | b"moov" | b"mdat" | b"free" | b"wide")
}

/// An MP4 file with an H.264 video track, decoded frame by frame.
pub struct Mp4Source {
    info: SourceInfo,
    path: PathBuf,
    file: BufReader<File>,
    decoder: Decoder,
    /// Samples of the video track in decode order.
    samples: Vec<re_mp4::Sample>,
    /// Composition (presentation) times in microseconds, sorted: the k-th output frame gets the k-th.
    pts_sorted: Vec<u64>,
    /// SPS and PPS in Annex B form, prepended to every sync sample.
    parameter_sets: Vec<u8>,
    /// Size in bytes of the NAL length prefix inside samples (1, 2 or 4).
    length_size: usize,
    next_sample: usize,
    /// Frames already decoded (after the final flush) waiting to be returned.
    pending: VecDeque<(u32, u32, Vec<u8>)>,
    flushed: bool,
    produced: u64,
    sample_buf: Vec<u8>,
    annexb: Vec<u8>,
}

impl std::fmt::Debug for Mp4Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mp4Source")
            .field("info", &self.info)
            .field("path", &self.path)
            .field("next_sample", &self.next_sample)
            .finish_non_exhaustive()
    }
}

impl Mp4Source {
    /// Opens an MP4 file and prepares to decode its H.264 video track.
    ///
    /// Returns [`SourceError::Unsupported`] when the file has no video track or its video is
    /// not H.264 (callers may then fall back to ffmpeg).
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let size = file.metadata().map_err(|e| io_error(path, e))?.len();
        let mut reader = BufReader::new(file);
        let mp4 = re_mp4::Mp4::read(&mut reader, size).map_err(|e| SourceError::Mp4 {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let track = mp4
            .tracks()
            .values()
            .find(|t| t.kind == Some(TrackKind::Video))
            .ok_or_else(|| SourceError::Unsupported {
                path: path.to_path_buf(),
                reason: "the MP4 file has no video track".into(),
            })?;
        let avcc = match &track.trak(&mp4).mdia.minf.stbl.stsd.contents {
            StsdBoxContent::Avc1(avc1) => &avc1.avcc.contents,
            other => {
                return Err(SourceError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!(
                        "video codec {} is not H.264; only H.264 is decoded without ffmpeg",
                        other.codec_string().unwrap_or_else(|| "unknown".into())
                    ),
                })
            }
        };
        let length_size = (avcc.length_size_minus_one & 0x3) as usize + 1;
        if length_size == 3 {
            return Err(SourceError::Mp4 {
                path: path.to_path_buf(),
                reason: "invalid avcC NAL length size 3".into(),
            });
        }
        let mut parameter_sets = Vec::new();
        for nal in avcc
            .sequence_parameter_sets
            .iter()
            .chain(&avcc.picture_parameter_sets)
        {
            parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
            parameter_sets.extend_from_slice(&nal.bytes);
        }
        let samples = track.samples.clone();
        if samples.is_empty() {
            return Err(SourceError::Mp4 {
                path: path.to_path_buf(),
                reason: "the video track has no frames".into(),
            });
        }
        let timescale = track.timescale.max(1);
        let to_us = |t: i64| (t.max(0) as u128 * 1_000_000 / timescale as u128) as u64;
        let mut pts_sorted: Vec<u64> = samples
            .iter()
            .map(|s| to_us(s.composition_timestamp))
            .collect();
        pts_sorted.sort_unstable();
        let total: u64 = samples.iter().map(|s| s.duration).sum();
        let fps = if total > 0 {
            (samples.len() as f64 * timescale as f64 / total as f64) as f32
        } else {
            30.0
        };
        // No flush after each packet: flushing early breaks streams with B-frames, whose
        // pictures the decoder must hold back to release them in display order.
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let decoder =
            Decoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| {
                SourceError::Decode {
                    path: path.to_path_buf(),
                    frame: 0,
                    reason: format!("cannot create the H.264 decoder: {e}"),
                }
            })?;
        let (width, height) = (u32::from(track.width), u32::from(track.height));
        tracing::debug!(path = %path.display(), width, height, fps, frames = samples.len(), "opened MP4");
        let mut src = Self {
            info: SourceInfo {
                name: display_name(path),
                width,
                height,
                fps,
                frame_count: Some(samples.len() as u64),
            },
            path: path.to_path_buf(),
            file: reader,
            decoder,
            samples,
            pts_sorted,
            parameter_sets,
            length_size,
            next_sample: 0,
            pending: VecDeque::new(),
            flushed: false,
            produced: 0,
            sample_buf: Vec::new(),
            annexb: Vec::new(),
        };
        // Decode the first picture now: its size is authoritative (the container's may be
        // missing or uncropped), and a file that cannot be decoded fails at open time.
        let Some(first) = src.decode_next()? else {
            return Err(SourceError::Decode {
                path: path.to_path_buf(),
                frame: 0,
                reason: "the video track has no decodable picture".into(),
            });
        };
        if (first.0, first.1) != (width, height) {
            tracing::debug!(
                width = first.0,
                height = first.1,
                "decoded size differs from the container's"
            );
        }
        src.info.width = first.0;
        src.info.height = first.1;
        src.pending.push_front(first);
        Ok(src)
    }

    fn decode_error(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Decode {
            path: self.path.clone(),
            frame: self.produced,
            reason: reason.into(),
        }
    }

    /// Reads sample `i` and converts it from length-prefixed NAL units to an Annex B stream.
    fn load_sample(&mut self, i: usize) -> Result<(), SourceError> {
        let s = self.samples[i];
        if s.size > MAX_SAMPLE_BYTES {
            return Err(self.decode_error(format!("sample of {} bytes is too large", s.size)));
        }
        self.sample_buf.resize(s.size as usize, 0);
        self.file
            .seek(SeekFrom::Start(s.offset))
            .and_then(|_| self.file.read_exact(&mut self.sample_buf))
            .map_err(|e| SourceError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        self.annexb.clear();
        if s.is_sync {
            self.annexb.extend_from_slice(&self.parameter_sets);
        }
        let mut rest = &self.sample_buf[..];
        while !rest.is_empty() {
            if rest.len() < self.length_size {
                return Err(self.decode_error("truncated NAL length prefix"));
            }
            let len = rest[..self.length_size]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            rest = &rest[self.length_size..];
            if len > rest.len() {
                return Err(self.decode_error("NAL unit runs past the end of its sample"));
            }
            self.annexb.extend_from_slice(&[0, 0, 0, 1]);
            self.annexb.extend_from_slice(&rest[..len]);
            rest = &rest[len..];
        }
        Ok(())
    }

    /// Decodes the next picture in display order: `(width, height, rgb)`, `None` at the end.
    fn decode_next(&mut self) -> Result<Option<(u32, u32, Vec<u8>)>, SourceError> {
        loop {
            if let Some(picture) = self.pending.pop_front() {
                return Ok(Some(picture));
            }
            if self.next_sample < self.samples.len() {
                let i = self.next_sample;
                self.next_sample += 1;
                self.load_sample(i)?;
                match self.decoder.decode(&self.annexb) {
                    Ok(Some(yuv)) => return Ok(Some(yuv_to_rgb(&yuv))),
                    Ok(None) => continue,
                    Err(e) => return Err(self.decode_error(e.to_string())),
                }
            }
            if self.flushed {
                return Ok(None);
            }
            self.flushed = true;
            let rest = match self.decoder.flush_remaining() {
                Ok(frames) => frames.iter().map(yuv_to_rgb).collect::<Vec<_>>(),
                Err(e) => return Err(self.decode_error(e.to_string())),
            };
            self.pending.extend(rest);
        }
    }

    fn make_frame(&mut self, width: u32, height: u32, rgb: Vec<u8>) -> CapturedFrame {
        let index = self.produced;
        self.produced += 1;
        CapturedFrame {
            index,
            capture_ts_us: now_us(),
            width,
            height,
            data: FrameData::Rgb(rgb),
            pts_us: self.pts_sorted.get(index as usize).copied(),
        }
    }
}

/// Converts a decoded I420 picture to packed RGB24.
fn yuv_to_rgb(yuv: &DecodedYUV<'_>) -> (u32, u32, Vec<u8>) {
    let (w, h) = yuv.dimensions();
    let mut rgb = vec![0u8; w * h * 3];
    yuv.write_rgb8(&mut rgb);
    (w as u32, h as u32, rgb)
}

impl FrameSource for Mp4Source {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError> {
        Ok(self
            .decode_next()?
            .map(|(w, h, rgb)| self.make_frame(w, h, rgb)))
    }
}
