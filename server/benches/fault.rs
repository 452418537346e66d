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
//!   writer runs. *other-mm*: the disjoint writer in another process, the
//!   control arm (same CPU competition, no shared mm).
//!
//! Each benchmark also prints one `writer-probe {json}` line on stdout (read
//! by `.ci/bench-figures`): over the timed batches, the writer's rounds and
//! on-CPU share and the faulting thread's on-CPU, runnable-waiting and
//! blocked shares (from `/proc/<pid>/task/<tid>/schedstat`), and the
//! faulter's CPU time per fault. On a loaded machine a writer that is not
//! on a CPU contends with nothing, and a figure is only worth what that
//! line says about it.
//!
//! `cargo bench -p vmasim-server --bench fault`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmasim_server::mm::{
    Access, FaultLockMode, MmapArgs, SimConfig, Simulator, Task, map::*, prot::*,
};

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
        let task = sim.task(pid).unwrap();
        let mut probe = Probe::default();
        g.bench_function(mode.as_str(), |b| {
            timed_faults(b, &task, addr, None, &mut probe)
        });
        probe.report(&format!("fault_single/{}", mode.as_str()));
    }
    g.finish();
}

/// The timed loop of both groups: read faults on the populated pages, one
/// after the other, each batch bracketed by the [`Probe`] readings.
fn timed_faults(
    b: &mut criterion::Bencher<'_>,
    task: &Task,
    addr: u64,
    writer: Option<(&AtomicU64, &str)>,
    probe: &mut Probe,
) {
    let mut i = 0u64;
    b.iter_custom(|iters| {
        let w0 = writer.map_or(0, |(r, _)| r.load(Ordering::Relaxed));
        let (wr0, _) = writer.map_or((0, 0), |(_, p)| schedstat(p));
        let (fr0, fw0) = schedstat(SELF_SCHEDSTAT);
        let t = Instant::now();
        for _ in 0..iters {
            i = (i + 1) % PAGES;
            black_box(task.fault(addr + i * 4096, Access::Read));
        }
        let el = t.elapsed();
        let (fr1, fw1) = schedstat(SELF_SCHEDSTAT);
        let (wr1, _) = writer.map_or((0, 0), |(_, p)| schedstat(p));
        probe.wall_ns += el.as_nanos() as u64;
        probe.faults += iters;
        // Relaxed: a count read after the fact.
        probe.writer_rounds += writer.map_or(0, |(r, _)| r.load(Ordering::Relaxed)) - w0;
        probe.writer_run_ns += wr1.saturating_sub(wr0);
        probe.faulter_run_ns += fr1.saturating_sub(fr0);
        probe.faulter_wait_ns += fw1.saturating_sub(fw0);
        el
    })
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
    /// The *disjoint* rounds, in another process of the same simulator:
    /// the control arm. The faulting thread shares the machine, the VMA
    /// cache, the epoch and the counters with a busy writer, but not the
    /// mm, so this is its "uncontended" time under the same CPU
    /// competition (on a loaded machine the writer's CPU share is taken
    /// from the faulter as much as any cache line is).
    OtherMm,
}

impl Writer {
    fn as_str(self) -> &'static str {
        match self {
            Writer::Disjoint => "disjoint",
            Writer::Adjacent => "adjacent",
            Writer::OtherMm => "other-mm",
        }
    }
}

