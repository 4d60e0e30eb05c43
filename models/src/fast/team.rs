//! A small fork-join team for the fast path: the calling thread plus `n - 1` helpers that
//! spin between ops, so one forward (about 120 parallel ops, 50-500 us each) does not pay a
//! thread wake-up per op.
//!
//! Why not rayon: waking a sleeping worker costs tens of microseconds on a virtual machine
//! (an inter-processor interrupt through the hypervisor), and rayon's workers fall asleep
//! between short ops. Measured with `referee bench pose` on the 2-core machine; see
//! [`super::FastYoloPose::set_threads`]. Helpers spin for [`SPIN`] after their last job,
//! then sleep on a condition variable until the next one.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
pub const SPIN: Duration = Duration::from_millis(5);

/// A job as the helpers see it: a chunk function and the number of chunks.
#[derive(Clone, Copy)]
struct Job {
    /// Lifetime-erased `&(dyn Fn(usize) + Sync)`; valid while the posting `for_each` runs.
    f: *const (dyn Fn(usize) + Sync),
    chunks: usize,
}

// SAFETY: `f` points to a `Sync` closure that `Team::for_each` keeps alive (it does not
// return, even when unwinding, before every helper has finished with it).
unsafe impl Send for Job {}

struct Shared {
    /// Bumped once per posted job.
    epoch: AtomicUsize,
    /// Next chunk to take.
    next: AtomicUsize,
    /// Helpers done with the current epoch.
    done: AtomicUsize,
    /// A helper's chunk panicked.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    job: Mutex<Option<Job>>,
    /// Helpers asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

/// The calling thread plus helper threads; see the module documentation.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Set while a job runs, so a nested `for_each` runs inline instead of deadlocking.
    busy: Cell<bool>,
}

impl Team {
    /// A team of `threads` threads in all (the caller counts as one; `0` or `1`: no helpers).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            job: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut team = Self {
            shared,
            helpers: Vec::new(),
            busy: Cell::new(false),
        };
        for i in 1..threads.max(1) {
            let s = Arc::clone(&team.shared);
            // On error, `team` drops here and stops the helpers already started.
            // Helpers start from epoch 0: a job posted before a helper runs is still seen.
            let h = std::thread::Builder::new()
                .name(format!("pose-{i}"))
                .spawn(move || helper(&s, 0))?;
            team.helpers.push(h);
        }
        Ok(team)
    }

    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(i)` for every `i` in `0..chunks`, spread over the team (chunks are taken in
    /// order, one at a time); returns when all have run. A panic in any chunk is re-raised here.
    pub fn for_each(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() || chunks <= 1 || self.busy.get() {
            (0..chunks).for_each(f);
            return;
        }
        let s = &*self.shared;
        // SAFETY: only erases the lifetime; the pointer is used by helpers only between the
        // epoch bump below and their `done` increment, and `Wait` (even on unwind) does not let
        // this function return before all helpers have incremented `done`.
        let job = Job {
            f: unsafe {
                std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
            },
            chunks,
        };
        *lock(&s.job) = Some(job);
        s.next.store(0, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = lock(&s.sleep_lock);
            s.wake.notify_all();
        }
        self.busy.set(true);
        let wait = Wait {
            shared: s,
            helpers: self.helpers.len(),
            busy: &self.busy,
        };
        take_chunks(s, f, chunks);
        drop(wait);
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a pose helper thread panicked");
        }
    }
}

/// Waits (spinning) until every helper is done with the current job; runs on drop so that an
/// unwinding caller also waits.
struct Wait<'a> {
    shared: &'a Shared,
    helpers: usize,
    busy: &'a Cell<bool>,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let mut spins = 0u32;
        while self.shared.done.load(Ordering::Acquire) < self.helpers {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                // A descheduled helper: let it run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        *lock(&self.shared.job) = None;
        self.busy.set(false);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = lock(&self.shared.sleep_lock);
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn take_chunks(s: &Shared, f: &(dyn Fn(usize) + Sync), chunks: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            break;
        }
        f(i);
    }
}

fn helper(s: &Shared, mut seen: usize) {
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            if idle_since.elapsed() < SPIN {
                continue;
            }
            let mut g = lock(&s.sleep_lock);
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            idle_since = Instant::now();
        }
        let job = *lock(&s.job);
        if let Some(job) = job {
            // SAFETY: see `Job`: the poster waits for our `done` increment below.
            let f = unsafe { &*job.f };
            if catch_unwind(AssertUnwindSafe(|| take_chunks(s, f, job.chunks))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
                // Let the poster stop early: no more chunks for anyone.
                s.next.store(usize::MAX / 2, Ordering::Relaxed);
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

thread_local! {
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// Makes `team` the one [`par_chunks`] uses on this thread while `f` runs.
pub fn install<R>(team: &Team, f: impl FnOnce() -> R) -> R {
    struct Restore(*const Team);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(team as *const Team)));
    f()
}

/// Threads of the installed team (1 when none).
pub fn current_threads() -> usize {
    with_current(|t| t.map_or(1, Team::threads))
}

/// Runs `f(i)` for `i` in `0..chunks` on the installed team, or inline when none is installed.
pub fn par_chunks(chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    with_current(|t| match t {
        Some(team) => team.for_each(chunks, f),
        None => (0..chunks).for_each(f),
    })
}

fn with_current<R>(f: impl FnOnce(Option<&Team>) -> R) -> R {
    let p = CURRENT.with(Cell::get);
    // SAFETY: `install` sets the pointer from a live `&Team` and restores the previous value
    // before that borrow ends, so a non-null pointer here refers to a live team.
    f(unsafe { p.as_ref() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_chunk_runs_once() {
        for threads in [1, 2, 3] {
            let team = Team::new(threads).expect("team");
            for chunks in [0, 1, 2, 7, 64] {
                let hits: Vec<AtomicU64> = (0..chunks).map(|_| AtomicU64::new(0)).collect();
                for _ in 0..200 {
                    team.for_each(chunks, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 200));
            }
        }
    }

    #[test]
    fn helpers_take_work_and_wake_after_sleeping() {
        let team = Team::new(2).expect("team");
        let seen = Mutex::new(std::collections::HashSet::new());
        let job = |_: usize| {
            lock(&seen).insert(std::thread::current().id());
            std::thread::sleep(Duration::from_millis(2));
        };
        team.for_each(8, &job);
        // Past the spin time the helper sleeps; the next job must still reach it.
        std::thread::sleep(SPIN * 3);
        team.for_each(8, &job);
        assert_eq!(lock(&seen).len(), 2, "both threads ran chunks");
    }

    #[test]
    fn nested_and_installed_calls_run_inline() {
        let team = Team::new(2).expect("team");
        let total = AtomicU64::new(0);
        install(&team, || {
            assert_eq!(current_threads(), 2);
            par_chunks(4, &|_| {
                // nested: inline on whichever thread runs this chunk
                par_chunks(3, &|_| {
                    total.fetch_add(1, Ordering::Relaxed);
                });
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
        assert_eq!(current_threads(), 1, "uninstalled after install returns");
    }

    #[test]
    fn a_panicking_chunk_is_reported_and_the_team_survives() {
        let team = Team::new(2).expect("team");
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.for_each(16, &|i| {
                if i == 5 {
                    panic!("chunk 5");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicU64::new(0);
        team.for_each(16, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 16);
    }
}
