//! The recent phrases this daemon decided, each with the referee's own call kept beside our
//! verdict, and the agreement between the two (overall and per piste).
//!
//! - The history is bounded (`history.max_phrases`; the oldest phrase goes first).
//! - It is persisted as JSON lines in `<data_dir>/phrase-history.jsonl` ([`HISTORY_FILE`]):
//!   every change appends the phrase's whole entry, on a writer thread (never on the engine's
//!   path); at start the file is read back, later lines replacing earlier ones, and a torn line
//!   (a crash mid-write) is skipped with a warning. Once the file holds twice as many lines as
//!   the history it is rewritten with the current entries only (atomically).
//! - A human call comes from the signal log's tail ([`History::log_call`]: the scoring box's
//!   `Manual selection winner: ...`) or from the feed page ([`History::page_call`]); a call that
//!   arrives before its verdict is held until the verdict comes. The page's call wins over the
//!   log's (a referee correcting the record); both are kept.
//! - The call is stored here only, after the decision: nothing in this module is read by the
//!   engine, so it can never reach a verdict.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use referee_record::{CallOrigin, CallWinner};
use referee_rules::signal::{CallSource, RefereeCall};
use referee_rules::Side;
use referee_transport::messages::{Evidence, VerdictReport, Winner};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The history file's name under `server.data_dir`.
pub const HISTORY_FILE: &str = "phrase-history.jsonl";

/// Calls held for phrases whose verdict has not come yet (oldest dropped first).
const PENDING_MAX: usize = 64;

/// Why the history could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read the phrase history {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the phrase history writer: {0}")]
    Thread(#[source] std::io::Error),
}

/// True when our verdict is the referee's call (`uncertain` agrees with nothing: we did not
/// decide; no touch agrees with nothing either, as we always give the touch to someone).
pub fn agrees(call: CallWinner, ours: Winner) -> bool {
    matches!(
        (call.side(), ours),
        (Some(Side::Left), Winner::Left) | (Some(Side::Right), Winner::Right)
    )
}

/// A human call as stored with its phrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCall {
    /// The call.
    pub call: CallWinner,
    /// Log or page.
    pub origin: CallOrigin,
    /// How the box recorded it (log calls only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_source: Option<CallSource>,
    /// The log line's own stamp (`YYYY-MM-DD HH:MM:SS`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// When the daemon received it, milliseconds since the Unix epoch.
    pub received_ms: u64,
}

impl StoredCall {
    /// The call in a signal log's tail.
    pub fn from_log(c: &RefereeCall) -> Self {
        Self {
            call: c.winner.into(),
            origin: CallOrigin::Log,
            log_source: Some(c.source),
            stamp: c.at.clone(),
            received_ms: now_ms(),
        }
    }

    /// A call made on the feed page.
    pub fn from_page(call: CallWinner) -> Self {
        Self {
            call,
            origin: CallOrigin::Page,
            log_source: None,
            stamp: None,
            received_ms: now_ms(),
        }
    }
}

/// One decided phrase: our verdict in short, and the human calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhraseEntry {
    pub session_id: String,
    pub piste: String,
    pub phrase: u32,
    /// Our verdict.
    pub winner: Winner,
    pub confidence: f32,
    /// Decided (not `uncertain`) with a confidence at or above the model's threshold.
    pub sure: bool,
    pub reason: String,
    pub evidence: Vec<Evidence>,
    /// From the signal's arrival to the verdict.
    pub latency_ms: f32,
    /// When the verdict was given, milliseconds since the Unix epoch.
    pub decided_ms: u64,
    /// The call in the signal log, if any.
    #[serde(default)]
    pub log_call: Option<StoredCall>,
    /// The call made on the feed page, if any.
    #[serde(default)]
    pub page_call: Option<StoredCall>,
}

impl PhraseEntry {
    /// The verdict's entry, without calls yet.
    pub fn new(v: &VerdictReport, sure: bool) -> Self {
        Self {
            session_id: v.session_id.clone(),
            piste: v.piste.clone(),
            phrase: v.phrase,
            winner: v.winner,
            confidence: v.confidence,
            sure,
            reason: v.reason.clone(),
            evidence: v.evidence.clone(),
            latency_ms: v.latency_ms,
            decided_ms: now_ms(),
            log_call: None,
            page_call: None,
        }
    }

