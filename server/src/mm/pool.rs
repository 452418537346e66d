//! The VMA cache: a lock-free, type-stable pool of [`Vma`] slots, the
//! analog of `vm_area_cachep` (`kmem_cache`).
//!
//! Slots live in slabs that are allocated on demand and **never** handed
//! back while the pool exists, so a reader holding a slot index found under
//! RCU always reads a valid `Vma`, possibly a reused one. That is what
//! `SLAB_TYPESAFE_BY_RCU` promises: type stability, not identity. The
//! per-VMA lock protocol (see [`crate::mm::mm_types`]) detects a reuse.
//!
//! Free slots sit on a Treiber stack whose head carries a tag, so a slot
//! popped and pushed back between a thread's load and its CAS (ABA) makes
//! the CAS fail. Two free policies:
//!
//! * [`CachePolicy::Typesafe`]: `vm_area_free` pushes the slot at once; it
//!   may be reused while RCU readers still look at it.
//! * [`CachePolicy::Rcu`]: the pre-6.15 scheme: every free goes through
//!   `call_rcu`, and the slot is reusable only after a grace period.
//!
//! Slot indices, not pointers, are handed out: with slabs that never move
//! or die, an index is as good as a pointer and needs no `unsafe` to use.

use crate::mm::mm_types::{VM_LOCK_SEQ_UNLOCKED, Vma};
use crate::mm::rcu::{Rcu, RcuReadGuard};
use crate::mm::sync::{AtomicU32, AtomicU64, Ordering};
use crate::mm::vmstat::Counters;
use std::sync::{Arc, Weak};

/// Slots per slab. 64 slots of 128 bytes: one 8 KiB allocation.
pub const SLAB_SIZE: u32 = 64;

/// Index of a slot in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmaIdx(pub u32);

/// How freed slots come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CachePolicy {
    /// `SLAB_TYPESAFE_BY_RCU`: reuse at once.
    #[default]
    Typesafe,
    /// `call_rcu` per free: reuse after a grace period.
    Rcu,
}

impl CachePolicy {
    /// The name used in flags, metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CachePolicy::Typesafe => "typesafe",
            CachePolicy::Rcu => "rcu",
        }
    }
}

impl std::str::FromStr for CachePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "typesafe" => Ok(CachePolicy::Typesafe),
            "rcu" => Ok(CachePolicy::Rcu),
            _ => Err(format!(
                "unknown VMA cache policy {s:?} (expected typesafe or rcu)"
            )),
        }
    }
}

/// Allocation failed: every slot up to the capacity is live or waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolExhausted {
    /// The configured capacity in slots.
    pub capacity: u32,
}

const FRESH: usize = 0;
const REUSED: usize = 1;
const REUSE_BEFORE_GP: usize = 2;
const FREES: usize = 3;
const CALL_RCU: usize = 4;
const CALL_RCU_AVOIDED: usize = 5;
const RCU_FREED: usize = 6;
const NR_POOL_EVENTS: usize = 7;

/// The pool's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Allocations served by a never-used slot.
    pub alloc_fresh: u64,
    /// Allocations served by a slot that had been freed before.
    pub alloc_reused: u64,
    /// Reuses that happened before a grace period had passed since the
    /// slot's free (only possible with `Typesafe`).
    pub reuse_before_gp: u64,
    /// `vm_area_free` calls.
    pub frees: u64,
    /// Frees that went through `call_rcu`.
    pub call_rcu: u64,
    /// Frees that did not need `call_rcu` (`Typesafe`).
    pub call_rcu_avoided: u64,
    /// Grace periods observed.
    pub grace_periods: u64,
    /// Slots allocated and not freed.
    pub live: u64,
    /// Slots on the free list.
    pub free: u64,
    /// Slots freed through `call_rcu` whose grace period has not ended.
    pub waiting: u64,
    /// Slabs allocated.
    pub slabs: u64,
    /// Maximum number of slots.
    pub capacity: u64,
}

