//! A four-level radix page table with atomic PTEs, and the page-table
//! memory budget.
//!
//! Faults populate it without a lock, as the kernel does under the per-VMA
//! lock plus the PTE lock: a missing table is allocated, then installed by
//! compare-and-swap (`__pte_alloc` + `pmd_install`: the loser of a race
//! frees its table), and a PTE changes by compare-and-swap, so two faults
//! on the same page agree on one winner. Writers that zap or write-protect
//! a range hold `mmap_lock` for write and the VMAs write-locked, so no
//! fault runs in that range meanwhile.
//!
//! **Page tables are the memory a client can make the server allocate
//! with the fewest bytes sent**: one read fault every 2 MiB costs a 4 KiB
//! PTE table (the zero page is not even RSS). So every table is counted,
//! per mm (`mm->pgtables_bytes`, `VmPTE` in `/proc/PID/status`) and against
//! one budget for the whole simulator ([`PgtableBudget`]). A table that
//! would exceed the budget is not allocated: the fault fails with
//! `VM_FAULT_OOM` (the kernel's answer when `pte_alloc` fails) and fork
//! with `ENOMEM` (`copy_page_range`). Tables are freed again where the
//! kernel frees them: by `free_pgtables` (memory.rs) for the range an unmap leaves
//! without any VMA (bounded by the neighbours, `floor`/`ceiling`), and all
//! of them at exit. The top level (the `pgd`) belongs to the mm itself and
//! is not charged, as in the kernel's `pgtables_bytes`.

use crate::mm::{
    PAGE_SHIFT, TASK_SIZE,
    sync::{AtomicU64, Ordering},
};
use crossbeam_utils::CachePadded;
use std::sync::Arc;
use std::sync::atomic::AtomicPtr;

const PTRS_PER_TABLE: usize = 512;
const LEVEL_BITS: u32 = 9;

/// PTE bits (the simulator's own encoding; the frame sits above bit 12).
pub mod pte {
    /// Present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const WRITE: u64 = 1 << 1;
    /// Shared copy-on-write with another mm (after fork).
    pub const COW: u64 = 1 << 2;
    /// The shared zero page.
    pub const ZERO: u64 = 1 << 3;
    /// A page-cache page of a file.
    pub const FILE: u64 = 1 << 4;
    /// A shared anonymous (shmem) page.
    pub const SHMEM: u64 = 1 << 5;
    /// Frame number shift.
    pub const FRAME_SHIFT: u32 = 12;
}

/// Allocate a frame number. Frames have no contents; a number only has to be
/// unique so tests can see a COW break produce a new page. Each thread
/// counts in its own range, so the fault path writes no shared line.
pub fn alloc_frame() -> u64 {
    use std::cell::Cell;
    std::thread_local! {
        static NEXT: Cell<u64> = Cell::new({
            static THREADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            // Relaxed: only uniqueness matters.
            THREADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 28
        });
    }
    NEXT.with(|n| {
        let f = n.get();
        n.set(f + 1);
        f
    })
}

type PteTable = [AtomicU64; PTRS_PER_TABLE];

/// Bytes of one table at any level: 512 eight-byte entries, one page, as
/// in the kernel (`PAGE_SIZE` per PTE, PMD and PUD table).
pub const TABLE_BYTES: u64 = (PTRS_PER_TABLE * 8) as u64;

/// The page-table memory of a whole simulator: bytes in use and the limit.
///
/// Charged before a table is allocated and uncharged after it is freed, so
/// `used` never exceeds `limit` and never lags behind real memory.
#[derive(Debug)]
pub struct PgtableBudget {
    used: AtomicU64,
    limit: u64,
}

