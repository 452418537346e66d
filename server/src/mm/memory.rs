//! `handle_mm_fault` and its steps (`mm/memory.c`): what a fault does to the
//! page table once a VMA is found and locked.
//!
//! Each kernel step is a function: `do_pte_missing` dispatches to
//! `do_anonymous_page` or `do_fault` (`do_read_fault`, `do_cow_fault`,
//! `do_shared_fault`); a write to a present read-only PTE is `do_wp_page`.
//! A step proposes the new PTE and its RSS change; `handle_mm_fault`
//! installs it by compare-and-swap, so two racing faults on one page agree
//! on one winner (the kernel's PTE lock plays that role) and the loser sees
//! the winner's PTE on its retry.
//!
//! `do_read_fault` first maps what is already cached around the address
//! (`do_fault_around` → `filemap_map_pages`), which is why a read fault on
//! a file or shmem mapping can make several pages resident at once, and
//! why a fork child touching a page of a shared mapping gets its cached
//! neighbours too.

use crate::mm::PAGE_SHIFT;
use crate::mm::mm_struct::{MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MmStruct};
use crate::mm::mm_types::{Access, FaultOutcome, NeedMmapLock, Vma, VmaFields, vm_flags::*};
use crate::mm::pgtable::{USER_PGTABLES_CEILING, alloc_frame, pte};
use crate::mm::rcu::{RcuReadGuard, rcu_read_lock};
use crate::mm::sync::{AtomicU64, Ordering};

/// `fault_around_bytes` (mm/memory.c, default 64 KiB) in pages.
pub const FAULT_AROUND_PAGES: u64 = 16;
/// `PTRS_PER_PTE` on x86-64: a fault-around window stays in one PTE table.
const PTRS_PER_PTE: u64 = 512;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// RSS change of a fault: counter to increment, and one to decrement (a
/// file page replaced by its private copy).
type RssDelta = (usize, Option<usize>);

/// What a `do_*` step decided.
enum Step {
    /// Install `new` over the PTE value it was computed from.
    Set {
        new: u64,
        outcome: FaultOutcome,
        rss: Option<RssDelta>,
    },
    /// The step installed the PTE itself (fault-around mapped it).
    Done(FaultOutcome),
}

/// Everything a step needs to know about the fault (`struct vm_fault`).
struct VmFault<'a> {
    mm: &'a MmStruct,
    vma: &'a Vma,
    f: &'a VmaFields,
    /// Page-aligned faulting address.
    address: u64,
    /// Page index in the file (`linear_page_index`).
    pgoff: u64,
    write: bool,
    /// Under the per-VMA lock (not `mmap_lock`).
    vma_locked: bool,
}

/// `handle_mm_fault`: populate or upgrade the PTE for `addr` in `vma`, whose
/// fields `f` are stable (VMA read-locked or `mmap_lock` held).
pub(crate) fn handle_mm_fault(
    mm: &MmStruct,
    vma: &Vma,
    f: &VmaFields,
    addr: u64,
    access: Access,
    vma_locked: bool,
) -> Result<FaultOutcome, NeedMmapLock> {
    let address = addr & !(PAGE_SIZE - 1);
    if f.vm_flags & VM_HUGETLB != 0 {
        return hugetlb_fault(mm, vma, f, vma_locked);
    }
    let vmf = VmFault {
        mm,
        vma,
        f,
        address,
        // Wrapping: the race lab's buggy variants fault through a VMA that
        // was reused for another range; nothing may panic on that.
        pgoff: f
            .vm_pgoff
            .wrapping_add(address.wrapping_sub(f.vm_start) >> PAGE_SHIFT),
        write: access == Access::Write,
        vma_locked,
    };
    // __handle_mm_fault: a missing table level is allocated first; when
    // that fails the fault is VM_FAULT_OOM, counted as handled (the kernel
    // does not retry it under mmap_lock either).
    let Ok(slot) = mm.pgd.pte_alloc(address) else {
        return Ok(FaultOutcome::Oom);
    };
    loop {
        // Acquire pairs with the AcqRel CAS of a racing fault on this page.
        let old = slot.load(Ordering::Acquire);
        let step = if old & pte::PRESENT == 0 {
            do_pte_missing(&vmf)?
        } else if vmf.write && old & pte::WRITE == 0 {
            do_wp_page(&vmf, old)?
        } else {
            return Ok(FaultOutcome::AlreadyPresent);
        };
        let (new, outcome, rss) = match step {
            Step::Done(outcome) => return Ok(outcome),
            Step::Set { new, outcome, rss } => (new, outcome, rss),
        };
        // AcqRel: the winner publishes its frame; a loser re-reads.
        if slot
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // wp_page_copy replaced a fork-shared page: one mapper fewer
            // (folio_remove_rmap_pte), which may leave the other exclusive.
            if old & pte::COW != 0 && new & pte::COW == 0 && (old ^ new) >> pte::FRAME_SHIFT != 0 {
                mm.ctx.anon_refs.put(old >> pte::FRAME_SHIFT);
            }
            if let Some((ctr, minus)) = rss {
                mm.rss.inc(ctr);
                if let Some(m) = minus {
                    mm.rss.sub(m, 1);
                }
            }
            return Ok(outcome);
        }
    }
}

