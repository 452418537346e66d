//! `mremap` (`mm/mremap.c`): shrink, grow in place, or move a mapping.
//!
//! * Shrinking unmaps the tail (`shrink_vma`), as munmap would.
//! * Growing in place extends the VMA over free space after it through
//!   `vma_merge_extend`, which may also swallow an identical next VMA.
//! * Moving (`MREMAP_MAYMOVE`, `MREMAP_FIXED`, `MREMAP_DONTUNMAP`) is
//!   `move_vma`: `copy_vma` makes the destination VMA — merging with its
//!   new neighbours if it can, which for anonymous memory means only if it
//!   was never faulted (its `vm_pgoff` is then reset to the new address;
//!   otherwise it keeps the old one and will not merge) — then
//!   `move_page_tables` carries the pages over (RSS unchanged), and the old
//!   range is unmapped, unless `MREMAP_DONTUNMAP` leaves it mapped and
//!   empty.

use crate::mm::mm_struct::MmStruct;
use crate::mm::mm_types::{VmaFields, vm_flags::*};
use crate::mm::mmap::{get_unmapped_area, mm_populate};
use crate::mm::sync::Ordering;
use crate::mm::vma::{
    Vmg, Writer, do_vmi_munmap, vm_area_alloc_new, vma_merge_new_range, vma_pages,
};
use crate::mm::{MmError, PAGE_SHIFT, TASK_SIZE, page_align, page_aligned};

/// `MREMAP_MAYMOVE`: the mapping may move if it cannot grow in place.
pub const MREMAP_MAYMOVE: u32 = 1;
/// `MREMAP_FIXED`: move to `new_addr`, replacing what is there.
pub const MREMAP_FIXED: u32 = 2;
/// `MREMAP_DONTUNMAP`: move, leaving the old range mapped but empty.
pub const MREMAP_DONTUNMAP: u32 = 4;

