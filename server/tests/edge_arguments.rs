//! Every address-space operation over a grid of edge arguments (the ends of
//! user space, the top of `u64`, lengths that wrap an address), run in the
//! test profile, whose arithmetic traps on overflow. The kernel takes these
//! arguments as `unsigned long` and its checks are written so that nothing
//! wraps unnoticed (`check_mremap_params`, `do_vmi_munmap`, `do_mmap`'s
//! "offset overflow?"); the engine must reach the same kind of answer, an
//! errno, never a panic a hostile client could trigger. The proptests in
//! `abuse.rs` draw from the same edges at random through gRPC; this grid
//! takes every combination, so one found by chance there (mremap of the
//! top page, CI of 2026-12-02) cannot hide again.
//!
//! After every call the process's map must still be well formed: sorted,
//! disjoint, page aligned, inside `[MMAP_MIN_ADDR, TASK_SIZE]`.

mod common;
use common::sim::fixed;

use vmasim_server::mm::{
    Access, MMAP_MIN_ADDR, MmError, MmapArgs, SimConfig, Simulator, TASK_SIZE, map::*, prot::*,
};

const P: u64 = 4096;
/// The fixture's low mapping; `A + 4 * P` is a hole, then a shared one.
const A: u64 = 0x1000_0000;
/// The fixture's mapping in the last pages of user space.
const TOP: u64 = TASK_SIZE - 4 * P;

const ADDRS: [u64; 14] = [
    0,
    P,
    MMAP_MIN_ADDR,
    A,
    A + 1,
    A + P,
    A + 3 * P,
    A + 5 * P,
    TOP,
    TASK_SIZE - P,
    TASK_SIZE,
    1 << 63,
    u64::MAX - P + 1,
    u64::MAX,
];

const LENS: [u64; 12] = [
    0,
    1,
    P,
    2 * P,
    8 * P,
    1 << 32,
    TASK_SIZE,
    TASK_SIZE + P,
    1 << 63,
    u64::MAX - P + 1,
    u64::MAX,
    0u64.wrapping_sub(A),
];

/// A process with a private VMA at `A` (4 pages, the middle two
/// faulted), a hole, a shared one after it, and one at the top of user
/// space.
fn fixture(s: &Simulator) -> u32 {
    let pid = s.spawn().unwrap();
    let rw = PROT_READ | PROT_WRITE;
    s.mmap(pid, fixed(A, 4 * P, rw)).unwrap();
    let shared = MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED;
    s.mmap(
        pid,
        MmapArgs {
            flags: shared,
            ..fixed(A + 5 * P, 3 * P, rw)
        },
    )
    .unwrap();
    s.mmap(pid, fixed(TOP, 4 * P, rw)).unwrap();
    s.fault(pid, A + P, Access::Write).unwrap();
    s.fault(pid, A + 2 * P, Access::Read).unwrap();
    pid
}

fn check_well_formed(s: &Simulator, pid: u32, call: &dyn Fn() -> String) {
    let maps = s.maps(pid).unwrap();
    let mut last_end = MMAP_MIN_ADDR;
    for e in &maps.entries {
        assert!(
            e.start >= last_end
                && e.start < e.end
                && e.end <= TASK_SIZE
                && e.start % P == 0
                && e.end % P == 0,
            "after {}: bad entry {:#x}-{:#x} (previous end {last_end:#x})",
            call(),
            e.start,
            e.end
        );
        last_end = e.end;
    }
}

/// One fixture process and the count of calls made on it.
struct Grid<'a> {
    s: &'a Simulator,
    pid: u32,
    calls: usize,
}

impl Grid<'_> {
    /// After a call: an EINVAL names one of the call's arguments (the
    /// service passes the name on to the client as the status message's
    /// first word), and the map is still well formed. Returns whether the
    /// call succeeded.
    fn made<T>(
        &mut self,
        r: &Result<T, MmError>,
        fields: &[&str],
        call: impl Fn() -> String,
    ) -> bool {
        let mut e = r.as_ref().err();
        // A call that did part of its work says what it fails with inside.
        if let Some(MmError::Partial { error, .. }) = e {
            e = Some(error);
        }
        if let Some(MmError::InvalidArgument { field, .. }) = e {
            assert!(fields.contains(field), "{}: EINVAL names {field:?}", call());
        }
        check_well_formed(self.s, self.pid, &call);
        self.calls += 1;
        r.is_ok()
    }
}

