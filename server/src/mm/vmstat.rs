//! Event counters, the analog of the kernel's per-CPU `vm_event_states`.
//!
//! The fault path bumps several counters per fault. One shared `AtomicU64`
//! per counter would put every faulting thread on the same cache line, which
//! is exactly the contention the per-VMA lock exists to remove. So each
//! counter set is sharded, and readers sum the shards. Reads are rare (a
//! Stats call, a scrape) and may see a sum that is a few events old; that
//! is the same contract as `/proc/vmstat`.
//!
//! A shard is a "CPU": the kernel's `count_vm_event` is `this_cpu_inc`, a
//! plain increment of a counter only its own CPU writes (no `lock` prefix;
//! preemption is off for that one instruction). Here a thread claims one of
//! [`NR_SHARDS`] exclusive shard ids when it first counts and gives it back
//! when it exits, so the shard's counters have one writer and an increment
//! is a load and a store, not a locked read-modify-write. On x86 a locked
//! instruction costs tens of cycles and waits for every earlier store to
//! drain; the three a fault made were the largest single cost of an
//! uncontended fault (`perf annotate` of `fault_single`, README
//! Benchmarks). Threads beyond [`NR_SHARDS`] alive at once share one more
//! shard, with atomic adds.

use crate::mm::mm_types::{FaultOutcome, FaultPath, ReuseCheck};
use crate::mm::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// Number of exclusive shards ("CPUs"): more than a laptop runs counting
/// threads at once. Counter sets have one more, shared by any thread that
/// found them all taken.
#[cfg(not(vmasim_loom))]
pub const NR_SHARDS: usize = 32;
/// Under loom every model thread shares one std thread-local, so they all
/// count in one shard with atomic adds anyway; one exclusive shard keeps
/// each summing read (one loom load per shard) inside the models' branch
/// budget.
#[cfg(vmasim_loom)]
pub const NR_SHARDS: usize = 1;

/// The shard of threads that found no exclusive one free: written with
/// atomic adds.
pub const SHARED_SHARD: usize = NR_SHARDS;

/// Shards per counter set (and sheaf sets of the VMA cache): the
/// exclusive ones and the shared one.
pub const NR_SHARD_SLOTS: usize = NR_SHARDS + 1;

/// Which exclusive shard ids are taken: bit `i` for id `i`.
static SHARD_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Not claimed yet (a thread that has never counted).
const UNCLAIMED: usize = usize::MAX;

std::thread_local! {
    // No destructor, so it stays readable while other thread-locals'
    // destructors run (crossbeam-epoch's, which may free VMAs and count).
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(UNCLAIMED) };
    // Gives the exclusive id back when the thread exits.
    static SHARD_OWNER: ShardOwner = const { ShardOwner };
}

/// The destructor half of a thread's shard claim.
struct ShardOwner;

impl Drop for ShardOwner {
    fn drop(&mut self) {
        let id = SHARD.with(|s| s.replace(SHARED_SHARD));
        if id < NR_SHARDS {
            // Release: this thread's last plain stores to the shard happen
            // before the next owner's Acquire claim, so its loads start from
            // them and no increment is lost across the hand-over.
            SHARD_IDS.fetch_and(!(1u64 << id), std::sync::atomic::Ordering::Release);
        }
    }
}

#[cold]
fn claim_shard() -> usize {
    use std::sync::atomic::Ordering as O;
    const ALL: u64 = (1u64 << NR_SHARDS) - 1;
    let mut taken = SHARD_IDS.load(O::Relaxed);
    let id = loop {
        let free = !taken & ALL;
        if free == 0 {
            break SHARED_SHARD;
        }
        let id = free.trailing_zeros() as usize;
        // Acquire pairs with the previous owner's Release in ShardOwner::drop.
        match SHARD_IDS.compare_exchange_weak(taken, taken | 1 << id, O::Acquire, O::Relaxed) {
            Ok(_) => break id,
            Err(now) => taken = now,
        }
    };
    // Registering the destructor can fail only while this thread is
    // already exiting; then nothing will give the id back, so use the
    // shared shard instead of holding one forever.
    if id < NR_SHARDS && SHARD_OWNER.try_with(|_| ()).is_err() {
        SHARD_IDS.fetch_and(!(1u64 << id), O::Release);
        SHARD.with(|s| s.set(SHARED_SHARD));
        return SHARED_SHARD;
    }
    SHARD.with(|s| s.set(id));
    id
}

