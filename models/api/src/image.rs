//! The one image decoder of the workspace: JPEG (zune-jpeg), PNG (png) or raw RGB24 bytes into a
//! packed 8-bit [`RgbImage`]. The engine decodes frames with it, the capture agent transcodes
//! with it, the pose tools load still images with it.
//!
//! Every input is untrusted: corrupt, truncated or oversized data gives a [`DecodeError`], never a
//! panic. Dimensions are checked against `max_pixels` from the header, before any pixel buffer is
//! allocated. [`decode_frame_into`] reuses the caller's buffer so that the steady state allocates
//! no output buffer per frame.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// How a frame's bytes are encoded (the wire protocol carries this value as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameEncoding {
    /// A baseline or progressive JPEG.
    Jpeg,
    /// A PNG (8/16-bit gray, gray+alpha, RGB, RGBA, palette).
    Png,
    /// Packed 8-bit RGB, `width * height * 3` bytes.
    Rgb24 {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// Largest image the still-image helpers ([`decode_image`], [`load_image`]) accept, in pixels.
pub const STILL_IMAGE_MAX_PIXELS: usize = 16384 * 16384;

/// A packed 8-bit RGB image, row-major, `data.len() == width * height * 3`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Packed RGB, `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// A `width` x `height` image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        let mut data = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            data.extend_from_slice(&rgb);
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// True when `data` holds exactly `width * height * 3` bytes and the image is not empty.
    pub fn is_consistent(&self) -> bool {
        self.width > 0
            && self.height > 0
            && self
                .width
                .checked_mul(self.height)
                .and_then(|n| n.checked_mul(3))
                .is_some_and(|n| n == self.data.len())
    }
}

/// Why a frame could not be decoded.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty frame payload")]
    Empty,
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {max_pixels}")]
    TooLarge {
        width: usize,
        height: usize,
        pixels: u128,
        max_pixels: usize,
    },
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSize { width: usize, height: usize },
    #[error("raw RGB24 frame of {width}x{height} needs {expected} bytes, got {got}")]
    RawSize {
        width: usize,
        height: usize,
        expected: u128,
        got: usize,
    },
    #[error("corrupt JPEG: {0}")]
    Jpeg(String),
    #[error("corrupt PNG: {0}")]
    Png(String),
    #[error("unsupported PNG layout: {0}")]
    PngUnsupported(String),
    #[error("{0} decoder panicked on this input")]
    DecoderPanic(&'static str),
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// True when the bytes start like a JPEG or a PNG.
pub fn is_image(bytes: &[u8]) -> bool {
    sniff(bytes).is_some()
}

fn sniff(bytes: &[u8]) -> Option<FrameEncoding> {
    if bytes.starts_with(b"\x89PNG") {
        Some(FrameEncoding::Png)
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        Some(FrameEncoding::Jpeg)
    } else {
        None
    }
}

/// Decodes JPEG or PNG bytes, the format sniffed from the content.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let encoding = sniff(bytes).ok_or(DecodeError::UnknownFormat)?;
    decode_frame(encoding, bytes, STILL_IMAGE_MAX_PIXELS)
}

/// Reads and decodes a JPEG or PNG file.
pub fn load_image(path: &std::path::Path) -> Result<RgbImage, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode_image(&bytes)
}

/// Decodes one frame into a new [`RgbImage`]; see [`decode_frame_into`] for the rules.
pub fn decode_frame(
    encoding: FrameEncoding,
    bytes: &[u8],
    max_pixels: usize,
) -> Result<RgbImage, DecodeError> {
    let mut out = RgbImage::default();
    decode_frame_into(encoding, bytes, max_pixels, &mut out)?;
    Ok(out)
}

/// Decodes one frame into `out`, reusing `out.data`'s allocation when it is large enough.
///
/// Images above `max_pixels` pixels are refused from their header. On error the content of
/// `out` is unspecified and must not be used.
pub fn decode_frame_into(
    encoding: FrameEncoding,
    bytes: &[u8],
    max_pixels: usize,
    out: &mut RgbImage,
) -> Result<(), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    match encoding {
        FrameEncoding::Jpeg => guarded("JPEG", || decode_jpeg(bytes, max_pixels, out)),
        FrameEncoding::Png => guarded("PNG", || decode_png(bytes, max_pixels, out)),
        FrameEncoding::Rgb24 { width, height } => {
            decode_raw(width as usize, height as usize, bytes, max_pixels, out)
        }
    }
}

