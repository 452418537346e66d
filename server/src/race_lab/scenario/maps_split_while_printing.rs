//! Race-lab scenario: the maps reader holding a VMA while a writer splits it.

use super::maps::*;
use super::*;

pub(in crate::race_lab) const SCENARIO: Scenario = Scenario {
    name: "maps-split-while-printing",
    description: "A /proc/PID/maps reader under per-VMA locks (lock_next_vma, 6.17) \
        holds X read-locked while printing it; a writer's mprotect splits X and waits \
        in vma_start_write. X is printed whole, as it was while held: each line is \
        true at one moment, the read is not a snapshot.",
    run,
};

fn run(buggy: bool) -> RaceReport {
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
        Role::Writer,
        format!(
            "A maps V1 [{R1:#x}, {:#x}) and X [{R2:#x}, {:#x}) in slot {}",
            R1 + LEN,
            R2 + LEN,
            x.0
        ),
    );
    let out = spawn_maps_reader(&mut lab, &a, &[InjectPoint::MapsShowVma]);
    // V1, then X.
    lab.expect_parked(Role::Reader, InjectPoint::MapsShowVma);
    lab.resume(Role::Reader, &[InjectPoint::MapsShowVma]);
    lab.expect_parked(Role::Reader, InjectPoint::MapsShowVma);
    let pa = a.clone();
    let half = R2 + LEN / 2;
    lab.spawn(Role::Writer, &[], move || {
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
        Role::Writer,
        format!(
            "mprotect({half:#x}, {:#x}, PROT_READ): __split_vma -> vma_start_write(X) added \
             VMA_LOCK_OFFSET and waits for the reader",
            LEN / 2
        ),
    );
    lab.release_and_record(Role::Reader, Role::Writer);
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
    lab.finish_judged(buggy, description, verdict, "", summary)
}
