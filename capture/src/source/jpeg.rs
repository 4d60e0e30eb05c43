//! Minimal JPEG marker parsing: image size from the frame header, and the end of a JPEG
//! inside a byte stream (for splitting ffmpeg's `image2pipe` MJPEG output).

/// Why a JPEG's markers could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JpegScan {
    /// More bytes are needed to decide.
    Incomplete,
    /// The bytes are not a valid JPEG marker sequence.
    Invalid(&'static str),
}

/// Checks the start-of-image marker; the offset after it.
fn after_soi(bytes: &[u8]) -> Result<usize, JpegScan> {
    if bytes.len() < 2 {
        return Err(JpegScan::Incomplete);
    }
    if bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Err(JpegScan::Invalid("missing JPEG start-of-image marker"));
    }
    Ok(2)
}

/// Reads `(width, height)` from the first start-of-frame (SOFn) segment of a JPEG.
pub fn jpeg_size(bytes: &[u8]) -> Result<(u32, u32), JpegScan> {
    let mut i = after_soi(bytes)?;
    loop {
        let (marker, next) = next_marker(bytes, i)?;
        i = next;
        match marker {
            0xD8 => return Err(JpegScan::Invalid("nested start-of-image marker")),
            0xD9 => return Err(JpegScan::Invalid("image ends before its frame header")),
            0x01 | 0xD0..=0xD7 => continue,
            0xDA => return Err(JpegScan::Invalid("scan data before the frame header")),
            _ => {}
        }
        let len = segment_len(bytes, i)?;
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            if len < 7 {
                return Err(JpegScan::Invalid("frame header too short"));
            }
            if bytes.len() < i + 7 {
                return Err(JpegScan::Incomplete);
            }
            let h = u16::from_be_bytes([bytes[i + 3], bytes[i + 4]]) as u32;
            let w = u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]) as u32;
            if w == 0 || h == 0 {
                return Err(JpegScan::Invalid(
                    "frame header gives a zero width or height",
                ));
            }
            return Ok((w, h));
        }
        i += len;
    }
}

/// Finds the end of the JPEG that starts at `bytes[0]`: returns the length up to and including
/// its end-of-image marker. Handles byte stuffing, restart markers and multi-scan images, so an
/// `FF D9` pair inside a segment's payload is never mistaken for the end.
pub fn jpeg_end(bytes: &[u8]) -> Result<usize, JpegScan> {
    let mut i = after_soi(bytes)?;
    loop {
        let (marker, next) = next_marker(bytes, i)?;
        i = next;
        match marker {
            0xD9 => return Ok(i),
            0xD8 => return Err(JpegScan::Invalid("nested start-of-image marker")),
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = segment_len(bytes, i)?;
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: runs until a marker other than stuffing (FF00) or RSTn.
            loop {
                let Some(off) = bytes[i..].iter().position(|&b| b == 0xFF) else {
                    return Err(JpegScan::Incomplete);
                };
                let p = i + off;
                let Some(&b) = bytes.get(p + 1) else {
                    return Err(JpegScan::Incomplete);
                };
                match b {
                    0x00 | 0xD0..=0xD7 | 0xFF => i = p + 1,
                    _ => {
                        i = p;
                        break;
                    }
                }
            }
        }
    }
}

/// Reads the marker at `i` (skipping fill bytes): returns the marker code and the index after it.
fn next_marker(bytes: &[u8], mut i: usize) -> Result<(u8, usize), JpegScan> {
    match bytes.get(i) {
        None => return Err(JpegScan::Incomplete),
        Some(0xFF) => {}
        Some(_) => return Err(JpegScan::Invalid("expected a marker")),
    }
    while bytes.get(i) == Some(&0xFF) {
        i += 1;
    }
    match bytes.get(i) {
        None => Err(JpegScan::Incomplete),
        Some(0x00) => Err(JpegScan::Invalid(
            "stuffed byte where a marker was expected",
        )),
        Some(&m) => Ok((m, i + 1)),
    }
}

/// Length of the segment whose length field starts at `i` (the field counts itself).
fn segment_len(bytes: &[u8], i: usize) -> Result<usize, JpegScan> {
    if bytes.len() < i + 2 {
        return Err(JpegScan::Incomplete);
    }
    let len = u16::from_be_bytes([bytes[i], bytes[i + 1]]) as usize;
    if len < 2 {
        return Err(JpegScan::Invalid("segment length below 2"));
    }
    if bytes.len() < i + len {
        return Err(JpegScan::Incomplete);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(w: u16, h: u16, seed: u8) -> Vec<u8> {
        let px: Vec<u8> = (0..w as usize * h as usize * 3)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    #[test]
    fn size_from_header() {
        let j = encode(37, 21, 1);
        assert_eq!(jpeg_size(&j), Ok((37, 21)));
        assert_eq!(jpeg_size(&j[..10]), Err(JpegScan::Incomplete));
        assert!(matches!(
            jpeg_size(b"\x89PNG...."),
            Err(JpegScan::Invalid(_))
        ));
    }

    #[test]
    fn end_of_concatenated_jpegs() {
        let a = encode(64, 48, 3);
        let b = encode(16, 16, 9);
        let mut s = a.clone();
        s.extend_from_slice(&b);
        assert_eq!(jpeg_end(&s), Ok(a.len()));
        assert_eq!(jpeg_end(&s[a.len()..]), Ok(b.len()));
        // Every strict prefix is incomplete, never a false end.
        for cut in 0..a.len() {
            assert_eq!(jpeg_end(&a[..cut]), Err(JpegScan::Incomplete), "cut {cut}");
        }
    }

    #[test]
    fn ffd9_inside_a_comment_is_not_the_end() {
        let a = encode(8, 8, 0);
        // Insert a COM segment containing FF D9 right after SOI.
        let mut s = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD9];
        s.extend_from_slice(&a[2..]);
        assert_eq!(jpeg_end(&s), Ok(s.len()));
    }
}