/// Slab storage. Under loom every slab is allocated up front (models use a
/// handful of slots); otherwise slabs are created on first use and
/// published through a `OnceLock`, whose `get` is a lock-free Acquire load.
struct Slabs {
    #[cfg(not(vmasim_loom))]
    slabs: Box<[std::sync::OnceLock<Box<[Vma]>>]>,
    #[cfg(vmasim_loom)]
    slabs: Box<[Box<[Vma]>]>,
}

fn new_slab() -> Box<[Vma]> {
    (0..SLAB_SIZE).map(|_| Vma::default()).collect()
}

impl Slabs {
    fn new(nr: usize) -> Self {
        #[cfg(not(vmasim_loom))]
        let slabs = (0..nr).map(|_| std::sync::OnceLock::new()).collect();
        #[cfg(vmasim_loom)]
        let slabs = (0..nr).map(|_| new_slab()).collect();
        Self { slabs }
    }

    #[inline]
    fn get(&self, idx: u32) -> &Vma {
        let (slab, off) = ((idx / SLAB_SIZE) as usize, (idx % SLAB_SIZE) as usize);
        #[cfg(not(vmasim_loom))]
        let slab = self.slabs[slab]
            .get()
            .expect("slot index from a slab that was never allocated");
        #[cfg(vmasim_loom)]
        let slab = &self.slabs[slab];
        &slab[off]
    }

    fn ensure(&self, idx: u32) {
        #[cfg(not(vmasim_loom))]
        self.slabs[(idx / SLAB_SIZE) as usize].get_or_init(new_slab);
        #[cfg(vmasim_loom)]
        let _ = (idx, new_slab);
    }
}

/// The VMA cache. Create it with [`VmaCache::new`]; it is always shared.
///
/// ```
/// use vmasim_server::mm::pool::{CachePolicy, VmaCache};
/// let pool = VmaCache::new(CachePolicy::Typesafe, 128);
/// let (a, _) = pool.vm_area_alloc().unwrap();
/// pool.vm_area_free(a);
/// let (b, _) = pool.vm_area_alloc().unwrap();
/// assert_eq!(a, b, "typesafe reuses the slot at once");
/// assert_eq!(pool.stats().alloc_reused, 1);
/// ```
pub struct VmaCache {
    policy: CachePolicy,
    capacity: u32,
    slabs: Slabs,
    /// Never-used slots are handed out from here upwards.
    next_fresh: AtomicU32,
    /// Treiber stack head: `tag << 32 | (index + 1)`, 0 in the low half = empty.
    free_head: AtomicU64,
    rcu: Rcu,
    counters: Counters<NR_POOL_EVENTS>,
    this: Weak<VmaCache>,
    /// A race-lab pool tolerates the deliberate bugs of buggy scenarios
    /// (freeing an attached VMA) instead of treating them as fatal.
    race_lab: bool,
}

impl VmaCache {
    /// A pool of at most `capacity` slots (rounded up to whole slabs).
    pub fn new(policy: CachePolicy, capacity: u32) -> Arc<Self> {
        Self::with_rcu(policy, capacity, Rcu::new())
    }

    /// A pool that reports grace periods through `rcu`.
    pub fn with_rcu(policy: CachePolicy, capacity: u32, rcu: Rcu) -> Arc<Self> {
        let capacity = capacity.clamp(1, u32::MAX - SLAB_SIZE);
        let nr_slabs = capacity.div_ceil(SLAB_SIZE);
        Arc::new_cyclic(|this| Self {
            policy,
            capacity: nr_slabs * SLAB_SIZE,
            slabs: Slabs::new(nr_slabs as usize),
            next_fresh: AtomicU32::new(0),
            free_head: AtomicU64::new(0),
            rcu,
            counters: Counters::new(),
            this: this.clone(),
            race_lab: false,
        })
    }

    /// A private pool for a race-lab scenario (see [`crate::mm::race`]).
    pub fn new_for_race_lab(policy: CachePolicy, capacity: u32) -> Arc<Self> {
        let capacity = capacity.clamp(1, u32::MAX - SLAB_SIZE);
        let nr_slabs = capacity.div_ceil(SLAB_SIZE);
        Arc::new_cyclic(|this| Self {
            policy,
            capacity: nr_slabs * SLAB_SIZE,
            slabs: Slabs::new(nr_slabs as usize),
            next_fresh: AtomicU32::new(0),
            free_head: AtomicU64::new(0),
            rcu: Rcu::new(),
            counters: Counters::new(),
            this: this.clone(),
            race_lab: true,
        })
    }

