//! The RCU interface under `--cfg vmasim_loom`.
//!
//! crossbeam-epoch is not visible to loom (its thread-locals and atomics
//! are std's), so the loom models replace it with this stand-in: read
//! guards are tokens and no grace period ever completes. That is exactly
//! the `typesafe` policy's worst case (every reuse happens "before a grace
//! period"), which is what the models check; the `rcu` policy's deferral is
//! crossbeam's own, model-checked upstream.

/// Stand-in read guard.
pub struct RcuReadGuard;

impl RcuReadGuard {
    /// No-op.
    pub fn flush(&self) {}
}

/// Enter a (pretend) read-side section.
pub fn rcu_read_lock() -> RcuReadGuard {
    RcuReadGuard
}

/// Grace-period bookkeeping that never observes a grace period.
#[derive(Clone, Default)]
pub struct Rcu;

impl Rcu {
    /// A new instance.
    pub fn new() -> Self {
        Rcu
    }
    /// Runs `f` never: the models use only the `typesafe` policy.
    pub fn call_rcu(&self, _guard: &RcuReadGuard, f: impl FnOnce() + Send + 'static) {
        drop(f);
    }
    /// A cookie that never completes.
    pub fn get_state_synchronize_rcu(&self) -> u64 {
        1
    }
    /// Never.
    pub fn poll_state_synchronize_rcu(&self, _cookie: u64) -> bool {
        false
    }
    /// Zero.
    pub fn grace_periods(&self) -> u64 {
        0
    }
    /// No-op.
    pub fn request_gp(&self, _guard: &RcuReadGuard) {}
    /// Never.
    pub fn gp_needed(&self) -> bool {
        false
    }
}
