//! Still-image decoding (JPEG via zune-jpeg, PNG via png) to packed RGB8.

use std::path::Path;

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// A decoded RGB8 image.
#[derive(Debug, Clone)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Packed RGB, `width * height * 3` bytes.
    pub data: Vec<u8>,
}

/// Error decoding an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a JPEG/PNG we can decode.
    #[error("cannot decode image: {0}")]
    Decode(String),
}

/// True when the bytes start like a JPEG or a PNG.
pub fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8]) || bytes.starts_with(b"\x89PNG")
}

/// Decodes a JPEG file to RGB8.
pub fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    let data = dec
        .decode()
        .map_err(|e| ImageError::Decode(format!("JPEG: {e:?}")))?;
    let info = dec
        .info()
        .ok_or_else(|| ImageError::Decode("JPEG: no header".into()))?;
    let (width, height) = (info.width as usize, info.height as usize);
    if data.len() != width * height * 3 {
        return Err(ImageError::Decode(format!(
            "JPEG: decoded {} bytes for {width}x{height} RGB",
            data.len()
        )));
    }
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// Decodes a PNG file (8/16-bit gray, gray+alpha, RGB, RGBA, palette) to RGB8.
pub fn decode_png(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec
        .read_info()
        .map_err(|e| ImageError::Decode(format!("PNG: {e}")))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| ImageError::Decode(format!("PNG: {e}")))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let src = &buf[..info.buffer_size()];
    let data: Vec<u8> = match info.color_type {
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
            return Err(ImageError::Decode("PNG: palette not expanded".into()))
        }
    };
    if data.len() != width * height * 3 {
        return Err(ImageError::Decode("PNG: unexpected buffer size".into()));
    }
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// Decodes JPEG or PNG bytes (sniffed from the content).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    if bytes.starts_with(b"\x89PNG") {
        decode_png(bytes)
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        decode_jpeg(bytes)
    } else {
        Err(ImageError::Decode("not a JPEG or PNG file".into()))
    }
}

/// Reads and decodes a JPEG or PNG file.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode_image(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_roundtrip() {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 2, 1);
            enc.set_color(png::ColorType::Rgba);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[10, 20, 30, 255, 40, 50, 60, 0])
                .unwrap();
        }
        let img = decode_image(&out).unwrap();
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.data, vec![10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_image(b"hello").is_err());
        assert!(decode_image(&[0xff, 0xd8, 0x00]).is_err());
    }
}
