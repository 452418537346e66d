//! The scenarios: one file per scenario, each defining its [`Scenario`]
//! as `SCENARIO` (name, description, run); the registry below lists them
//! once. This file also holds what several scenarios share: the layout
//! constants and small engine helpers (`maps.rs`: the maps scenarios').

pub(super) use super::conductor::*;
pub(super) use super::{RaceReport, Scenario, Verdict};
pub(super) use crate::mm::exit::exit_mmap;
pub(super) use crate::mm::fork::dup_mmap;
pub(super) use crate::mm::mm_struct::MmStruct;
pub(super) use crate::mm::mmap::{MmapArgs, do_mmap, do_munmap, map, prot};
pub(super) use crate::mm::race::{Bugs, InjectPoint};
pub(super) use crate::mm::rcu::rcu_read_lock;
pub(super) use crate::mm::slab::VmaIdx;
pub(super) use crate::mm::sync::Ordering;

pub(super) mod maps;

/// Declares each scenario's module and lists its `SCENARIO` in
/// [`SCENARIOS`], so a scenario's name (a module name) is written once.
macro_rules! registry {
    ($($name:ident),* $(,)?) => {
        $(pub(super) mod $name;)*

        /// The registry, in listing order.
        pub(super) const SCENARIOS: &[&Scenario] = &[$(&$name::SCENARIO),*];
    };
}

// Adding a scenario: its file `scenario/<name>.rs` and one line here.
registry! {
    dup_copies_refcnt,
    exit_without_detach,
    reuse_between_check_and_lock,
    writer_waits_for_readers,
    detached_retry,
    maps_split_while_printing,
    maps_split_gap,
}

pub(super) const PAGE: u64 = crate::mm::PAGE_SIZE;
/// Scenario VMAs: four pages each, far apart so that nothing merges.
pub(super) const LEN: u64 = 4 * PAGE;
pub(super) const R1: u64 = 0x1000_0000;
pub(super) const R2: u64 = 0x2000_0000;
pub(super) const R3: u64 = 0x3000_0000;
pub(super) const R4: u64 = 0x4000_0000;
/// The reader faults on the second page of a VMA.
pub(super) const IN: u64 = PAGE;

pub(super) const RW: u32 = prot::PROT_READ | prot::PROT_WRITE;

/// `mmap(start, LEN, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)`.
pub(super) fn map_fixed(mm: &MmStruct, start: u64, prot: u32) {
    do_mmap(
        mm,
        MmapArgs {
            addr: start,
            len: LEN,
            prot,
            flags: map::MAP_PRIVATE | map::MAP_ANONYMOUS | map::MAP_FIXED,
            file: 0,
            offset: 0,
            file_size: 0,
        },
    )
    .expect("race lab mmap");
}

/// The slot mapping `addr` in `mm`.
pub(super) fn slot_at(mm: &MmStruct, addr: u64) -> VmaIdx {
    let guard = rcu_read_lock();
    mm.mm_mt
        .mas_walk(addr, &guard)
        .expect("race lab: address mapped")
        .idx
}
