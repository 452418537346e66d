//! `mremap` (`mm/mremap.c`, Linux 6.18): shrink, grow in place, or move a
//! mapping.
//!
//! The shape follows `do_mremap`: `check_mremap_params` (no VMA needed),
//! then under `mmap_lock` for write either `remap_move` (an
//! `MREMAP_FIXED` move that keeps the size, which since 6.17 may span
//! several VMAs) or `vma_lookup` + `check_prep_vma` and `mremap_to` (a new
//! address is implied) / `mremap_at` (resize where it is).
//!
//! * Shrinking unmaps the tail (`shrink_vma`), as munmap would; the
//!   unmapped tail may cross VMA ends and holes (`check_prep_vma` only
//!   requires the part that stays to lie in one VMA).
//! * Growing in place extends the VMA over free space after it through
//!   `vma_merge_extend`, which may also swallow an identical next VMA.
//! * Moving (`MREMAP_MAYMOVE`, `MREMAP_FIXED`, `MREMAP_DONTUNMAP`) is
//!   `move_vma`: `copy_vma` makes the destination VMA — merging with its
//!   new neighbours if it can, which for anonymous memory means only if it
//!   was never faulted (its `vm_pgoff` is then reset to the new address;
//!   otherwise it keeps the old one and will not merge) — then
//!   `move_page_tables` carries the pages over (RSS unchanged), and the old
//!   range is unmapped, unless `MREMAP_DONTUNMAP` leaves it mapped and
//!   empty (`dontunmap_complete`).

use crate::mm::mm_struct::MmStruct;
use crate::mm::mm_types::{VmaFields, vm_flags::*};
use crate::mm::mmap::{
    get_unmapped_area, get_unmapped_area_fixed, get_unmapped_area_vmflags, mm_populate,
};
use crate::mm::slab::VmaIdx;
use crate::mm::sync::Ordering;
use crate::mm::vma::{
    Vmg, Writer, do_vmi_munmap, munmap_range, vm_area_alloc_new, vma_merge_new_range, vma_pages,
};
use crate::mm::{MmError, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE, page_aligned};

/// `MREMAP_MAYMOVE`: the mapping may move if it cannot grow in place.
pub const MREMAP_MAYMOVE: u32 = 1;
/// `MREMAP_FIXED`: move to `new_addr`, replacing what is there.
pub const MREMAP_FIXED: u32 = 2;
/// `MREMAP_DONTUNMAP`: move, leaving the old range mapped but empty.
pub const MREMAP_DONTUNMAP: u32 = 4;

/// `struct vma_remap_struct`: one mremap as it goes.
#[derive(Debug, Clone, Copy)]
struct Vrm {
    addr: u64,
    old_len: u64,
    new_len: u64,
    flags: u32,
    new_addr: u64,
    /// `vrm->populate_expand`: a `VM_LOCKED` VMA grew, so the new part is
    /// faulted in after `mmap_lock` is dropped.
    populate_expand: bool,
}

impl Vrm {
    /// `vrm_implies_new_addr`.
    fn implies_new_addr(&self) -> bool {
        self.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
    }

    /// `vrm_overlaps`, in the kernel's `unsigned long` arithmetic: an old
    /// range ending past `u64::MAX` wraps to a small end and overlaps
    /// nothing (it is mapped nowhere either, so the lookup gives EFAULT).
    fn overlaps(&self) -> bool {
        self.addr.wrapping_add(self.old_len) > self.new_addr
            && self.new_addr.wrapping_add(self.new_len) > self.addr
    }
}

/// `PAGE_ALIGN` as the kernel computes it: it wraps to 0 near `u64::MAX`.
fn page_align_wrapping(len: u64) -> u64 {
    len.wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

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
    let mut vrm = Vrm {
        addr,
        old_len: page_align_wrapping(old_len),
        new_len: page_align_wrapping(new_len),
        flags,
        new_addr,
        populate_expand: false,
    };
    check_mremap_params(&vrm)?;
    let mut w = Writer::lock(mm)?;
    check_map_count_for_move(&w, &vrm)?;
    let res = if vrm_move_only(&vrm) {
        remap_move(&mut w, &mut vrm)
    } else {
        // vma_lookup: the VMA containing addr, else EFAULT.
        let Some(vma) = w.mm.mm_mt.mas_walk(vrm.addr, &w.guard) else {
            return Err(MmError::BadAddress {
                addr,
                len: vrm.old_len,
            });
        };
        check_prep_vma(&w, &mut vrm, vma.idx)?;
        if vrm.implies_new_addr() {
            mremap_to(&mut w, &mut vrm)
        } else {
            mremap_at(&mut w, &mut vrm, vma.idx)
        }
    }?;
    drop(w);
    // "VMA mlock'd + was expanded, so populated expanded region."
    if vrm.populate_expand {
        mm_populate(mm, vrm.new_addr + vrm.old_len, vrm.new_len - vrm.old_len);
    }
    Ok(res)
}

