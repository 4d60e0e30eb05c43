//! Scoring-box signal-log parser.
//!
//! A log looks like this (header lines without a timestamp, then `t.ttts | event` lines, then the
//! scoreboard):
//!
//! ```text
//! Phrase 1 initialized at 2025-10-20 20:59:20
//! Recording started at 2025-10-20 20:59:20
//!  0.000s | Phrase recording started
//!  1.947s | Off-Target: Blade-to-blade contact.
//!  3.345s | HIT: Left scores on Right!
//! Lockout active (0.130s window)
//!  3.368s | Lockout period started (0.200s window)
//!  3.528s | HIT: Simultaneous valid hits!
//!  3.570s | Phrase recording ended
//! Scores -> Fencer 1: HIT, Fencer 2: HIT
//! Phrase ended
//! ```
//!
//! Fencer 1 is the fencer on the RIGHT of the screen, Fencer 2 the one on the LEFT. Everything from
//! `Awaiting manual winner selection` on is a human's later decision: [`parse_signal`] ignores it
//! (it never reaches the verdict); [`referee_call`] reads it, to be kept beside the verdict.

use serde::{Deserialize, Serialize};

use crate::Side;

/// Error raised for a log that cannot be read; it names the 1-based line and its content.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignalError {
    /// A line that claims to be a known kind but does not parse.
    #[error("signal log line {line}: {reason}: {content:?}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The line as written.
        content: String,
        /// What was wrong.
        reason: String,
    },
    /// The text holds no timestamped event at all: this is not a scoring-box log.
    #[error("signal log has no timestamped `s.sss | event` line: is this a scoring-box log?")]
    NoEvents,
}

/// One timestamped (or, for `LockoutActive`, positional) event of the phrase.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// `Phrase recording started`.
    RecordingStarted,
    /// `HIT: Left scores on Right!` (`simultaneous` when suffixed with `(simultaneous)`).
    Hit {
        /// Who scored.
        scorer: Side,
        /// The line carried the `(simultaneous)` suffix.
        simultaneous: bool,
    },
    /// `HIT: Simultaneous valid hits!`: both lamps.
    SimultaneousHits,
    /// `Off-Target: Blade-to-blade contact.`
    BladeContact,
    /// Any other `Off-Target: ...` text.
    OffTarget {
        /// The text after `Off-Target:`.
        text: String,
    },
    /// `Lockout period started (0.200s window)`.
    LockoutStarted {
        /// Window in seconds.
        window: f64,
    },
    /// `Phrase recording ended`.
    RecordingEnded,
    /// A timestamped line of a kind this parser does not know; kept, never used for the verdict.
    Other {
        /// The text after `|`.
        text: String,
    },
}

/// An event with its time (seconds since the phrase start) and source line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Seconds since the start of the phrase recording.
    pub t: f64,
    /// 1-based line number in the log.
    pub line: usize,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The box's final lamp state: `Scores -> Fencer 1: HIT, Fencer 2: HIT`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scoreboard {
    /// Fencer 1 (right of screen) lit.
    pub right: bool,
    /// Fencer 2 (left of screen) lit.
    pub left: bool,
}

/// Wall-clock header lines (kept as written, `YYYY-MM-DD HH:MM:SS`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Header {
    /// `Phrase N initialized at ...`: N.
    pub phrase_number: Option<u32>,
    /// `Phrase N initialized at ...`: the date-time.
    pub initialized_at: Option<String>,
    /// `Start command issued at ...`.
    pub start_command_at: Option<String>,
    /// `Recording started at ...`: the wall-clock time of t = 0.
    pub recording_started_at: Option<String>,
    /// `Audio cue executed at ...`.
    pub audio_cue_at: Option<String>,
    /// `Audio cue duration: 2.75s`.
    pub audio_cue_duration: Option<f64>,
}

/// A line kept but not understood (an unknown untimed line, e.g. a new header kind).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtherLine {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (trimmed).
    pub text: String,
}

