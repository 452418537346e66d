//! `madvise` (`mm/madvise.c`): the advice that changes what vmasim models.
//!
//! * `MADV_DONTNEED` zaps the pages of the range; `MADV_FREE` marks private
//!   anonymous pages lazily freeable (they stay resident, and in RSS, until
//!   reclaim, which vmasim does not simulate). Since 6.16 both run under
//!   the per-VMA read lock when the range lies in one VMA
//!   (`MADVISE_VMA_READ_LOCK`: `lock_vma_under_rcu`, counting MISS/ABORT
//!   like a fault), and under `mmap_lock` for read otherwise.
//! * `MADV_DONTFORK` / `MADV_DOFORK` and `MADV_WIPEONFORK` /
//!   `MADV_KEEPONFORK` change `vm_flags` (`VM_DONTCOPY`, `VM_WIPEONFORK`)
//!   through `vma_modify_flags`, so they split and merge VMAs like
//!   mprotect, under `mmap_lock` for write.
//!
//! Like `madvise_walk_vmas`, holes in the range do not stop the walk: every
//! mapped part gets the advice, then the call fails with ENOMEM.

use crate::mm::file_table::huge_page_shift;
use crate::mm::memory::zap_page_range;
use crate::mm::mm_struct::MmStruct;
use crate::mm::mm_types::vm_flags::*;
use crate::mm::rcu::rcu_read_lock;
use crate::mm::slab::VmaIdx;
use crate::mm::vma::{Vmg, Writer, vma_modify};
use crate::mm::{MmError, page_align, page_aligned};

/// `MADV_DONTNEED`.
pub const MADV_DONTNEED: u32 = 4;
/// `MADV_FREE`.
pub const MADV_FREE: u32 = 8;
/// `MADV_DONTFORK`.
pub const MADV_DONTFORK: u32 = 10;
/// `MADV_DOFORK`.
pub const MADV_DOFORK: u32 = 11;
/// `MADV_WIPEONFORK`.
pub const MADV_WIPEONFORK: u32 = 18;
/// `MADV_KEEPONFORK`.
pub const MADV_KEEPONFORK: u32 = 19;

/// `madvise(start, len, advice)`.
pub fn do_madvise(mm: &MmStruct, start: u64, len: u64, advice: u32) -> Result<(), MmError> {
    if !matches!(
        advice,
        MADV_DONTNEED | MADV_FREE | MADV_DONTFORK | MADV_DOFORK | MADV_WIPEONFORK | MADV_KEEPONFORK
    ) {
        return Err(MmError::inval(
            "advice",
            format!(
                "{advice} is not simulated (DONTNEED 4, FREE 8, DONTFORK 10, DOFORK 11, WIPEONFORK 18, KEEPONFORK 19)"
            ),
        ));
    }
    if !page_aligned(start) {
        return Err(MmError::inval(
            "addr",
            format!("{start:#x} is not page aligned"),
        ));
    }
    let Some(len) = page_align(len) else {
        return Err(MmError::inval("length", "overflows"));
    };
    // is_valid_madvise: only a wrap is EINVAL; a range past TASK_SIZE has
    // no VMAs there, which the walk reports as ENOMEM.
    let Some(end) = start.checked_add(len) else {
        return Err(MmError::inval("length", "overflows"));
    };
    if len == 0 {
        return Ok(());
    }
    match advice {
        MADV_DONTNEED | MADV_FREE => madvise_free_or_dontneed(mm, start, end, advice),
        _ => madvise_update_vma_flags(mm, start, end, advice),
    }
}

fn hole_error(start: u64, end: u64) -> MmError {
    MmError::AdviceHoles { start, end }
}

