//! Race-lab scenario: vm_area_dup copying vm_refcnt (v8) versus vm_area_init_from, with a
//! reader stopped before its increment.

use super::*;

pub(in crate::race_lab) const SCENARIO: Scenario = Scenario {
    name: "dup-copies-refcnt",
    description: "vm_area_dup copies vm_refcnt with the rest of the VMA (v8 of the \
        series, before the fix) versus vm_area_init_from, which leaves the new VMA \
        detached until it is in the tree. A reader stopped before its vm_refcnt \
        increment meets its freed VMA's slot reused by fork for the child's copy.",
    run,
};

fn run(buggy: bool) -> RaceReport {
    let description = if buggy {
        "The reader faults at X in mm A and stops between the vm_lock_seq check and its \
         vm_refcnt increment. The writer maps P over X with MAP_FIXED: X is detached and \
         freed, its slot first on the free list. A forks into B: vm_area_dup takes X's slot \
         for B's copy of P and stops after the copy, before vm_mm is set to B. Buggy (v8): \
         the whole-struct copy sets the slot's vm_refcnt to P's 1, so it looks attached and \
         still says vm_mm = A with X's range: the reader passes every check and read-locks \
         B's VMA-to-be as A's VMA (vm_refcnt 2). Then vma_lock_init(new, true) resets \
         vm_refcnt to 0 under the reader, so the fork neither waits for it nor notices it: \
         it sets vm_mm = B and attaches the VMA (0 -> 1) while the reader uses it, and the \
         reader's vma_end_read leaves B's attached VMA at vm_refcnt 0."
    } else {
        "The reader faults at X in mm A and stops between the vm_lock_seq check and its \
         vm_refcnt increment. The writer maps P over X with MAP_FIXED: X is detached and \
         freed, its slot first on the free list. A forks into B: vm_area_dup takes X's slot \
         for B's copy of P and stops after the copy, before vm_mm is set to B. Fixed: \
         vm_area_init_from leaves the slot's vm_refcnt at 0, so the reader's increment \
         fails (detached); it walks again (VMA_LOCK_MISS) and finds P, which the fork holds \
         write-locked; once the fork releases A it read-locks P."
    };
    let mut lab = Lab::new(Bugs {
        dup_copies_refcnt: buggy,
        ..Bugs::default()
    });
    let a = lab.mm("A");
    let b = lab.mm("B");
    let x = lab.map_watched(&a, R1, "A maps X", "");
    lab.stop_reader_at(&a, R1 + IN, InjectPoint::BetweenSeqCheckAndInc);
    let p = lab.map_slot(&a, R1, RW);
    lab.record(
        Role::Writer,
        format!(
            "mmap(MAP_FIXED) maps P over X in slot {}: X is detached (vm_refcnt 0) and \
             freed; slot {} is first on the free list",
            p.0, x.0
        ),
    );
    lab.stop_fork_in_dup(
        &a,
        &b,
        "dup_mmap done: B has its copy of P; A's and B's mmap_lock released",
    );
    lab.resume(
        Role::Reader,
        &[InjectPoint::AfterRcuWalk, InjectPoint::AfterReadLock],
    );
    match lab.wait(Role::Reader) {
        Event::Parked(InjectPoint::AfterReadLock) => {
            // Got in while the copied count said "attached". The pre-fix
            // code then re-initialised the lock under the reader...
            lab.resume(Role::Forker, &[InjectPoint::InVmaLockInit]);
            lab.expect_parked(Role::Forker, InjectPoint::InVmaLockInit);
            // ...so nothing makes the fork wait: it sets vm_mm = B and
            // attaches the VMA (0 -> 1) with the reader still inside.
            lab.run_to_end(Role::Forker);
            lab.run_to_end(Role::Reader);
            lab.record(
                Role::Reader,
                format!(
                    "vma_end_read dropped the reference it took before the reset: B's VMA in \
                     slot {} is in B's tree with vm_refcnt {} (looks detached; B's faults on \
                     it now miss)",
                    x.0,
                    lab.shared.pool.get(x).vm_refcnt()
                ),
            );
        }
        Event::Parked(InjectPoint::AfterRcuWalk) => {
            // Refused and walking again: P is write-locked by the fork,
            // so let the fork finish before the reader checks it.
            lab.run_to_end(Role::Forker);
            lab.run_to_end(Role::Reader);
        }
        Event::Done(r) => {
            lab.record(Role::Reader, r);
            lab.run_to_end(Role::Forker);
        }
        e => panic!("race lab: unexpected reader event {e:?}"),
    }
    lab.finish(buggy, description)
}
