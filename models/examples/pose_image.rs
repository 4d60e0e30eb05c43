//! Runs the reference YOLO pose model on one JPEG/PNG and prints the persons (source pixels):
//! `cargo run --release -p referee-models --example pose_image -- IMAGE [WxH]`.

use referee_models::{default_weights_path, letterbox_rgb, PoseEstimator, PoseOptions, YoloPose};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: pose_image IMAGE [WxH]")?;
    let (w, h) = match args.next() {
        Some(s) => {
            let (a, b) = s.split_once('x').ok_or("size must be WxH")?;
            (a.parse()?, b.parse()?)
        }
        None => (640, 384),
    };
    let img = referee_models::image::load_image(path.as_ref())?;
    let opts = PoseOptions {
        input_width: w,
        input_height: h,
        ..PoseOptions::default()
    };
    let mut model = YoloPose::load(&default_weights_path(), opts)?;
    let frame = letterbox_rgb(&img.data, img.width, img.height, w, h);
    let t0 = std::time::Instant::now();
    let persons = model.estimate(std::slice::from_ref(&frame))?;
    println!(
        "{} in {:.1} ms",
        model.net().describe(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    for p in &persons[0] {
        let k = &p.keypoints;
        println!(
            "score {:.3} box [{:.1}, {:.1}, {:.1}, {:.1}] l-hip ({:.1}, {:.1}, {:.2}) r-hip ({:.1}, {:.1}, {:.2}) nose ({:.1}, {:.1}, {:.2})",
            p.score, p.bbox[0], p.bbox[1], p.bbox[2], p.bbox[3],
            k[11][0], k[11][1], k[11][2], k[12][0], k[12][1], k[12][2], k[0][0], k[0][1], k[0][2]
        );
    }
    Ok(())
}
