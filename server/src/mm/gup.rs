//! `mm/gup.c`'s part here: `populate_vma_page_range` and `__mm_populate`,
//! the faulting-in of a range that `MAP_POPULATE`, `mlock` and a
//! `mprotect` making a locked VMA writable ask for. Not user faults: they
//! go straight to `handle_mm_fault` under `mmap_lock`, count in no fault
//! or VMA-lock counter, and stop a VMA at its first failing page.

use crate::mm::{
    PAGE_SHIFT,
    memory::handle_mm_fault,
    mm_struct::MmStruct,
    mm_types::{Access, FaultOutcome, vm_flags::*},
    rcu::rcu_read_lock,
};

/// `populate_vma_page_range` over `[start, end)` (`mm_populate`, mlock):
/// fault every page in under `mmap_lock` for read, as GUP does — a write
/// fault where the VMA is private and writable (`FOLL_WRITE`, breaking COW
/// now), a read fault elsewhere. Inaccessible VMAs are skipped. These are
/// not user faults: they count in no fault or VMA-lock counter.
pub(crate) fn populate_range(mm: &MmStruct, start: u64, end: u64) {
    let state = mm.mmap_read_lock();
    if state.dead {
        return;
    }
    populate_vma_page_range(mm, start, end);
    drop(state);
}

/// The faulting loop of [`populate_range`], for a caller that already holds
/// `mmap_lock` (for read or write): `mprotect_fixup` populates each VMA it
/// made writable before it moves on to the next one, so the `anon_vma` this
/// gives the VMA decides whether the next VMA merges with it.
pub(crate) fn populate_vma_page_range(mm: &MmStruct, start: u64, end: u64) {
    let g = rcu_read_lock();
    for e in mm.mm_mt.overlapping(start, end, &g) {
        let vma = mm.ctx.pool.get(e.idx);
        let f = vma.fields();
        if f.vm_flags & VM_ACCESS_FLAGS == 0 {
            continue;
        }
        let access = if f.vm_flags & (VM_WRITE | VM_SHARED) == VM_WRITE {
            Access::Write
        } else {
            Access::Read
        };
        let mut addr = f.vm_start.max(start);
        while addr < f.vm_end.min(end) {
            let f = vma.fields();
            // __get_user_pages stops at the first page it cannot fault in
            // (VM_FAULT_OOM is -ENOMEM, VM_FAULT_SIGBUS -EFAULT) and
            // __mm_populate, ignoring the error, goes on at the next VMA.
            // So a budget-exhausted or hugetlb VMA costs one fault, not one
            // per page of a mapping that may be terabytes long.
            match handle_mm_fault(mm, vma, &f, addr, access, false) {
                Ok(
                    FaultOutcome::Oom
                    | FaultOutcome::Sigbus
                    | FaultOutcome::SegvMaperr
                    | FaultOutcome::SegvAccerr,
                )
                | Err(_) => break,
                Ok(_) => {}
            }
            addr += 1 << PAGE_SHIFT;
        }
    }
}