/// Runs a third-party decoder and turns a panic inside it into an error: the input is untrusted
/// and a decoder bug must not take the pipeline thread down.
fn guarded(
    what: &'static str,
    f: impl FnOnce() -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(decoder = what, "decoder panicked; frame rejected");
            Err(DecodeError::DecoderPanic(what))
        }
    }
}

fn check_size(width: usize, height: usize, max_pixels: usize) -> Result<usize, DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSize { width, height });
    }
    let pixels = width as u128 * height as u128;
    if pixels > max_pixels as u128 {
        return Err(DecodeError::TooLarge {
            width,
            height,
            pixels,
            max_pixels,
        });
    }
    Ok(pixels as usize)
}

fn decode_raw(
    width: usize,
    height: usize,
    bytes: &[u8],
    max_pixels: usize,
    out: &mut RgbImage,
) -> Result<(), DecodeError> {
    let pixels = check_size(width, height, max_pixels)?;
    let expected = pixels as u128 * 3;
    if bytes.len() as u128 != expected {
        return Err(DecodeError::RawSize {
            width,
            height,
            expected,
            got: bytes.len(),
        });
    }
    out.width = width;
    out.height = height;
    out.data.clear();
    out.data.extend_from_slice(bytes);
    Ok(())
}

fn decode_jpeg(bytes: &[u8], max_pixels: usize, out: &mut RgbImage) -> Result<(), DecodeError> {
    let side = max_pixels.clamp(1, u16::MAX as usize);
    // new_fast: SIMD (AVX2/SSE/NEON) IDCT and colour conversion, ~3x faster than the
    // intrinsics-free default; strict mode turns truncated data into an error.
    let options = DecoderOptions::new_fast()
        .set_max_width(side)
        .set_max_height(side)
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| DecodeError::Jpeg(format!("{e:?}")))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| DecodeError::Jpeg("no dimensions after the headers".into()))?;
    let pixels = check_size(width, height, max_pixels)?;
    let needed = decoder
        .output_buffer_size()
        .ok_or_else(|| DecodeError::Jpeg("output size overflows".into()))?;
    if needed != pixels * 3 {
        return Err(DecodeError::Jpeg(format!(
            "decoder wants {needed} bytes for {width}x{height} RGB"
        )));
    }
    out.data.resize(needed, 0);
    decoder
        .decode_into(&mut out.data)
        .map_err(|e| DecodeError::Jpeg(format!("{e:?}")))?;
    out.width = width;
    out.height = height;
    Ok(())
}

