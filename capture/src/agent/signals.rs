//! The phrases' signal logs: their numbering (0, 1, 2, ... within the session), the one log of a
//! clip until it is sent, and the signals sent but still waiting for their verdict (sent again
//! after a reconnect). A log sent again under the same file name (watch mode: the box appended
//! the referee's call) keeps its phrase number.

use referee_transport::messages::Signal;
use std::collections::HashMap;
use std::time::Instant;

/// Signals of a session; survives reconnects.
pub(super) struct Signals {
    /// Sent and waiting for their verdict: (phrase, message, when last sent).
    waiting: Vec<(u32, Signal, Instant)>,
    /// Phrase number of the next signal.
    next_phrase: u32,
    /// The one log of a clip ([`super::SignalInput::Once`]) until it has been sent.
    once: Option<(String, Vec<u8>)>,
    /// The phrase of each log file sent, by file name.
    phrases_by_file: HashMap<String, u32>,
}

impl Signals {
    /// No signal sent yet; `once` is the clip's log, sent after its last frame.
    pub fn new(once: Option<(String, Vec<u8>)>) -> Self {
        Signals {
            waiting: Vec::new(),
            next_phrase: 0,
            once,
            phrases_by_file: HashMap::new(),
        }
    }

    /// The clip's log while it has not been sent.
    pub fn once_unsent(&self) -> Option<&(String, Vec<u8>)> {
        self.once.as_ref()
    }

    /// The message for the next phrase (not counted until [`Signals::sent`]).
    pub fn compose(
        &self,
        session_id: &str,
        filename: String,
        bytes: Vec<u8>,
        phrase_start_us: Option<u64>,
    ) -> Signal {
        Signal {
            session_id: session_id.to_string(),
            phrase: self.next_phrase,
            filename,
            bytes,
            phrase_start_us,
        }
    }

    /// Watch mode: the message for a log file, with the phrase of an earlier log of the same
    /// name when there is one (an update: true).
    pub fn compose_log(
        &self,
        session_id: &str,
        filename: String,
        bytes: Vec<u8>,
    ) -> (Signal, bool) {
        let earlier = self.phrases_by_file.get(&filename).copied();
        let mut sig = self.compose(session_id, filename, bytes, None);
        if let Some(phrase) = earlier {
            sig.phrase = phrase;
        }
        (sig, earlier.is_some())
    }

    /// Records `sig` (from [`Signals::compose`] or [`Signals::compose_log`]) as sent at `at`: it
    /// waits for its verdict (replacing an earlier message of its phrase), and numbering moves
    /// on past it. Called before writing, so a message whose write fails is sent again after
    /// the reconnect.
    pub fn sent(&mut self, sig: Signal, at: Instant) {
        self.phrases_by_file
            .insert(sig.filename.clone(), sig.phrase);
        self.next_phrase = self.next_phrase.max(sig.phrase + 1);
        self.waiting.retain(|(p, _, _)| *p != sig.phrase);
        self.waiting.push((sig.phrase, sig, at));
    }

    /// Like [`Signals::sent`], for the clip's log: it is not sent again as a new phrase.
    pub fn sent_once(&mut self, sig: Signal, at: Instant) {
        self.sent(sig, at);
        self.once = None;
    }

    /// The signals to send again on a new connection, with their send time to reset.
    pub fn waiting_mut(&mut self) -> impl Iterator<Item = (&Signal, &mut Instant)> {
        self.waiting.iter_mut().map(|(_, sig, at)| (&*sig, at))
    }

    /// The verdict of `phrase` arrived.
    pub fn answered(&mut self, phrase: u32) {
        self.waiting.retain(|(p, _, _)| *p != phrase);
    }

    /// True when every signal sent has its verdict.
    pub fn all_answered(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The oldest signal still waiting: its phrase and when it was last sent.
    pub fn oldest_waiting(&self) -> Option<(u32, Instant)> {
        self.waiting.first().map(|(p, _, at)| (*p, *at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_are_numbered_in_order_and_wait_for_their_verdicts() {
        let mut s = Signals::new(None);
        assert!(s.once_unsent().is_none() && s.all_answered());
        let t0 = Instant::now();
        let a = s.compose("sess", "a.txt".into(), b"A".to_vec(), None);
        assert_eq!(a.phrase, 0);
        // Composing alone does not use up the number.
        assert_eq!(s.compose("sess", "x".into(), vec![], None).phrase, 0);
        s.sent(a, t0);
        let b = s.compose("sess", "b.txt".into(), b"B".to_vec(), Some(7));
        assert_eq!((b.phrase, b.phrase_start_us), (1, Some(7)));
        s.sent(b, t0);
        assert_eq!(s.oldest_waiting(), Some((0, t0)));
        s.answered(0);
        assert_eq!(s.oldest_waiting(), Some((1, t0)));
        // A verdict for a phrase answered already (a resend answered twice) changes nothing.
        s.answered(0);
        let later = Instant::now();
        for (sig, at) in s.waiting_mut() {
            assert_eq!(sig.filename, "b.txt");
            *at = later;
        }
        assert_eq!(s.oldest_waiting(), Some((1, later)));
        s.answered(1);
        assert!(s.all_answered());
    }

    #[test]
    fn an_updated_log_keeps_its_phrase_and_replaces_the_waiting_message() {
        let mut s = Signals::new(None);
        let t0 = Instant::now();
        let (a, update) = s.compose_log("sess", "a.txt".into(), b"A".to_vec());
        assert_eq!((a.phrase, update), (0, false));
        s.sent(a, t0);
        let (b, _) = s.compose_log("sess", "b.txt".into(), b"B".to_vec());
        s.sent(b, t0);
        let (a2, update) = s.compose_log("sess", "a.txt".into(), b"A + call".to_vec());
        assert_eq!((a2.phrase, update), (0, true));
        s.sent(a2, t0);
        let waiting: Vec<(u32, Vec<u8>)> = s
            .waiting_mut()
            .map(|(sig, _)| (sig.phrase, sig.bytes.clone()))
            .collect();
        assert_eq!(waiting, [(1, b"B".to_vec()), (0, b"A + call".to_vec())]);
        let (c, update) = s.compose_log("sess", "c.txt".into(), b"C".to_vec());
        assert_eq!((c.phrase, update), (2, false), "numbering is not set back");
    }

    #[test]
    fn the_clips_log_is_unsent_until_sent() {
        let mut s = Signals::new(Some(("signal.txt".into(), b"log".to_vec())));
        let (name, bytes) = s.once_unsent().cloned().unwrap();
        let sig = s.compose("sess", name, bytes, Some(1));
        assert!(s.once_unsent().is_some(), "still unsent until written");
        s.sent_once(sig, Instant::now());
        assert!(s.once_unsent().is_none());
        assert!(!s.all_answered());
    }
}