/// `hugetlb_fault` → `hugetlb_no_page`: a private mapping first gets its
/// `anon_vma` (`__vmf_anon_prepare`), then `alloc_hugetlb_folio` finds no
/// huge page (the simulated machine has `vm.nr_hugepages` 0, and
/// `MAP_NORESERVE` reserved none): `VM_FAULT_SIGBUS`. Nothing is mapped.
fn hugetlb_fault(
    mm: &MmStruct,
    vma: &Vma,
    f: &VmaFields,
    vma_locked: bool,
) -> Result<FaultOutcome, NeedMmapLock> {
    if f.vm_flags & VM_MAYSHARE == 0 {
        vmf_anon_prepare(mm, vma, f, vma_locked)?;
    }
    Ok(FaultOutcome::Sigbus)
}

/// `do_pte_missing`: anonymous memory or a file's (`vma_is_anonymous`).
fn do_pte_missing(vmf: &VmFault<'_>) -> Result<Step, NeedMmapLock> {
    if vmf.f.vm_file == 0 {
        do_anonymous_page(vmf)
    } else {
        Ok(do_fault(vmf)?)
    }
}

/// `do_anonymous_page`: a read maps the shared zero page, a write a new
/// zeroed page (which needs an `anon_vma`).
fn do_anonymous_page(vmf: &VmFault<'_>) -> Result<Step, NeedMmapLock> {
    if vmf.f.vm_flags & (VM_SHARED | VM_MAYSHARE) != 0 {
        // A shared anonymous line imported from maps text without its
        // shmem file: a shmem page of its own.
        let w = if vmf.write && vmf.f.vm_flags & VM_WRITE != 0 {
            pte::WRITE
        } else {
            0
        };
        return Ok(Step::Set {
            new: frame() | pte::PRESENT | pte::SHMEM | w,
            outcome: FaultOutcome::AnonZeroFill,
            rss: Some((MM_SHMEMPAGES, None)),
        });
    }
    if !vmf.write {
        return Ok(Step::Set {
            new: pte::PRESENT | pte::ZERO,
            outcome: FaultOutcome::AnonZeroFill,
            rss: None,
        });
    }
    vmf_anon_prepare(vmf.mm, vmf.vma, vmf.f, vmf.vma_locked)?;
    Ok(Step::Set {
        new: frame() | pte::PRESENT | pte::WRITE,
        outcome: FaultOutcome::AnonZeroFill,
        rss: Some((MM_ANONPAGES, None)),
    })
}

