//! Injection points for the race lab.
//!
//! The review's races need a reader to stop at one precise instruction
//! while other threads free and reuse a VMA. An mm created for a race
//! scenario carries [`RaceHooks`]; the engine calls them at named points.
//! Every mm of ordinary traffic has no hooks, so the fault path pays one
//! load of an immutable `Option` and a predictable branch, and the buggy
//! variants (switches in [`Bugs`]) can never reach ordinary traffic: they
//! exist only inside a scenario's hooks.

use crate::mm::mm_types::ReuseCheck;
use crate::mm::mm_types::{ReadChecks, Vma};
use std::sync::Mutex;

/// Where the engine calls the hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectPoint {
    /// `lock_vma_under_rcu`: the RCU walk returned a VMA, nothing checked yet.
    AfterRcuWalk,
    /// `vma_start_read`: after the early `vm_lock_seq` check, before the
    /// refcount increment (the window of the review's race).
    BetweenSeqCheckAndInc,
    /// `vm_area_dup`: the fields are copied, `vm_mm` not yet set to the child.
    InVmAreaDup,
    /// Pre-fix `vm_area_dup` only: `vma_lock_init(new, true)` has just reset
    /// the copied `vm_refcnt` to 0 (the v7/v8 code: `memcpy`, then
    /// re-initialise the lock).
    InVmaLockInit,
    /// `exit_mmap`: the VMA is about to be detached and freed.
    ExitBeforeDetach,
    /// `lock_vma_under_rcu`: the VMA is read-locked and passed every check;
    /// the fault is about to use it.
    AfterReadLock,
    /// `lock_next_vma`: the RCU walk returned the next VMA, not locked yet.
    MapsAfterVmaNext,
    /// `lock_next_vma`: the locked VMA starts beyond the last printed end
    /// and walking again found another VMA first (a false gap): it is
    /// unlocked, the reader falls back to `mmap_lock`.
    MapsGapRecheckFailed,
    /// `lock_next_vma_under_mmap_lock`: the VMA was found and read-locked
    /// under `mmap_lock` (still held).
    MapsLockedUnderMmapLock,
    /// `show_map`: the maps reader holds the VMA (read-locked, or under
    /// `mmap_lock`) and is about to print its line.
    MapsShowVma,
}

/// Deliberate bugs a scenario can switch on to show what a check is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// `vm_area_dup` copies `vm_refcnt` with the rest (v8 before the fix).
    pub dup_copies_refcnt: bool,
    /// `exit_mmap` frees VMAs without `vma_mark_detached`.
    pub exit_without_detach: bool,
    /// `vma_start_read` skips the `vm_mm` re-check.
    pub skip_mm_check: bool,
    /// `lock_vma_under_rcu` skips the range re-check.
    pub skip_range_check: bool,
    /// `lock_next_vma` skips the re-walk that rules out a false gap before
    /// a VMA that starts beyond the last printed end.
    pub skip_maps_gap_check: bool,
}

type HitFn = Box<dyn Fn(InjectPoint, &Vma) + Send + Sync>;

/// Hooks of one race-lab mm.
pub struct RaceHooks {
    bugs: Bugs,
    on_hit: HitFn,
    /// Checks that refused a reused VMA, in order.
    pub caught: Mutex<Vec<ReuseCheck>>,
    /// Generations (as walked, as locked) of each successful lock.
    pub locks: Mutex<Vec<(u64, u64)>>,
}

impl RaceHooks {
    /// Hooks with `bugs` switched on, calling `on_hit` at each point.
    pub fn new(bugs: Bugs, on_hit: impl Fn(InjectPoint, &Vma) + Send + Sync + 'static) -> Self {
        Self {
            bugs,
            on_hit: Box::new(on_hit),
            caught: Mutex::new(Vec::new()),
            locks: Mutex::new(Vec::new()),
        }
    }

    /// The bugs switched on.
    pub fn bugs(&self) -> &Bugs {
        &self.bugs
    }

    /// The checks `vma_start_read` performs.
    pub fn read_checks(&self) -> ReadChecks {
        ReadChecks {
            vm_mm: !self.bugs.skip_mm_check,
            late_seq: true,
        }
    }

    pub(crate) fn hit(&self, p: InjectPoint, vma: &Vma) {
        (self.on_hit)(p, vma);
    }

    pub(crate) fn verdict_check(&self, c: ReuseCheck) {
        self.caught
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
    }

    pub(crate) fn locked(&self, vma: &Vma, walked_generation: u64) {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((walked_generation, vma.generation()));
    }
}
