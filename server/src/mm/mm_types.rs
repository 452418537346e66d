//! `struct vm_area_struct` (include/linux/mm_types.h) and its per-VMA lock, as in `include/linux/mm.h`
//! and `mm/mmap_lock.c` after "mm: move per-vma lock into vm_area_struct".
//!
//! A `Vma` lives in a type-stable pool slot (see [`crate::mm::slab`]): a
//! lockless reader that found it under RCU may be looking at a slot that was
//! freed and handed out again. So every field such a reader may read is an
//! atomic (a racing read is well defined, merely stale), and the read lock
//! protocol is what tells the reader whether it holds the VMA it meant:
//!
//! * `vm_refcnt` is 0 while detached, 1 while attached to a tree, +1 per
//!   reader, and has `VMA_LOCK_OFFSET` added while a writer waits or works.
//!   A reader can only raise a non-zero count, so it can never "lock" a
//!   detached VMA, and a freed VMA is always detached.
//! * `vm_lock_seq == mm_lock_seq` means write-locked; releasing `mmap_lock`
//!   bumps `mm_lock_seq`, which unlocks every VMA locked under it at once.
//! * After the increment, the reader re-checks `vm_mm` (the slot may now
//!   belong to another mm) and `vm_lock_seq`; the caller re-checks the range.

use crate::mm::sync::{AtomicU32, AtomicU64, Ordering, spin_wait};

/// Added to `vm_refcnt` while a writer excludes readers.
pub const VMA_LOCK_OFFSET: u32 = 0x4000_0000;
/// Readers may raise `vm_refcnt` up to this; above it the VMA is write-locked.
pub const VMA_REF_LIMIT: u32 = VMA_LOCK_OFFSET - 1;
/// `vm_lock_seq` of a VMA that was never write-locked (`UINT_MAX` upstream).
pub const VM_LOCK_SEQ_UNLOCKED: u64 = u64::MAX;

/// `vm_flags` bits (the subset vmasim models), with the kernel's values.
pub mod vm_flags {
    /// Readable.
    pub const VM_READ: u64 = 0x1;
    /// Writable.
    pub const VM_WRITE: u64 = 0x2;
    /// Executable.
    pub const VM_EXEC: u64 = 0x4;
    /// Writes are shared (a shared writable mapping).
    pub const VM_SHARED: u64 = 0x8;
    /// Mapped `MAP_SHARED` (shown as `s` in maps even when read-only).
    pub const VM_MAYSHARE: u64 = 0x80;
    /// A stack that grows down on a fault below it (`MAP_GROWSDOWN`).
    pub const VM_GROWSDOWN: u64 = 0x100;
    /// Pages are locked in memory (`MAP_LOCKED`, `mlock`); cleared in a
    /// fork child (`VM_LOCKED_MASK`).
    pub const VM_LOCKED: u64 = 0x2000;
    /// Not copied into a fork child (`MADV_DONTFORK`).
    pub const VM_DONTCOPY: u64 = 0x2_0000;
    /// Cannot be expanded by mremap (special mappings).
    pub const VM_DONTEXPAND: u64 = 0x4_0000;
    /// Lock pages as they fault in (`mlock2(MLOCK_ONFAULT)`).
    pub const VM_LOCKONFAULT: u64 = 0x8_0000;
    /// Charged against the commit limit (`accountable_mapping`).
    pub const VM_ACCOUNT: u64 = 0x10_0000;
    /// No swap reservation (`MAP_NORESERVE`).
    pub const VM_NORESERVE: u64 = 0x20_0000;
    /// A hugetlbfs mapping (`MAP_HUGETLB`): huge pages only, split only at
    /// huge-page boundaries, never merged.
    pub const VM_HUGETLB: u64 = 0x40_0000;
    /// The child gets zeroed memory (`MADV_WIPEONFORK`).
    pub const VM_WIPEONFORK: u64 = 0x200_0000;
    /// Left out of core dumps (`MADV_DONTDUMP`).
    pub const VM_DONTDUMP: u64 = 0x400_0000;
    /// `MADV_HUGEPAGE`.
    pub const VM_HUGEPAGE: u64 = 0x2000_0000;
    /// `MADV_NOHUGEPAGE`, and `MAP_STACK` since 6.7.
    pub const VM_NOHUGEPAGE: u64 = 0x4000_0000;
    /// The access bits.
    pub const VM_ACCESS_FLAGS: u64 = VM_READ | VM_WRITE | VM_EXEC;
}

