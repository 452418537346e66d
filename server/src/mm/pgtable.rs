//! A four-level radix page table with atomic PTEs.
//!
//! Faults populate it without a lock, as the kernel does under the per-VMA
//! lock plus the PTE lock: a missing table level is created once (a
//! `OnceLock`, the `pte_alloc` analog) and a PTE changes by compare-and-swap,
//! so two faults on the same page agree on one winner. Writers that zap or
//! write-protect a range hold `mmap_lock` for write and the VMAs
//! write-locked, so no fault runs in that range meanwhile.
//!
//! Tables are freed only with the whole `mm` (`free_pgtables` at exit), so a
//! fault never sees a table vanish under it.

use crate::mm::sync::{AtomicU64, Ordering};
use crate::mm::{PAGE_SHIFT, TASK_SIZE};
use std::sync::OnceLock;

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
struct Dir<T> {
    entries: Box<[OnceLock<Box<T>>]>,
}

impl<T> Default for Dir<T> {
    fn default() -> Self {
        Self {
            entries: (0..PTRS_PER_TABLE).map(|_| OnceLock::new()).collect(),
        }
    }
}

fn new_pte_table() -> Box<PteTable> {
    Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
}

/// The page table of one mm.
#[derive(Default)]
pub struct PageTable {
    pgd: Dir<Dir<Dir<PteTable>>>,
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

impl PageTable {
    /// The PTE for `addr` if its table exists (no allocation).
    #[inline]
    pub fn pte(&self, addr: u64) -> Option<&AtomicU64> {
        let [a, b, c, d] = indices(addr);
        let pud = self.pgd.entries[a].get()?;
        let pmd = pud.entries[b].get()?;
        let pt = pmd.entries[c].get()?;
        Some(&pt[d])
    }

    /// The PTE for `addr`, creating missing table levels (`pte_alloc`).
    /// Allocates only the first time a 2 MiB region is touched.
    #[inline]
    pub fn pte_alloc(&self, addr: u64) -> &AtomicU64 {
        debug_assert!(addr < TASK_SIZE);
        let [a, b, c, d] = indices(addr);
        let pud = self.pgd.entries[a].get_or_init(Default::default);
        let pmd = pud.entries[b].get_or_init(Default::default);
        let pt = pmd.entries[c].get_or_init(new_pte_table);
        &pt[d]
    }

    /// Call `f(addr, pte)` for every non-empty PTE in `[start, end)`,
    /// skipping table levels that were never created.
    pub fn for_each_present(&self, start: u64, end: u64, mut f: impl FnMut(u64, &AtomicU64)) {
        let mut addr = start;
        while addr < end {
            let [a, b, c, _] = indices(addr);
            let Some(pud) = self.pgd.entries[a].get() else {
                addr = next_boundary(addr, SPAN[0]);
                continue;
            };
            let Some(pmd) = pud.entries[b].get() else {
                addr = next_boundary(addr, SPAN[1]);
                continue;
            };
            let Some(pt) = pmd.entries[c].get() else {
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
        pt.pte_alloc(0x1000).store(pte::PRESENT, Ordering::Relaxed);
        pt.pte_alloc(0x7fff_0000_0000)
            .store(pte::PRESENT, Ordering::Relaxed);
        pt.pte_alloc(0x2000); // table exists, PTE empty
        let mut seen = vec![];
        pt.for_each_present(0, TASK_SIZE, |a, _| seen.push(a));
        assert_eq!(seen, vec![0x1000, 0x7fff_0000_0000]);
        let mut seen = vec![];
        pt.for_each_present(0x2000, 0x7fff_0000_0000, |a, _| seen.push(a));
        assert!(seen.is_empty());
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
