//! Encoding round trips: JPEG close to the source, PNG and raw exact, JPEG sources forwarded.

use referee_capture::encode::{encode, Encoding};
use referee_capture::source::{CapturedFrame, FrameData, FrameSource, Synthetic};
use referee_pose_api::image::decode_image;
use referee_transport::messages::FrameEncoding;

fn synthetic_frame(w: u32, h: u32, index: u64) -> CapturedFrame {
    let mut src = Synthetic::new(w, h, 30.0, None).unwrap();
    let mut f = src.next_frame().unwrap().unwrap();
    for _ in 0..index {
        f = src.next_frame().unwrap().unwrap();
    }
    f
}

fn rgb(f: &CapturedFrame) -> &[u8] {
    match &f.data {
        FrameData::Rgb(b) => b,
        FrameData::Jpeg(_) => panic!("expected RGB"),
    }
}

/// Peak signal-to-noise ratio in dB.
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
}

#[test]
fn jpeg_round_trip_is_close_and_quality_matters() {
    let f = synthetic_frame(320, 240, 12);
    let (enc, q90) = encode(&f, Encoding::Jpeg { quality: 90 }).unwrap();
    assert_eq!(enc, FrameEncoding::Jpeg);
    let img = decode_image(&q90).unwrap();
    let (w, h, px) = (img.width, img.height, img.data);
    assert_eq!((w, h), (320, 240));
    let p90 = psnr(&px, rgb(&f));
    assert!(p90 > 30.0, "q90 PSNR {p90:.1} dB");
    let (_, q20) = encode(&f, Encoding::Jpeg { quality: 20 }).unwrap();
    let px20 = decode_image(&q20).unwrap().data;
    let p20 = psnr(&px20, rgb(&f));
    assert!(q20.len() < q90.len(), "lower quality must be smaller");
    assert!(
        p20 < p90,
        "lower quality must be less faithful ({p20:.1} vs {p90:.1})"
    );
}

#[test]
fn png_round_trip_is_exact() {
    let f = synthetic_frame(200, 120, 3);
    let (enc, bytes) = encode(&f, Encoding::Png).unwrap();
    assert_eq!(enc, FrameEncoding::Png);
    let mut reader = png::Decoder::new(&bytes[..]).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (200, 120));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(&buf[..info.buffer_size()], rgb(&f));
}

#[test]
fn raw_round_trip_is_exact() {
    let f = synthetic_frame(64, 48, 0);
    let (enc, bytes) = encode(&f, Encoding::Raw).unwrap();
    assert_eq!(
        enc,
        FrameEncoding::Rgb24 {
            width: 64,
            height: 48
        }
    );
    assert_eq!(bytes, rgb(&f));
}

#[test]
fn jpeg_source_forwarded_or_decoded() {
    let f = synthetic_frame(96, 64, 5);
    let (_, jpeg) = encode(&f, Encoding::Jpeg { quality: 95 }).unwrap();
    let src = CapturedFrame {
        data: FrameData::Jpeg(jpeg.clone()),
        ..f.clone()
    };
    // JPEG asked: the very same bytes, whatever the quality.
    let (enc, out) = encode(&src, Encoding::Jpeg { quality: 10 }).unwrap();
    assert_eq!(enc, FrameEncoding::Jpeg);
    assert_eq!(out, jpeg);
    // Raw asked: decoded pixels, close to the original.
    let (enc, out) = encode(&src, Encoding::Raw).unwrap();
    assert_eq!(
        enc,
        FrameEncoding::Rgb24 {
            width: 96,
            height: 64
        }
    );
    assert!(psnr(&out, rgb(&f)) > 30.0);
    // PNG asked: lossless copy of the decoded JPEG.
    let (enc, out) = encode(&src, Encoding::Png).unwrap();
    assert_eq!(enc, FrameEncoding::Png);
    assert!(out.starts_with(b"\x89PNG"));
}