/// Identity and lock sequence of an `mm_struct`, the two things
/// `vma_start_read` needs from it. `MmStruct` embeds one.
#[derive(Debug)]
pub struct MmLockSeq {
    /// Never reused by another mm, so comparing ids is comparing mms.
    pub id: u64,
    /// Odd while `mmap_lock` is write-held; VMAs whose `vm_lock_seq` equals
    /// it are write-locked.
    pub mm_lock_seq: AtomicU64,
}

impl MmLockSeq {
    /// A fresh, unlocked sequence for mm `id`.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            mm_lock_seq: AtomicU64::new(0),
        }
    }
}

/// Why `vma_start_read` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartReadError {
    /// `vm_refcnt` was 0: the VMA was detached (maybe freed, maybe reused
    /// and not yet attached). Upstream returns `-EAGAIN` and the walk is
    /// retried (`VMA_LOCK_MISS`).
    Detached,
    /// Write-locked, seen by the early `vm_lock_seq` check, by the refcount
    /// limit (a writer has `VMA_LOCK_OFFSET` in), or by the late re-check.
    WriteLocked(LockedBy),
    /// The slot now belongs to another mm: it was freed and reused.
    WrongMm,
}

/// Which check saw the write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedBy {
    /// The lockless check before the increment.
    EarlySeq,
    /// The increment failed because a writer holds `VMA_LOCK_OFFSET`.
    RefLimit,
    /// `vm_lock_seq == mm_lock_seq` after the increment.
    LateSeq,
}

/// Checks of `vma_start_read` that the race lab can switch off to show what
/// each one is for. Ordinary traffic always uses [`ReadChecks::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadChecks {
    /// Re-check `vm_mm` after taking the reference.
    pub vm_mm: bool,
    /// Re-check `vm_lock_seq` after taking the reference.
    pub late_seq: bool,
}

impl ReadChecks {
    /// Every check upstream performs.
    pub const ALL: ReadChecks = ReadChecks {
        vm_mm: true,
        late_seq: true,
    };
}

/// A virtual memory area in a pool slot.
///
/// All fields are atomics because a lockless reader may read a slot while
/// it is being freed or reused; the writer side is serialised by
/// `mmap_lock` and the VMA write lock, so writers use Relaxed stores where
/// the lock protocol (the Release on `vm_refcnt` / `mm_lock_seq`) already
/// orders them before anything a reader could act on.
///
/// Laid out on three cache lines (`#[repr(C)]`): the range, flags and
/// `vm_lock_seq` that tree walks, faults and a neighbour's merge checks
/// read; the rest of what a merge check reads, with the pool's free-list
/// fields; and `vm_refcnt`, the one field every fault *writes*, on a line
/// of its own, as the kernel's `refcount_t vm_refcnt
/// ____cacheline_aligned_in_smp` (include/linux/mm_types.h). A writer
/// mapping or mprotecting next to a VMA reads that VMA's fields
/// (`vma_merge_new_range`, `vma_modify`); were `vm_refcnt` on one of those
/// lines, every such read would cost the next fault on the VMA a cache
/// miss for its increment.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Vma {
    // Line 0.
    /// First byte.
    pub(crate) vm_start: AtomicU64,
    /// One past the last byte.
    pub(crate) vm_end: AtomicU64,
    /// Owning mm's id (0 while in the pool).
    pub(crate) vm_mm: AtomicU64,
    /// `vm_flags` bits.
    pub(crate) vm_flags: AtomicU64,
    /// See the module doc.
    pub(crate) vm_lock_seq: AtomicU64,
    /// Offset in the file, in pages (`start >> PAGE_SHIFT` for anonymous).
    pub(crate) vm_pgoff: AtomicU64,
    /// File id, 0 for anonymous memory.
    pub(crate) vm_file: AtomicU64,
    /// `anon_vma` id, 0 until the first anonymous fault prepares one.
    pub(crate) anon_vma: AtomicU64,
    // Line 1.
    /// Length of the `anon_vma_chain`: 0 without an `anon_vma`, 1 for an
    /// `anon_vma` of its own, more in a fork child (one link per ancestor).
    /// Only whether it is > 1 matters (`vma_had_uncowed_parents`).
    pub(crate) anon_vma_chain: AtomicU64,
    /// Name id of a named anonymous mapping (`[stack]`, `[vdso]`), 0 if none.
    pub(crate) anon_name: AtomicU64,
    /// RCU cookie taken when the slot was last freed.
    pub(crate) freed_cookie: AtomicU64,
    /// Pool free-list link (slot index + 1, 0 = end).
    pub(crate) next_free: AtomicU32,
    /// Fills line 1, so that `vm_refcnt` starts line 2.
    _pad: [u8; VMA_LINE1_PAD],
    // Line 2.
    /// See the module doc.
    pub(crate) vm_refcnt: AtomicU32,
    /// Debug only, not used by the protocol: bumped each time the slot is
    /// allocated, so tests can tell "the VMA I meant" from "a reuse". Read
    /// by faults, written only while the slot is free.
    pub(crate) generation: AtomicU64,
}

