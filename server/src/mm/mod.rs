//! The simulation engine: address spaces whose VMAs come from a type-stable
//! pool and are found by page faults under RCU with per-VMA locks.
//!
//! Nothing here knows about gRPC; the service layer translates. Files and
//! functions are named after their kernel counterparts so a reader who knows
//! `mm/` finds things where they expect them.
//!
//! # The facade
//!
//! Every module is `pub(crate)`. What the service, the benches, the fuzz
//! targets and the integration tests may use is re-exported here: the
//! front door [`Simulator`] (the process table) and the [`Task`] it hands
//! out for one process, their arguments ([`MmapArgs`], the `PROT_*`,
//! `MAP_*`, `MADV_*`, `MREMAP_*` and `VM_*` bits), results ([`FaultResult`],
//! [`Maps`], [`MmError`]) and counters ([`SimStats`]). The race lab
//! (`crate::race_lab`) reaches inside: it builds its own engine with hooks.
//! An engine change that keeps this list breaks no caller outside `mm/`.
//!
//! # Layout
//!
//! * `sync`: atomics and locks (loom's under `--cfg vmasim_loom`).
//! * `rcu`: `rcu_read_lock` / `call_rcu` on crossbeam-epoch, with an
//!   observable grace-period count.
//! * `vmstat`: sharded event counters (`VMA_LOCK_SUCCESS`...).
//! * `mm_types`: `vm_area_struct` (`Vma`, `VmaFields`, `vm_flags`) and the
//!   vocabulary every layer shares: what a fault returns (`FaultOutcome`,
//!   `FaultPath`, `ReuseCheck`, `VM_FAULT_RETRY`) and the modes.
//! * `mmap_lock`: the whole per-VMA lock protocol: `vma_start_read`,
//!   `vma_start_write`, `vma_mark_attached/detached`, `lock_vma_under_rcu`,
//!   `lock_next_vma` (the maps reader's step).
//! * `slab`: the VMA cache (`vm_area_cachep`): per-thread sheaves, a
//!   barn, slabs; `typesafe` or `rcu` free policy.
//! * `vma_tree`: the RCU-walkable VMA tree (the maple tree's role).
//! * `pgtable`: a lock-free radix page table.
//! * `mm_struct`: `mmap_lock`, `mm_lock_seq`, tree, page table, RSS; the
//!   `MmContext` every mm of a simulator shares.
//! * `file_table`: file ids, imported files, the engine's shmem/hugetlb
//!   files, anonymous-VMA names.
//! * `vma`: `__split_vma`, `vma_merge_*`, `vma_modify`, the munmap
//!   gather/complete steps (`mm/vma.c`).
//! * `mmap`: `mmap`, `munmap`, `brk`: arguments, placement, populate.
//! * `mprotect`: `do_mprotect_pkey`, `mprotect_fixup`.
//! * `mremap`: shrink, grow in place, `move_vma`.
//! * `madvise`: DONTNEED/FREE under the VMA lock; DONTFORK, WIPEONFORK.
//! * `fault`: `do_user_addr_fault`, `access_error` (arch/x86/mm/fault.c).
//! * `memory`: `handle_mm_fault` and its `do_*` steps, fault-around,
//!   `vmf_anon_prepare`, `zap_page_range`, `free_pgtables`.
//! * `gup`: `populate_vma_page_range`, `__mm_populate`.
//! * `filemap`: the page cache fault-around maps from.
//! * `rmap`: mappers of fork-shared anonymous pages (COW reuse).
//! * `vma_init`: `vm_area_dup`, `vm_area_init_from` (the slot itself comes
//!   from `slab`'s `vm_area_alloc`).
//! * `fork`: `dup_mmap`, `copy_page_range`.
//! * `exit`: tearing an address space down, `exit_mmap`.
//! * `proc_maps`: `/proc/PID/maps` rendering and import.
//! * `task_mmu`: reading maps under per-VMA locks (6.17) or `mmap_lock`.
//! * `sim`: the process table tying it together.
//! * `race`: injection points for the race lab.

// The loom build compiles only the lock-free core (sync, rcu, slab,
// mm_types, mmap_lock, race, vmstat) for its models; most of their
// surface has no user there.
#![cfg_attr(vmasim_loom, allow(dead_code))]

// Every module is private to the crate: the service, the server, benches,
// fuzz targets and integration tests see only what is re-exported below,
// so a change inside the engine cannot break them unless it changes this
// list.
pub(crate) mod mm_types;
pub(crate) mod mmap_lock;
pub(crate) mod race;
#[cfg(not(vmasim_loom))]
pub(crate) mod rcu;
#[cfg(vmasim_loom)]
#[path = "rcu_loom.rs"]
pub(crate) mod rcu;
pub(crate) mod slab;
pub(crate) mod sync;
pub(crate) mod vmstat;