/// `align_hugetlb`: on a hugetlb VMA the lengths are rounded up to the
/// huge page size, both addresses must be aligned to it, and it cannot
/// grow ("the underlying hugetlb reservation is not yet capable to handle
/// split reservation").
fn align_hugetlb(vrm: &mut Vrm, file: u64) -> Result<(), MmError> {
    let Some(shift) = crate::mm::file_table::huge_page_shift(file) else {
        return Ok(());
    };
    let h = 1u64 << shift;
    vrm.old_len = vrm.old_len.wrapping_add(h - 1) & !(h - 1);
    vrm.new_len = vrm.new_len.wrapping_add(h - 1) & !(h - 1);
    if vrm.addr & (h - 1) != 0 || vrm.new_addr & (h - 1) != 0 {
        return Err(MmError::inval(
            "addr",
            format!("hugetlb addresses must be aligned to {h:#x}"),
        ));
    }
    if vrm.new_len > vrm.old_len {
        return Err(MmError::inval(
            "new_length",
            "a hugetlb mapping cannot grow",
        ));
    }
    Ok(())
}

/// `check_mremap_params`: the checks that need no VMA.
fn check_mremap_params(vrm: &Vrm) -> Result<(), MmError> {
    if vrm.flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
        return Err(MmError::inval(
            "flags",
            format!("unknown bits {:#x}", vrm.flags),
        ));
    }
    if !page_aligned(vrm.addr) {
        return Err(MmError::inval(
            "addr",
            format!("{:#x} is not page aligned", vrm.addr),
        ));
    }
    // "We allow a zero old-len as a special case for DOS-emu 'duplicate
    // shm area' thing. But a zero new-len is nonsensical."
    if vrm.new_len == 0 {
        return Err(MmError::inval("new_length", "must be greater than 0"));
    }
    if vrm.new_len > TASK_SIZE {
        return Err(MmError::inval("new_length", "beyond user space"));
    }
    if !vrm.implies_new_addr() {
        // new_addr is ignored: it is not even checked.
        return Ok(());
    }
    if vrm.new_addr > TASK_SIZE - vrm.new_len {
        return Err(MmError::inval("new_addr", "beyond user space"));
    }
    if !page_aligned(vrm.new_addr) {
        return Err(MmError::inval(
            "new_addr",
            format!("{:#x} is not page aligned", vrm.new_addr),
        ));
    }
    if vrm.flags & MREMAP_MAYMOVE == 0 {
        return Err(MmError::inval(
            "flags",
            "MREMAP_FIXED and MREMAP_DONTUNMAP need MREMAP_MAYMOVE",
        ));
    }
    if vrm.flags & MREMAP_DONTUNMAP != 0 && vrm.old_len != vrm.new_len {
        return Err(MmError::inval(
            "flags",
            "MREMAP_DONTUNMAP needs old_len == new_len",
        ));
    }
    // Also for a DONTUNMAP hint (kernel-diff: EINVAL on 6.18).
    if vrm.overlaps() {
        return Err(MmError::inval("new_addr", "overlaps the old range"));
    }
    Ok(())
}

/// `check_mremap_params`' last rule, under `mmap_lock`: "move_vma() need
/// us to stay 4 maps below the threshold ... Check whether current map
/// count plus 2 still leads us to 4 maps below the threshold, otherwise
/// return -ENOMEM here to be more safe."
fn check_map_count_for_move(w: &Writer<'_>, vrm: &Vrm) -> Result<(), MmError> {
    let max = w.mm.ctx.max_map_count;
    if vrm.implies_new_addr() && w.w.state.map_count + 2 >= max.saturating_sub(3) {
        return Err(MmError::MapCountExceeded { limit: max });
    }
    Ok(())
}

/// `vrm_move_only`: an `MREMAP_FIXED` move that keeps the size, which
/// `remap_move` may apply to several VMAs.
fn vrm_move_only(vrm: &Vrm) -> bool {
    vrm.flags & MREMAP_FIXED != 0 && vrm.old_len == vrm.new_len
}

/// `check_prep_vma`: what the VMA at `vrm.addr` allows.
fn check_prep_vma(w: &Writer<'_>, vrm: &mut Vrm, idx: VmaIdx) -> Result<(), MmError> {
    let f = w.fields(idx);
    if f.vm_flags & VM_HUGETLB != 0 {
        align_hugetlb(vrm, f.vm_file)?;
    }
    if !vrm.implies_new_addr() {
        // "For convenience, we set new_addr even if VMA won't move."
        vrm.new_addr = vrm.addr;
    }
    let expand = vrm.new_len > vrm.old_len;
    // vrm_will_map_new: only an expansion or a move needs the rest.
    if !expand && !vrm.implies_new_addr() {
        return Ok(());
    }
    // remap_is_valid: "!old_len is a special case where an attempt is
    // made to 'duplicate' a mapping. This makes no sense for private
    // mappings ... As a result, fail such attempts." A shared one is
    // duplicated: move_vma copies the VMA to the new place with new_len
    // and moves no page tables, and the source stays (see move_vma).
    if vrm.old_len == 0 && f.vm_flags & (VM_SHARED | VM_MAYSHARE) == 0 {
        return Err(MmError::inval(
            "old_length",
            "0 duplicates a mapping, which private mappings cannot",
        ));
    }
    if vrm.flags & MREMAP_DONTUNMAP != 0 && f.vm_flags & VM_DONTEXPAND != 0 {
        return Err(MmError::inval(
            "flags",
            "MREMAP_DONTUNMAP on a special mapping",
        ));
    }
    // "We permit crossing of boundaries for the range being unmapped due
    // to a shrink."
    let kept = vrm.old_len.min(vrm.new_len);
    if kept > f.vm_end - vrm.addr {
        return Err(MmError::BadAddress {
            addr: vrm.addr,
            len: vrm.old_len,
        });
    }
    if !expand {
        return Ok(());
    }
    if f.vm_flags & VM_LOCKED != 0 {
        vrm.populate_expand = true;
    }
    if f.vm_flags & VM_DONTEXPAND != 0 {
        return Err(MmError::BadAddress {
            addr: vrm.addr,
            len: vrm.old_len,
        });
    }
    Ok(())
}

