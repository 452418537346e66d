//! The fault path.
//!
//! * `fault_single`: one thread faulting on already-populated pages, the
//!   lockless fast path end to end (RCU walk, `vma_start_read`, PTE check,
//!   counters). Per-fault time is the figure.
//! * `fault_vs_writer/{per-vma,mmap-lock}/{disjoint,adjacent}`: faults in
//!   one VMA while another thread churns the same mm the way a JIT or an
//!   allocator does (mmap, mprotect flips, munmap). *disjoint*: the writer's
//!   VMAs neither touch nor merge with the faulted one; with `mmap-lock`
//!   every fault queues behind the writer, with per-VMA locks it never
//!   meets it. *adjacent*: the writer maps right next to the faulted VMA
//!   with the same flags, so the kernel's merge rules make the writer's
//!   mapping part of the faulted VMA and every mprotect splits (and
//!   write-locks) it: per-VMA faults abort to `mmap_lock` as often as the
//!   writer runs.
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

/// Where the writer works, relative to the faulted VMA.
#[derive(Clone, Copy)]
enum Writer {
    /// At a fixed address 1 GiB below, with a guard gap on both sides and
    /// `PROT_EXEC` on top so nothing it maps can merge with anything: the
    /// faulted VMA is never touched (a JIT's code cache far from the heap).
    Disjoint,
    /// Wherever `mmap` puts it: top-down, right below the faulted VMA, with
    /// the same flags, so `vma_merge_new_range` merges it into the faulted
    /// VMA and every `mprotect` splits that VMA again.
    Adjacent,
}

impl Writer {
    fn as_str(self) -> &'static str {
        match self {
            Writer::Disjoint => "disjoint",
            Writer::Adjacent => "adjacent",
        }
    }
}

/// One writer round: mmap 16 pages, fault one in, 4 mprotect flips, munmap.
fn writer_round(sim: &Simulator, pid: u32, where_: Writer, far: u64) {
    let (addr, flags, prot) = match where_ {
        Writer::Disjoint => (far, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, PROT_EXEC),
        Writer::Adjacent => (0, MAP_PRIVATE | MAP_ANONYMOUS, 0),
    };
    let a = sim
        .mmap(
            pid,
            MmapArgs {
                addr,
                len: 16 * 4096,
                prot: PROT_READ | PROT_WRITE | prot,
                flags,
                ..Default::default()
            },
        )
        .unwrap();
    sim.fault(pid, a, Access::Write).unwrap();
    for _ in 0..4 {
        sim.mprotect(pid, a, 16 * 4096, PROT_READ | prot).unwrap();
        sim.mprotect(pid, a, 16 * 4096, PROT_READ | PROT_WRITE | prot)
            .unwrap();
    }
    sim.munmap(pid, a, 16 * 4096).unwrap();
}

fn bench_writer(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault_vs_writer");
    g.throughput(Throughput::Elements(1));
    for mode in [FaultLockMode::PerVma, FaultLockMode::MmapLock] {
        for where_ in [Writer::Disjoint, Writer::Adjacent] {
            let (sim, pid, addr) = setup(mode);
            let far = addr - (1 << 30);
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (sim, stop) = (sim.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        writer_round(&sim, pid, where_, far);
                    }
                })
            };
            let mm = sim.mm(pid).unwrap();
            g.bench_function(BenchmarkId::new(mode.as_str(), where_.as_str()), |b| {
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
            writer.join().unwrap();
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_single, bench_writer
}
criterion_main!(benches);