/// DONTNEED / FREE: under the VMA read lock if the range is inside one VMA
/// (`try_vma_read_lock`), else under `mmap_lock` for read.
fn madvise_free_or_dontneed(
    mm: &MmStruct,
    start: u64,
    end: u64,
    advice: u32,
) -> Result<(), MmError> {
    let mut retries = 0;
    if let Some(locked) = crate::mm::mmap_lock::lock_vma_under_rcu(mm, start, &mut retries) {
        let f = locked.vma.fields();
        if end <= f.vm_end {
            let r = madvise_one(mm, &f, start, end, advice);
            locked.vma.vma_end_read();
            return r;
        }
        locked.vma.vma_end_read();
    }
    let state = mm.mmap_read_lock();
    if state.dead {
        return Err(MmError::NoSuchProcess(mm.pid));
    }
    let g = rcu_read_lock();
    let mut cursor = start;
    let mut hole = false;
    for e in mm.mm_mt.overlapping(start, end, &g) {
        if e.start > cursor {
            hole = true;
        }
        let f = mm.ctx.pool.get(e.idx).fields();
        madvise_one(mm, &f, e.start.max(start), e.end.min(end), advice)?;
        cursor = e.end;
    }
    if hole || cursor < end {
        return Err(hole_error(start, end));
    }
    Ok(())
}

/// The advice on `[start, end)` of one VMA whose fields are `f`.
fn madvise_one(
    mm: &MmStruct,
    f: &crate::mm::mm_types::VmaFields,
    start: u64,
    end: u64,
    advice: u32,
) -> Result<(), MmError> {
    // madvise_dontneed_free_valid_vma, hugetlb: only MADV_DONTNEED, from a
    // start aligned to the VMA's huge page (`range->start &
    // ~huge_page_mask`: EINVAL), the end rounded down to one ("Avoid
    // unexpected data loss by rounding down the number of huge pages
    // freed"); VM_LOCKED is no obstacle there. The range is this VMA's
    // part of the call's (madvise_walk_vmas clips it), so only the first
    // VMA can meet an unaligned start.
    if f.vm_flags & VM_HUGETLB != 0 {
        if advice != MADV_DONTNEED {
            return Err(MmError::inval("advice", "MADV_FREE on a hugetlb VMA"));
        }
        let huge = 1u64 << huge_page_shift(f.vm_file).unwrap_or(21);
        if start & (huge - 1) != 0 {
            return Err(MmError::inval(
                "addr",
                format!("{start:#x} is not aligned to the VMA's {huge:#x}-byte huge pages"),
            ));
        }
        let end = end & !(huge - 1);
        if start < end {
            zap_page_range(mm, start, end);
        }
        return Ok(());
    }
    // madvise_dontneed_free_valid_vma: `forbidden = VM_PFNMAP | VM_LOCKED`
    // (VM_PFNMAP is not simulated); VM_DONTEXPAND is allowed.
    if f.vm_flags & VM_LOCKED != 0 {
        return Err(MmError::inval("addr", "MADV_DONTNEED/FREE on a locked VMA"));
    }
    // madvise_free_single_vma: "MADV_FREE works for only anon vma at the
    // moment" (vma_is_anonymous: no file, shmem included).
    if advice == MADV_FREE {
        if f.vm_file != 0 || f.vm_flags & VM_SHARED != 0 {
            return Err(MmError::inval(
                "advice",
                "MADV_FREE needs private anonymous memory",
            ));
        }
        // Lazily freed: still resident (and counted) until reclaim.
        return Ok(());
    }
    // zap_page_range_single. The PTE swaps are atomic, so a racing fault
    // under another reader either sees the page or refaults it.
    zap_page_range(mm, start, end);
    Ok(())
}

