//! `mm/mmap_lock.c` for readers that walk many VMAs: `lock_next_vma`.
//!
//! Since 6.17 `/proc/PID/maps` (and `PROCMAP_QUERY`) no longer hold
//! `mmap_lock` for the walk. They iterate the VMA tree under RCU and take
//! each VMA's read lock in turn with [`lock_next_vma`], which falls back to
//! `mmap_lock` only for the one step it could not do locklessly
//! ([`lock_next_vma_under_mmap_lock`]): the lock is taken for read, the
//! next VMA found and read-locked, the lock dropped again. A reader makes
//! progress even against a stream of writers, and a writer is held up only
//! for that one lookup.
//!
//! The iterator ([`VmaIterator`]) plays `struct vma_iterator`: a position
//! in the tree; `vma_next` returns the first VMA ending after it and moves
//! past it, `vma_iter_set` repositions it. On this tree (keyed by
//! `vm_start`) "first ending after `index`" is the entry containing
//! `index`, else the first starting after it, as `find_vma` answers.
//!
//! `lock_vma_under_rcu` (one address, the fault path) lives with the fault
//! code in `fault.rs`; both use [`Vma::vma_start_read_checked`].

use crate::mm::mm_struct::MmStruct;
use crate::mm::mm_types::{MmLockSeq, ReadChecks, StartReadError, Vma};
use crate::mm::race::InjectPoint;
use crate::mm::rcu::{RcuReadGuard, rcu_read_lock};
use crate::mm::sync::Ordering;
use crate::mm::vma_tree::TreeEntry;
use crate::mm::vmstat::MapsEvent;

/// `struct vma_iterator`: a position in an mm's VMA tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmaIterator {
    index: u64,
}

impl VmaIterator {
    /// `vma_iter_init(vmi, mm, addr)`.
    pub(crate) fn new(addr: u64) -> Self {
        Self { index: addr }
    }

    /// `vma_iter_set(vmi, addr)`.
    pub(crate) fn set(&mut self, addr: u64) {
        self.index = addr;
    }

    /// `vma_next(vmi)`: the first VMA ending after the position; the
    /// position moves to its end. The answer is the tree's as of the walk:
    /// under RCU it may be stale, under `mmap_lock` it is the truth.
    pub(crate) fn vma_next(&mut self, mm: &MmStruct, guard: &RcuReadGuard) -> Option<TreeEntry> {
        let t = &mm.mm_mt;
        let e = t
            .mas_walk(self.index, guard)
            .or_else(|| t.next(self.index, guard))?;
        self.index = e.end;
        Some(e)
    }
}

/// `mmap_lock_speculate_try_begin`: `(true, seq)` if no writer holds
/// `mmap_lock` now (`mm_lock_seq` even), `(false, seq)` if one does, in
/// which case the caller must treat what it reads as changed.
pub(crate) fn mmap_lock_speculate_try_begin(seq: &MmLockSeq) -> (bool, u64) {
    // Acquire (raw_seqcount_try_begin's smp_rmb): the tree walk that
    // follows sees at least what the writer published before this value.
    let s = seq.mm_lock_seq.load(Ordering::Acquire);
    (s.is_multiple_of(2), s)
}

/// `mmap_lock_speculate_retry`: has a writer taken `mmap_lock` since
/// [`mmap_lock_speculate_try_begin`] returned `seq`?
pub(crate) fn mmap_lock_speculate_retry(mm_seq: &MmLockSeq, seq: u64) -> bool {
    // read_seqcount_retry: the reads made since the begin (the walk, the
    // VMA's range) must not move after the re-read of the sequence, hence
    // the Acquire fence before the Relaxed load.
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    mm_seq.mm_lock_seq.load(Ordering::Relaxed) != seq
}

/// What [`lock_next_vma`] returns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NextVma<'a> {
    /// The next VMA, read-locked: the caller ends the read
    /// (`vma_end_read`) when done with it.
    Locked(&'a Vma),
    /// No VMA ends after the position (`NULL`).
    End,
    /// `-EAGAIN` from [`lock_next_vma_under_mmap_lock`]: even under
    /// `mmap_lock` the VMA could not be read-locked (`vm_refcnt`
    /// overflow). The caller reads on under `mmap_lock`
    /// (`fallback_to_mmap_lock` in fs/proc/task_mmu.c).
    Again,
}

