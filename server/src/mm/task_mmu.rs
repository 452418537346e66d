//! `fs/proc/task_mmu.c`: reading `/proc/PID/maps`, under per-VMA locks as
//! since 6.17, or under `mmap_lock` as before.
//!
//! The per-VMA reader is the kernel's `m_start` / `m_next` / `m_stop` for
//! `proc_pid_maps_op`: `lock_vma_range` enters an RCU read section (maps
//! needs no page-table walk, so unlike smaps it takes no `mmap_lock`);
//! `get_next_vma` drops the previous VMA's read lock and read-locks the
//! next one with [`lock_next_vma`]; the line is printed under that VMA's
//! read lock only; `proc_get_vma` advances the position to the *end* of the
//! printed VMA ("so that the position changes even if the previous vma
//! was merged with the next one"), which is where the next lookup starts.
//! If `lock_next_vma` cannot lock even under `mmap_lock` (`-EAGAIN`,
//! `vm_refcnt` overflow), `fallback_to_mmap_lock` finishes the read under
//! `mmap_lock` as the old reader did.
//!
//! A Maps call is one `read()` that fits the whole file, so there is no
//! seq_file restart between chunks: one `m_start`, `m_next` until the gate
//! area, one `m_stop`.
//!
//! What the reader may print while writers run is what the kernel
//! promises (Documentation/filesystems/proc.rst, "reading /proc/PID/maps
//! ... is inherently racy"): (1) the mapped addresses never go backwards,
//! so no two lines overlap; (2) a range mapped during the whole walk is in
//! the output. Each line is one VMA as it was at one moment (its read lock
//! excludes writers), but two lines may come from different moments: a
//! VMA split after it was printed shows whole, the VMAs after it as they
//! are later. The race lab's `maps-*` scenarios show both.

use crate::mm::{
    mm_struct::MmStruct,
    mm_types::{MapsReader, Vma},
    mmap_lock::{NextVma, VmaIterator, lock_next_vma},
    proc_maps::{MapsEntry, gate_vma, show_map_vma, show_maps_mmap_lock},
    race::InjectPoint,
    rcu::{RcuReadGuard, rcu_read_lock},
    sync::RwLockReadGuard,
    vmstat::{MapsEvent, VmEvent},
};

/// The maps of `mm`, structured, plus `(start_brk, brk)`, read as the
/// context's [`MapsReader`] says.
pub fn show_maps(mm: &MmStruct) -> (Vec<MapsEntry>, u64, u64) {
    match mm.ctx.maps_reader {
        MapsReader::MmapLock => {
            mm.ctx
                .events
                .count_vm_event(VmEvent::Maps(MapsEvent::ReadMmapLock));
            show_maps_mmap_lock(mm)
        }
        MapsReader::PerVma => {
            mm.ctx
                .events
                .count_vm_event(VmEvent::Maps(MapsEvent::ReadPerVma));
            show_maps_per_vma(mm)
        }
    }
}

/// `struct proc_maps_locking_ctx`: what the reader holds.
struct LockingCtx<'a> {
    /// The VMA read-locked by the last `get_next_vma`.
    locked_vma: Option<&'a Vma>,
    /// `mmap_locked`: set by `fallback_to_mmap_lock`.
    mmap_locked: Option<RwLockReadGuard<'a, crate::mm::mm_struct::MmState>>,
}

impl LockingCtx<'_> {
    /// `unlock_ctx_vma`.
    fn unlock_ctx_vma(&mut self) {
        if let Some(v) = self.locked_vma.take() {
            v.vma_end_read();
        }
    }
}

/// What `get_next_vma` found.
enum Got<'a> {
    Vma(&'a Vma),
    End,
    Again,
}

/// `get_next_vma`: under `mmap_lock` simply the next VMA; otherwise drop
/// the previous VMA's lock and [`lock_next_vma`] from `last_pos`.
fn get_next_vma<'a>(
    mm: &'a MmStruct,
    lc: &mut LockingCtx<'a>,
    vmi: &mut VmaIterator,
    last_pos: u64,
    guard: &mut RcuReadGuard,
) -> Got<'a> {
    if lc.mmap_locked.is_some() {
        return match vmi.vma_next(mm, guard) {
            Some(e) => Got::Vma(mm.ctx.pool.get(e.idx)),
            None => Got::End,
        };
    }
    lc.unlock_ctx_vma();
    match lock_next_vma(mm, vmi, last_pos, guard) {
        NextVma::Locked(v) => {
            lc.locked_vma = Some(v);
            Got::Vma(v)
        }
        NextVma::End => Got::End,
        NextVma::Again => Got::Again,
    }
}

/// `fallback_to_mmap_lock`: read the rest under `mmap_lock`; false if
/// already there.
fn fallback_to_mmap_lock<'a>(
    mm: &'a MmStruct,
    lc: &mut LockingCtx<'a>,
    vmi: &mut VmaIterator,
    pos: u64,
    guard: &mut RcuReadGuard,
) -> bool {
    if lc.mmap_locked.is_some() {
        return false;
    }
    mm.ctx
        .events
        .count_vm_event(VmEvent::Maps(MapsEvent::RestUnderMmapLock));
    // rcu_read_unlock(); mmap_read_lock(); (our tree walk still needs a
    // pinned guard, so it is re-pinned after the lock is taken).
    let state = guard.repin_after(|| mm.mmap_read_lock());
    lc.mmap_locked = Some(state);
    // "Reinitialize the iterator after taking mmap_lock".
    vmi.set(pos);
    true
}