    /// The free policy.
    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    /// The grace-period tracker.
    pub fn rcu(&self) -> &Rcu {
        &self.rcu
    }

    /// The slot at `idx`. Valid for every index the pool ever handed out,
    /// for as long as the pool lives, whatever the slot's state.
    #[inline]
    pub fn get(&self, idx: VmaIdx) -> &Vma {
        self.slabs.get(idx.0)
    }

    /// `vm_area_alloc`: a detached, unlocked slot with a new generation.
    pub fn vm_area_alloc(&self) -> Result<(VmaIdx, &Vma), PoolExhausted> {
        let idx = match self.pop_free() {
            Some(idx) => {
                self.counters.inc(REUSED);
                let cookie = self.get(idx).freed_cookie.load(Ordering::Relaxed);
                if !self.rcu.poll_state_synchronize_rcu(cookie) {
                    self.counters.inc(REUSE_BEFORE_GP);
                }
                idx
            }
            None => {
                let idx = self.alloc_fresh()?;
                self.counters.inc(FRESH);
                idx
            }
        };
        let vma = self.get(idx);
        // A freed slot is always detached: exit_mmap and munmap detach
        // before freeing, and readers cannot raise a zero count. This is the
        // invariant SLAB_TYPESAFE_BY_RCU rests on, so check it always.
        if !self.race_lab {
            assert_eq!(
                vma.vm_refcnt.load(Ordering::Relaxed),
                0,
                "allocating an attached vma"
            );
        }
        // vma_lock_init(vma, false): refcnt stays 0, lock sequence reset.
        // Relaxed: the slot is published to readers only by
        // vma_mark_attached's Release.
        vma.vm_lock_seq
            .store(VM_LOCK_SEQ_UNLOCKED, Ordering::Relaxed);
        // Release so a reader that Acquire-loads the generation after
        // taking a reference sees the new one.
        vma.generation.fetch_add(1, Ordering::Release);
        Ok((idx, vma))
    }

