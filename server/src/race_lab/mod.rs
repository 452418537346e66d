//! The race lab: the review's races, replayed deterministically.
//!
//! The races in `seed-review.txt` need a reader to stop at one precise
//! instruction of `lock_vma_under_rcu` while other threads free and reuse the
//! VMA it found. By chance that happens once in billions of faults, so a
//! scenario makes it happen on purpose and shows which check catches it, or,
//! with the check or the fix switched off, that it becomes a use after reuse.
//!
//! # How a scenario runs
//!
//! * **Private engine.** Each [`run`] builds its own race-lab VMA cache
//!   ([`VmaCache::new_for_race_lab`], typesafe policy, one slab), its own
//!   [`MmContext`] and its own processes, all carrying the same
//!   [`RaceHooks`]. Nothing is shared with the server's simulator, so a
//!   scenario never disturbs other clients or their statistics, and the
//!   buggy switches ([`Bugs`]) exist only inside it. The one thing it shares
//!   is crossbeam's global epoch: a parked reader is inside an RCU read
//!   section, so grace periods everywhere wait the milliseconds a scenario
//!   lasts (as a preempted reader would delay them in the kernel).
//! * **Driven threads.** The reader, and the forker / writer when they must
//!   stop half-way, run on their own threads with a *role*. When the engine
//!   calls a hook ([`InjectPoint`]) on a role thread, the lab records a
//!   timeline step and, if the conductor asked that role to stop there,
//!   parks the thread until the conductor resumes it. The conductor (the
//!   caller of [`run`]) steps the threads in a fixed order through channels:
//!   no sleeps, no timing assumptions, the same interleaving every time.
//!   A writer that is not parked but waiting *inside the protocol* (a
//!   `vma_start_write` draining readers) is observed through `vm_refcnt`
//!   reaching `VMA_LOCK_OFFSET`, which it sets before waiting.
//! * **Observed verdict.** The conductor branches on where the reader
//!   actually stops next, so the verdict is what the engine did, not what
//!   the script expected. It comes from [`RaceHooks::caught`] (checks that
//!   refused a VMA), [`RaceHooks::locks`] (generations walked to and
//!   locked) with a snapshot of each locked VMA taken at
//!   [`InjectPoint::AfterReadLock`], and the engine's own use-after-reuse
//!   counter (a VMA that changed under a held read lock).
//!
//! # Layout
//!
//! * this file: the API ([`scenarios`], [`run`], the report types);
//! * `conductor.rs`: the [`Lab`](conductor::Lab), its roles (an enum),
//!   the hooks that park them, the timeline and the verdict;
//! * `scenario/<name>.rs`: one scenario each, its name, description and
//!   schedule in its `SCENARIO`; `scenario/mod.rs` lists them once
//!   (`registry!`) and holds the helpers they share.
//!
//! A timeline step shows the *watched* slot (the one the reader walked to):
//! its `vm_refcnt`, `vm_lock_seq` (`u64::MAX` = never write-locked since
//! allocated), its debug generation, and the reader's mm's `mm_lock_seq`.

/// A scenario's name and what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScenarioInfo {
    /// The name [`run`] takes.
    pub name: &'static str,
    /// One paragraph: the race and the check or fix it is about.
    pub description: &'static str,
}

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A check refused the reused VMA (see [`RaceReport::caught_by`]); the
    /// fault fell back to `mmap_lock`.
    Caught,
    /// The reader found the VMA detached, walked again (`VMA_LOCK_MISS`)
    /// and read-locked the right VMA.
    Retried,
    /// The reader read-locked and used a VMA that is not the one it meant.
    UseAfterReuse,
    /// Nothing raced: no check had to fire.
    Safe,
    /// A maps reader printed lines that break a `/proc/PID/maps` guarantee
    /// (going backwards or overlapping, or a range mapped during the whole
    /// read left out). Expected only for a buggy variant.
    GuaranteeBroken,
}

