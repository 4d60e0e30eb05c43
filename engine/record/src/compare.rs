//! Recorded verdict vs replayed verdict, field by field.
//!
//! Both sides are the verdict's full document (`result.json`). Compared: the decision
//! (`verdict`: winner, confidence, reason, evidence, features), the parsed `timeline`, the
//! `phrase` and `signal_file`. Not compared, because they describe the run rather than the
//! phrase: `latency_ms`, `stats` (counters of the whole session, including duplicates the
//! network delivered), `frames_tracked` and `frames_both_visible` (every frame through the
//! pipeline when the phrase was decided, including frames after its end that happened to be
//! through already), `session_id` and `piste`. Numbers must be equal as written (the same f32
//! prints the same shortest text).

use serde_json::Value;

/// The top-level fields that must be reproduced.
pub const COMPARED: [&str; 4] = ["verdict", "timeline", "phrase", "signal_file"];

/// One field that differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Dotted path of the field (`verdict.features.left.speed`, `verdict.evidence[2].frame`).
    pub field: String,
    /// The recorded value (`null` when missing).
    pub recorded: Value,
    /// The replayed value (`null` when missing).
    pub replayed: Value,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: recorded {}, replayed {}",
            self.field, self.recorded, self.replayed
        )
    }
}

/// The differences between two verdict documents over [`COMPARED`]; empty = identical.
pub fn compare_verdicts(recorded: &Value, replayed: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    for key in COMPARED {
        diff(
            key.to_string(),
            recorded.get(key).unwrap_or(&Value::Null),
            replayed.get(key).unwrap_or(&Value::Null),
            &mut out,
        );
    }
    out
}

fn diff(path: String, a: &Value, b: &Value, out: &mut Vec<Difference>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff(
                    format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(Difference {
            field: path,
            recorded: a.clone(),
            replayed: b.clone(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(conf: f64, frame: u64, latency: f64) -> Value {
        json!({
            "session_id": "s", "phrase": 0, "signal_file": "signal.txt", "latency_ms": latency,
            "verdict": {"winner": "left", "confidence": conf, "reason": "r",
                        "evidence": [{"frame": frame, "t": 0.5, "what": "lunge"}],
                        "features": {"left": {"speed": 1.25}}},
            "timeline": {"events": []}, "frames_tracked": 63, "frames_both_visible": 50,
            "stats": {"received": 63}
        })
    }

    #[test]
    fn identical_verdicts_differ_in_nothing_even_with_other_latency_and_stats() {
        let mut b = doc(0.75, 10, 99.0);
        b["stats"]["received"] = json!(64);
        b["frames_tracked"] = json!(70);
        assert!(compare_verdicts(&doc(0.75, 10, 1.0), &b).is_empty());
    }

    #[test]
    fn each_changed_field_is_named() {
        let d = compare_verdicts(&doc(0.75, 10, 1.0), &doc(0.8, 11, 1.0));
        let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["verdict.confidence", "verdict.evidence[0].frame"]);
        assert_eq!(
            d[0].to_string(),
            "verdict.confidence: recorded 0.75, replayed 0.8"
        );
        let mut shorter = doc(0.75, 10, 1.0);
        shorter["verdict"]["evidence"] = json!([]);
        let d = compare_verdicts(&doc(0.75, 10, 1.0), &shorter);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].field, "verdict.evidence");
        let mut missing = doc(0.75, 10, 1.0);
        missing["verdict"]["features"] = Value::Null;
        assert_eq!(
            compare_verdicts(&doc(0.75, 10, 1.0), &missing)[0].field,
            "verdict.features"
        );
    }
}
