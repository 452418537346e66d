//! The VMA cache: a type-stable pool of [`Vma`] slots shaped like 6.18's
//! `vm_area_cachep` (`mm/vma_init.c`: `SLAB_TYPESAFE_BY_RCU`,
//! `.sheaf_capacity = 32`) on SLUB's sheaves (`mm/slub.c`).
//!
//! # Why sheaves
//!
//! A single lock-free free list puts every allocating and freeing thread on
//! one cache line (the list head): two threads on it are several times
//! slower than the system allocator. Since 6.18 the kernel answers the same
//! problem for the VMA cache with three layers, and so does this pool:
//!
//! 1. **Per-CPU sheaves** (`struct slub_percpu_sheaves`): a `main` and a
//!    `spare` array of up to [`SHEAF_CAPACITY`] free slot indices, guarded
//!    by a lock only its own CPU normally takes (`local_trylock`). Alloc
//!    pops from `main`, free pushes onto it (`alloc_from_pcs`,
//!    `free_to_pcs`): no shared cache line in the common case. Here a
//!    "CPU" is a thread's counter shard (`vmstat::this_shard`), which it
//!    holds alone while it lives; only threads beyond `vmstat::NR_SHARDS`
//!    share one (the shared shard) and see the trylock fail now and then.
//! 2. **The barn** (`struct node_barn`): a shared, spinlocked list of full
//!    and empty sheaves. An empty `main` is swapped for a full sheaf
//!    (`barn_replace_empty_sheaf`), a full one for an empty sheaf
//!    (`barn_replace_full_sheaf`, refused beyond `MAX_FULL_SHEAVES`): one
//!    lock round trip per [`SHEAF_CAPACITY`] operations.
//! 3. **The slabs' free lists** last: a tagged Treiber stack of free slots
//!    (ABA-safe: a slot popped and pushed back between a thread's load and
//!    its CAS changes the tag) and the never-used slots of the slabs.
//!    `refill_sheaf` fills an empty sheaf from them; a sheaf the barn will
//!    not take is flushed back (`sheaf_flush_main`).
//!
//! Slabs are allocated on demand and **never** handed back while the pool
//! exists, so a reader holding a slot index found under RCU always reads a
//! valid `Vma`, possibly a reused one: type stability, not identity. The
//! per-VMA lock protocol (see [`crate::mm::mm_types`]) detects a reuse.
//!
//! The sheaves belong to the cache, indexed by shard, not to a thread:
//! a thread that exits strands nothing (the next thread on its shard uses
//! the sheaf), and when the capacity is reached the allocating thread
//! drains every shard and the barn back to the slabs
//! (`flush_all_cpus_locked`, `barn_shrink`) before it reports exhaustion,
//! so the capacity limit is exact: allocation fails only when every slot
//! is live or waiting for a grace period.
//!
//! # Policies
//!
//! * [`CachePolicy::Typesafe`]: `vm_area_free` is `kmem_cache_free`: the
//!   slot goes onto this CPU's sheaf at once and may be reused while RCU
//!   readers still look at it.
//! * [`CachePolicy::Rcu`]: the pre-6.15 scheme: every free goes through
//!   `call_rcu` and the callback frees the slot into the sheaves of
//!   whichever thread runs it, after a grace period.
//!
//! Slot indices, not pointers, are handed out: with slabs that never move
//! or die an index is as good as a pointer, and the sheaves and barn are
//! arrays of atomics, so none of this needs `unsafe`.

use crate::mm::{
    mm_types::{VM_LOCK_SEQ_UNLOCKED, Vma},
    rcu::{Rcu, RcuReadGuard},
    sync::{AtomicBool, AtomicU32, AtomicU64, Mutex, Ordering},
    vmstat::Counters,
};
use crossbeam_utils::CachePadded;
use std::sync::{Arc, Weak};

/// Slots per slab. 64 slots of 192 bytes (three cache lines, see
/// [`Vma`]): one 12 KiB allocation.
pub const SLAB_SIZE: u32 = 64;

/// Slots per sheaf: `vm_area_cachep`'s `.sheaf_capacity = 32`
/// (`mm/vma_init.c`, `vma_state_init`). Tiny under loom so that a model
/// of a few operations reaches the barn.
#[cfg(not(vmasim_loom))]
pub const SHEAF_CAPACITY: u32 = 32;
/// Slots per sheaf (loom models).
#[cfg(vmasim_loom)]
pub const SHEAF_CAPACITY: u32 = 2;

