//! `mprotect` (`mm/mprotect.c`): `do_mprotect_pkey` walks the VMAs of the
//! range and changes each with `mprotect_fixup`, which merges or splits
//! through [`crate::mm::vma::vma_modify`].
//!
//! Like the kernel, the walk applies as it goes: a hole in the middle or at
//! the end of the range stops it with ENOMEM *after* the VMAs before the
//! hole have changed; a hole at the start changes nothing. The error says
//! how far the change got.

use crate::mm::gup::populate_vma_page_range;
use crate::mm::mm_struct::MmStruct;
use crate::mm::mm_types::vm_flags::*;
use crate::mm::mmap::{accountable_mapping, prot};
use crate::mm::pgtable::pte;
use crate::mm::slab::VmaIdx;
use crate::mm::sync::Ordering;
use crate::mm::vma::{Vmg, Writer, vma_modify};
use crate::mm::{MmError, TASK_SIZE, page_align, page_aligned};

/// `mprotect(start, len, prot)`.
pub fn do_mprotect(mm: &MmStruct, start: u64, len: u64, prot: u32) -> Result<(), MmError> {
    if prot & !prot::PROT_MASK != 0 {
        return Err(MmError::inval(
            "prot",
            format!("unknown bits {:#x}", prot & !prot::PROT_MASK),
        ));
    }
    if !page_aligned(start) {
        return Err(MmError::inval(
            "addr",
            format!("{start:#x} is not page aligned"),
        ));
    }
    if len == 0 {
        return Ok(());
    }
    let end = page_align(len)
        .and_then(|l| start.checked_add(l))
        .filter(|&e| e <= TASK_SIZE)
        .ok_or(MmError::NotMapped {
            start,
            end: start.saturating_add(len),
            changed_up_to: start,
        })?;
    let mut w = Writer::lock(mm)?;
    let Some(first) = w.vma_find(start, end) else {
        return Err(MmError::NotMapped {
            start,
            end,
            changed_up_to: start,
        });
    };
    if first.start > start {
        return Err(MmError::NotMapped {
            start,
            end,
            changed_up_to: start,
        });
    }
    let mut prev = if start > first.start {
        Some(first.idx)
    } else {
        w.vma_prev(first.start).map(|e| e.idx)
    };
    let mut nstart = start;
    let mut tmp = first.start;
    let mut cursor = Some(first);
    while let Some(e) = cursor.filter(|e| e.start < end) {
        if e.start != tmp {
            // A hole: what came before it stays changed.
            break;
        }
        let f = w.fields(e.idx);
        let newflags = u64::from(prot) | (f.vm_flags & !VM_ACCESS_FLAGS);
        let range_end = f.vm_end.min(end);
        let changed = mprotect_fixup(&mut w, e.idx, &mut prev, nstart, range_end, newflags)?;
        // vma_iter_end: the end of the VMA now covering the range, which
        // is past it when the range merged into an identical next VMA.
        tmp = w.fields(changed.unwrap_or(e.idx)).vm_end;
        nstart = tmp;
        cursor = w.vma_next(tmp);
    }
    drop(w);
    if nstart < end {
        return Err(MmError::NotMapped {
            start,
            end,
            changed_up_to: nstart.max(start),
        });
    }
    Ok(())
}

