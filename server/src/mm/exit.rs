//! `exit_mmap`: tear down an address space.
//!
//! The fix the review asked for: every VMA is detached
//! (`vma_mark_detached`) before it is freed. With `SLAB_TYPESAFE_BY_RCU`
//! the slot may be reused at once, and `vm_area_alloc` does not reset
//! `vm_refcnt`; a VMA freed while still "attached" would come back looking
//! attached, and a reader that found it in its old life could lock it.

use crate::mm::memory::free_pgtables;
use crate::mm::memory::zap_page_range;
use crate::mm::mm_struct::MmStruct;
use crate::mm::pgtable::USER_PGTABLES_CEILING;
use crate::mm::race::InjectPoint;
use crate::mm::vma::Writer;
use crate::mm::{MmError, TASK_SIZE};

/// What `exit_mmap` released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitStats {
    /// VMAs freed.
    pub vmas_freed: u32,
    /// Resident pages released.
    pub rss_pages_freed: u64,
}

/// `exit_mmap`: detach and free every VMA, free all pages. Afterwards the
/// mm is dead: faults see no mapping and writers get `ESRCH`.
pub fn exit_mmap(mm: &MmStruct) -> Result<ExitStats, MmError> {
    let mut w = Writer::lock(mm)?;
    w.w.state.dead = true;
    let pool = &mm.ctx.pool;
    let race = mm.race_hooks();
    let entries = mm.mm_mt.entries(&w.guard);
    for e in &entries {
        pool.get(e.idx).vma_start_write(w.w.seq());
    }
    let rss_pages_freed = zap_page_range(mm, 0, TASK_SIZE);
    for e in &entries {
        mm.mm_mt.erase(e.start, &w.guard);
    }
    // free_pgtables over the whole (now empty) address space: the budget
    // gets every table back even while other calls still hold the mm.
    free_pgtables(mm, 0, USER_PGTABLES_CEILING, &w.guard);
    for e in &entries {
        let vma = pool.get(e.idx);
        if let Some(r) = race {
            r.hit(InjectPoint::ExitBeforeDetach, vma);
        }
        if race.is_some_and(|r| r.bugs().exit_without_detach) {
            // The bug the review fixed: free a VMA that still looks attached.
            pool.vm_area_free_attached(e.idx, &w.guard);
        } else {
            vma.vma_mark_detached();
            pool.vm_area_free_with(e.idx, &w.guard);
        }
    }
    w.w.state.map_count = 0;
    Ok(ExitStats {
        vmas_freed: entries.len() as u32,
        rss_pages_freed,
    })
}