/// DONTFORK / DOFORK / WIPEONFORK / KEEPONFORK: `madvise_update_vma` on
/// every VMA of the range, under `mmap_lock` for write.
fn madvise_update_vma_flags(
    mm: &MmStruct,
    start: u64,
    end: u64,
    advice: u32,
) -> Result<(), MmError> {
    let mut w = Writer::lock(mm)?;
    let mut prev: Option<VmaIdx> = None;
    let mut cursor = start;
    let mut hole = false;
    let first = w.vma_find(start, end);
    if let Some(e) = first
        && e.start < start
    {
        prev = Some(e.idx);
    } else if let Some(e) = first {
        prev = w.vma_prev(e.start).map(|p| p.idx);
    }
    let mut next = first;
    while let Some(e) = next.filter(|e| e.start < end) {
        if e.start > cursor {
            hole = true;
        }
        let f = w.fields(e.idx);
        let mut new_flags = f.vm_flags;
        match advice {
            MADV_DONTFORK => new_flags |= VM_DONTCOPY,
            // madvise_vma_behavior refuses only VM_IO here, which no
            // simulated VMA has.
            MADV_DOFORK => new_flags &= !VM_DONTCOPY,
            MADV_WIPEONFORK => {
                if f.vm_file != 0 || f.vm_flags & VM_SHARED != 0 {
                    return Err(MmError::inval(
                        "advice",
                        "MADV_WIPEONFORK needs private anonymous memory",
                    ));
                }
                new_flags |= VM_WIPEONFORK;
            }
            _ => new_flags &= !VM_WIPEONFORK,
        }
        let (s, t) = (e.start.max(start), e.end.min(end));
        let vma = if new_flags == f.vm_flags {
            e.idx
        } else {
            let mut target = f;
            target.vm_flags = new_flags;
            let mut vmg = Vmg::modify(prev, e.idx, s, t, &target, &f);
            let vma = vma_modify(&mut w, &mut vmg)?;
            w.vma_start_write(vma);
            let v = w.pool().get(vma);
            let mut nf = v.fields();
            nf.vm_flags = new_flags;
            v.set_fields(&nf);
            vma
        };
        prev = Some(vma);
        cursor = w.fields(vma).vm_end.max(t);
        next = w.vma_next(cursor);
    }
    if hole || cursor < end || first.is_none() {
        return Err(hole_error(start, end));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::mmap::{MmapArgs, map::*, prot::*};
    use crate::mm::sim::{SimConfig, Simulator};
    use crate::mm::{PAGE_SIZE, TASK_SIZE};

    #[test]
    fn a_range_past_task_size_is_a_hole_not_einval() {
        // is_valid_madvise only refuses a wrap (start + len < start); the
        // walk then finds no VMA there: "if (!vma) return -ENOMEM".
        let s = Simulator::new(SimConfig::default());
        let pid = s.spawn().unwrap();
        let a = TASK_SIZE - 2 * PAGE_SIZE;
        s.mmap(
            pid,
            MmapArgs {
                addr: a,
                len: PAGE_SIZE,
                prot: PROT_READ | PROT_WRITE,
                flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            s.madvise(pid, a, 4 * PAGE_SIZE, MADV_DONTNEED),
            Err(MmError::AdviceHoles { .. })
        ));
        assert!(matches!(
            s.madvise(pid, a, u64::MAX - a, MADV_DONTNEED),
            Err(MmError::InvalidArgument { .. })
        ));
    }

    /// madvise_dontneed_free_valid_vma on a hugetlb VMA (found by
    /// `vmasim kernel-diff --ops 1000000 --seed 2026` at op 122,979: a
    /// 7-page MADV_DONTNEED inside a 2 MiB MAP_HUGETLB mapping, EINVAL on
    /// the kernel): an unaligned start or MADV_FREE is EINVAL, an aligned
    /// start with any length is fine (the end rounds down), and VM_LOCKED
    /// does not forbid it as it does for other VMAs.
    #[test]
    fn dontneed_on_hugetlb_needs_a_huge_page_aligned_start() {
        const H: u64 = 2 << 20;
        let s = Simulator::new(SimConfig::default());
        let pid = s.spawn().unwrap();
        let a = 0x7f00_0000_0000;
        s.mmap(
            pid,
            MmapArgs {
                addr: a,
                len: 2 * H,
                prot: PROT_READ | PROT_EXEC,
                flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_HUGETLB | MAP_NORESERVE,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            s.madvise(pid, a + 0x11c000, 7 * PAGE_SIZE, MADV_DONTNEED),
            Err(MmError::InvalidArgument { .. })
        ));
        assert!(matches!(
            s.madvise(pid, a, H, MADV_FREE),
            Err(MmError::InvalidArgument { .. })
        ));
        assert!(s.madvise(pid, a, 7 * PAGE_SIZE, MADV_DONTNEED).is_ok());
        assert!(s.madvise(pid, a + H, H, MADV_DONTNEED).is_ok());
    }
}
