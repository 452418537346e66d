//! `struct mm_struct`: one address space.
//!
//! `mmap_lock` is a reader/writer lock around the few fields only writers
//! change (`brk`, `map_count`...). The VMA tree and the page table sit
//! *outside* it, because faults read them with no lock at all. Taking
//! `mmap_lock` for write bumps `mm_lock_seq` to an odd value; every VMA a
//! writer touches gets `vm_lock_seq` set to it (`vma_start_write`), and
//! releasing the lock bumps the sequence again, unlocking all of them in
//! one store (`vma_end_write_all`).

use crate::mm::{
    file_table::FileTable,
    mm_types::{FaultLockMode, MapsReader, MmLockSeq},
    pgtable::{PageTable, PgtableBudget},
    race::RaceHooks,
    slab::VmaCache,
    sync::{AtomicU64, Ordering, RwLock, RwLockReadGuard, RwLockWriteGuard},
    vma_tree::VmaTree,
    vmstat::{Counters, VmEvents},
};
use crossbeam_utils::CachePadded;
use std::sync::Arc;

/// RSS counter: file pages.
pub const MM_FILEPAGES: usize = 0;
/// RSS counter: anonymous pages.
pub const MM_ANONPAGES: usize = 1;
/// RSS counter: shared anonymous pages.
pub const MM_SHMEMPAGES: usize = 2;
/// Number of RSS counters.
pub const NR_MM_COUNTERS: usize = 3;

/// What every mm of one simulator shares.
pub struct MmContext {
    /// The VMA cache.
    pub pool: Arc<VmaCache>,
    /// Every event the engine counts ([`crate::mm::vmstat::VmEvent`]).
    pub events: VmEvents,
    /// How faults lock.
    pub fault_lock: FaultLockMode,
    /// `vm.max_map_count`.
    pub max_map_count: usize,
    /// File ids and names.
    pub files: FileTable,
    /// Page-table memory of every mm, against its limit.
    pub pgtables: Arc<PgtableBudget>,
    /// How `/proc/PID/maps` is read (per-VMA locks or `mmap_lock`).
    pub maps_reader: MapsReader,
    /// The page cache of every file (what fault-around maps).
    pub page_cache: crate::mm::filemap::PageCache,
    /// Mappers of fork-shared anonymous pages (see [`crate::mm::rmap`]).
    pub anon_refs: crate::mm::rmap::AnonRefs,
    /// Bumped by every first anonymous write fault of a VMA (under a
    /// writer's `mmap_lock` or the VMA lock): on a line of its own, away
    /// from `pool`, `events` and `fault_lock`, which every fault reads.
    next_anon_vma: CachePadded<AtomicU64>,
}

impl MmContext {
    /// A context over `pool`.
    pub fn new(pool: Arc<VmaCache>, fault_lock: FaultLockMode, max_map_count: usize) -> Self {
        Self {
            pool,
            events: VmEvents::default(),
            fault_lock,
            max_map_count,
            files: FileTable::default(),
            pgtables: Arc::new(PgtableBudget::default()),
            maps_reader: MapsReader::default(),
            page_cache: Default::default(),
            anon_refs: Default::default(),
            next_anon_vma: CachePadded::new(AtomicU64::new(1)),
        }
    }

    /// Read `/proc/PID/maps` of every mm of this context with `reader`.
    pub fn with_maps_reader(mut self, reader: MapsReader) -> Self {
        self.maps_reader = reader;
        self
    }

    /// Limit the page tables of all mms of this context to `bytes`.
    pub fn with_pgtables_limit(mut self, bytes: u64) -> Self {
        self.pgtables = Arc::new(PgtableBudget::new(bytes));
        self
    }

    /// A new `anon_vma` id (`anon_vma_prepare`, `anon_vma_fork`).
    pub fn new_anon_vma(&self) -> u64 {
        // Relaxed: uniqueness only; taken on slow paths.
        self.next_anon_vma.fetch_add(1, Ordering::Relaxed)
    }
}