/// `mremap(addr, old_len, new_len, flags, new_addr)`: returns the new
/// address.
pub fn do_mremap(
    mm: &MmStruct,
    addr: u64,
    old_len: u64,
    new_len: u64,
    flags: u32,
    new_addr: u64,
) -> Result<u64, MmError> {
    // check_mremap_params
    if flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
        return Err(MmError::inval("flags", format!("unknown bits {flags:#x}")));
    }
    if flags & MREMAP_FIXED != 0 && flags & MREMAP_MAYMOVE == 0 {
        return Err(MmError::inval("flags", "MREMAP_FIXED needs MREMAP_MAYMOVE"));
    }
    if flags & MREMAP_DONTUNMAP != 0 && (old_len != new_len || flags & MREMAP_MAYMOVE == 0) {
        return Err(MmError::inval(
            "flags",
            "MREMAP_DONTUNMAP needs MREMAP_MAYMOVE and old_len == new_len",
        ));
    }
    if !page_aligned(addr) {
        return Err(MmError::inval(
            "addr",
            format!("{addr:#x} is not page aligned"),
        ));
    }
    let (Some(old_len), Some(new_len)) = (page_align(old_len), page_align(new_len)) else {
        return Err(MmError::inval("new_length", "overflows"));
    };
    if new_len == 0 {
        return Err(MmError::inval("new_length", "must be greater than 0"));
    }
    if old_len == 0 {
        // Duplicating a shared mapping (old_len 0) is not simulated.
        return Err(MmError::inval("old_length", "must be greater than 0"));
    }
    if new_len > TASK_SIZE || addr > TASK_SIZE - old_len.min(TASK_SIZE) {
        return Err(MmError::inval("new_length", "beyond user space"));
    }
    let fixed = flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0;
    if flags & MREMAP_FIXED != 0 {
        if !page_aligned(new_addr) {
            return Err(MmError::inval(
                "new_addr",
                format!("{new_addr:#x} is not page aligned"),
            ));
        }
        if new_addr > TASK_SIZE - new_len {
            return Err(MmError::inval("new_addr", "beyond user space"));
        }
        // The ranges may not overlap.
        if addr + old_len > new_addr && new_addr + new_len > addr {
            return Err(MmError::inval("new_addr", "overlaps the old range"));
        }
    }
    let mut w = Writer::lock(mm)?;
    // vma_lookup + "old_len > vma->vm_end - addr": one VMA holds the range.
    let Some(vma) = w.mm.mm_mt.mas_walk(addr, &w.guard) else {
        return Err(MmError::BadAddress { addr, len: old_len });
    };
    if addr + old_len > vma.end {
        return Err(MmError::BadAddress { addr, len: old_len });
    }
    let f = w.fields(vma.idx);
    if new_len > old_len && f.vm_flags & VM_DONTEXPAND != 0 {
        return Err(MmError::BadAddress { addr, len: old_len });
    }
    if flags & MREMAP_FIXED != 0 {
        // mremap_to: make room at the destination, drop the old tail.
        do_vmi_munmap(&mut w, new_addr, new_addr + new_len)?;
        let mut old_len = old_len;
        if old_len > new_len {
            do_vmi_munmap(&mut w, addr + new_len, addr + old_len)?;
            old_len = new_len;
        }
        let vma = w.mm.mm_mt.mas_walk(addr, &w.guard).expect("still mapped");
        return move_vma(w, vma.idx, addr, old_len, new_len, new_addr, flags);
    }
    if fixed {
        // MREMAP_DONTUNMAP without MREMAP_FIXED: moves somewhere new.
        let dst = get_unmapped_area(&w, 0, new_len)?;
        return move_vma(w, vma.idx, addr, old_len, new_len, dst, flags);
    }
    if new_len <= old_len {
        // shrink_vma, or nothing to do.
        if new_len < old_len {
            do_vmi_munmap(&mut w, addr + new_len, addr + old_len)?;
        }
        return Ok(addr);
    }
    // Grow: in place if the range ends the VMA and the space after is free.
    let delta = new_len - old_len;
    if addr + old_len == f.vm_end && vma_expandable(&w, &f, delta) {
        if w.w.state.map_count > w.mm.ctx.max_map_count {
            return Err(MmError::MapCountExceeded {
                limit: w.mm.ctx.max_map_count,
            });
        }
        vma_merge_extend(&mut w, vma.idx, delta)?;
        let locked = f.vm_flags & VM_LOCKED != 0;
        drop(w);
        if locked {
            mm_populate(mm, f.vm_end, delta);
        }
        return Ok(addr);
    }
    if flags & MREMAP_MAYMOVE == 0 {
        return Err(MmError::NoSpace { len: new_len });
    }
    let dst = get_unmapped_area(&w, 0, new_len)?;
    move_vma(w, vma.idx, addr, old_len, new_len, dst, flags)
}

/// `vma_expandable`: nothing in `[vm_end, vm_end + delta)` and still in user
/// space.
fn vma_expandable(w: &Writer<'_>, f: &VmaFields, delta: u64) -> bool {
    f.vm_end.checked_add(delta).is_some_and(|e| e <= TASK_SIZE)
        && w.vma_find(f.vm_end, f.vm_end + delta).is_none()
}

/// `vma_merge_extend`: grow `idx` by `delta` at its end (possibly merging
/// with an identical next VMA).
fn vma_merge_extend(
    w: &mut Writer<'_>,
    idx: crate::mm::slab::VmaIdx,
    delta: u64,
) -> Result<(), MmError> {
    let f = w.fields(idx);
    let mut vmg = Vmg {
        prev: Some(idx),
        middle: None,
        next: w.vma_next(f.vm_end).map(|e| e.idx),
        start: f.vm_end,
        end: f.vm_end + delta,
        pgoff: f.vm_pgoff + vma_pages(&f),
        flags: f.vm_flags,
        file: f.vm_file,
        anon_name: f.anon_name,
        anon_vma: f.anon_vma,
        just_expand: false,
    };
    vma_merge_new_range(w, &mut vmg)
        .map(|_| ())
        .ok_or(MmError::NoSpace { len: delta })
}