/// The shard index of the calling thread: `< NR_SHARDS` if it is the
/// shard's only writer, [`SHARED_SHARD`] otherwise.
#[inline]
pub fn this_shard() -> usize {
    match SHARD.with(|s| s.get()) {
        UNCLAIMED => claim_shard(),
        id => id,
    }
}

/// `N` monotonically increasing counters, sharded per thread.
pub struct Counters<const N: usize> {
    shards: Box<[CachePadded<[AtomicU64; N]>; NR_SHARD_SLOTS]>,
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Counters<N> {
    /// All counters at zero.
    pub fn new() -> Self {
        let shards = Box::new(std::array::from_fn(|_| {
            CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0)))
        }));
        Self { shards }
    }

    /// Add `n` (wrapping) to counter `idx` in the calling thread's shard.
    #[inline]
    pub fn add(&self, idx: usize, n: u64) {
        let shard = this_shard();
        let c = &self.shards[shard][idx];
        // Relaxed: a counter publishes nothing; readers only want the total,
        // and a total that lags by a few events is the documented contract.
        // In an exclusive shard this thread is the only writer, so a plain
        // load and store is `this_cpu_add` (a reader may see the old value,
        // never a torn one). Under loom every model thread shares the std
        // thread-local, so the models keep the atomic add.
        if shard < NR_SHARDS && cfg!(not(vmasim_loom)) {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Add one to counter `idx`.
    #[inline]
    pub fn inc(&self, idx: usize) {
        self.add(idx, 1);
    }

    /// Subtract `n` (for gauges kept as a sum of signed deltas; the shard
    /// value wraps, the sum does not).
    #[inline]
    pub fn sub(&self, idx: usize, n: u64) {
        self.add(idx, n.wrapping_neg());
    }

    /// The sum of counter `idx` over all shards.
    pub fn sum(&self, idx: usize) -> u64 {
        self.shards.iter().fold(0u64, |acc, s| {
            acc.wrapping_add(s[idx].load(Ordering::Relaxed))
        })
    }

    /// Every counter's sum.
    pub fn snapshot(&self) -> [u64; N] {
        std::array::from_fn(|i| self.sum(i))
    }
}

/// The vmstat events of the per-VMA lock, as in `include/linux/vm_event_item.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum VmaLockEvent {
    /// The fault was handled under the per-VMA lock.
    VmaLockSuccess = 0,
    /// The per-VMA lock could not be taken (no VMA, write-locked, wrong mm or
    /// range); the fault fell back to `mmap_lock`.
    VmaLockAbort = 1,
    /// The fault started under the VMA lock but needed `mmap_lock`
    /// (`VM_FAULT_RETRY`, e.g. the VMA had no `anon_vma` yet).
    VmaLockRetry = 2,
    /// The VMA found by the RCU walk had been detached; the walk was retried.
    VmaLockMiss = 3,
}

/// Number of [`VmaLockEvent`]s.
pub const NR_VMA_LOCK_EVENTS: usize = 4;

impl VmaLockEvent {
    /// Every event, in counter order.
    pub const ALL: [VmaLockEvent; NR_VMA_LOCK_EVENTS] = [
        VmaLockEvent::VmaLockSuccess,
        VmaLockEvent::VmaLockAbort,
        VmaLockEvent::VmaLockRetry,
        VmaLockEvent::VmaLockMiss,
    ];

    /// The label value (`result` of `vmasim_vma_lock_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            VmaLockEvent::VmaLockSuccess => "success",
            VmaLockEvent::VmaLockAbort => "abort",
            VmaLockEvent::VmaLockRetry => "retry",
            VmaLockEvent::VmaLockMiss => "miss",
        }
    }
}

