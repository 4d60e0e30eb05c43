//! Who may drive a session, and how fast it may ask for decisions.
//!
//! A session belongs to the connection that opened it, said hello with a token. The daemon
//! gives that agent a random resume secret in `SessionStarted`; after a reconnect the agent
//! resumes the session by presenting the secret with the same token, and the new connection
//! becomes the holder (the secret is then replaced). Signals, `End`, `Abort` and frames are
//! accepted only from the connection holding the session. Each session also has a bucket of
//! signals for new phrases, so one agent cannot start hundreds of decisions at once.
//!
//! Ownership is the daemon's business: the engine knows sessions, not connections.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use referee_engine::{Engine, EngineError, Session, SessionSpec};
use referee_transport::auth::{new_session_secret, SecretDigest};

/// Identifies one accepted connection for the daemon's lifetime (never reused).
pub type ConnId = u64;

/// Phrases remembered per session to let a repeated signal through without a token.
const PHRASES_REMEMBERED: usize = 256;

/// Why a session request was refused.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The session was opened by another agent, which this connection did not prove to be.
    #[error(
        "session {0:?} belongs to another agent: only the connection that opened it, or an \
         agent resuming it with its resume secret and token, may use it"
    )]
    NotOwner(String),
    /// Too many new phrases' signals in a short time.
    #[error(
        "session {id:?} sent signals for new phrases too fast (at most {burst} at once, then \
         {per_minute} a minute: REFEREE_SIGNAL_BURST, REFEREE_SIGNALS_PER_MINUTE)"
    )]
    TooManySignals {
        id: String,
        burst: u32,
        per_minute: u32,
    },
    /// The engine refused (unknown session, too many sessions, bad spec...).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// No secret could be made (the system's random generator failed).
    #[error("cannot make a resume secret: {0}")]
    Secret(String),
}

/// How many new phrases' signals a session may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalPolicy {
    /// At once (the bucket's size).
    pub burst: u32,
    /// Per minute after that (the bucket's refill rate).
    pub per_minute: u32,
}

/// Who asks: the connection and the token it said hello with.
#[derive(Debug, Clone, Copy)]
pub struct Agent<'a> {
    pub conn: ConnId,
    pub token: &'a str,
}

/// A session opened or resumed, and the secret that resumes it next time.
pub struct Opened {
    pub session: Arc<Session>,
    pub resume_secret: String,
}

struct Owner {
    session: Weak<Session>,
    secret: SecretDigest,
    token: SecretDigest,
    /// The connection using the session now; `None` while its agent is away.
    holder: Option<ConnId>,
    signals: SignalBucket,
}

/// The daemon's record of who holds which session.
pub struct Owners {
    owners: Mutex<HashMap<String, Owner>>,
    policy: SignalPolicy,
}

impl Owners {
    /// An empty registry whose sessions get `policy`'s signal budget.
    pub fn new(policy: SignalPolicy) -> Self {
        Self {
            owners: Mutex::new(HashMap::new()),
            policy,
        }
    }

    /// Opens `spec` for `agent`, or resumes it when `spec.resume` is set: a session still open
    /// is resumed only with its secret (`resume_secret`) and the token that opened it; one
    /// that is gone (or never was) is opened anew.
    pub fn open(
        &self,
        engine: &Engine,
        mut spec: SessionSpec,
        resume_secret: Option<&str>,
        agent: Agent<'_>,
    ) -> Result<Opened, OwnerError> {
        let mut owners = self.owners.lock();
        owners.retain(|id, o| is_current(engine, id, o));
        if let Some(owner) = owners.get_mut(&spec.id) {
            if !spec.resume {
                return Err(EngineError::SessionExists(spec.id).into());
            }
            let proven = resume_secret.is_some_and(|s| owner.secret.matches(s))
                && owner.token.matches(agent.token);
            if !proven {
                metrics::counter!("referee_session_owner_refusals_total", "what" => "resume")
                    .increment(1);
                return Err(OwnerError::NotOwner(spec.id));
            }
            let session = engine.open_session(spec)?;
            let secret = new_secret()?;
            owner.secret = SecretDigest::of(&secret);
            owner.holder = Some(agent.conn);
            return Ok(Opened {
                session,
                resume_secret: secret,
            });
        }
        // Nobody holds it: whatever the agent asked, this is a new session (the engine
        // refuses an id it still has, so no one else's session is handed out).
        spec.resume = false;
        let secret = new_secret()?;
        let session = engine.open_session(spec)?;
        owners.insert(
            session.id().to_string(),
            Owner {
                session: Arc::downgrade(&session),
                secret: SecretDigest::of(&secret),
                token: SecretDigest::of(agent.token),
                holder: Some(agent.conn),
                signals: SignalBucket::new(self.policy, Instant::now()),
            },
        );
        Ok(Opened {
            session,
            resume_secret: secret,
        })
    }