/// Bytes of line 1 after its fields (three `u64`s and a `u32`).
const VMA_LINE1_PAD: usize = 64 - 3 * 8 - 4;

// The layout the doc above promises (not under loom, whose atomics are
// larger): vm_refcnt alone with the debug generation on the third line.
#[cfg(not(vmasim_loom))]
const _: () = {
    assert!(std::mem::offset_of!(Vma, anon_vma_chain) == 64);
    assert!(std::mem::offset_of!(Vma, vm_refcnt) == 128);
    assert!(std::mem::size_of::<Vma>() == 192);
};

impl Default for Vma {
    fn default() -> Self {
        Self {
            vm_start: AtomicU64::new(0),
            vm_end: AtomicU64::new(0),
            vm_mm: AtomicU64::new(0),
            vm_flags: AtomicU64::new(0),
            vm_lock_seq: AtomicU64::new(VM_LOCK_SEQ_UNLOCKED),
            vm_pgoff: AtomicU64::new(0),
            vm_file: AtomicU64::new(0),
            anon_vma: AtomicU64::new(0),
            anon_vma_chain: AtomicU64::new(0),
            anon_name: AtomicU64::new(0),
            freed_cookie: AtomicU64::new(0),
            next_free: AtomicU32::new(0),
            _pad: [0; VMA_LINE1_PAD],
            vm_refcnt: AtomicU32::new(0),
            generation: AtomicU64::new(0),
        }
    }
}

/// The fields `vm_area_init_from` copies (everything but the lock), as plain
/// values: what a writer reads from a VMA it holds locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmaFields {
    /// Owning mm id.
    pub vm_mm: u64,
    /// First byte.
    pub vm_start: u64,
    /// One past the last byte.
    pub vm_end: u64,
    /// `vm_flags`.
    pub vm_flags: u64,
    /// Offset in pages.
    pub vm_pgoff: u64,
    /// File id or 0.
    pub vm_file: u64,
    /// Anonymous name id or 0.
    pub anon_name: u64,
    /// `anon_vma` id or 0.
    pub anon_vma: u64,
    /// `anon_vma_chain` length (see [`Vma`]).
    pub anon_vma_chain: u64,
}

impl Vma {
    /// Read the plain fields. Meaningful to a writer holding the VMA
    /// write-locked or a reader holding it read-locked; racy otherwise.
    pub fn fields(&self) -> VmaFields {
        VmaFields {
            vm_mm: self.vm_mm.load(Ordering::Relaxed),
            vm_start: self.vm_start.load(Ordering::Relaxed),
            vm_end: self.vm_end.load(Ordering::Relaxed),
            vm_flags: self.vm_flags.load(Ordering::Relaxed),
            vm_pgoff: self.vm_pgoff.load(Ordering::Relaxed),
            vm_file: self.vm_file.load(Ordering::Relaxed),
            anon_name: self.anon_name.load(Ordering::Relaxed),
            anon_vma: self.anon_vma.load(Ordering::Relaxed),
            anon_vma_chain: self.anon_vma_chain.load(Ordering::Relaxed),
        }
    }

    /// Write the plain fields, leaving `vm_refcnt` and `vm_lock_seq` alone.
    /// Callers hold the VMA write-locked or detached.
    pub fn set_fields(&self, f: &VmaFields) {
        // Relaxed: ordered before readers by the Release of
        // vma_mark_attached / mmap_write_unlock.
        self.vm_mm.store(f.vm_mm, Ordering::Relaxed);
        self.vm_start.store(f.vm_start, Ordering::Relaxed);
        self.vm_end.store(f.vm_end, Ordering::Relaxed);
        self.vm_flags.store(f.vm_flags, Ordering::Relaxed);
        self.vm_pgoff.store(f.vm_pgoff, Ordering::Relaxed);
        self.vm_file.store(f.vm_file, Ordering::Relaxed);
        self.anon_name.store(f.anon_name, Ordering::Relaxed);
        self.anon_vma.store(f.anon_vma, Ordering::Relaxed);
        self.anon_vma_chain
            .store(f.anon_vma_chain, Ordering::Relaxed);
    }