/// One writer round: mmap 16 pages, fault one in, 4 mprotect flips, munmap.
fn writer_round(sim: &Simulator, pid: u32, where_: Writer, far: u64) {
    let (addr, flags, prot) = match where_ {
        Writer::Disjoint | Writer::OtherMm => {
            (far, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, PROT_EXEC)
        }
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

/// Where a thread's time went: `/proc/<pid>/task/<tid>/schedstat` gives
/// the nanoseconds it ran and the nanoseconds it sat runnable waiting for a
/// CPU; the rest of the wall time it was blocked (asleep on a lock).
const SELF_SCHEDSTAT: &str = "/proc/thread-self/schedstat";

fn schedstat(path: &str) -> (u64, u64) {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

/// What the timed batches of one `fault_vs_writer` benchmark saw, so that
/// a figure can be checked for honesty: did the writer run *while* the
/// faults were timed (on a loaded 2-core machine it may not), and did the
/// `mmap-lock` faults really wait for it?
#[derive(Default)]
struct Probe {
    /// Wall time of the timed batches (warm-up included), ns.
    wall_ns: u64,
    /// Faults timed.
    faults: u64,
    /// Writer rounds completed during the timed batches.
    writer_rounds: u64,
    /// Writer thread on CPU during the batches, ns.
    writer_run_ns: u64,
    /// Faulting thread on CPU / runnable but waiting for a CPU, ns.
    faulter_run_ns: u64,
    faulter_wait_ns: u64,
}

impl Probe {
    /// One line on stdout that `.ci/bench-figures` reads back
    /// (`writer-probe {json}`), and a readable one on stderr.
    fn report(&self, id: &str) {
        if self.faults == 0 {
            return; // filtered out
        }
        let w = self.wall_ns.max(1) as f64;
        let pct = |x: u64| 100.0 * x as f64 / w;
        let blocked = self
            .wall_ns
            .saturating_sub(self.faulter_run_ns + self.faulter_wait_ns);
        println!(
            "writer-probe {{\"id\":\"{id}\",\"wall_s\":{:.3},\"faults\":{},\"writer_rounds\":{},\"writer_rounds_per_s\":{:.0},\"writer_cpu_pct\":{:.1},\"faulter_cpu_pct\":{:.1},\"faulter_runnable_pct\":{:.1},\"faulter_blocked_pct\":{:.1},\"cpu_ns_per_fault\":{:.1}}}",
            w / 1e9,
            self.faults,
            self.writer_rounds,
            self.writer_rounds as f64 / (w / 1e9),
            pct(self.writer_run_ns),
            pct(self.faulter_run_ns),
            pct(self.faulter_wait_ns),
            pct(blocked),
            self.cpu_ns_per_fault(),
        );
        eprintln!(
            "{id}: {:.2} s timed, {} faults, writer {} rounds ({:.0}/s, one per {:.0} faults); \
             writer on CPU {:.0}%, faulter on CPU {:.0}% / runnable {:.0}% / blocked {:.0}%; \
             {:.1} ns of faulter CPU per fault",
            w / 1e9,
            self.faults,
            self.writer_rounds,
            self.writer_rounds as f64 / (w / 1e9),
            self.faults as f64 / self.writer_rounds.max(1) as f64,
            pct(self.writer_run_ns),
            pct(self.faulter_run_ns),
            pct(self.faulter_wait_ns),
            pct(blocked),
            self.cpu_ns_per_fault(),
        );
    }

    /// The faulting thread's CPU time per fault: what a fault costs when
    /// it runs, whatever share of the CPU the machine's load leaves it.
    fn cpu_ns_per_fault(&self) -> f64 {
        self.faulter_run_ns as f64 / self.faults.max(1) as f64
    }
}

fn bench_writer(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault_vs_writer");
    g.throughput(Throughput::Elements(1));
    for mode in [FaultLockMode::PerVma, FaultLockMode::MmapLock] {
        for where_ in [Writer::Disjoint, Writer::Adjacent, Writer::OtherMm] {
            let (sim, pid, addr) = setup(mode);
            let far = addr - (1 << 30);
            let writer_pid = match where_ {
                Writer::OtherMm => sim.spawn().unwrap(),
                Writer::Disjoint | Writer::Adjacent => pid,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let rounds = Arc::new(AtomicU64::new(0));
            let (tx, rx) = std::sync::mpsc::channel();
            let writer = {
                let (sim, stop, rounds) = (sim.clone(), stop.clone(), rounds.clone());
                std::thread::spawn(move || {
                    // "<pid>/task/<tid>": where this thread's schedstat is.
                    let me = std::fs::read_link("/proc/thread-self").unwrap_or_default();
                    tx.send(format!("/proc/{}/schedstat", me.display()))
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        writer_round(&sim, writer_pid, where_, far);
                        // Relaxed: a count read after the fact.
                        rounds.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let writer_stat = rx.recv().unwrap();
            let task = sim.task(pid).unwrap();
            let mut probe = Probe::default();
            let id = BenchmarkId::new(mode.as_str(), where_.as_str());
            g.bench_function(id, |b| {
                timed_faults(b, &task, addr, Some((&rounds, &writer_stat)), &mut probe)
            });
            stop.store(true, Ordering::Relaxed);
            writer.join().unwrap();
            probe.report(&format!(
                "fault_vs_writer/{}/{}",
                mode.as_str(),
                where_.as_str()
            ));
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
