//! Race-lab scenario: the review's race: a VMA freed and reused between the reader's
//! vm_lock_seq check and its reference; the vm_mm and range rechecks.

use super::*;

pub(in crate::race_lab) const SCENARIO: Scenario = Scenario {
    name: "reuse-between-check-and-lock",
    description: "The race in the review: the reader passes the vm_lock_seq check, \
        the VMA is freed and reused before it takes its reference. Reuse by another \
        mm is caught by the vm_mm recheck, reuse by the same mm at another range by \
        the range recheck; the buggy variant skips both re-checks.",
    run,
};

fn run(buggy: bool) -> RaceReport {
    let description = if buggy {
        "Two sub-cases in one timeline, both with the re-checks after the increment \
         switched off (skip_mm_check, skip_range_check). (a) Reuse by another mm: the \
         reader stops after the vm_lock_seq check on X in mm A; X is unmapped and mm C maps \
         the same range, getting X's slot: the reader read-locks C's VMA as A's. (b) Reuse \
         by the same mm at another range: the reader stops on X2; X2 is unmapped and A maps \
         Z at another range, getting X2's slot: the reader read-locks Z for an address Z \
         does not map. The vm_lock_seq recheck cannot help: the slot was unlocked by its \
         new owner, and a vm_lock_seq written in another mm, or in an earlier write cycle \
         of A, never equals A's current mm_lock_seq."
    } else {
        "Two sub-cases in one timeline. (a) Reuse by another mm: the reader stops after the \
         vm_lock_seq check on X in mm A; X is unmapped and mm C maps the same range, getting \
         X's slot (attached, vm_mm = C): the vm_mm recheck after the increment refuses it. \
         (b) Reuse by the same mm at another range: the reader stops on X2; X2 is unmapped \
         and A maps Z at another range, getting X2's slot (vm_mm = A): the range recheck \
         refuses it. Both faults fall back to mmap_lock and get SEGV_MAPERR, since nothing \
         is mapped there any more. The vm_lock_seq recheck cannot catch either: the new \
         owner unlocked the slot."
    };
    let mut lab = Lab::new(Bugs {
        skip_mm_check: buggy,
        skip_range_check: buggy,
        ..Bugs::default()
    });
    let a = lab.mm("A");
    let c = lab.mm("C");

    // (a) Reuse by another mm at the same range.
    lab.map_watched(&a, R1, "(a) A maps X", "");
    lab.stop_reader_at(&a, R1 + IN, InjectPoint::BetweenSeqCheckAndInc);
    lab.munmap(&a, R1, "(a) ", "X");
    let reused = lab.map_slot(&c, R1, RW);
    lab.record(
        Role::Writer,
        format!(
            "(a) C maps the same range and gets slot {} (attached, vm_mm = C)",
            reused.0
        ),
    );
    let r = lab.expect_done_after_resume(Role::Reader);
    lab.record(Role::Reader, format!("(a) {r}"));

    // (b) Reuse by the same mm at another range.
    lab.map_watched(&a, R2, "(b) A maps X2", " (the timeline now watches it)");
    lab.stop_reader_at(&a, R2 + IN, InjectPoint::BetweenSeqCheckAndInc);
    lab.munmap(&a, R2, "(b) ", "X2");
    let reused = lab.map_slot(&a, R3, RW);
    lab.record(
        Role::Writer,
        format!(
            "(b) A maps Z at [{R3:#x}, {:#x}) and gets slot {} (attached, vm_mm = A)",
            R3 + LEN,
            reused.0
        ),
    );
    let r = lab.expect_done_after_resume(Role::Reader);
    lab.record(Role::Reader, format!("(b) {r}"));
    lab.finish(buggy, description)
}