/// What the `/proc/PID/maps` readers count (no kernel vmstat item counts
/// them; these show how often each branch of `lock_next_vma` runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum MapsEvent {
    /// A maps read under RCU and per-VMA read locks (6.17's reader).
    ReadPerVma = 0,
    /// A maps read under `mmap_lock` for its whole walk (the old reader).
    ReadMmapLock = 1,
    /// `lock_next_vma` read-locked the VMA its RCU walk found.
    VmaLocked = 2,
    /// `vma_start_read` found the VMA detached (`-EAGAIN`): the walk was
    /// reset to the last printed end and retried.
    DetachedRetry = 3,
    /// The locked VMA lay beyond the last printed end and the address space
    /// had changed since the walk: the tree was walked again to rule out a
    /// false gap.
    GapRecheck = 4,
    /// `lock_next_vma_under_mmap_lock`: `mmap_lock` taken for read just to
    /// find and read-lock the next VMA (write-locked, other mm, behind the
    /// last end, or a gap that turned out false).
    MmapLockFallback = 5,
    /// `fallback_to_mmap_lock`: even the locked lookup failed (`vm_refcnt`
    /// overflow), the rest of the read ran under `mmap_lock`.
    RestUnderMmapLock = 6,
    /// vmasim only (no kernel analog): a gap or the end was seen by a walk
    /// that a writer overlapped; vmasim's tree can show a transient hole
    /// then (the maple tree cannot), so the reader asked again under
    /// `mmap_lock` (also counted in [`MapsEvent::MmapLockFallback`]).
    UnstableTree = 7,
}

/// Number of [`MapsEvent`]s.
pub const NR_MAPS_EVENTS: usize = 8;

impl MapsEvent {
    /// The per-VMA step events, in metric label order.
    pub const STEPS: [MapsEvent; 6] = [
        MapsEvent::VmaLocked,
        MapsEvent::DetachedRetry,
        MapsEvent::GapRecheck,
        MapsEvent::MmapLockFallback,
        MapsEvent::RestUnderMmapLock,
        MapsEvent::UnstableTree,
    ];

    /// The label value (`result` of `vmasim_maps_vma_lock_total`, `reader`
    /// of `vmasim_maps_reads_total`) and Stats key.
    pub fn as_str(self) -> &'static str {
        match self {
            MapsEvent::ReadPerVma => "per-vma",
            MapsEvent::ReadMmapLock => "mmap-lock",
            MapsEvent::VmaLocked => "locked",
            MapsEvent::DetachedRetry => "detached_retry",
            MapsEvent::GapRecheck => "gap_recheck",
            MapsEvent::MmapLockFallback => "mmap_lock_fallback",
            MapsEvent::RestUnderMmapLock => "rest_under_mmap_lock",
            MapsEvent::UnstableTree => "unstable_tree",
        }
    }

    /// Every event, by index.
    pub const ALL: [MapsEvent; NR_MAPS_EVENTS] = [
        MapsEvent::ReadPerVma,
        MapsEvent::ReadMmapLock,
        MapsEvent::VmaLocked,
        MapsEvent::DetachedRetry,
        MapsEvent::GapRecheck,
        MapsEvent::MmapLockFallback,
        MapsEvent::RestUnderMmapLock,
        MapsEvent::UnstableTree,
    ];
}

/// One event the engine counts: the kernel's `enum vm_event_item`. Its
/// families (a lock event, a fault by outcome and path, a reuse by check, a
/// maps reader step) expand to one counter per member, as the kernel's
/// `FOR_ALL_ZONES(PGALLOC)` does; [`VmEvent::index`] is the one place that
/// lays them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// `VMA_LOCK_SUCCESS`, `_ABORT`, `_RETRY`, `_MISS`.
    VmaLock(VmaLockEvent),
    /// A user fault, by what it did and which path served it.
    Fault(FaultOutcome, FaultPath),
    /// Walk retries plus `VM_FAULT_RETRY` restarts, summed over faults.
    FaultRetries,
    /// A check refused a reused VMA slot.
    ReuseDetected(ReuseCheck),
    /// A VMA changed under a held read lock (must stay 0).
    UseAfterReuse,
    /// A fault locked a reused slot that legitimately maps the address now.
    BenignReuse,
    /// A `/proc/PID/maps` reader's step.
    Maps(MapsEvent),
}

