//! The connection loop: connect, run the session, and on a retryable loss wait (exponential
//! backoff) and connect again to resume, until the session ends or the retries are spent.
//! A full daemon (no free session slot, too many connections) is waited for separately, with
//! jittered backoff, for up to `slot_wait`, without using up the retries.

use super::error::Failure;
use super::progress::ProgressSink;
use super::session::run_session;
use super::state::State;
use super::{AgentConfig, AgentError};
use crate::source::SourceInfo;
use referee_transport::quinn;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Delays between connection attempts: from `initial`, doubling up to `max`, at most
/// `max_retries` failures in a row.
#[derive(Debug, Clone)]
struct Backoff {
    initial: Duration,
    max: Duration,
    max_retries: u32,
    failures: u32,
    delay: Duration,
}

impl Backoff {
    fn new(cfg: &AgentConfig) -> Self {
        Backoff {
            initial: cfg.backoff_initial,
            max: cfg.backoff_max,
            max_retries: cfg.max_retries,
            failures: 0,
            delay: cfg.backoff_initial,
        }
    }

    /// A connection made progress: the failure count and the delay start again.
    fn reset(&mut self) {
        self.failures = 0;
        self.delay = self.initial;
    }

    /// Counts one more failure; the delay before the next attempt, or `None` when the retries
    /// are spent.
    fn next_delay(&mut self) -> Option<Duration> {
        self.failures += 1;
        if self.failures > self.max_retries {
            return None;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        Some(delay)
    }
}

/// The wait for a free slot on a full daemon: jittered backoff from the first refusal, for at
/// most `limit` in all.
#[derive(Debug, Clone)]
struct SlotWait {
    limit: Duration,
    since: Option<Instant>,
    backoff: Backoff,
}

impl SlotWait {
    fn new(cfg: &AgentConfig) -> Self {
        let mut backoff = Backoff::new(cfg);
        backoff.max_retries = u32::MAX;
        SlotWait {
            limit: cfg.slot_wait,
            since: None,
            backoff,
        }
    }

    /// The daemon took the agent in: a later refusal starts a new wait.
    fn reset(&mut self) {
        self.since = None;
        self.backoff.reset();
    }

    /// After a refusal at `now`: how long the agent has waited, and the delay before the next
    /// try (never past the limit), or `None` once the limit is reached.
    fn next(&mut self, now: Instant) -> (Duration, Option<Duration>) {
        let since = *self.since.get_or_insert(now);
        let waited = now.duration_since(since);
        let left = self.limit.saturating_sub(waited);
        if left.is_zero() {
            return (waited, None);
        }
        let delay = self.backoff.next_delay().unwrap_or(self.backoff.max);
        (waited, Some(jittered(delay).min(left)))
    }
}

/// `d` scaled by a random factor in [0.75, 1.25), so agents refused together do not all come
/// back at the same instant.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's random source; the time makes each call differ.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.75 + 0.5 * unit)
}

