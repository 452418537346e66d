//! Splitting, merging and unmapping VMAs: `mm/vma.c`.
//!
//! Every writer of an address space (mmap, munmap, mprotect, madvise,
//! mremap, brk) is built from the same few steps the kernel uses, so that
//! what a lockless reader can observe — which pool slot keeps which piece
//! of a range, which VMAs are write-locked, which are detached and freed
//! and when — is what it would observe on Linux:
//!
//! * [`__split_vma`]: the *new* slot takes the part given by `new_below`
//!   (below `addr`, or from `addr` up); the original slot keeps the rest.
//!   Callers choose `new_below` so that the new slot is the part that
//!   *stays*: munmap and mprotect split the first VMA with `new_below = 1`
//!   and the last one with `new_below = 0`, so the original slot becomes
//!   the removed or modified middle (`vms_gather_munmap_vmas`, `vma_modify`).
//! * [`vma_merge_existing_range`]: a modified range merging into `prev`
//!   expands `prev` in place; merging into `next` expands `next` in place
//!   (moving its start down); the middle shrinks or is removed. No slot is
//!   allocated for a merge.
//! * [`vma_merge_new_range`] / `vma_expand`: a new range (mmap, brk, the
//!   destination of mremap) expands `prev` or `next` instead of taking a
//!   slot.
//! * Only the VMAs an operation changes are write-locked (`vma_start_write`
//!   in `__split_vma`, `vma_merge_existing_range`, `vma_expand`,
//!   `vms_gather_munmap_vmas`); their neighbours stay readable.
//! * A VMA is attached (`vm_refcnt` 1) and write-locked *before* it is
//!   stored in the tree (`vma_iter_store_new`), so a reader never finds a
//!   new VMA detached; removed VMAs are detached while still in the tree
//!   (`vms_gather_munmap_vmas`) and freed after they left it
//!   (`vms_complete_munmap_vmas`), so a reader holding a stale pointer sees
//!   `vm_refcnt == 0` (`VMA_LOCK_MISS`) and walks again.
//!
//! Operations are applied step by step, as in the kernel, so a failure part
//! way (a map count or pool limit hit by the second split of a range) leaves
//! what the kernel would leave: the steps already taken.

use crate::mm::mm_struct::{MmStruct, MmapWriteGuard};
use crate::mm::mm_types::VmaFields;
use crate::mm::rcu::{RcuReadGuard, rcu_read_lock};
use crate::mm::slab::{VmaCache, VmaIdx};
use crate::mm::vma_tree::TreeEntry;
use crate::mm::{MmError, PAGE_SHIFT, TASK_SIZE, page_align, page_aligned};

/// `mmap_lock` held for write plus an RCU read section for tree updates.
pub(crate) struct Writer<'a> {
    pub(crate) mm: &'a MmStruct,
    pub(crate) w: MmapWriteGuard<'a>,
    pub(crate) guard: RcuReadGuard,
}

impl<'a> Writer<'a> {
    /// `mmap_write_lock`, failing if the mm has exited.
    pub(crate) fn lock(mm: &'a MmStruct) -> Result<Self, MmError> {
        let w = mm.mmap_write_lock();
        if w.state.dead {
            return Err(MmError::NoSuchProcess(mm.pid));
        }
        Ok(Self {
            mm,
            w,
            guard: rcu_read_lock(),
        })
    }

    /// The odd `mm_lock_seq` of this write cycle.
    pub(crate) fn seq(&self) -> u64 {
        self.w.seq()
    }

    pub(crate) fn pool(&self) -> &VmaCache {
        &self.mm.ctx.pool
    }

    /// The fields of a VMA of this mm (stable: we hold `mmap_lock`).
    pub(crate) fn fields(&self, idx: VmaIdx) -> VmaFields {
        self.pool().get(idx).fields()
    }

    /// `vma_start_write`.
    pub(crate) fn vma_start_write(&self, idx: VmaIdx) {
        self.pool().get(idx).vma_start_write(self.seq());
    }

    /// `find_vma`: the first VMA ending after `addr`.
    pub(crate) fn find_vma(&self, addr: u64) -> Option<TreeEntry> {
        let t = &self.mm.mm_mt;
        t.mas_walk(addr, &self.guard)
            .or_else(|| t.next(addr, &self.guard))
    }

