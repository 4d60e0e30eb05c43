//! Timing of the fast path on a synthetic image (ignored by default; the real benchmark is
//! `referee bench pose`). Run with
//! `cargo test --release -p referee-models --test fast_timing -- --ignored --nocapture`;
//! `FAST_SIZES=640x384,1280x736` picks the sizes, `FAST_REF=1` also times the reference,
//! `FAST_THREADS=n` runs on n threads (default: one per core), `FAST_REPS=n` times n forwards
//! (default 10), `FAST_EACH=1` prints each forward's time, `FAST_ALL=1` lists every op's
//! minimum time in network order instead of the 25 slowest. The forward here is dense
//! (`forward_raw`): the head's box and keypoint branches run everywhere.

mod common;

use std::time::Instant;

use referee_models::fast::{KIND_NAMES, STAGE_NAMES};
use referee_models::{FastYoloPose, PoseOptions, YoloNet};

#[test]
#[ignore]
fn fast_timing() {
    let weights = common::weights();
    let mut fast = FastYoloPose::load(&weights, PoseOptions::default()).expect("fast");
    // FAST_THREADS=n: the estimator's own pool of n threads (the forward runs inside it).
    if let Some(n) = std::env::var("FAST_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        fast.set_threads(n).expect("threads");
    }
    let sizes = std::env::var("FAST_SIZES").unwrap_or_else(|_| "640x384".into());
    let with_ref = std::env::var_os("FAST_REF").is_some();
    let net = with_ref.then(|| YoloNet::load(&weights).expect("reference"));
    for s in sizes.split(',') {
        let (w, h) = s.split_once('x').expect("WxH");
        let (w, h): (usize, usize) = (w.parse().expect("w"), h.parse().expect("h"));
        let chw: Vec<f32> = (0..3 * w * h)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        fast.forward_raw(&chw, w, h).expect("warm-up");
        let mut times = Vec::new();
        let mut prof = Vec::new();
        let reps: usize = std::env::var("FAST_REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        for _ in 0..reps {
            let t0 = Instant::now();
            fast.forward_raw(&chw, w, h).expect("fast");
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            if std::env::var_os("FAST_EACH").is_some() {
                print!("{:.1} ", times[times.len() - 1]);
            }
            prof.push(fast.last_profile());
        }
        let mut sorted = times.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let p = prof[times
            .iter()
            .position(|&t| t == sorted[sorted.len() / 2])
            .unwrap_or(0)];
        println!(
            "{w}x{h}: fast min {:.2} ms median {:.2} ms, {:.2} GFLOP, {:.1} GFLOP/s",
            sorted[0],
            sorted[sorted.len() / 2],
            p.flops() / 1e9,
            p.flops() / (sorted[sorted.len() / 2] * 1e-3) / 1e9
        );
        for (i, n) in STAGE_NAMES.iter().enumerate() {
            println!("  {n:<10} {:7.2} ms", p.stage_s[i] * 1e3);
        }
        for (i, n) in KIND_NAMES.iter().enumerate() {
            println!(
                "  {n:<10} {:7.2} ms {:7.3} GFLOP {:6.1} GFLOP/s",
                p.kind_s[i] * 1e3,
                p.kind_flops[i] / 1e9,
                p.kind_flops[i] / p.kind_s[i].max(1e-9) / 1e9
            );
        }
        // Per-op minimum over several traced runs (robust to preemption on a shared machine).
        fast.set_trace(true);
        fast.forward_raw(&chw, w, h).expect("traced");
        let mut ops = fast.last_ops().to_vec();
        for _ in 0..15 {
            fast.forward_raw(&chw, w, h).expect("traced");
            for (o, n) in ops.iter_mut().zip(fast.last_ops()) {
                o.secs = o.secs.min(n.secs);
            }
        }
        fast.set_trace(false);
        let mut by_kind = [0f64; 5];
        for o in &ops {
            by_kind[o.kind as usize] += o.secs;
        }
        println!(
            "  sum of per-op minima: {:.2} ms; by kind {:?}",
            ops.iter().map(|o| o.secs).sum::<f64>() * 1e3,
            by_kind.map(|v| (v * 1e4).round() / 10.0)
        );
        // FAST_ALL=1: every op in network order; otherwise the 25 slowest.
        let all = std::env::var_os("FAST_ALL").is_some();
        if !all {
            ops.sort_by(|a, b| b.secs.total_cmp(&a.secs));
        }
        for o in ops.iter().take(if all { usize::MAX } else { 25 }) {
            println!(
                "    {:?} k{} ci {:4} out {:?}: {:6.2} ms {:6.1} GFLOP/s",
                o.kind,
                o.k,
                o.ci,
                o.out,
                o.secs * 1e3,
                o.flops / o.secs.max(1e-9) / 1e9
            );
        }
        if let Some(net) = &net {
            let t0 = Instant::now();
            net.forward_raw(&chw, w, h).expect("reference");
            println!(
                "  reference {:.1} ms (one run)",
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}