/// `lock_next_vma_under_mmap_lock`: take `mmap_lock` for read, find the
/// first VMA ending after `from_addr` again and read-lock it
/// (`vma_start_read_locked`), drop `mmap_lock`.
pub(crate) fn lock_next_vma_under_mmap_lock(mm: &MmStruct, from_addr: u64) -> NextVma<'_> {
    let ctx = &*mm.ctx;
    ctx.maps_events.inc(MapsEvent::MmapLockFallback as usize);
    let _state = mm.mmap_read_lock();
    let guard = rcu_read_lock();
    // "Lookup the vma at the last position again under mmap_read_lock".
    let mut vmi = VmaIterator::new(from_addr);
    let Some(e) = vmi.vma_next(mm, &guard) else {
        return NextVma::End;
    };
    let vma = ctx.pool.get(e.idx);
    // "Very unlikely vma->vm_refcnt overflow case".
    if !vma.vma_start_read_locked() {
        return NextVma::Again;
    }
    if let Some(r) = mm.race_hooks() {
        r.hit(InjectPoint::MapsLockedUnderMmapLock, vma);
    }
    NextVma::Locked(vma)
}

/// `lock_next_vma(mm, vmi, from_addr)`: read-lock the first VMA ending
/// after `from_addr` (the end of the last VMA the reader printed), under
/// RCU (`guard`), falling back to `mmap_lock` as the kernel does:
///
/// * the walk finds nothing: the end;
/// * the VMA was detached under us (`-EAGAIN`): it was replaced, walk
///   again from `from_addr` (no cap: "the vma we find will have to be
///   constantly knocked out from under us");
/// * it is write-locked or no longer this mm's: [`lock_next_vma_under_mmap_lock`];
/// * locked, but it ends at or before `from_addr` (it shrank, or was
///   reused for a range behind us): unlock, fall back;
/// * locked, starts after `from_addr` and the address space changed since
///   the walk began (or a writer held `mmap_lock` then): walk again from
///   `from_addr`; if that finds another VMA, what we locked may have shrunk
///   with a new VMA installed in front of it, and printing it would show a
///   gap that never existed: unlock, fall back.
///
/// After a fallback the iterator is reset to the end of the VMA returned
/// (or to `from_addr`). `guard` is unpinned while `mmap_lock` is waited
/// for, as the kernel leaves its RCU read section around
/// `mmap_read_lock_killable`.
pub(crate) fn lock_next_vma<'a>(
    mm: &'a MmStruct,
    vmi: &mut VmaIterator,
    from_addr: u64,
    guard: &mut RcuReadGuard,
) -> NextVma<'a> {
    let ctx = &*mm.ctx;
    let race = mm.race_hooks();
    let checks = race.map_or(ReadChecks::ALL, |r| r.read_checks());
    loop {
        // Start mmap_lock speculation in case we need to verify the vma later.
        let (mmap_unlocked, mm_wr_seq) = mmap_lock_speculate_try_begin(&mm.seq);
        let Some(e) = vmi.vma_next(mm, guard) else {
            // vmasim only: "no VMA after from_addr" seen while a writer
            // was changing the tree may be a transient hole (see
            // `tree_may_have_moved`); ask again under mmap_lock.
            if tree_may_have_moved(&mm.seq, mmap_unlocked, mm_wr_seq) {
                ctx.maps_events.inc(MapsEvent::UnstableTree as usize);
                return fallback(mm, vmi, from_addr, guard);
            }
            return NextVma::End;
        };
        let vma = ctx.pool.get(e.idx);
        if let Some(r) = race {
            r.hit(InjectPoint::MapsAfterVmaNext, vma);
        }
        match vma.vma_start_read_checked(&mm.seq, checks, || {}) {
            Ok(()) => {}
            Err(StartReadError::Detached) => {
                // "Retry immediately if the vma gets detached from under
                // us": reset to search from the last address.
                ctx.maps_events.inc(MapsEvent::DetachedRetry as usize);
                vmi.set(from_addr);
                continue;
            }
            Err(StartReadError::WriteLocked(_) | StartReadError::WrongMm) => {
                // vma_start_read returned NULL: write-locked, or (the
                // err_unstable path) reused by another mm.
                return fallback(mm, vmi, from_addr, guard);
            }
        }
        // The VMA is read-locked: its range is stable now.
        let (start, end) = (vma.vm_start(), vma.vm_end());
        // Verify the vma is not behind the last search position.
        if from_addr >= end {
            vma.vma_end_read();
            return fallback(mm, vmi, from_addr, guard);
        }
        // "vma can be ahead of the last search position but we need to
        // verify it was not shrunk after we found it and another vma has
        // not been installed ahead of it. Otherwise we might observe a gap
        // that should not be there." Only if the address space might have
        // changed since the lookup.
        let skip = race.is_some_and(|r| r.bugs().skip_maps_gap_check);
        if from_addr < start
            && !skip
            && (!mmap_unlocked || mmap_lock_speculate_retry(&mm.seq, mm_wr_seq))
        {
            ctx.maps_events.inc(MapsEvent::GapRecheck as usize);
            let (unlocked2, seq2) = mmap_lock_speculate_try_begin(&mm.seq);
            vmi.set(from_addr);
            if vmi.vma_next(mm, guard).map(|x| x.idx) != Some(e.idx) {
                if let Some(r) = race {
                    r.hit(InjectPoint::MapsGapRecheckFailed, vma);
                }
                vma.vma_end_read();
                return fallback(mm, vmi, from_addr, guard);
            }
            // vmasim only: the re-walk confirms the gap only if no writer
            // changed the tree while it ran (a maple-tree walk always sees
            // a hole-free tree; this one may not, see tree_may_have_moved).
            if tree_may_have_moved(&mm.seq, unlocked2, seq2) {
                ctx.maps_events.inc(MapsEvent::UnstableTree as usize);
                vma.vma_end_read();
                return fallback(mm, vmi, from_addr, guard);
            }
        }
        ctx.maps_events.inc(MapsEvent::VmaLocked as usize);
        return NextVma::Locked(vma);
    }
}