#[cfg(all(test, vmasim_loom))]
mod loom_tests;

#[cfg(not(vmasim_loom))]
pub(crate) mod exit;
#[cfg(not(vmasim_loom))]
pub(crate) mod fault;
#[cfg(not(vmasim_loom))]
pub(crate) mod file_table;
#[cfg(not(vmasim_loom))]
pub(crate) mod filemap;
#[cfg(not(vmasim_loom))]
pub(crate) mod fork;
#[cfg(not(vmasim_loom))]
pub(crate) mod gup;
#[cfg(not(vmasim_loom))]
pub(crate) mod madvise;
#[cfg(not(vmasim_loom))]
pub(crate) mod memory;
#[cfg(not(vmasim_loom))]
pub(crate) mod mm_struct;
#[cfg(not(vmasim_loom))]
pub(crate) mod mmap;
#[cfg(not(vmasim_loom))]
pub(crate) mod mprotect;
#[cfg(not(vmasim_loom))]
pub(crate) mod mremap;
#[cfg(not(vmasim_loom))]
pub(crate) mod pgtable;
#[cfg(not(vmasim_loom))]
pub(crate) mod proc_maps;
#[cfg(not(vmasim_loom))]
pub(crate) mod rmap;
#[cfg(not(vmasim_loom))]
pub(crate) mod sim;
#[cfg(not(vmasim_loom))]
pub(crate) mod task_mmu;
#[cfg(not(vmasim_loom))]
pub(crate) mod vma;
#[cfg(not(vmasim_loom))]
pub(crate) mod vma_init;
#[cfg(not(vmasim_loom))]
pub(crate) mod vma_tree;

#[cfg(not(vmasim_loom))]
mod error;

// The facade. The front door is `Simulator` (a process table) and the
// `Task` it hands out for one process; the rest is the vocabulary of its
// arguments, results and counters.
pub use mm_types::{Vma, vm_flags};
pub use rcu::{Rcu, rcu_read_lock};
pub use slab::{CachePolicy, PoolStats, SLAB_SIZE, VmaCache};

#[cfg(not(vmasim_loom))]
pub use {
    error::{Errno, MmError},
    exit::ExitStats,
    madvise::{
        MADV_DOFORK, MADV_DONTFORK, MADV_DONTNEED, MADV_FREE, MADV_KEEPONFORK, MADV_WIPEONFORK,
    },
    mm_types::{
        Access, FaultLockMode, FaultOutcome, FaultPath, FaultResult, MapsReader, ReuseCheck,
    },
    mmap::{MmapArgs, map, prot},
    mremap::{MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE},
    pgtable::TABLE_BYTES,
    proc_maps::{MapsEntry, render},
    rcu::SlowReader,
    sim::{DEFAULT_MAX_PGTABLES_BYTES, Maps, SimConfig, SimStats, Simulator, Task},
    task_mmu::check_maps_guarantees,
    vmstat::{FaultStats, MapsEvent, NR_MAPS_EVENTS, NR_VMA_LOCK_EVENTS, VmaLockEvent},
};

/// Bytes per page.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// End of user space: `TASK_SIZE_MAX` of x86-64 with 4-level paging,
/// `(1 << 47) - PAGE_SIZE` (arch/x86/include/asm/page_64_types.h): the
/// last page below the canonical hole is never mapped, so a `syscall` at
/// the very top cannot return to a non-canonical address.
pub const TASK_SIZE: u64 = (1 << 47) - PAGE_SIZE;
/// Lowest address `mmap` may place anything (`vm.mmap_min_addr`).
pub const MMAP_MIN_ADDR: u64 = 0x10000;
/// Top of the top-down mmap area (where it sits with ASLR off).
pub const MMAP_BASE: u64 = 0x7fff_f7ff_f000;
/// Initial program break of a process spawned empty.
pub const DEFAULT_START_BRK: u64 = 0x5555_5555_9000;
/// Default `vm.max_map_count`.
pub const DEFAULT_MAX_MAP_COUNT: usize = 65530;

/// Round `x` up to a page boundary (`None` on overflow).
#[inline]
pub const fn page_align(x: u64) -> Option<u64> {
    match x.checked_add(PAGE_SIZE - 1) {
        Some(v) => Some(v & !(PAGE_SIZE - 1)),
        None => None,
    }
}

/// Is `x` page aligned?
#[inline]
pub const fn page_aligned(x: u64) -> bool {
    x & (PAGE_SIZE - 1) == 0
}