    /// `vma_find(vmi, end)` from `start`: the first VMA overlapping
    /// `[start, end)`.
    pub(crate) fn vma_find(&self, start: u64, end: u64) -> Option<TreeEntry> {
        self.find_vma(start).filter(|e| e.start < end)
    }

    /// The VMA before the one starting at `start` (`vma_prev`).
    pub(crate) fn vma_prev(&self, start: u64) -> Option<TreeEntry> {
        self.mm.mm_mt.prev(start, &self.guard)
    }

    /// The VMA containing `addr`, or the last one below it: the `prev` of
    /// a gap at `addr` (`find_vma_prev`, `vma_iter_next_rewind`).
    pub(crate) fn prev_of_gap(&self, addr: u64) -> Option<TreeEntry> {
        self.mm
            .mm_mt
            .prev(addr, &self.guard)
            .filter(|p| p.end <= addr)
    }

    /// The first VMA starting at or after `addr`.
    pub(crate) fn vma_next(&self, addr: u64) -> Option<TreeEntry> {
        self.mm.mm_mt.next(addr, &self.guard)
    }

    fn entry(&self, idx: VmaIdx) -> TreeEntry {
        let v = self.pool().get(idx);
        let f = v.fields();
        TreeEntry {
            start: f.vm_start,
            end: f.vm_end,
            idx,
            generation: v.generation(),
        }
    }

    /// Store `idx` in the tree under its current range.
    fn store(&self, idx: VmaIdx) {
        self.mm.mm_mt.store(self.entry(idx), &self.guard);
    }

    /// Remove the tree entry at `start` if it still points at `idx` (it may
    /// have been overwritten by a VMA now starting there).
    fn erase_if(&self, start: u64, idx: VmaIdx) {
        let t = &self.mm.mm_mt;
        if t.mas_walk(start, &self.guard)
            .is_some_and(|e| e.start == start && e.idx == idx)
        {
            t.erase(start, &self.guard);
        }
    }

    /// `vma_set_range` on a write-locked VMA, keeping the tree in step.
    pub(crate) fn vma_set_range(&self, idx: VmaIdx, start: u64, end: u64, pgoff: u64) {
        let vma = self.pool().get(idx);
        let mut f = vma.fields();
        let old_start = f.vm_start;
        f.vm_start = start;
        f.vm_end = end;
        f.vm_pgoff = pgoff;
        vma.set_fields(&f);
        self.store(idx);
        if old_start != start {
            self.erase_if(old_start, idx);
        }
    }

    /// `vma_iter_store_new`: attach a new, write-locked VMA, then make it
    /// visible. Attaching first means a reader that finds it sees it
    /// write-locked (ABORT), never detached.
    pub(crate) fn vma_iter_store_new(&self, idx: VmaIdx) {
        let vma = self.pool().get(idx);
        vma.vma_start_write(self.seq());
        vma.vma_mark_attached();
        self.store(idx);
    }

    /// `vm_area_alloc` with the fields of a new VMA of this mm.
    pub(crate) fn vm_area_alloc(&self, mut f: VmaFields) -> Result<VmaIdx, MmError> {
        let (idx, vma) = self.pool().vm_area_alloc()?;
        f.vm_mm = self.mm.id();
        vma.set_fields(&f);
        Ok(idx)
    }

    /// `vma_mark_detached` then `vm_area_free` (`remove_vma`) of a VMA that
    /// is no longer in the tree.
    fn remove_vma(&self, idx: VmaIdx) {
        let vma = self.pool().get(idx);
        if !vma.is_detached() {
            vma.vma_mark_detached();
        }
        self.pool().vm_area_free_with(idx, &self.guard);
    }
}

/// A new VMA with fields `f`: allocated, attached, write-locked and in the
/// tree (`vm_area_alloc` + `vma_link` / `vma_iter_store_new`).
pub(crate) fn vm_area_alloc_new(w: &mut Writer<'_>, f: VmaFields) -> Result<VmaIdx, MmError> {
    let idx = w.vm_area_alloc(f)?;
    w.vma_iter_store_new(idx);
    w.w.state.map_count += 1;
    Ok(idx)
}

/// Pages in a VMA.
pub(crate) fn vma_pages(f: &VmaFields) -> u64 {
    (f.vm_end - f.vm_start) >> PAGE_SHIFT
}