/// Full sheaves the barn accepts before a free flushes to the slabs
/// (`MAX_FULL_SHEAVES` in `mm/slub.c`), and the empty sheaves it starts with
/// (`MAX_EMPTY_SHEAVES`).
#[cfg(not(vmasim_loom))]
const MAX_FULL_SHEAVES: usize = 10;
#[cfg(not(vmasim_loom))]
const MAX_EMPTY_SHEAVES: usize = 10;
#[cfg(vmasim_loom)]
const MAX_FULL_SHEAVES: usize = 1;
#[cfg(vmasim_loom)]
const MAX_EMPTY_SHEAVES: usize = 1;

/// Per-"CPU" sheaf sets: one per counter shard, so a thread's sheaves and
/// its counters are picked by the same index.
#[cfg(not(vmasim_loom))]
const NR_CPUS: usize = crate::mm::vmstat::NR_SHARD_SLOTS;
#[cfg(vmasim_loom)]
const NR_CPUS: usize = 2;

/// The calling thread's sheaf set (its "CPU", `this_cpu_ptr`).
#[cfg(not(vmasim_loom))]
#[inline]
fn this_cpu() -> usize {
    crate::mm::vmstat::this_shard() % NR_CPUS
}

#[cfg(vmasim_loom)]
loom::lazy_static! {
    static ref NEXT_CPU: loom::sync::atomic::AtomicUsize = loom::sync::atomic::AtomicUsize::new(0);
}
#[cfg(vmasim_loom)]
loom::thread_local! {
    // Relaxed: only hands out distinct numbers.
    static CPU: usize = NEXT_CPU.fetch_add(1, Ordering::Relaxed) % NR_CPUS;
}
/// The calling model thread's sheaf set: std thread-locals are shared by
/// loom's threads, so loom's own thread-local decides.
#[cfg(vmasim_loom)]
fn this_cpu() -> usize {
    CPU.with(|c| *c)
}

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

/// Allocation failed: every slot up to the capacity is live or waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolExhausted {
    /// The configured capacity in slots.
    pub capacity: u32,
}

// Event counters. Only rare events are counted on the sheaf paths; the
// hits are derived in `stats` (allocations minus the slow ones), so the
// fast path bumps one counter per operation, as before sheaves.
const FRESH: usize = 0;
const REUSED: usize = 1;
const REUSE_BEFORE_GP: usize = 2;
const FREES: usize = 3;
const CALL_RCU: usize = 4;
const RCU_FREED: usize = 5;
/// An allocation not served by this CPU's main or spare sheaf (kernel
/// stat `ALLOC_SLOWPATH`): the barn, the slabs, or a busy local lock.
const ALLOC_SLOW: usize = 6;
/// A free into the cache that found main and spare full or the local lock
/// busy (`FREE_SLOWPATH`).
const FREE_SLOW: usize = 7;
/// A full sheaf taken from the barn for an empty one (`BARN_GET`).
const BARN_GET: usize = 8;
/// A full sheaf given to the barn for an empty one (`BARN_PUT`).
const BARN_PUT: usize = 9;
/// A sheaf filled from the slabs (`SHEAF_REFILL`).
const SHEAF_REFILL: usize = 10;
/// A sheaf emptied back into the slabs (`SHEAF_FLUSH`).
const SHEAF_FLUSH: usize = 11;
const NR_POOL_EVENTS: usize = 12;

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
    /// Free slots: in a sheaf, in the barn or on a slab's free list.
    pub free: u64,
    /// Slots freed through `call_rcu` whose grace period has not ended.
    pub waiting: u64,
    /// Slabs allocated.
    pub slabs: u64,
    /// Maximum number of slots.
    pub capacity: u64,
    /// Slots ever carved out of a slab (`live + free + waiting` at rest).
    pub created: u64,
    /// Allocations served by the thread's own sheaves (`ALLOC_PCS` minus
    /// the barn and refill cases): no shared cache line touched.
    pub sheaf_alloc_hits: u64,
    /// Frees that landed in the thread's own sheaves (`FREE_PCS`).
    pub sheaf_free_hits: u64,
    /// Full sheaves taken from the barn (`BARN_GET`).
    pub barn_get: u64,
    /// Full sheaves handed to the barn (`BARN_PUT`).
    pub barn_put: u64,
    /// Sheaves refilled from the slabs (`SHEAF_REFILL`).
    pub slab_refills: u64,
    /// Sheaves flushed back to the slabs (`SHEAF_FLUSH`).
    pub sheaf_flushes: u64,
}

/// Where the free slots are, counted by walking every sheaf and list
/// ([`VmaCache::audit`]). At rest `sheaves + barn + slab_lists` equals
/// [`PoolStats::free`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolAudit {
    /// Slots in the per-CPU main and spare sheaves.
    pub sheaves: u64,
    /// Slots in the barn's full sheaves.
    pub barn: u64,
    /// Slots on the slabs' free list.
    pub slab_lists: u64,
}