    /// `vm_start`.
    #[inline]
    pub fn vm_start(&self) -> u64 {
        self.vm_start.load(Ordering::Relaxed)
    }
    /// `vm_end`.
    #[inline]
    pub fn vm_end(&self) -> u64 {
        self.vm_end.load(Ordering::Relaxed)
    }
    /// `vm_flags`.
    #[inline]
    pub fn vm_flags(&self) -> u64 {
        self.vm_flags.load(Ordering::Relaxed)
    }
    /// `vm_mm` (owning mm id).
    #[inline]
    pub fn vm_mm(&self) -> u64 {
        self.vm_mm.load(Ordering::Relaxed)
    }
    /// Current `vm_refcnt` (for timelines and tests).
    pub fn vm_refcnt(&self) -> u32 {
        self.vm_refcnt.load(Ordering::Acquire)
    }
    /// Current `vm_lock_seq` (for timelines and tests).
    pub fn vm_lock_seq(&self) -> u64 {
        self.vm_lock_seq.load(Ordering::Relaxed)
    }
    /// Debug generation: how many times this slot has been allocated.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `vma_start_read`: take the VMA read lock from an RCU walk.
    #[inline]
    pub fn vma_start_read(&self, mm: &MmLockSeq) -> Result<(), StartReadError> {
        self.vma_start_read_checked(mm, ReadChecks::ALL, || {})
    }

    /// `vma_start_read` with selectable checks and a hook that runs between
    /// the early `vm_lock_seq` check and the refcount increment (the window
    /// of the review's race). Ordinary callers use [`Vma::vma_start_read`].
    #[inline]
    pub fn vma_start_read_checked(
        &self,
        mm: &MmLockSeq,
        checks: ReadChecks,
        between_check_and_inc: impl FnOnce(),
    ) -> Result<(), StartReadError> {
        // Early lockless check. Relaxed on both: its answer is only a
        // shortcut; the check we rely on is the one after the increment.
        if self.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq.load(Ordering::Relaxed) {
            return Err(StartReadError::WriteLocked(LockedBy::EarlySeq));
        }
        between_check_and_inc();
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

    /// Does the VMA contain `addr`?
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        self.vm_start() <= addr && addr < self.vm_end()
    }
}

#[cfg(all(test, not(vmasim_loom)))]
mod tests {
    use super::*;
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
        assert_eq!(v.vma_start_read(&mm), Ok(()));
        assert_eq!(v.vm_refcnt(), 2);
        v.vma_end_read();
        assert_eq!(v.vm_refcnt(), 1);
    }

    #[test]
    fn detached_vma_cannot_be_read_locked() {
        let mm = MmLockSeq::new(1);
        let v = Vma::default();
        assert_eq!(v.vma_start_read(&mm), Err(StartReadError::Detached));
    }

    #[test]
    fn other_mm_is_refused_and_reference_dropped() {
        let mm = MmLockSeq::new(1);
        let other = MmLockSeq::new(2);
        let v = attached(&mm);
        assert_eq!(v.vma_start_read(&other), Err(StartReadError::WrongMm));
        assert_eq!(v.vm_refcnt(), 1);
    }

    #[test]
    fn write_lock_is_seen_and_released_by_seq_bump() {
        let mm = MmLockSeq::new(1);
        let v = attached(&mm);
        mm.mm_lock_seq.store(1, Ordering::SeqCst); // mmap_write_lock
        v.vma_start_write(1);
        assert_eq!(
            v.vma_start_read(&mm),
            Err(StartReadError::WriteLocked(LockedBy::EarlySeq))
        );
        mm.mm_lock_seq.store(2, Ordering::SeqCst); // mmap_write_unlock
        assert_eq!(v.vma_start_read(&mm), Ok(()));
        v.vma_end_read();
    }

    #[test]
    fn late_seq_check_catches_lock_taken_in_the_window() {
        let mm = MmLockSeq::new(1);
        let v = attached(&mm);
        let r = v.vma_start_read_checked(&mm, ReadChecks::ALL, || {
            mm.mm_lock_seq.store(1, Ordering::SeqCst);
            v.vma_start_write(1);
        });
        assert_eq!(r, Err(StartReadError::WriteLocked(LockedBy::LateSeq)));
        assert_eq!(v.vm_refcnt(), 1);
    }

    #[test]
    fn writer_waits_for_reader_then_detach_waits_too() {
        let mm = Arc::new(MmLockSeq::new(1));
        let v = Arc::new(attached(&mm));
        v.vma_start_read(&mm).unwrap();
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
