//! The fault path.
//!
//! * `fault_single`: one thread faulting on already-populated pages, the
//!   lockless fast path end to end (RCU walk, `vma_start_read`, PTE check,
//!   counters). Per-fault time is the figure.
//! * `fault_vs_churn`: faults in one VMA while another thread churns the
//!   same mm the way a JIT or an allocator does (mmap, mprotect flips,
//!   munmap), `per-vma` vs `mmap-lock` mode. With `mmap-lock`, every fault
//!   queues behind the writer; with per-VMA locks, faults in an untouched
//!   VMA never meet it.
//!
//! `cargo bench -p vmasim-server --bench fault`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vmasim_server::mm::fault::{Access, FaultLockMode};
use vmasim_server::mm::mmap::{MmapArgs, map::*, prot::*};
use vmasim_server::mm::sim::{SimConfig, Simulator};

const PAGES: u64 = 256;

fn setup(mode: FaultLockMode) -> (Arc<Simulator>, u32, u64) {
    let sim = Arc::new(Simulator::new(SimConfig {
        fault_lock: mode,
        ..SimConfig::default()
    }));
    let pid = sim.spawn().unwrap();
    let addr = sim
        .mmap(
            pid,
            MmapArgs {
                len: PAGES * 4096,
                prot: PROT_READ | PROT_WRITE,
                flags: MAP_PRIVATE | MAP_ANONYMOUS,
                ..Default::default()
            },
        )
        .unwrap();
    for p in 0..PAGES {
        sim.fault(pid, addr + p * 4096, Access::Write).unwrap();
    }
    (sim, pid, addr)
}

fn bench_single(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault_single");
    g.throughput(Throughput::Elements(1));
    for mode in [FaultLockMode::PerVma, FaultLockMode::MmapLock] {
        let (sim, pid, addr) = setup(mode);
        let mm = sim.mm(pid).unwrap();
        g.bench_function(mode.as_str(), |b| {
            let mut i = 0u64;
            b.iter(|| {
                i = (i + 1) % PAGES;
                black_box(vmasim_server::mm::fault::do_user_addr_fault(
                    &mm,
                    addr + i * 4096,
                    Access::Read,
                ))
            })
        });
    }
    g.finish();
}

fn bench_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault_vs_churn");
    g.throughput(Throughput::Elements(1));
    for mode in [FaultLockMode::PerVma, FaultLockMode::MmapLock] {
        let (sim, pid, addr) = setup(mode);
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (sim, stop) = (sim.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let a = sim
                        .mmap(
                            pid,
                            MmapArgs {
                                len: 16 * 4096,
                                prot: PROT_READ | PROT_WRITE,
                                flags: MAP_PRIVATE | MAP_ANONYMOUS,
                                ..Default::default()
                            },
                        )
                        .unwrap();
                    sim.fault(pid, a, Access::Write).unwrap();
                    for _ in 0..4 {
                        sim.mprotect(pid, a, 16 * 4096, PROT_READ).unwrap();
                        sim.mprotect(pid, a, 16 * 4096, PROT_READ | PROT_WRITE)
                            .unwrap();
                    }
                    sim.munmap(pid, a, 16 * 4096).unwrap();
                }
            })
        };
        let mm = sim.mm(pid).unwrap();
        g.bench_function(BenchmarkId::new(mode.as_str(), "churn"), |b| {
            let mut i = 0u64;
            b.iter(|| {
                i = (i + 1) % PAGES;
                black_box(vmasim_server::mm::fault::do_user_addr_fault(
                    &mm,
                    addr + i * 4096,
                    Access::Read,
                ))
            })
        });
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_single, bench_churn
}
criterion_main!(benches);