impl PoolAudit {
    /// All free slots found.
    pub fn total(&self) -> u64 {
        self.sheaves + self.barn + self.slab_lists
    }
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

/// `struct slab_sheaf`: an array of free slot indices.
///
/// Every field is read and written only by the holder of the lock that owns
/// the sheaf at that moment (a CPU's local lock or the barn lock), so all
/// accesses are Relaxed; the lock's Acquire/Release orders them, and a
/// sheaf changes owner only inside both locks (see the barn exchanges).
struct Sheaf {
    size: AtomicU32,
    objects: [AtomicU32; SHEAF_CAPACITY as usize],
}

impl Sheaf {
    fn new() -> Self {
        Self {
            size: AtomicU32::new(0),
            objects: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn size(&self) -> u32 {
        self.size.load(Ordering::Relaxed)
    }

    #[inline]
    fn pop(&self) -> Option<u32> {
        let n = self.size.load(Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        self.size.store(n - 1, Ordering::Relaxed);
        Some(self.objects[(n - 1) as usize].load(Ordering::Relaxed))
    }

    #[inline]
    fn push(&self, idx: u32) -> bool {
        let n = self.size.load(Ordering::Relaxed);
        if n == SHEAF_CAPACITY {
            return false;
        }
        self.objects[n as usize].store(idx, Ordering::Relaxed);
        self.size.store(n + 1, Ordering::Relaxed);
        true
    }
}

/// `struct slub_percpu_sheaves`: a local lock and the ids of this CPU's
/// `main` and `spare` sheaves (indices into [`VmaCache::sheaves`]).
struct Pcs {
    /// `local_trylock_t`. A spinlock that is only ever *tried* on the fast
    /// paths (a busy lock sends the caller to the slabs, as a failed
    /// `local_trylock` sends `alloc_from_pcs` to `__slab_alloc_node`), and
    /// spun on only by the rare drain before an exhaustion error.
    lock: AtomicBool,
    main: AtomicU32,
    spare: AtomicU32,
}

/// A held local lock.
struct PcsGuard<'a> {
    pcs: &'a Pcs,
}

impl PcsGuard<'_> {
    fn main(&self) -> u32 {
        // Relaxed: written only under this lock.
        self.pcs.main.load(Ordering::Relaxed)
    }
    fn spare(&self) -> u32 {
        self.pcs.spare.load(Ordering::Relaxed)
    }
    fn set_main(&self, id: u32) {
        self.pcs.main.store(id, Ordering::Relaxed);
    }
    /// `swap(pcs->main, pcs->spare)`.
    fn swap(&self) {
        let (m, s) = (self.main(), self.spare());
        self.pcs.main.store(s, Ordering::Relaxed);
        self.pcs.spare.store(m, Ordering::Relaxed);
    }
}

impl Drop for PcsGuard<'_> {
    fn drop(&mut self) {
        // Release: the next holder sees the sheaves as we left them, and a
        // thread that gets a slot from them sees the freeing thread's writes
        // to the slot (those happened before its push, under this lock).
        self.pcs.lock.store(false, Ordering::Release);
    }
}

/// `struct node_barn`: sheaf ids, full and empty. The barn always holds
/// `MAX_FULL_SHEAVES + MAX_EMPTY_SHEAVES` sheaves (every exchange is one
/// for one), so an empty sheaf is always there while fewer than
/// `MAX_FULL_SHEAVES` are full.
struct Barn {
    /// `barn->nr_full` read without the lock (`data_race(barn->nr_full)`),
    /// so that the common "nothing to get" case takes no lock.
    nr_full: AtomicU32,
    lists: Mutex<BarnLists>,
}

struct BarnLists {
    full: Vec<u32>,
    empty: Vec<u32>,
}

/// The VMA cache. Create it with [`VmaCache::new`]; it is always shared.
///
/// ```
/// use vmasim_server::mm::{CachePolicy, VmaCache};
/// let pool = VmaCache::new(CachePolicy::Typesafe, 128);
/// let (a, _) = pool.vm_area_alloc().unwrap();
/// pool.vm_area_free(a);
/// let (b, _) = pool.vm_area_alloc().unwrap();
/// assert_eq!(a, b, "typesafe reuses the slot at once");
/// assert_eq!(pool.stats().alloc_reused, 1);
/// assert_eq!(pool.stats().sheaf_alloc_hits, 1, "the second came from the sheaf");
/// ```
pub struct VmaCache {
    policy: CachePolicy,
    capacity: u32,
    slabs: Slabs,
    /// Never-used slots are carved from here upwards.
    next_fresh: AtomicU32,
    /// Treiber stack head: `tag << 32 | (index + 1)`, 0 in the low half = empty.
    free_head: AtomicU64,
    /// `s->cpu_sheaves`; empty for a cache without sheaves (the race lab's).
    cpu_sheaves: Box<[CachePadded<Pcs>]>,
    /// Every sheaf, wherever it currently is (a CPU or the barn).
    sheaves: Box<[CachePadded<Sheaf>]>,
    barn: Barn,
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
        Self::build(policy, capacity, rcu, true, false)
    }