/// `do_fault`: a file or shmem page (`->fault`, after `->map_pages`).
fn do_fault(vmf: &VmFault<'_>) -> Result<Step, NeedMmapLock> {
    if beyond_eof(vmf.mm, vmf.f.vm_file, vmf.pgoff) {
        // shmem_fault -> shmem_get_folio_gfp: an index at or past i_size
        // is -EINVAL, VM_FAULT_SIGBUS (a shared anonymous mapping grown by
        // mremap past its file). A read faults around first: the cached
        // pages of the window inside the file are still mapped.
        if !vmf.write {
            do_fault_around(vmf);
        }
        return Ok(Step::Done(FaultOutcome::Sigbus));
    }
    if !vmf.write {
        Ok(do_read_fault(vmf))
    } else if vmf.f.vm_flags & VM_SHARED == 0 {
        do_cow_fault(vmf)
    } else {
        Ok(do_shared_fault(vmf))
    }
}

/// `do_read_fault`: fault around first; if that mapped the faulting page
/// too, done (`VM_FAULT_NOPAGE`). Else `__do_fault` reads the page into
/// the cache and maps it read-only. `vmf_can_call_fault` lets both run
/// under the VMA lock, since every simulated file has `->map_pages`.
fn do_read_fault(vmf: &VmFault<'_>) -> Step {
    if do_fault_around(vmf) {
        return Step::Done(FaultOutcome::FilePage);
    }
    __do_fault(vmf);
    Step::Set {
        new: frame() | pte::PRESENT | pte::FILE,
        outcome: FaultOutcome::FilePage,
        rss: Some((MM_FILEPAGES, None)),
    }
}

/// `do_cow_fault`: a write to a private file mapping reads the file page
/// (into the cache) and maps a private anonymous copy of it. No fault
/// around: `do_fault` takes this branch before `do_read_fault`'s.
fn do_cow_fault(vmf: &VmFault<'_>) -> Result<Step, NeedMmapLock> {
    vmf_anon_prepare(vmf.mm, vmf.vma, vmf.f, vmf.vma_locked)?;
    __do_fault(vmf);
    Ok(Step::Set {
        new: frame() | pte::PRESENT | pte::WRITE,
        outcome: FaultOutcome::CowBreak,
        rss: Some((MM_ANONPAGES, None)),
    })
}

/// `do_shared_fault`: a write to a shared mapping maps the cache page
/// itself, writable.
fn do_shared_fault(vmf: &VmFault<'_>) -> Step {
    __do_fault(vmf);
    let w = if vmf.f.vm_flags & VM_WRITE != 0 {
        pte::WRITE
    } else {
        0
    };
    Step::Set {
        new: frame() | pte::PRESENT | pte::FILE | w,
        outcome: FaultOutcome::FilePage,
        rss: Some((MM_FILEPAGES, None)),
    }
}

/// `__do_fault` → `filemap_fault` / `shmem_fault`: the page is in the page
/// cache from now on.
fn __do_fault(vmf: &VmFault<'_>) {
    vmf.mm.ctx.page_cache.add(vmf.f.vm_file, vmf.pgoff);
}

/// `do_fault_around`: the window of `FAULT_AROUND_PAGES` around the
/// address, aligned down to its size but clamped to the VMA's start, then
/// `FAULT_AROUND_PAGES` long, clamped to the VMA's end and to the PTE table
/// (`from_pte`/`to_pte` in mm/memory.c). Returns whether the faulting page
/// was among those mapped.
fn do_fault_around(vmf: &VmFault<'_>) -> bool {
    let f = vmf.f;
    // Only the race lab's buggy variants fault outside the VMA's range.
    if vmf.address < f.vm_start || vmf.address >= f.vm_end {
        return false;
    }
    let pte_off = (vmf.address >> PAGE_SHIFT) & (PTRS_PER_PTE - 1);
    let vma_off = (vmf.address - f.vm_start) >> PAGE_SHIFT;
    let vma_pages = (f.vm_end - f.vm_start) >> PAGE_SHIFT;
    let from_pte = (pte_off & !(FAULT_AROUND_PAGES - 1)).max(pte_off - pte_off.min(vma_off));
    let to_pte = (from_pte + FAULT_AROUND_PAGES)
        .min(PTRS_PER_PTE)
        .min(pte_off + vma_pages - vma_off)
        - 1;
    filemap_map_pages(
        vmf,
        vmf.pgoff + from_pte - pte_off,
        vmf.pgoff + to_pte - pte_off,
    )
}

