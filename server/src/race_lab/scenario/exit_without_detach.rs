//! Race-lab scenario: exit_mmap freeing VMAs still attached versus detaching each first.

use super::*;

pub(in crate::race_lab) const SCENARIO: Scenario = Scenario {
    name: "exit-without-detach",
    description: "exit_mmap frees VMAs still marked attached (before the fix) versus \
        detaching each one first. A reader stopped before its increment meets the \
        exited process's slot handed out again by another process's fork.",
    run,
};

fn run(buggy: bool) -> RaceReport {
    let description = if buggy {
        "The reader faults at X in mm A (A maps X and Y) and stops between the vm_lock_seq \
         check and its vm_refcnt increment. A exits: exit_mmap frees X, then Y. Process D \
         (two VMAs) forks into E: dup_mmap allocates both slots up front, getting Y's slot \
         and then X's, and stops after copying D's first VMA into Y's slot, so X's slot is \
         handed out again but not written yet. Buggy: X was freed still attached and \
         vm_area_alloc does not reset vm_refcnt, so the reused slot reads vm_refcnt 1, \
         vm_mm = A, X's range and an unlocked vm_lock_seq: the reader passes every check \
         and read-locks E's VMA-to-be; the fork then copies D's second VMA into it under \
         the reader and its vma_start_write waits for the reader."
    } else {
        "The reader faults at X in mm A (A maps X and Y) and stops between the vm_lock_seq \
         check and its vm_refcnt increment. A exits: exit_mmap frees X, then Y. Process D \
         (two VMAs) forks into E: dup_mmap allocates both slots up front, getting Y's slot \
         and then X's, and stops after copying D's first VMA into Y's slot, so X's slot is \
         handed out again but not written yet. Fixed: exit_mmap detached X (vm_refcnt 0) \
         before freeing it, so the reader's increment fails; it walks again, A's tree is \
         empty, and the fault falls back to mmap_lock and gets SEGV_MAPERR."
    };
    let mut lab = Lab::new(Bugs {
        exit_without_detach: buggy,
        ..Bugs::default()
    });
    let a = lab.mm("A");
    let d = lab.mm("D");
    let e = lab.mm("E");
    let addr = R1 + IN;
    map_fixed(&a, R1, RW);
    map_fixed(&a, R2, RW);
    map_fixed(&d, R3, RW);
    map_fixed(&d, R4, RW);
    let x = slot_at(&a, addr);
    lab.watch(x);
    lab.record(
        Role::Writer,
        format!(
            "A maps X in slot {} and Y in slot {}; D maps two VMAs in slots {} and {}",
            x.0,
            slot_at(&a, R2).0,
            slot_at(&d, R3).0,
            slot_at(&d, R4).0
        ),
    );
    lab.stop_reader_at(&a, addr, InjectPoint::BetweenSeqCheckAndInc);
    lab.as_role(Role::Exiter, || exit_mmap(&a))
        .expect("race lab exit");
    lab.record(
        Role::Exiter,
        "exit_mmap done: A is dead, its tree empty; Y's slot is first on the free list, \
         then X's",
    );
    lab.stop_fork_in_dup(&d, &e, "dup_mmap done: E has copies of D's two VMAs");
    lab.record(
        Role::Forker,
        format!(
            "vm_area_alloc handed X's slot {} out again for E's second VMA (generation \
             bumped); nothing written to it yet",
            x.0
        ),
    );
    lab.resume(
        Role::Reader,
        &[InjectPoint::AfterRcuWalk, InjectPoint::AfterReadLock],
    );
    match lab.wait(Role::Reader) {
        Event::Parked(InjectPoint::AfterReadLock) => {
            lab.resume(Role::Forker, &[]);
            lab.wait_for_writer(x);
            lab.record(
                Role::Forker,
                "copied D's second VMA into the slot the reader holds (vm_mm = E); \
                 vma_start_write waits for the reader",
            );
            lab.release_and_record(Role::Reader, Role::Forker);
        }
        Event::Parked(InjectPoint::AfterRcuWalk) => {
            // Not expected (A's tree is empty), but harmless: finish in order.
            lab.run_to_end(Role::Reader);
            lab.run_to_end(Role::Forker);
        }
        Event::Done(r) => {
            lab.record(Role::Reader, r);
            lab.run_to_end(Role::Forker);
        }
        e => panic!("race lab: unexpected reader event {e:?}"),
    }
    lab.finish(buggy, description)
}