    /// A private pool for a race-lab scenario (see [`crate::mm::race`]).
    /// It has no sheaves, like a cache created without `sheaf_capacity`:
    /// every free goes straight to the slab free list, so a slot freed by
    /// one role is the next one any other role allocates, which is the
    /// reuse the scenarios replay.
    pub fn new_for_race_lab(policy: CachePolicy, capacity: u32) -> Arc<Self> {
        Self::build(policy, capacity, Rcu::new(), false, true)
    }

    fn build(
        policy: CachePolicy,
        capacity: u32,
        rcu: Rcu,
        sheaves: bool,
        race_lab: bool,
    ) -> Arc<Self> {
        let capacity = capacity.clamp(1, u32::MAX - SLAB_SIZE);
        let nr_slabs = capacity.div_ceil(SLAB_SIZE);
        let (nr_cpus, nr_sheaves) = if sheaves {
            (NR_CPUS, 2 * NR_CPUS + MAX_FULL_SHEAVES + MAX_EMPTY_SHEAVES)
        } else {
            (0, 0)
        };
        // Sheaf ids: 2c and 2c+1 start as CPU c's main and spare; the rest
        // start empty in the barn (`barn_init`, `init_percpu_sheaves`).
        let cpu_sheaves = (0..nr_cpus)
            .map(|c| {
                CachePadded::new(Pcs {
                    lock: AtomicBool::new(false),
                    main: AtomicU32::new(2 * c as u32),
                    spare: AtomicU32::new(2 * c as u32 + 1),
                })
            })
            .collect();
        let barn = Barn {
            nr_full: AtomicU32::new(0),
            lists: Mutex::new(BarnLists {
                full: Vec::with_capacity(nr_sheaves),
                empty: (2 * nr_cpus as u32..nr_sheaves as u32).collect(),
            }),
        };
        Arc::new_cyclic(|this| Self {
            policy,
            capacity: nr_slabs * SLAB_SIZE,
            slabs: Slabs::new(nr_slabs as usize),
            next_fresh: AtomicU32::new(0),
            free_head: AtomicU64::new(0),
            cpu_sheaves,
            sheaves: (0..nr_sheaves)
                .map(|_| CachePadded::new(Sheaf::new()))
                .collect(),
            barn,
            rcu,
            counters: Counters::new(),
            this: this.clone(),
            race_lab,
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
        let idx = VmaIdx(self.slab_alloc()?);
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
        // taking a reference sees the new one. The old value tells a fresh
        // slot (never allocated: generation 0) from a reused one, wherever
        // the slot came from (sheaf, barn, free list or a new slab).
        if vma.generation.fetch_add(1, Ordering::Release) == 0 {
            self.counters.inc(FRESH);
        } else {
            self.counters.inc(REUSED);
            // Relaxed: written before the free that handed the slot to the
            // sheaves, ordered by their lock (or the free list's CAS).
            let cookie = vma.freed_cookie.load(Ordering::Relaxed);
            if !self.rcu.poll_state_synchronize_rcu(cookie) {
                self.counters.inc(REUSE_BEFORE_GP);
            }
        }
        Ok((idx, vma))
    }

    fn has_sheaves(&self) -> bool {
        !self.cpu_sheaves.is_empty()
    }

    fn sheaf(&self, id: u32) -> &Sheaf {
        &self.sheaves[id as usize]
    }

    /// `local_trylock(&s->cpu_sheaves->lock)` on this thread's CPU.
    #[inline]
    fn pcs_trylock(&self) -> Option<PcsGuard<'_>> {
        let pcs = &self.cpu_sheaves[this_cpu()];
        // Acquire: pairs with the Release in PcsGuard::drop. Load first so a
        // busy lock costs no write to its line.
        if pcs.lock.load(Ordering::Relaxed) || pcs.lock.swap(true, Ordering::Acquire) {
            return None;
        }
        Some(PcsGuard { pcs })
    }

    /// `local_lock` for the drain: spins, since the holder is inside a few
    /// instructions of an alloc or free (it never blocks while holding it).
    fn pcs_lock(&self, cpu: usize) -> PcsGuard<'_> {
        let pcs = &self.cpu_sheaves[cpu];
        let backoff = crossbeam_utils::Backoff::new();
        // Acquire: as in pcs_trylock.
        while pcs.lock.swap(true, Ordering::Acquire) {
            crate::mm::sync::spin_wait(&backoff);
        }
        PcsGuard { pcs }
    }