/// Runs `calls` on a fresh fixture process for each value of the first
/// argument (so one call's success does not empty the map for the rest).
/// Returns how many calls were made.
fn each_addr(mut calls: impl FnMut(&mut Grid<'_>, u64)) -> usize {
    let s = Simulator::new(SimConfig::default());
    let mut n = 0;
    for addr in ADDRS {
        let mut g = Grid {
            pid: fixture(&s),
            s: &s,
            calls: 0,
        };
        calls(&mut g, addr);
        n += g.calls;
        s.exit(g.pid).unwrap();
    }
    n
}

#[test]
fn mmap_with_edge_arguments_returns_an_errno_or_an_address_in_user_space() {
    let flags = [
        MAP_PRIVATE | MAP_ANONYMOUS,
        MAP_SHARED | MAP_ANONYMOUS,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
        MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_NORESERVE,
        MAP_PRIVATE | MAP_FIXED,
        MAP_SHARED | MAP_POPULATE,
    ];
    let mut placed = 0;
    let n = each_addr(|g, addr| {
        for len in LENS {
            for flags in flags {
                for (file, offset) in [(0, 0), (0, u64::MAX - P + 1), (7, P), (7, 1 << 63)] {
                    let args = MmapArgs {
                        addr,
                        len,
                        prot: PROT_READ | PROT_WRITE,
                        flags,
                        file,
                        offset,
                        file_size: len,
                    };
                    let r = g.s.mmap(g.pid, args);
                    if let Ok(a) = r {
                        placed += 1;
                        let end = a.checked_add(len).expect("a mapped range cannot wrap");
                        assert!(a >= MMAP_MIN_ADDR && end <= TASK_SIZE, "{args:?} at {a:#x}");
                    }
                    let fields = [
                        "addr",
                        "length",
                        "prot",
                        "flags",
                        "file_id",
                        "offset",
                        "file_size",
                    ];
                    g.made(&r, &fields, || format!("mmap({args:?})"));
                }
            }
        }
    });
    assert!(placed > 0 && placed < n, "{placed} of {n} placed");
}

#[test]
fn munmap_mprotect_madvise_fault_brk_with_edge_arguments_return_an_errno_or_apply() {
    let mut ok = 0;
    let n = each_addr(|g, addr| {
        for len in LENS {
            for prot in [
                PROT_NONE,
                PROT_READ,
                PROT_READ | PROT_WRITE | PROT_EXEC,
                u32::MAX,
            ] {
                let r = g.s.mprotect(g.pid, addr, len, prot);
                let fields = ["addr", "length", "prot"];
                ok += g.made(&r, &fields, || {
                    format!("mprotect({addr:#x}, {len:#x}, {prot:#x})")
                }) as usize;
            }
            for advice in [4, 8, 10, 11, 18, 19, u32::MAX] {
                let r = g.s.madvise(g.pid, addr, len, advice);
                let fields = ["addr", "length", "advice"];
                ok += g.made(&r, &fields, || {
                    format!("madvise({addr:#x}, {len:#x}, {advice})")
                }) as usize;
            }
            let at = addr.wrapping_add(len);
            for access in [Access::Read, Access::Write] {
                let r = g.s.fault(g.pid, at, access);
                ok += g.made(&r, &["addr", "access"], || {
                    format!("fault({at:#x}, {access:?})")
                }) as usize;
            }
            let r = g.s.brk(g.pid, at);
            ok += g.made(&r, &["brk"], || format!("brk({at:#x})")) as usize;
        }
        // munmap last: it empties what the others work on.
        for len in LENS {
            let r = g.s.munmap(g.pid, addr, len);
            ok += g.made(&r, &["addr", "length"], || {
                format!("munmap({addr:#x}, {len:#x})")
            }) as usize;
        }
    });
    assert!(ok > 0 && ok < n, "{ok} of {n} applied");
}

#[test]
fn mremap_with_edge_arguments_returns_an_errno_or_an_address_in_user_space() {
    let mut moved = 0;
    let n = each_addr(|g, addr| {
        for old_len in LENS {
            for new_len in LENS {
                for flags in [0, 1, 1 | 2, 1 | 4, 7] {
                    for new_addr in ADDRS {
                        let r = g.s.mremap(g.pid, addr, old_len, new_len, flags, new_addr);
                        let call = || {
                            format!(
                                "mremap({addr:#x}, {old_len:#x}, {new_len:#x}, {flags}, {new_addr:#x})"
                            )
                        };
                        if let Ok(a) = r {
                            moved += 1;
                            assert!(
                                (MMAP_MIN_ADDR..TASK_SIZE).contains(&a),
                                "{} at {a:#x}",
                                call()
                            );
                        }
                        let fields = ["addr", "old_length", "new_length", "flags", "new_addr"];
                        g.made(&r, &fields, call);
                    }
                }
            }
        }
    });
    assert!(moved > 0 && moved < n, "{moved} of {n} applied");
}