/// The fields `mmap_lock` protects.
#[derive(Debug, Clone)]
pub struct MmState {
    /// Start of the heap.
    pub start_brk: u64,
    /// Current program break.
    pub brk: u64,
    /// Number of VMAs.
    pub map_count: usize,
    /// Set by `exit_mmap`; later operations see no process.
    pub dead: bool,
    /// `vm_flags` of the x86-64 gate area (`[vsyscall]`, `get_gate_vma`)
    /// shown after the last VMA, `None` for none: not a VMA (not in the tree,
    /// not in `map_count`, no operation reaches it), kept from an imported
    /// maps text and inherited by fork (see proc_maps).
    pub gate_vma: Option<u64>,
}

/// One simulated address space.
///
/// Laid out by who writes what. Every fault reads `ctx`, `race`, `seq`,
/// the tree and the page-table root; a writer of the same mm (mmap,
/// mprotect, munmap anywhere else in it) writes `mmap_lock` and its state,
/// `mm_lock_seq`, `proc_view` and the page-table byte count. Each of those
/// sits on cache lines of its own ([`CachePadded`]), so a writer dirties
/// only the line a fault must read anyway (`mm_lock_seq`, which
/// `vma_start_read` compares), not the read-mostly ones: the kernel's
/// `struct mm_struct` keeps its often-written `mm_count` in a
/// `____cacheline_aligned_in_smp` group of its own ("Fields which are
/// often written to are placed in a separate cache line") for the same
/// reason.
pub struct MmStruct {
    /// `mm_lock_seq` (written at every `mmap_write_lock`/unlock, read by
    /// every lockless fault) and the id beside it, read with it.
    pub(crate) seq: CachePadded<MmLockSeq>,
    pub(crate) pid: u32,
    mmap_lock: CachePadded<RwLock<MmState>>,
    pub(crate) mm_mt: VmaTree,
    pub(crate) pgd: PageTable,
    pub(crate) rss: Counters<NR_MM_COUNTERS>,
    pub(crate) ctx: Arc<MmContext>,
    /// Race-lab hooks; `None` for every mm of ordinary traffic, so the hot
    /// path pays one load and a predictable branch.
    pub(crate) race: Option<Arc<RaceHooks>>,
    /// What a lockless maps reader may read of [`MmState`], republished at
    /// every `mmap_write_unlock`.
    pub(crate) proc_view: CachePadded<ProcView>,
}

/// The [`MmState`] fields `show_map_vma` needs, published at every
/// `mmap_write_unlock` so that a maps reader under per-VMA locks reads
/// them without `mmap_lock`, as `get_vma_name` reads `mm->brk` and
/// `mm->start_brk` (plain loads, no lock) and `get_gate_vma` needs none.
pub(crate) struct ProcView {
    pub(crate) start_brk: AtomicU64,
    pub(crate) brk: AtomicU64,
    /// `gate_vma` flags, [`ProcView::NO_GATE`] for none.
    pub(crate) gate_vma: AtomicU64,
}

impl ProcView {
    /// No gate area (`vm_flags` are never all ones).
    pub(crate) const NO_GATE: u64 = u64::MAX;

    fn publish(&self, s: &MmState) {
        // Relaxed: a racy snapshot like the kernel's reads of mm->brk; the
        // Release bump of mm_lock_seq that follows orders it for readers
        // that care (none need more than a value that was true once).
        self.start_brk.store(s.start_brk, Ordering::Relaxed);
        self.brk.store(s.brk, Ordering::Relaxed);
        self.gate_vma
            .store(s.gate_vma.unwrap_or(Self::NO_GATE), Ordering::Relaxed);
    }

    /// `(start_brk, brk, gate_vma)` as last published.
    pub(crate) fn read(&self) -> (u64, u64, Option<u64>) {
        let g = self.gate_vma.load(Ordering::Relaxed);
        (
            self.start_brk.load(Ordering::Relaxed),
            self.brk.load(Ordering::Relaxed),
            (g != Self::NO_GATE).then_some(g),
        )
    }
}