/// `__split_vma`: split the VMA in slot `idx` at `addr`. A new slot
/// (`vm_area_dup`) takes `[vm_start, addr)` if `new_below`, else
/// `[addr, vm_end)`; `idx` keeps the other part. Returns the new slot.
/// Bypasses the `max_map_count` check, like the kernel's.
pub(crate) fn __split_vma(
    w: &mut Writer<'_>,
    idx: VmaIdx,
    addr: u64,
    new_below: bool,
) -> Result<VmaIdx, MmError> {
    let f = w.fields(idx);
    debug_assert!(f.vm_start < addr && addr < f.vm_end);
    // ->may_split (hugetlb_vm_op_split): a hugetlb VMA splits only at a
    // huge page boundary.
    if f.vm_flags & crate::mm::mm_types::vm_flags::VM_HUGETLB != 0
        && let Some(shift) = crate::mm::file_table::huge_page_shift(f.vm_file)
        && addr & ((1 << shift) - 1) != 0
    {
        return Err(MmError::inval(
            "addr",
            format!(
                "{addr:#x} splits a hugetlb mapping off its {:#x}-byte pages",
                1u64 << shift
            ),
        ));
    }
    // vm_area_dup: a copy of every field but the lock; anon_vma_clone
    // gives the new VMA the same anon_vma chain.
    let mut nf = f;
    if new_below {
        nf.vm_end = addr;
    } else {
        nf.vm_start = addr;
        nf.vm_pgoff += (addr - f.vm_start) >> PAGE_SHIFT;
    }
    let new = w.vm_area_alloc(nf)?;
    w.vma_start_write(idx);
    w.vma_start_write(new);
    if new_below {
        // Store the new VMA first: it overwrites the original's entry at
        // vm_start; the original then moves to addr.
        w.vma_iter_store_new(new);
        w.vma_set_range(
            idx,
            addr,
            f.vm_end,
            f.vm_pgoff + ((addr - f.vm_start) >> PAGE_SHIFT),
        );
    } else {
        w.vma_set_range(idx, f.vm_start, addr, f.vm_pgoff);
        w.vma_iter_store_new(new);
    }
    w.w.state.map_count += 1;
    Ok(new)
}

/// `split_vma`: [`__split_vma`] unless the map count is at its limit.
pub(crate) fn split_vma(
    w: &mut Writer<'_>,
    idx: VmaIdx,
    addr: u64,
    new_below: bool,
) -> Result<VmaIdx, MmError> {
    if w.w.state.map_count >= w.mm.ctx.max_map_count {
        return Err(MmError::MapCountExceeded {
            limit: w.mm.ctx.max_map_count,
        });
    }
    __split_vma(w, idx, addr, new_below)
}

/// `struct vma_merge_struct`: what a range should become and the VMAs
/// around it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vmg {
    pub(crate) prev: Option<VmaIdx>,
    /// The existing VMA being modified (`None` for a new range).
    pub(crate) middle: Option<VmaIdx>,
    pub(crate) next: Option<VmaIdx>,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) pgoff: u64,
    pub(crate) flags: u64,
    pub(crate) file: u64,
    pub(crate) anon_name: u64,
    /// The `anon_vma` the range carries (the middle's, or none for a new
    /// range).
    pub(crate) anon_vma: u64,
    /// `VMG_FLAG_JUST_EXPAND` (brk): only `prev` may be expanded.
    pub(crate) just_expand: bool,
}

impl Vmg {
    /// The state for modifying `[start, end)` of `middle` to have `f`'s
    /// attributes (`VMG_VMA_STATE`).
    pub(crate) fn modify(
        prev: Option<VmaIdx>,
        middle: VmaIdx,
        start: u64,
        end: u64,
        f: &VmaFields,
        middle_f: &VmaFields,
    ) -> Self {
        Self {
            prev,
            middle: Some(middle),
            next: None,
            start,
            end,
            pgoff: middle_f.vm_pgoff + ((start - middle_f.vm_start) >> PAGE_SHIFT),
            flags: f.vm_flags,
            file: f.vm_file,
            anon_name: f.anon_name,
            anon_vma: middle_f.anon_vma,
            just_expand: false,
        }
    }
}

/// `vma_had_uncowed_parents`: an `anon_vma` chain longer than one (a VMA
/// of a fork child, or split from one). Merging such a VMA with one that
/// has no `anon_vma` is refused, to keep anon_vma lock contention down.
fn vma_had_uncowed_parents(f: &VmaFields) -> bool {
    f.anon_vma != 0 && f.anon_vma_chain > 1
}

