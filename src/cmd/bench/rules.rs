//! `referee bench analyze`: time per phrase of the offline analysis over the real phrases:
//! workbook read + signal parse + push + decide, push alone, and decide alone (the part that runs
//! after the signal lands in the live engine).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use referee_rules::{signal, workbook, PhraseAnalyzer};
use serde::Serialize;

/// Arguments of this benchmark.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder of phrase folders (signal.txt + keypoints.xlsx); default: ../shared/data/phrases
    /// next to the workspace, or $REFEREE_SHARED_DIR/data/phrases.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Frame rate of the keypoints (default: inferred per phrase, 15 or 30 fps).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Repetitions of `decide` per phrase (its time is the mean).
    #[arg(long, default_value_t = 200)]
    pub decide_reps: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Summary {
    phrases: usize,
    frames_mean: f64,
    total_ms: Dist,
    push_us: Dist,
    decide_us: Dist,
}

#[derive(Serialize)]
struct Dist {
    mean: f64,
    median: f64,
    max: f64,
}

fn dist(mut v: Vec<f64>) -> Dist {
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    Dist {
        mean: v.iter().sum::<f64>() / n,
        median: v.get(v.len() / 2).copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

fn default_dir() -> PathBuf {
    crate::cmd::shared_dir()
        .unwrap_or_else(|| PathBuf::from("../shared"))
        .join("data/phrases")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list phrases folder {} (give --dir)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("signal.txt").is_file() && p.join("keypoints.xlsx").is_file())
        .collect();
    dirs.sort();
    anyhow::ensure!(!dirs.is_empty(), "no phrase folder in {}", dir.display());
    let (mut total, mut push, mut decide, mut frames) = (vec![], vec![], vec![], 0usize);
    let reps = args.decide_reps.max(1);
    for d in &dirs {
        let t0 = Instant::now();
        let text = std::fs::read_to_string(d.join("signal.txt"))?;
        let tl = signal::parse_signal(&text)
            .with_context(|| format!("invalid signal log in {}", d.display()))?;
        let mut fr = workbook::read_workbook(&d.join("keypoints.xlsx"), args.fps.unwrap_or(1.0))?;
        let fps = match args.fps {
            Some(f) => f,
            None => {
                let f = workbook::infer_fps(fr.len(), &tl).unwrap_or(15.0);
                for x in &mut fr {
                    x.t = x.frame as f64 / f;
                }
                f
            }
        };
        let t1 = Instant::now();
        let mut an = PhraseAnalyzer::new(fps);
        for f in &fr {
            an.push(f);
        }
        let t2 = Instant::now();
        let verdict = an.decide(&tl);
        let t3 = Instant::now();
        std::hint::black_box(&verdict);
        let t4 = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(an.decide(std::hint::black_box(&tl)));
        }
        let dec = t4.elapsed().as_secs_f64() / f64::from(reps);
        total.push((t3 - t0).as_secs_f64() * 1e3);
        push.push((t2 - t1).as_secs_f64() * 1e6);
        decide.push(dec * 1e6);
        frames += fr.len();
    }
    let s = Summary {
        phrases: dirs.len(),
        frames_mean: frames as f64 / dirs.len() as f64,
        total_ms: dist(total),
        push_us: dist(push),
        decide_us: dist(decide),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "bench analyze: {} phrases from {} ({:.0} frames each on average)",
            s.phrases,
            dir.display(),
            s.frames_mean
        );
        println!(
            "  workbook read + parse + push + decide: mean {:.2} ms  median {:.2} ms  max {:.2} ms per phrase",
            s.total_ms.mean, s.total_ms.median, s.total_ms.max
        );
        println!(
            "  push all frames:                       mean {:.1} us  median {:.1} us  max {:.1} us",
            s.push_us.mean, s.push_us.median, s.push_us.max
        );
        println!(
            "  decide alone (after the signal):       mean {:.1} us  median {:.1} us  max {:.1} us",
            s.decide_us.mean, s.decide_us.median, s.decide_us.max
        );
    }
    Ok(())
}