/// Runs connections until the session ends (`Ok`), a fatal error, or too many failures.
pub(super) async fn run_connections(
    endpoint: &quinn::Endpoint,
    cfg: &AgentConfig,
    info: &SourceInfo,
    st: &mut State,
    watch_rx: &mut Option<mpsc::Receiver<(String, Vec<u8>)>>,
    progress: &mut impl ProgressSink,
) -> Result<(), AgentError> {
    let mut backoff = Backoff::new(cfg);
    let mut slot = SlotWait::new(cfg);
    loop {
        let acked_before = st.stats.frames_acked;
        let starts_before = st.sessions_started;
        let result = connection(endpoint, cfg, info, st, watch_rx, progress).await;
        // A connection that made progress resets the failure count and the delay.
        if st.stats.frames_acked > acked_before || st.sessions_started > starts_before {
            backoff.reset();
            slot.reset();
        }
        let reason = match result {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(reason)) => reason,
            Err(Failure::Busy(reason)) => {
                let (waited, delay) = slot.next(Instant::now());
                let Some(delay) = delay else {
                    return Err(AgentError::NoSlot {
                        waited,
                        last: reason,
                    });
                };
                let text = format!(
                    "the daemon is full ({reason}); waiting for a free session slot: {} s of \
                     {} s waited, next try in {:.1} s",
                    waited.as_secs(),
                    cfg.slot_wait.as_secs(),
                    delay.as_secs_f64()
                );
                tracing::warn!("{text}");
                progress.message(&text);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let Some(delay) = backoff.next_delay() else {
            return Err(AgentError::GaveUp {
                attempts: backoff.failures,
                last: reason,
            });
        };
        let text = format!(
            "connection lost ({reason}); reconnecting in {} ms (attempt {}/{})",
            delay.as_millis(),
            backoff.failures,
            cfg.max_retries
        );
        tracing::warn!("{text}");
        progress.message(&text);
        // The capture thread keeps filling the ring meanwhile (evicting the oldest frames of a
        // live source when it is full).
        tokio::time::sleep(delay).await;
    }
}

/// One connection: connect, run the session on it, close it with a code saying why it ended.
async fn connection(
    endpoint: &quinn::Endpoint,
    cfg: &AgentConfig,
    info: &SourceInfo,
    st: &mut State,
    watch_rx: &mut Option<mpsc::Receiver<(String, Vec<u8>)>>,
    progress: &mut impl ProgressSink,
) -> Result<(), Failure> {
    let conn = referee_transport::connect_with_timeout(
        endpoint,
        cfg.server,
        &cfg.server_name,
        cfg.handshake_timeout,
    )
    .await?;
    let result = run_session(&conn, cfg, info, st, watch_rx, progress).await;
    match &result {
        Ok(()) => conn.close(referee_transport::CLOSE_OK, b"session ended"),
        Err(Failure::Fatal(_)) => conn.close(referee_transport::CLOSE_PROTOCOL, b"agent stopping"),
        Err(Failure::Retry(_) | Failure::Busy(_)) => {
            conn.close(referee_transport::CLOSE_OK, b"reconnecting")
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_transport::Trust;

    fn backoff(initial_ms: u64, max_ms: u64, retries: u32) -> Backoff {
        let mut cfg = AgentConfig::new(
            "127.0.0.1:4433".parse().unwrap(),
            Trust::InsecureLoopback,
            "s",
        );
        cfg.backoff_initial = Duration::from_millis(initial_ms);
        cfg.backoff_max = Duration::from_millis(max_ms);
        cfg.max_retries = retries;
        Backoff::new(&cfg)
    }

    fn ms(d: Option<Duration>) -> Option<u128> {
        d.map(|d| d.as_millis())
    }

    #[test]
    fn delays_double_up_to_the_maximum_then_give_up() {
        let mut b = backoff(100, 350, 4);
        let delays: Vec<_> = (0..5).map(|_| ms(b.next_delay())).collect();
        assert_eq!(delays, [Some(100), Some(200), Some(350), Some(350), None]);
        assert_eq!(b.failures, 5);
    }

    #[test]
    fn progress_starts_the_count_again() {
        let mut b = backoff(10, 1000, 2);
        assert_eq!(ms(b.next_delay()), Some(10));
        assert_eq!(ms(b.next_delay()), Some(20));
        b.reset();
        assert_eq!(ms(b.next_delay()), Some(10));
        assert_eq!(ms(b.next_delay()), Some(20));
        assert_eq!(ms(b.next_delay()), None);
    }

    #[test]
    fn a_full_daemon_is_waited_for_up_to_the_slot_wait_with_jitter() {
        let mut cfg = AgentConfig::new(
            "127.0.0.1:4433".parse().unwrap(),
            Trust::InsecureLoopback,
            "s",
        );
        cfg.backoff_initial = Duration::from_millis(100);
        cfg.backoff_max = Duration::from_secs(2);
        cfg.max_retries = 0;
        cfg.slot_wait = Duration::from_secs(10);
        let mut w = SlotWait::new(&cfg);
        let t0 = Instant::now();
        let (waited, d) = w.next(t0);
        assert_eq!(waited, Duration::ZERO);
        let d = d.expect("a first delay although max_retries is 0");
        assert!((75..125).contains(&d.as_millis()), "{d:?}");
        // Capped at backoff_max (with jitter), and never past the limit.
        for _ in 0..10 {
            w.next(t0);
        }
        let (_, d) = w.next(t0 + Duration::from_secs(1));
        assert!(d.unwrap() <= Duration::from_millis(2500));
        let (_, d) = w.next(t0 + Duration::from_millis(9900));
        assert!(d.unwrap() <= Duration::from_millis(100));
        assert_eq!(w.next(t0 + Duration::from_secs(10)).1, None);
        w.reset();
        assert!(w.next(t0 + Duration::from_secs(11)).1.is_some());
    }

    #[test]
    fn no_retries_gives_up_at_the_first_failure() {
        assert_eq!(backoff(10, 10, 0).next_delay(), None);
    }
}
