//! The per-VMA lock protocol (`mm/mmap_lock.c`, `include/linux/mmap_lock.h`).
//!
//! `vm_refcnt` is the lock: 0 detached, 1 attached, +1 per reader,
//! `VMA_LOCK_OFFSET` added while a writer excludes readers; `vm_lock_seq`
//! equal to the mm's odd `mm_lock_seq` marks the VMA write-locked for the
//! current `mmap_lock` write cycle. This file holds every step of it:
//!
//! * on [`Vma`]: `vma_start_read` (from an RCU walk, the review's window
//!   between the early `vm_lock_seq` check and the increment),
//!   `vma_start_read_locked` (under `mmap_lock`), `vma_end_read`,
//!   `vma_start_write`, `vma_mark_attached`, `vma_mark_detached`;
//! * [`lock_vma_under_rcu`]: one address, the fault path;
//! * [`lock_next_vma`]: the next VMA of a walk, for `/proc/PID/maps`.
//!
//! The `Vma` methods build under `--cfg vmasim_loom` too (the loom models
//! drive them); the walkers need the whole engine and do not.
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

#[cfg(not(vmasim_loom))]
use crate::mm::{
    mm_struct::MmStruct,
    mm_types::ReuseCheck,
    rcu::{RcuReadGuard, rcu_read_lock},
    vma_tree::TreeEntry,
    vmstat::{MapsEvent, VmEvent, VmaLockEvent},
};
use crate::mm::{
    mm_types::{
        LockedBy, MmLockSeq, ReadChecks, StartReadError, VMA_LOCK_OFFSET, VMA_REF_LIMIT, Vma,
    },
    race::{InjectPoint, RaceHooks},
    sync::{Ordering, spin_wait},
};

impl Vma {
    /// `vma_start_read`: take the VMA read lock from an RCU walk. `checks`
    /// are [`ReadChecks::ALL`] but in a race-lab scenario that switched one
    /// off; `race`, if given, is consulted at
    /// [`InjectPoint::BetweenSeqCheckAndInc`] (the window of the review's
    /// race).
    #[inline]
    pub fn vma_start_read(
        &self,
        mm: &MmLockSeq,
        checks: ReadChecks,
        race: Option<&RaceHooks>,
    ) -> Result<(), StartReadError> {
        // Early lockless check. Relaxed on both: its answer is only a
        // shortcut; the check we rely on is the one after the increment.
        if self.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq.load(Ordering::Relaxed) {
            return Err(StartReadError::WriteLocked(LockedBy::EarlySeq));
        }
        if let Some(r) = race {
            r.hit(InjectPoint::BetweenSeqCheckAndInc, self);
        }
        // __refcount_inc_not_zero_limited_acquire. Acquire on success: the
        // later vm_mm / vm_lock_seq / range reads must not move before the
        // increment, and they must see what the writer wrote before its
        // Release (vma_mark_attached, __vma_exit_locked).
        let mut old = self.vm_refcnt.load(Ordering::Relaxed);
        loop {
            if old == 0 {
                return Err(StartReadError::Detached);
            }
            if old >= VMA_REF_LIMIT {
                return Err(StartReadError::WriteLocked(LockedBy::RefLimit));
            }
            match self.vm_refcnt.compare_exchange_weak(
                old,
                old + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(cur) => old = cur,
            }
        }
        // The slot may have been freed and attached to another mm since the
        // walk found it. Upstream pins the other mm before dropping the
        // reference; ids here are never reused, so there is nothing to pin.
        if checks.vm_mm && self.vm_mm.load(Ordering::Relaxed) != mm.id {
            self.vma_end_read();
            return Err(StartReadError::WrongMm);
        }
        // Acquire on mm_lock_seq pairs with the Release bump in
        // mmap_write_unlock: if we see the unlocked sequence we also see
        // every change made under the write lock. A false "locked" answer
        // after sequence wrap-around is harmless (fallback); a false
        // "unlocked" one is impossible because vm_lock_seq only changes
        // under vm_refcnt exclusion.
        if checks.late_seq
            && self.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq.load(Ordering::Acquire)
        {
            self.vma_end_read();
            return Err(StartReadError::WriteLocked(LockedBy::LateSeq));
        }
        Ok(())
    }