/// One step of a scenario's timeline.
#[derive(Debug, Clone)]
pub struct RaceStep {
    /// 1-based position.
    pub step: u32,
    /// `reader`, `writer`, `forker` or `exiter`.
    pub thread: String,
    /// What happened.
    pub action: String,
    /// The watched slot's `vm_refcnt` after the step.
    pub vm_refcnt: u64,
    /// The watched slot's `vm_lock_seq` (`u64::MAX`: not write-locked since
    /// it was allocated).
    pub vm_lock_seq: u64,
    /// The reader's mm's `mm_lock_seq` (odd while `mmap_lock` is
    /// write-held).
    pub mm_lock_seq: u64,
    /// The watched slot's debug generation (bumped at each allocation).
    pub generation: u64,
}

/// The result of one scenario run.
#[derive(Debug, Clone)]
pub struct RaceReport {
    /// Scenario name.
    pub name: String,
    /// Whether the buggy variant ran.
    pub buggy: bool,
    /// What this variant does and what it should show.
    pub description: String,
    /// What happened, in order.
    pub timeline: Vec<RaceStep>,
    /// How it ended.
    pub verdict: Verdict,
    /// The check(s) that refused a reused VMA, comma-separated (for
    /// [`Verdict::Retried`], the detached check); empty if none did.
    pub caught_by: String,
    /// One or two sentences on the outcome.
    pub summary: String,
}

/// [`run`] was given a name [`scenarios`] does not list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown race scenario {0:?}")]
pub struct UnknownScenario(pub String);

/// A scenario: its name (written only here, in its file's `SCENARIO`),
/// what it shows, and how to run it. `run` leaves the report's `name` to
/// the registry.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) run: fn(bool) -> RaceReport,
}

mod conductor;
mod scenario;

use scenario::SCENARIOS;

/// Every scenario, in order.
pub fn scenarios() -> Vec<ScenarioInfo> {
    SCENARIOS
        .iter()
        .map(|s| ScenarioInfo {
            name: s.name,
            description: s.description,
        })
        .collect()
}