/// `is_mergeable_vma`: same flags, file and anonymous name.
fn is_mergeable_vma(vmg: &Vmg, tgt: &VmaFields) -> bool {
    tgt.vm_flags == vmg.flags && tgt.vm_file == vmg.file && tgt.anon_name == vmg.anon_name
}

/// `is_mergeable_anon_vma` (6.16+): can the range's `anon_vma` and the
/// target's live in one VMA?
fn is_mergeable_anon_vma(w: &Writer<'_>, vmg: &Vmg, tgt: &VmaFields) -> bool {
    let (tgt_anon, src_anon) = (tgt.anon_vma, vmg.anon_vma);
    if tgt_anon == 0 && src_anon != 0 {
        // Case 1: dup_anon_vma() from the source into the target.
        return !vmg
            .middle
            .is_some_and(|m| vma_had_uncowed_parents(&w.fields(m)));
    }
    if tgt_anon != 0 && src_anon == 0 {
        // Case 2: the range simply uses the target's anon_vma.
        return !vma_had_uncowed_parents(tgt);
    }
    // Case 3: both none, or already shared.
    src_anon == tgt_anon
}

/// `are_anon_vmas_compatible`: may `prev` and `next` become one VMA?
fn are_anon_vmas_compatible(a: &VmaFields, b: &VmaFields) -> bool {
    a.anon_vma == 0 || b.anon_vma == 0 || a.anon_vma == b.anon_vma
}

/// `can_vma_merge_before`: the range can go in front of `next`.
fn can_vma_merge_before(w: &Writer<'_>, vmg: &Vmg, next: &VmaFields) -> bool {
    let pglen = (vmg.end - vmg.start) >> PAGE_SHIFT;
    is_mergeable_vma(vmg, next)
        && is_mergeable_anon_vma(w, vmg, next)
        && next.vm_pgoff == vmg.pgoff + pglen
}

/// `can_vma_merge_after`: the range can follow `prev`.
fn can_vma_merge_after(w: &Writer<'_>, vmg: &Vmg, prev: &VmaFields) -> bool {
    is_mergeable_vma(vmg, prev)
        && is_mergeable_anon_vma(w, vmg, prev)
        && prev.vm_pgoff + vma_pages(prev) == vmg.pgoff
}

fn can_vma_merge_left(w: &Writer<'_>, vmg: &Vmg) -> bool {
    vmg.prev.is_some_and(|p| {
        let pf = w.fields(p);
        pf.vm_end == vmg.start && can_vma_merge_after(w, vmg, &pf)
    })
}

fn can_vma_merge_right(w: &Writer<'_>, vmg: &Vmg, can_merge_left: bool) -> bool {
    let Some(n) = vmg.next else { return false };
    let nf = w.fields(n);
    if vmg.end != nf.vm_start || !can_vma_merge_before(w, vmg, &nf) {
        return false;
    }
    if !can_merge_left {
        return true;
    }
    // Each side is compatible with the range; they must also be
    // compatible with each other.
    let pf = w.fields(vmg.prev.expect("merge left implies prev"));
    are_anon_vmas_compatible(&pf, &nf)
}

/// `dup_anon_vma`: the expanding VMA takes the shrinking one's `anon_vma`
/// (and chain) if it has none, to cover the anonymous pages it imports.
fn dup_anon_vma(w: &Writer<'_>, dst: VmaIdx, src: VmaIdx) {
    let s = w.fields(src);
    let vma = w.pool().get(dst);
    let mut d = vma.fields();
    if s.anon_vma != 0 && d.anon_vma == 0 {
        d.anon_vma = s.anon_vma;
        d.anon_vma_chain = s.anon_vma_chain;
        vma.set_fields(&d);
    }
}

/// `commit_merge`: give `target` the range `[start, end)` at `pgoff`, move
/// `adjust`'s start by `adj_start`, then detach and free `remove`.
fn commit_merge(
    w: &mut Writer<'_>,
    target: VmaIdx,
    (start, end, pgoff): (u64, u64, u64),
    adjust: Option<(VmaIdx, i64)>,
    remove: &[VmaIdx],
) {
    let removed: Vec<(VmaIdx, u64)> = remove.iter().map(|&r| (r, w.fields(r).vm_start)).collect();
    w.vma_set_range(target, start, end, pgoff);
    if let Some((a, adj)) = adjust {
        let f = w.fields(a);
        let s = f.vm_start.wrapping_add_signed(adj);
        let p = f.vm_pgoff.wrapping_add_signed(adj >> PAGE_SHIFT);
        w.vma_set_range(a, s, f.vm_end, p);
    }
    // vma_complete: the removed VMAs left the tree with the store above;
    // now detach and free them.
    for (r, old_start) in removed {
        w.erase_if(old_start, r);
        w.remove_vma(r);
        w.w.state.map_count -= 1;
    }
}