impl PgtableBudget {
    /// A budget of `limit` bytes (rounded down to whole tables).
    pub fn new(limit: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// The limit, bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of page tables allocated now, all mms together.
    pub fn used(&self) -> u64 {
        // Relaxed: a statistic; the CAS in `charge` is what enforces.
        self.used.load(Ordering::Relaxed)
    }

    /// Reserve one table. Relaxed is enough: the counter orders nothing,
    /// it only has to never pass `limit`, which the read-modify-write
    /// guarantees. Only the first touch of a 2 MiB region gets here, so
    /// the fault fast path never writes this shared line.
    fn charge(&self) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(TABLE_BYTES).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn uncharge(&self, tables: u64) {
        self.used.fetch_sub(tables * TABLE_BYTES, Ordering::Relaxed);
    }
}

impl Default for PgtableBudget {
    /// No limit (engine tests and tools).
    fn default() -> Self {
        Self::new(u64::MAX)
    }
}

/// `pte_alloc` failed: the page-table budget is spent (`VM_FAULT_OOM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgtableOom;

/// One directory level: 512 pointers to the next level, null when absent.
struct Dir<T> {
    entries: Box<[AtomicPtr<T>]>,
}

impl<T> Default for Dir<T> {
    fn default() -> Self {
        Self {
            entries: (0..PTRS_PER_TABLE)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        }
    }
}

/// How a level frees what hangs below it (used by the teardown walk).
trait Level {
    /// A new, empty table of this level.
    fn alloc() -> Box<Self>;

    /// Free every table below this one; returns how many were freed.
    ///
    /// # Safety
    /// No other thread may access this table or anything below it.
    unsafe fn free_children(&self) -> u64;
}

impl Level for PteTable {
    fn alloc() -> Box<Self> {
        Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    unsafe fn free_children(&self) -> u64 {
        0
    }
}

impl<T: Level> Level for Dir<T> {
    fn alloc() -> Box<Self> {
        Box::default()
    }

    unsafe fn free_children(&self) -> u64 {
        let mut n = 0;
        for e in self.entries.iter() {
            // Most entries of a directory being freed are empty (an unmap
            // frees the directory of a 1 GiB span that held one small
            // mapping): a plain load skips them, where the swap in
            // take_and_free is a locked instruction per entry (512 of
            // them per directory). Relaxed: exclusive access, as below.
            if e.load(Ordering::Relaxed).is_null() {
                continue;
            }
            // SAFETY: the caller guarantees exclusive access below here.
            n += unsafe { take_and_free(e) };
        }
        n
    }
}

/// Unlink the table `e` points to (if any) and free it and everything below
/// it. Returns how many tables were freed.
///
/// # Safety
/// No other thread may access the table or anything below it.
unsafe fn take_and_free<T: Level>(e: &AtomicPtr<T>) -> u64 {
    // Read before clearing, as free_pud_range's pud_none_or_clear_bad
    // does: an entry that is already empty is not written, so unmapping a
    // range that was never faulted leaves the cache line, which holds the
    // entries of seven neighbouring spans that faulting threads walk
    // through, unmodified in their caches.
    // Relaxed: exclusive by the caller's contract; no one else stores it.
    let p = e.load(Ordering::Relaxed);
    if p.is_null() {
        return 0;
    }
    e.store(std::ptr::null_mut(), Ordering::Relaxed);
    // SAFETY: `p` came from `Box::into_raw` in `get_or_alloc`, was unlinked
    // just now, and nobody else holds it (the caller's contract).
    let table = unsafe { Box::from_raw(p) };
    // SAFETY: same contract, one level down.
    let below = unsafe { table.free_children() };
    drop(table);
    below + 1
}

/// The table `e` points to, allocating and installing one if absent.
fn get_or_alloc<'a, T: Level>(
    e: &'a AtomicPtr<T>,
    budget: &PgtableBudget,
    mine: &AtomicU64,
) -> Result<&'a T, PgtableOom> {
    // Acquire pairs with the Release of the CAS that installed the table:
    // its zeroed entries are visible before its address is.
    let p = e.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: installed tables live until `take_and_free`, whose
        // callers exclude every fault in the table's range.
        return Ok(unsafe { &*p });
    }
    if !budget.charge() {
        return Err(PgtableOom);
    }
    let new = Box::into_raw(T::alloc());
    // AcqRel on success publishes the zeroed table; Acquire on failure
    // sees the winner's table (pmd_install under the kernel's ptl).
    match e.compare_exchange(
        std::ptr::null_mut(),
        new,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            mine.fetch_add(TABLE_BYTES, Ordering::Relaxed);
            // SAFETY: just installed; lives as above.
            Ok(unsafe { &*new })
        }
        Err(winner) => {
            // Another fault installed one first: free ours.
            // SAFETY: `new` was never shared.
            drop(unsafe { Box::from_raw(new) });
            budget.uncharge(1);
            // SAFETY: as for an installed table above.
            Ok(unsafe { &*winner })
        }
    }
}