    /// `vma_start_read_locked`: take the read lock while holding
    /// `mmap_lock` for read (`lock_next_vma_under_mmap_lock`). No writer
    /// can hold `VMA_LOCK_OFFSET` then (writers need `mmap_lock` for
    /// write), so the only failure is the `VMA_REF_LIMIT` overflow of
    /// `__refcount_inc_not_zero_limited_acquire`; `false` then.
    pub fn vma_start_read_locked(&self) -> bool {
        let mut old = self.vm_refcnt.load(Ordering::Relaxed);
        loop {
            if old == 0 || old >= VMA_REF_LIMIT {
                return false;
            }
            // Acquire: as in vma_start_read, the reads of the fields that
            // follow stay after the increment.
            match self.vm_refcnt.compare_exchange_weak(
                old,
                old + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(cur) => old = cur,
            }
        }
    }

    /// `vma_end_read`: drop a read reference.
    #[inline]
    pub fn vma_end_read(&self) {
        // Release: everything this reader did with the VMA happens before a
        // writer's Acquire load sees the count drop and goes on to modify it.
        self.vm_refcnt.fetch_sub(1, Ordering::Release);
    }

    /// `__vma_enter_locked`: add `VMA_LOCK_OFFSET` unless detached, then wait
    /// until only the writer (and the attach reference, unless detaching)
    /// remains. Returns false if the VMA was detached.
    fn vma_enter_locked(&self, detaching: bool) -> bool {
        let target = if detaching {
            VMA_LOCK_OFFSET
        } else {
            VMA_LOCK_OFFSET + 1
        };
        // refcount_add_not_zero. Relaxed on the RMW: the wait below does
        // the synchronising Acquire.
        let mut old = self.vm_refcnt.load(Ordering::Relaxed);
        loop {
            if old == 0 {
                return false;
            }
            match self.vm_refcnt.compare_exchange_weak(
                old,
                old + VMA_LOCK_OFFSET,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(cur) => old = cur,
            }
        }
        let backoff = crossbeam_utils::Backoff::new();
        // Acquire pairs with each reader's Release in vma_end_read: their
        // accesses are over before we change the VMA.
        while self.vm_refcnt.load(Ordering::Acquire) != target {
            spin_wait(&backoff);
        }
        true
    }

    /// `__vma_exit_locked`: remove `VMA_LOCK_OFFSET`; true if now detached.
    fn vma_exit_locked(&self) -> bool {
        // Release pairs with a later reader's Acquire increment: it sees the
        // vm_lock_seq written while we held readers out.
        self.vm_refcnt.fetch_sub(VMA_LOCK_OFFSET, Ordering::Release) == VMA_LOCK_OFFSET
    }

    /// `vma_start_write`: write-lock the VMA for the current `mmap_lock`
    /// write cycle (`mm_lock_seq`, odd while write-held), waiting for
    /// readers to drain. The caller holds `mmap_lock` for write.
    pub fn vma_start_write(&self, mm_lock_seq: u64) {
        // Relaxed: only this writer (under mmap_lock) ever stores this value.
        if self.vm_lock_seq.load(Ordering::Relaxed) == mm_lock_seq {
            return;
        }
        let locked = self.vma_enter_locked(false);
        // Relaxed: published to readers by the Release in vma_exit_locked
        // (or vma_mark_attached when not attached yet); the early lockless
        // check of a reader may see it late, which only costs a fallback.
        self.vm_lock_seq.store(mm_lock_seq, Ordering::Relaxed);
        if locked {
            let detached = self.vma_exit_locked();
            debug_assert!(!detached, "vma detached while write-locking");
        }
    }

    /// Is the VMA write-locked in the cycle `mm_lock_seq`?
    pub fn is_write_locked(&self, mm_lock_seq: u64) -> bool {
        self.vm_lock_seq.load(Ordering::Relaxed) == mm_lock_seq
    }

    /// `vma_mark_attached`: 0 -> 1 once the VMA is in the tree.
    pub fn vma_mark_attached(&self) {
        // Release (refcount_set_release): a reader whose increment sees 1
        // also sees every field written before the attach.
        let prev = self.vm_refcnt.swap(1, Ordering::Release);
        debug_assert_eq!(prev, 0, "attaching an attached vma");
    }