    /// `slab_alloc_node`: `alloc_from_pcs`, else the slabs.
    fn slab_alloc(&self) -> Result<u32, PoolExhausted> {
        if self.has_sheaves() {
            if let Some(pcs) = self.pcs_trylock() {
                if let Some(i) = self.sheaf(pcs.main()).pop() {
                    return Ok(i);
                }
                if self.sheaf(pcs.spare()).size() > 0 {
                    // `__pcs_replace_empty_main`: the spare has objects.
                    pcs.swap();
                    return Ok(self.sheaf(pcs.main()).pop().expect("spare was non-empty"));
                }
                self.counters.inc(ALLOC_SLOW);
                if self.pcs_replace_empty_main(&pcs) {
                    return Ok(self.sheaf(pcs.main()).pop().expect("main refilled"));
                }
                // Nothing in the barn, the free list or the slabs: fall
                // through to the drain (without holding our local lock).
            } else {
                self.counters.inc(ALLOC_SLOW);
            }
        }
        self.slab_alloc_one()
    }

    /// `__pcs_replace_empty_main` after the spare check: a full sheaf from
    /// the barn, else `refill_sheaf` from the slabs. False if the slabs are
    /// out of free slots too.
    fn pcs_replace_empty_main(&self, pcs: &PcsGuard<'_>) -> bool {
        if let Some(full) = self.barn_replace_empty_sheaf(pcs.main()) {
            self.counters.inc(BARN_GET);
            pcs.set_main(full);
            return true;
        }
        self.refill_sheaf(self.sheaf(pcs.main())) > 0
    }

    /// `refill_sheaf`: fill an empty sheaf from the slab free list, then from
    /// never-used slots. Returns how many slots it got.
    fn refill_sheaf(&self, sheaf: &Sheaf) -> u32 {
        while sheaf.size() < SHEAF_CAPACITY {
            match self.pop_free() {
                Some(i) => {
                    sheaf.push(i);
                }
                None => break,
            }
        }
        let want = SHEAF_CAPACITY - sheaf.size();
        if want > 0
            && let Some(fresh) = self.alloc_fresh(want)
        {
            // Pushed highest first so the lowest index pops first: a new
            // slab is used from its start, as its freelist would be.
            for i in fresh.rev() {
                sheaf.push(i);
            }
        }
        let got = sheaf.size();
        if got > 0 {
            self.counters.inc(SHEAF_REFILL);
        }
        got
    }

    /// The slab path without sheaves (`___slab_alloc`): the free list,
    /// then a never-used slot; at the capacity, drain every sheaf back and
    /// try the free list once more.
    fn slab_alloc_one(&self) -> Result<u32, PoolExhausted> {
        if let Some(i) = self.pop_free() {
            return Ok(i);
        }
        if let Some(r) = self.alloc_fresh(1) {
            return Ok(r.start);
        }
        if self.has_sheaves() {
            self.flush_all_cpus();
            if let Some(i) = self.pop_free() {
                return Ok(i);
            }
        }
        Err(PoolExhausted {
            capacity: self.capacity,
        })
    }

    /// Carve up to `n` never-used slots out of the slabs (`new_slab`),
    /// respecting the capacity.
    fn alloc_fresh(&self, n: u32) -> Option<std::ops::Range<u32>> {
        // Relaxed CAS: the index itself publishes nothing; the slab is
        // published by its OnceLock.
        let mut cur = self.next_fresh.load(Ordering::Relaxed);
        let end = loop {
            if cur >= self.capacity {
                return None;
            }
            let end = cur + n.min(self.capacity - cur);
            match self.next_fresh.compare_exchange_weak(
                cur,
                end,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break end,
                Err(v) => cur = v,
            }
        };
        let mut i = cur;
        while i < end {
            self.slabs.ensure(i);
            i = (i / SLAB_SIZE + 1) * SLAB_SIZE;
        }
        Some(cur..end)
    }

    /// `flush_all_cpus_locked` + `barn_shrink`: move every slot in every
    /// CPU's sheaves and in the barn back to the slab free list. Only before
    /// an exhaustion error, so that free slots parked on other threads'
    /// sheaves count against the capacity exactly.
    fn flush_all_cpus(&self) {
        for cpu in 0..self.cpu_sheaves.len() {
            let pcs = self.pcs_lock(cpu);
            self.sheaf_flush(self.sheaf(pcs.main()));
            self.sheaf_flush(self.sheaf(pcs.spare()));
        }
        let mut lists = self.barn.lists.lock().expect("barn lock poisoned");
        while let Some(id) = lists.full.pop() {
            self.sheaf_flush(self.sheaf(id));
            lists.empty.push(id);
        }
        // Relaxed: a hint for the lockless checks; the lists decide.
        self.barn.nr_full.store(0, Ordering::Relaxed);
    }