/// The page table of one mm.
pub struct PageTable {
    pgd: Dir<Dir<Dir<PteTable>>>,
    /// `mm->pgtables_bytes`: this mm's tables below the pgd. Changed by
    /// every table allocated or freed (a writer mapping and unmapping far
    /// away does both each time), so it sits on a line of its own, away
    /// from the root pointer every fault's walk starts from.
    bytes: CachePadded<AtomicU64>,
    budget: Arc<PgtableBudget>,
}

impl Default for PageTable {
    /// A page table with no budget (engine tests).
    fn default() -> Self {
        Self::new(Arc::new(PgtableBudget::default()))
    }
}

impl Drop for PageTable {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: nobody else can reach any table.
        let n = unsafe { self.pgd.free_children() };
        self.budget.uncharge(n);
    }
}

#[inline]
fn indices(addr: u64) -> [usize; 4] {
    let vpn = addr >> PAGE_SHIFT;
    let mask = (PTRS_PER_TABLE - 1) as u64;
    [
        ((vpn >> (3 * LEVEL_BITS)) & mask) as usize,
        ((vpn >> (2 * LEVEL_BITS)) & mask) as usize,
        ((vpn >> LEVEL_BITS) & mask) as usize,
        (vpn & mask) as usize,
    ]
}

/// Bytes covered by one entry at each level.
const SPAN: [u64; 4] = [1 << 39, 1 << 30, 1 << 21, 1 << 12];

#[inline]
fn get<T>(e: &AtomicPtr<T>) -> Option<&T> {
    // Acquire: as in `get_or_alloc`.
    let p = e.load(Ordering::Acquire);
    // SAFETY: as in `get_or_alloc`.
    (!p.is_null()).then(|| unsafe { &*p })
}

impl PageTable {
    /// An empty page table charging its tables to `budget`.
    pub fn new(budget: Arc<PgtableBudget>) -> Self {
        Self {
            pgd: Dir::default(),
            bytes: CachePadded::new(AtomicU64::new(0)),
            budget,
        }
    }

    /// `mm_pgtables_bytes`: bytes of this mm's page tables below the pgd.
    #[cfg(test)]
    pub fn pgtables_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The PTE for `addr` if its table exists (no allocation).
    #[inline]
    pub fn pte(&self, addr: u64) -> Option<&AtomicU64> {
        let [a, b, c, d] = indices(addr);
        let pud = get(&self.pgd.entries[a])?;
        let pmd = get(&pud.entries[b])?;
        let pt = get(&pmd.entries[c])?;
        Some(&pt[d])
    }

    /// The PTE for `addr`, creating missing table levels (`pte_alloc`).
    /// Allocates only the first time a 2 MiB region is touched, and fails
    /// when that would pass the page-table budget.
    #[inline]
    pub fn pte_alloc(&self, addr: u64) -> Result<&AtomicU64, PgtableOom> {
        debug_assert!(addr < TASK_SIZE);
        let [a, b, c, d] = indices(addr);
        let (budget, mine) = (&*self.budget, &self.bytes);
        let pud = get_or_alloc(&self.pgd.entries[a], budget, mine)?;
        let pmd = get_or_alloc(&pud.entries[b], budget, mine)?;
        let pt = get_or_alloc(&pmd.entries[c], budget, mine)?;
        Ok(&pt[d])
    }

