//! Page faults: `lock_vma_under_rcu`, then `handle_mm_fault`.
//!
//! The fast path walks the VMA tree under RCU with no lock, read-locks the
//! VMA it found (`vma_start_read`), re-checks the range, and populates the
//! PTE by compare-and-swap. It allocates nothing (except a page-table level
//! the first time a 2 MiB region is touched), takes no lock, and writes no
//! shared cache line but the VMA's `vm_refcnt`: counters are per-thread
//! shards and frames come from per-thread ranges.
//!
//! When the walk finds nothing, or the VMA is write-locked, or belongs to
//! another mm now, or no longer covers the address, the fault falls back to
//! `mmap_lock` for read (`VMA_LOCK_ABORT`). Only that path may answer
//! `SEGV_MAPERR`, because only it sees a stable tree. A VMA found detached
//! is retried (`VMA_LOCK_MISS`), and so is one that now belongs to another
//! mm (`vma_start_read` returns `-EAGAIN` for both). A first anonymous write
//! (no `anon_vma` yet) takes `mmap_read_trylock` under the VMA lock and
//! prepares the `anon_vma` in place; only if a writer holds `mmap_lock` does
//! the fault retry under it (`VMA_LOCK_RETRY`).

use crate::mm::{
    PAGE_SHIFT, TASK_SIZE,
    memory::handle_mm_fault,
    mm_struct::{MmStruct, ev},
    mm_types::{LockedBy, ReadChecks, StartReadError, Vma, VmaFields, vm_flags::*},
    race::InjectPoint,
    rcu::rcu_read_lock,
    sync::Ordering,
    vmstat::VmaLockEvent,
};

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

/// Upper bound on MISS retries before giving up on the lockless walk. A
/// writer publishes the tree before detaching, so a retry loop ends quickly;
/// the bound only keeps a pathological schedule from spinning.
const MAX_MISS_RETRIES: u32 = 1 << 16;

/// `VM_FAULT_RETRY`: this fault needs `mmap_lock`.
pub(crate) struct NeedMmapLock;

/// A VMA read-locked by `lock_vma_under_rcu`.
pub(crate) struct LockedVma<'a> {
    pub(crate) vma: &'a Vma,
    generation: u64,
}

/// `do_user_addr_fault`: handle a fault at `addr` in `mm`.
pub fn do_user_addr_fault(mm: &MmStruct, addr: u64, access: Access) -> FaultResult {
    let ctx = &*mm.ctx;
    if ctx.fault_lock == crate::mm::fault::FaultLockMode::MmapLock {
        return account(
            mm,
            fault_under_mmap_lock(mm, addr, access, FaultPath::MmapLock, 0),
        );
    }
    let mut retries = 0;
    if addr < TASK_SIZE
        && let Some(locked) = lock_vma_under_rcu(mm, addr, &mut retries)
    {
        {
            let vma = locked.vma;
            let f = vma.fields();
            if access_error(f.vm_flags, access) {
                check_stable(mm, &locked, addr);
                vma.vma_end_read();
                ctx.events.inc(VmaLockEvent::VmaLockSuccess as usize);
                return account(
                    mm,
                    FaultResult {
                        outcome: FaultOutcome::SegvAccerr,
                        path: FaultPath::PerVmaLock,
                        retries,
                    },
                );
            }
            let r = handle_mm_fault(mm, vma, &f, addr, access, true);
            check_stable(mm, &locked, addr);
            vma.vma_end_read();
            match r {
                Ok(outcome) => {
                    ctx.events.inc(VmaLockEvent::VmaLockSuccess as usize);
                    return account(
                        mm,
                        FaultResult {
                            outcome,
                            path: FaultPath::PerVmaLock,
                            retries,
                        },
                    );
                }
                Err(NeedMmapLock) => {
                    ctx.events.inc(VmaLockEvent::VmaLockRetry as usize);
                    retries += 1;
                }
            }
        }
    }
    account(
        mm,
        fault_under_mmap_lock(mm, addr, access, FaultPath::MmapLockFallback, retries),
    )
}