/// `move_vma`: `copy_vma` at `new_addr`, `move_page_tables`, then unmap the
/// old range (unless `MREMAP_DONTUNMAP`).
fn move_vma(
    mut w: Writer<'_>,
    idx: crate::mm::slab::VmaIdx,
    old_addr: u64,
    old_len: u64,
    new_len: u64,
    new_addr: u64,
    flags: u32,
) -> Result<u64, MmError> {
    let mm = w.mm;
    // "We'd prefer to avoid failure later on in do_munmap": a move may
    // split the source in up to three and add the destination.
    if w.w.state.map_count + 3 >= mm.ctx.max_map_count {
        return Err(MmError::MapCountExceeded {
            limit: mm.ctx.max_map_count,
        });
    }
    let f = w.fields(idx);
    w.vma_start_write(idx);
    let mut new_pgoff = f.vm_pgoff + ((old_addr - f.vm_start) >> PAGE_SHIFT);
    // copy_vma: an anonymous VMA never faulted takes the new address as
    // its pgoff, to increase its chance of merging.
    if f.vm_file == 0 && f.anon_vma == 0 {
        new_pgoff = new_addr >> PAGE_SHIFT;
    }
    let prev = w.prev_of_gap(new_addr).map(|e| e.idx);
    let next = w.vma_next(new_addr + new_len).map(|e| e.idx);
    let mut vmg = Vmg {
        prev,
        middle: None,
        next,
        start: new_addr,
        end: new_addr + new_len,
        pgoff: new_pgoff,
        flags: f.vm_flags,
        file: f.vm_file,
        anon_name: f.anon_name,
        anon_vma: f.anon_vma,
        just_expand: false,
    };
    if vma_merge_new_range(&mut w, &mut vmg).is_none() {
        // vm_area_dup + vma_set_range + vma_link
        vm_area_alloc_new(
            &mut w,
            VmaFields {
                vm_start: new_addr,
                vm_end: new_addr + new_len,
                vm_pgoff: new_pgoff,
                ..f
            },
        )?;
    }
    move_page_tables(&w, old_addr, new_addr, old_len.min(new_len))?;
    if flags & MREMAP_DONTUNMAP != 0 {
        // The old VMA stays, empty; VM_LOCKED does not stay with it.
        let v = mm.ctx.pool.get(idx);
        let mut of = v.fields();
        if of.vm_flags & VM_LOCKED != 0 {
            of.vm_flags &= !(VM_LOCKED | VM_LOCKONFAULT);
            v.set_fields(&of);
        }
    } else {
        do_vmi_munmap(&mut w, old_addr, old_addr + old_len)?;
    }
    let locked = f.vm_flags & VM_LOCKED != 0;
    drop(w);
    if locked && new_len > old_len {
        mm_populate(mm, new_addr + old_len, new_len - old_len);
    }
    Ok(new_addr)
}

/// `move_page_tables`: carry every present PTE of `[old, old + len)` to the
/// same offset at `new` (RSS is unchanged: the pages only move).
fn move_page_tables(w: &Writer<'_>, old: u64, new: u64, len: u64) -> Result<(), MmError> {
    let mm = w.mm;
    let mut moved = Vec::new();
    mm.pgd.for_each_present(old, old + len, |a, p| {
        // Relaxed: mmap_lock held for write and both VMAs write-locked.
        moved.push((a, p.swap(0, Ordering::Relaxed)));
    });
    for (a, v) in moved {
        let dst = mm
            .pgd
            .pte_alloc(new + (a - old))
            .map_err(|_| MmError::PgtablesExhausted {
                limit: mm.ctx.pgtables.limit(),
            })?;
        dst.store(v, Ordering::Relaxed);
    }
    crate::mm::pgtable::free_pgtables(mm, old, old + len, &w.guard);
    Ok(())
}