impl MmStruct {
    /// This mm's race-lab hooks, if it has any.
    ///
    /// Built with `RUSTFLAGS="--cfg vmasim_no_race_hooks"` it is always
    /// `None`, so every hook call compiles out: the baseline against which
    /// the fault benchmark shows what the disarmed hooks cost (README,
    /// "Benchmarks"). Scenarios cannot run in such a build.
    #[inline(always)]
    pub(crate) fn race_hooks(&self) -> Option<&RaceHooks> {
        #[cfg(vmasim_no_race_hooks)]
        {
            None
        }
        #[cfg(not(vmasim_no_race_hooks))]
        {
            self.race.as_deref()
        }
    }
}

fn next_mm_id() -> u64 {
    // Relaxed: uniqueness only. Ids are never reused, which is what lets
    // vma_start_read compare ids where the kernel compares pointers.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl MmStruct {
    /// An empty address space (`mm_alloc`).
    pub fn new(pid: u32, ctx: Arc<MmContext>, race: Option<Arc<RaceHooks>>) -> Self {
        Self {
            seq: CachePadded::new(MmLockSeq::new(next_mm_id())),
            pid,
            mmap_lock: CachePadded::new(RwLock::new(MmState {
                start_brk: crate::mm::DEFAULT_START_BRK,
                brk: crate::mm::DEFAULT_START_BRK,
                map_count: 0,
                dead: false,
                gate_vma: None,
            })),
            mm_mt: VmaTree::new(),
            pgd: PageTable::new(ctx.pgtables.clone()),
            rss: Counters::new(),
            ctx,
            race,
            proc_view: CachePadded::new(ProcView {
                start_brk: AtomicU64::new(crate::mm::DEFAULT_START_BRK),
                brk: AtomicU64::new(crate::mm::DEFAULT_START_BRK),
                gate_vma: AtomicU64::new(ProcView::NO_GATE),
            }),
        }
    }

    /// The mm's id (what `vm_mm` holds).
    pub fn id(&self) -> u64 {
        self.seq.id
    }

    /// The pid it was created for.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The shared context.
    pub fn ctx(&self) -> &Arc<MmContext> {
        &self.ctx
    }

    /// Current `mm_lock_seq`.
    pub fn mm_lock_seq(&self) -> u64 {
        self.seq.mm_lock_seq.load(Ordering::Acquire)
    }

    /// Resident pages (all RSS counters).
    pub fn rss_pages(&self) -> u64 {
        self.rss.snapshot().iter().sum()
    }

    /// `mmap_write_lock`.
    pub fn mmap_write_lock(&self) -> MmapWriteGuard<'_> {
        let state = self.mmap_lock.write().unwrap_or_else(|e| e.into_inner());
        // AcqRel: the odd sequence must be visible before any VMA is marked
        // with it (mm_lock_seqcount_begin's smp_wmb).
        let seq = self.seq.mm_lock_seq.fetch_add(1, Ordering::AcqRel) + 1;
        debug_assert!(seq % 2 == 1);
        MmapWriteGuard {
            mm: self,
            state,
            seq,
        }
    }

    /// `mmap_read_lock`.
    pub fn mmap_read_lock(&self) -> RwLockReadGuard<'_, MmState> {
        self.mmap_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// `mmap_read_trylock`: `None` while a writer holds (or waits for) the
    /// lock.
    pub fn mmap_read_trylock(&self) -> Option<RwLockReadGuard<'_, MmState>> {
        match self.mmap_lock.try_read() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// `mmap_lock` held for write. Dropping it is `mmap_write_unlock`, which
/// first unlocks every VMA write-locked under it (`vma_end_write_all`).
pub struct MmapWriteGuard<'a> {
    mm: &'a MmStruct,
    /// The protected fields.
    pub state: RwLockWriteGuard<'a, MmState>,
    seq: u64,
}

impl MmapWriteGuard<'_> {
    /// The odd `mm_lock_seq` of this write cycle, for `vma_start_write`.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for MmapWriteGuard<'_> {
    fn drop(&mut self) {
        self.mm.proc_view.publish(&self.state);
        // Release pairs with the Acquire re-check in vma_start_read: a
        // reader that sees the new sequence sees every change made under
        // the lock. The RwLock is released after this (field drop order).
        self.mm.seq.mm_lock_seq.fetch_add(1, Ordering::Release);
    }
}