    /// `vma_mark_detached`: 1 -> 0, waiting out readers that raised the
    /// count transiently. The caller holds the VMA write-locked.
    pub fn vma_mark_detached(&self) {
        // AcqRel (refcount_dec_and_test): on reaching 0 we must see readers'
        // prior accesses before the slot goes back to the pool.
        if self.vm_refcnt.fetch_sub(1, Ordering::AcqRel) != 1 && self.vma_enter_locked(true) {
            let detached = self.vma_exit_locked();
            debug_assert!(detached, "vma still attached after detach");
        }
    }

    /// Is `vm_refcnt` 0?
    pub fn is_detached(&self) -> bool {
        self.vm_refcnt.load(Ordering::Acquire) == 0
    }
}

#[cfg(not(vmasim_loom))]
/// Upper bound on MISS retries before giving up on the lockless walk. A
/// writer publishes the tree before detaching, so a retry loop ends quickly;
/// the bound only keeps a pathological schedule from spinning.
const MAX_MISS_RETRIES: u32 = 1 << 16;

#[cfg(not(vmasim_loom))]
/// A VMA read-locked by `lock_vma_under_rcu`.
pub(crate) struct LockedVma<'a> {
    pub(crate) vma: &'a Vma,
    pub(crate) generation: u64,
}

#[cfg(not(vmasim_loom))]
fn note_reuse(mm: &MmStruct, entry_gen: u64, vma: &Vma, check: ReuseCheck) {
    if vma.generation() != entry_gen {
        mm.ctx.events.count_vm_event(VmEvent::ReuseDetected(check));
    }
}

#[cfg(not(vmasim_loom))]
/// `lock_vma_under_rcu`: find and read-lock the VMA covering `addr` without
/// `mmap_lock`. `None` means "fall back" (already counted as ABORT).
pub(crate) fn lock_vma_under_rcu<'a>(
    mm: &'a MmStruct,
    addr: u64,
    retries: &mut u32,
) -> Option<LockedVma<'a>> {
    let ctx = &*mm.ctx;
    let race = mm.race_hooks();
    let checks = race.map_or(ReadChecks::ALL, |r| r.read_checks());
    loop {
        let guard = rcu_read_lock();
        let Some(entry) = mm.mm_mt.mas_walk(addr, &guard) else {
            ctx.events
                .count_vm_vma_lock_event(VmaLockEvent::VmaLockAbort);
            return None;
        };
        let vma = ctx.pool.get(entry.idx);
        if let Some(r) = race {
            r.hit(InjectPoint::AfterRcuWalk, vma);
        }
        let res = vma.vma_start_read(&mm.seq, checks, race);
        match res {
            Ok(()) => {}
            Err(e @ (StartReadError::Detached | StartReadError::WrongMm)) => {
                // vma_start_read returned -EAGAIN: the VMA was detached
                // (vm_refcnt 0) or is attached to another mm now. "The area
                // was replaced with another one": VMA_LOCK_MISS, walk again.
                let check = if e == StartReadError::WrongMm {
                    ReuseCheck::VmMm
                } else {
                    ReuseCheck::VmRefcnt
                };
                note_reuse(mm, entry.generation, vma, check);
                if let Some(r) = race {
                    r.verdict_check(check);
                }
                ctx.events
                    .count_vm_vma_lock_event(VmaLockEvent::VmaLockMiss);
                *retries += 1;
                if *retries >= MAX_MISS_RETRIES {
                    // Upstream retries without a cap. This safety net only
                    // keeps a pathological schedule from spinning; a writer
                    // replaces a VMA in the tree before it detaches it, so
                    // no ordinary run gets near it (tests assert MISS counts
                    // exactly, which this would break).
                    ctx.events
                        .count_vm_vma_lock_event(VmaLockEvent::VmaLockAbort);
                    return None;
                }
                continue;
            }
            Err(e) => {
                let check = match e {
                    StartReadError::WriteLocked(LockedBy::LateSeq) => Some(ReuseCheck::VmLockSeq),
                    _ => None,
                };
                if let Some(c) = check {
                    note_reuse(mm, entry.generation, vma, c);
                    if let Some(r) = race {
                        r.verdict_check(c);
                    }
                }
                ctx.events
                    .count_vm_vma_lock_event(VmaLockEvent::VmaLockAbort);
                return None;
            }
        }
        // Check that the VMA we locked is the right one: the slot may have
        // been reused for another range of this mm, or the VMA resized.
        let range_ok = vma.contains(addr);
        if !range_ok && race.is_none_or(|r| !r.bugs().skip_range_check) {
            note_reuse(mm, entry.generation, vma, ReuseCheck::Range);
            if let Some(r) = race {
                r.verdict_check(ReuseCheck::Range);
            }
            vma.vma_end_read();
            ctx.events
                .count_vm_vma_lock_event(VmaLockEvent::VmaLockAbort);
            return None;
        }
        if vma.generation() != entry.generation {
            ctx.events.count_vm_event(VmEvent::BenignReuse);
        }
        // The generation is taken before the hook so that a reuse while the
        // lock is held (the race lab parks the reader here) is seen by
        // check_stable.
        let locked = LockedVma {
            vma,
            generation: vma.generation(),
        };
        if let Some(r) = race {
            r.locked(vma, entry.generation);
            r.hit(InjectPoint::AfterReadLock, vma);
        }
        return Some(locked);
    }
}