    /// `free_pgd_range`: free every table (any level) that covers part of
    /// `[start, end)` and lies entirely inside `[floor, ceiling)`, the span
    /// with no VMA around the range. Tables shared with a neighbouring VMA
    /// stay, as in the kernel.
    ///
    /// # Safety
    /// No VMA may intersect `[floor, ceiling)`, and no thread may be using
    /// a table in it: the caller holds `mmap_lock` for write (faults that
    /// take it are out) and every fault under a per-VMA lock is inside some
    /// VMA, so it only touches tables overlapping that VMA, which are not
    /// freed. References returned by [`Self::pte`] into the range must be
    /// dead.
    pub unsafe fn free_pgd_range(&self, start: u64, end: u64, floor: u64, ceiling: u64) {
        let inside = |lo: u64, span: u64| lo >= floor && lo.saturating_add(span) <= ceiling;
        let mut freed = 0;
        let mut addr = start;
        while addr < end {
            let [a, b, c, _] = indices(addr);
            let lo0 = addr & !(SPAN[0] - 1);
            let e0 = &self.pgd.entries[a];
            if inside(lo0, SPAN[0]) {
                // SAFETY: the whole 512 GiB span has no VMA (contract).
                freed += unsafe { take_and_free(e0) };
                addr = next_boundary(addr, SPAN[0]);
                continue;
            }
            let Some(pud) = get(e0) else {
                addr = next_boundary(addr, SPAN[0]);
                continue;
            };
            let lo1 = addr & !(SPAN[1] - 1);
            if inside(lo1, SPAN[1]) {
                // SAFETY: as above, for a 1 GiB span.
                freed += unsafe { take_and_free(&pud.entries[b]) };
                addr = next_boundary(addr, SPAN[1]);
                continue;
            }
            let Some(pmd) = get(&pud.entries[b]) else {
                addr = next_boundary(addr, SPAN[1]);
                continue;
            };
            let lo2 = addr & !(SPAN[2] - 1);
            if inside(lo2, SPAN[2]) {
                debug_assert!(
                    get(&pmd.entries[c])
                        .is_none_or(|pt| pt.iter().all(|p| p.load(Ordering::Relaxed) == 0))
                );
                // SAFETY: as above, for a 2 MiB PTE table.
                freed += unsafe { take_and_free(&pmd.entries[c]) };
            }
            addr = next_boundary(addr, SPAN[2]);
        }
        self.bytes.fetch_sub(freed * TABLE_BYTES, Ordering::Relaxed);
        self.budget.uncharge(freed);
    }

    /// Call `f(addr, pte)` for every non-empty PTE in `[start, end)`,
    /// skipping table levels that were never created.
    pub fn for_each_present(&self, start: u64, end: u64, mut f: impl FnMut(u64, &AtomicU64)) {
        let mut addr = start;
        while addr < end {
            let [a, b, c, _] = indices(addr);
            let Some(pud) = get(&self.pgd.entries[a]) else {
                addr = next_boundary(addr, SPAN[0]);
                continue;
            };
            let Some(pmd) = get(&pud.entries[b]) else {
                addr = next_boundary(addr, SPAN[1]);
                continue;
            };
            let Some(pt) = get(&pmd.entries[c]) else {
                addr = next_boundary(addr, SPAN[2]);
                continue;
            };
            let table_end = next_boundary(addr, SPAN[2]).min(end);
            while addr < table_end {
                let p = &pt[indices(addr)[3]];
                // Relaxed: callers hold mmap_lock for write, which orders
                // them after every fault that wrote these PTEs.
                if p.load(Ordering::Relaxed) != 0 {
                    f(addr, p);
                }
                addr += SPAN[3];
            }
        }
    }
}

/// `USER_PGTABLES_CEILING`: with no VMA above, page tables may be freed up
/// to the end of the user half of the address space, `1 << 47` -- not
/// `TASK_SIZE`, which stops a page short of it and would keep the top
/// table alive.
pub(crate) const USER_PGTABLES_CEILING: u64 = 1 << 47;