fn account(mm: &MmStruct, r: FaultResult) -> FaultResult {
    let ev = &mm.ctx.events;
    ev.inc(ev::FAULT_BASE + r.outcome as usize * FaultPath::ALL.len() + r.path as usize);
    if r.retries > 0 {
        ev.add(ev::FAULT_RETRIES, u64::from(r.retries));
    }
    r
}

/// While we held the read lock, nobody may have changed the VMA: this is
/// the use-after-reuse the protocol exists to prevent. Counted, never
/// expected; tests assert the counter stays 0.
#[inline]
fn check_stable(mm: &MmStruct, locked: &LockedVma<'_>, addr: u64) {
    let v = locked.vma;
    if v.generation() != locked.generation || v.vm_mm() != mm.id() || !v.contains(addr) {
        mm.ctx.events.inc(ev::USE_AFTER_REUSE);
    }
}

fn note_reuse(mm: &MmStruct, entry_gen: u64, vma: &Vma, check: ReuseCheck) {
    if vma.generation() != entry_gen {
        mm.ctx.events.inc(ev::REUSE_DETECTED + check as usize);
    }
}

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
            ctx.events.inc(VmaLockEvent::VmaLockAbort as usize);
            return None;
        };
        let vma = ctx.pool.get(entry.idx);
        if let Some(r) = race {
            r.hit(InjectPoint::AfterRcuWalk, vma);
        }
        let res = vma.vma_start_read_checked(&mm.seq, checks, || {
            if let Some(r) = race {
                r.hit(InjectPoint::BetweenSeqCheckAndInc, vma);
            }
        });
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
                ctx.events.inc(VmaLockEvent::VmaLockMiss as usize);
                *retries += 1;
                if *retries >= MAX_MISS_RETRIES {
                    // Upstream retries without a cap. This safety net only
                    // keeps a pathological schedule from spinning; a writer
                    // replaces a VMA in the tree before it detaches it, so
                    // no ordinary run gets near it (tests assert MISS counts
                    // exactly, which this would break).
                    ctx.events.inc(VmaLockEvent::VmaLockAbort as usize);
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
                ctx.events.inc(VmaLockEvent::VmaLockAbort as usize);
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
            ctx.events.inc(VmaLockEvent::VmaLockAbort as usize);
            return None;
        }
        if vma.generation() != entry.generation {
            ctx.events.inc(ev::BENIGN_REUSE);
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

/// x86-64 `access_error`: a write needs `VM_WRITE`, an instruction fetch
/// `VM_EXEC`, a read any access right (write implies read on x86).
#[inline]
pub fn access_error(flags: u64, access: Access) -> bool {
    match access {
        Access::Write => flags & VM_WRITE == 0,
        Access::Exec => flags & VM_EXEC == 0,
        Access::Read => flags & VM_ACCESS_FLAGS == 0,
    }
}

fn fault_under_mmap_lock(
    mm: &MmStruct,
    addr: u64,
    access: Access,
    path: FaultPath,
    retries: u32,
) -> FaultResult {
    let maperr = FaultResult {
        outcome: FaultOutcome::SegvMaperr,
        path,
        retries,
    };
    if addr >= TASK_SIZE {
        return maperr;
    }
    let mut state = mm.mmap_read_lock();
    if state.dead {
        return maperr;
    }
    // Writers are excluded, so the tree is stable and authoritative.
    let guard = rcu_read_lock();
    let entry = match mm.mm_mt.mas_walk(addr, &guard) {
        Some(e) => e,
        None => {
            // lock_mm_and_find_vma: just below a VM_GROWSDOWN VMA the stack
            // grows, which needs mmap_lock for write (expand_stack_locked);
            // then the fault goes on under the read lock.
            let grows = mm
                .mm_mt
                .next(addr, &guard)
                .is_some_and(|n| mm.ctx.pool.get(n.idx).vm_flags() & VM_GROWSDOWN != 0);
            if !grows {
                return maperr;
            }
            drop(state);
            if crate::mm::mmap::expand_stack(mm, addr).is_err() {
                return maperr;
            }
            state = mm.mmap_read_lock();
            if state.dead {
                return maperr;
            }
            match mm.mm_mt.mas_walk(addr, &guard) {
                Some(e) => e,
                None => return maperr,
            }
        }
    };
    let vma = mm.ctx.pool.get(entry.idx);
    let f = vma.fields();
    if access_error(f.vm_flags, access) {
        return FaultResult {
            outcome: FaultOutcome::SegvAccerr,
            path,
            retries,
        };
    }
    let outcome = match handle_mm_fault(mm, vma, &f, addr, access, false) {
        Ok(o) => o,
        Err(NeedMmapLock) => unreachable!("mmap_lock already held"),
    };
    drop(state);
    FaultResult {
        outcome,
        path,
        retries,
    }
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

/// `populate_vma_page_range` over `[start, end)` (`mm_populate`, mlock):
/// fault every page in under `mmap_lock` for read, as GUP does — a write
/// fault where the VMA is private and writable (`FOLL_WRITE`, breaking COW
/// now), a read fault elsewhere. Inaccessible VMAs are skipped. These are
/// not user faults: they count in no fault or VMA-lock counter.
pub(crate) fn populate_range(mm: &MmStruct, start: u64, end: u64) {
    let state = mm.mmap_read_lock();
    if state.dead {
        return;
    }
    populate_vma_page_range(mm, start, end);
    drop(state);
}

/// The faulting loop of [`populate_range`], for a caller that already holds
/// `mmap_lock` (for read or write): `mprotect_fixup` populates each VMA it
/// made writable before it moves on to the next one, so the `anon_vma` this
/// gives the VMA decides whether the next VMA merges with it.
pub(crate) fn populate_vma_page_range(mm: &MmStruct, start: u64, end: u64) {
    let g = rcu_read_lock();
    for e in mm.mm_mt.overlapping(start, end, &g) {
        let vma = mm.ctx.pool.get(e.idx);
        let f = vma.fields();
        if f.vm_flags & VM_ACCESS_FLAGS == 0 {
            continue;
        }
        let access = if f.vm_flags & (VM_WRITE | VM_SHARED) == VM_WRITE {
            Access::Write
        } else {
            Access::Read
        };
        let mut addr = f.vm_start.max(start);
        while addr < f.vm_end.min(end) {
            let f = vma.fields();
            // __get_user_pages stops at the first page it cannot fault in
            // (VM_FAULT_OOM is -ENOMEM, VM_FAULT_SIGBUS -EFAULT) and
            // __mm_populate, ignoring the error, goes on at the next VMA.
            // So a budget-exhausted or hugetlb VMA costs one fault, not one
            // per page of a mapping that may be terabytes long.
            match handle_mm_fault(mm, vma, &f, addr, access, false) {
                Ok(
                    FaultOutcome::Oom
                    | FaultOutcome::Sigbus
                    | FaultOutcome::SegvMaperr
                    | FaultOutcome::SegvAccerr,
                )
                | Err(_) => break,
                Ok(_) => {}
            }
            addr += 1 << PAGE_SHIFT;
        }
    }
}

/// Frame and bits of the PTE for `addr`, for tests and tools.
pub fn follow_pte(mm: &MmStruct, addr: u64) -> Option<u64> {
    mm.pgd
        .pte(addr)
        .map(|p| p.load(Ordering::Acquire))
        .filter(|v| *v != 0)
}

/// Lock-event and fault counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// `VMA_LOCK_SUCCESS`, `_ABORT`, `_RETRY`, `_MISS`.
    pub vma_lock: [u64; 4],
    /// Faults by `[outcome][path]`.
    pub faults: [[u64; FaultPath::ALL.len()]; FaultOutcome::ALL.len()],
    /// Sum of retries.
    pub retries: u64,
    /// Reuses caught, by [`ReuseCheck`].
    pub reuse_detected: [u64; 4],
    /// VMAs that changed under a held read lock (must be 0).
    pub use_after_reuse: u64,
    /// Locked a reused slot that legitimately maps the address.
    pub benign_reuse: u64,
}

impl FaultStats {
    /// Read the counters of a context.
    pub fn read(ctx: &crate::mm::mm_struct::MmContext) -> Self {
        let s = ctx.events.snapshot();
        let mut faults = [[0; FaultPath::ALL.len()]; FaultOutcome::ALL.len()];
        for (o, row) in faults.iter_mut().enumerate() {
            for (p, c) in row.iter_mut().enumerate() {
                *c = s[ev::FAULT_BASE + o * FaultPath::ALL.len() + p];
            }
        }
        Self {
            vma_lock: [s[0], s[1], s[2], s[3]],
            faults,
            retries: s[ev::FAULT_RETRIES],
            reuse_detected: std::array::from_fn(|i| s[ev::REUSE_DETECTED + i]),
            use_after_reuse: s[ev::USE_AFTER_REUSE],
            benign_reuse: s[ev::BENIGN_REUSE],
        }
    }

    /// Total faults.
    pub fn total(&self) -> u64 {
        self.faults.iter().flatten().sum()
    }

    /// Faults by outcome (all paths).
    pub fn by_outcome(&self, o: FaultOutcome) -> u64 {
        self.faults[o as usize].iter().sum()
    }

    /// Faults by path (all outcomes).
    pub fn by_path(&self, p: FaultPath) -> u64 {
        self.faults.iter().map(|r| r[p as usize]).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::PAGE_SIZE;
    use crate::mm::mmap::{MmapArgs, map::*, prot::*};
    use crate::mm::sim::{SimConfig, Simulator};

    const BASE: u64 = 0x7f00_0000_0000;
    const MIB: u64 = 1 << 20;

    /// Map `[BASE + 8 MiB - 4 KiB, BASE + 8 MiB)` (file 1) and read it:
    /// its PTE table is the last of the four that cover `[BASE, BASE +
    /// 8 MiB)`. Returns the simulator and the pid.
    fn with_last_table_present(budget: u64) -> (Simulator, u32) {
        let s = Simulator::new(SimConfig {
            max_pgtables_bytes: budget,
            ..SimConfig::default()
        });
        let pid = s.spawn().unwrap();
        let far = BASE + 8 * MIB - PAGE_SIZE;
        let args = MmapArgs {
            addr: far,
            len: PAGE_SIZE,
            prot: PROT_READ,
            flags: MAP_PRIVATE | MAP_FIXED,
            file: 1,
            offset: 0,
        };
        s.mmap(pid, args).unwrap();
        s.fault(pid, far, Access::Read).unwrap();
        (s, pid)
    }

    /// __mm_populate → populate_vma_page_range → __get_user_pages stops at
    /// the first page it cannot fault in: with room for one more page
    /// table, a MAP_POPULATE of `[BASE, BASE + 8 MiB - 4 KiB)` maps the
    /// 512 pages of its first table and stops where the second would be
    /// needed -- it does not go on to map the pages under the last table,
    /// which is already there.
    #[test]
    fn populate_stops_at_the_first_page_it_cannot_fault_in() {
        let (probe, _) = with_last_table_present(u64::MAX / 2);
        let used = probe.stats().pgtables_bytes;
        let (s, pid) = with_last_table_present(used + PAGE_SIZE);
        let args = MmapArgs {
            addr: BASE,
            len: 8 * MIB - PAGE_SIZE,
            prot: PROT_READ,
            flags: MAP_PRIVATE | MAP_FIXED | MAP_POPULATE,
            file: 2,
            offset: 0,
        };
        s.mmap(pid, args).unwrap();
        // The far page, plus one table's worth.
        assert_eq!(s.maps(pid).unwrap().rss_pages, 1 + 512);
        assert_eq!(s.stats().pgtables_bytes, used + PAGE_SIZE);
    }
}