#[cfg(not(vmasim_loom))]
/// `struct vma_iterator`: a position in an mm's VMA tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmaIterator {
    index: u64,
}

#[cfg(not(vmasim_loom))]
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

#[cfg(not(vmasim_loom))]
/// `mmap_lock_speculate_try_begin`: `(true, seq)` if no writer holds
/// `mmap_lock` now (`mm_lock_seq` even), `(false, seq)` if one does, in
/// which case the caller must treat what it reads as changed.
pub(crate) fn mmap_lock_speculate_try_begin(seq: &MmLockSeq) -> (bool, u64) {
    // Acquire (raw_seqcount_try_begin's smp_rmb): the tree walk that
    // follows sees at least what the writer published before this value.
    let s = seq.mm_lock_seq.load(Ordering::Acquire);
    (s.is_multiple_of(2), s)
}

#[cfg(not(vmasim_loom))]
/// `mmap_lock_speculate_retry`: has a writer taken `mmap_lock` since
/// [`mmap_lock_speculate_try_begin`] returned `seq`?
pub(crate) fn mmap_lock_speculate_retry(mm_seq: &MmLockSeq, seq: u64) -> bool {
    // read_seqcount_retry: the reads made since the begin (the walk, the
    // VMA's range) must not move after the re-read of the sequence, hence
    // the Acquire fence before the Relaxed load.
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    mm_seq.mm_lock_seq.load(Ordering::Relaxed) != seq
}

#[cfg(not(vmasim_loom))]
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

#[cfg(not(vmasim_loom))]
/// `lock_next_vma_under_mmap_lock`: take `mmap_lock` for read, find the
/// first VMA ending after `from_addr` again and read-lock it
/// (`vma_start_read_locked`), drop `mmap_lock`.
pub(crate) fn lock_next_vma_under_mmap_lock(mm: &MmStruct, from_addr: u64) -> NextVma<'_> {
    let ctx = &*mm.ctx;
    ctx.events
        .count_vm_event(VmEvent::Maps(MapsEvent::MmapLockFallback));
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

#[cfg(not(vmasim_loom))]
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
                ctx.events
                    .count_vm_event(VmEvent::Maps(MapsEvent::UnstableTree));
                return fallback(mm, vmi, from_addr, guard);
            }
            return NextVma::End;
        };
        let vma = ctx.pool.get(e.idx);
        if let Some(r) = race {
            r.hit(InjectPoint::MapsAfterVmaNext, vma);
        }
        match vma.vma_start_read(&mm.seq, checks, None) {
            Ok(()) => {}
            Err(StartReadError::Detached) => {
                // "Retry immediately if the vma gets detached from under
                // us": reset to search from the last address.
                ctx.events
                    .count_vm_event(VmEvent::Maps(MapsEvent::DetachedRetry));
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
            ctx.events
                .count_vm_event(VmEvent::Maps(MapsEvent::GapRecheck));
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
                ctx.events
                    .count_vm_event(VmEvent::Maps(MapsEvent::UnstableTree));
                vma.vma_end_read();
                return fallback(mm, vmi, from_addr, guard);
            }
        }
        ctx.events
            .count_vm_event(VmEvent::Maps(MapsEvent::VmaLocked));
        return NextVma::Locked(vma);
    }
}

