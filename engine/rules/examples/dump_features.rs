//! Prints one CSV line of right-of-way features per phrase folder (for offline study):
//! `cargo run --release -p referee-rules --example dump_features -- ../shared/data/phrases`.

use referee_rules::signal::parse_signal;
use referee_rules::workbook::{infer_fps, read_workbook};
use referee_rules::PhraseAnalyzer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: dump_features PHRASES_DIR")?;
    let mut dirs: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("signal.txt").is_file())
        .collect();
    dirs.sort();
    println!("name,fps,winner,confidence,adv_l,adv_r,run_l,run_r,first,rule");
    for d in dirs {
        let tl = parse_signal(&std::fs::read_to_string(d.join("signal.txt"))?)?;
        let mut frames = read_workbook(&d.join("keypoints.xlsx"), 1.0)?;
        let fps = infer_fps(frames.len(), &tl).unwrap_or(15.0);
        let mut an = PhraseAnalyzer::new(fps);
        for f in &mut frames {
            f.t = f.frame as f64 / fps;
            an.push(f);
        }
        let dec = an.decide(&tl);
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match &dec.features {
            Some(f) => println!(
                "{name},{fps},{},{:.3},{:.4},{:.4},{:.4},{:.4},{},{}",
                dec.winner.name(),
                dec.confidence,
                f.advance.left,
                f.advance.right,
                f.run.left,
                f.run.right,
                f.vector[2],
                f.rule as u8
            ),
            None => println!(
                "{name},{fps},{},{:.3},,,,,,",
                dec.winner.name(),
                dec.confidence
            ),
        }
    }
    Ok(())
}