    /// The call that counts: the page's, else the log's.
    pub fn human_call(&self) -> Option<&StoredCall> {
        self.page_call.as_ref().or(self.log_call.as_ref())
    }

    /// Whether our verdict agrees with the call that counts (`None` without a call).
    pub fn agrees(&self) -> Option<bool> {
        self.human_call().map(|c| agrees(c.call, self.winner))
    }

    fn is(&self, session_id: &str, phrase: u32) -> bool {
        self.phrase == phrase && self.session_id == session_id
    }

    fn attach(&mut self, call: StoredCall) {
        match call.origin {
            CallOrigin::Log => self.log_call = Some(call),
            CallOrigin::Page => self.page_call = Some(call),
        }
    }
}

/// Agreement of our verdicts with the human calls over some phrases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Agreement {
    /// Phrases with a human call.
    pub calls: u64,
    /// Of those, where our verdict is the call.
    pub agreeing: u64,
    /// `agreeing / calls` (`None` without calls).
    pub agreement: Option<f64>,
    /// Phrases with a call where we were sure (see [`PhraseEntry::sure`]).
    pub sure_calls: u64,
    /// Of those, where our verdict is the call.
    pub sure_agreeing: u64,
    /// `sure_agreeing / sure_calls` (`None` without such calls).
    pub agreement_when_sure: Option<f64>,
}

impl Agreement {
    fn add(&mut self, e: &PhraseEntry) {
        let Some(agrees) = e.agrees() else {
            return;
        };
        self.calls += 1;
        self.agreeing += u64::from(agrees);
        if e.sure {
            self.sure_calls += 1;
            self.sure_agreeing += u64::from(agrees);
        }
        let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
        self.agreement = ratio(self.agreeing, self.calls);
        self.agreement_when_sure = ratio(self.sure_agreeing, self.sure_calls);
    }
}

/// Agreement overall and per piste, over the phrases in the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgreementReport {
    /// Every piste together.
    pub overall: Agreement,
    /// Per piste (pistes with at least one phrase in the history).
    pub pistes: BTreeMap<String, Agreement>,
}

/// Consumer of every stored call (the phrase recorder), with the session and phrase.
pub type CallTap = Box<dyn Fn(&str, u32, &StoredCall) + Send + Sync>;

/// The bounded, persisted history of decided phrases.
pub struct History {
    inner: Mutex<Inner>,
    store: Mutex<Option<Store>>,
    tap: OnceLock<CallTap>,
}

struct Inner {
    /// Oldest first.
    entries: VecDeque<PhraseEntry>,
    /// Calls whose verdict has not come yet: (session, phrase, call), oldest first.
    pending: VecDeque<(String, u32, StoredCall)>,
    max: usize,
}

/// The writer thread and its queue.
struct Store {
    tx: mpsc::Sender<PhraseEntry>,
    thread: JoinHandle<()>,
}