/// Is page `pgoff` past the end of `file`, where the simulation knows the
/// size (the engine's own shmem files, client files a mapping sized)?
fn beyond_eof(mm: &MmStruct, file: u64, pgoff: u64) -> bool {
    mm.ctx.files.size_pages(file).is_some_and(|n| pgoff >= n)
}

/// `filemap_map_pages`: map, read-only, every cached page of
/// `[start_pgoff, end_pgoff]` whose PTE is still none (a present PTE, such
/// as a private copy, is left alone). Returns whether the faulting page was
/// mapped.
fn filemap_map_pages(vmf: &VmFault<'_>, start_pgoff: u64, end_pgoff: u64) -> bool {
    let (mm, f) = (vmf.mm, vmf.f);
    let cache = &mm.ctx.page_cache;
    let mut mapped_fault = false;
    let mut rss = 0;
    // `end_pgoff = min(end_pgoff, file_end)`: nothing past i_size.
    let end_pgoff = match mm.ctx.files.size_pages(f.vm_file) {
        Some(0) => return false,
        Some(n) => end_pgoff.min(n - 1),
        None => end_pgoff,
    };
    for pgoff in start_pgoff..=end_pgoff {
        if !cache.contains(f.vm_file, pgoff) {
            continue;
        }
        let addr = f.vm_start + ((pgoff - f.vm_pgoff) << PAGE_SHIFT);
        // The window is inside the faulting page's table, which
        // handle_mm_fault allocated: this finds it.
        let Some(slot) = mm.pgd.pte(addr) else {
            continue;
        };
        if map_if_none(slot, frame() | pte::PRESENT | pte::FILE) {
            rss += 1;
            mapped_fault |= addr == vmf.address;
        }
    }
    if rss > 0 {
        mm.rss.add(MM_FILEPAGES, rss);
    }
    mapped_fault
}

