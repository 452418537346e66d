//! The atomics and locks the engine is built from, switched to `loom`'s
//! versions under `--cfg vmasim_loom` so the model checker sees every access.
//!
//! Only the lock-free core (`vma`, `slab`, `vmstat`) is compiled under loom;
//! the rest of the engine uses these names too so the two never drift apart.

#[cfg(vmasim_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(vmasim_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(not(vmasim_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(vmasim_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Back off while waiting for another thread (a writer draining readers, a
/// slab being published). Under loom this must yield to the scheduler, or
/// the model would spin forever on one thread.
#[inline]
pub(crate) fn spin_wait(backoff: &crossbeam_utils::Backoff) {
    #[cfg(vmasim_loom)]
    {
        let _ = backoff;
        loom::thread::yield_now();
    }
    #[cfg(not(vmasim_loom))]
    {
        if backoff.is_completed() {
            std::thread::yield_now();
        } else {
            backoff.snooze();
        }
    }
}