/// Run scenario `name`, the buggy variant if `buggy`. Blocks for the few
/// milliseconds the scenario's threads need.
pub fn run(name: &str, buggy: bool) -> Result<RaceReport, UnknownScenario> {
    let s = SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| UnknownScenario(name.to_string()))?;
    let mut report = (s.run)(buggy);
    report.name = s.name.to_string();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::mm_types::VMA_LOCK_OFFSET;

    const REPS: usize = 100;

    fn check(name: &str, buggy: bool, want: Verdict, caught_by: &str) {
        for i in 0..REPS {
            let r = run(name, buggy).unwrap();
            assert_eq!(
                (r.verdict, r.caught_by.as_str()),
                (want, caught_by),
                "{name} buggy={buggy} repetition {i}: {}\n{:#?}",
                r.summary,
                r.timeline
            );
            assert_eq!((r.name.as_str(), r.buggy), (name, buggy));
            assert!(!r.timeline.is_empty());
            assert!(
                r.timeline
                    .iter()
                    .enumerate()
                    .all(|(i, s)| s.step as usize == i + 1)
            );
        }
    }

    /// The whole timeline (not only the verdict) is the same every run.
    fn deterministic(name: &str, buggy: bool) {
        let key = |r: &RaceReport| {
            r.timeline
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {} {:#x} {} {}",
                        s.thread, s.action, s.vm_refcnt, s.vm_lock_seq, s.mm_lock_seq, s.generation
                    )
                })
                .collect::<Vec<_>>()
        };
        let first = key(&run(name, buggy).unwrap());
        for _ in 0..20 {
            assert_eq!(
                key(&run(name, buggy).unwrap()),
                first,
                "{name} buggy={buggy}"
            );
        }
    }

    #[test]
    fn dup_copies_refcnt_fixed_retries() {
        check(
            "dup-copies-refcnt",
            false,
            Verdict::Retried,
            "vm_refcnt == 0 (detached)",
        );
    }

    #[test]
    fn dup_copies_refcnt_buggy_uses_after_reuse() {
        check("dup-copies-refcnt", true, Verdict::UseAfterReuse, "");
    }

    #[test]
    fn exit_without_detach_fixed_is_caught() {
        check(
            "exit-without-detach",
            false,
            Verdict::Caught,
            "vm_refcnt == 0 (detached)",
        );
    }

    #[test]
    fn exit_without_detach_buggy_uses_after_reuse() {
        check("exit-without-detach", true, Verdict::UseAfterReuse, "");
    }

    #[test]
    fn reuse_between_check_and_lock_fixed_is_caught_by_both_rechecks() {
        check(
            "reuse-between-check-and-lock",
            false,
            Verdict::Caught,
            "vm_mm recheck, range recheck",
        );
    }

    #[test]
    fn reuse_between_check_and_lock_buggy_uses_after_reuse() {
        check(
            "reuse-between-check-and-lock",
            true,
            Verdict::UseAfterReuse,
            "",
        );
    }

    #[test]
    fn writer_waits_for_readers_fixed_is_safe() {
        check("writer-waits-for-readers", false, Verdict::Safe, "");
        let r = run("writer-waits-for-readers", false).unwrap();
        let refcnts: Vec<u64> = r.timeline.iter().map(|s| s.vm_refcnt).collect();
        for want in [1, 2, u64::from(VMA_LOCK_OFFSET) + 2, 0] {
            assert!(refcnts.contains(&want), "{want:#x} not in {refcnts:x?}");
        }
    }

    #[test]
    fn writer_waits_for_readers_buggy_uses_after_reuse() {
        check("writer-waits-for-readers", true, Verdict::UseAfterReuse, "");
    }

    #[test]
    fn detached_retry_retries_in_both_variants() {
        check(
            "detached-retry",
            false,
            Verdict::Retried,
            "vm_refcnt == 0 (detached)",
        );
        check(
            "detached-retry",
            true,
            Verdict::Retried,
            "vm_refcnt == 0 (detached)",
        );
    }

    #[test]
    fn maps_split_while_printing_prints_the_held_vma_whole() {
        for buggy in [false, true] {
            check("maps-split-while-printing", buggy, Verdict::Safe, "");
            let r = run("maps-split-while-printing", buggy).unwrap();
            // X printed whole although the split finished during the read.
            assert!(
                r.summary
                    .contains("20000000-20004000 rw-p 00000000 00:00 0 — X as one line"),
                "{}",
                r.summary
            );
            // The writer waited for the reader's read lock.
            assert!(
                r.timeline
                    .iter()
                    .any(|s| s.vm_refcnt == u64::from(VMA_LOCK_OFFSET) + 2)
            );
        }
    }

    #[test]
    fn maps_split_gap_fixed_rechecks_buggy_leaves_a_hole() {
        check(
            "maps-split-gap",
            false,
            Verdict::Caught,
            "lock_next_vma gap recheck",
        );
        let r = run("maps-split-gap", false).unwrap();
        // Both halves printed, the lower one locked under mmap_lock.
        assert!(
            r.summary.contains("20000000-20002000 rw-p"),
            "{}",
            r.summary
        );
        assert!(
            r.summary.contains("20002000-20004000 r--p"),
            "{}",
            r.summary
        );
        assert!(
            r.timeline
                .iter()
                .any(|s| s.action.starts_with("lock_next_vma_under_mmap_lock"))
        );
        check("maps-split-gap", true, Verdict::GuaranteeBroken, "");
        let r = run("maps-split-gap", true).unwrap();
        assert!(!r.summary.contains("20000000-20002000"), "{}", r.summary);
        assert!(
            r.summary.contains("guarantee 2 broken: 0x20000000"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn timelines_are_deterministic() {
        for s in scenarios() {
            deterministic(s.name, false);
            deterministic(s.name, true);
        }
    }

    #[test]
    fn every_listed_scenario_runs_and_names_are_unique() {
        let list = scenarios();
        assert_eq!(list.len(), 7);
        for (i, s) in list.iter().enumerate() {
            assert!(list[..i].iter().all(|o| o.name != s.name));
            assert!(!s.description.is_empty());
            run(s.name, false).unwrap();
        }
    }

    #[test]
    fn unknown_scenario_is_an_error() {
        assert_eq!(
            run("nope", false).unwrap_err(),
            UnknownScenario("nope".into())
        );
        assert_eq!(
            UnknownScenario("nope".into()).to_string(),
            "unknown race scenario \"nope\""
        );
    }
}