/// `remap_move`: move every VMA of `[addr, addr + old_len)` (split as
/// needed), keeping the gaps between them; the range must start mapped.
fn remap_move(w: &mut Writer<'_>, vrm: &mut Vrm) -> Result<u64, MmError> {
    let start = vrm.addr;
    // Wraps as the kernel's does: an `end` below `start` makes
    // for_each_vma_range find nothing, and the call fails with EFAULT.
    let end = vrm.addr.wrapping_add(vrm.old_len);
    let mut target = vrm.new_addr;
    let mut res = None;
    let mut last_end = 0;
    let mut cursor = start;
    // for_each_vma_range: each VMA overlapping what is left of the range
    // (the tree changes under each move, hence the lookup per step). The
    // cursor stops at `end` even when a move merged the destination into
    // a VMA reaching back into the range (a DONTUNMAP source right before
    // its destination).
    while cursor < end {
        let Some(e) = w.vma_find(cursor, end) else {
            break;
        };
        let f = w.fields(e.idx);
        // "No gap permitted at the start of the range."
        if res.is_none() && start < f.vm_start {
            return Err(MmError::BadAddress {
                addr: start,
                len: vrm.old_len,
            });
        }
        let a = f.vm_start.max(start);
        let len = end.min(f.vm_end) - a;
        let offset = if res.is_some() {
            f.vm_start - last_end
        } else {
            0
        };
        let moved_end = last_end;
        last_end = f.vm_end;
        // vma_multi_allowed: anonymous memory and shmem (every simulated
        // file) obey MREMAP_FIXED, so several VMAs may move together.
        let mut piece = Vrm {
            addr: a,
            old_len: len,
            new_len: len,
            flags: vrm.flags,
            new_addr: target + offset,
            populate_expand: false,
        };
        // A piece that cannot move ends the call; the ones before it
        // stay moved (remap_move returns the error as it is).
        let moved = |res: Option<u64>| match res {
            Some(to) => vec![format!(
                "{start:#x}-{moved_end:#x} was moved to {to:#x}-{:#x}",
                to + (moved_end - start)
            )],
            None => vec![],
        };
        check_prep_vma(w, &mut piece, e.idx).map_err(|e| e.after(&moved(res)))?;
        let r = mremap_to(w, &mut piece).map_err(|e| e.after(&moved(res)))?;
        res.get_or_insert(r);
        target = r + len;
        cursor = f.vm_end;
    }
    res.ok_or(MmError::BadAddress {
        addr: start,
        len: vrm.old_len,
    })
}

/// `mremap_to`: move to a new address (`MREMAP_FIXED`'s, or one found, a
/// `MREMAP_DONTUNMAP` hint first).
fn mremap_to(w: &mut Writer<'_>, vrm: &mut Vrm) -> Result<u64, MmError> {
    let lookup = |w: &Writer<'_>, vrm: &Vrm| {
        w.mm.mm_mt
            .mas_walk(vrm.addr, &w.guard)
            .ok_or(MmError::BadAddress {
                addr: vrm.addr,
                len: vrm.old_len,
            })
    };
    // What is done before a check that can still fail: reported with
    // that failure (MmError::Partial), since the kernel does not undo it.
    let mut done = Vec::new();
    let res = (|| {
        if vrm.flags & MREMAP_FIXED != 0 {
            // Like MAP_FIXED: the destination is unmapped first.
            let (start, end) = (vrm.new_addr, vrm.new_addr + vrm.new_len);
            let mapped = w.vma_find(start, end).is_some();
            do_vmi_munmap(w, start, end)?;
            if mapped {
                done.push(format!("the destination {start:#x}-{end:#x} was unmapped"));
            }
            // "If we remap a portion of a VMA elsewhere in the same VMA,
            // this can invalidate the old VMA. Reset."
            lookup(w, vrm)?;
        }
        if vrm.new_len < vrm.old_len {
            // shrink_vma(drop_lock = false), then move what is left.
            let start = vrm.addr + vrm.new_len;
            let mapped = w
                .vma_find(start, vrm.addr.saturating_add(vrm.old_len))
                .is_some();
            shrink_vma(w, vrm)?;
            if mapped {
                let end = vrm.addr + vrm.old_len;
                done.push(format!(
                    "the source's tail {start:#x}-{end:#x} was unmapped"
                ));
            }
            lookup(w, vrm)?;
            vrm.old_len = vrm.new_len;
        }
        let vma = lookup(w, vrm)?;
        // vrm_set_new_addr: get_unmapped_area with MAP_FIXED for
        // MREMAP_FIXED (whose checks can still refuse the address: below
        // mmap_min_addr is EPERM, after the destination was unmapped),
        // with the address as a hint for DONTUNMAP.
        if vrm.flags & MREMAP_FIXED != 0 {
            let huge = crate::mm::file_table::huge_page_shift(w.fields(vma.idx).vm_file);
            get_unmapped_area_fixed(vrm.new_addr, vrm.new_len, huge)?;
        } else {
            vrm.new_addr = unmapped_area_for(w, vma.idx, vrm.new_addr, vrm.new_len)?;
        }
        move_vma(w, vma.idx, vrm)
    })();
    res.map_err(|e| e.after(&done))
}

