//! A fixed number of lockless faults, for instruction counting.
//!
//! Wall-clock benchmarks on a shared 2-core machine wobble by several
//! percent, too much to show that the race lab's disarmed injection points
//! cost under 2% of a fault. Instructions executed do not wobble: run this
//! under callgrind once as built normally and once with the hooks compiled
//! out, and compare the totals (README, "Benchmarks"):
//!
//! ```sh
//! cargo build --release -p vmasim-server --example fault_count
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/fault_count 0
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/fault_count 1000000
//! # again with RUSTFLAGS="--cfg vmasim_no_race_hooks" CARGO_TARGET_DIR=target/nohooks
//! ```
//!
//! The difference between the two runs of one build, divided by the
//! fault count, is the instructions per fault, set-up excluded.
//!
//! The set-up is `setup` of `benches/fault.rs` (`fault_single`): the same
//! populated anonymous VMA, read-faulted page after page, so the count is
//! of the path that benchmark times; change both together. It is written
//! twice because an example and a bench share no module but the library,
//! and a bench-only helper does not belong on the engine's facade.

use std::hint::black_box;
use vmasim_server::mm::{Access, MmapArgs, SimConfig, Simulator, map::*, prot::*};

const PAGES: u64 = 256;

fn main() {
    let faults: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("usage: fault_count [FAULTS]: {e}");
            std::process::exit(2);
        }
    };
    let sim = Simulator::new(SimConfig::default());
    let pid = sim.spawn().expect("spawn");
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
        .expect("mmap");
    for p in 0..PAGES {
        sim.fault(pid, addr + p * 4096, Access::Write)
            .expect("populate");
    }
    let task = sim.task(pid).expect("task");
    for i in 0..faults {
        black_box(task.fault(addr + (i % PAGES) * 4096, Access::Read));
    }
    println!("{faults} faults");
}