/// `mprotect_fixup`: give `[start, end)` of `idx` the flags `newflags`.
/// Returns the VMA now covering the range (`None` if nothing changed).
fn mprotect_fixup(
    w: &mut Writer<'_>,
    idx: VmaIdx,
    pprev: &mut Option<VmaIdx>,
    start: u64,
    end: u64,
    mut newflags: u64,
) -> Result<Option<VmaIdx>, MmError> {
    let f = w.fields(idx);
    let oldflags = f.vm_flags;
    if newflags == oldflags {
        *pprev = Some(idx);
        return Ok(None);
    }
    // Making a private mapping writable charges it; making it read-only
    // again un-charges only an anonymous VMA with no anon_vma yet. So a
    // private file mapping made writable and back (ld.so's RELRO) keeps
    // VM_ACCOUNT and no longer merges with its read-only neighbours.
    if newflags & VM_WRITE != 0 {
        if oldflags & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE) == 0
            && accountable_mapping(newflags)
        {
            newflags |= VM_ACCOUNT;
        }
    } else if oldflags & VM_ACCOUNT != 0 && f.vm_file == 0 && f.anon_vma == 0 {
        newflags &= !VM_ACCOUNT;
    }
    let mut target = f;
    target.vm_flags = newflags;
    let mut vmg = Vmg::modify(*pprev, idx, start, end, &target, &f);
    let vma = vma_modify(w, &mut vmg)?;
    *pprev = Some(vma);
    // vm_flags are protected by mmap_lock held for write and the VMA
    // write lock.
    w.vma_start_write(vma);
    let v = w.pool().get(vma);
    let mut nf = v.fields();
    nf.vm_flags = newflags;
    v.set_fields(&nf);
    if newflags & VM_WRITE == 0 {
        // change_protection: existing PTEs lose their write bit.
        w.mm.pgd.for_each_present(start, end, |_, p| {
            // Relaxed: the VMA is write-locked and mmap_lock held.
            let val = p.load(Ordering::Relaxed);
            p.store(val & !pte::WRITE, Ordering::Relaxed);
        });
    }
    // Private VM_LOCKED VMA becoming writable: break COW now, as the
    // kernel's mprotect_fixup does before it returns. Here and not after
    // the walk: the anon_vma the faults give this VMA is what decides
    // whether the next VMA of the range merges into it
    // (is_mergeable_anon_vma), so the kernel's maps show a boundary
    // between two populated pieces that had different anon_vmas.
    if oldflags & (VM_WRITE | VM_SHARED | VM_LOCKED) == VM_LOCKED && newflags & VM_WRITE != 0 {
        populate_vma_page_range(w.mm, start, end);
    }
    Ok(Some(vma))
}

#[cfg(test)]
mod tests {
    use crate::mm::PAGE_SIZE as P;
    use crate::mm::mmap::{MmapArgs, map::*, prot::*};
    use crate::mm::sim::{SimConfig, Simulator};

    /// mprotect_fixup populates a private `VM_LOCKED` VMA it made writable
    /// before do_mprotect_pkey moves on, so the anon_vma that gives it is
    /// there when the next VMA of the range tries to merge with it
    /// (is_mergeable_anon_vma). Found by `vmasim kernel-diff --ops 1000000
    /// --seed 2026` at operation 35,360 and shrunk to these four calls; the
    /// kernel's maps after them show two VMAs, split where the piece that
    /// had its own anon_vma began.
    #[test]
    fn locked_private_mapping_made_writable_populates_before_the_next_vma_merges() {
        let s = Simulator::new(SimConfig::default());
        let pid = s.spawn().unwrap();
        let base = 0x7f00_3f45_d000;
        s.mmap(
            pid,
            MmapArgs {
                addr: base,
                len: 0x1f2000,
                prot: PROT_READ | PROT_EXEC,
                flags: MAP_PRIVATE | MAP_FIXED | MAP_LOCKED,
                file: 3,
                offset: 0x2ac2000,
                file_size: 0,
            },
        )
        .unwrap();
        // A writable piece: COW-broken at once, its own anon_vma.
        s.mprotect(pid, base + 0x56000, 2 * P, PROT_WRITE | PROT_EXEC)
            .unwrap();
        s.mprotect(pid, base + 0x4f000, 5 * P, PROT_NONE).unwrap();
        // From before that piece to after it: the first three VMAs of the
        // range become one (the first gets an anon_vma when populated, the
        // next two have none), the piece with its own anon_vma does not
        // join them, the last one merges into the piece.
        s.mprotect(pid, base + 0x30000, 0x40000, PROT_READ | PROT_WRITE)
            .unwrap();
        let m = s.maps(pid).unwrap();
        let rw: Vec<(u64, u64)> = m
            .entries
            .iter()
            .filter(|e| e.start >= base + 0x30000 && e.end <= base + 0x70000)
            .map(|e| (e.start - base, e.end - base))
            .collect();
        assert_eq!(rw, [(0x30000, 0x56000), (0x56000, 0x70000)]);
        assert_eq!(m.rss_pages, 0x1f2000 / P, "every page populated");
    }
}
