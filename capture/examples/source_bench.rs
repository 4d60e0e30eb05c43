//! Measures the capture side's per-frame costs on the sample clip:
//! MP4/H.264 decode (re_mp4 + openh264), JPEG encode at q80 (bytes per frame, so bandwidth
//! at 15 and 30 fps can be stated), PNG encode, and ffmpeg decode when installed.
//!
//! Run: `cargo run --release -p referee-capture --example source_bench [-- PATH.mp4]`
//! (defaults to ../shared/data/3809.MP4 next to the workspace, or $REFEREE_SHARED_DIR/data).

use std::path::PathBuf;
use std::time::Instant;

use referee_capture::encode::{encode, Encoding};
use referee_capture::source::{
    ffmpeg_available, CapturedFrame, FfmpegSource, FrameSource, Mp4Source,
};

fn sample_path() -> PathBuf {
    if let Some(p) = std::env::args().nth(1) {
        return PathBuf::from(p);
    }
    if let Ok(shared) = std::env::var("REFEREE_SHARED_DIR") {
        return PathBuf::from(shared).join("data/3809.MP4");
    }
    let mut root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !root.join("Cargo.lock").exists() && root.pop() {}
    root.join("../shared/data/3809.MP4")
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), to separate the cost from
/// waiting on a loaded machine; `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Runs `f` `RUNS` times; returns (best wall seconds, best on-CPU seconds if known).
fn measure(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(f64, Option<f64>)> {
    let (mut wall, mut cpu) = (f64::MAX, None::<f64>);
    for _ in 0..RUNS {
        let c0 = thread_cpu_ns();
        let t = Instant::now();
        f()?;
        wall = wall.min(t.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (c0, thread_cpu_ns()) {
            let s = b.saturating_sub(a) as f64 / 1e9;
            cpu = Some(cpu.map_or(s, |c: f64| c.min(s)));
        }
    }
    Ok((wall, cpu))
}

fn per_frame(wall: f64, cpu: Option<f64>, n: f64) -> String {
    match cpu {
        Some(c) => format!(
            "{:.2} ms/frame wall, {:.2} ms/frame on-CPU",
            wall * 1e3 / n,
            c * 1e3 / n
        ),
        None => format!("{:.2} ms/frame wall", wall * 1e3 / n),
    }
}

const RUNS: usize = 5;

fn drain(src: &mut dyn FrameSource) -> anyhow::Result<Vec<CapturedFrame>> {
    let mut out = Vec::new();
    while let Some(f) = src.next_frame()? {
        out.push(f);
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let path = sample_path();
    if !path.exists() {
        anyhow::bail!(
            "sample not found at {} (pass a path to an MP4 file)",
            path.display()
        );
    }
    println!("sample: {}", path.display());

    // MP4 decode: best of RUNS passes over the whole clip (includes opening the file).
    let mut frames = Vec::new();
    let (wall, cpu) = measure(|| {
        let mut src = Mp4Source::open(&path)?;
        frames = drain(&mut src)?;
        Ok(())
    })?;
    let n = frames.len().max(1) as f64;
    let (w, h) = frames
        .first()
        .map(|f| (f.width, f.height))
        .unwrap_or((0, 0));
    println!(
        "mp4 decode (re_mp4 + openh264 -> RGB): {} frames {w}x{h}, {}",
        frames.len(),
        per_frame(wall, cpu, n)
    );

    for (label, enc) in [
        ("jpeg q80", Encoding::Jpeg { quality: 80 }),
        ("jpeg q90", Encoding::Jpeg { quality: 90 }),
        ("png (fast)", Encoding::Png),
    ] {
        let mut bytes = 0usize;
        let (wall, cpu) = measure(|| {
            bytes = 0;
            for f in &frames {
                bytes += encode(f, enc)?.1.len();
            }
            Ok(())
        })?;
        let per = bytes as f64 / n;
        println!(
            "{label:>10} encode: {}, {:.0} bytes/frame ({:.1} KB) -> {:.2} MB/s ({:.1} Mbit/s) at 15 fps, {:.2} MB/s ({:.1} Mbit/s) at 30 fps",
            per_frame(wall, cpu, n),
            per,
            per / 1e3,
            per * 15.0 / 1e6,
            per * 15.0 * 8.0 / 1e6,
            per * 30.0 / 1e6,
            per * 30.0 * 8.0 / 1e6,
        );
    }

    if ffmpeg_available() {
        let t = Instant::now();
        let mut src = FfmpegSource::open(&path)?;
        let jpegs = drain(&mut src)?;
        let secs = t.elapsed().as_secs_f64();
        let bytes: usize = jpegs.iter().map(|f| f.data.len()).sum();
        println!(
            "ffmpeg image2pipe mjpeg -q:v 3: {} frames, {:.2} ms/frame wall (includes process start), {:.0} bytes/frame",
            jpegs.len(),
            secs * 1e3 / jpegs.len().max(1) as f64,
            bytes as f64 / jpegs.len().max(1) as f64
        );
    } else {
        println!("ffmpeg: not installed, skipped");
    }
    Ok(())
}