/// One read of the whole file under per-VMA locks.
fn show_maps_per_vma(mm: &MmStruct) -> (Vec<MapsEntry>, u64, u64) {
    // m_start -> lock_vma_range: maps takes no mmap_lock, only RCU.
    let mut guard = rcu_read_lock();
    let mut lc = LockingCtx {
        locked_vma: None,
        mmap_locked: None,
    };
    let mut vmi = VmaIterator::new(0);
    let mut pos = 0u64;
    let mut entries = Vec::new();
    loop {
        // proc_get_vma.
        let vma = match get_next_vma(mm, &mut lc, &mut vmi, pos, &mut guard) {
            Got::Vma(v) => v,
            Got::End => break,
            Got::Again => {
                if fallback_to_mmap_lock(mm, &mut lc, &mut vmi, pos, &mut guard) {
                    continue;
                }
                // Unreachable: under mmap_lock get_next_vma cannot fail.
                break;
            }
        };
        if let Some(r) = mm.race_hooks() {
            r.hit(InjectPoint::MapsShowVma, vma);
        }
        // show_map -> show_map_vma, under the VMA's read lock (or
        // mmap_lock). get_vma_name reads mm->brk and mm->start_brk
        // without a lock: here the values the last writer published.
        let f = vma.fields();
        let (start_brk, brk, _) = mm.proc_view.read();
        entries.push(show_map_vma(mm, &f, start_brk, brk));
        // "Track the end of the reported vma to ensure position changes
        // even if previous vma was merged with the next vma and we found
        // the extended vma with the same vm_start."
        pos = f.vm_end;
    }
    // m_stop -> unlock_vma_range.
    lc.unlock_ctx_vma();
    let (start_brk, brk, gate) = match &lc.mmap_locked {
        Some(s) => (s.start_brk, s.brk, s.gate_vma),
        None => mm.proc_view.read(),
    };
    drop(lc);
    drop(guard);
    // *ppos = SENTINEL_VMA_GATE: get_gate_vma after the last VMA.
    entries.extend(gate_vma(gate));
    (entries, start_brk, brk)
}

