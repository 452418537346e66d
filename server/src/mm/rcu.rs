//! RCU for the engine, on top of `crossbeam-epoch`.
//!
//! `rcu_read_lock()` is `crossbeam_epoch::pin()`, `call_rcu()` is
//! `Guard::defer`, and a grace period has elapsed for everything deferred
//! once crossbeam runs the deferred function. crossbeam does not expose its
//! epoch, so grace periods are made observable the way the kernel's polled
//! API does it (`get_state_synchronize_rcu` / `poll_state_synchronize_rcu`):
//! at most one *marker* callback is in flight; when it runs, every reader
//! that was pinned when it was queued has left, and the completed count
//! advances. A cookie names "the first marker queued after now", so
//! `poll_state_synchronize_rcu(cookie)` is true only once a full grace period
//! has passed since the cookie was taken. It can answer "not yet" a little
//! longer than strictly needed (markers are not queued back to back while
//! nobody asks), never "yes" too early.

use crate::mm::sync::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use crossbeam_epoch::Guard as RcuReadGuard;

/// Enter an RCU read-side critical section. Dropping the guard leaves it.
///
/// While a guard is alive, nothing passed to [`Rcu::call_rcu`] after the
/// guard was taken runs.
#[inline]
pub fn rcu_read_lock() -> RcuReadGuard {
    crossbeam_epoch::pin()
}

/// A thread inside one RCU read-side critical section until dropped: the
/// slow reader (a big `/proc/PID/maps` read, a reader preempted in its
/// section) that holds every grace period back. With the `rcu` policy
/// freed VMAs then wait and the cache carves new slabs; with `typesafe`
/// they are reused at once. Used by `vmasim demo` and the tests that show
/// it.
#[cfg(not(vmasim_loom))]
pub struct SlowReader {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(not(vmasim_loom))]
impl SlowReader {
    /// Enter the read section on a new thread; returns once it is held.
    pub fn hold() -> Self {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let guard = rcu_read_lock();
            let _ = held_tx.send(());
            // Returns when the sender is dropped as well as on a message.
            let _ = release_rx.recv();
            drop(guard);
        });
        let _ = held_rx.recv();
        SlowReader {
            release: Some(release),
            thread: Some(thread),
        }
    }
}

#[cfg(not(vmasim_loom))]
impl Drop for SlowReader {
    /// Leave the read section and wait for the thread.
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct GpState {
    /// Markers queued so far; marker `n` is the n-th grace period asked for.
    started: AtomicU64,
    /// Highest marker whose grace period has completed.
    completed: AtomicU64,
    /// A marker is queued and has not run yet.
    in_flight: AtomicBool,
    /// Somebody took a cookie while a marker was in flight, so a new marker
    /// must follow the current one.
    wanted: AtomicBool,
    /// `call_rcu` callbacks queued and not yet run.
    callbacks_pending: AtomicU64,
}

/// Grace-period bookkeeping for one engine instance.
///
/// ```
/// use vmasim_server::mm::Rcu;
/// let rcu = Rcu::new();
/// let cookie = rcu.get_state_synchronize_rcu();
/// assert!(!rcu.poll_state_synchronize_rcu(cookie));
/// rcu.synchronize_rcu();
/// assert!(rcu.poll_state_synchronize_rcu(cookie));
/// assert!(rcu.grace_periods() >= 1);
/// ```
#[derive(Clone, Default)]
pub struct Rcu {
    gp: Arc<GpState>,
}

impl Rcu {
    /// A fresh instance with no grace period observed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue `f` to run after a grace period (`call_rcu`).
    pub fn call_rcu(&self, guard: &RcuReadGuard, f: impl FnOnce() + Send + 'static) {
        // Relaxed: the pending count is statistics only.
        self.gp.callbacks_pending.fetch_add(1, Ordering::Relaxed);
        // Relaxed: a hint (see get_state_synchronize_rcu). Asking for a
        // marker keeps the grace-period count honest in `rcu` mode too.
        self.gp.wanted.store(true, Ordering::Relaxed);
        let gp = self.gp.clone();
        guard.defer(move || {
            f();
            gp.callbacks_pending.fetch_sub(1, Ordering::Relaxed);
        });
        self.request_gp(guard);
    }

    /// `call_rcu` callbacks queued that have not run yet.
    pub fn callbacks_pending(&self) -> u64 {
        self.gp.callbacks_pending.load(Ordering::Relaxed)
    }

    /// A cookie for "a grace period that starts after this call". Also makes
    /// sure such a grace period will be started.
    pub fn get_state_synchronize_rcu(&self) -> u64 {
        // Acquire pairs with the AcqRel increment in `start_marker`: if we
        // see marker n as started, n's own defer happened before our free,
        // so only n + 1 is guaranteed to cover readers pinned now.
        let cookie = self.gp.started.load(Ordering::Acquire) + 1;
        // Relaxed: a hint to the marker callback; a missed hint only delays
        // the observation, it never makes a cookie complete early. Load
        // first so the common case (already wanted) writes no shared line.
        if !self.gp.wanted.load(Ordering::Relaxed) {
            self.gp.wanted.store(true, Ordering::Relaxed);
        }
        cookie
    }

