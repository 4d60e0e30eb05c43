//! Encoding captured frames for the wire.
//!
//! JPEG bytes from the source (MJPEG cameras, JPEG folders, ffmpeg) are forwarded untouched
//! when JPEG is asked; RGB frames are compressed with jpeg-encoder (pure Rust) or png.

use referee_transport::messages::FrameEncoding;

use crate::source::{CapturedFrame, FrameData};

/// Wire encoding chosen for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JPEG at `quality` (1-100); JPEG sources are forwarded without re-encoding.
    Jpeg { quality: u8 },
    /// Lossless PNG (RGB, 8 bits).
    Png,
    /// Packed RGB24, uncompressed.
    Raw,
}

impl Default for Encoding {
    fn default() -> Self {
        Encoding::Jpeg { quality: 80 }
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;

    /// Parses `jpeg` (quality 80), `jpeg:Q` (Q in 1..=100), `png` or `raw`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "jpeg" | "jpg" => Ok(Encoding::default()),
            "png" => Ok(Encoding::Png),
            "raw" | "rgb" | "rgb24" => Ok(Encoding::Raw),
            other => {
                let q = other
                    .strip_prefix("jpeg:")
                    .or_else(|| other.strip_prefix("jpg:"))
                    .and_then(|q| q.parse::<u8>().ok())
                    .filter(|q| (1..=100).contains(q));
                q.map(|quality| Encoding::Jpeg { quality }).ok_or_else(|| {
                    format!("unknown encoding {s:?}: use jpeg, jpeg:QUALITY (1-100), png or raw")
                })
            }
        }
    }
}

/// Errors while encoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The frame's RGB buffer does not match its width and height.
    #[error("frame {frame}: RGB buffer has {len} bytes, expected {width}x{height}x3 = {expected}")]
    BadSize {
        frame: u64,
        width: u32,
        height: u32,
        len: usize,
        expected: usize,
    },
    /// JPEG cannot encode frames this large (65535 pixels per side at most).
    #[error("frame {frame}: {width}x{height} is too large for JPEG (65535 per side at most); use PNG or raw")]
    TooLarge { frame: u64, width: u32, height: u32 },
    /// JPEG quality outside 1..=100.
    #[error("JPEG quality {0} is out of range: choose 1 to 100")]
    BadQuality(u8),
    /// The source's JPEG could not be decoded (needed to re-encode it as PNG or raw).
    #[error("frame {frame}: cannot decode the source JPEG: {reason}")]
    JpegDecode { frame: u64, reason: String },
    /// The JPEG encoder failed.
    #[error("frame {frame}: JPEG encoding failed: {reason}")]
    Jpeg { frame: u64, reason: String },
    /// The PNG encoder failed.
    #[error("frame {frame}: PNG encoding failed: {reason}")]
    Png { frame: u64, reason: String },
}

