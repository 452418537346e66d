//! Race-lab scenarios of the `/proc/PID/maps` reader under per-VMA locks
//! (6.17's `lock_next_vma`, fs/proc/task_mmu.c): a reader meets a writer
//! splitting the VMA it is printing.
//!
//! What makes the reader's output *correct* is not that it is a snapshot
//! (it is not, and the kernel does not promise one) but the two guarantees
//! of Documentation/filesystems/proc.rst: lines never go backwards or
//! overlap, and a range mapped during the whole read is printed. Each
//! scenario judges the printed lines by exactly those
//! ([`check_maps_guarantees`]), with the split VMA's range as the range
//! mapped throughout (an mprotect splits it but never unmaps any of it).
//!
//! * `maps-split-while-printing`: the reader holds X read-locked while it
//!   prints it; the writer's split waits in `vma_start_write`. X comes out
//!   as one line, as it was: true at the moment the reader held it.
//! * `maps-split-gap`: the reader's RCU walk finds X and stops before
//!   locking it; the writer splits X so that X keeps only its upper part
//!   and a new VMA takes the lower part. Locking X then succeeds, but X
//!   starts beyond the last printed end and the address space changed:
//!   `lock_next_vma` walks again, finds the new VMA first, drops X and
//!   takes the next VMA under `mmap_lock`. The buggy variant skips that
//!   re-walk and prints X alone, leaving out a range that was mapped all
//!   along.

use super::*;
pub(super) use crate::mm::mm_struct::MmStruct;
pub(super) use crate::mm::mm_types::Vma;
pub(super) use crate::mm::mmap::prot;
pub(super) use crate::mm::mprotect::do_mprotect;
pub(super) use crate::mm::proc_maps::{MapsEntry, perms, render};
pub(super) use crate::mm::race::InjectPoint;
pub(super) use crate::mm::{
    mm_types::MapsReader,
    task_mmu::{check_maps_guarantees, show_maps},
};

/// Timeline text for the maps reader's injection points.
pub(in crate::race_lab) fn describe(sh: &Shared, p: InjectPoint, vma: &Vma) -> String {
    let slot = sh.slot_text(vma);
    let what = format!(
        "slot {slot} [{:#x}, {:#x}) {}",
        vma.vm_start(),
        vma.vm_end(),
        perms(vma.vm_flags())
    );
    match p {
        InjectPoint::MapsAfterVmaNext => {
            format!("lock_next_vma: the RCU walk found {what}; not read-locked yet")
        }
        InjectPoint::MapsGapRecheckFailed => format!(
            "lock_next_vma: read-locked {what}, which starts beyond the last printed end, \
             and mm_lock_seq moved since the walk began: walking again from the last end \
             finds another VMA first (the gap would be false). vma_end_read, fall back"
        ),
        InjectPoint::MapsLockedUnderMmapLock => format!(
            "lock_next_vma_under_mmap_lock: mmap_lock taken for read, the walk from the last \
             printed end finds {what}; vma_start_read_locked, mmap_lock dropped"
        ),
        InjectPoint::MapsShowVma => format!("show_map prints {what}"),
        _ => unreachable!("not a maps injection point"),
    }
}

/// V1 and X, far apart, and V3 after them if `v3`.
pub(super) fn layout(lab: &mut Lab, v3: bool) -> Arc<MmStruct> {
    let a = lab.mm("A");
    map_fixed(&a, R1, RW);
    map_fixed(&a, R2, RW);
    if v3 {
        map_fixed(&a, R3, prot::PROT_READ);
    }
    a
}

/// Start a maps read of `mm` on the reader thread; its entries land in
/// the returned cell.
pub(super) fn spawn_maps_reader(
    lab: &mut Lab,
    mm: &Arc<MmStruct>,
    park_at: &[InjectPoint],
) -> Arc<Mutex<Vec<MapsEntry>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let (mm, o) = (mm.clone(), out.clone());
    lab.spawn(Role::Reader, park_at, move || {
        let (e, _, _) = show_maps(&mm);
        let n = e.len();
        *lock(&o) = e;
        format!("the read is done: {n} lines")
    });
    out
}

pub(super) fn lines(e: &[MapsEntry]) -> String {
    render(e)
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" | ")
}