/// The phrase timeline parsed from one signal log.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// Wall-clock header.
    pub header: Header,
    /// Timestamped events in log order.
    pub events: Vec<Event>,
    /// `Lockout active (0.130s window)`: the box's lockout setting.
    pub lockout_active_window: Option<f64>,
    /// Final scoreboard, if the log has one.
    pub scoreboard: Option<Scoreboard>,
    /// `Phrase ended` seen.
    pub phrase_ended: bool,
    /// `Interpretation -> Right Fencer: HIT, Left Fencer: HIT` as written (informational only).
    pub interpretation: Option<String>,
    /// Untimed lines of unknown kind.
    pub other: Vec<OtherLine>,
    /// 1-based line of `Awaiting manual winner selection`, from which everything was ignored.
    pub ignored_from_line: Option<usize>,
}

impl Timeline {
    /// End of the phrase: `Phrase recording ended`, else the last timestamped event.
    pub fn phrase_end(&self) -> Option<f64> {
        self.events
            .iter()
            .find(|e| e.kind == EventKind::RecordingEnded)
            .or_else(|| self.events.last())
            .map(|e| e.t)
    }

    /// Time of `Phrase recording started` (normally 0).
    pub fn start(&self) -> Option<f64> {
        self.events
            .iter()
            .find(|e| e.kind == EventKind::RecordingStarted)
            .map(|e| e.t)
    }

    /// Times of the HIT lines that credit `side` (`Simultaneous valid hits!` credits both).
    pub fn hits(&self, side: Side) -> Vec<f64> {
        self.events
            .iter()
            .filter(|e| match &e.kind {
                EventKind::Hit { scorer, .. } => *scorer == side,
                EventKind::SimultaneousHits => true,
                _ => false,
            })
            .map(|e| e.t)
            .collect()
    }

    /// Time of the first `Lockout period started` line.
    pub fn lockout_started(&self) -> Option<f64> {
        self.events
            .iter()
            .find(|e| matches!(e.kind, EventKind::LockoutStarted { .. }))
            .map(|e| e.t)
    }

    /// Which sides are lit: the scoreboard when present, else the union of the HIT lines.
    pub fn lights(&self) -> (bool, bool) {
        if let Some(s) = &self.scoreboard {
            return (s.left, s.right);
        }
        let (mut left, mut right) = (false, false);
        for e in &self.events {
            match &e.kind {
                EventKind::SimultaneousHits => {
                    left = true;
                    right = true;
                }
                EventKind::Hit {
                    scorer: Side::Left, ..
                } => left = true,
                EventKind::Hit {
                    scorer: Side::Right,
                    ..
                } => right = true,
                _ => {}
            }
        }
        (left, right)
    }

    /// Both lamps lit: right-of-way decides.
    pub fn is_double(&self) -> bool {
        self.lights() == (true, true)
    }

    /// Exactly one lamp lit: that side scores.
    pub fn single_light(&self) -> Option<Side> {
        match self.lights() {
            (true, false) => Some(Side::Left),
            (false, true) => Some(Side::Right),
            _ => None,
        }
    }

    /// The first HIT line: its time and, unless it was `Simultaneous valid hits!`, who hit first.
    pub fn first_hit(&self) -> Option<(f64, Option<Side>)> {
        self.events.iter().find_map(|e| match &e.kind {
            EventKind::Hit { scorer, .. } => Some((e.t, Some(*scorer))),
            EventKind::SimultaneousHits => Some((e.t, None)),
            _ => None,
        })
    }

    /// Times of the blade-to-blade contacts.
    pub fn blade_contacts(&self) -> impl Iterator<Item = f64> + '_ {
        self.events
            .iter()
            .filter(|e| e.kind == EventKind::BladeContact)
            .map(|e| e.t)
    }
}

fn malformed(line: usize, content: &str, reason: impl Into<String>) -> SignalError {
    SignalError::Malformed {
        line,
        content: content.to_string(),
        reason: reason.into(),
    }
}

/// Parses `0.130s` (a non-negative, finite number of seconds with an `s` suffix).
fn parse_seconds(s: &str) -> Option<f64> {
    let v: f64 = s.trim().strip_suffix('s')?.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// Parses `(0.200s window)`.
fn parse_window(s: &str) -> Option<f64> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    parse_seconds(inner.trim().strip_suffix("window")?)
}

/// Parses `HIT` / `NO HIT` style lamp values; `None` when unrecognised.
fn parse_lamp(s: &str) -> Option<bool> {
    match s.trim().to_ascii_uppercase().as_str() {
        "HIT" | "ON" | "1" | "TRUE" => Some(true),
        "NO HIT" | "NONE" | "-" | "OFF" | "0" | "FALSE" | "MISS" | "" => Some(false),
        _ => None,
    }
}

