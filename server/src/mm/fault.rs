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
    TASK_SIZE,
    memory::handle_mm_fault,
    mm_struct::MmStruct,
    mm_types::{
        Access, FaultLockMode, FaultOutcome, FaultPath, FaultResult, NeedMmapLock, vm_flags::*,
    },
    mmap_lock::{LockedVma, lock_vma_under_rcu},
    rcu::rcu_read_lock,
    sync::Ordering,
    vmstat::{VmEvent, VmaLockEvent},
};

/// `do_user_addr_fault`: handle a fault at `addr` in `mm`.
pub fn do_user_addr_fault(mm: &MmStruct, addr: u64, access: Access) -> FaultResult {
    let ctx = &*mm.ctx;
    if ctx.fault_lock == FaultLockMode::MmapLock {
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
                ctx.events
                    .count_vm_vma_lock_event(VmaLockEvent::VmaLockSuccess);
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
                    ctx.events
                        .count_vm_vma_lock_event(VmaLockEvent::VmaLockSuccess);
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
                    ctx.events
                        .count_vm_vma_lock_event(VmaLockEvent::VmaLockRetry);
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
    ev.count_vm_event(VmEvent::Fault(r.outcome, r.path));
    if r.retries > 0 {
        ev.count_vm_events(VmEvent::FaultRetries, u64::from(r.retries));
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
        mm.ctx.events.count_vm_event(VmEvent::UseAfterReuse);
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

/// Frame and bits of the PTE for `addr`, for tests and tools.
pub fn follow_pte(mm: &MmStruct, addr: u64) -> Option<u64> {
    mm.pgd
        .pte(addr)
        .map(|p| p.load(Ordering::Acquire))
        .filter(|v| *v != 0)
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
            file_size: 0,
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
            file_size: 0,
        };
        s.mmap(pid, args).unwrap();
        // The far page, plus one table's worth.
        assert_eq!(s.maps(pid).unwrap().rss_pages, 1 + 512);
        assert_eq!(s.stats().pgtables_bytes, used + PAGE_SIZE);
    }
}
