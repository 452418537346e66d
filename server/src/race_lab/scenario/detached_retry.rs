//! Race-lab scenario: a VMA found detached and replaced: VMA_LOCK_MISS and a second walk.

use super::*;

pub(in crate::race_lab) const SCENARIO: Scenario = Scenario {
    name: "detached-retry",
    description: "The reader finds a VMA that was just detached and replaced: \
        lock_vma_under_rcu sees vm_refcnt 0, walks again (VMA_LOCK_MISS) and \
        read-locks the new VMA.",
    run,
};

fn run(buggy: bool) -> RaceReport {
    let description = if buggy {
        "No buggy switch applies to this scenario: the retry on a detached VMA is the \
         protection that the other scenarios' buggy variants defeat. The buggy variant runs \
         the same schedule as the fixed one and ends the same way (retried): the reader's \
         RCU walk finds X and stops; the writer maps X' over X with MAP_FIXED (X detached \
         and freed); the reader sees vm_refcnt 0, walks again and read-locks X'."
    } else {
        "The reader's RCU walk finds X in mm A and stops before any check. The writer maps \
         X' (read-only) over X with MAP_FIXED: X' gets its own slot, X is detached \
         (vm_refcnt 0) and freed. The reader's increment fails on the detached X \
         (VMA_LOCK_MISS); it walks again, finds X' and read-locks it."
    };
    let mut lab = Lab::new(Bugs::default());
    let a = lab.mm("A");
    lab.map_watched(&a, R1, "A maps X", "");
    lab.stop_reader_at(&a, R1 + IN, InjectPoint::AfterRcuWalk);
    let x2 = lab.map_slot(&a, R1, prot::PROT_READ);
    lab.record(
        Role::Writer,
        format!(
            "mmap(MAP_FIXED) maps X' (read-only) over X in slot {}: X is detached \
             (vm_refcnt 0) and freed",
            x2.0
        ),
    );
    lab.run_to_end(Role::Reader);
    lab.finish(buggy, description)
}