fn parse_event(text: &str, line: usize, raw: &str) -> Result<EventKind, SignalError> {
    let text = text.trim();
    if text == "Phrase recording started" {
        return Ok(EventKind::RecordingStarted);
    }
    if text == "Phrase recording ended" {
        return Ok(EventKind::RecordingEnded);
    }
    if let Some(rest) = text.strip_prefix("HIT:") {
        let rest = rest.trim();
        if rest.eq_ignore_ascii_case("Simultaneous valid hits!") {
            return Ok(EventKind::SimultaneousHits);
        }
        let (body, simultaneous) = match rest.strip_suffix("(simultaneous)") {
            Some(b) => (b.trim(), true),
            None => (rest, false),
        };
        let scorer = match body {
            "Left scores on Right!" => Side::Left,
            "Right scores on Left!" => Side::Right,
            _ => {
                return Err(malformed(
                    line,
                    raw,
                    "HIT line is neither `Left scores on Right!`, `Right scores on Left!` nor \
                     `Simultaneous valid hits!`",
                ))
            }
        };
        return Ok(EventKind::Hit {
            scorer,
            simultaneous,
        });
    }
    if let Some(rest) = text.strip_prefix("Off-Target:") {
        let rest = rest.trim();
        if rest
            .trim_end_matches('.')
            .eq_ignore_ascii_case("Blade-to-blade contact")
        {
            return Ok(EventKind::BladeContact);
        }
        return Ok(EventKind::OffTarget {
            text: rest.to_string(),
        });
    }
    if let Some(rest) = text.strip_prefix("Lockout period started") {
        return parse_window(rest)
            .map(|window| EventKind::LockoutStarted { window })
            .ok_or_else(|| {
                malformed(
                    line,
                    raw,
                    "expected `(0.200s window)` after `Lockout period started`",
                )
            });
    }
    Ok(EventKind::Other {
        text: text.to_string(),
    })
}

/// Splits `Label N at YYYY-MM-DD HH:MM:SS` into the date-time.
fn after_at(rest: &str) -> Option<String> {
    let (_, when) = rest.rsplit_once(" at ")?;
    let when = when.trim();
    // YYYY-MM-DD HH:MM:SS (fractional seconds tolerated).
    let ok = when.len() >= 19
        && when.as_bytes()[4] == b'-'
        && when.as_bytes()[7] == b'-'
        && when.as_bytes()[13] == b':'
        && when.as_bytes()[16] == b':'
        && when.as_bytes()[..4].iter().all(u8::is_ascii_digit);
    ok.then(|| when.to_string())
}

