//! Torture test: fault threads against threads that churn mmap / munmap /
//! mprotect / fork / exit in the same processes, for both VMA cache
//! policies. A few seconds by default; `VMASIM_TORTURE_SECS=600` for a
//! long run.
//!
//! Asserts:
//! * no use-after-reuse: no VMA ever changed while a fault held its read
//!   lock (the engine counts it; it must stay 0);
//! * every fault outcome is consistent with the layout: the stable region
//!   always faults in, the never-mapped region always gets SEGV_MAPERR;
//! * pool accounting balances: once every process has exited, no slot is
//!   live, and every slot ever created is free or waiting for a grace
//!   period (none leaked).

use rand::{Rng, SeedableRng, rngs::StdRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmasim_server::mm::{Access, CachePolicy, FaultOutcome, SimConfig, Simulator, prot::*};

mod common;
use common::sim::{fixed, torture_duration};

const P: u64 = 4096;
const STABLE: u64 = 0x1000_0000;
const STABLE_PAGES: u64 = 64;
const CHURN: u64 = 0x2000_0000;
const CHURN_PAGES: u64 = 64;
const UNMAPPED: u64 = 0x3000_0000;
const PROCS: usize = 4;

fn torture(policy: CachePolicy) {
    let sim = Arc::new(Simulator::new(SimConfig {
        vma_cache: policy,
        ..SimConfig::default()
    }));
    let pids: Vec<u32> = (0..PROCS)
        .map(|_| {
            let pid = sim.spawn().unwrap();
            sim.mmap(pid, fixed(STABLE, STABLE_PAGES * P, PROT_READ | PROT_WRITE))
                .unwrap();
            pid
        })
        .collect();
    let pids = Arc::new(pids);
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(AtomicU64::new(0));
    let churn_ops = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for t in 0..2u64 {
        let (sim, pids, stop, faults) = (sim.clone(), pids.clone(), stop.clone(), faults.clone());
        hs.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(t);
            while !stop.load(Ordering::Relaxed) {
                let pid = pids[rng.random_range(0..PROCS)];
                let access = if rng.random_bool(0.5) {
                    Access::Read
                } else {
                    Access::Write
                };
                let (region, pages) = match rng.random_range(0..3) {
                    0 => (STABLE, STABLE_PAGES),
                    1 => (CHURN, CHURN_PAGES),
                    _ => (UNMAPPED, 16),
                };
                let addr = region + rng.random_range(0..pages) * P + rng.random_range(0..P);
                let r = sim.fault(pid, addr, access).unwrap();
                match region {
                    STABLE => assert!(
                        !matches!(
                            r.outcome,
                            FaultOutcome::SegvMaperr | FaultOutcome::SegvAccerr
                        ),
                        "stable region fault at {addr:#x}: {r:?}"
                    ),
                    UNMAPPED => assert_eq!(r.outcome, FaultOutcome::SegvMaperr, "{addr:#x}"),
                    _ => {}
                }
                faults.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in 0..2u64 {
        let (sim, pids, stop, ops) = (sim.clone(), pids.clone(), stop.clone(), churn_ops.clone());
        hs.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(100 + t);
            while !stop.load(Ordering::Relaxed) {
                let pid = pids[rng.random_range(0..PROCS)];
                let page = rng.random_range(0..CHURN_PAGES);
                let n = rng.random_range(1..=(CHURN_PAGES - page).min(8));
                let (addr, len) = (CHURN + page * P, n * P);
                let prot = rng.random_range(0..8);
                match rng.random_range(0..10) {
                    0..=3 => {
                        sim.mmap(pid, fixed(addr, len, prot)).unwrap();
                    }
                    4..=5 => sim.munmap(pid, addr, len).unwrap(),
                    6..=7 => {
                        let _ = sim.mprotect(pid, addr, len, prot);
                    }
                    _ => {
                        // fork, poke the child, let it exit: every VMA of
                        // the child is freed while faults run next to it.
                        let child = sim.fork(pid).unwrap();
                        sim.fault(child, STABLE, Access::Write).unwrap();
                        let _ = sim.munmap(child, CHURN, CHURN_PAGES * P);
                        sim.exit(child).unwrap();
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t0 = Instant::now();
    while t0.elapsed() < torture_duration() {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let s = sim.stats();
    assert!(faults.load(Ordering::Relaxed) > 0 && churn_ops.load(Ordering::Relaxed) > 0);
    assert_eq!(
        s.faults.use_after_reuse, 0,
        "a VMA changed under a held read lock: {s:?}"
    );
    assert_eq!(
        s.faults.total(),
        faults.load(Ordering::Relaxed) + churn_ops_faults(&s)
    );
    for pid in pids.iter() {
        sim.exit(*pid).unwrap();
    }
    let rcu = sim.context().pool.rcu().clone();
    assert!(rcu.rcu_barrier(100_000), "call_rcu callbacks never ran");
    let p = sim.stats().pool;
    assert_eq!(p.live, 0, "slots leaked: {p:?}");
    assert_eq!(p.waiting, 0);
    assert_eq!(
        p.free, p.created,
        "every slot ever created is free again: {p:?}"
    );
    // Counted where they are, not derived: every CPU's sheaves, the barn and
    // the slab free list hold exactly the free slots (threads that exited
    // left theirs in their shard's sheaves, which belong to the cache).
    let audit = sim.context().pool.audit();
    assert_eq!(audit.total(), p.free, "{audit:?} vs {p:?}");
    assert!(p.alloc_reused > 0);
    match policy {
        CachePolicy::Typesafe => assert_eq!(p.call_rcu, 0),
        CachePolicy::Rcu => assert_eq!(p.call_rcu_avoided, 0),
    }
    eprintln!(
        "{}: {} faults, {} churn ops, {:?} lock events, reuse detected {:?}, pool {p:?}",
        policy.as_str(),
        faults.load(Ordering::Relaxed),
        churn_ops.load(Ordering::Relaxed),
        s.faults.vma_lock,
        s.faults.reuse_detected
    );
}

/// Faults the churn threads made themselves (one per fork).
fn churn_ops_faults(s: &vmasim_server::mm::SimStats) -> u64 {
    s.processes_created - PROCS as u64
}

#[test]
fn torture_typesafe() {
    torture(CachePolicy::Typesafe);
}

#[test]
fn torture_rcu() {
    torture(CachePolicy::Rcu);
}