const NR_FAULT_PATHS: usize = FaultPath::ALL.len();
const FAULT_BASE: usize = NR_VMA_LOCK_EVENTS;
const FAULT_RETRIES: usize = FAULT_BASE + FaultOutcome::ALL.len() * NR_FAULT_PATHS;
const REUSE_BASE: usize = FAULT_RETRIES + 1;
const USE_AFTER_REUSE: usize = REUSE_BASE + ReuseCheck::ALL.len();
const BENIGN_REUSE: usize = USE_AFTER_REUSE + 1;
const MAPS_BASE: usize = BENIGN_REUSE + 1;

/// Number of counters [`VmEvent`] expands to.
pub const NR_VM_EVENTS: usize = MAPS_BASE + NR_MAPS_EVENTS;

impl VmEvent {
    /// The event's counter.
    #[inline]
    const fn index(self) -> usize {
        match self {
            VmEvent::VmaLock(e) => e as usize,
            VmEvent::Fault(o, p) => FAULT_BASE + o as usize * NR_FAULT_PATHS + p as usize,
            VmEvent::FaultRetries => FAULT_RETRIES,
            VmEvent::ReuseDetected(c) => REUSE_BASE + c as usize,
            VmEvent::UseAfterReuse => USE_AFTER_REUSE,
            VmEvent::BenignReuse => BENIGN_REUSE,
            VmEvent::Maps(e) => MAPS_BASE + e as usize,
        }
    }
}

/// The engine's event counters (`vm_event_states`): one sharded counter per
/// [`VmEvent`].
#[derive(Default)]
pub struct VmEvents(Counters<NR_VM_EVENTS>);

impl VmEvents {
    /// `count_vm_event`.
    #[inline]
    pub fn count_vm_event(&self, e: VmEvent) {
        self.0.inc(e.index());
    }

    /// `count_vm_events`: add `n`.
    #[inline]
    pub fn count_vm_events(&self, e: VmEvent, n: u64) {
        self.0.add(e.index(), n);
    }

    /// `count_vm_vma_lock_event`.
    #[inline]
    pub fn count_vm_vma_lock_event(&self, e: VmaLockEvent) {
        self.count_vm_event(VmEvent::VmaLock(e));
    }

    /// Every counter's sum (`all_vm_events`).
    pub fn snapshot(&self) -> VmEventCounts {
        VmEventCounts(self.0.snapshot())
    }
}

/// The sums of [`VmEvents`] at one moment, read by event.
#[derive(Debug, Clone, Copy)]
pub struct VmEventCounts([u64; NR_VM_EVENTS]);

impl std::ops::Index<VmEvent> for VmEventCounts {
    type Output = u64;
    fn index(&self, e: VmEvent) -> &u64 {
        &self.0[e.index()]
    }
}

impl VmEventCounts {
    /// The maps readers' events, indexed by [`MapsEvent`].
    pub fn maps(&self) -> [u64; NR_MAPS_EVENTS] {
        MapsEvent::ALL.map(|e| self[VmEvent::Maps(e)])
    }
}

/// Lock-event and fault counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// `VMA_LOCK_SUCCESS`, `_ABORT`, `_RETRY`, `_MISS`, in
    /// [`VmaLockEvent::ALL`] order.
    pub vma_lock: [u64; NR_VMA_LOCK_EVENTS],
    /// Faults by `[outcome][path]`.
    pub faults: [[u64; FaultPath::ALL.len()]; FaultOutcome::ALL.len()],
    /// Sum of retries.
    pub retries: u64,
    /// Reuses caught, by [`ReuseCheck`].
    pub reuse_detected: [u64; ReuseCheck::ALL.len()],
    /// VMAs that changed under a held read lock (must be 0).
    pub use_after_reuse: u64,
    /// Locked a reused slot that legitimately maps the address.
    pub benign_reuse: u64,
}

