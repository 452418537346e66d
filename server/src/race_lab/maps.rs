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

use super::{LEN, Lab, R1, R2, R3, RW, RaceReport, Shared, Verdict, lock, map_fixed, slot_at};
use crate::mm::mm_struct::MmStruct;
use crate::mm::mm_types::Vma;
use crate::mm::mm_types::vm_flags::{VM_EXEC, VM_MAYSHARE, VM_READ, VM_WRITE};
use crate::mm::mmap::prot;
use crate::mm::mprotect::do_mprotect;
use crate::mm::proc_maps::{MapsEntry, render};
use crate::mm::race::{Bugs, InjectPoint};
use crate::mm::{
    mm_types::MapsReader,
    task_mmu::{check_maps_guarantees, show_maps},
};
use std::sync::{Arc, Mutex};

/// `rwxp` of `vma`.
fn perms(vma: &Vma) -> String {
    let f = vma.vm_flags();
    let c = |bit, ch| if f & bit != 0 { ch } else { '-' };
    [
        c(VM_READ, 'r'),
        c(VM_WRITE, 'w'),
        c(VM_EXEC, 'x'),
        if f & VM_MAYSHARE != 0 { 's' } else { 'p' },
    ]
    .into_iter()
    .collect()
}

/// Timeline text for the maps reader's injection points.
pub(super) fn describe(sh: &Shared, p: InjectPoint, vma: &Vma) -> String {
    let slot = sh.slot_text(vma);
    let what = format!(
        "slot {slot} [{:#x}, {:#x}) {}",
        vma.vm_start(),
        vma.vm_end(),
        perms(vma)
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
fn layout(lab: &mut Lab, v3: bool) -> Arc<MmStruct> {
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
fn spawn_maps_reader(
    lab: &mut Lab,
    mm: &Arc<MmStruct>,
    park_at: &[InjectPoint],
) -> Arc<Mutex<Vec<MapsEntry>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let (mm, o) = (mm.clone(), out.clone());
    lab.spawn("reader", park_at, move || {
        let (e, _, _) = show_maps(&mm);
        let n = e.len();
        *lock(&o) = e;
        format!("the read is done: {n} lines")
    });
    out
}

fn lines(e: &[MapsEntry]) -> String {
    render(e)
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Join the threads and build the report.
fn finish(
    mut lab: Lab,
    name: &str,
    buggy: bool,
    description: &str,
    verdict: Verdict,
    caught_by: &str,
    summary: String,
) -> RaceReport {
    for h in lab.handles.drain(..) {
        if let Err(p) = h.join() {
            std::panic::resume_unwind(p);
        }
    }
    RaceReport {
        name: name.to_string(),
        buggy,
        description: description.to_string(),
        timeline: std::mem::take(&mut *lock(&lab.shared.timeline)),
        verdict,
        caught_by: caught_by.to_string(),
        summary,
    }
}

pub(super) fn maps_split_while_printing(buggy: bool) -> RaceReport {
    let description = "The maps reader prints V1, then read-locks X (vm_refcnt 1 -> 2) and \
        stops while printing it. The writer mprotects X's upper half read-only: \
        __split_vma's vma_start_write adds VMA_LOCK_OFFSET and waits for the reader. The \
        reader prints X whole, as it was, drops its read lock at the next lock_next_vma, \
        and the split goes ahead. The output is true line by line, not a snapshot: X as \
        it was while held, any line after it as it is later. No buggy switch applies: \
        the buggy variant runs the same schedule.";
    let mut lab = Lab::new(Bugs::default());
    let a = layout(&mut lab, false);
    let x = slot_at(&a, R2);
    lab.watch(x);
    lab.record(
        "writer",
        format!(
            "A maps V1 [{R1:#x}, {:#x}) and X [{R2:#x}, {:#x}) in slot {}",
            R1 + LEN,
            R2 + LEN,
            x.0
        ),
    );
    let out = spawn_maps_reader(&mut lab, &a, &[InjectPoint::MapsShowVma]);
    // V1, then X.
    lab.expect_parked("reader", InjectPoint::MapsShowVma);
    lab.resume("reader", &[InjectPoint::MapsShowVma]);
    lab.expect_parked("reader", InjectPoint::MapsShowVma);
    let pa = a.clone();
    let half = R2 + LEN / 2;
    lab.spawn("writer", &[], move || {
        match do_mprotect(&pa, half, LEN / 2, prot::PROT_READ) {
            Ok(()) => format!(
                "mprotect done: X split at {half:#x}, its upper half read-only; the writer \
                 got X's write lock only after the reader let go"
            ),
            Err(e) => format!("mprotect failed: {e}"),
        }
    });
    lab.wait_for_writer(x);
    lab.record(
        "writer",
        format!(
            "mprotect({half:#x}, {:#x}, PROT_READ): __split_vma -> vma_start_write(X) added \
             VMA_LOCK_OFFSET and waits for the reader",
            LEN / 2
        ),
    );
    lab.resume("reader", &[]);
    let r = lab.expect_done("reader");
    let w = lab.expect_done("writer");
    lab.record("reader", r);
    lab.record("writer", w);
    let printed = std::mem::take(&mut *lock(&out));
    let after = show_maps(&a).0;
    let judged = check_maps_guarantees(
        &printed,
        &[(R1, R1 + LEN), (R2, R2 + LEN)],
        MapsReader::PerVma,
    );
    let x_whole = printed.iter().any(|e| (e.start, e.end) == (R2, R2 + LEN));
    let (verdict, summary) = match judged {
        Ok(()) if x_whole => (
            Verdict::Safe,
            format!(
                "safe: the reader printed {} — X as one line, as it was while it held X's \
                 read lock, which the split waited for. Lines ascend without overlap and \
                 every range mapped throughout is covered. The map after the split: {}.",
                lines(&printed),
                lines(&after)
            ),
        ),
        Ok(()) => (
            Verdict::Safe,
            format!("the reader printed {}", lines(&printed)),
        ),
        Err(why) => (
            Verdict::GuaranteeBroken,
            format!("{why}: the reader printed {}", lines(&printed)),
        ),
    };
    finish(
        lab,
        "maps-split-while-printing",
        buggy,
        description,
        verdict,
        "",
        summary,
    )
}

pub(super) fn maps_split_gap(buggy: bool) -> RaceReport {
    let description = if buggy {
        "The maps reader prints V1; its RCU walk from V1's end finds X and stops before \
         locking it. The writer mprotects X's upper half read-only: the new slot takes the \
         lower half (which stays read-write), X keeps the upper half. The reader \
         read-locks X. Buggy: lock_next_vma skips the re-walk for a VMA that starts beyond \
         the last printed end, prints X and leaves out X's lower half, which was mapped \
         during the whole read: guarantee 2 of /proc/PID/maps broken."
    } else {
        "The maps reader prints V1; its RCU walk from V1's end finds X and stops before \
         locking it. The writer mprotects X's upper half read-only: the new slot takes the \
         lower half (which stays read-write), X keeps the upper half. The reader \
         read-locks X, sees it start beyond the last printed end with mm_lock_seq moved, \
         walks again and finds the new VMA first: it drops X and takes the next VMA under \
         mmap_lock (lock_next_vma_under_mmap_lock). It prints both halves: the map after \
         the split."
    };
    let mut lab = Lab::new(Bugs {
        skip_maps_gap_check: buggy,
        ..Bugs::default()
    });
    let a = layout(&mut lab, true);
    let x = slot_at(&a, R2);
    lab.watch(x);
    lab.record(
        "writer",
        format!(
            "A maps V1 [{R1:#x}, {:#x}), X [{R2:#x}, {:#x}) in slot {} and V3 [{R3:#x}, {:#x})",
            R1 + LEN,
            R2 + LEN,
            x.0,
            R3 + LEN
        ),
    );
    let out = spawn_maps_reader(&mut lab, &a, &[InjectPoint::MapsAfterVmaNext]);
    // The walk to V1, then the walk to X.
    lab.expect_parked("reader", InjectPoint::MapsAfterVmaNext);
    lab.resume("reader", &[InjectPoint::MapsAfterVmaNext]);
    lab.expect_parked("reader", InjectPoint::MapsAfterVmaNext);
    let half = R2 + LEN / 2;
    lab.as_role("writer", || do_mprotect(&a, half, LEN / 2, prot::PROT_READ))
        .expect("race lab mprotect");
    lab.record(
        "writer",
        format!(
            "mprotect({half:#x}, {:#x}, PROT_READ) done: __split_vma(new_below) gave the lower \
             half [{R2:#x}, {half:#x}) to slot {} (read-write), X keeps [{half:#x}, {:#x}) \
             read-only; mmap_lock released (mm_lock_seq moved)",
            LEN / 2,
            slot_at(&a, R2).0,
            R2 + LEN
        ),
    );
    let ran_recheck = !buggy;
    lab.resume("reader", &[]);
    let r = lab.expect_done("reader");
    lab.record("reader", r);
    let printed = std::mem::take(&mut *lock(&out));
    let judged = check_maps_guarantees(
        &printed,
        &[(R1, R1 + LEN), (R2, R2 + LEN), (R3, R3 + LEN)],
        MapsReader::PerVma,
    );
    let (verdict, caught_by, summary) = match judged {
        Ok(()) if ran_recheck => (
            Verdict::Caught,
            "lock_next_vma gap recheck",
            format!(
                "caught by the gap recheck: the reader printed {}. X had shrunk from below \
                 after the walk found it; printing it next would have shown a gap at \
                 [{R2:#x}, {half:#x}). The re-walk found the new VMA first, so the reader \
                 took it under mmap_lock: every line is the map after the split.",
                lines(&printed)
            ),
        ),
        Ok(()) => (
            Verdict::Safe,
            "",
            format!("the reader printed {}", lines(&printed)),
        ),
        Err(why) => (
            Verdict::GuaranteeBroken,
            "",
            format!(
                "GUARANTEE BROKEN: {why}. The reader printed {} — X's lower half \
                 [{R2:#x}, {half:#x}), mapped during the whole read, is missing.",
                lines(&printed)
            ),
        ),
    };
    finish(
        lab,
        "maps-split-gap",
        buggy,
        description,
        verdict,
        caught_by,
        summary,
    )
}
