//! One pool of artifact writer threads: a fixed number of workers take phrases from a bounded
//! queue. A phrase that finds the queue full is refused with a warning and counted, never
//! dropped silently; every outcome (written, failed, refused) is counted in [`ArtifactHealth`],
//! which /status and /healthz show. The workers are joined at shutdown, after the queue drains.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Serialize;
use tracing::{info, warn};

/// Runs one job; `Err` is the failure's text.
type Handler<J> = Arc<dyn Fn(J) -> Result<(), String> + Send + Sync>;

/// What the artifacts writer has done, for /status and /healthz.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArtifactHealth {
    /// Writer threads.
    pub workers: usize,
    /// Phrases the queue holds at most.
    pub queue_capacity: usize,
    /// Phrases waiting now.
    pub queued: usize,
    /// Phrases whose artifacts were written.
    pub written: u64,
    /// Phrases whose artifacts failed (nothing of them is left in the output dir).
    pub failed: u64,
    /// Phrases refused because the queue was full.
    pub refused: u64,
    /// The last failure or refusal: its text.
    pub last_error: Option<String>,
    /// When it happened (seconds since the Unix epoch).
    pub last_error_at_unix_s: Option<f64>,
    /// True from a failure or refusal until a phrase decided after it is written: /healthz
    /// reports "degraded" meanwhile.
    pub degraded: bool,
}

#[derive(Default)]
struct Counts {
    written: u64,
    failed: u64,
    refused: u64,
    last_error: Option<(String, SystemTime)>,
    /// Sequence number of the job (submitted or refused) of the last problem.
    problem_seq: u64,
    degraded: bool,
}

impl Counts {
    fn problem(&mut self, message: String, seq: u64) {
        self.last_error = Some((message, SystemTime::now()));
        self.problem_seq = self.problem_seq.max(seq);
        self.degraded = true;
    }

    fn written(&mut self, seq: u64) {
        self.written += 1;
        // Only a phrase that came after the problem shows it is over.
        if seq > self.problem_seq {
            self.degraded = false;
        }
    }
}

/// A fixed pool of worker threads over a bounded queue of jobs `J`.
pub struct WorkerPool<J> {
    tx: Mutex<Option<Sender<(u64, J)>>>,
    rx: Receiver<(u64, J)>,
    /// Sequence numbers of jobs, in the order they were submitted.
    seq: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    counts: Arc<Mutex<Counts>>,
    workers: usize,
    capacity: usize,
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the artifacts queue is full ({0} phrases waiting): this phrase's artifacts are not written (raise artifacts.queue or artifacts.workers)")]
    Full(usize),
    #[error("the artifacts writer has stopped")]
    Stopped,
}