/// `get_unmapped_area(vma->vm_file, hint, len, pgoff, MAP_SHARED if
/// VM_MAYSHARE)` for a move: anonymous private memory gets the THP
/// alignment of `__get_unmapped_area` when there is no hint.
fn unmapped_area_for(w: &Writer<'_>, idx: VmaIdx, hint: u64, len: u64) -> Result<u64, MmError> {
    let f = w.fields(idx);
    let anon_private = f.vm_file == 0 && f.vm_flags & VM_MAYSHARE == 0;
    if anon_private {
        get_unmapped_area_vmflags(w, hint, len, true)
    } else {
        get_unmapped_area(w, hint, len)
    }
}

/// `mremap_at`: resize where it is, moving only if it must and may.
fn mremap_at(w: &mut Writer<'_>, vrm: &mut Vrm, idx: VmaIdx) -> Result<u64, MmError> {
    if vrm.new_len == vrm.old_len {
        // MREMAP_NO_RESIZE.
        return Ok(vrm.addr);
    }
    if vrm.new_len < vrm.old_len {
        // shrink_vma: "Can always be done in-place."
        shrink_vma(w, vrm)?;
        return Ok(vrm.addr);
    }
    // expand_vma: in place if [addr, old_len) ends the VMA and the space
    // after it is free (vrm_can_expand_in_place).
    let f = w.fields(idx);
    let delta = vrm.new_len - vrm.old_len;
    if f.vm_end - vrm.addr == vrm.old_len && vma_expandable(w, &f, delta) {
        if w.w.state.map_count > w.mm.ctx.max_map_count {
            return Err(MmError::MapCountExceeded {
                limit: w.mm.ctx.max_map_count,
            });
        }
        vma_merge_extend(w, idx, delta)?;
        return Ok(vrm.addr);
    }
    if vrm.flags & MREMAP_MAYMOVE == 0 {
        return Err(MmError::NoSpace { len: vrm.new_len });
    }
    vrm.new_addr = unmapped_area_for(w, idx, 0, vrm.new_len)?;
    move_vma(w, idx, vrm)
}

/// `shrink_vma`: unmap `[addr + new_len, addr + old_len)` through
/// `do_vmi_munmap(start, delta)`, whose argument checks make an `old_len`
/// reaching past user space EINVAL (what 6.18 answers) rather than an
/// overflow here.
fn shrink_vma(w: &mut Writer<'_>, vrm: &Vrm) -> Result<(), MmError> {
    let start = vrm.addr.wrapping_add(vrm.new_len);
    let delta = vrm.old_len - vrm.new_len;
    // The only check that can fail here is the range's: the start is
    // inside a VMA and page aligned, delta is not 0. Named after the
    // argument that made it too long.
    let end = munmap_range(start, delta).map_err(|_| {
        MmError::inval(
            "old_length",
            format!(
                "the shrunk range {start:#x}+{delta:#x} goes beyond user space ({TASK_SIZE:#x})"
            ),
        )
    })?;
    do_vmi_munmap(w, start, end)
}

/// `vma_expandable`: nothing in `[vm_end, vm_end + delta)` and still in user
/// space.
fn vma_expandable(w: &Writer<'_>, f: &VmaFields, delta: u64) -> bool {
    f.vm_end.checked_add(delta).is_some_and(|e| e <= TASK_SIZE)
        && w.vma_find(f.vm_end, f.vm_end + delta).is_none()
}