/// Check a maps read by `reader` against what the kernel guarantees for
/// reads racing with writers (Documentation/filesystems/proc.rst):
///
/// 1. "The mapped addresses never go backwards, which implies no two
///    regions will ever overlap." The `mmap_lock` reader keeps it as
///    written within one read. The per-VMA reader keeps the first half:
///    the read position (the end of the last line, `*ppos = vma->vm_end`)
///    only moves up, so every line ends beyond the previous one; but a VMA
///    that merged with one already printed and now extends past the
///    position is printed again, from its (earlier) start: "the VMA will be
///    reported twice in such a case" (Suren Baghdasaryan, review of the
///    6.17 series). Such a line overlaps the previous one.
/// 2. "If there is something at a given vaddr during the entirety of the
///    life of the smaps/maps walk, there will be some output for it":
///    `always_mapped` lists ranges the caller kept mapped for the whole
///    read.
///
/// The gate area line (above `TASK_SIZE`) is ignored. `Err` says which
/// guarantee broke and where.
pub fn check_maps_guarantees(
    printed: &[MapsEntry],
    always_mapped: &[(u64, u64)],
    reader: MapsReader,
) -> Result<(), String> {
    let lines: Vec<&MapsEntry> = printed
        .iter()
        .filter(|e| e.start < crate::mm::TASK_SIZE)
        .collect();
    for e in &lines {
        if e.start >= e.end {
            return Err(format!("empty line {:#x}-{:#x}", e.start, e.end));
        }
    }
    for w in lines.windows(2) {
        let broken = match reader {
            MapsReader::MmapLock => w[1].start < w[0].end,
            MapsReader::PerVma => w[1].end <= w[0].end,
        };
        if broken {
            return Err(format!(
                "guarantee 1 broken: {:#x}-{:#x} after {:#x}-{:#x} goes backwards{}",
                w[1].start,
                w[1].end,
                w[0].start,
                w[0].end,
                if reader == MapsReader::MmapLock {
                    " or overlaps"
                } else {
                    ""
                }
            ));
        }
    }
    for &(s, e) in always_mapped {
        // Walk the sorted lines over [s, e): each byte must be in one.
        let mut at = s;
        for l in lines.iter().filter(|l| l.end > s && l.start < e) {
            if l.start > at {
                break;
            }
            at = at.max(l.end);
        }
        if at < e {
            return Err(format!(
                "guarantee 2 broken: {at:#x} was mapped during the whole read (in \
                 {s:#x}-{e:#x}) but no line covers it"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::mm_struct::MmContext;
    use crate::mm::mm_types::FaultLockMode;
    use crate::mm::mm_types::VMA_REF_LIMIT;
    use crate::mm::mmap::{MmapArgs, do_mmap, map, prot};
    use crate::mm::slab::{CachePolicy, VmaCache};
    use crate::mm::vmstat::NR_MAPS_EVENTS;
    use std::sync::Arc;

    const P: u64 = crate::mm::PAGE_SIZE;

    fn mm_with(reader: MapsReader) -> MmStruct {
        let pool = VmaCache::new(CachePolicy::Typesafe, 1024);
        let ctx =
            Arc::new(MmContext::new(pool, FaultLockMode::PerVma, 1000).with_maps_reader(reader));
        MmStruct::new(1, ctx, None)
    }

    fn map_at(mm: &MmStruct, addr: u64, pages: u64, p: u32) {
        do_mmap(
            mm,
            MmapArgs {
                addr,
                len: pages * P,
                prot: p,
                flags: map::MAP_PRIVATE | map::MAP_ANONYMOUS | map::MAP_FIXED,
                file: 0,
                offset: 0,
                file_size: 0,
            },
        )
        .unwrap();
    }

    fn events(mm: &MmStruct) -> [u64; NR_MAPS_EVENTS] {
        mm.ctx.events.snapshot().maps()
    }

    /// Three VMAs that cannot merge (different protections, gaps).
    fn three(mm: &MmStruct) {
        map_at(mm, 0x10_0000, 2, prot::PROT_READ);
        map_at(mm, 0x20_0000, 3, prot::PROT_READ | prot::PROT_WRITE);
        map_at(mm, 0x30_0000, 1, prot::PROT_READ | prot::PROT_EXEC);
    }

    #[test]
    fn both_readers_print_the_same_and_count_what_they_did() {
        let a = mm_with(MapsReader::PerVma);
        let b = mm_with(MapsReader::MmapLock);
        three(&a);
        three(&b);
        let (ea, _, _) = show_maps(&a);
        let (eb, _, _) = show_maps(&b);
        assert_eq!(ea, eb);
        assert_eq!(ea.len(), 3);
        // lock_next_vma read-locked each of the three VMAs from its RCU
        // walk; nothing was detached, write-locked or out of place.
        assert_eq!(events(&a), [1, 0, 3, 0, 0, 0, 0, 0]);
        // The old reader counts its read and nothing per VMA.
        assert_eq!(events(&b), [0, 1, 0, 0, 0, 0, 0, 0]);
        // Every read lock was given back.
        let g = rcu_read_lock();
        for e in a.mm_mt.entries(&g) {
            assert_eq!(a.ctx.pool.get(e.idx).vm_refcnt(), 1);
        }
    }

    #[test]
    fn refcount_overflow_finishes_the_read_under_mmap_lock() {
        let mm = mm_with(MapsReader::PerVma);
        three(&mm);
        let (want, _, _) = show_maps(&mm);
        let g = rcu_read_lock();
        let mid = mm.mm_mt.mas_walk(0x20_0000, &g).unwrap().idx;
        let v = mm.ctx.pool.get(mid);
        // As if VMA_REF_LIMIT - 1 readers held it: __refcount_inc_not_zero_
        // limited fails both in vma_start_read and vma_start_read_locked.
        v.vm_refcnt
            .store(VMA_REF_LIMIT, crate::mm::sync::Ordering::Relaxed);
        let before = events(&mm);
        let (got, _, _) = show_maps(&mm);
        v.vm_refcnt.store(1, crate::mm::sync::Ordering::Relaxed);
        assert_eq!(got, want);
        let d: Vec<u64> = events(&mm).iter().zip(before).map(|(a, b)| a - b).collect();
        // One per-VMA read; the first VMA locked under RCU; the second
        // refused under RCU (RefLimit) and again under mmap_lock (-EAGAIN):
        // one lock_next_vma_under_mmap_lock, then fallback_to_mmap_lock
        // reads the second and third VMA with no VMA lock at all.
        assert_eq!(d, [1, 0, 1, 0, 0, 1, 1, 0]);
    }

    #[test]
    fn heap_and_gate_come_from_what_the_last_writer_published() {
        let mm = mm_with(MapsReader::PerVma);
        {
            let mut w = mm.mmap_write_lock();
            w.state.gate_vma = Some(crate::mm::mm_types::vm_flags::VM_READ);
        }
        crate::mm::mmap::do_brk(&mm, crate::mm::DEFAULT_START_BRK + 4 * P).unwrap();
        let (e, sb, b) = show_maps(&mm);
        assert_eq!(
            (sb, b),
            (
                crate::mm::DEFAULT_START_BRK,
                crate::mm::DEFAULT_START_BRK + 4 * P
            )
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].path, "[heap]");
        assert_eq!(e[1].path, "[vsyscall]");
        let old = mm_with(MapsReader::MmapLock);
        {
            let mut w = old.mmap_write_lock();
            w.state.gate_vma = Some(crate::mm::mm_types::vm_flags::VM_READ);
        }
        crate::mm::mmap::do_brk(&old, crate::mm::DEFAULT_START_BRK + 4 * P).unwrap();
        assert_eq!(show_maps(&old), (e, sb, b));
    }
}