/// Encodes `frame` as asked and returns the wire encoding and the bytes to send.
pub fn encode(
    frame: &CapturedFrame,
    enc: Encoding,
) -> Result<(FrameEncoding, Vec<u8>), EncodeError> {
    if let Encoding::Jpeg { quality } = enc {
        if !(1..=100).contains(&quality) {
            return Err(EncodeError::BadQuality(quality));
        }
        if let FrameData::Jpeg(bytes) = &frame.data {
            return Ok((FrameEncoding::Jpeg, bytes.clone()));
        }
    }
    let decoded;
    let (rgb, width, height) = match &frame.data {
        FrameData::Rgb(rgb) => {
            let expected = frame.width as usize * frame.height as usize * 3;
            if rgb.len() != expected {
                return Err(EncodeError::BadSize {
                    frame: frame.index,
                    width: frame.width,
                    height: frame.height,
                    len: rgb.len(),
                    expected,
                });
            }
            (rgb.as_slice(), frame.width, frame.height)
        }
        FrameData::Jpeg(bytes) => {
            let image = referee_pose_api::image::decode_image(bytes).map_err(|e| {
                EncodeError::JpegDecode {
                    frame: frame.index,
                    reason: e.to_string(),
                }
            })?;
            decoded = image.data;
            (decoded.as_slice(), image.width as u32, image.height as u32)
        }
    };
    match enc {
        Encoding::Jpeg { quality } => {
            let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
                (Ok(w), Ok(h)) => (w, h),
                _ => {
                    return Err(EncodeError::TooLarge {
                        frame: frame.index,
                        width,
                        height,
                    })
                }
            };
            let mut out = Vec::with_capacity(rgb.len() / 10);
            jpeg_encoder::Encoder::new(&mut out, quality)
                .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| EncodeError::Jpeg {
                    frame: frame.index,
                    reason: e.to_string(),
                })?;
            Ok((FrameEncoding::Jpeg, out))
        }
        Encoding::Png => {
            let png_err = |e: png::EncodingError| EncodeError::Png {
                frame: frame.index,
                reason: e.to_string(),
            };
            let mut out = Vec::with_capacity(rgb.len() / 2);
            let mut encoder = png::Encoder::new(&mut out, width, height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Fast);
            let mut writer = encoder.write_header().map_err(png_err)?;
            writer.write_image_data(rgb).map_err(png_err)?;
            writer.finish().map_err(png_err)?;
            Ok((FrameEncoding::Png, out))
        }
        Encoding::Raw => Ok((FrameEncoding::Rgb24 { width, height }, rgb.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, data: FrameData) -> CapturedFrame {
        CapturedFrame {
            index: 7,
            capture_ts_us: 0,
            width: w,
            height: h,
            data,
            pts_us: None,
        }
    }

    #[test]
    fn encoding_parses() {
        assert_eq!("jpeg".parse(), Ok(Encoding::Jpeg { quality: 80 }));
        assert_eq!("JPEG:95".parse(), Ok(Encoding::Jpeg { quality: 95 }));
        assert_eq!("png".parse(), Ok(Encoding::Png));
        assert_eq!("raw".parse(), Ok(Encoding::Raw));
        assert!("jpeg:0".parse::<Encoding>().is_err());
        assert!("jpeg:101".parse::<Encoding>().is_err());
        assert!("webp"
            .parse::<Encoding>()
            .unwrap_err()
            .contains("png or raw"));
    }

    #[test]
    fn jpeg_source_is_forwarded_untouched() {
        let bytes = vec![0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9];
        let f = frame(2, 2, FrameData::Jpeg(bytes.clone()));
        let (e, out) = encode(&f, Encoding::Jpeg { quality: 50 }).unwrap();
        assert_eq!(e, FrameEncoding::Jpeg);
        assert_eq!(out, bytes);
    }

    #[test]
    fn wrong_rgb_size_is_an_error() {
        let f = frame(4, 4, FrameData::Rgb(vec![0; 10]));
        for enc in [Encoding::Jpeg { quality: 80 }, Encoding::Png, Encoding::Raw] {
            let err = encode(&f, enc).unwrap_err();
            assert!(
                matches!(err, EncodeError::BadSize { expected: 48, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_quality_is_an_error() {
        let f = frame(1, 1, FrameData::Rgb(vec![0; 3]));
        assert!(matches!(
            encode(&f, Encoding::Jpeg { quality: 0 }),
            Err(EncodeError::BadQuality(0))
        ));
        assert!(encode(&f, Encoding::Jpeg { quality: 101 }).is_err());
    }

    #[test]
    fn corrupt_source_jpeg_to_png_is_an_error() {
        let f = frame(2, 2, FrameData::Jpeg(vec![0xFF, 0xD8, 0, 0]));
        let err = encode(&f, Encoding::Png).unwrap_err();
        assert!(
            matches!(err, EncodeError::JpegDecode { frame: 7, .. }),
            "{err}"
        );
    }
}
