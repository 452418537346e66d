//! Torture test of the `/proc/PID/maps` readers: maps readers against
//! writers that split, merge, map and unmap VMAs of the same process, for
//! the per-VMA reader (`lock_next_vma`, 6.17) and the `mmap_lock` one. A
//! few seconds by default; `VMASIM_TORTURE_SECS=600` for a long run.
//!
//! Every read must keep the guarantees of Documentation/filesystems/proc.rst
//! (`check_maps_guarantees`):
//! * lines never go backwards: with the `mmap_lock` reader they never
//!   overlap; with the per-VMA reader each ends past the previous one (a
//!   VMA that merged over the read position is printed again, overlapping
//!   the line before, as upstream accepts: "the VMA will be reported twice");
//! * a range mapped during the whole read is printed: the stable VMA, and
//!   the split zone, which writers only mprotect (split and merge) and
//!   never unmap, so each of its pages must be covered by some line.
//!
//! Plus: the text is the rendering of the entries, every split-zone line
//! has one of the two protections the writer uses, no VMA changed under a
//! read lock, and the maps counters add up: one read counted per Maps call,
//! and every line printed by the per-VMA reader was read-locked from the
//! RCU walk or under a momentary `mmap_lock`.

use rand::{Rng, SeedableRng, rngs::StdRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vmasim_server::mm::{
    MapsEvent, MapsReader, SimConfig, Simulator, check_maps_guarantees, prot::*, render,
};

mod common;
use common::sim::{fixed, torture_duration};

const P: u64 = 4096;
const STABLE: u64 = 0x1000_0000;
const STABLE_PAGES: u64 = 16;
const SPLIT: u64 = 0x2000_0000;
const SPLIT_PAGES: u64 = 64;
const CHURN: u64 = 0x3000_0000;
const CHURN_PAGES: u64 = 64;

/// A random `[start, start + pages)` inside a zone of `zone_pages`.
fn sub_range(rng: &mut StdRng, base: u64, zone_pages: u64) -> (u64, u64) {
    let a = rng.random_range(0..zone_pages);
    let n = rng.random_range(1..=(zone_pages - a).min(8));
    (base + a * P, n)
}

fn torture(reader: MapsReader) {
    let sim = Arc::new(Simulator::new(SimConfig {
        maps_reader: reader,
        ..SimConfig::default()
    }));
    let pid = sim.spawn().unwrap();
    sim.mmap(pid, fixed(STABLE, STABLE_PAGES * P, PROT_READ | PROT_EXEC))
        .unwrap();
    sim.mmap(pid, fixed(SPLIT, SPLIT_PAGES * P, PROT_READ | PROT_WRITE))
        .unwrap();
    let always = [
        (STABLE, STABLE + STABLE_PAGES * P),
        (SPLIT, SPLIT + SPLIT_PAGES * P),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let lines = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let repeats = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    // Writer 1: mprotect random pieces of the split zone: splits and merges,
    // never a hole.
    {
        let (sim, stop, writes) = (sim.clone(), stop.clone(), writes.clone());
        hs.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(1);
            while !stop.load(Ordering::Relaxed) {
                let (a, n) = sub_range(&mut rng, SPLIT, SPLIT_PAGES);
                let prot = if rng.random_bool(0.5) {
                    PROT_READ
                } else {
                    PROT_READ | PROT_WRITE
                };
                sim.mprotect(pid, a, n * P, prot).unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Writer 2: map and unmap random pieces of the churn zone.
    {
        let (sim, stop, writes) = (sim.clone(), stop.clone(), writes.clone());
        hs.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(2);
            while !stop.load(Ordering::Relaxed) {
                let (a, n) = sub_range(&mut rng, CHURN, CHURN_PAGES);
                if rng.random_bool(0.5) {
                    let prot = if rng.random_bool(0.5) {
                        PROT_READ
                    } else {
                        PROT_READ | PROT_WRITE
                    };
                    sim.mmap(pid, fixed(a, n * P, prot)).unwrap();
                } else {
                    sim.munmap(pid, a, n * P).unwrap();
                }
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Two maps readers.
    for _ in 0..2 {
        let (sim, stop, reads, lines, repeats) = (
            sim.clone(),
            stop.clone(),
            reads.clone(),
            lines.clone(),
            repeats.clone(),
        );
        hs.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let m = sim.maps(pid).unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
                lines.fetch_add(m.entries.len() as u64, Ordering::Relaxed);
                if let Err(why) = check_maps_guarantees(&m.entries, &always, reader) {
                    panic!("{why}\n{}", m.text);
                }
                assert_eq!(m.text, render(&m.entries));
                let overlaps = m
                    .entries
                    .windows(2)
                    .filter(|w| w[1].start < w[0].end)
                    .count();
                repeats.fetch_add(overlaps as u64, Ordering::Relaxed);
                for e in &m.entries {
                    assert!(e.start % P == 0 && e.end % P == 0, "{}", m.text);
                    if e.start >= SPLIT && e.end <= SPLIT + SPLIT_PAGES * P {
                        let perms = e.perms();
                        assert!(perms == "r--p" || perms == "rw-p", "{}", m.text);
                    }
                }
            }
        }));
    }
    std::thread::sleep(torture_duration());
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let s = sim.stats();
    let (reads, lines, writes) = (
        reads.load(Ordering::Relaxed),
        lines.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
    );
    assert!(reads > 0 && writes > 0, "reads {reads}, writes {writes}");
    assert_eq!(s.faults.use_after_reuse, 0);
    let ev = |e: MapsEvent| s.maps[e as usize];
    eprintln!(
        "{}: {reads} reads ({lines} lines, {} repeated after a merge) against {writes} writes; locked {}, detached_retry {}, \
         gap_recheck {}, mmap_lock_fallback {}, rest_under_mmap_lock {}, unstable_tree {}",
        reader.as_str(),
        repeats.load(Ordering::Relaxed),
        ev(MapsEvent::VmaLocked),
        ev(MapsEvent::DetachedRetry),
        ev(MapsEvent::GapRecheck),
        ev(MapsEvent::MmapLockFallback),
        ev(MapsEvent::RestUnderMmapLock),
        ev(MapsEvent::UnstableTree),
    );
    match reader {
        MapsReader::PerVma => {
            assert_eq!(
                (ev(MapsEvent::ReadPerVma), ev(MapsEvent::ReadMmapLock)),
                (reads, 0)
            );
            // Every line came from a lock_next_vma that locked it from the
            // RCU walk or under mmap_lock; a fallback may also find the end.
            let locked = ev(MapsEvent::VmaLocked);
            let fallbacks = ev(MapsEvent::MmapLockFallback);
            assert!(
                locked <= lines && lines <= locked + fallbacks,
                "lines {lines}, locked {locked}, fallbacks {fallbacks}"
            );
            // vm_refcnt never nears VMA_REF_LIMIT in ordinary traffic.
            assert_eq!(ev(MapsEvent::RestUnderMmapLock), 0);
        }
        MapsReader::MmapLock => {
            assert_eq!(
                (ev(MapsEvent::ReadPerVma), ev(MapsEvent::ReadMmapLock)),
                (0, reads)
            );
            for e in MapsEvent::STEPS {
                assert_eq!(ev(e), 0, "{e:?}");
            }
        }
    }
}

#[test]
fn maps_torture_per_vma() {
    torture(MapsReader::PerVma);
}

#[test]
fn maps_torture_mmap_lock() {
    torture(MapsReader::MmapLock);
}