/// Parses a scoring-box log into a [`Timeline`].
///
/// Unknown lines are kept (`EventKind::Other` when timestamped, [`Timeline::other`] otherwise);
/// a line that starts like a known kind but does not parse is an error naming its line.
pub fn parse_signal(text: &str) -> Result<Timeline, SignalError> {
    let mut tl = Timeline::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let s = raw.trim().trim_start_matches('\u{feff}');
        if s.is_empty() {
            continue;
        }
        if s.starts_with("Awaiting manual winner selection") {
            tl.ignored_from_line = Some(line);
            break;
        }
        // Timestamped event: `  1.947s | text`.
        if let Some((ts, rest)) = s.split_once('|') {
            let ts_trim = ts.trim();
            let looks_timed = ts_trim.ends_with('s')
                && ts_trim
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+'));
            if looks_timed {
                let t = parse_seconds(ts_trim).ok_or_else(|| {
                    malformed(
                        line,
                        raw,
                        "timestamp is not a non-negative number of seconds",
                    )
                })?;
                let kind = parse_event(rest, line, raw)?;
                tl.events.push(Event { t, line, kind });
                continue;
            }
        }
        if let Some(rest) = s.strip_prefix("Lockout active") {
            let w = parse_window(rest).ok_or_else(|| {
                malformed(
                    line,
                    raw,
                    "expected `(0.130s window)` after `Lockout active`",
                )
            })?;
            tl.lockout_active_window = Some(w);
        } else if let Some(rest) = s.strip_prefix("Scores ->") {
            tl.scoreboard = Some(parse_scores(rest).ok_or_else(|| {
                malformed(
                    line,
                    raw,
                    "expected `Scores -> Fencer 1: HIT, Fencer 2: HIT`",
                )
            })?);
        } else if s == "Phrase ended" {
            tl.phrase_ended = true;
        } else if s.contains("Interpretation ->") {
            tl.interpretation = Some(s.to_string());
        } else if let Some(rest) = s.strip_prefix("Phrase ") {
            if rest.contains("initialized at") {
                let num = rest.split_whitespace().next().and_then(|n| n.parse().ok());
                let when = after_at(rest);
                if num.is_none() || when.is_none() {
                    return Err(malformed(
                        line,
                        raw,
                        "expected `Phrase N initialized at YYYY-MM-DD HH:MM:SS`",
                    ));
                }
                tl.header.phrase_number = num;
                tl.header.initialized_at = when;
            } else {
                tl.other.push(OtherLine {
                    line,
                    text: s.to_string(),
                });
            }
        } else if let Some(rest) = s.strip_prefix("Audio cue duration:") {
            tl.header.audio_cue_duration = Some(
                parse_seconds(rest)
                    .ok_or_else(|| malformed(line, raw, "expected `Audio cue duration: 2.75s`"))?,
            );
        } else if let Some(field) = [
            ("Audio cue executed at", 0),
            ("Start command issued at", 1),
            ("Recording started at", 2),
        ]
        .iter()
        .find(|(p, _)| s.starts_with(p))
        {
            let when = after_at(s).ok_or_else(|| {
                malformed(
                    line,
                    raw,
                    "expected a `YYYY-MM-DD HH:MM:SS` date-time after `at`",
                )
            })?;
            match field.1 {
                0 => tl.header.audio_cue_at = Some(when),
                1 => tl.header.start_command_at = Some(when),
                _ => tl.header.recording_started_at = Some(when),
            }
        } else {
            tracing::debug!(line, text = s, "signal log: unknown line kept as `other`");
            tl.other.push(OtherLine {
                line,
                text: s.to_string(),
            });
        }
    }
    if tl.events.is_empty() {
        return Err(SignalError::NoEvents);
    }
    Ok(tl)
}

/// Parses ` Fencer 1: HIT, Fencer 2: HIT` (either order).
fn parse_scores(rest: &str) -> Option<Scoreboard> {
    let (mut f1, mut f2) = (None, None);
    for part in rest.split(',') {
        let (who, val) = part.trim().split_once(':')?;
        let lamp = parse_lamp(val)?;
        match who.trim() {
            "Fencer 1" => f1 = Some(lamp),
            "Fencer 2" => f2 = Some(lamp),
            _ => return None,
        }
    }
    Some(Scoreboard {
        right: f1?,
        left: f2?,
    })
}

/// How the human's call was entered at the scoring box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSource {
    /// `Manual selection winner: ...` (the referee picked a side).
    ManualSelection,
    /// `Confirmed result winner: ...` (the referee confirmed a proposed result).
    Confirmed,
}

/// The referee's own call for a double touch, from the log's tail after
/// `Awaiting manual winner selection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefereeCall {
    /// The side the referee gave the touch to.
    pub winner: Side,
    /// How it was entered.
    pub source: CallSource,
    /// The wall-clock stamp of the line (`YYYY-MM-DD HH:MM:SS`), when it has one.
    pub at: Option<String>,
    /// 1-based line of the call in the log.
    pub line: usize,
}