    /// `sheaf_flush_unused`: the whole sheaf onto the slab free list as one
    /// chain, one CAS. The caller owns the sheaf.
    fn sheaf_flush(&self, sheaf: &Sheaf) {
        let n = sheaf.size();
        if n == 0 {
            return;
        }
        let first = sheaf.objects[0].load(Ordering::Relaxed);
        let mut last = first;
        for k in 1..n as usize {
            let next = sheaf.objects[k].load(Ordering::Relaxed);
            // Relaxed: the chain is private until push_chain's Release CAS.
            self.get(VmaIdx(last))
                .next_free
                .store(next + 1, Ordering::Relaxed);
            last = next;
        }
        sheaf.size.store(0, Ordering::Relaxed);
        self.push_chain(first, last);
        self.counters.inc(SHEAF_FLUSH);
    }

    /// `barn_replace_empty_sheaf`: a full sheaf for the empty `empty`, if
    /// the barn has one.
    fn barn_replace_empty_sheaf(&self, empty: u32) -> Option<u32> {
        // Relaxed, unlocked: `if (!data_race(barn->nr_full)) return NULL;`
        // a stale zero only sends us to the slabs.
        if self.barn.nr_full.load(Ordering::Relaxed) == 0 {
            return None;
        }
        // The mutex orders the sheaf contents: written by the CPU that put
        // the sheaf in before it released the barn lock.
        let mut lists = self.barn.lists.lock().expect("barn lock poisoned");
        let full = lists.full.pop()?;
        lists.empty.push(empty);
        self.barn
            .nr_full
            .store(lists.full.len() as u32, Ordering::Relaxed);
        Some(full)
    }

    /// `barn_replace_full_sheaf`: an empty sheaf for the full `full`, unless
    /// the barn already holds `MAX_FULL_SHEAVES` full ones (`-E2BIG`).
    fn barn_replace_full_sheaf(&self, full: u32) -> Option<u32> {
        // Relaxed, unlocked: the kernel does not repeat this check under the
        // lock either ("not critical"); we do, below, so the count is a bound.
        if self.barn.nr_full.load(Ordering::Relaxed) as usize >= MAX_FULL_SHEAVES {
            return None;
        }
        let mut lists = self.barn.lists.lock().expect("barn lock poisoned");
        if lists.full.len() >= MAX_FULL_SHEAVES {
            return None;
        }
        let empty = lists.empty.pop()?;
        lists.full.push(full);
        self.barn
            .nr_full
            .store(lists.full.len() as u32, Ordering::Relaxed);
        Some(empty)
    }

    /// `kmem_cache_free` of a detached slot: `free_to_pcs`, else the slab
    /// free list.
    fn slab_free(&self, idx: u32) {
        if self.has_sheaves() {
            if let Some(pcs) = self.pcs_trylock() {
                if self.sheaf(pcs.main()).push(idx) {
                    return;
                }
                if self.sheaf(pcs.spare()).size() == 0 {
                    // `__pcs_replace_full_main`: the spare is empty.
                    pcs.swap();
                } else {
                    self.counters.inc(FREE_SLOW);
                    match self.barn_replace_full_sheaf(pcs.main()) {
                        Some(empty) => {
                            self.counters.inc(BARN_PUT);
                            pcs.set_main(empty);
                        }
                        // -E2BIG: the barn has enough full sheaves; give
                        // this one back to the slabs (`sheaf_flush_main`).
                        None => self.sheaf_flush(self.sheaf(pcs.main())),
                    }
                }
                let pushed = self.sheaf(pcs.main()).push(idx);
                debug_assert!(pushed, "main has room after the replace");
                return;
            }
            self.counters.inc(FREE_SLOW);
        }
        self.push_free(VmaIdx(idx));
    }