/// `vma_merge_existing_range`: `[vmg.start, vmg.end)` of `vmg.middle` is
/// changing to `vmg`'s attributes; merge it into `prev` and/or `next` if
/// they match. Returns the VMA that now holds the range.
pub(crate) fn vma_merge_existing_range(w: &mut Writer<'_>, vmg: &mut Vmg) -> Option<VmaIdx> {
    let middle = vmg.middle.expect("modifying an existing VMA");
    let mf = w.fields(middle);
    let (start, end) = (vmg.start, vmg.end);
    let left_side = start == mf.vm_start;
    let right_side = end == mf.vm_end;
    if !left_side && !right_side {
        return None;
    }
    let merge_left = left_side && can_vma_merge_left(w, vmg);
    let mut merge_right = false;
    if right_side {
        vmg.next = w.vma_next(mf.vm_end).map(|e| e.idx);
        merge_right = can_vma_merge_right(w, vmg, merge_left);
    }
    if !merge_left && !merge_right {
        return None;
    }
    let merge_both = merge_left && merge_right;
    // Spanning the whole VMA, a merge removes it.
    let remove_middle = left_side && right_side;
    // No matter what happens, middle is adjusted.
    w.vma_start_write(middle);
    let prev = vmg.prev;
    let next = vmg.next;
    if merge_left {
        w.vma_start_write(prev.expect("merge left"));
    }
    if merge_right {
        w.vma_start_write(next.expect("merge right"));
    }
    if merge_both {
        // prev extends over middle and next; both are removed.
        let (p, n) = (prev.unwrap(), next.unwrap());
        let (pf, nf) = (w.fields(p), w.fields(n));
        dup_anon_vma(w, p, if nf.anon_vma != 0 { n } else { middle });
        commit_merge(
            w,
            p,
            (pf.vm_start, nf.vm_end, pf.vm_pgoff),
            None,
            &[middle, n],
        );
        Some(p)
    } else if merge_left {
        // prev extends; middle shrinks from the left or is removed.
        let p = prev.unwrap();
        let pf = w.fields(p);
        dup_anon_vma(w, p, middle);
        if remove_middle {
            commit_merge(w, p, (pf.vm_start, end, pf.vm_pgoff), None, &[middle]);
        } else {
            let adj = (end - mf.vm_start) as i64;
            commit_merge(
                w,
                p,
                (pf.vm_start, end, pf.vm_pgoff),
                Some((middle, adj)),
                &[],
            );
        }
        Some(p)
    } else {
        // next extends down; middle shrinks from the right or is removed.
        let n = next.unwrap();
        let nf = w.fields(n);
        dup_anon_vma(w, n, middle);
        let pglen = (end - start) >> PAGE_SHIFT;
        if remove_middle {
            commit_merge(
                w,
                n,
                (start, nf.vm_end, nf.vm_pgoff - pglen),
                None,
                &[middle],
            );
        } else {
            // The only case where the target is not the VMA whose range
            // is set: middle shrinks to [vm_start, start), next moves down.
            let adj = -((mf.vm_end - start) as i64);
            commit_merge(
                w,
                middle,
                (mf.vm_start, start, mf.vm_pgoff),
                Some((n, adj)),
                &[],
            );
        }
        Some(n)
    }
}

/// `vma_merge_new_range`: a new range `[vmg.start, vmg.end)` in a gap
/// between `vmg.prev` and `vmg.next`; expand a neighbour over it if one
/// matches. Returns the expanded VMA.
pub(crate) fn vma_merge_new_range(w: &mut Writer<'_>, vmg: &mut Vmg) -> Option<VmaIdx> {
    if vmg.prev.is_none() && vmg.next.is_none() {
        return None;
    }
    let can_merge_left = can_vma_merge_left(w, vmg);
    let can_merge_right = !vmg.just_expand && can_vma_merge_right(w, vmg, can_merge_left);
    let mut target = None;
    if can_merge_right {
        let n = vmg.next.unwrap();
        vmg.end = w.fields(n).vm_end;
        target = Some(n);
    }
    if can_merge_left {
        let p = vmg.prev.unwrap();
        let pf = w.fields(p);
        vmg.start = pf.vm_start;
        vmg.pgoff = pf.vm_pgoff;
        target = Some(p);
    }
    let t = target?;
    vma_expand(w, t, vmg);
    Some(t)
}