    /// Has a full grace period passed since `cookie` was taken?
    #[inline]
    pub fn poll_state_synchronize_rcu(&self, cookie: u64) -> bool {
        // Acquire pairs with the Release `fetch_max` in the marker callback.
        self.gp.completed.load(Ordering::Acquire) >= cookie
    }

    /// Grace periods observed so far.
    pub fn grace_periods(&self) -> u64 {
        self.gp.completed.load(Ordering::Acquire)
    }

    /// Start a marker if none is in flight and one was asked for.
    pub fn request_gp(&self, guard: &RcuReadGuard) {
        if self.gp_needed() {
            start_marker(&self.gp, guard);
        }
    }

    /// Is a marker wanted and none in flight? Two plain loads: callers on
    /// hot paths check this before pinning, so that the common case (a
    /// marker already in flight) costs no pin and no shared-line write.
    #[inline]
    pub fn gp_needed(&self) -> bool {
        // Relaxed: a stale answer only delays or duplicates a check;
        // start_marker's swap decides.
        self.gp.wanted.load(Ordering::Relaxed) && !self.gp.in_flight.load(Ordering::Relaxed)
    }

    /// Wait for a full grace period (`synchronize_rcu`). Must not be called
    /// with an [`RcuReadGuard`] held by this thread: it would wait for itself.
    pub fn synchronize_rcu(&self) {
        let cookie = self.get_state_synchronize_rcu();
        let backoff = crossbeam_utils::Backoff::new();
        while !self.poll_state_synchronize_rcu(cookie) {
            let guard = rcu_read_lock();
            self.request_gp(&guard);
            // flush() moves this thread's deferred functions to the global
            // queue and tries to advance the epoch and run what is due.
            guard.flush();
            drop(guard);
            crate::mm::sync::spin_wait(&backoff);
        }
    }

    /// Wait until every `call_rcu` callback queued so far has run
    /// (`rcu_barrier`), giving up after `max_rounds` flushes. Returns whether
    /// none is pending. Callbacks sitting in another live thread's local bag
    /// only run once that thread pins again, hence the bound.
    pub fn rcu_barrier(&self, max_rounds: usize) -> bool {
        for _ in 0..max_rounds {
            if self.callbacks_pending() == 0 {
                return true;
            }
            self.synchronize_rcu();
        }
        self.callbacks_pending() == 0
    }
}

fn start_marker(gp: &Arc<GpState>, guard: &RcuReadGuard) {
    // AcqRel: exactly one thread wins in_flight; it must see the wanted flag
    // of everybody who set it before the previous marker cleared in_flight.
    if gp.in_flight.swap(true, Ordering::AcqRel) {
        return;
    }
    gp.wanted.store(false, Ordering::Relaxed);
    // AcqRel: see `get_state_synchronize_rcu`.
    let n = gp.started.fetch_add(1, Ordering::AcqRel) + 1;
    let state = gp.clone();
    guard.defer(move || {
        // Release: a poller that sees `completed >= n` also sees everything
        // that happened before this grace period ended.
        state.completed.fetch_max(n, Ordering::Release);
        state.in_flight.store(false, Ordering::Release);
        if state.wanted.load(Ordering::Relaxed) {
            // Queue the next marker right away so cookies taken during this
            // grace period complete without waiting for new traffic.
            let g = crossbeam_epoch::pin();
            start_marker(&state, &g);
        }
    });
    // Push the marker out of this thread's local bag, or an idle thread
    // could sit on it forever.
    guard.flush();
}

#[cfg(all(test, not(vmasim_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn pinned_reader_holds_back_call_rcu() {
        let rcu = Rcu::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let reader = SlowReader::hold();
        {
            let g = rcu_read_lock();
            let ran = ran.clone();
            rcu.call_rcu(&g, move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        for _ in 0..200 {
            rcu_read_lock().flush();
        }
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "ran while a reader was pinned"
        );
        assert_eq!(rcu.callbacks_pending(), 1);
        drop(reader);
        assert!(rcu.rcu_barrier(10_000));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn cookie_completes_only_after_grace_period() {
        let rcu = Rcu::new();
        let before = rcu.grace_periods();
        let c = rcu.get_state_synchronize_rcu();
        assert!(!rcu.poll_state_synchronize_rcu(c));
        rcu.synchronize_rcu();
        assert!(rcu.poll_state_synchronize_rcu(c));
        assert!(rcu.grace_periods() > before);
        let c2 = rcu.get_state_synchronize_rcu();
        assert!(c2 > c);
    }
}
