//! The shipped default model reproduces the verdicts the rules gave before they became a trained
//! model (captured from the code at that commit into `fixtures/default_verdicts.tsv`).
//!
//! The fixture holds, per phrase: the winner, the confidence the old code typed in per rule, and
//! an FNV-1a fingerprint of the reason, the evidence and the measured features (JSON). It is
//! rewritten only with `REFEREE_WRITE_FIXTURE=1` (done once, before the change).

use std::path::{Path, PathBuf};

use referee_rules::signal::{parse_signal, Timeline};
use referee_rules::workbook::{infer_fps, read_workbook};
use referee_rules::{Decision, Model, PhraseAnalyzer};
use referee_test_support::{phrase_dirs, require_shared, PHRASES};

const FIXTURE: &str = "tests/fixtures/default_verdicts.tsv";

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Winner, legacy confidence and the fingerprint of everything else a verdict says.
fn fingerprint(d: &Decision) -> (String, f32, String) {
    let mut text = d.reason.clone();
    text.push('|');
    text.push_str(&serde_json::to_string(&d.evidence).expect("evidence json"));
    text.push('|');
    text.push_str(&serde_json::to_string(&d.features).expect("features json"));
    (
        d.winner.name().to_string(),
        d.confidence,
        format!("{:016x}", fnv1a(text.as_bytes())),
    )
}

/// Log and analyzer fed at the inferred rate (15 fps where none fits), as `referee evaluate` does.
fn load(dir: &Path) -> (Timeline, PhraseAnalyzer) {
    let text = std::fs::read_to_string(dir.join("signal.txt")).expect("read log");
    let tl = parse_signal(&text).expect("parse log");
    let mut frames = read_workbook(&dir.join("keypoints.xlsx"), 1.0).expect("workbook");
    let fps = infer_fps(frames.len(), &tl).unwrap_or(15.0);
    for f in &mut frames {
        f.t = f.frame as f64 / fps;
    }
    let mut a = PhraseAnalyzer::new(fps);
    for f in &frames {
        a.push(f);
    }
    (tl, a)
}

fn phrases() -> Option<Vec<PathBuf>> {
    let dir = require_shared(
        PHRASES,
        "checking the default model against the old verdicts",
    )?;
    Some(phrase_dirs(&dir, "signal.txt"))
}

fn stem(dir: &Path) -> String {
    dir.file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn default_params_reproduce_the_old_verdicts() {
    let Some(dirs) = phrases() else {
        return;
    };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    if std::env::var_os("REFEREE_WRITE_FIXTURE").is_some() {
        let mut out = String::from("# phrase\twinner\tconfidence\tfingerprint\n");
        for dir in &dirs {
            let (tl, a) = load(dir);
            let (w, c, f) = fingerprint(&a.decide(&tl));
            out.push_str(&format!("{}\t{w}\t{c}\t{f}\n", stem(dir)));
        }
        std::fs::write(&fixture, out).expect("write fixture");
        return;
    }
    let text = std::fs::read_to_string(&fixture).expect("fixture");
    let want: std::collections::BTreeMap<String, (String, f32, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (
                c[0].to_string(),
                (
                    c[1].to_string(),
                    c[2].parse().expect("conf"),
                    c[3].to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(want.len(), 130, "the fixture covers the 130 phrases");
    assert_eq!(dirs.len(), want.len());
    let from_file =
        Model::from_json(&Model::default().to_json(), "default.json").expect("default model file");
    for dir in &dirs {
        let (tl, a) = load(dir);
        let w = &want[&stem(dir)];
        assert_eq!(&fingerprint(&a.decide(&tl)), w, "{}", dir.display());
        // The shipped default model, in memory and through its own model file, gives the same.
        assert_eq!(
            &fingerprint(&a.decide_model(&tl, &Model::default())),
            w,
            "{}",
            dir.display()
        );
        assert_eq!(
            &fingerprint(&a.decide_model(&tl, &from_file)),
            w,
            "{}",
            dir.display()
        );
    }
}
