//! `referee evaluate` over a folder of phrase recordings (`referee-record` tars written by the
//! daemon): each recording with a referee's call is scored on the verdict the daemon decided
//! live (stored in its manifest), i.e. on our own pose output and tracking.
//!
//! Only the manifest is read (not the frames). A recording without a call is unlabelled; a
//! `no_touch` call is not a left/right label (the phrase-folder harness accepts only those) and
//! is counted apart; an incomplete recording (`.partial`, cut short, frames lost) is skipped
//! with its reason.

use std::path::Path;

use anyhow::Context;
use referee_record::{reader::read_manifest, CallWinner, Manifest, ReadError};
use referee_rules::Winner;
use serde::Serialize;

use super::evaluate::Row;

/// What a folder of recordings gave.
#[derive(Serialize, Default)]
pub(super) struct Loaded {
    /// Recordings found (complete or not).
    pub(super) found: usize,
    /// One row per recording with a left/right call.
    pub(super) rows: Vec<Row>,
    /// Recordings without a referee's call.
    pub(super) unlabelled: Vec<String>,
    /// Recordings whose call is `no_touch`.
    pub(super) no_touch: Vec<String>,
    /// Incomplete or unreadable recordings: (name, why).
    pub(super) skipped: Vec<(String, String)>,
}

/// The label a referee's call gives, as the phrase-folder harness reads `label.json`:
/// left or right; `no_touch` is no label.
pub fn label_of(call: CallWinner) -> Option<Winner> {
    call.side().map(Winner::from)
}

/// True when `dir` holds recordings and no phrase folder (`signal.txt`).
pub fn holds_recordings(dir: &Path) -> bool {
    let has_phrase_folder = dir.join("signal.txt").is_file()
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().join("signal.txt").is_file())
        });
    !has_phrase_folder && referee_record::list(dir).is_ok_and(|l| !l.is_empty())
}

/// `YYYYMMDD` (UTC) of a time in milliseconds since the Unix epoch.
fn utc_date(ms: u64) -> String {
    // Days to civil date (H. Hinnant's algorithm).
    let z = (ms / 86_400_000) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// The row of a labelled recording, from the verdict document in its manifest.
fn row(name: String, m: &Manifest, label: Winner) -> anyhow::Result<Row> {
    let v = &m.verdict["verdict"];
    let predicted: Winner = serde_json::from_value(v["winner"].clone())
        .with_context(|| format!("{name}: the manifest's verdict has no winner"))?;
    let confidence = v["confidence"].as_f64().unwrap_or(0.5) as f32;
    Ok(Row {
        name,
        date: utc_date(m.recorded_at_ms),
        fps: f64::from(m.fps),
        fps_source: "recorded",
        label,
        predicted,
        confidence,
        side: predicted,
        // The rule of `referee_rules::model::insufficient_evidence`, on the stored document.
        insufficient: predicted == Winner::Uncertain && v["features"].is_null(),
        correct: predicted == label,
        reason: v["reason"].as_str().unwrap_or_default().to_string(),
    })
}

/// Reads the manifests of every recording under `dir`.
pub(super) fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let paths = referee_record::list(dir)
        .with_context(|| format!("cannot list recordings in {}", dir.display()))?;
    anyhow::ensure!(!paths.is_empty(), "no recording in {}", dir.display());
    let mut out = Loaded {
        found: paths.len(),
        ..Loaded::default()
    };
    for path in paths {
        let name = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let m = match read_manifest(&path) {
            Ok(m) => m,
            Err(e @ (ReadError::Incomplete { .. } | ReadError::Version { .. })) => {
                tracing::debug!(recording = %name, "skipped: {e}");
                out.skipped.push((name, e.to_string()));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !m.complete {
            let why = m
                .incomplete_reason
                .clone()
                .unwrap_or_else(|| "marked incomplete".into());
            out.skipped.push((name, format!("incomplete: {why}")));
            continue;
        }
        match m.referee_call.as_ref().map(|c| label_of(c.winner)) {
            None => out.unlabelled.push(name),
            Some(None) => out.no_touch.push(name),
            Some(Some(label)) => out.rows.push(row(name, &m, label)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "19700101");
        // 2025-10-20 20:59:27 UTC.
        assert_eq!(utc_date(1_760_993_967_000), "20251020");
        assert_eq!(utc_date(951_782_400_000), "20000229");
    }

    #[test]
    fn no_touch_is_no_label() {
        assert_eq!(label_of(CallWinner::Left), Some(Winner::Left));
        assert_eq!(label_of(CallWinner::Right), Some(Winner::Right));
        assert_eq!(label_of(CallWinner::NoTouch), None);
    }
}
