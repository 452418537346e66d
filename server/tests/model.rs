//! Property test: random mmap / munmap / mprotect / brk / fork / exit /
//! fault sequences against a small sequential reference model, comparing
//! every process's layout page by page after every step.
//!
//! The model knows nothing about VMAs, splits or merges: a page is mapped
//! with some protection and backing, or it is not. That is what the
//! engine's VMA juggling must preserve, and what a split or merge bug
//! breaks. Faults are checked too (MAPERR/ACCERR vs success).

use proptest::prelude::*;
use std::collections::BTreeMap;
use vmasim_server::mm::fault::{Access, FaultOutcome};
use vmasim_server::mm::mm_types::vm_flags::{VM_EXEC, VM_MAYSHARE, VM_READ, VM_WRITE};
use vmasim_server::mm::mmap::{MmapArgs, map::*, prot::*};
use vmasim_server::mm::sim::{SimConfig, Simulator};
use vmasim_server::mm::{MMAP_BASE, MmError};

const P: u64 = 4096;
const BASE: u64 = 0x1000_0000;
const WINDOW: u64 = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    prot: u32,
    shared: bool,
    file: u64,
    file_page: u64,
}

#[derive(Debug, Clone, Default)]
struct Proc {
    pages: BTreeMap<u64, Page>,
    start_brk: u64,
    brk: u64,
}

#[derive(Debug, Clone)]
enum Op {
    MmapFixed {
        p: usize,
        page: u64,
        n: u64,
        prot: u32,
        file: Option<(u64, u64)>,
        shared: bool,
        noreplace: bool,
    },
    MmapAny {
        p: usize,
        n: u64,
        prot: u32,
    },
    Munmap {
        p: usize,
        page: u64,
        n: u64,
    },
    Mprotect {
        p: usize,
        page: u64,
        n: u64,
        prot: u32,
    },
    Brk {
        p: usize,
        delta: i64,
    },
    Fault {
        p: usize,
        page: u64,
        access: u8,
    },
    Fork {
        p: usize,
    },
    Exit {
        p: usize,
    },
    Spawn,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0usize..4;
    prop_oneof![
        4 => (p.clone(), 0..WINDOW, 1u64..8, 0u32..8, proptest::option::of((1u64..3, 0u64..6)), any::<bool>(), any::<bool>())
            .prop_map(|(p, page, n, prot, file, shared, noreplace)| Op::MmapFixed { p, page, n, prot, file, shared, noreplace }),
        1 => (p.clone(), 1u64..4, 0u32..8).prop_map(|(p, n, prot)| Op::MmapAny { p, n, prot }),
        3 => (p.clone(), 0..WINDOW, 1u64..10).prop_map(|(p, page, n)| Op::Munmap { p, page, n }),
        3 => (p.clone(), 0..WINDOW, 1u64..10, 0u32..8).prop_map(|(p, page, n, prot)| Op::Mprotect { p, page, n, prot }),
        1 => (p.clone(), -6i64..10).prop_map(|(p, delta)| Op::Brk { p, delta }),
        4 => (p.clone(), 0..WINDOW, 0u8..3).prop_map(|(p, page, access)| Op::Fault { p, page, access }),
        1 => p.clone().prop_map(|p| Op::Fork { p }),
        1 => p.prop_map(|p| Op::Exit { p }),
        1 => Just(Op::Spawn),
    ]
}