impl History {
    /// A history kept in memory only (tools and tests that need no persistence).
    pub fn in_memory(max_phrases: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                pending: VecDeque::new(),
                max: max_phrases.max(1),
            }),
            store: Mutex::new(None),
            tap: OnceLock::new(),
        }
    }

    /// The history persisted at `path`: what the file holds is loaded (the newest
    /// `max_phrases`), and every later change is appended to it.
    pub fn open(path: &Path, max_phrases: usize) -> Result<Self, HistoryError> {
        let h = Self::in_memory(max_phrases);
        let (entries, lines) = load(path)?;
        let max = h.inner.lock().max;
        {
            let mut inner = h.inner.lock();
            let skip = entries.len().saturating_sub(max);
            inner.entries = entries.into_iter().skip(skip).collect();
            info!(path = %path.display(), phrases = inner.entries.len(), "phrase history loaded");
        }
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.to_path_buf(),
            lines,
            max,
        };
        let thread = std::thread::Builder::new()
            .name("referee-history".into())
            .spawn(move || writer.run(rx))
            .map_err(HistoryError::Thread)?;
        *h.store.lock() = Some(Store { tx, thread });
        Ok(h)
    }

    /// Sends every later stored call to `tap` too (once; a second tap is ignored).
    pub fn set_tap(&self, tap: CallTap) {
        let _ = self.tap.set(tap);
    }

    /// Adds a verdict (replacing an older entry of the same session and phrase); a call that
    /// arrived before it is attached.
    pub fn record_verdict(&self, v: &VerdictReport, sure: bool) {
        let mut entry = PhraseEntry::new(v, sure);
        {
            let mut inner = self.inner.lock();
            let mut i = 0;
            while i < inner.pending.len() {
                let (s, p, _) = &inner.pending[i];
                if *p == entry.phrase && *s == entry.session_id {
                    if let Some((_, _, call)) = inner.pending.remove(i) {
                        entry.attach(call);
                    }
                } else {
                    i += 1;
                }
            }
            inner.entries.retain(|e| !e.is(&v.session_id, v.phrase));
            inner.entries.push_back(entry.clone());
            while inner.entries.len() > inner.max {
                inner.entries.pop_front();
            }
        }
        self.persist(entry);
    }

    /// Stores the call found in a phrase's signal log. When the phrase is not in the history
    /// yet, the call is held for its verdict if `hold` (the engine took the signal), else
    /// dropped. The same call seen again (a resent log) changes nothing. True when stored.
    pub fn log_call(&self, session_id: &str, phrase: u32, call: &RefereeCall, hold: bool) -> bool {
        let stored = StoredCall::from_log(call);
        let same = |c: &StoredCall| c.call == stored.call && c.stamp == stored.stamp;
        let updated = {
            let mut inner = self.inner.lock();
            match inner.entries.iter_mut().find(|e| e.is(session_id, phrase)) {
                Some(e) if e.log_call.as_ref().is_some_and(same) => return false,
                Some(e) => {
                    e.attach(stored.clone());
                    Some(e.clone())
                }
                None if hold => {
                    inner
                        .pending
                        .retain(|(s, p, _)| !(*p == phrase && s == session_id));
                    inner
                        .pending
                        .push_back((session_id.to_string(), phrase, stored.clone()));
                    while inner.pending.len() > PENDING_MAX {
                        inner.pending.pop_front();
                    }
                    None
                }
                None => return false,
            }
        };
        info!(session = session_id, phrase, call = ?stored.call, "referee's call from the log");
        if let Some(entry) = updated {
            self.persist(entry);
        }
        self.tapped(session_id, phrase, &stored);
        true
    }

    /// Stores a call made on the feed page; `None` when the phrase is not in the history.
    pub fn page_call(
        &self,
        session_id: &str,
        phrase: u32,
        call: CallWinner,
    ) -> Option<PhraseEntry> {
        let stored = StoredCall::from_page(call);
        let entry = {
            let mut inner = self.inner.lock();
            let e = inner
                .entries
                .iter_mut()
                .find(|e| e.is(session_id, phrase))?;
            e.attach(stored.clone());
            e.clone()
        };
        info!(
            session = session_id,
            phrase,
            ?call,
            "referee's call from the page"
        );
        self.persist(entry.clone());
        self.tapped(session_id, phrase, &stored);
        Some(entry)
    }

    /// The phrase's entry, if it is in the history.
    pub fn get(&self, session_id: &str, phrase: u32) -> Option<PhraseEntry> {
        let inner = self.inner.lock();
        inner
            .entries
            .iter()
            .find(|e| e.is(session_id, phrase))
            .cloned()
    }

    /// Up to `limit` entries, newest first, of `piste` (or of every piste).
    pub fn recent(&self, piste: Option<&str>, limit: usize) -> Vec<PhraseEntry> {
        let inner = self.inner.lock();
        inner
            .entries
            .iter()
            .rev()
            .filter(|e| piste.is_none_or(|p| e.piste == p))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Phrases in the history.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// True when the history holds no phrase.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most phrases kept.
    pub fn max_phrases(&self) -> usize {
        self.inner.lock().max
    }

    /// Agreement with the human calls, overall and per piste.
    pub fn agreement(&self) -> AgreementReport {
        let inner = self.inner.lock();
        let mut r = AgreementReport::default();
        for e in &inner.entries {
            r.overall.add(e);
            r.pistes.entry(e.piste.clone()).or_default().add(e);
        }
        r
    }

    /// Writes what is queued and stops the writer (blocking); later changes stay in memory.
    pub fn close(&self) {
        let store = self.store.lock().take();
        if let Some(Store { tx, thread }) = store {
            drop(tx);
            if thread.join().is_err() {
                warn!("the phrase history writer panicked");
            }
        }
    }

    fn persist(&self, entry: PhraseEntry) {
        if let Some(store) = self.store.lock().as_ref() {
            // An error means the writer is gone (it logged why): the history stays in memory.
            let _ = store.tx.send(entry);
        }
    }

    fn tapped(&self, session_id: &str, phrase: u32, call: &StoredCall) {
        if let Some(tap) = self.tap.get() {
            tap(session_id, phrase, call);
        }
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.close();
    }
}