    fn pop_free(&self) -> Option<u32> {
        // Acquire: pairs with the Release CAS of push_chain, so we read the
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
                Ok(_) => return Some(idx),
                Err(h) => head = h,
            }
        }
    }

    fn push_free(&self, idx: VmaIdx) {
        self.push_chain(idx.0, idx.0);
    }

    /// Push the chain `first ..= last` (linked through `next_free`, which
    /// the caller set for every slot but `last`) onto the free list.
    fn push_chain(&self, first: u32, last: u32) {
        let tail = self.get(VmaIdx(last));
        let mut head = self.free_head.load(Ordering::Relaxed);
        loop {
            // Relaxed store: published by the Release CAS below.
            tail.next_free
                .store((head & 0xffff_ffff) as u32, Ordering::Relaxed);
            let new = (((head >> 32) + 1) << 32) | u64::from(first + 1);
            // Release: the next popper sees the links and the detached slots.
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
    /// come before a grace period. (`call_rcu_avoided` is `frees - call_rcu`,
    /// derived in `stats`, so it costs the fast path nothing.)
    fn free_typesafe_checked(&self, idx: VmaIdx, guard: Option<&RcuReadGuard>) {
        // Relaxed: read back by vm_area_alloc after the slot comes back out
        // of a sheaf, ordered by the sheaf's lock or the free list.
        self.get(idx)
            .freed_cookie
            .store(self.rcu.get_state_synchronize_rcu(), Ordering::Relaxed);
        if self.rcu.gp_needed() {
            match guard {
                Some(g) => self.rcu.request_gp(g),
                None => self.rcu.request_gp(&crate::mm::rcu::rcu_read_lock()),
            }
        }
        self.slab_free(idx.0);
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
                    // Into the sheaves of whichever thread runs the
                    // callback, as the kernel's RCU callback frees on the
                    // CPU it runs on.
                    pool.slab_free(idx.0);
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
        // Frees that reached the cache's free structures (not counting
        // those still waiting in call_rcu).
        let freed_to_cache = c[FREES].saturating_sub(c[CALL_RCU]) + c[RCU_FREED];
        let (alloc_hits, free_hits) = if self.has_sheaves() {
            (
                (c[FRESH] + c[REUSED]).saturating_sub(c[ALLOC_SLOW]),
                freed_to_cache.saturating_sub(c[FREE_SLOW]),
            )
        } else {
            (0, 0)
        };
        PoolStats {
            alloc_fresh: c[FRESH],
            alloc_reused: c[REUSED],
            reuse_before_gp: c[REUSE_BEFORE_GP],
            frees: c[FREES],
            call_rcu: c[CALL_RCU],
            call_rcu_avoided: c[FREES].saturating_sub(c[CALL_RCU]),
            grace_periods: self.rcu.grace_periods(),
            live,
            free: created.saturating_sub(live + waiting),
            waiting,
            slabs: created.div_ceil(u64::from(SLAB_SIZE)),
            capacity: u64::from(self.capacity),
            created,
            sheaf_alloc_hits: alloc_hits,
            sheaf_free_hits: free_hits,
            barn_get: c[BARN_GET],
            barn_put: c[BARN_PUT],
            slab_refills: c[SHEAF_REFILL],
            sheaf_flushes: c[SHEAF_FLUSH],
        }
    }

    /// Count the free slots where they are: every CPU's sheaves, the barn's
    /// full sheaves and the slab free list. Takes every lock in turn; meant
    /// for tests and the torture run's balance check, at rest (a concurrent
    /// free or allocation can be seen in flight).
    pub fn audit(&self) -> PoolAudit {
        let mut a = PoolAudit::default();
        for cpu in 0..self.cpu_sheaves.len() {
            let pcs = self.pcs_lock(cpu);
            a.sheaves += u64::from(self.sheaf(pcs.main()).size() + self.sheaf(pcs.spare()).size());
        }
        {
            let lists = self.barn.lists.lock().expect("barn lock poisoned");
            a.barn = lists
                .full
                .iter()
                .map(|&id| u64::from(self.sheaf(id).size()))
                .sum();
        }
        // Walk the free list from a snapshot of its head. Acquire as in
        // pop_free; at rest nobody changes it under us. Bounded by the
        // capacity in case a concurrent pop makes us follow a stale link.
        let mut top = (self.free_head.load(Ordering::Acquire) & 0xffff_ffff) as u32;
        while top != 0 && a.slab_lists < u64::from(self.capacity) {
            a.slab_lists += 1;
            top = self.get(VmaIdx(top - 1)).next_free.load(Ordering::Relaxed);
        }
        a
    }
}

#[cfg(all(test, not(vmasim_loom)))]
mod tests {
    use super::*;
    use crate::mm::rcu::SlowReader;

    /// Run `f` on a new thread whose sheaf set is not the caller's (a live
    /// thread's shard is its own, so a new thread gets another one unless
    /// every exclusive shard is taken; then a nested thread is tried).
    fn on_another_cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let me = this_cpu();
        std::thread::spawn(move || {
            if this_cpu() == me {
                std::thread::spawn(f).join().unwrap()
            } else {
                f()
            }
        })
        .join()
        .unwrap()
    }

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

    /// Free slots parked in another thread's sheaves still count: the
    /// allocation that reaches the capacity drains them instead of failing.
    #[test]
    fn capacity_counts_slots_in_other_threads_sheaves() {
        let pool = VmaCache::new(CachePolicy::Typesafe, 128);
        let mine: Vec<_> = (0..100).map(|_| pool.vm_area_alloc().unwrap().0).collect();
        // Another thread (another shard) allocates 28 and frees them into
        // its own sheaves, then exits.
        let p = pool.clone();
        on_another_cpu(move || {
            let v: Vec<_> = (0..28).map(|_| p.vm_area_alloc().unwrap().0).collect();
            for i in v {
                p.vm_area_free(i);
            }
        });
        assert_eq!(pool.stats().live, 100);
        // 28 slots are free, all on the other shard (or carved for it).
        let more: Vec<_> = (0..28).map(|_| pool.vm_area_alloc().unwrap().0).collect();
        assert_eq!(
            pool.vm_area_alloc().unwrap_err(),
            PoolExhausted { capacity: 128 }
        );
        let mut all: Vec<_> = mine.iter().chain(&more).map(|i| i.0).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 128, "no slot handed out twice");
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

    /// One thread frees more than its two sheaves hold: full sheaves go to
    /// the barn (up to `MAX_FULL_SHEAVES`), then to the slabs; another
    /// thread then allocates them back through the barn.
    #[test]
    fn barn_takes_full_sheaves_and_hands_them_out() {
        let cap = SHEAF_CAPACITY as usize;
        let n = cap * (2 + MAX_FULL_SHEAVES + 2);
        let pool = VmaCache::new(CachePolicy::Typesafe, n as u32);
        let all: Vec<_> = (0..n).map(|_| pool.vm_area_alloc().unwrap().0).collect();
        for &i in &all {
            pool.vm_area_free(i);
        }
        let s = pool.stats();
        assert_eq!(s.barn_put, MAX_FULL_SHEAVES as u64, "{s:?}");
        assert_eq!(s.sheaf_flushes, 2, "{s:?}");
        let a = pool.audit();
        assert_eq!(a.barn, (MAX_FULL_SHEAVES * cap) as u64);
        assert_eq!(a.total(), s.free);
        assert_eq!(s.free, n as u64);
        let p = pool.clone();
        let got = on_another_cpu(move || {
            (0..MAX_FULL_SHEAVES * cap)
                .map(|_| p.vm_area_alloc().unwrap().0)
                .collect::<Vec<_>>()
        });
        let s = pool.stats();
        assert_eq!(s.barn_get, MAX_FULL_SHEAVES as u64, "{s:?}");
        assert_eq!(s.alloc_reused, got.len() as u64);
        assert_eq!(pool.audit().barn, 0);
        assert_eq!(pool.audit().total(), s.free);
    }

    /// With a reader pinned, `rcu` parks every freed slot and must create
    /// new slabs, while `typesafe` keeps reusing and its slab count is flat.
    #[test]
    fn pinned_reader_grows_rcu_waiting_but_not_typesafe_slabs() {
        let reader = SlowReader::hold();
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
        assert_eq!(ts.stats().sheaf_alloc_hits, 999);
        assert!(ts.stats().reuse_before_gp >= 999, "{:?}", ts.stats());
        assert_eq!(rcu.stats().slabs, 1000u64.div_ceil(SLAB_SIZE as u64));
        assert_eq!(rcu.stats().alloc_reused, 0);
        assert_eq!(rcu.stats().call_rcu, 1000);
        assert_eq!(ts.stats().call_rcu_avoided, 1000);
        drop(reader);
        assert!(rcu.rcu().rcu_barrier(100_000));
        let s = rcu.stats();
        assert_eq!((s.waiting, s.live), (0, 0));
        // Every slot carved (whole sheaves of them) is free again.
        assert_eq!(s.free, s.created);
        assert_eq!(s.created, 1000u64.next_multiple_of(SHEAF_CAPACITY as u64));
        assert_eq!(rcu.audit().total(), s.free);
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
                    for k in 0..20_000 {
                        // Hold a varying number so sheaves fill, empty and
                        // go through the barn.
                        let held: Vec<_> = (0..(k % 80) + 1)
                            .map(|_| {
                                let (i, _) = pool.vm_area_alloc().unwrap();
                                let prev = owners[i.0 as usize].swap(t, Ordering::SeqCst);
                                assert_eq!(prev, 0, "slot {i:?} handed out twice");
                                i
                            })
                            .collect();
                        for i in held {
                            owners[i.0 as usize].store(0, Ordering::SeqCst);
                            pool.vm_area_free(i);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let s = pool.stats();
        assert_eq!(s.live, 0);
        assert_eq!(s.free, s.created);
        assert_eq!(
            pool.audit().total(),
            s.free,
            "every slot ever created is in a sheaf, the barn or a free list"
        );
    }

    /// The race lab's pool has no sheaves: a slot freed on one thread is the
    /// next one allocated on any other.
    #[test]
    fn race_lab_pool_reuses_across_threads() {
        let pool = VmaCache::new_for_race_lab(CachePolicy::Typesafe, SLAB_SIZE);
        let (a, _) = pool.vm_area_alloc().unwrap();
        pool.vm_area_free(a);
        let p = pool.clone();
        let b = std::thread::spawn(move || p.vm_area_alloc().unwrap().0)
            .join()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(pool.stats().sheaf_alloc_hits, 0);
    }
}
