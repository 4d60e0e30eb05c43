//! The feed hub: fans live states and verdicts out to any number of subscribers.
//!
//! Publishing never blocks and never waits for a subscriber: each subscriber reads from a
//! bounded ring (a tokio broadcast channel). A subscriber that falls behind loses the oldest
//! events; it learns how many through [`FeedEvent::Lagged`], and the hub counts the drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use referee_transport::messages::FeedEvent;
use tokio::sync::broadcast;

/// Default number of events buffered per subscriber.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 256;

/// Publishes feed events to subscribers.
#[derive(Clone)]
pub struct FeedHub {
    tx: broadcast::Sender<Arc<FeedEvent>>,
    published: Arc<AtomicU64>,
    lagged: Arc<AtomicU64>,
}

impl FeedHub {
    /// A hub whose subscribers each buffer up to `buffer` events.
    pub fn new(buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Self {
            tx,
            published: Arc::new(AtomicU64::new(0)),
            lagged: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends an event to every current subscriber; never blocks.
    pub fn publish(&self, event: FeedEvent) {
        self.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("referee_feed_events_total").increment(1);
        // An error only means nobody is subscribed right now.
        let _ = self.tx.send(Arc::new(event));
    }

    /// A new subscriber that receives events for `pistes` (empty = every piste).
    pub fn subscribe(&self, pistes: Vec<String>) -> FeedSubscription {
        FeedSubscription {
            rx: self.tx.subscribe(),
            pistes,
            lagged: self.lagged.clone(),
        }
    }

    /// Number of connected subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Events dropped for slow subscribers so far (summed over subscribers).
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

/// One subscriber's view of the feed.
pub struct FeedSubscription {
    rx: broadcast::Receiver<Arc<FeedEvent>>,
    pistes: Vec<String>,
    lagged: Arc<AtomicU64>,
}

impl FeedSubscription {
    /// The next event for this subscriber, `Lagged` after drops, or `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<FeedEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => {
                    if self.wants(&event) {
                        return Some((*event).clone());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    self.lagged.fetch_add(count, Ordering::Relaxed);
                    metrics::counter!("referee_feed_dropped_total").increment(count);
                    return Some(FeedEvent::Lagged { count });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn wants(&self, event: &FeedEvent) -> bool {
        if self.pistes.is_empty() {
            return true;
        }
        let piste = match event {
            FeedEvent::SessionStarted { piste, .. } | FeedEvent::SessionEnded { piste, .. } => {
                piste
            }
            FeedEvent::Live(live) => &live.piste,
            FeedEvent::Verdict(v) => &v.piste,
            FeedEvent::Error(_) | FeedEvent::Lagged { .. } => return true,
        };
        self.pistes.iter().any(|p| p == piste)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(piste: &str) -> FeedEvent {
        FeedEvent::SessionStarted {
            session_id: format!("s-{piste}"),
            piste: piste.to_string(),
        }
    }

    #[tokio::test]
    async fn filters_by_piste() {
        let hub = FeedHub::new(8);
        let mut only_b = hub.subscribe(vec!["B".into()]);
        let mut all = hub.subscribe(vec![]);
        hub.publish(started("A"));
        hub.publish(started("B"));
        assert_eq!(all.next().await, Some(started("A")));
        assert_eq!(all.next().await, Some(started("B")));
        assert_eq!(only_b.next().await, Some(started("B")));
    }

    #[tokio::test]
    async fn slow_subscriber_is_told_how_many_it_lost() {
        let hub = FeedHub::new(4);
        let mut slow = hub.subscribe(vec![]);
        for i in 0..10 {
            hub.publish(started(&i.to_string()));
        }
        assert_eq!(slow.next().await, Some(FeedEvent::Lagged { count: 6 }));
        assert_eq!(slow.next().await, Some(started("6")));
        assert_eq!(hub.lagged(), 6);
        assert_eq!(hub.published(), 10);
    }
}