/// The referee's call in a full log, if the log has reached it: the last `Manual selection
/// winner:` or `Confirmed result winner:` line after `Awaiting manual winner selection`. Lines of
/// other systems (e.g. `Remote referee winner ...`, an automated verdict) are not a human call.
pub fn referee_call(text: &str) -> Option<RefereeCall> {
    let mut awaiting = false;
    let mut call = None;
    for (i, raw) in text.lines().enumerate() {
        let s = raw.trim().trim_start_matches('\u{feff}');
        // `[2025-10-20 20:59:27] Manual selection winner: ...`: an optional stamp in brackets.
        let (at, rest) = match s.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((stamp, rest)) => (Some(stamp.trim().to_string()), rest.trim()),
            None => (None, s),
        };
        if rest.starts_with("Awaiting manual winner selection") {
            awaiting = true;
            continue;
        }
        if !awaiting {
            continue;
        }
        let (source, who) = if let Some(w) = rest.strip_prefix("Manual selection winner:") {
            (CallSource::ManualSelection, w)
        } else if let Some(w) = rest.strip_prefix("Confirmed result winner:") {
            (CallSource::Confirmed, w)
        } else {
            continue;
        };
        let who = who.trim().to_ascii_lowercase();
        let winner = if who.starts_with("left") {
            Side::Left
        } else if who.starts_with("right") {
            Side::Right
        } else {
            continue;
        };
        call = Some(RefereeCall {
            winner,
            source,
            at,
            line: i + 1,
        });
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "Phrase 1 initialized at 2025-10-20 20:59:20
Audio cue executed at 2025-10-20 20:59:17
Audio cue duration: 2.75s
Start command issued at 2025-10-20 20:59:20
Recording started at 2025-10-20 20:59:20
 0.000s | Phrase recording started
 1.947s | Off-Target: Blade-to-blade contact.
 3.345s | HIT: Left scores on Right!
Lockout active (0.130s window)
 3.368s | Lockout period started (0.200s window)
 3.528s | HIT: Simultaneous valid hits!
 3.528s | HIT: Right scores on Left! (simultaneous)
 3.570s | Phrase recording ended
Scores -> Fencer 1: HIT, Fencer 2: HIT
Phrase ended
[2025-10-20 20:59:24] Interpretation -> Right Fencer: HIT, Left Fencer: HIT
Awaiting manual winner selection
Winner: Right
 9.000s | HIT: garbage that would fail
";

    #[test]
    fn parses_full_log_and_ignores_manual_selection() {
        let tl = parse_signal(LOG).expect("parses");
        assert_eq!(tl.header.phrase_number, Some(1));
        assert_eq!(
            tl.header.recording_started_at.as_deref(),
            Some("2025-10-20 20:59:20")
        );
        assert_eq!(tl.header.audio_cue_duration, Some(2.75));
        assert_eq!(tl.lockout_active_window, Some(0.13));
        assert_eq!(tl.events.len(), 7);
        assert_eq!(tl.first_hit(), Some((3.345, Some(Side::Left))));
        assert_eq!(tl.blade_contacts().collect::<Vec<_>>(), vec![1.947]);
        assert_eq!(tl.phrase_end(), Some(3.57));
        assert_eq!(tl.start(), Some(0.0));
        assert_eq!(tl.hits(Side::Left), vec![3.345, 3.528]);
        assert_eq!(tl.hits(Side::Right), vec![3.528, 3.528]);
        assert_eq!(tl.lockout_started(), Some(3.368));
        assert!(tl.is_double());
        assert_eq!(tl.single_light(), None);
        assert_eq!(tl.ignored_from_line, Some(17));
        assert!(tl.phrase_ended);
        assert!(tl.interpretation.is_some());
        assert_eq!(
            tl.events[5].kind,
            EventKind::Hit {
                scorer: Side::Right,
                simultaneous: true
            }
        );
    }

    #[test]
    fn single_light_from_scoreboard_and_from_hits() {
        let tl = parse_signal(
            " 0.000s | Phrase recording started\n 1.2s | HIT: Right scores on Left!\n",
        )
        .expect("parses");
        assert_eq!(tl.single_light(), Some(Side::Right));
        assert_eq!(tl.phrase_end(), Some(1.2));
        let tl = parse_signal(
            " 0.000s | Phrase recording started\n 1.2s | HIT: Simultaneous valid hits!\nScores -> Fencer 1: NO HIT, Fencer 2: HIT\n",
        )
        .expect("parses");
        assert_eq!(
            tl.single_light(),
            Some(Side::Left),
            "scoreboard wins over HIT lines"
        );
    }

    #[test]
    fn unknown_lines_are_kept_as_other() {
        let tl = parse_signal(
            "Some new header\n 0.000s | Phrase recording started\n 0.5s | Pause requested\n",
        )
        .expect("parses");
        assert_eq!(tl.other.len(), 1);
        assert_eq!(tl.other[0].line, 1);
        assert_eq!(
            tl.events[1].kind,
            EventKind::Other {
                text: "Pause requested".into()
            }
        );
    }

    fn err_line(text: &str) -> usize {
        match parse_signal(text) {
            Err(SignalError::Malformed { line, content, .. }) => {
                assert!(!content.is_empty());
                line
            }
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let head = " 0.000s | Phrase recording started\n";
        assert_eq!(err_line(&format!("{head} 1.0s | HIT: Middle scores!\n")), 2);
        assert_eq!(
            err_line(&format!("{head} -1.0s | Phrase recording ended\n")),
            2
        );
        assert_eq!(
            err_line(&format!("{head} 1.x2s | Phrase recording ended\n")),
            2
        );
        assert_eq!(err_line(&format!("{head}Lockout active (soon)\n")), 2);
        assert_eq!(
            err_line(&format!("{head} 1.0s | Lockout period started\n")),
            2
        );
        assert_eq!(
            err_line(&format!(
                "{head}\nScores -> Fencer 1: maybe, Fencer 2: HIT\n"
            )),
            3
        );
        assert_eq!(err_line(&format!("{head}Scores -> Fencer 3: HIT\n")), 2);
        assert_eq!(
            err_line(&format!(
                "Phrase x initialized at 2025-10-20 20:59:20\n{head}"
            )),
            1
        );
        assert_eq!(
            err_line(&format!("Recording started at yesterday\n{head}")),
            1
        );
        assert_eq!(err_line(&format!("{head}Audio cue duration: long\n")), 2);
        let e = parse_signal(&format!("{head} 1.0s | HIT: Middle scores!\n")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("line 2") && msg.contains("Middle scores"),
            "{msg}"
        );
    }

    #[test]
    fn odd_text_never_panics() {
        let odd = [
            "Recording started at 2é25-10-20 20:59:20\n",
            "Phrase \u{e9}\u{e9} initialized at \n",
            " \u{e9}s | HIT\n",
            "s | x\n",
            " 1.0s |\n",
            " 1.0s | HIT:\n",
            "Scores ->\n",
            "Lockout active (\u{e9}s window)\n",
            "\u{feff} 0.000s | Phrase recording started\n",
            " 1e400s | Phrase recording ended\n",
            " NaNs | Phrase recording ended\n",
        ];
        for text in odd {
            let _ = parse_signal(text);
        }
        assert!(parse_signal("\u{feff} 0.000s | Phrase recording started\n").is_ok());
        assert!(
            parse_signal(" 1e400s | Phrase recording ended\n").is_err(),
            "infinite time"
        );
    }

    #[test]
    fn empty_or_foreign_text_is_an_error() {
        assert_eq!(parse_signal(""), Err(SignalError::NoEvents));
        assert_eq!(parse_signal("hello\nworld\n"), Err(SignalError::NoEvents));
    }

    #[test]
    fn the_referees_call_is_read_from_the_tail_only() {
        let full = "\
 0.000s | Phrase recording started
 3.528s | HIT: Simultaneous valid hits!
 3.570s | Phrase recording ended
Scores -> Fencer 1: HIT, Fencer 2: HIT
[2025-10-20 20:59:24] Awaiting manual winner selection (double hit)
[2025-10-20 20:59:27] Manual selection winner: Right Fencer (Green Lamp)
[2025-10-20 20:59:27] Uploading phrase to remote referee service
[2025-10-20 20:59:31] Remote referee winner: Left Fencer (Red Lamp)
";
        let call = referee_call(full).expect("a call");
        assert_eq!(call.winner, Side::Right);
        assert_eq!(call.source, CallSource::ManualSelection);
        assert_eq!(call.at.as_deref(), Some("2025-10-20 20:59:27"));
        assert_eq!(call.line, 6);
        // The same words before the awaiting line are not a call; the log without a tail has none.
        assert_eq!(referee_call("Manual selection winner: Left Fencer\n"), None);
        let cut = full.split("[2025-10-20 20:59:24]").next().unwrap();
        assert_eq!(referee_call(cut), None);
        let confirmed =
            "Awaiting manual winner selection\nConfirmed result winner: Left Fencer (Red Lamp)\n";
        let c = referee_call(confirmed).expect("confirmed");
        assert_eq!(
            (c.winner, c.source, c.at),
            (Side::Left, CallSource::Confirmed, None)
        );
        // The verdict's input is the same with or without the tail.
        assert_eq!(
            parse_signal(full).unwrap().events,
            parse_signal(cut).unwrap().events
        );
    }
}
