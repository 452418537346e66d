//! The scenarios: one file per scenario, each defining its [`Scenario`]
//! as `SCENARIO` (name, description, run); the registry below lists them
//! once. This file also holds what several scenarios share: the layout
//! constants, small engine helpers and the timeline steps several
//! scenarios take, as [`Lab`] methods (`maps.rs`: the maps scenarios').
//! A step's timeline text is written once, here, so that two scenarios
//! telling the same step tell it the same way.

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
pub(super) use std::sync::{Arc, Mutex};

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

/// Steps several scenarios take. Each records what it did on the timeline
/// right after doing it, so the watched slot's state shown is the state
/// the step left.
impl Lab {
    /// `map_fixed` at `start` and the slot that got the new VMA.
    pub(super) fn map_slot(&self, mm: &MmStruct, start: u64, prot: u32) -> VmaIdx {
        map_fixed(mm, start, prot);
        slot_at(mm, start)
    }

    /// The writer maps the VMA the reader will meet at `start` and the
    /// timeline watches its slot from then on. Records
    /// `"{what} at [start, end) in slot N{tail}"`.
    pub(super) fn map_watched(&self, mm: &MmStruct, start: u64, what: &str, tail: &str) -> VmaIdx {
        let x = self.map_slot(mm, start, RW);
        self.watch(x);
        self.record(
            Role::Writer,
            format!(
                "{what} at [{start:#x}, {:#x}) in slot {}{tail}",
                start + LEN,
                x.0
            ),
        );
        x
    }

    /// Start a read fault at `addr` in `mm` and wait until the reader
    /// stops at `p`.
    pub(super) fn stop_reader_at(&mut self, mm: &Arc<MmStruct>, addr: u64, p: InjectPoint) {
        self.spawn_reader(mm, addr, &[p]);
        self.expect_parked(Role::Reader, p);
    }

    /// The writer unmaps the VMA `name` at `start` (write-locked, detached,
    /// freed: nobody holds it). `part` prefixes the text (a sub-case label
    /// such as `"(a) "`, or empty).
    pub(super) fn munmap(&self, mm: &MmStruct, start: u64, part: &str, name: &str) {
        do_munmap(mm, start, LEN).expect("race lab munmap");
        self.record(
            Role::Writer,
            format!(
                "{part}munmap({name}): {name} is write-locked, detached (vm_refcnt 0) and \
                 freed"
            ),
        );
    }

    /// Fork `parent` into `child` on the forker thread and wait until
    /// `vm_area_dup` stops after its copy ([`InjectPoint::InVmAreaDup`]).
    /// `done` is the forker's result text if `dup_mmap` succeeds.
    pub(super) fn stop_fork_in_dup(
        &mut self,
        parent: &Arc<MmStruct>,
        child: &Arc<MmStruct>,
        done: &'static str,
    ) {
        let (p, c) = (parent.clone(), child.clone());
        self.spawn(
            Role::Forker,
            &[InjectPoint::InVmAreaDup],
            move || match dup_mmap(&p, &c) {
                Ok(()) => done.into(),
                Err(e) => format!("dup_mmap failed: {e}"),
            },
        );
        self.expect_parked(Role::Forker, InjectPoint::InVmAreaDup);
    }

    /// Resume `role` with no further stops, wait for it to finish and
    /// record its result text.
    pub(super) fn run_to_end(&self, role: Role) {
        let r = self.expect_done_after_resume(role);
        self.record(role, r);
    }

    /// Resume `holder`, which `waiter` waits for inside the lock protocol,
    /// and wait for both to finish: their result texts. Both end before
    /// either is recorded, so both steps show the state after the waiter
    /// got in.
    pub(super) fn release(&self, holder: Role, waiter: Role) -> (String, String) {
        let h = self.expect_done_after_resume(holder);
        (h, self.expect_done(waiter))
    }

    /// [`Lab::release`], then record both results as they are.
    pub(super) fn release_and_record(&self, holder: Role, waiter: Role) {
        let (h, w) = self.release(holder, waiter);
        self.record(holder, h);
        self.record(waiter, w);
    }
}