/// Might a writer have changed the tree during a walk begun with
/// `mmap_lock_speculate_try_begin` = `(unlocked, seq)`?
///
/// A vmasim-only question. The maple tree replaces a range in one store,
/// so an RCU walk always sees every address of a range that stays mapped
/// covered by some VMA (write-locked, maybe): a gap it sees is real, and
/// `lock_next_vma` trusts a re-walk and a `NULL`. This tree (a skip list
/// keyed by `vm_start`, see `vma_tree`) replaces an entry by unlinking the
/// old node before linking the new one, and a split stores its two halves
/// one after the other, so a walk racing with a writer can see a transient
/// hole. The fault path is unaffected (a hole makes it fall back, as the
/// write-locked VMA would), but a maps reader would print the hole and
/// break guarantee 2. So a gap or an end seen while a writer ran is not
/// trusted: the reader asks again under `mmap_lock` (counted as
/// `unstable_tree`). A walk no writer overlapped is trusted as upstream,
/// so with no writer running the counts are the kernel's.
fn tree_may_have_moved(seq: &MmLockSeq, unlocked: bool, begin: u64) -> bool {
    !unlocked || mmap_lock_speculate_retry(seq, begin)
}

/// The `fallback:` label of `lock_next_vma`.
fn fallback<'a>(
    mm: &'a MmStruct,
    vmi: &mut VmaIterator,
    from_addr: u64,
    guard: &mut RcuReadGuard,
) -> NextVma<'a> {
    // rcu_read_unlock(); mmap_read_lock_killable() may sleep; rcu_read_lock().
    let r = guard.repin_after(|| lock_next_vma_under_mmap_lock(mm, from_addr));
    // "Reinitialize the iterator after re-entering rcu read section".
    vmi.set(match r {
        NextVma::Locked(v) => v.vm_end(),
        NextVma::End | NextVma::Again => from_addr,
    });
    r
}