impl<J: Send + 'static> WorkerPool<J> {
    /// Starts `workers` threads named `name` over a queue of `capacity` jobs, each job run
    /// by `handler`.
    pub fn start(
        name: &str,
        workers: usize,
        capacity: usize,
        handler: impl Fn(J) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        let (workers, capacity) = (workers.max(1), capacity.max(1));
        let (tx, rx) = crossbeam_channel::bounded::<(u64, J)>(capacity);
        let handler: Handler<J> = Arc::new(handler);
        let counts = Arc::new(Mutex::new(Counts::default()));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (rx, handler, counts) = (rx.clone(), handler.clone(), counts.clone());
            let spawned = std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    for (seq, job) in rx.iter() {
                        let outcome = handler(job);
                        let mut c = counts.lock();
                        match outcome {
                            Ok(()) => {
                                c.written(seq);
                                metrics::counter!("referee_artifacts_written_total").increment(1);
                            }
                            Err(e) => {
                                c.failed += 1;
                                c.problem(e, seq);
                                metrics::counter!("referee_artifact_errors_total").increment(1);
                            }
                        }
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => warn!(worker = i, error = %e, "cannot start an artifact writer thread"),
            }
        }
        info!(
            workers = threads.len(),
            queue = capacity,
            "artifacts writer started"
        );
        Self {
            tx: Mutex::new(Some(tx)),
            rx,
            seq: AtomicU64::new(0),
            threads: Mutex::new(threads),
            counts,
            workers,
            capacity,
        }
    }

    /// Queues `job`, or refuses it (warned, counted) when the queue is full or stopped.
    pub fn submit(&self, job: J) -> Result<(), Refused> {
        let seq = self.next_seq();
        let sent = match self.tx.lock().as_ref() {
            Some(tx) => tx.try_send((seq, job)).map_err(|e| match e {
                TrySendError::Full(_) => Refused::Full(self.capacity),
                TrySendError::Disconnected(_) => Refused::Stopped,
            }),
            None => Err(Refused::Stopped),
        };
        metrics::gauge!("referee_artifact_queue_depth").set(self.rx.len() as f64);
        if let Err(e) = &sent {
            warn!(error = %e, "artifacts refused");
            metrics::counter!("referee_artifact_jobs_refused_total").increment(1);
            let mut c = self.counts.lock();
            c.refused += 1;
            c.problem(e.to_string(), seq);
        }
        sent
    }

    /// Counts a phrase whose artifacts failed before reaching the queue (e.g. a refused path).
    pub fn record_failure(&self, message: String) {
        metrics::counter!("referee_artifact_errors_total").increment(1);
        let seq = self.next_seq();
        let mut c = self.counts.lock();
        c.failed += 1;
        c.problem(message, seq);
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The counts now.
    pub fn health(&self) -> ArtifactHealth {
        let c = self.counts.lock();
        let (last_error, at) = match &c.last_error {
            Some((m, t)) => (
                Some(m.clone()),
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64()),
            ),
            None => (None, None),
        };
        ArtifactHealth {
            workers: self.workers,
            queue_capacity: self.capacity,
            queued: self.rx.len(),
            written: c.written,
            failed: c.failed,
            refused: c.refused,
            last_error,
            last_error_at_unix_s: at,
            degraded: c.degraded,
        }
    }

    /// Stops taking jobs, lets the workers finish the queue and joins them.
    pub fn shutdown(&self) {
        self.tx.lock().take();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl<J> Drop for WorkerPool<J> {
    fn drop(&mut self) {
        // Without an explicit shutdown the workers end once the queue is closed and drained.
        self.tx.lock().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A pool whose jobs wait until `release` closes, so the queue fills deterministically.
    fn blocked_pool(workers: usize, queue: usize) -> (WorkerPool<u32>, Sender<()>) {
        let (release, gate) = crossbeam_channel::unbounded::<()>();
        let (started_tx, started) = crossbeam_channel::unbounded::<()>();
        let pool = WorkerPool::start("test-pool", workers, queue, move |n: u32| {
            let _ = started_tx.send(());
            let _ = gate.recv();
            if n.is_multiple_of(2) {
                Ok(())
            } else {
                Err(format!("job {n} failed"))
            }
        });
        // Occupy every worker, then the queue.
        for n in 0..workers as u32 {
            pool.submit(n * 2).expect("a worker takes it");
        }
        for _ in 0..workers {
            started
                .recv_timeout(Duration::from_secs(10))
                .expect("worker started");
        }
        (pool, release)
    }

    #[test]
    fn unbounded_artifacts_pool_refuses_past_its_queue_and_counts_everything() {
        let (pool, release) = blocked_pool(2, 3);
        for n in 0..3 {
            pool.submit(10 + n).expect("queued");
        }
        assert_eq!(pool.health().queued, 3);
        assert_eq!(pool.submit(99), Err(Refused::Full(3)));
        assert_eq!(pool.submit(98), Err(Refused::Full(3)));
        let h = pool.health();
        assert_eq!((h.refused, h.workers, h.queue_capacity), (2, 2, 3));
        assert!(h.degraded, "a refused phrase degrades until one is written");
        assert!(h
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("queue is full"));
        assert!(h.last_error_at_unix_s.is_some());
        drop(release);
        pool.shutdown();
        let h = pool.health();
        // 0, 2 (the workers' first jobs), 10, 12 succeed; 11 fails.
        assert_eq!((h.written, h.failed, h.refused, h.queued), (4, 1, 2, 0));
        assert!(
            h.degraded,
            "the phrases written were all queued before the refusals"
        );
        assert_eq!(pool.submit(1), Err(Refused::Stopped));
    }

    #[test]
    fn a_written_phrase_clears_degraded() {
        let pool = WorkerPool::start("test-pool", 1, 4, |n: u32| {
            if n == 1 {
                Err("disk full".into())
            } else {
                Ok(())
            }
        });
        pool.submit(1).expect("queued");
        pool.submit(2).expect("queued");
        pool.shutdown();
        let h = pool.health();
        assert_eq!((h.written, h.failed), (1, 1));
        assert!(!h.degraded);
        assert_eq!(h.last_error.as_deref(), Some("disk full"));
        pool.record_failure("bad path".into());
        assert!(pool.health().degraded);
    }
}
