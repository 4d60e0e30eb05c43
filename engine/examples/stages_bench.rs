//! Per-frame cost of the engine's compute stages on one core: JPEG decode of a 1280x720 frame,
//! building the fused rectify table, applying it, and the per-pixel reference path.
//!
//! Run: `cargo run --release -p referee-engine --example stages_bench`

use std::time::{Duration, Instant};

use referee_engine::rectify::{RectifyParams, RemapTable};
use referee_pose_api::{decode_frame_into, FrameEncoding, RgbImage};

/// A textured synthetic 1280x720 frame (gradients, stripes and noise so that JPEG has work).
fn synthetic(w: usize, h: usize) -> RgbImage {
    let mut s = 0x2545_F491u32;
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let n = (s % 6) as usize;
            let stripe = if (x / 40 + y / 30) % 2 == 0 { 60 } else { 0 };
            data.push(((x * 150 / w) + n + stripe).min(255) as u8);
            data.push(((y * 150 / h) + n + stripe / 2).min(255) as u8);
            data.push((((x + y) % 200) + n) as u8);
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

fn time<F: FnMut()>(iters: usize, mut f: F) -> Duration {
    f(); // warm-up
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed() / iters as u32
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let (w, h) = (1280, 720);
    let img = synthetic(w, h);
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 85)
        .encode(&img.data, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .expect("encode the synthetic frame");
    let mut frame = RgbImage::default();
    let decode = time(100, || {
        decode_frame_into(FrameEncoding::Jpeg, &jpeg, 1 << 24, &mut frame).expect("decode");
    });
    println!(
        "decode  1280x720 JPEG q85 ({} KB): {:.2} ms/frame",
        jpeg.len() / 1024,
        ms(decode)
    );

    for (name, p) in [
        (
            "fisheye -0.3, band 0.25-0.95, 640x384",
            RectifyParams {
                fisheye_enabled: true,
                strength: -0.3,
                balance: 0.0,
                band: (0.25, 0.95),
                target: (640, 384),
            },
        ),
        (
            "fisheye -0.3, full, 640x640",
            RectifyParams {
                fisheye_enabled: true,
                strength: -0.3,
                balance: 0.0,
                band: (0.0, 1.0),
                target: (640, 640),
            },
        ),
        (
            "no fisheye, full, 640x384",
            RectifyParams {
                fisheye_enabled: false,
                strength: 0.0,
                balance: 0.0,
                band: (0.0, 1.0),
                target: (640, 384),
            },
        ),
    ] {
        let t = Instant::now();
        let table = RemapTable::build(w, h, &p).expect("build");
        let build = t.elapsed();
        let mut out = Vec::new();
        let apply = time(200, || table.apply(&frame, &mut out).expect("apply"));
        let reference = time(10, || {
            table.apply_reference(&frame, &mut out).expect("reference")
        });
        println!(
            "rectify {name}: build {:.1} ms once; apply {:.3} ms/frame; reference {:.2} ms/frame; speedup {:.1}x",
            ms(build),
            ms(apply),
            ms(reference),
            reference.as_secs_f64() / apply.as_secs_f64()
        );
    }
}
