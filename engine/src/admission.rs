//! Admission: the permits that bound the frames inside the pipeline, the checks a session
//! start must pass, and the memory each session is charged against the budget.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::event::SessionSpec;

/// Called (from a pipeline thread) each time a permit comes back; drivers use it to wake
/// whatever waits for room. It must not block.
pub type ReleaseHook = Arc<dyn Fn() + Send + Sync>;

/// A counting gate: at most `capacity` frames inside the pipeline.
pub(crate) struct Permits {
    capacity: usize,
    free: Mutex<usize>,
    room: Condvar,
    closed: AtomicBool,
    on_release: Mutex<Option<ReleaseHook>>,
}

impl Permits {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(Self {
            capacity,
            free: Mutex::new(capacity),
            room: Condvar::new(),
            closed: AtomicBool::new(false),
            on_release: Mutex::new(None),
        })
    }

    /// A permit if one is free now.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Result<Option<FramePermit>, EngineError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let mut free = self.free.lock();
        if *free == 0 {
            return Ok(None);
        }
        *free -= 1;
        Ok(Some(FramePermit {
            permits: self.clone(),
        }))
    }

    /// Waits (blocking this thread) until a permit is free or the gate closes.
    pub(crate) fn acquire(self: &Arc<Self>) -> Result<FramePermit, EngineError> {
        let mut free = self.free.lock();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(EngineError::ShuttingDown);
            }
            if *free > 0 {
                *free -= 1;
                return Ok(FramePermit {
                    permits: self.clone(),
                });
            }
            self.room.wait(&mut free);
        }
    }

    pub(crate) fn set_release_hook(&self, hook: ReleaseHook) {
        *self.on_release.lock() = Some(hook);
    }

    /// Permits currently held (frames inside the pipeline).
    pub(crate) fn in_use(&self) -> usize {
        self.capacity - *self.free.lock()
    }

    /// Refuses every later request and wakes every waiter.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = self.free.lock();
        self.room.notify_all();
        drop(_guard);
        self.notify_hook();
    }

    fn release(&self) {
        {
            let mut free = self.free.lock();
            *free = (*free + 1).min(self.capacity);
        }
        self.room.notify_one();
        self.notify_hook();
    }

    fn notify_hook(&self) {
        let hook = self.on_release.lock().clone();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// The right to put one frame into the pipeline; it goes back when dropped (when the frame
/// leaves the pose stage, or is refused).
pub struct FramePermit {
    permits: Arc<Permits>,
}

impl Drop for FramePermit {
    fn drop(&mut self) {
        self.permits.release();
    }
}

/// Checks a session start: a safe id, a sane frame rate and size.
pub(crate) fn validate_spec(spec: &SessionSpec) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::BadSessionStart(m));
    if let Err(m) = check_safe_name(&spec.id) {
        return bad(format!("session_id {m}"));
    }
    if !(spec.fps.is_finite() && spec.fps > 0.0 && spec.fps <= 1000.0) {
        return bad(format!("fps {} must be in (0, 1000]", spec.fps));
    }
    if spec.width == 0 || spec.height == 0 || spec.width > 8192 || spec.height > 8192 {
        return bad(format!(
            "frame size {}x{} must be between 1x1 and 8192x8192",
            spec.width, spec.height
        ));
    }
    Ok(())
}

/// Longest session id (it names a folder under the output directory).
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A session id becomes a folder name under the output directory, so it must be a safe name:
/// 1-[`MAX_SESSION_ID_LEN`] ASCII letters, digits, '-', '_' or '.', not starting with '.'
/// (which also rules out "." and ".."), so it can never leave that directory or hide there.
pub fn check_safe_name(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_LEN {
        return Err(format!("must be 1-{MAX_SESSION_ID_LEN} characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{id:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    if id.starts_with('.') {
        return Err(format!("{id:?} must not start with '.'"));
    }
    Ok(())
}

/// Bytes a session may hold: the reorder window of decoded poses is small; the image ring kept
/// for the overlay artifact (two seconds of encoded frames) and one decoded frame dominate.
pub(crate) fn session_memory_estimate(spec: &SessionSpec, cfg: &EngineConfig) -> u64 {
    let pixels = spec.width as u64 * spec.height as u64;
    let ring = crate::session::image_ring_len(spec.fps) as u64 * pixels / 4;
    let working = pixels * 3 * 2 + (cfg.rectify.target.0 * cfg.rectify.target.1 * 12) as u64;
    ring + working
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_bound_and_come_back() {
        let p = Permits::new(2);
        let a = p.try_acquire().unwrap().expect("first");
        let _b = p.try_acquire().unwrap().expect("second");
        assert!(p.try_acquire().unwrap().is_none(), "only two");
        assert_eq!(p.in_use(), 2);
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        p.set_release_hook(Arc::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }));
        drop(a);
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert!(p.try_acquire().unwrap().is_some());
        p.close();
        assert!(matches!(p.try_acquire(), Err(EngineError::ShuttingDown)));
        assert!(matches!(p.acquire(), Err(EngineError::ShuttingDown)));
    }
}