    fn alloc_fresh(&self) -> Result<VmaIdx, PoolExhausted> {
        // Relaxed CAS: the index itself publishes nothing; the slab is
        // published by its OnceLock.
        let mut cur = self.next_fresh.load(Ordering::Relaxed);
        loop {
            if cur >= self.capacity {
                return Err(PoolExhausted {
                    capacity: self.capacity,
                });
            }
            match self.next_fresh.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
        self.slabs.ensure(cur);
        Ok(VmaIdx(cur))
    }

    fn pop_free(&self) -> Option<VmaIdx> {
        // Acquire: pairs with the Release CAS of push_free, so we read the
        // next_free link and the slot state the freeing thread left.
        let mut head = self.free_head.load(Ordering::Acquire);
        loop {
            let top = (head & 0xffff_ffff) as u32;
            if top == 0 {
                return None;
            }
            let idx = top - 1;
            // Relaxed: the Acquire on head ordered it. The slot may be popped
            // by another thread meanwhile; then `next` is stale and the
            // tagged CAS below fails.
            let next = self.get(VmaIdx(idx)).next_free.load(Ordering::Relaxed);
            let new = (((head >> 32) + 1) << 32) | u64::from(next);
            match self.free_head.compare_exchange_weak(
                head,
                new,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(VmaIdx(idx)),
                Err(h) => head = h,
            }
        }
    }

    fn push_free(&self, idx: VmaIdx) {
        let slot = self.get(idx);
        let mut head = self.free_head.load(Ordering::Relaxed);
        loop {
            // Relaxed store: published by the Release CAS below.
            slot.next_free
                .store((head & 0xffff_ffff) as u32, Ordering::Relaxed);
            let new = (((head >> 32) + 1) << 32) | u64::from(idx.0 + 1);
            // Release: the next popper sees next_free and the detached slot.
            match self.free_head.compare_exchange_weak(
                head,
                new,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// `vm_area_free`. The VMA must be detached.
    pub fn vm_area_free(&self, idx: VmaIdx) {
        match self.policy {
            // The typesafe free needs no read section: it pins only when a
            // grace-period marker must be queued, which is rare.
            CachePolicy::Typesafe => self.free_typesafe(idx, None),
            CachePolicy::Rcu => {
                let guard = crate::mm::rcu::rcu_read_lock();
                self.vm_area_free_with(idx, &guard);
            }
        }
    }

    fn free_typesafe(&self, idx: VmaIdx, guard: Option<&RcuReadGuard>) {
        let vma = self.get(idx);
        assert_eq!(
            vma.vm_refcnt.load(Ordering::Acquire),
            0,
            "freeing an attached vma"
        );
        self.counters.inc(FREES);
        // Relaxed: cosmetic, see vm_area_free_with.
        vma.vm_mm.store(0, Ordering::Relaxed);
        self.free_typesafe_checked(idx, guard);
    }

    /// The typesafe free after the common checks: no `call_rcu`, the slot is
    /// reusable at once; a grace-period cookie is kept to count reuses that
    /// come before a grace period.
    fn free_typesafe_checked(&self, idx: VmaIdx, guard: Option<&RcuReadGuard>) {
        self.counters.inc(CALL_RCU_AVOIDED);
        // Relaxed: read back by vm_area_alloc after popping, ordered by the
        // free list's Release/Acquire.
        self.get(idx)
            .freed_cookie
            .store(self.rcu.get_state_synchronize_rcu(), Ordering::Relaxed);
        if self.rcu.gp_needed() {
            match guard {
                Some(g) => self.rcu.request_gp(g),
                None => self.rcu.request_gp(&crate::mm::rcu::rcu_read_lock()),
            }
        }
        self.push_free(idx);
    }

    /// `vm_area_free` inside an RCU read section the caller already holds.
    pub fn vm_area_free_with(&self, idx: VmaIdx, guard: &RcuReadGuard) {
        let vma = self.get(idx);
        assert_eq!(
            vma.vm_refcnt.load(Ordering::Acquire),
            0,
            "freeing an attached vma"
        );
        self.counters.inc(FREES);
        // Relaxed: vm_mm = 0 is cosmetic (a reused slot gets its owner's id
        // before attach); readers never rely on it.
        vma.vm_mm.store(0, Ordering::Relaxed);
        match self.policy {
            CachePolicy::Typesafe => self.free_typesafe_checked(idx, Some(guard)),
            CachePolicy::Rcu => {
                self.counters.inc(CALL_RCU);
                // The callback runs after a grace period, so the cookie is
                // already satisfied when the slot is reused.
                vma.freed_cookie.store(0, Ordering::Relaxed);
                let pool = self.this.upgrade().expect("pool alive while freeing");
                self.rcu.call_rcu(guard, move || {
                    pool.counters.inc(RCU_FREED);
                    pool.push_free(idx);
                });
            }
        }
    }

    /// Free a VMA that is still attached: the bug `exit_mmap` had before
    /// the review. Only a race-lab pool accepts it.
    #[cfg(not(vmasim_loom))]
    pub(crate) fn vm_area_free_attached(&self, idx: VmaIdx, guard: &RcuReadGuard) {
        assert!(
            self.race_lab,
            "freeing an attached vma outside the race lab"
        );
        self.counters.inc(FREES);
        self.counters.inc(CALL_RCU_AVOIDED);
        let _ = guard;
        self.push_free(idx);
    }

    /// Counters and occupancy. Occupancy is derived from monotonic counters
    /// summed at one moment, so under load it can be off by in-flight
    /// operations; at rest it is exact.
    pub fn stats(&self) -> PoolStats {
        let c = self.counters.snapshot();
        let created = u64::from(self.next_fresh.load(Ordering::Relaxed));
        let live = (c[FRESH] + c[REUSED]).saturating_sub(c[FREES]);
        let waiting = c[CALL_RCU].saturating_sub(c[RCU_FREED]);
        PoolStats {
            alloc_fresh: c[FRESH],
            alloc_reused: c[REUSED],
            reuse_before_gp: c[REUSE_BEFORE_GP],
            frees: c[FREES],
            call_rcu: c[CALL_RCU],
            call_rcu_avoided: c[CALL_RCU_AVOIDED],
            grace_periods: self.rcu.grace_periods(),
            live,
            free: created.saturating_sub(live + waiting),
            waiting,
            slabs: created.div_ceil(u64::from(SLAB_SIZE)),
            capacity: u64::from(self.capacity),
        }
    }
}

#[cfg(all(test, not(vmasim_loom)))]
mod tests {
    use super::*;
    use crate::mm::rcu::rcu_read_lock;

    #[test]
    fn capacity_is_a_clean_error() {
        let pool = VmaCache::new(CachePolicy::Typesafe, 64);
        let all: Vec<_> = (0..64).map(|_| pool.vm_area_alloc().unwrap().0).collect();
        assert_eq!(
            pool.vm_area_alloc().unwrap_err(),
            PoolExhausted { capacity: 64 }
        );
        pool.vm_area_free(all[3]);
        assert_eq!(pool.vm_area_alloc().unwrap().0, all[3]);
    }

    #[test]
    fn generation_advances_on_every_allocation() {
        let pool = VmaCache::new(CachePolicy::Typesafe, 64);
        let (a, v) = pool.vm_area_alloc().unwrap();
        let g = v.generation();
        pool.vm_area_free(a);
        let (b, v) = pool.vm_area_alloc().unwrap();
        assert_eq!(a, b);
        assert_eq!(v.generation(), g + 1);
    }

    /// With a reader pinned, `rcu` parks every freed slot and must create
    /// new slabs, while `typesafe` keeps reusing and its slab count is flat.
    #[test]
    fn pinned_reader_grows_rcu_waiting_but_not_typesafe_slabs() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let _g = rcu_read_lock();
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
        });
        rx.recv().unwrap();
        let ts = VmaCache::new(CachePolicy::Typesafe, 1 << 16);
        let rcu = VmaCache::new(CachePolicy::Rcu, 1 << 16);
        for round in 1..=1000u64 {
            for pool in [&ts, &rcu] {
                let (i, _) = pool.vm_area_alloc().unwrap();
                pool.vm_area_free(i);
            }
            assert_eq!(rcu.stats().waiting, round);
            assert_eq!(ts.stats().waiting, 0);
        }
        assert_eq!(ts.stats().slabs, 1);
        assert_eq!(ts.stats().alloc_reused, 999);
        assert!(ts.stats().reuse_before_gp >= 999, "{:?}", ts.stats());
        assert_eq!(rcu.stats().slabs, 1000u64.div_ceil(SLAB_SIZE as u64));
        assert_eq!(rcu.stats().alloc_reused, 0);
        assert_eq!(rcu.stats().call_rcu, 1000);
        assert_eq!(ts.stats().call_rcu_avoided, 1000);
        done_tx.send(()).unwrap();
        reader.join().unwrap();
        assert!(rcu.rcu().rcu_barrier(100_000));
        let s = rcu.stats();
        assert_eq!((s.waiting, s.free, s.live), (0, 1000, 0));
        assert_eq!(rcu.stats().reuse_before_gp, 0);
    }

    #[test]
    fn concurrent_alloc_free_never_hands_a_slot_out_twice() {
        let pool = VmaCache::new(CachePolicy::Typesafe, 256);
        let owners: Arc<Vec<AtomicU32>> = Arc::new((0..256).map(|_| AtomicU32::new(0)).collect());
        let hs: Vec<_> = (1..=2u32)
            .map(|t| {
                let (pool, owners) = (pool.clone(), owners.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let (i, _) = pool.vm_area_alloc().unwrap();
                        let prev = owners[i.0 as usize].swap(t, Ordering::SeqCst);
                        assert_eq!(prev, 0, "slot {i:?} handed out twice");
                        owners[i.0 as usize].store(0, Ordering::SeqCst);
                        pool.vm_area_free(i);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let s = pool.stats();
        assert_eq!(s.live, 0);
        assert_eq!(
            s.free, s.alloc_fresh,
            "every slot ever created is back on the free list"
        );
    }
}
