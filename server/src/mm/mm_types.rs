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

use crate::mm::sync::{AtomicU32, AtomicU64, Ordering};

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

    /// Does the VMA contain `addr`?
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        self.vm_start() <= addr && addr < self.vm_end()
    }
}

// The fault vocabulary (`include/linux/mm_types.h` keeps
// `enum vm_fault_reason` beside the structs): what a fault returns and
// which mode it runs in, shared by the fault path, the counters and the
// race hooks, below all of them.

/// How faults take locks (a per-simulator mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultLockMode {
    /// `lock_vma_under_rcu` first, `mmap_lock` only as a fallback.
    #[default]
    PerVma,
    /// Every fault takes `mmap_lock` for read (before per-VMA locks).
    MmapLock,
}

impl FaultLockMode {
    /// The name used in flags, metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultLockMode::PerVma => "per-vma",
            FaultLockMode::MmapLock => "mmap-lock",
        }
    }
}

/// The kind of access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Load.
    Read,
    /// Store.
    Write,
    /// Instruction fetch.
    Exec,
}

/// What the fault did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOutcome {
    /// Anonymous page: zero page mapped (read) or zeroed page allocated.
    AnonZeroFill = 0,
    /// File (or shmem) page mapped.
    FilePage = 1,
    /// Write to a shared (COW) or read-only file page: private copy made.
    CowBreak = 2,
    /// Page already mapped with enough rights (or only the write bit was
    /// missing on an exclusive page).
    AlreadyPresent = 3,
    /// No VMA covers the address.
    SegvMaperr = 4,
    /// The VMA forbids this access.
    SegvAccerr = 5,
    /// `VM_FAULT_OOM`: a page table was needed and the page-table budget is
    /// spent (`pte_alloc` failed). Nothing was mapped.
    Oom = 6,
    /// `VM_FAULT_SIGBUS`: a hugetlb page was needed and the machine has
    /// none (`alloc_hugetlb_folio` fails with `vm.nr_hugepages` 0).
    Sigbus = 7,
}

impl FaultOutcome {
    /// All outcomes, in counter order.
    pub const ALL: [FaultOutcome; 8] = [
        FaultOutcome::AnonZeroFill,
        FaultOutcome::FilePage,
        FaultOutcome::CowBreak,
        FaultOutcome::AlreadyPresent,
        FaultOutcome::SegvMaperr,
        FaultOutcome::SegvAccerr,
        FaultOutcome::Oom,
        FaultOutcome::Sigbus,
    ];
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultOutcome::AnonZeroFill => "anon_zero_fill",
            FaultOutcome::FilePage => "file_page",
            FaultOutcome::CowBreak => "cow_break",
            FaultOutcome::AlreadyPresent => "already_present",
            FaultOutcome::SegvMaperr => "segv_maperr",
            FaultOutcome::SegvAccerr => "segv_accerr",
            FaultOutcome::Oom => "oom",
            FaultOutcome::Sigbus => "sigbus",
        }
    }
}

/// Which locking path served the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPath {
    /// Under the per-VMA lock only.
    PerVmaLock = 0,
    /// The per-VMA attempt failed; served under `mmap_lock`.
    MmapLockFallback = 1,
    /// The server runs in `mmap-lock` mode.
    MmapLock = 2,
}

impl FaultPath {
    /// All paths, in counter order.
    pub const ALL: [FaultPath; 3] = [
        FaultPath::PerVmaLock,
        FaultPath::MmapLockFallback,
        FaultPath::MmapLock,
    ];
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultPath::PerVmaLock => "per_vma_lock",
            FaultPath::MmapLockFallback => "mmap_lock_fallback",
            FaultPath::MmapLock => "mmap_lock",
        }
    }
}

/// The check that noticed a reused VMA slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReuseCheck {
    /// `vm_refcnt` was 0 (detached, maybe reused and not yet attached).
    VmRefcnt = 0,
    /// `vm_mm` re-check: the slot belongs to another mm now.
    VmMm = 1,
    /// `vm_lock_seq` re-check after taking the reference.
    VmLockSeq = 2,
    /// The range re-check in `lock_vma_under_rcu`.
    Range = 3,
}

impl ReuseCheck {
    /// All checks, in counter order.
    pub const ALL: [ReuseCheck; 4] = [
        ReuseCheck::VmRefcnt,
        ReuseCheck::VmMm,
        ReuseCheck::VmLockSeq,
        ReuseCheck::Range,
    ];
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReuseCheck::VmRefcnt => "vm_refcnt",
            ReuseCheck::VmMm => "vm_mm",
            ReuseCheck::VmLockSeq => "vm_lock_seq",
            ReuseCheck::Range => "range",
        }
    }
}

/// The result of one fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultResult {
    /// What happened.
    pub outcome: FaultOutcome,
    /// Which locking path served it.
    pub path: FaultPath,
    /// Walk retries (`VMA_LOCK_MISS`) plus `VMA_LOCK_RETRY` restarts.
    pub retries: u32,
}

/// `VM_FAULT_RETRY`: this fault needs `mmap_lock`.
pub(crate) struct NeedMmapLock;

/// How `/proc/PID/maps` is read (a per-simulator mode, `--maps-reader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MapsReader {
    /// RCU walk and per-VMA read locks, `mmap_lock` only as a fallback
    /// (6.17+, `lock_next_vma`).
    #[default]
    PerVma,
    /// `mmap_lock` held for read for the whole walk (before 6.17).
    MmapLock,
}

impl MapsReader {
    /// The name used in flags, metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            MapsReader::PerVma => "per-vma",
            MapsReader::MmapLock => "mmap-lock",
        }
    }
}
