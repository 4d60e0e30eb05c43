//! The verdict's full document: what `result.json` holds and the verdict carries as detail.

use std::time::Duration;

use referee_rules::signal::Timeline;
use referee_rules::Decision;
use serde::Serialize;

use crate::event::{PhraseSignal, SessionStats};

/// The document written to result.json and carried in the verdict's `detail_json`.
#[derive(Serialize)]
struct ResultDoc<'a> {
    session_id: &'a str,
    piste: &'a str,
    phrase: u32,
    signal_file: &'a str,
    verdict: &'a Decision,
    timeline: &'a Timeline,
    latency_ms: f64,
    frames_tracked: usize,
    frames_both_visible: usize,
    stats: &'a SessionStats,
}

/// The result document of one phrase as pretty JSON.
#[allow(clippy::too_many_arguments)]
pub(crate) fn result_document(
    session_id: &str,
    piste: &str,
    signal: &PhraseSignal,
    decision: &Decision,
    timeline: &Timeline,
    latency: Duration,
    frames_tracked: usize,
    frames_both_visible: usize,
    stats: &SessionStats,
) -> String {
    let doc = ResultDoc {
        session_id,
        piste,
        phrase: signal.phrase,
        signal_file: &signal.filename,
        verdict: decision,
        timeline,
        latency_ms: latency.as_secs_f64() * 1e3,
        frames_tracked,
        frames_both_visible,
        stats,
    };
    serde_json::to_string_pretty(&doc)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise result: {e}\"}}"))
}
