//! The trained-model path on the real phrases: duplicate content, insufficient evidence and
//! frame-rate invariance (skipped with a message without ../shared/data).

use std::path::{Path, PathBuf};

use referee_rules::model::{duplicates_of, insufficient_evidence, phrase_fingerprint};
use referee_rules::signal::{parse_signal, Timeline};
use referee_rules::workbook::{infer_fps, read_workbook};
use referee_rules::{analyze, Keypoints, Params, PhraseAnalyzer, PoseFrame, DEFAULT_PARAMS};
use referee_test_support::{phrase_dirs, require_shared, PHRASES};

fn phrases(why: &str) -> Option<Vec<PathBuf>> {
    let dir = require_shared(PHRASES, why)?;
    Some(phrase_dirs(&dir, "signal.txt"))
}

/// Log text, timeline, frames at the inferred rate (None: no rate fits) and that rate.
fn load(dir: &Path) -> (String, Timeline, Vec<PoseFrame>, Option<f64>) {
    let text = std::fs::read_to_string(dir.join("signal.txt")).expect("log");
    let tl = parse_signal(&text).expect("parse");
    let mut frames = read_workbook(&dir.join("keypoints.xlsx"), 1.0).expect("workbook");
    let fps = infer_fps(frames.len(), &tl);
    for f in &mut frames {
        f.t = f.frame as f64 / fps.unwrap_or(15.0);
    }
    (text, tl, frames, fps)
}

#[test]
fn the_one_duplicate_phrase_is_found_by_content() {
    let Some(dirs) = phrases("finding duplicate phrases") else {
        return;
    };
    let fps: Vec<u64> = dirs
        .iter()
        .map(|d| {
            let (text, _, frames, _) = load(d);
            phrase_fingerprint(&text, &frames)
        })
        .collect();
    let dups: Vec<(String, String)> = duplicates_of(&fps)
        .into_iter()
        .enumerate()
        .filter_map(|(i, j)| {
            let name = |k: usize| dirs[k].file_name().unwrap().to_string_lossy().into_owned();
            Some((name(i), name(j?)))
        })
        .collect();
    assert_eq!(
        dups,
        vec![(
            "20251021_211797_phrase09".to_string(),
            "20251021_211717_phrase09".to_string()
        )],
        "the two names of one phrase (their workbook files differ byte-wise, not in content)"
    );
}

#[test]
fn frames_stopping_before_the_hit_are_insufficient_evidence() {
    let Some(dirs) = phrases("checking insufficient-evidence phrases") else {
        return;
    };
    let mut short = Vec::new();
    for d in &dirs {
        let (_, tl, frames, fps) = load(d);
        let dec = analyze(&tl, &frames, fps.unwrap_or(15.0));
        let hit = tl.first_hit().expect("hit").0;
        let last = frames.last().map_or(0.0, |f| f.t);
        if last + 0.5 < hit {
            assert!(
                insufficient_evidence(&dec),
                "{}: {}",
                d.display(),
                dec.reason
            );
            assert!(dec.reason.contains("stop"), "{}", dec.reason);
            short.push(d.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert_eq!(short, vec!["20260127_193832_phrase01".to_string()]);
}

/// Linear interpolation of two keypoint sets; a keypoint seen in only one of them is held from
/// it (so the set of keypoints behind the body centre does not change between real frames).
fn lerp(a: &Keypoints, b: &Keypoints, w: f32) -> Keypoints {
    let mut out = *a;
    for (o, (p, q)) in out.iter_mut().zip(a.iter().zip(b)) {
        let seen = |k: &[f32; 3]| k[0].is_finite() && k[1].is_finite();
        *o = match (seen(p), seen(q)) {
            (true, true) => [0, 1, 2].map(|c| p[c] + w * (q[c] - p[c])),
            (true, false) => *p,
            _ => *q,
        };
    }
    out
}

/// The same motion sampled at 30 fps: the original frames plus one interpolated between each pair.
fn to_30fps(frames: &[PoseFrame]) -> Vec<PoseFrame> {
    let mut out = Vec::with_capacity(frames.len() * 2);
    for (i, f) in frames.iter().enumerate() {
        out.push(PoseFrame {
            frame: 2 * i as u64,
            t: f.t,
            ..f.clone()
        });
        if let Some(g) = frames.get(i + 1) {
            let mid = |a: &Option<Keypoints>, b: &Option<Keypoints>| match (a, b) {
                (Some(a), Some(b)) => Some(lerp(a, b, 0.5)),
                _ => None,
            };
            out.push(PoseFrame {
                frame: 2 * i as u64 + 1,
                t: 0.5 * (f.t + g.t),
                left: mid(&f.left, &g.left),
                right: mid(&f.right, &g.right),
            });
        }
    }
    out
}

#[test]
fn verdicts_do_not_depend_on_the_frame_rate_of_the_same_motion() {
    let Some(dirs) = phrases("resampling real phrases to 30 fps") else {
        return;
    };
    // The time-based speed window (the shipped default keeps the original frame-based one).
    let timed = Params {
        speed_window_s: Some(0.1),
        ..DEFAULT_PARAMS
    };
    let (mut n, mut same, mut legacy_same, mut differ) = (0, 0, 0, Vec::new());
    for d in &dirs {
        let (_, tl, frames, fps) = load(d);
        if fps != Some(15.0) {
            continue;
        }
        let decide = |frames: &[PoseFrame], fps: f64| {
            let mut an = PhraseAnalyzer::new(fps);
            for f in frames {
                an.push(f);
            }
            an.decide_with(&tl, &timed)
        };
        let a = decide(&frames, 15.0);
        let b = decide(&to_30fps(&frames), 30.0);
        legacy_same += usize::from(
            analyze(&tl, &frames, 15.0).winner == analyze(&tl, &to_30fps(&frames), 30.0).winner,
        );
        n += 1;
        if a.winner == b.winner {
            same += 1;
        } else {
            differ.push(format!(
                "{}: {:?} vs {:?}",
                d.file_name().unwrap().to_string_lossy(),
                a.winner,
                b.winner
            ));
        }
        if let (Some(fa), Some(fb)) = (&a.features, &b.features) {
            // The run is measured in seconds: at most a 15 fps frame apart.
            for (x, y) in [(fa.run.left, fb.run.left), (fa.run.right, fb.run.right)] {
                assert!(
                    (x - y).abs() <= 1.0 / 15.0 + 1e-9,
                    "{}: run {x:.3} s at 15 fps, {y:.3} s at 30 fps",
                    d.display()
                );
            }
        }
    }
    println!(
        "15 vs 30 fps: {same}/{n} same verdict with the time window; {legacy_same}/{n} with the \
         original frame-based one; differ: {differ:?}"
    );
    assert!(n >= 50, "the 15 fps phrases are there ({n})");
    assert!(differ.is_empty(), "{differ:?}");
}