fn engine_pages(sim: &Simulator, pid: u32) -> BTreeMap<u64, Page> {
    let m = sim.maps(pid).unwrap();
    let mut out = BTreeMap::new();
    let mut last_end = 0;
    for e in &m.entries {
        assert!(
            e.start < e.end && e.start >= last_end,
            "overlapping or unsorted VMAs: {}",
            m.text
        );
        last_end = e.end;
        // VM_READ/WRITE/EXEC have the PROT_* values.
        let prot = (e.vm_flags & (VM_READ | VM_WRITE | VM_EXEC)) as u32;
        for (i, a) in (e.start..e.end).step_by(P as usize).enumerate() {
            let file = if e.file_id != 0 && !e.path.starts_with("/dev/zero") {
                e.file_id
            } else {
                0
            };
            out.insert(
                a,
                Page {
                    prot,
                    shared: e.vm_flags & VM_MAYSHARE != 0,
                    file,
                    file_page: if file != 0 {
                        e.offset / P + i as u64
                    } else {
                        0
                    },
                },
            );
        }
    }
    out
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sim = Simulator::new(SimConfig::default());
    let mut procs: Vec<(u32, Proc)> = Vec::new();
    for op in ops {
        if procs.is_empty() || matches!(op, Op::Spawn) {
            if procs.len() < 6 {
                let pid = sim.spawn().unwrap();
                let (brk, start_brk) = sim.brk(pid, 0).unwrap();
                procs.push((
                    pid,
                    Proc {
                        start_brk,
                        brk,
                        ..Default::default()
                    },
                ));
            }
            if matches!(op, Op::Spawn) {
                continue;
            }
        }
        let idx = |p: usize| p % procs.len();
        match op {
            Op::MmapFixed {
                p,
                page,
                n,
                prot,
                file,
                shared,
                noreplace,
            } => {
                let i = idx(p);
                let (pid, m) = &mut procs[i];
                let addr = BASE + page * P;
                let mut flags = if shared { MAP_SHARED } else { MAP_PRIVATE };
                flags |= if noreplace {
                    MAP_FIXED_NOREPLACE
                } else {
                    MAP_FIXED
                };
                let (file_id, off) = match file {
                    Some((f, o)) => (f, o),
                    None => {
                        flags |= MAP_ANONYMOUS;
                        (0, 0)
                    }
                };
                let r = sim.mmap(
                    *pid,
                    MmapArgs {
                        addr,
                        len: n * P,
                        prot,
                        flags,
                        file: file_id,
                        offset: off * P,
                    },
                );
                let overlap = (0..n).any(|k| m.pages.contains_key(&(addr + k * P)));
                if noreplace && overlap {
                    prop_assert!(matches!(r, Err(MmError::Exists { .. })), "{r:?}");
                } else {
                    prop_assert_eq!(r.clone().unwrap(), addr);
                    for k in 0..n {
                        m.pages.insert(
                            addr + k * P,
                            Page {
                                prot,
                                shared,
                                file: file_id,
                                file_page: if file_id != 0 { off + k } else { 0 },
                            },
                        );
                    }
                }
            }
            Op::MmapAny { p, n, prot } => {
                let i = idx(p);
                let (pid, m) = &mut procs[i];
                let addr = sim
                    .mmap(
                        *pid,
                        MmapArgs {
                            len: n * P,
                            prot,
                            flags: MAP_PRIVATE | MAP_ANONYMOUS,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                prop_assert!(
                    addr + n * P <= MMAP_BASE,
                    "placed above mmap_base: {addr:#x}"
                );
                for k in 0..n {
                    prop_assert!(
                        m.pages
                            .insert(
                                addr + k * P,
                                Page {
                                    prot,
                                    shared: false,
                                    file: 0,
                                    file_page: 0
                                }
                            )
                            .is_none(),
                        "placed over a mapping at {addr:#x}"
                    );
                }
            }
            Op::Munmap { p, page, n } => {
                let i = idx(p);
                let (pid, m) = &mut procs[i];
                let addr = BASE + page * P;
                sim.munmap(*pid, addr, n * P).unwrap();
                for k in 0..n {
                    m.pages.remove(&(addr + k * P));
                }
            }
            Op::Mprotect { p, page, n, prot } => {
                let i = idx(p);
                let (pid, m) = &mut procs[i];
                let addr = BASE + page * P;
                let r = sim.mprotect(*pid, addr, n * P, prot);
                if (0..n).all(|k| m.pages.contains_key(&(addr + k * P))) {
                    prop_assert!(r.is_ok(), "{r:?}");
                    for k in 0..n {
                        m.pages.get_mut(&(addr + k * P)).unwrap().prot = prot;
                    }
                } else {
                    // do_mprotect_pkey: the pages before the first hole
                    // change, then ENOMEM.
                    prop_assert!(matches!(r, Err(MmError::NotMapped { .. })), "{r:?}");
                    for k in 0..n {
                        match m.pages.get_mut(&(addr + k * P)) {
                            Some(pg) => pg.prot = prot,
                            None => break,
                        }
                    }
                }
            }
            Op::Brk { p, delta } => {
                let i = idx(p);
                let (pid, m) = &mut procs[i];
                let want = m.brk as i64 + delta * P as i64 + if delta != 0 { 17 } else { 0 };
                let (got, _) = sim.brk(*pid, want as u64).unwrap();
                let align = |x: u64| x.div_ceil(P) * P;
                if want as u64 >= m.start_brk {
                    prop_assert_eq!(got, want as u64);
                    let (old_end, new_end) = (align(m.brk), align(got));
                    for a in (new_end..old_end).step_by(P as usize) {
                        m.pages.remove(&a);
                    }
                    for a in (old_end..new_end).step_by(P as usize) {
                        m.pages.insert(
                            a,
                            Page {
                                prot: PROT_READ | PROT_WRITE,
                                shared: false,
                                file: 0,
                                file_page: 0,
                            },
                        );
                    }
                    m.brk = got;
                } else {
                    prop_assert_eq!(got, m.brk);
                }
            }
            Op::Fault { p, page, access } => {
                let i = idx(p);
                let (pid, m) = &procs[i];
                let addr = BASE + page * P + 123;
                let access = [Access::Read, Access::Write, Access::Exec][access as usize];
                let r = sim.fault(*pid, addr, access).unwrap();
                let expect = match m.pages.get(&(addr & !(P - 1))) {
                    None => Some(FaultOutcome::SegvMaperr),
                    Some(pg) => {
                        let denied = match access {
                            Access::Read => pg.prot == 0,
                            Access::Write => pg.prot & PROT_WRITE == 0,
                            Access::Exec => pg.prot & PROT_EXEC == 0,
                        };
                        denied.then_some(FaultOutcome::SegvAccerr)
                    }
                };
                match expect {
                    Some(o) => prop_assert_eq!(r.outcome, o),
                    None => prop_assert!(
                        !matches!(
                            r.outcome,
                            FaultOutcome::SegvMaperr | FaultOutcome::SegvAccerr
                        ),
                        "{r:?}"
                    ),
                }
            }
            Op::Fork { p } => {
                let i = idx(p);
                if procs.len() < 6 {
                    let child = sim.fork(procs[i].0).unwrap();
                    let m = procs[i].1.clone();
                    procs.push((child, m));
                }
            }
            Op::Exit { p } => {
                let i = idx(p);
                let (pid, _) = procs.remove(i);
                sim.exit(pid).unwrap();
                prop_assert!(sim.maps(pid).is_err());
            }
            Op::Spawn => unreachable!(),
        }
        for (pid, m) in &procs {
            let got = engine_pages(&sim, *pid);
            prop_assert_eq!(
                &got,
                &m.pages,
                "pid {} diverged:\n{}",
                pid,
                sim.maps(*pid).unwrap().text
            );
        }
    }
    let live: u64 = procs
        .iter()
        .map(|(pid, _)| sim.maps(*pid).unwrap().entries.len() as u64)
        .sum();
    prop_assert_eq!(
        sim.stats().pool.live,
        live,
        "pool live slots == VMAs in live processes"
    );
    prop_assert_eq!(sim.stats().faults.use_after_reuse, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
