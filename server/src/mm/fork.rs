//! `fork`: `dup_mmap` and `copy_page_range`; each VMA is copied by
//! `vm_area_dup` (vma_init.rs).
//!
//! The review's second race lives there. `vm_area_dup` takes a slot from a
//! `SLAB_TYPESAFE_BY_RCU` cache, so a lockless reader may still hold it from
//! its previous life. If the copy overwrote `vm_refcnt` with the parent's
//! (attached) count, the new VMA would look attached before it is in any
//! tree, and that reader could lock it. `vm_area_init_from` therefore copies
//! every field *except* the lock (`vm_refcnt`, `vm_lock_seq`): the new VMA
//! stays detached (0) until `vma_mark_attached` after it is inserted. (The
//! review asked for a name that cannot be confused with `copy_vma`; upstream
//! settled on this one.)

use crate::mm::MmError;
use crate::mm::memory::rss_counter;
use crate::mm::mm_struct::MmStruct;
use crate::mm::mm_types::vm_flags::*;
use crate::mm::pgtable::pte;
use crate::mm::slab::VmaIdx;
use crate::mm::sync::Ordering;
use crate::mm::vma::Writer;
use crate::mm::vma_init::vm_area_dup;
use crate::mm::vma_tree::TreeEntry;

/// `dup_mmap`: copy `parent`'s address space into the empty `child`.
/// All or nothing: if a slot or the map count runs out, the child is left
/// empty and the parent unchanged.
pub fn dup_mmap(parent: &MmStruct, child: &MmStruct) -> Result<(), MmError> {
    let pw = Writer::lock(parent)?;
    let mut cw = Writer::lock(child)?;
    let ctx = &parent.ctx;
    let pool = &ctx.pool;
    // VM_DONTCOPY (MADV_DONTFORK) VMAs are left out of the child.
    let olds: Vec<_> = parent
        .mm_mt
        .entries(&pw.guard)
        .into_iter()
        .filter(|o| pool.get(o.idx).vm_flags() & VM_DONTCOPY == 0)
        .collect();
    // No max_map_count check: dup_mmap copies whatever the parent has (a
    // parent just above the limit, as mmap allows, forks fine).
    let mut news: Vec<VmaIdx> = Vec::with_capacity(olds.len());
    for _ in &olds {
        match pool.vm_area_alloc() {
            Ok((idx, _)) => news.push(idx),
            Err(e) => {
                for idx in news {
                    pool.vm_area_free_with(idx, &cw.guard);
                }
                return Err(e.into());
            }
        }
    }
    let race = parent.race_hooks();
    for (o, &nidx) in olds.iter().zip(&news) {
        let mpnt = pool.get(o.idx);
        // Readers of the parent must not see a VMA whose pages are being
        // write-protected for COW.
        mpnt.vma_start_write(pw.w.seq());
        let tmp = pool.get(nidx);
        vm_area_dup(mpnt, tmp, race);
        let pf = mpnt.fields();
        let mut f = tmp.fields();
        f.vm_mm = child.id();
        if f.vm_flags & VM_WIPEONFORK != 0 {
            // A clean slate: no anon_vma until the child faults.
            f.anon_vma = 0;
            f.anon_vma_chain = 0;
        } else if pf.anon_vma != 0 {
            // anon_vma_fork: the parent's chain plus an anon_vma of the
            // child's own, so the child's VMA "had uncowed parents".
            f.anon_vma = ctx.new_anon_vma();
            f.anon_vma_chain = pf.anon_vma_chain + 1;
        }
        // VM_LOCKED_MASK is not inherited.
        f.vm_flags &= !(VM_LOCKED | VM_LOCKONFAULT);
        tmp.set_fields(&f);
        tmp.vma_start_write(cw.w.seq());
        if tmp.vm_refcnt.load(Ordering::Relaxed) == 0 {
            tmp.vma_mark_attached();
        }
        child.mm_mt.store(
            TreeEntry {
                start: f.vm_start,
                end: f.vm_end,
                idx: nidx,
                generation: tmp.generation(),
            },
            &cw.guard,
        );
        if pf.vm_flags & VM_WIPEONFORK == 0 {
            copy_page_range(parent, child, pf.vm_flags, o.start, o.end, pf.anon_vma != 0)?;
        }
    }
    cw.w.state.map_count = olds.len();
    cw.w.state.brk = pw.w.state.brk;
    cw.w.state.start_brk = pw.w.state.start_brk;
    Ok(())
}

/// `copy_page_range`, if `vma_needs_copy`: only a VMA with an `anon_vma`
/// has pages a fault could not fill again (its anonymous ones). Shared and
/// never-written private mappings are left for the child to fault in,
/// which is what keeps fork of a big file mapping cheap. Private pages
/// become copy-on-write in both processes.
fn copy_page_range(
    parent: &MmStruct,
    child: &MmStruct,
    flags: u64,
    start: u64,
    end: u64,
    has_anon: bool,
) -> Result<(), MmError> {
    if !has_anon {
        return Ok(());
    }
    let shared = flags & VM_MAYSHARE != 0;
    let mut oom = false;
    parent.pgd.for_each_present(start, end, |addr, p| {
        if oom {
            return;
        }
        // Allocate the child's table before touching the parent's PTE, so
        // a failure leaves this PTE as it was (copy_pte_range allocates
        // the destination table first too).
        let Ok(dst) = child.pgd.pte_alloc(addr) else {
            oom = true;
            return;
        };
        // Relaxed: both mms are write-locked; faults on this VMA are out.
        let mut v = p.load(Ordering::Relaxed);
        if !shared && v & pte::ZERO == 0 && v & pte::FILE == 0 {
            v = (v & !pte::WRITE) | pte::COW;
            p.store(v, Ordering::Relaxed);
            // copy_present_pte: folio_dup_file_rmap / the anon page's
            // mapcount goes up (folio_try_dup_anon_rmap_pte).
            parent.ctx.anon_refs.dup(v >> pte::FRAME_SHIFT);
        } else if !shared && v & pte::FILE != 0 {
            v &= !pte::WRITE;
        }
        dst.store(v, Ordering::Relaxed);
        if let Some(ctr) = rss_counter(v) {
            child.rss.inc(ctr);
        }
    });
    if oom {
        // copy_page_range's -ENOMEM: the fork fails; the caller tears the
        // half-built child down (mmput -> exit_mmap).
        return Err(MmError::PgtablesExhausted {
            limit: child.ctx.pgtables.limit(),
        });
    }
    Ok(())
}