#[cfg(not(vmasim_loom))]
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

#[cfg(not(vmasim_loom))]
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

#[cfg(all(test, not(vmasim_loom)))]
mod tests {
    use super::*;
    use crate::mm::mm_types::{VmaFields, vm_flags};
    use crate::mm::race::Bugs;
    use std::sync::Arc;

    fn attached(mm: &MmLockSeq) -> Vma {
        let v = Vma::default();
        v.set_fields(&VmaFields {
            vm_mm: mm.id,
            vm_start: 0x1000,
            vm_end: 0x3000,
            vm_flags: vm_flags::VM_READ,
            vm_pgoff: 1,
            vm_file: 0,
            ..Default::default()
        });
        v.vma_mark_attached();
        v
    }

    #[test]
    fn read_lock_counts_and_releases() {
        let mm = MmLockSeq::new(1);
        let v = attached(&mm);
        assert_eq!(v.vma_start_read(&mm, ReadChecks::ALL, None), Ok(()));
        assert_eq!(v.vm_refcnt(), 2);
        v.vma_end_read();
        assert_eq!(v.vm_refcnt(), 1);
    }

    #[test]
    fn detached_vma_cannot_be_read_locked() {
        let mm = MmLockSeq::new(1);
        let v = Vma::default();
        assert_eq!(
            v.vma_start_read(&mm, ReadChecks::ALL, None),
            Err(StartReadError::Detached)
        );
    }

    #[test]
    fn other_mm_is_refused_and_reference_dropped() {
        let mm = MmLockSeq::new(1);
        let other = MmLockSeq::new(2);
        let v = attached(&mm);
        assert_eq!(
            v.vma_start_read(&other, ReadChecks::ALL, None),
            Err(StartReadError::WrongMm)
        );
        assert_eq!(v.vm_refcnt(), 1);
    }

    #[test]
    fn write_lock_is_seen_and_released_by_seq_bump() {
        let mm = MmLockSeq::new(1);
        let v = attached(&mm);
        mm.mm_lock_seq.store(1, Ordering::SeqCst); // mmap_write_lock
        v.vma_start_write(1);
        assert_eq!(
            v.vma_start_read(&mm, ReadChecks::ALL, None),
            Err(StartReadError::WriteLocked(LockedBy::EarlySeq))
        );
        mm.mm_lock_seq.store(2, Ordering::SeqCst); // mmap_write_unlock
        assert_eq!(v.vma_start_read(&mm, ReadChecks::ALL, None), Ok(()));
        v.vma_end_read();
    }

    #[test]
    fn late_seq_check_catches_lock_taken_in_the_window() {
        let mm = Arc::new(MmLockSeq::new(1));
        let v = attached(&mm);
        // A writer takes the lock in the window, as the race lab's hook
        // at BetweenSeqCheckAndInc lets one.
        let hooks = RaceHooks::new(Bugs::default(), {
            let mm = mm.clone();
            move |p, v: &Vma| {
                if p == InjectPoint::BetweenSeqCheckAndInc {
                    mm.mm_lock_seq.store(1, Ordering::SeqCst);
                    v.vma_start_write(1);
                }
            }
        });
        let r = v.vma_start_read(&mm, ReadChecks::ALL, Some(&hooks));
        assert_eq!(r, Err(StartReadError::WriteLocked(LockedBy::LateSeq)));
        assert_eq!(v.vm_refcnt(), 1);
    }

    #[test]
    fn writer_waits_for_reader_then_detach_waits_too() {
        let mm = Arc::new(MmLockSeq::new(1));
        let v = Arc::new(attached(&mm));
        v.vma_start_read(&mm, ReadChecks::ALL, None).unwrap();
        let w = {
            let (v, mm) = (v.clone(), mm.clone());
            std::thread::spawn(move || {
                mm.mm_lock_seq.store(1, Ordering::SeqCst);
                v.vma_start_write(1);
                v.vma_mark_detached();
            })
        };
        // The writer cannot finish while we hold the read lock.
        while v.vm_refcnt() < VMA_LOCK_OFFSET {
            std::thread::yield_now();
        }
        assert!(!w.is_finished());
        v.vma_end_read();
        w.join().unwrap();
        assert!(v.is_detached());
    }
}