/// `vma_expand`: grow `target` to `[vmg.start, vmg.end)`, removing
/// `vmg.next` if the new range covers it.
pub(crate) fn vma_expand(w: &mut Writer<'_>, target: VmaIdx, vmg: &Vmg) {
    w.vma_start_write(target);
    let mut remove = Vec::new();
    if let Some(n) = vmg.next
        && n != target
        && vmg.end == w.fields(n).vm_end
    {
        w.vma_start_write(n);
        dup_anon_vma(w, target, n);
        remove.push(n);
    }
    commit_merge(w, target, (vmg.start, vmg.end, vmg.pgoff), None, &remove);
}

/// `vma_modify`: make `[vmg.start, vmg.end)` of `vmg.middle` a VMA of its
/// own with `vmg`'s attributes, merging if it can, splitting if it must.
/// Returns the VMA now covering the range; the caller then sets the new
/// attributes on it. A failed split leaves the earlier one done.
pub(crate) fn vma_modify(w: &mut Writer<'_>, vmg: &mut Vmg) -> Result<VmaIdx, MmError> {
    if let Some(merged) = vma_merge_existing_range(w, vmg) {
        return Ok(merged);
    }
    let middle = vmg.middle.expect("modifying an existing VMA");
    if w.fields(middle).vm_start < vmg.start {
        split_vma(w, middle, vmg.start, true)?;
    }
    if w.fields(middle).vm_end > vmg.end {
        split_vma(w, middle, vmg.end, false)?;
    }
    Ok(middle)
}

/// The result of `vms_gather_munmap_vmas`: VMAs detached from the range,
/// still in the tree, and the neighbours around it.
pub(crate) struct MunmapGather {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) detached: Vec<(VmaIdx, u64)>,
    pub(crate) prev: Option<VmaIdx>,
    pub(crate) next: Option<VmaIdx>,
}

/// `vms_gather_munmap_vmas`: split the first and last VMA of `[start, end)`
/// so the range is whole VMAs, write-lock and detach each (they stay in
/// the tree until [`vms_complete_munmap_vmas`]). On failure nothing is
/// detached, but a first split already made stays.
pub(crate) fn vms_gather_munmap_vmas(
    w: &mut Writer<'_>,
    first: TreeEntry,
    start: u64,
    end: u64,
) -> Result<MunmapGather, MmError> {
    let max = w.mm.ctx.max_map_count;
    let mut vma = first.idx;
    let f = w.fields(vma);
    if start > f.vm_start {
        // munmap() may take the count just above the limit temporarily to
        // free resources, but must not return with it above the limit.
        if end < f.vm_end && w.w.state.map_count >= max {
            return Err(MmError::MapCountExceeded { limit: max });
        }
        __split_vma(w, vma, start, true)?;
    }
    let prev = w.vma_prev(w.fields(vma).vm_start).map(|e| e.idx);
    let mut detached = Vec::new();
    loop {
        let f = w.fields(vma);
        if f.vm_end > end
            && let Err(e) = __split_vma(w, vma, end, false)
        {
            // reattach_vmas
            for (d, _) in &detached {
                w.pool().get(*d).vma_mark_attached();
            }
            return Err(e);
        }
        let f = w.fields(vma);
        w.vma_start_write(vma);
        w.pool().get(vma).vma_mark_detached();
        detached.push((vma, f.vm_start));
        match w.vma_next(f.vm_end) {
            Some(n) if n.start < end => vma = n.idx,
            _ => break,
        }
    }
    let next = w.vma_next(end).map(|e| e.idx);
    Ok(MunmapGather {
        start,
        end,
        detached,
        prev,
        next,
    })
}

/// `vma_iter_clear` + `vms_complete_munmap_vmas`: take the gathered VMAs
/// out of the tree (unless a new VMA already overwrote their entries),
/// zap their pages, fix the map count and free them.
pub(crate) fn vms_complete_munmap_vmas(w: &mut Writer<'_>, g: MunmapGather) {
    for &(idx, start) in &g.detached {
        w.erase_if(start, idx);
    }
    crate::mm::memory::zap_page_range(w.mm, g.start, g.end);
    // unmap_region: then the page tables no VMA uses any more.
    crate::mm::memory::free_pgtables(w.mm, g.start, g.end, &w.guard);
    w.w.state.map_count -= g.detached.len();
    for (idx, _) in g.detached {
        w.pool().vm_area_free_with(idx, &w.guard);
    }
}