/// Appends entries to the file and compacts it when it has grown to twice the history.
struct Writer {
    path: PathBuf,
    /// Lines in the file now.
    lines: usize,
    max: usize,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<PhraseEntry>) {
        while let Ok(entry) = rx.recv() {
            if let Err(e) = self.append(&entry) {
                metrics::counter!("referee_history_write_errors_total").increment(1);
                warn!(path = %self.path.display(), error = %e, "cannot write the phrase history");
            }
        }
    }

    fn append(&mut self, entry: &PhraseEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(line.as_bytes())?;
        self.lines += 1;
        if self.lines > 2 * self.max {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with the newest `max` entries, one line each.
    fn compact(&mut self) -> std::io::Result<()> {
        let (entries, _) = load(&self.path).map_err(std::io::Error::other)?;
        let skip = entries.len().saturating_sub(self.max);
        let mut text = String::new();
        for e in entries.iter().skip(skip) {
            text.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)?;
        self.lines = entries.len() - skip;
        Ok(())
    }
}

/// The entries of a history file, oldest first (a later line for the same phrase replaces the
/// earlier one), and the number of lines read. A missing file is empty.
fn load(path: &Path) -> Result<(Vec<PhraseEntry>, usize), HistoryError> {
    let read_err = |source| HistoryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(read_err(e)),
    };
    let mut entries: Vec<PhraseEntry> = Vec::new();
    let mut lines = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(read_err)?;
        lines += 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<PhraseEntry>(&line) {
            Ok(e) => match entries
                .iter()
                .position(|old| old.is(&e.session_id, e.phrase))
            {
                // The same verdict with a call added: it keeps its place.
                Some(at) if entries[at].decided_ms == e.decided_ms => entries[at] = e,
                // A new verdict for the same session and phrase: it is the newest.
                Some(at) => {
                    entries.remove(at);
                    entries.push(e);
                }
                None => entries.push(e),
            },
            Err(e) => warn!(path = %path.display(), line = i + 1, error = %e,
                "phrase history: unreadable line skipped"),
        }
    }
    Ok((entries, lines))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_rules::signal::referee_call;

    fn verdict(session: &str, piste: &str, phrase: u32, winner: Winner) -> VerdictReport {
        VerdictReport {
            session_id: session.into(),
            piste: piste.into(),
            phrase,
            winner,
            confidence: 0.9,
            reason: "because".into(),
            evidence: vec![Evidence {
                frame: 3,
                t: 0.2,
                what: "hit".into(),
            }],
            latency_ms: 12.5,
            detail_json: "{}".into(),
        }
    }

    const TAIL: &str = "Awaiting manual winner selection\n\
        [2025-10-20 20:59:27] Manual selection winner: Right Fencer (Green Lamp)\n";

    #[test]
    fn keeps_the_newest_phrases_only() {
        let h = History::in_memory(3);
        for p in 0..5 {
            h.record_verdict(&verdict("s", "1", p, Winner::Left), true);
        }
        let phrases: Vec<u32> = h.recent(None, 10).iter().map(|e| e.phrase).collect();
        assert_eq!(phrases, [4, 3, 2]);
        assert_eq!(h.recent(None, 2).len(), 2);
    }

    #[test]
    fn a_log_call_before_its_verdict_is_held_and_attached() {
        let h = History::in_memory(10);
        let call = referee_call(TAIL).expect("call");
        assert!(h.log_call("s", 1, &call, true));
        // Not held when the engine refused the signal and the phrase is unknown.
        assert!(!h.log_call("s", 2, &call, false));
        h.record_verdict(&verdict("s", "1", 1, Winner::Right), true);
        h.record_verdict(&verdict("s", "1", 2, Winner::Right), true);
        let e = h.get("s", 1).expect("entry");
        let c = e.human_call().expect("call attached");
        assert_eq!((c.call, c.origin), (CallWinner::Right, CallOrigin::Log));
        assert_eq!(c.stamp.as_deref(), Some("2025-10-20 20:59:27"));
        assert_eq!(h.get("s", 2).expect("entry").human_call(), None);
        // The same log sent again changes nothing.
        assert!(!h.log_call("s", 1, &call, true));
    }

    #[test]
    fn the_page_call_wins_and_agreement_follows_it() {
        let h = History::in_memory(10);
        h.record_verdict(&verdict("a", "1", 0, Winner::Right), true);
        h.record_verdict(&verdict("b", "2", 0, Winner::Uncertain), false);
        h.record_verdict(&verdict("c", "2", 0, Winner::Left), true);
        assert_eq!(h.agreement().overall.calls, 0);
        assert_eq!(h.agreement().overall.agreement, None);

        h.log_call("a", 0, &referee_call(TAIL).unwrap(), true);
        let r = h.agreement();
        assert_eq!((r.overall.calls, r.overall.agreeing), (1, 1));
        assert_eq!(r.pistes["1"].agreement, Some(1.0));

        // The referee corrects the record on the page: it now disagrees.
        let e = h.page_call("a", 0, CallWinner::Left).expect("in history");
        assert_eq!(e.human_call().unwrap().origin, CallOrigin::Page);
        assert!(e.log_call.is_some(), "the log's call is kept beside it");
        assert_eq!(h.agreement().overall.agreement, Some(0.0));

        // Uncertain agrees with no call, and is not "sure".
        h.page_call("b", 0, CallWinner::NoTouch).unwrap();
        h.page_call("c", 0, CallWinner::Left).unwrap();
        let r = h.agreement();
        assert_eq!((r.overall.calls, r.overall.agreeing), (3, 1));
        assert_eq!((r.overall.sure_calls, r.overall.sure_agreeing), (2, 1));
        assert_eq!(r.overall.agreement_when_sure, Some(0.5));
        assert_eq!(r.pistes["2"].calls, 2);
        assert_eq!(r.pistes["2"].agreement_when_sure, Some(1.0));
        assert!(h.page_call("nope", 0, CallWinner::Left).is_none());
    }

    #[test]
    fn reopening_the_file_gives_the_same_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        {
            let h = History::open(&path, 10).unwrap();
            h.record_verdict(&verdict("s", "1", 0, Winner::Left), true);
            h.record_verdict(&verdict("s", "1", 1, Winner::Right), true);
            h.page_call("s", 0, CallWinner::Left).unwrap();
            h.close();
        }
        // A torn last line, as after a crash mid-write, is skipped.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"session_id\":\"s\",\"pi").unwrap();
        let h = History::open(&path, 10).unwrap();
        let got: Vec<(u32, Option<CallWinner>)> = h
            .recent(None, 10)
            .iter()
            .map(|e| (e.phrase, e.human_call().map(|c| c.call)))
            .collect();
        // Newest first, as before: the call added to phrase 0 does not move it.
        assert_eq!(got, [(1, None), (0, Some(CallWinner::Left))]);
        assert_eq!(h.agreement().overall.agreement, Some(1.0));
    }

    #[test]
    fn the_file_is_compacted_to_the_newest_phrases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        let h = History::open(&path, 4).unwrap();
        for p in 0..20 {
            h.record_verdict(&verdict("s", "1", p, Winner::Left), true);
        }
        h.close();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 8, "{lines} lines: never compacted");
        let h = History::open(&path, 4).unwrap();
        let phrases: Vec<u32> = h.recent(None, 10).iter().map(|e| e.phrase).collect();
        assert_eq!(phrases, [19, 18, 17, 16]);
    }
}