fn decode_png(bytes: &[u8], max_pixels: usize, out: &mut RgbImage) -> Result<(), DecodeError> {
    let png_err = |e: png::DecodingError| DecodeError::Png(e.to_string());
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Worst case the decoder holds one RGBA frame of 16-bit samples plus a few rows.
    decoder.set_limits(png::Limits {
        bytes: max_pixels.saturating_mul(8).saturating_add(1 << 20),
    });
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let header = decoder.read_header_info().map_err(png_err)?;
    let (width, height) = (header.width as usize, header.height as usize);
    let pixels = check_size(width, height, max_pixels)?;
    let mut reader = decoder.read_info().map_err(png_err)?;
    if reader.info().is_animated() {
        tracing::debug!("animated PNG: decoding its first frame only");
    }
    let (color, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight {
        return Err(DecodeError::PngUnsupported(format!(
            "bit depth {depth:?} after expansion"
        )));
    }
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(DecodeError::PngUnsupported("palette not expanded".into()))
        }
    };
    let frame_len = reader.output_buffer_size();
    if frame_len != pixels * channels {
        return Err(DecodeError::PngUnsupported(format!(
            "frame buffer of {frame_len} bytes for {width}x{height}x{channels}"
        )));
    }
    out.width = width;
    out.height = height;
    if channels == 3 {
        out.data.resize(frame_len, 0);
        reader.next_frame(&mut out.data).map_err(png_err)?;
        return Ok(());
    }
    let mut tmp = vec![0u8; frame_len];
    reader.next_frame(&mut tmp).map_err(png_err)?;
    out.data.clear();
    out.data.reserve(pixels * 3);
    for px in tmp.chunks_exact(channels) {
        match channels {
            1 | 2 => out.data.extend_from_slice(&[px[0], px[0], px[0]]),
            _ => out.data.extend_from_slice(&px[..3]),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096 * 4096;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[
                    (x * 255 / w.max(1)) as u8,
                    (y * 255 / h.max(1)) as u8,
                    ((x + y) % 256) as u8,
                ]);
            }
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    fn jpeg_of(img: &RgbImage, quality: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        let enc = jpeg_encoder::Encoder::new(&mut bytes, quality);
        enc.encode(
            &img.data,
            img.width as u16,
            img.height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encode test jpeg");
        bytes
    }

    fn png_of(w: u32, h: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, w, h);
            enc.set_color(color);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().expect("png header");
            writer.write_image_data(data).expect("png data");
        }
        bytes
    }

    #[test]
    fn jpeg_decodes_close_to_source() {
        let img = gradient(96, 64);
        let bytes = jpeg_of(&img, 95);
        let out = decode_frame(FrameEncoding::Jpeg, &bytes, MAX).expect("decode");
        assert_eq!(
            (out.width, out.height, out.data.len()),
            (96, 64, 96 * 64 * 3)
        );
        let mean_err: f64 = img
            .data
            .iter()
            .zip(&out.data)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / img.data.len() as f64;
        assert!(mean_err < 4.0, "mean abs error {mean_err}");
    }

    #[test]
    fn grayscale_jpeg_becomes_rgb() {
        let (w, h) = (40u16, 24u16);
        let luma: Vec<u8> = (0..w as usize * h as usize)
            .map(|i| (i % 200) as u8)
            .collect();
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 90)
            .encode(&luma, w, h, jpeg_encoder::ColorType::Luma)
            .expect("encode");
        let out = decode_frame(FrameEncoding::Jpeg, &bytes, MAX).expect("decode");
        assert_eq!(out.data.len(), w as usize * h as usize * 3);
        assert!(out
            .data
            .chunks_exact(3)
            .all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn truncated_jpegs_are_errors_not_panics() {
        let bytes = jpeg_of(&gradient(128, 96), 85);
        let mut errors = 0;
        for cut in (0..bytes.len()).step_by(7) {
            if decode_frame(FrameEncoding::Jpeg, &bytes[..cut], MAX).is_err() {
                errors += 1;
            }
        }
        // Every strict prefix misses at least the end of the entropy-coded data.
        let prefixes = bytes.len().div_ceil(7);
        assert!(
            errors * 10 >= prefixes * 9,
            "{errors} errors out of {prefixes} prefixes"
        );
        assert!(decode_frame(FrameEncoding::Jpeg, &bytes[..bytes.len() / 2], MAX).is_err());
    }

    #[test]
    fn random_bytes_are_errors() {
        // xorshift: deterministic noise, some of it starting with a JPEG/PNG signature.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..200 {
            let len = 1 + round * 13;
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            if round % 3 == 0 && buf.len() > 4 {
                buf[..3].copy_from_slice(&[0xFF, 0xD8, 0xFF]);
            }
            if round % 3 == 1 && buf.len() > 8 {
                buf[..8].copy_from_slice(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
            }
            assert!(decode_frame(FrameEncoding::Jpeg, &buf, MAX).is_err());
            assert!(decode_frame(FrameEncoding::Png, &buf, MAX).is_err());
        }
        assert!(matches!(
            decode_frame(FrameEncoding::Jpeg, &[], MAX),
            Err(DecodeError::Empty)
        ));
    }

    #[test]
    fn jpeg_header_claiming_huge_size_is_refused() {
        // A real small JPEG whose SOF0 dimensions are patched; 100000 does not fit 16 bits,
        // so the largest header value (65535 x 65535) stands in for it, plus a 100000-pixel
        // limit check with a legitimately sized header.
        let mut bytes = jpeg_of(&gradient(32, 32), 80);
        let sof = bytes
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("baseline SOF0 marker");
        // FF C0, length (2), precision (1), height (2), width (2)
        bytes[sof + 5..sof + 7].copy_from_slice(&65535u16.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&65535u16.to_be_bytes());
        let err = decode_frame(FrameEncoding::Jpeg, &bytes, MAX).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLarge { .. } | DecodeError::Jpeg(_)),
            "unexpected {err:?}"
        );
        let ok = jpeg_of(&gradient(400, 300), 80);
        let err = decode_frame(FrameEncoding::Jpeg, &ok, 100_000).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    pixels: 120_000,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn png_variants_decode_to_rgb() {
        let img = gradient(20, 10);
        let rgb = decode_frame(
            FrameEncoding::Png,
            &png_of(20, 10, png::ColorType::Rgb, &img.data),
            MAX,
        )
        .expect("rgb png");
        assert_eq!(rgb, img);
        let rgba: Vec<u8> = img
            .data
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 7])
            .collect();
        let out = decode_frame(
            FrameEncoding::Png,
            &png_of(20, 10, png::ColorType::Rgba, &rgba),
            MAX,
        )
        .expect("rgba png");
        assert_eq!(out, img);
        let gray: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let out = decode_frame(
            FrameEncoding::Png,
            &png_of(20, 10, png::ColorType::Grayscale, &gray),
            MAX,
        )
        .expect("gray png");
        assert_eq!(&out.data[..6], &[0, 0, 0, 1, 1, 1]);
        let bytes = png_of(20, 10, png::ColorType::Rgb, &img.data);
        assert!(decode_frame(FrameEncoding::Png, &bytes[..bytes.len() - 20], MAX).is_err());
        assert!(matches!(
            decode_frame(FrameEncoding::Png, &bytes, 100),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn raw_rgb24_checks_size() {
        let img = gradient(8, 4);
        let enc = FrameEncoding::Rgb24 {
            width: 8,
            height: 4,
        };
        assert_eq!(decode_frame(enc, &img.data, MAX).expect("raw"), img);
        assert!(matches!(
            decode_frame(enc, &img.data[1..], MAX),
            Err(DecodeError::RawSize { .. })
        ));
        let huge = FrameEncoding::Rgb24 {
            width: 100_000,
            height: 100_000,
        };
        assert!(matches!(
            decode_frame(huge, &img.data, MAX),
            Err(DecodeError::TooLarge { .. })
        ));
        let zero = FrameEncoding::Rgb24 {
            width: 0,
            height: 4,
        };
        assert!(matches!(
            decode_frame(zero, &img.data, MAX),
            Err(DecodeError::ZeroSize { .. })
        ));
    }

    #[test]
    fn into_variant_reuses_the_buffer() {
        let bytes = jpeg_of(&gradient(64, 48), 90);
        let mut out = RgbImage::default();
        decode_frame_into(FrameEncoding::Jpeg, &bytes, MAX, &mut out).expect("first");
        let ptr = out.data.as_ptr();
        let cap = out.data.capacity();
        decode_frame_into(FrameEncoding::Jpeg, &bytes, MAX, &mut out).expect("second");
        assert_eq!((out.data.as_ptr(), out.data.capacity()), (ptr, cap));
        assert!(out.is_consistent());
    }

    #[test]
    fn still_images_are_sniffed() {
        let png = png_of(
            2,
            1,
            png::ColorType::Rgba,
            &[10, 20, 30, 255, 40, 50, 60, 0],
        );
        let img = decode_image(&png).expect("png");
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.data, vec![10, 20, 30, 40, 50, 60]);
        assert!(is_image(&png) && !is_image(b"hello"));
        assert!(matches!(
            decode_image(b"hello"),
            Err(DecodeError::UnknownFormat)
        ));
        assert!(decode_image(&[0xff, 0xd8, 0x00]).is_err());
        let missing = load_image(std::path::Path::new("/nonexistent/x.png")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/x.png"),
            "{missing}"
        );
    }
}