/// The checks `do_vmi_munmap` makes of its `(start, len)` before it looks
/// at a VMA, in the kernel's order: a misaligned start, a range past
/// `TASK_SIZE` or an empty one is EINVAL. Returns the page-aligned end.
/// munmap and mremap's shrink (`shrink_vma`) both pass through them, so a
/// hostile `old_len` fails here instead of wrapping.
pub(crate) fn munmap_range(start: u64, len: u64) -> Result<u64, MmError> {
    if !page_aligned(start) {
        return Err(MmError::inval(
            "addr",
            format!("{start:#x} is not page aligned"),
        ));
    }
    if start > TASK_SIZE || len > TASK_SIZE - start {
        return Err(MmError::inval(
            "length",
            format!("range {start:#x}+{len:#x} goes beyond user space ({TASK_SIZE:#x})"),
        ));
    }
    match page_align(len) {
        Some(0) | None => Err(MmError::inval("length", "must be greater than 0")),
        Some(len) => Ok(start + len),
    }
}

/// `do_vmi_munmap`: unmap `[start, start + len)`. `len` is rounded up to
/// pages; an empty range is fine (0), a misaligned or out-of-range one is
/// EINVAL.
pub(crate) fn do_vmi_munmap(w: &mut Writer<'_>, start: u64, end: u64) -> Result<(), MmError> {
    let Some(first) = w.vma_find(start, end) else {
        return Ok(());
    };
    let g = vms_gather_munmap_vmas(w, first, start, end)?;
    vms_complete_munmap_vmas(w, g);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Slot-level rules, checked against what mm/vma.c does (the kernel's
    //! own tools/testing/vma/vma.c asserts the same shapes).
    use crate::mm::mm_struct::{MmContext, MmStruct};
    use crate::mm::mmap::{MmapArgs, do_mmap, do_munmap, map::*, prot::*};
    use crate::mm::mprotect::do_mprotect;
    use crate::mm::rcu::rcu_read_lock;
    use crate::mm::slab::{CachePolicy, VmaCache, VmaIdx};
    use crate::mm::{DEFAULT_MAX_MAP_COUNT, PAGE_SIZE};
    use std::sync::Arc;

    const A: u64 = 0x1000_0000;

    fn mm() -> MmStruct {
        let pool = VmaCache::new(CachePolicy::Typesafe, 1024);
        let ctx = Arc::new(MmContext::new(
            pool,
            crate::mm::mm_types::FaultLockMode::PerVma,
            DEFAULT_MAX_MAP_COUNT,
        ));
        MmStruct::new(1, ctx, None)
    }

    fn map_fixed(mm: &MmStruct, addr: u64, pages: u64, prot: u32) {
        do_mmap(
            mm,
            MmapArgs {
                addr,
                len: pages * PAGE_SIZE,
                prot,
                flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                ..Default::default()
            },
        )
        .unwrap();
    }

    fn allocs_of(mm: &MmStruct) -> u64 {
        let s = mm.ctx.pool.stats();
        s.alloc_fresh + s.alloc_reused
    }

    /// (start, end, slot) of every VMA.
    fn layout(mm: &MmStruct) -> Vec<(u64, u64, VmaIdx)> {
        let g = rcu_read_lock();
        mm.mm_mt
            .entries(&g)
            .iter()
            .map(|e| (e.start, e.end, e.idx))
            .collect()
    }

    #[test]
    fn munmap_middle_keeps_the_original_slot_for_the_removed_part() {
        // vms_gather_munmap_vmas: __split_vma(start, new_below = 1) gives
        // the prefix a new slot, __split_vma(end, 0) the suffix another;
        // the original slot is the middle, which is freed.
        let mm = mm();
        map_fixed(&mm, A, 3, PROT_READ | PROT_WRITE);
        let orig = layout(&mm)[0].2;
        do_munmap(&mm, A + PAGE_SIZE, PAGE_SIZE).unwrap();
        let l = layout(&mm);
        assert_eq!(l.len(), 2);
        assert_ne!(l[0].2, orig, "the kept prefix is a new slot");
        assert_ne!(l[1].2, orig, "the kept suffix is a new slot");
        assert!(mm.ctx.pool.get(orig).is_detached(), "the middle was freed");
    }

    #[test]
    fn mprotect_middle_keeps_the_original_slot_for_the_modified_part() {
        // vma_modify: split_vma(start, 1) then split_vma(end, 0); the
        // original VMA is the one whose flags change.
        let mm = mm();
        map_fixed(&mm, A, 3, PROT_READ | PROT_WRITE);
        let orig = layout(&mm)[0].2;
        do_mprotect(&mm, A + PAGE_SIZE, PAGE_SIZE, PROT_READ).unwrap();
        let l = layout(&mm);
        assert_eq!(l.len(), 3);
        assert_eq!(l[1], (A + PAGE_SIZE, A + 2 * PAGE_SIZE, orig));
    }

    #[test]
    fn mprotect_suffix_merging_into_next_expands_next_in_place() {
        // vma_merge_existing_range, merge_right with middle partially
        // spanned: middle shrinks, next's start moves down; no new slot.
        let mm = mm();
        map_fixed(&mm, A, 2, PROT_READ | PROT_WRITE);
        map_fixed(&mm, A + 2 * PAGE_SIZE, 2, PROT_READ);
        let before = layout(&mm);
        let allocs = allocs_of(&mm);
        do_mprotect(&mm, A + PAGE_SIZE, PAGE_SIZE, PROT_READ).unwrap();
        let l = layout(&mm);
        assert_eq!(
            l,
            vec![
                (A, A + PAGE_SIZE, before[0].2),
                (A + PAGE_SIZE, A + 4 * PAGE_SIZE, before[1].2),
            ]
        );
        assert_eq!(allocs_of(&mm), allocs, "no slot allocated");
    }

    #[test]
    fn only_the_vmas_that_change_are_write_locked() {
        // vma_modify / vma_merge_new_range write-lock middle, and prev or
        // next only when merging with them: a fault next door keeps its
        // per-VMA lock. vm_lock_seq records the last write-lock cycle.
        let mm = mm();
        map_fixed(&mm, A, 2, PROT_READ);
        map_fixed(&mm, A + 2 * PAGE_SIZE, 2, PROT_READ | PROT_WRITE);
        map_fixed(&mm, A + 8 * PAGE_SIZE, 2, PROT_READ);
        let l = layout(&mm);
        let seq = |i: usize| mm.ctx.pool.get(l[i].2).vm_lock_seq();
        let (s0, s2) = (seq(0), seq(2));
        // mprotect inside the middle VMA, no merge possible.
        do_mprotect(&mm, A + 3 * PAGE_SIZE, PAGE_SIZE, PROT_NONE).unwrap();
        assert_eq!((seq(0), seq(2)), (s0, s2), "neighbours untouched");
        // A new mapping that merges with nothing locks nothing old.
        map_fixed(&mm, A + 5 * PAGE_SIZE, 1, PROT_EXEC);
        assert_eq!((seq(0), seq(2)), (s0, s2));
        // One that merges into next (expands it down) locks next only.
        map_fixed(&mm, A + 7 * PAGE_SIZE, 1, PROT_READ);
        assert_ne!(seq(2), s2, "next was expanded in place");
        assert_eq!(seq(0), s0);
    }

    #[test]
    fn mmap_next_to_a_match_expands_it_instead_of_allocating() {
        // vma_merge_new_range: merge right only -> next expands down.
        let mm = mm();
        map_fixed(&mm, A + 2 * PAGE_SIZE, 2, PROT_READ);
        let next = layout(&mm)[0].2;
        let allocs = allocs_of(&mm);
        map_fixed(&mm, A, 2, PROT_READ);
        assert_eq!(layout(&mm), vec![(A, A + 4 * PAGE_SIZE, next)]);
        assert_eq!(allocs_of(&mm), allocs);
    }

    #[test]
    fn mmap_between_two_matches_expands_prev_and_frees_next() {
        let mm = mm();
        map_fixed(&mm, A, 1, PROT_READ);
        map_fixed(&mm, A + 2 * PAGE_SIZE, 1, PROT_READ);
        let l = layout(&mm);
        map_fixed(&mm, A + PAGE_SIZE, 1, PROT_READ);
        assert_eq!(layout(&mm), vec![(A, A + 3 * PAGE_SIZE, l[0].2)]);
        assert!(mm.ctx.pool.get(l[1].2).is_detached());
        assert_eq!(mm.mmap_read_lock().map_count, 1);
    }
}