fn next_boundary(addr: u64, span: u64) -> u64 {
    (addr & !(span - 1)).saturating_add(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populate_and_walk_sparse() {
        let pt = PageTable::default();
        assert!(pt.pte(0x1000).is_none());
        pt.pte_alloc(0x1000)
            .unwrap()
            .store(pte::PRESENT, Ordering::Relaxed);
        pt.pte_alloc(0x7fff_0000_0000)
            .unwrap()
            .store(pte::PRESENT, Ordering::Relaxed);
        pt.pte_alloc(0x2000).unwrap(); // table exists, PTE empty
        let mut seen = vec![];
        pt.for_each_present(0, TASK_SIZE, |a, _| seen.push(a));
        assert_eq!(seen, vec![0x1000, 0x7fff_0000_0000]);
        let mut seen = vec![];
        pt.for_each_present(0x2000, 0x7fff_0000_0000, |a, _| seen.push(a));
        assert!(seen.is_empty());
    }

    #[test]
    fn tables_are_counted_and_the_budget_holds() {
        // Room for exactly 5 tables: PUD + PMD + PTE for the first 2 MiB
        // region, then one more PTE table in the same 1 GiB.
        let budget = Arc::new(PgtableBudget::new(5 * TABLE_BYTES));
        let pt = PageTable::new(budget.clone());
        pt.pte_alloc(0x40_0000).unwrap();
        assert_eq!(pt.pgtables_bytes(), 3 * TABLE_BYTES);
        pt.pte_alloc(0x40_1000).unwrap(); // same table: free of charge
        pt.pte_alloc(0x60_0000).unwrap();
        pt.pte_alloc(0x80_0000).unwrap();
        assert_eq!(budget.used(), 5 * TABLE_BYTES);
        // A sixth table would pass the limit: refused, nothing allocated.
        assert_eq!(pt.pte_alloc(0xa0_0000).err(), Some(PgtableOom));
        assert_eq!(budget.used(), 5 * TABLE_BYTES);
        assert!(pt.pte(0xa0_0000).is_none());
        // Dropping the page table gives every table back.
        drop(pt);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn free_pgd_range_keeps_tables_shared_with_neighbours() {
        let budget = Arc::new(PgtableBudget::default());
        let pt = PageTable::new(budget.clone());
        // Three 2 MiB regions in one 1 GiB: 0x0-0x20_0000 (a neighbour
        // lives at its start), 0x20_0000.., 0x40_0000.. (the hole).
        for a in [0x1000, 0x20_0000, 0x40_0000] {
            pt.pte_alloc(a).unwrap();
        }
        assert_eq!(budget.used(), 5 * TABLE_BYTES);
        // Unmapped [0x2000, 0x60_0000) with a VMA ending at 0x2000 and
        // none after: the first PTE table is shared with the neighbour.
        // SAFETY: single-threaded test; no reference into the range.
        unsafe { pt.free_pgd_range(0x2000, 0x60_0000, 0x2000, USER_PGTABLES_CEILING) };
        assert!(pt.pte(0x1000).is_some());
        assert!(pt.pte(0x20_0000).is_none() && pt.pte(0x40_0000).is_none());
        assert_eq!(pt.pgtables_bytes(), 3 * TABLE_BYTES);
        // Everything, as at exit: the PMD and PUD tables go too.
        // SAFETY: as above.
        unsafe { pt.free_pgd_range(0, USER_PGTABLES_CEILING, 0, USER_PGTABLES_CEILING) };
        assert_eq!((pt.pgtables_bytes(), budget.used()), (0, 0));
    }

    #[test]
    fn racing_allocations_install_one_table() {
        let budget = Arc::new(PgtableBudget::default());
        let pt = Arc::new(PageTable::new(budget.clone()));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let pt = pt.clone();
                std::thread::spawn(move || {
                    for i in 0..256u64 {
                        pt.pte_alloc(i << 21).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // 1 PUD + 1 PMD + 256 PTE tables, each charged once.
        assert_eq!(budget.used(), 258 * TABLE_BYTES);
        assert_eq!(pt.pgtables_bytes(), 258 * TABLE_BYTES);
    }

    #[test]
    fn frames_are_unique_across_threads() {
        let a: Vec<u64> = (0..100).map(|_| alloc_frame()).collect();
        let b = std::thread::spawn(|| (0..100).map(|_| alloc_frame()).collect::<Vec<_>>())
            .join()
            .unwrap();
        let mut all: Vec<u64> = a.into_iter().chain(b).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 200);
    }
}
