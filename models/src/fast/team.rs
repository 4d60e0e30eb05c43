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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
pub const SPIN: Duration = Duration::from_millis(5);

/// A job as the helpers see it: the chunk function (the chunks are in [`Shared::left`]).
#[derive(Clone, Copy)]
struct Job {
    /// Lifetime-erased `&(dyn Fn(usize) + Sync)`; valid while the posting `for_each` runs.
    f: *const (dyn Fn(usize) + Sync),
}

// SAFETY: `f` points to a `Sync` closure that `Team::for_each` keeps alive (it does not
// return, even when unwinding, before every helper has finished with it).
unsafe impl Send for Job {}

struct Shared {
    /// Bumped once per posted job.
    epoch: AtomicUsize,
    /// Chunks not yet taken: `lo` in the low 32 bits, `hi` (exclusive) in the high 32 bits.
    /// The caller takes from the front, odd helpers from the back, so with two threads each
    /// keeps working on the same rows from op to op (their data stays in its core's cache)
    /// while the meeting point still balances a slower core.
    left: AtomicU64,
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
            left: AtomicU64::new(0),
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
                .spawn(move || helper(&s, 0, i % 2 == 1))?;
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
        // (chunk indices travel as 32-bit halves of one atomic)
        if self.helpers.is_empty() || chunks <= 1 || chunks > u32::MAX as usize || self.busy.get() {
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
        };
        *lock(&s.job) = Some(job);
        s.left.store(span(0, chunks), Ordering::Relaxed);
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
        take_chunks(s, f, false);
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

/// `lo..hi` packed for [`Shared::left`].
fn span(lo: usize, hi: usize) -> u64 {
    (lo as u64 & 0xffff_ffff) | ((hi as u64) << 32)
}

/// Takes and runs chunks from the front (or the back) of [`Shared::left`] until none is left.
fn take_chunks(s: &Shared, f: &(dyn Fn(usize) + Sync), from_back: bool) {
    let mut cur = s.left.load(Ordering::Relaxed);
    loop {
        let (lo, hi) = ((cur & 0xffff_ffff) as usize, (cur >> 32) as usize);
        if lo >= hi {
            break;
        }
        let (i, next) = if from_back {
            (hi - 1, span(lo, hi - 1))
        } else {
            (lo, span(lo + 1, hi))
        };
        match s
            .left
            .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {
                f(i);
                cur = s.left.load(Ordering::Relaxed);
            }
            Err(now) => cur = now,
        }
    }
}

fn helper(s: &Shared, mut seen: usize, from_back: bool) {
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
            if catch_unwind(AssertUnwindSafe(|| take_chunks(s, f, from_back))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
                // Let the poster stop early: no more chunks for anyone.
                s.left.store(0, Ordering::Relaxed);
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