/// `vma_merge_extend`: grow `idx` by `delta` at its end (possibly merging
/// with an identical next VMA).
fn vma_merge_extend(w: &mut Writer<'_>, idx: VmaIdx, delta: u64) -> Result<(), MmError> {
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

/// `move_vma`: `copy_vma` at `vrm.new_addr`, `move_page_tables`, then
/// unmap the old range (`unmap_source_vma`) or, with `MREMAP_DONTUNMAP`,
/// keep it empty (`dontunmap_complete`).
fn move_vma(w: &mut Writer<'_>, idx: VmaIdx, vrm: &Vrm) -> Result<u64, MmError> {
    let mm = w.mm;
    let (old_addr, old_len, new_len, new_addr) = (vrm.addr, vrm.old_len, vrm.new_len, vrm.new_addr);
    // prep_move_vma: "We'd prefer to avoid failure later on in do_munmap:
    // which may split one vma into three before unmapping."
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
    let new_vma = match vma_merge_new_range(w, &mut vmg) {
        Some(v) => v,
        // vm_area_dup + vma_set_range + vma_link
        None => vm_area_alloc_new(
            w,
            VmaFields {
                vm_start: new_addr,
                vm_end: new_addr + new_len,
                vm_pgoff: new_pgoff,
                ..f
            },
        )?,
    };
    if let Err(e) = move_page_tables(w, old_addr, new_addr, old_len.min(new_len)) {
        // Out of page tables (vmasim's --max-pgtables-bytes): every PTE is
        // still at the source. As move_vma recovers from a failed
        // copy_vma_and_data, the copy is unmapped and the source stays.
        do_vmi_munmap(w, new_addr, new_addr + new_len)?;
        return Err(e);
    }
    if vrm.flags & MREMAP_DONTUNMAP != 0 {
        // dontunmap_complete: "We always clear VM_LOCKED[ONFAULT] on the
        // old VMA" (6.18 keeps its VM_ACCOUNT), and "anon_vma links of the
        // old vma is no longer needed after its page table has been moved"
        // when the whole VMA went.
        let old = w.mm.mm_mt.mas_walk(old_addr, &w.guard).map(|e| e.idx);
        if let Some(old) = old {
            let v = mm.ctx.pool.get(old);
            let mut of = v.fields();
            let whole = of.vm_start == old_addr && of.vm_end == old_addr + old_len;
            of.vm_flags &= !(VM_LOCKED | VM_LOCKONFAULT);
            if whole && old != new_vma {
                of.anon_vma = 0;
            }
            w.vma_start_write(old);
            v.set_fields(&of);
        }
    } else if old_len != 0 {
        do_vmi_munmap(w, old_addr, old_addr + old_len)?;
    }
    // A duplicate (old_len 0) keeps its source: unmap_source_vma's
    // do_vmi_munmap of 0 bytes fails with EINVAL, which it ignores ("OOM:
    // unable to split vma, just get accounts right").
    Ok(new_addr)
}

/// `move_page_tables`: carry every present PTE of `[old, old + len)` to the
/// same offset at `new` (RSS is unchanged: the pages only move). Every
/// destination PTE is allocated before any moves, so running out of page
/// tables leaves them all where they were (the kernel moves them back).
fn move_page_tables(w: &Writer<'_>, old: u64, new: u64, len: u64) -> Result<(), MmError> {
    let mm = w.mm;
    let mut present = Vec::new();
    mm.pgd
        .for_each_present(old, old + len, |a, _| present.push(a));
    let mut dsts = Vec::with_capacity(present.len());
    for a in present {
        let dst = mm
            .pgd
            .pte_alloc(new + (a - old))
            .map_err(|_| MmError::PgtablesExhausted {
                limit: mm.ctx.pgtables.limit(),
            })?;
        dsts.push((a, dst));
    }
    for (a, dst) in dsts {
        let src = mm
            .pgd
            .pte(a)
            .expect("present a moment ago, under mmap_lock");
        // Relaxed: mmap_lock held for write and both VMAs write-locked.
        dst.store(src.swap(0, Ordering::Relaxed), Ordering::Relaxed);
    }
    crate::mm::memory::free_pgtables(mm, old, old + len, &w.guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The 6.18 rules of mm/mremap.c that `vmasim kernel-diff` checked on
    //! the running kernel (the same shapes, scripted).
    use super::*;
    use crate::mm::mm_types::Access;
    use crate::mm::mmap::{MmapArgs, map::*, prot::*};
    use crate::mm::sim::{SimConfig, Simulator};

    const P: u64 = PAGE_SIZE;
    const A: u64 = 0x1000_0000;

    fn map(s: &Simulator, pid: u32, addr: u64, pages: u64, prot: u32) {
        s.mmap(
            pid,
            MmapArgs {
                addr,
                len: pages * P,
                prot,
                flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                ..Default::default()
            },
        )
        .unwrap();
    }

    fn layout(s: &Simulator, pid: u32) -> Vec<(u64, u64, String)> {
        s.maps(pid)
            .unwrap()
            .entries
            .iter()
            .filter(|e| e.start >= A && e.end <= A + (1 << 24))
            .map(|e| (e.start, e.end, e.perms()))
            .collect()
    }

    fn setup() -> (Simulator, u32) {
        let s = Simulator::new(SimConfig::default());
        let pid = s.spawn().unwrap();
        // [A, A+2P) rw-, hole, [A+3P, A+5P) r--
        map(&s, pid, A, 2, PROT_READ | PROT_WRITE);
        map(&s, pid, A + 3 * P, 2, PROT_READ);
        (s, pid)
    }

    #[test]
    fn an_old_range_wrapping_past_the_top_is_efault_not_an_overflow() {
        // vrm_overlaps and remap_move compute `addr + old_len` in unsigned
        // long: at the top page it wraps to 0, overlaps nothing and finds
        // no VMA. Linux 6.18 answers each of these with EFAULT (asked
        // through syscall(SYS_mremap) on the machine).
        let (s, pid) = setup();
        let top = u64::MAX - P + 1;
        for (old_len, new_len, flags, new_addr) in [
            (P, P, MREMAP_MAYMOVE | MREMAP_FIXED, 0x40_0000),
            (P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, 0x40_0000),
            (P, P, MREMAP_MAYMOVE, 0),
            (P, P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0x40_0000),
        ] {
            assert!(
                matches!(
                    s.mremap(pid, top, old_len, new_len, flags, new_addr),
                    Err(MmError::BadAddress { .. })
                ),
                "mremap({top:#x}, {old_len:#x}, {new_len:#x}, {flags:#x}, {new_addr:#x})"
            );
        }
        assert_eq!(layout(&s, pid).len(), 2);
        // A shrink whose old_len reaches past user space: shrink_vma's
        // do_vmi_munmap(start, delta) refuses the range, EINVAL on 6.18
        // (asked with old_len 1 << 63, -8 KiB and TASK_SIZE-wrapping
        // values, flags 0 and MREMAP_MAYMOVE).
        for old_len in [1 << 63, u64::MAX - 2 * P + 1, 0u64.wrapping_sub(A)] {
            for flags in [0, MREMAP_MAYMOVE] {
                assert!(
                    matches!(
                        s.mremap(pid, A, old_len, P, flags, 0),
                        Err(MmError::InvalidArgument { .. })
                    ),
                    "mremap({A:#x}, {old_len:#x}, {P:#x}, {flags:#x}, 0)"
                );
            }
        }
        assert_eq!(layout(&s, pid).len(), 2);
    }

    #[test]
    fn mremap_fixed_below_mmap_min_addr_is_eperm_from_get_unmapped_area() {
        // vrm_set_new_addr passes an MREMAP_FIXED address through
        // get_unmapped_area(.., MAP_FIXED), whose security_mmap_addr
        // (cap_mmap_addr) refuses one below mmap_min_addr to a process
        // without CAP_SYS_RAWIO. Linux 6.18, as uid 65534 with
        // vm.mmap_min_addr 4096: EPERM for new_addr 0, the move done for
        // new_addr 0x1000 (the simulation's MMAP_MIN_ADDR is 64 KiB).
        let (s, pid) = setup();
        let flags = MREMAP_MAYMOVE | MREMAP_FIXED;
        assert!(matches!(
            s.mremap(pid, A, P, P, flags, 0),
            Err(MmError::Permission(_))
        ));
        assert_eq!(layout(&s, pid).len(), 2);
        assert!(matches!(
            s.mremap(pid, A, P, P, flags, crate::mm::MMAP_MIN_ADDR - P),
            Err(MmError::Permission(_))
        ));
        let low = crate::mm::MMAP_MIN_ADDR;
        assert_eq!(s.mremap(pid, A, P, P, flags, low).unwrap(), low);
    }

    #[test]
    fn a_failed_fixed_move_leaves_its_destination_unmapped_and_says_so() {
        // mremap_to unmaps an MREMAP_FIXED destination before shrink_vma,
        // whose do_vmi_munmap can still refuse the range, and does not map
        // it back. Linux 6.18: mremap(A, 1 << 47, P, MAYMOVE|FIXED, B) with
        // B below A is EINVAL and B is gone (above A, vrm_overlaps refuses
        // it first and B stays).
        let (s, pid) = setup();
        let b = A - 0x10_0000;
        map(&s, pid, b, 1, PROT_READ);
        let flags = MREMAP_MAYMOVE | MREMAP_FIXED;
        let e = s.mremap(pid, A, 1 << 47, P, flags, b).unwrap_err();
        assert!(
            matches!(&e, MmError::Partial { error, applied }
                if matches!(**error, MmError::InvalidArgument { field: "old_length", .. })
                    && applied == &[format!("the destination {b:#x}-{:#x} was unmapped", b + P)]),
            "{e:?}"
        );
        assert_eq!(e.errno(), crate::mm::Errno::EINVAL);
        assert!(e.to_string().starts_with("old_length: "), "{e}");
        assert_eq!(
            layout(&s, pid),
            vec![
                (A, A + 2 * P, "rw-p".into()),
                (A + 3 * P, A + 5 * P, "r--p".into())
            ]
        );
    }

    #[test]
    fn a_multi_vma_move_that_fails_midway_keeps_what_it_moved_and_says_so() {
        // remap_move returns the first piece's error as it is: the VMAs
        // before it stay moved. Linux 6.18, asked: a page at A and a
        // hugetlb VMA at A + 2 MiB, mremap(A, 4 MiB, 4 MiB, MAYMOVE|FIXED,
        // D + 4 KiB) is EINVAL (align_hugetlb: the hugetlb piece's target
        // is not huge-page aligned) with the page at D + 4 KiB.
        let s = Simulator::new(SimConfig::default());
        let pid = s.spawn().unwrap();
        const M: u64 = 2 << 20;
        map(&s, pid, A, 1, PROT_READ | PROT_WRITE);
        s.mmap(
            pid,
            MmapArgs {
                addr: A + M,
                len: M,
                prot: PROT_READ | PROT_WRITE,
                flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_HUGETLB | MAP_NORESERVE,
                ..Default::default()
            },
        )
        .unwrap();
        let d = A + 0x400_0000 + P;
        let e = s
            .mremap(pid, A, 2 * M, 2 * M, MREMAP_MAYMOVE | MREMAP_FIXED, d)
            .unwrap_err();
        let moved = format!("{A:#x}-{:#x} was moved to {d:#x}-{:#x}", A + P, d + P);
        assert!(
            matches!(&e, MmError::Partial { error, applied }
                if matches!(**error, MmError::InvalidArgument { .. }) && applied == std::slice::from_ref(&moved)),
            "{e:?}"
        );
        let maps: Vec<_> = s
            .maps(pid)
            .unwrap()
            .entries
            .iter()
            .map(|e| (e.start, e.end))
            .collect();
        assert!(
            maps.contains(&(d, d + P)) && maps.contains(&(A + M, A + 2 * M)),
            "{maps:x?}"
        );
        assert!(!maps.iter().any(|&(lo, _)| lo == A), "{maps:x?}");
    }

    #[test]
    fn a_move_out_of_page_tables_keeps_the_source_and_its_pages() {
        // move_vma: when copy_vma_and_data cannot move the page tables it
        // moves the entries back and unmaps the copy; the source keeps its
        // pages. Here the budget (--max-pgtables-bytes) runs out.
        let far = A + (1 << 40);
        let flags = MREMAP_MAYMOVE | MREMAP_FIXED;
        let mut hit = false;
        for tables in 1..=8u64 {
            let s = Simulator::new(SimConfig {
                max_pgtables_bytes: tables * P,
                ..SimConfig::default()
            });
            let pid = s.spawn().unwrap();
            map(&s, pid, A, 2, PROT_READ | PROT_WRITE);
            let t = s.task(pid).unwrap();
            if t.fault(A, Access::Write).outcome != crate::mm::FaultOutcome::AnonZeroFill {
                continue;
            }
            match s.mremap(pid, A, 2 * P, 2 * P, flags, far) {
                Err(MmError::PgtablesExhausted { .. }) => {}
                Ok(_) => continue,
                Err(e) => panic!("{e:?}"),
            }
            hit = true;
            assert_eq!(layout(&s, pid), vec![(A, A + 2 * P, "rw-p".into())]);
            assert!(t.follow_pte(A).is_some(), "the page stayed at the source");
            assert_eq!(t.rss_pages(), 1);
            break;
        }
        assert!(
            hit,
            "no page-table budget let the fault in and stopped the move"
        );
    }

    #[test]
    fn old_len_zero_duplicates_a_shared_mapping_and_refuses_a_private_one() {
        // remap_is_valid: !old_len "duplicates" a shared mapping: move_vma
        // copies it (same file, pgoff of addr) with new_len and moves no
        // page tables; the source stays as it was.
        let s = Simulator::new(SimConfig::default());
        let pid = s.spawn().unwrap();
        s.mmap(
            pid,
            MmapArgs {
                addr: A,
                len: 4 * P,
                prot: PROT_READ | PROT_WRITE,
                flags: MAP_SHARED | MAP_FIXED,
                file: 5,
                offset: 3 * P,
                ..Default::default()
            },
        )
        .unwrap();
        s.fault(pid, A + P, Access::Write).unwrap();
        let dup = A + 0x100_000;
        let flags = MREMAP_MAYMOVE | MREMAP_FIXED;
        assert_eq!(s.mremap(pid, A + P, 0, 2 * P, flags, dup).unwrap(), dup);
        let m = s.maps(pid).unwrap();
        let e: Vec<_> = m
            .entries
            .iter()
            .filter(|e| e.start >= A && e.end <= A + (1 << 24))
            .map(|e| (e.start, e.end, e.offset, e.file_id))
            .collect();
        assert_eq!(
            e,
            vec![(A, A + 4 * P, 3 * P, 5), (dup, dup + 2 * P, 4 * P, 5)]
        );
        assert_eq!(m.rss_pages, 1, "no page table moved");
        // Without MREMAP_MAYMOVE it cannot grow in place (the kept range
        // ends before the VMA's end): ENOMEM.
        assert!(s.mremap(pid, A, 0, P, 0, 0).is_err());
        map(&s, pid, A + 0x200_000, 2, PROT_READ);
        assert!(matches!(
            s.mremap(pid, A + 0x200_000, 0, P, MREMAP_MAYMOVE, 0),
            Err(MmError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn shrink_unmaps_a_tail_across_vma_ends_and_holes() {
        // check_prep_vma: "We permit crossing of boundaries for the range
        // being unmapped due to a shrink" (and a shrink that does not move
        // needs no more than vma_lookup(addr)).
        let (s, pid) = setup();
        assert_eq!(s.mremap(pid, A, 5 * P, P, 0, 0).unwrap(), A);
        assert_eq!(layout(&s, pid), vec![(A, A + P, "rw-p".into())]);
    }

    #[test]
    fn same_size_without_flags_returns_addr_even_past_the_vma() {
        // mremap_at: MREMAP_NO_RESIZE returns vrm->addr.
        let (s, pid) = setup();
        assert_eq!(s.mremap(pid, A, 5 * P, 5 * P, 0, 0).unwrap(), A);
        // vma_lookup fails: EFAULT.
        assert!(matches!(
            s.mremap(pid, A + 2 * P, P, P, 0, 0),
            Err(MmError::BadAddress { .. })
        ));
        // Growing needs the kept range inside the VMA: EFAULT.
        assert!(matches!(
            s.mremap(pid, A, 3 * P, 4 * P, MREMAP_MAYMOVE, 0),
            Err(MmError::BadAddress { .. })
        ));
    }

    #[test]
    fn fixed_same_size_moves_every_vma_of_the_range_keeping_gaps() {
        // remap_move (vrm_move_only): per VMA, mremap_to to "A'->vm_end +
        // X"; each replaces only its own destination.
        let (s, pid) = setup();
        let b = A + 0x20_000;
        map(&s, pid, b, 8, PROT_READ);
        s.fault(pid, A, Access::Write).unwrap();
        let got = s
            .mremap(pid, A, 5 * P, 5 * P, MREMAP_MAYMOVE | MREMAP_FIXED, b)
            .unwrap();
        assert_eq!(got, b);
        assert_eq!(
            layout(&s, pid),
            vec![
                (b, b + 2 * P, "rw-p".into()),
                // The old r-- mapping's page in the gap stays, and the
                // moved r-- VMA (never faulted: pgoff follows the address)
                // merges with it and with the rest of it.
                (b + 2 * P, b + 8 * P, "r--p".into()),
            ]
        );
        assert_eq!(s.maps(pid).unwrap().rss_pages, 1, "the page moved");
        // A gap at the start of the range: EFAULT.
        assert!(matches!(
            s.mremap(pid, b - P, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, A),
            Err(MmError::BadAddress { .. })
        ));
    }

    #[test]
    fn a_dontunmap_move_merged_back_into_its_source_ends_the_walk() {
        // remap_move's for_each_vma_range stops at the range's end: here
        // copy_vma merged the destination (right after the VMA) into the
        // source VMA itself, which then reaches past the range.
        let s = Simulator::new(SimConfig::default());
        let pid = s.spawn().unwrap();
        map(&s, pid, A, 7, PROT_NONE);
        let flags = MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP;
        assert_eq!(s.mremap(pid, A, P, P, flags, A + 7 * P).unwrap(), A + 7 * P);
        assert_eq!(layout(&s, pid), vec![(A, A + 8 * P, "---p".into())]);
    }

    #[test]
    fn dontunmap_takes_new_addr_as_a_hint_and_checks_overlap() {
        // vrm_set_new_addr: "If only MREMAP_DONTUNMAP is set, then this is
        // equivalent to providing a hint to mmap()"; check_mremap_params:
        // vrm_overlaps applies to it too.
        let (s, pid) = setup();
        let hint = A + 0x10_000;
        let flags = MREMAP_MAYMOVE | MREMAP_DONTUNMAP;
        assert_eq!(s.mremap(pid, A, 2 * P, 2 * P, flags, hint).unwrap(), hint);
        assert!(matches!(
            s.mremap(pid, hint, 2 * P, 2 * P, flags, hint + P),
            Err(MmError::InvalidArgument { .. })
        ));
        assert!(matches!(
            s.mremap(pid, hint, 2 * P, 2 * P, flags, hint + 0x123_000 + 1),
            Err(MmError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn dontunmap_of_a_whole_vma_drops_its_anon_vma() {
        // dontunmap_complete: "anon_vma links of the old vma is no longer
        // needed after its page table has been moved" -> unlink_anon_vmas.
        let (s, pid) = setup();
        s.fault(pid, A, Access::Write).unwrap();
        let flags = MREMAP_MAYMOVE | MREMAP_DONTUNMAP;
        s.mremap(pid, A, 2 * P, 2 * P, flags, 0).unwrap();
        let mm = s.mm(pid).unwrap();
        let g = crate::mm::rcu::rcu_read_lock();
        let e = mm.mm_mt.mas_walk(A, &g).unwrap();
        assert_eq!(mm.ctx.pool.get(e.idx).fields().anon_vma, 0);
        // A partial one keeps it (the rest still has pages).
        map(&s, pid, A + 0x40_000, 4, PROT_READ | PROT_WRITE);
        s.fault(pid, A + 0x40_000, Access::Write).unwrap();
        s.mremap(pid, A + 0x40_000 + 2 * P, P, P, flags, 0).unwrap();
        let e = mm.mm_mt.mas_walk(A + 0x40_000, &g).unwrap();
        assert_ne!(mm.ctx.pool.get(e.idx).fields().anon_vma, 0);
    }
}
