//! Race-lab scenario: the maps reader's false-gap recheck (lock_next_vma) when a writer
//! splits the VMA it walked to.

use super::maps::*;
use super::*;

pub(in crate::race_lab) const SCENARIO: Scenario = Scenario {
    name: "maps-split-gap",
    description: "The maps reader's RCU walk finds X; before it locks X, a writer \
        splits X so a new VMA takes X's lower half. lock_next_vma sees the locked X \
        start beyond the last printed end, walks again, finds the new VMA and takes it \
        under mmap_lock instead of printing a false gap; the buggy variant skips that \
        recheck and leaves out a range mapped during the whole read.",
    run,
};

fn run(buggy: bool) -> RaceReport {
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
        Role::Writer,
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
    lab.expect_parked(Role::Reader, InjectPoint::MapsAfterVmaNext);
    lab.resume(Role::Reader, &[InjectPoint::MapsAfterVmaNext]);
    lab.expect_parked(Role::Reader, InjectPoint::MapsAfterVmaNext);
    let half = R2 + LEN / 2;
    lab.as_role(Role::Writer, || {
        do_mprotect(&a, half, LEN / 2, prot::PROT_READ)
    })
    .expect("race lab mprotect");
    lab.record(
        Role::Writer,
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
    lab.run_to_end(Role::Reader);
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
    lab.finish_judged(buggy, description, verdict, caught_by, summary)
}