/// Install `new` where the PTE is none (`pte_none` in
/// `filemap_map_order0_folio`); a racing fault that got there first wins.
fn map_if_none(slot: &AtomicU64, new: u64) -> bool {
    // AcqRel/Acquire as in handle_mm_fault: publish the frame, or see the
    // winner's.
    slot.compare_exchange(0, new, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// `do_wp_page`: a write to a present, write-protected PTE.
fn do_wp_page(vmf: &VmFault<'_>, old: u64) -> Result<Step, NeedMmapLock> {
    let shared = vmf.f.vm_flags & (VM_SHARED | VM_MAYSHARE) != 0;
    if shared {
        // wp_page_shared: the page is the cache page; make it writable.
        return Ok(Step::Set {
            new: old | pte::WRITE,
            outcome: FaultOutcome::AlreadyPresent,
            rss: None,
        });
    }
    let anon = old & (pte::ZERO | pte::FILE) == 0;
    if anon && (old & pte::COW == 0 || vmf.mm.ctx.anon_refs.exclusive(old >> pte::FRAME_SHIFT)) {
        // wp_page_reuse: an exclusive anonymous page (PageAnonExclusive,
        // e.g. its write bit was removed by mprotect), or one fork shared
        // whose other mappers are gone (wp_can_reuse_anon_folio: they broke
        // COW, unmapped it or exited). Reused in place: no copy.
        return Ok(Step::Set {
            new: (old | pte::WRITE) & !pte::COW,
            outcome: FaultOutcome::AlreadyPresent,
            rss: None,
        });
    }
    // wp_page_copy: a private copy (of the zero page, the file page or the
    // page shared with a fork relative).
    vmf_anon_prepare(vmf.mm, vmf.vma, vmf.f, vmf.vma_locked)?;
    let new = frame() | pte::PRESENT | pte::WRITE;
    Ok(if old & pte::ZERO != 0 {
        Step::Set {
            new,
            outcome: FaultOutcome::AnonZeroFill,
            rss: Some((MM_ANONPAGES, None)),
        }
    } else if old & pte::FILE != 0 {
        Step::Set {
            new,
            outcome: FaultOutcome::CowBreak,
            rss: Some((MM_ANONPAGES, Some(MM_FILEPAGES))),
        }
    } else {
        Step::Set {
            new,
            outcome: FaultOutcome::CowBreak,
            rss: None,
        }
    })
}

fn frame() -> u64 {
    alloc_frame() << pte::FRAME_SHIFT
}

/// `__vmf_anon_prepare`: give the VMA an `anon_vma` if it has none. Under
/// the VMA lock alone the fault takes `mmap_read_trylock` and prepares it
/// in place; only if a writer holds `mmap_lock` does it return
/// `VM_FAULT_RETRY` (and the fault retries under `mmap_lock`).
pub(crate) fn vmf_anon_prepare(
    mm: &MmStruct,
    vma: &Vma,
    f: &VmaFields,
    vma_locked: bool,
) -> Result<(), NeedMmapLock> {
    if f.anon_vma != 0 || vma.anon_vma.load(Ordering::Relaxed) != 0 {
        return Ok(());
    }
    let _mmap_read = if vma_locked {
        Some(mm.mmap_read_trylock().ok_or(NeedMmapLock)?)
    } else {
        None
    };
    __anon_vma_prepare(mm, vma, f);
    Ok(())
}

/// `__anon_vma_prepare` (mm/rmap.c), with `mmap_lock` held: reuse
/// a neighbour's `anon_vma` if `find_mergeable_anon_vma` finds one (so the
/// two VMAs can merge again later), else a new one.
pub(crate) fn __anon_vma_prepare(mm: &MmStruct, vma: &Vma, f: &VmaFields) {
    let anon_vma = find_mergeable_anon_vma(mm, f).unwrap_or_else(|| mm.ctx.new_anon_vma());
    // Several mmap_lock readers may race here (the kernel serialises them
    // with page_table_lock); the CAS picks one anon_vma. Relaxed: the
    // value is only read by faults on this VMA (which tolerate either
    // winner) and by writers, which hold mmap_lock for write and so come
    // after us.
    if vma
        .anon_vma
        .compare_exchange(0, anon_vma, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        vma.anon_vma_chain.store(1, Ordering::Relaxed);
    }
}

/// `anon_vma_compatible`: adjacent, same file, flags equal but for the
/// access bits, linear offsets.
fn anon_vma_compatible(a: &VmaFields, b: &VmaFields) -> bool {
    a.vm_end == b.vm_start
        && a.vm_file == b.vm_file
        && (a.vm_flags ^ b.vm_flags) & !VM_ACCESS_FLAGS == 0
        && b.vm_pgoff == a.vm_pgoff + ((b.vm_start - a.vm_start) >> PAGE_SHIFT)
}

/// `find_mergeable_anon_vma`: the `anon_vma` of the next, else the previous
/// VMA, if it is compatible and that VMA's chain is singular
/// (`reusable_anon_vma`). Needs `mmap_lock` (the tree is stable).
fn find_mergeable_anon_vma(mm: &MmStruct, f: &VmaFields) -> Option<u64> {
    let g = rcu_read_lock();
    let pool = &mm.ctx.pool;
    let reusable = |old: &VmaFields, a: &VmaFields, b: &VmaFields| {
        (anon_vma_compatible(a, b) && old.anon_vma != 0 && old.anon_vma_chain == 1)
            .then_some(old.anon_vma)
    };
    if let Some(n) = mm.mm_mt.mas_walk(f.vm_end, &g) {
        let nf = pool.get(n.idx).fields();
        if let Some(a) = reusable(&nf, f, &nf) {
            return Some(a);
        }
    }
    let p = mm.mm_mt.prev(f.vm_start, &g)?;
    let pf = pool.get(p.idx).fields();
    reusable(&pf, &pf, f)
}

/// `zap_page_range`: drop every PTE in `[start, end)` and its RSS.
pub(crate) fn zap_page_range(mm: &MmStruct, start: u64, end: u64) -> u64 {
    let mut freed = 0;
    mm.pgd.for_each_present(start, end, |_, p| {
        // Relaxed: mmap_lock write + write-locked VMAs exclude faults here.
        let v = p.swap(0, Ordering::Relaxed);
        if let Some(ctr) = rss_counter(v) {
            mm.rss.sub(ctr, 1);
            freed += 1;
        }
        // zap_present_ptes -> folio_remove_rmap_ptes: one mapper fewer.
        if v & pte::COW != 0 {
            mm.ctx.anon_refs.put(v >> pte::FRAME_SHIFT);
        }
    });
    freed
}

/// Which RSS counter a PTE value counts in (`None` for the zero page).
pub(crate) fn rss_counter(v: u64) -> Option<usize> {
    if v & pte::PRESENT == 0 || v & pte::ZERO != 0 {
        None
    } else if v & pte::FILE != 0 {
        Some(MM_FILEPAGES)
    } else if v & pte::SHMEM != 0 {
        Some(MM_SHMEMPAGES)
    } else {
        Some(MM_ANONPAGES)
    }
}

/// `free_pgtables`: after `[start, end)` was unmapped (its PTEs zapped and
/// the tree updated), free the page tables of every part of it that no
/// VMA covers now, between that part's neighbours (mm/memory.c passes
/// `floor` = the previous VMA's end, `ceiling` = the next one's start).
///
/// The caller holds `mmap_lock` for write (`guard` is its RCU guard) and
/// has zapped the range; see [`PageTable::free_pgd_range`] for why no fault
/// can be using these tables.
pub(crate) fn free_pgtables(mm: &MmStruct, start: u64, end: u64, guard: &RcuReadGuard) {
    let mut gaps = Vec::new();
    let mut cur = start;
    for v in mm.mm_mt.overlapping(start, end, guard) {
        if v.start > cur {
            gaps.push((cur, v.start));
        }
        cur = cur.max(v.end);
    }
    if cur < end {
        gaps.push((cur, end));
    }
    for (gs, ge) in gaps {
        let floor = mm.mm_mt.prev(gs, guard).map_or(0, |p| p.end.min(gs));
        let ceiling = mm
            .mm_mt
            .next(ge, guard)
            .map_or(USER_PGTABLES_CEILING, |n| n.start);
        // SAFETY: `[floor, ceiling)` has no VMA (floor is the end of the
        // VMA before the gap, ceiling the start of the one after it), and
        // the caller holds mmap_lock for write with the range zapped.
        unsafe { mm.pgd.free_pgd_range(gs, ge, floor, ceiling) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::mmap::{MmapArgs, map::*, prot::*};
    use crate::mm::sim::{SimConfig, Simulator};

    const P: u64 = PAGE_SIZE;
    /// A 2 MiB-aligned address: PTE index 0 of its table.
    const BASE: u64 = 0x7f00_0000_0000;

    fn map_file(s: &Simulator, pid: u32, addr: u64, pages: u64, flags: u32, pgoff: u64) {
        s.mmap(
            pid,
            MmapArgs {
                addr,
                len: pages * P,
                prot: PROT_READ | PROT_WRITE,
                flags: flags | MAP_FIXED,
                file: 7,
                offset: pgoff * P,
                file_size: 0,
            },
        )
        .unwrap();
    }

    fn rss(s: &Simulator, pid: u32) -> u64 {
        s.maps(pid).unwrap().rss_pages
    }

    fn read(s: &Simulator, pid: u32, addr: u64) -> FaultOutcome {
        s.fault(pid, addr, Access::Read).unwrap().outcome
    }

    /// do_read_fault → do_fault_around → filemap_map_pages: a read fault
    /// maps the cached pages of its 16-page window, nothing outside it; a
    /// fork child (no PTEs copied for a VMA without anon_vma,
    /// vma_needs_copy) finds the parent's pages cached.
    #[test]
    fn read_fault_maps_cached_pages_of_its_window() {
        let s = Simulator::new(SimConfig::default());
        let parent = s.spawn().unwrap();
        map_file(&s, parent, BASE, 32, MAP_SHARED, 0);
        read(&s, parent, BASE + 3 * P);
        read(&s, parent, BASE + 20 * P);
        assert_eq!(rss(&s, parent), 2, "empty cache: one page a fault");
        let child = s.fork(parent).unwrap();
        assert_eq!(rss(&s, child), 0);
        assert_eq!(read(&s, child, BASE + 5 * P), FaultOutcome::FilePage);
        assert_eq!(rss(&s, child), 2, "page 3 faulted around, page 5 read in");
        read(&s, child, BASE + 17 * P);
        assert_eq!(rss(&s, child), 4, "window 16..31: page 20 and page 17");
        // The faulting page itself cached: fault-around maps it
        // (VM_FAULT_NOPAGE), __do_fault is not needed.
        assert_eq!(read(&s, child, BASE + 3 * P), FaultOutcome::AlreadyPresent);
        let grandchild = s.fork(child).unwrap();
        assert_eq!(read(&s, grandchild, BASE + 20 * P), FaultOutcome::FilePage);
        assert_eq!(rss(&s, grandchild), 2, "pages 17 and 20 of window 16..31");
    }

    /// do_fault_around's `from_pte` is clamped to the VMA start and the
    /// window then runs FAULT_AROUND_PAGES from there, across the aligned
    /// block's end; `to_pte` is clamped to the PTE table.
    #[test]
    fn window_clamps_to_the_vma_start_and_the_pte_table() {
        let s = Simulator::new(SimConfig::default());
        let a = s.spawn().unwrap();
        // VMA from PTE index 5 (pgoff 0): pages at PTE 20 (pgoff 15) and 21.
        map_file(&s, a, BASE + 5 * P, 40, MAP_SHARED, 0);
        read(&s, a, BASE + 20 * P);
        read(&s, a, BASE + 21 * P);
        let b = s.fork(a).unwrap();
        read(&s, b, BASE + 7 * P);
        let m = s.maps(b).unwrap();
        assert_eq!(m.rss_pages, 2, "window 5..20: PTE 20 yes, 21 no");
        // Last 4 pages of a table, VMA running into the next table: the
        // window is PTE 508..511 only, the next table's cached page stays.
        let end = BASE + (2 << 20);
        map_file(&s, a, end - 4 * P, 8, MAP_SHARED, 100);
        read(&s, a, end - 4 * P);
        read(&s, a, end);
        let c = s.fork(a).unwrap();
        read(&s, c, end - 2 * P);
        assert_eq!(rss(&s, c), 2, "PTE 508 and 510, not 0 of the next table");
    }

    /// do_wp_page -> wp_can_reuse_anon_folio: after fork the first writer
    /// copies; whoever is left alone with the page reuses it in place, be
    /// it because the others copied, unmapped it or exited.
    #[test]
    fn cow_reuses_a_page_nobody_else_maps() {
        use crate::mm::fault::follow_pte;
        let s = Simulator::new(SimConfig::default());
        let p0 = s.spawn().unwrap();
        let a = s
            .mmap(
                p0,
                MmapArgs {
                    len: 2 * P,
                    prot: PROT_READ | PROT_WRITE,
                    flags: MAP_PRIVATE | MAP_ANONYMOUS,
                    ..Default::default()
                },
            )
            .unwrap();
        let write = |pid, addr| s.fault(pid, addr, Access::Write).unwrap().outcome;
        let frame = |pid, addr| follow_pte(&s.mm(pid).unwrap(), addr).unwrap() >> 12;
        write(p0, a);
        write(p0, a + P);
        let (p1, p2) = (s.fork(p0).unwrap(), s.fork(p0).unwrap());
        let f = frame(p0, a);
        // Three mappers: the first two writers copy, the last reuses.
        assert_eq!(write(p1, a), FaultOutcome::CowBreak);
        assert_eq!(write(p0, a), FaultOutcome::CowBreak);
        assert_eq!(write(p2, a), FaultOutcome::AlreadyPresent);
        assert_eq!(frame(p2, a), f, "reused in place");
        assert_ne!(frame(p1, a), f);
        // The second page: its other mappers exit or unmap it.
        s.exit(p1).unwrap();
        s.munmap(p2, a, 2 * P).unwrap();
        let g = frame(p0, a + P);
        assert_eq!(write(p0, a + P), FaultOutcome::AlreadyPresent);
        assert_eq!(frame(p0, a + P), g);
        assert!(s.context().anon_refs.is_empty(), "nothing shared is left");
        assert_eq!(s.maps(p0).unwrap().rss_pages, 2);
    }

    /// Write faults never fault around (do_cow_fault, do_shared_fault), but
    /// they bring their page into the cache for the next read.
    #[test]
    fn write_faults_do_not_fault_around_but_fill_the_cache() {
        let s = Simulator::new(SimConfig::default());
        let a = s.spawn().unwrap();
        map_file(&s, a, BASE, 16, MAP_SHARED, 0);
        s.fault(a, BASE, Access::Write).unwrap();
        s.fault(a, BASE + P, Access::Write).unwrap();
        let b = s.fork(a).unwrap();
        map_file(&s, b, BASE + (4 << 20), 16, MAP_PRIVATE, 0);
        let r = s.fault(b, BASE + (4 << 20) + 2 * P, Access::Write).unwrap();
        assert_eq!(r.outcome, FaultOutcome::CowBreak);
        assert_eq!(rss(&s, b), 1, "the private copy only");
        // A read of the private mapping maps pages 0 and 1 (cached by the
        // parent's writes), page 2 is its private copy already.
        read(&s, b, BASE + (4 << 20) + 3 * P);
        assert_eq!(rss(&s, b), 4);
        assert_eq!(s.context().page_cache.len(), 4);
    }

    /// A client file with a size (`MmapRequest.file_size`): `shmem_fault`
    /// → `shmem_get_folio_gfp` refuses an index at or past `i_size`
    /// (VM_FAULT_SIGBUS) for a read, a private write (`do_cow_fault`'s
    /// source page) and a shared write alike, and `filemap_map_pages`
    /// clamps `end_pgoff` to `file_end`; inside the file nothing changes.
    #[test]
    fn a_sized_file_faults_sigbus_past_its_end_and_fault_around_stops_there() {
        let s = Simulator::new(SimConfig::default());
        let a = s.spawn().unwrap();
        let map = |pid, addr, flags, file_size| {
            s.mmap(
                pid,
                MmapArgs {
                    addr,
                    len: 8 * P,
                    prot: PROT_READ | PROT_WRITE,
                    flags: flags | MAP_FIXED,
                    file: 9,
                    offset: 0,
                    file_size,
                },
            )
        };
        // 5 pages of file under an 8-page VMA (as after mremap grew it).
        map(a, BASE, MAP_SHARED, 5 * P).unwrap();
        for pg in 0..5 {
            assert_eq!(read(&s, a, BASE + pg * P), FaultOutcome::FilePage);
        }
        assert_eq!(read(&s, a, BASE + 5 * P), FaultOutcome::Sigbus);
        assert_eq!(
            s.fault(a, BASE + 7 * P, Access::Write).unwrap().outcome,
            FaultOutcome::Sigbus
        );
        map(a, BASE + 8 * P, MAP_PRIVATE, 0).unwrap();
        assert_eq!(
            s.fault(a, BASE + 14 * P, Access::Write).unwrap().outcome,
            FaultOutcome::Sigbus,
            "the size stays with the file, given once"
        );
        // A fork child's read fault maps the 5 cached pages, none past EOF.
        let b = s.fork(a).unwrap();
        assert_eq!(read(&s, b, BASE + P), FaultOutcome::FilePage);
        assert_eq!(rss(&s, b), 5);
        // Truncation is not simulated; anonymous memory has no file size.
        assert!(map(a, BASE + 16 * P, MAP_SHARED, 6 * P).is_err());
        assert!(map(a, BASE + 16 * P, MAP_SHARED, 5 * P).is_ok());
        let anon = s.mmap(
            a,
            MmapArgs {
                len: P,
                prot: PROT_READ,
                flags: MAP_PRIVATE | MAP_ANONYMOUS,
                file_size: P,
                ..MmapArgs::default()
            },
        );
        assert!(anon.is_err());
    }
}