impl FaultStats {
    /// The fault counters of `s`.
    pub fn from_events(s: &VmEventCounts) -> Self {
        Self {
            vma_lock: VmaLockEvent::ALL.map(|e| s[VmEvent::VmaLock(e)]),
            faults: FaultOutcome::ALL.map(|o| FaultPath::ALL.map(|p| s[VmEvent::Fault(o, p)])),
            retries: s[VmEvent::FaultRetries],
            reuse_detected: ReuseCheck::ALL.map(|c| s[VmEvent::ReuseDetected(c)]),
            use_after_reuse: s[VmEvent::UseAfterReuse],
            benign_reuse: s[VmEvent::BenignReuse],
        }
    }

    /// One `VMA_LOCK_*` count.
    pub fn vma_lock(&self, e: VmaLockEvent) -> u64 {
        self.vma_lock[e as usize]
    }

    /// Reuses caught by check `c`.
    pub fn reuse_detected(&self, c: ReuseCheck) -> u64 {
        self.reuse_detected[c as usize]
    }

    /// Total faults.
    pub fn total(&self) -> u64 {
        self.faults.iter().flatten().sum()
    }

    /// Faults by outcome (all paths).
    pub fn by_outcome(&self, o: FaultOutcome) -> u64 {
        self.faults[o as usize].iter().sum()
    }

    /// Faults by path (all outcomes).
    pub fn by_path(&self, p: FaultPath) -> u64 {
        self.faults.iter().map(|r| r[p as usize]).sum()
    }
}

#[cfg(all(test, not(vmasim_loom)))]
mod tests {
    use super::*;

    #[test]
    fn add_inc_sum_snapshot() {
        let c: Counters<2> = Counters::new();
        c.add(0, 3);
        c.inc(1);
        c.sub(1, 5);
        assert_eq!(c.sum(0), 3);
        assert_eq!(c.snapshot(), [3, 1u64.wrapping_sub(5)]);
    }

    /// More threads than exclusive shards count at once, then exit and are
    /// replaced: the plain-store increments of the exclusive shards and the
    /// atomic ones of the shared shard lose nothing, and every exclusive id
    /// is handed back when its thread exits.
    #[test]
    fn counting_threads_beyond_the_shards_lose_no_increment() {
        const THREADS: usize = NR_SHARDS + 8;
        const ADDS: u64 = 20_000;
        let c = std::sync::Arc::new(Counters::<1>::new());
        for _round in 0..3 {
            let start = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
            let threads: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (c, start) = (c.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        for _ in 0..ADDS {
                            c.inc(0);
                        }
                        // Held until every thread has counted, so that
                        // no id is recycled within the round.
                        start.wait();
                        this_shard()
                    })
                })
                .collect();
            let mut shards: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let shared = shards.iter().filter(|&&s| s == SHARED_SHARD).count();
            shards.retain(|&s| s != SHARED_SHARD);
            let exclusive = shards.len();
            shards.sort_unstable();
            shards.dedup();
            assert_eq!(
                shards.len(),
                exclusive,
                "two live threads held one exclusive shard"
            );
            // Other tests' threads may hold some ids, never more than all.
            assert!(
                shared >= THREADS - NR_SHARDS,
                "{shared} threads on the shared shard"
            );
            // Ids come back when threads exit: were they kept, the first
            // round would have taken them all, and the later rounds would
            // find none (other tests' threads hold a few at a time at most).
            assert!(exclusive > 0, "no exclusive shard was free");
        }
        assert_eq!(c.sum(0), 3 * THREADS as u64 * ADDS);
    }

    #[test]
    fn sums_across_threads() {
        let c = std::sync::Arc::new(Counters::<3>::new());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.inc(1);
                    }
                    c.add(2, 7);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(c.snapshot(), [0, 4000, 28]);
    }

    #[test]
    fn sub_wraps_per_shard_but_not_in_sum() {
        let c = Counters::<1>::new();
        let t = std::thread::spawn({
            let c = std::sync::Arc::new(c);
            move || {
                c.add(0, 5);
                let c2 = c.clone();
                std::thread::spawn(move || c2.sub(0, 2)).join().unwrap();
                c.sum(0)
            }
        });
        assert_eq!(t.join().unwrap(), 3);
    }
}