    /// Ok when connection `conn` holds session `id`; `NotOwner` when another agent does,
    /// the engine's `UnknownSession` when there is no such session.
    pub fn check(&self, engine: &Engine, id: &str, conn: ConnId) -> Result<(), OwnerError> {
        let owners = self.owners.lock();
        match owners.get(id) {
            Some(o) if o.holder == Some(conn) && is_current(engine, id, o) => Ok(()),
            _ => Err(refusal(engine, id)),
        }
    }

    /// [`Owners::check`], then takes a token from the session's signal bucket unless `phrase`
    /// was accepted before (an agent resends an unanswered signal after a reconnect).
    pub fn admit_signal(
        &self,
        engine: &Engine,
        id: &str,
        phrase: u32,
        conn: ConnId,
    ) -> Result<(), OwnerError> {
        let mut owners = self.owners.lock();
        let owner = match owners.get_mut(id) {
            Some(o) if o.holder == Some(conn) && is_current(engine, id, o) => o,
            _ => return Err(refusal(engine, id)),
        };
        if owner.signals.admit(phrase, Instant::now()) {
            return Ok(());
        }
        metrics::counter!("referee_signals_refused_total", "reason" => "rate").increment(1);
        Err(OwnerError::TooManySignals {
            id: id.to_string(),
            burst: self.policy.burst,
            per_minute: self.policy.per_minute,
        })
    }

    /// Connection `conn` is gone: its sessions wait for a resume. Returns their ids.
    pub fn release(&self, conn: ConnId) -> Vec<String> {
        let mut owners = self.owners.lock();
        owners
            .iter_mut()
            .filter(|(_, o)| o.holder == Some(conn))
            .map(|(id, o)| {
                o.holder = None;
                id.clone()
            })
            .collect()
    }
}

/// True while the owner's session is the one the engine has open under `id`.
fn is_current(engine: &Engine, id: &str, owner: &Owner) -> bool {
    match (owner.session.upgrade(), engine.session(id)) {
        (Some(mine), Ok(open)) => Arc::ptr_eq(&mine, &open),
        _ => false,
    }
}

/// The refusal for a connection that does not hold `id`: someone else's, or nobody's.
fn refusal(engine: &Engine, id: &str) -> OwnerError {
    match engine.session(id) {
        Ok(_) => {
            metrics::counter!("referee_session_owner_refusals_total", "what" => "use").increment(1);
            OwnerError::NotOwner(id.to_string())
        }
        Err(e) => OwnerError::Engine(e),
    }
}

fn new_secret() -> Result<String, OwnerError> {
    new_session_secret().map_err(|e| OwnerError::Secret(e.to_string()))
}

/// A session's budget of signals for new phrases: `burst` tokens, refilled at `per_minute`.
struct SignalBucket {
    policy: SignalPolicy,
    tokens: f64,
    at: Instant,
    phrases: BTreeSet<u32>,
}

impl SignalBucket {
    fn new(policy: SignalPolicy, now: Instant) -> Self {
        Self {
            policy,
            tokens: policy.burst as f64,
            at: now,
            phrases: BTreeSet::new(),
        }
    }

    /// True when a signal for `phrase` may go to the engine at `now`.
    fn admit(&mut self, phrase: u32, now: Instant) -> bool {
        if self.phrases.contains(&phrase) {
            return true;
        }
        let minutes = now.saturating_duration_since(self.at).as_secs_f64() / 60.0;
        self.at = now;
        let burst = self.policy.burst as f64;
        self.tokens = (self.tokens + minutes * self.policy.per_minute as f64).min(burst);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        self.phrases.insert(phrase);
        if self.phrases.len() > PHRASES_REMEMBERED {
            self.phrases.pop_first();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate_and_repeats_for_free() {
        let t0 = Instant::now();
        let policy = SignalPolicy {
            burst: 2,
            per_minute: 6,
        };
        let mut b = SignalBucket::new(policy, t0);
        assert!(b.admit(0, t0));
        assert!(b.admit(1, t0));
        assert!(!b.admit(2, t0), "the burst is spent");
        assert!(b.admit(1, t0), "a repeated phrase costs nothing");
        // 6 a minute: one token every 10 s.
        assert!(!b.admit(2, t0 + Duration::from_secs(9)));
        assert!(b.admit(2, t0 + Duration::from_secs(11)));
        assert!(!b.admit(3, t0 + Duration::from_secs(12)));
        // Tokens never pile up above the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.admit(10, later) && b.admit(11, later) && !b.admit(12, later));
    }
}
