//! The VMA tree: the maple tree's role, on crossbeam's epoch-based skip
//! list.
//!
//! Keyed by `vm_start`; each entry records the range and the pool slot as
//! the writer stored them, plus the slot's generation at that time (debug
//! only: it lets the fault path tell a reused slot from the VMA it meant).
//!
//! Readers (faults) walk it under RCU with no lock and no allocation:
//! `upper_bound` follows atomic links and touches no reference count.
//! Writers hold `mmap_lock` for write, so there is one writer per tree;
//! a multi-step update (remove the old VMA, insert the two halves) is *not*
//! atomic for readers. That is fine for the same reason it is fine for the
//! maple tree under the per-VMA lock: every VMA a writer touches is
//! write-locked first, so a reader that finds a stale entry, a gap or a
//! half-updated layout either fails `vma_start_read` or fails the range
//! re-check and falls back to `mmap_lock`, which waits for the writer. Only
//! the `mmap_lock` path may report `SEGV_MAPERR`.
//!
//! It is *not* fine for a reader that reports gaps: the maple tree stores a
//! range in one step, so an RCU walk never sees a hole inside a range that
//! stays mapped, but here replacing an entry unlinks the old node before
//! linking the new one (crossbeam's `insert` over an existing key) and a
//! split stores its halves one after the other. The `/proc/PID/maps`
//! reader under per-VMA locks therefore does not trust a gap or an end
//! seen by a walk a writer overlapped (`mmap_lock::tree_may_have_moved`,
//! counted as `unstable_tree`).

use crate::mm::{rcu::RcuReadGuard, slab::VmaIdx};
use crossbeam_skiplist::base::SkipList;
use crossbeam_utils::CachePadded;
use std::ops::Bound;

/// What the tree stores for a VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeEntry {
    /// `vm_start` when stored.
    pub start: u64,
    /// `vm_end` when stored.
    pub end: u64,
    /// The pool slot.
    pub idx: VmaIdx,
    /// The slot's generation when stored (debug only).
    pub generation: u64,
}

/// An ordered, RCU-walkable map from `vm_start` to [`TreeEntry`].
///
/// The skip list's head tower is written whenever the first node at some
/// level changes (a writer mapping below everything else does it at every
/// mmap and munmap), so the list sits on cache lines of its own
/// ([`CachePadded`]), apart from the read-mostly fields of the `MmStruct`
/// around it that every fault reads.
pub struct VmaTree {
    list: CachePadded<SkipList<u64, TreeEntry>>,
}

impl Default for VmaTree {
    fn default() -> Self {
        Self::new()
    }
}

impl VmaTree {
    /// An empty tree on the default epoch collector, the one
    /// [`crate::mm::rcu::rcu_read_lock`] pins.
    pub fn new() -> Self {
        Self {
            list: CachePadded::new(SkipList::new(crossbeam_epoch::default_collector().clone())),
        }
    }

    /// `mas_walk`: the entry whose range contains `addr`, if any. Lock-free
    /// and allocation-free; the answer may be stale (see the module doc).
    #[inline]
    pub fn mas_walk(&self, addr: u64, guard: &RcuReadGuard) -> Option<TreeEntry> {
        let e = self.list.upper_bound(Bound::Included(&addr), guard)?;
        let v = *e.value();
        (addr < v.end).then_some(v)
    }

    /// Entries overlapping `[start, end)`, in address order. Writer side.
    pub fn overlapping(&self, start: u64, end: u64, guard: &RcuReadGuard) -> Vec<TreeEntry> {
        let mut out = Vec::new();
        if let Some(e) = self.list.upper_bound(Bound::Excluded(&start), guard)
            && e.value().end > start
        {
            out.push(*e.value());
        }
        for e in self
            .list
            .range((Bound::Included(&start), Bound::Excluded(&end)), guard)
        {
            out.push(*e.value());
        }
        out
    }

    /// The last entry starting before `addr` (the `vma_prev` of a range).
    pub fn prev(&self, addr: u64, guard: &RcuReadGuard) -> Option<TreeEntry> {
        self.list
            .upper_bound(Bound::Excluded(&addr), guard)
            .map(|e| *e.value())
    }

    /// The first entry starting at or after `addr` (`vma_next`).
    pub fn next(&self, addr: u64, guard: &RcuReadGuard) -> Option<TreeEntry> {
        self.list
            .lower_bound(Bound::Included(&addr), guard)
            .map(|e| *e.value())
    }

    /// Every entry in address order. Writer side or for rendering.
    pub fn entries(&self, guard: &RcuReadGuard) -> Vec<TreeEntry> {
        self.list.iter(guard).map(|e| *e.value()).collect()
    }

    /// Store `entry` at its start, replacing any entry with the same start.
    pub fn store(&self, entry: TreeEntry, guard: &RcuReadGuard) {
        self.list.insert(entry.start, entry, guard).release(guard);
    }

    /// Remove the entry starting at `start`.
    pub fn erase(&self, start: u64, guard: &RcuReadGuard) {
        if let Some(e) = self.list.remove(&start, guard) {
            e.release(guard);
        }
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::rcu::rcu_read_lock;

    fn e(start: u64, end: u64, i: u32) -> TreeEntry {
        TreeEntry {
            start,
            end,
            idx: VmaIdx(i),
            generation: 1,
        }
    }

    #[test]
    fn walk_finds_containing_range_only() {
        let t = VmaTree::new();
        let g = rcu_read_lock();
        t.store(e(0x1000, 0x3000, 1), &g);
        t.store(e(0x5000, 0x6000, 2), &g);
        assert_eq!(t.mas_walk(0x1000, &g).unwrap().idx, VmaIdx(1));
        assert_eq!(t.mas_walk(0x2fff, &g).unwrap().idx, VmaIdx(1));
        assert_eq!(t.mas_walk(0x3000, &g), None);
        assert_eq!(t.mas_walk(0x0fff, &g), None);
        assert_eq!(t.mas_walk(0x5800, &g).unwrap().idx, VmaIdx(2));
        let o: Vec<_> = t
            .overlapping(0x2000, 0x5001, &g)
            .iter()
            .map(|x| x.idx.0)
            .collect();
        assert_eq!(o, vec![1, 2]);
        assert!(t.overlapping(0x3000, 0x5000, &g).is_empty());
        t.erase(0x1000, &g);
        assert_eq!(t.len(), 1);
        assert_eq!(t.prev(0x5000, &g), None);
        assert_eq!(t.next(0x1000, &g).unwrap().idx, VmaIdx(2));
    }
}
