//! The referee's own call in the real full logs (`signal_full.txt`): it is read from the tail
//! after `Awaiting manual winner selection`, and it never changes the verdict: the decision on
//! the full log is the one on the log cut before the human's selection. Needs ../shared/data
//! (a skip line when absent, a failure under CI=true).

use referee_rules::signal::{parse_signal, referee_call};
use referee_rules::workbook::read_workbook;
use referee_rules::{analyze, Side};
use referee_test_support::{phrase_dirs, require_shared, PHRASES};

#[test]
fn every_real_full_log_holds_a_call_that_never_reaches_the_verdict() {
    let Some(dir) = require_shared(PHRASES, "reading the referee's calls in the real logs") else {
        return;
    };
    let phrases = phrase_dirs(&dir, "signal_full.txt");
    assert!(phrases.len() >= 130, "{} phrases", phrases.len());
    let mut agree_with_label = 0;
    for p in &phrases {
        let ctx = p.display();
        let full = std::fs::read_to_string(p.join("signal_full.txt")).expect("full log");
        let cut = std::fs::read_to_string(p.join("signal.txt")).expect("log");
        let call = referee_call(&full).unwrap_or_else(|| panic!("{ctx}: no referee's call"));
        assert!(
            referee_call(&cut).is_none(),
            "{ctx}: the cut log has no call"
        );
        // Evaluation-only use of the label: the call in the log is the human verdict we hold.
        let label: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("label.json")).unwrap()).unwrap();
        let want = match label["winner"].as_str() {
            Some("left") => Side::Left,
            Some("right") => Side::Right,
            other => panic!("{ctx}: label {other:?}"),
        };
        agree_with_label += usize::from(call.winner == want);
        let frames = read_workbook(&p.join("keypoints.xlsx"), 15.0).expect("workbook");
        let with_tail = analyze(&parse_signal(&full).expect("full"), &frames, 15.0);
        let without = analyze(&parse_signal(&cut).expect("cut"), &frames, 15.0);
        assert_eq!(
            with_tail, without,
            "{ctx}: the human's call reached the verdict"
        );
    }
    assert_eq!(agree_with_label, phrases.len(), "calls and labels disagree");
}
