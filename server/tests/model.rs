//! Property test: random mmap / munmap / mprotect / mremap / madvise /
//! brk / fork / exit / fault sequences against a small sequential
//! reference model, comparing every process's layout page by page after
//! every step.
//!
//! The model knows nothing about VMAs, splits or merges: a page is mapped
//! with some protection and backing, or it is not. That is what the
//! engine's VMA juggling must preserve, and what a split or merge bug
//! breaks. Faults are checked too (MAPERR/ACCERR vs success), and so are
//! the fork flags madvise sets (`VM_DONTCOPY`, `VM_WIPEONFORK`), page by
//! page, through what a fork child gets.
//!
//! Where the outcome depends on VMA boundaries the model does not know (an
//! mremap that grows or moves needs its range inside one VMA), the model
//! accepts EFAULT / ENOMEM with nothing changed, and otherwise checks the
//! result: pages carried to the new address, the tail unmapped, the old
//! range kept by `MREMAP_DONTUNMAP`.

use proptest::prelude::*;
use std::collections::BTreeMap;
use vmasim_server::mm::vm_flags::{
    VM_DONTCOPY, VM_EXEC, VM_MAYSHARE, VM_READ, VM_WIPEONFORK, VM_WRITE,
};
use vmasim_server::mm::{
    Access, FaultOutcome, MMAP_BASE, MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, MmError,
    MmapArgs, SimConfig, Simulator, map::*, prot::*,
};
use vmasim_server::mm::{
    MADV_DOFORK, MADV_DONTFORK, MADV_DONTNEED, MADV_FREE, MADV_KEEPONFORK, MADV_WIPEONFORK,
};

const P: u64 = 4096;
const BASE: u64 = 0x1000_0000;
const WINDOW: u64 = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    prot: u32,
    shared: bool,
    file: u64,
    file_page: u64,
    /// `MADV_DONTFORK` (`VM_DONTCOPY`): not in a fork child.
    dontcopy: bool,
    /// `MADV_WIPEONFORK`.
    wipe: bool,
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
    Mremap {
        p: usize,
        page: u64,
        n_old: u64,
        n_new: u64,
        /// 0: no flags, 1: MAYMOVE, 2: MAYMOVE|FIXED, 3: MAYMOVE|DONTUNMAP,
        /// 4: MAYMOVE|DONTUNMAP|FIXED.
        kind: u8,
        dst: u64,
    },
    Madvise {
        p: usize,
        page: u64,
        n: u64,
        advice: u32,
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
        3 => (p.clone(), 0..WINDOW, 1u64..8, 1u64..8, 0u8..5, 0..WINDOW)
            .prop_map(|(p, page, n_old, n_new, kind, dst)| Op::Mremap { p, page, n_old, n_new, kind, dst }),
        3 => (p.clone(), 0..WINDOW, 1u64..10, proptest::sample::select(vec![
                MADV_DONTNEED, MADV_FREE, MADV_DONTFORK, MADV_DOFORK, MADV_WIPEONFORK, MADV_KEEPONFORK,
            ]))
            .prop_map(|(p, page, n, advice)| Op::Madvise { p, page, n, advice }),
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
                    dontcopy: e.vm_flags & VM_DONTCOPY != 0,
                    wipe: e.vm_flags & VM_WIPEONFORK != 0,
                },
            );
        }
    }
    out
}

/// One mremap against the model (see the module docs for what is exact).
#[allow(clippy::too_many_arguments)]
fn mremap_step(
    sim: &Simulator,
    pid: u32,
    m: &mut Proc,
    page: u64,
    n_old: u64,
    n_new: u64,
    kind: u8,
    dst: u64,
) -> Result<(), TestCaseError> {
    let addr = BASE + page * P;
    let (flags, new_addr, n_new) = match kind {
        0 => (0, 0, n_new),
        1 => (MREMAP_MAYMOVE, 0, n_new),
        2 => (MREMAP_MAYMOVE | MREMAP_FIXED, BASE + dst * P, n_new),
        3 => (MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0, n_old),
        _ => (
            MREMAP_MAYMOVE | MREMAP_DONTUNMAP | MREMAP_FIXED,
            BASE + dst * P,
            n_old,
        ),
    };
    let fixed = flags & MREMAP_FIXED != 0;
    let dontunmap = flags & MREMAP_DONTUNMAP != 0;
    let r = sim.mremap(pid, addr, n_old * P, n_new * P, flags, new_addr);
    let implies = fixed || dontunmap;
    let overlaps = addr + n_old * P > new_addr && new_addr + n_new * P > addr;
    if implies && overlaps {
        // check_mremap_params: vrm_overlaps.
        prop_assert!(matches!(r, Err(MmError::InvalidArgument { .. })), "{r:?}");
        return Ok(());
    }
    if !m.pages.contains_key(&addr) {
        // vma_lookup / remap_move's "No gap permitted at the start".
        prop_assert!(matches!(r, Err(MmError::BadAddress { .. })), "{r:?}");
        return Ok(());
    }
    let page_at = |k: u64| addr + k * P;
    if !implies && n_new <= n_old {
        // shrink_vma / MREMAP_NO_RESIZE: only addr must be mapped; the
        // unmapped tail may cross VMA ends and holes.
        prop_assert_eq!(r.clone().unwrap(), addr);
        for k in n_new..n_old {
            m.pages.remove(&page_at(k));
        }
        return Ok(());
    }
    if fixed && n_new == n_old {
        // remap_move (vrm_move_only): every VMA of the range moves, each
        // replacing only its own destination (mremap_to per VMA), so the
        // gaps between them, kept at the destination, are not unmapped.
        prop_assert_eq!(r.clone().unwrap(), new_addr);
        let moved: Vec<(u64, Page)> = (0..n_old)
            .filter_map(|k| m.pages.get(&page_at(k)).map(|pg| (k, *pg)))
            .collect();
        for (k, pg) in moved {
            if !dontunmap {
                m.pages.remove(&page_at(k));
            }
            m.pages.insert(new_addr + k * P, pg);
        }
        return Ok(());
    }
    let got = match r {
        Ok(a) => a,
        Err(MmError::BadAddress { .. } | MmError::NoSpace { .. }) => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("mremap: {e:?}"))),
    };
    // Success: the part that stays was inside one VMA.
    let kept = n_old.min(n_new);
    let src: Vec<Page> = (0..kept)
        .map(|k| m.pages.get(&page_at(k)).copied())
        .collect::<Option<_>>()
        .ok_or_else(|| TestCaseError::fail("mremap moved a range with holes"))?;
    let last = *src.last().unwrap();
    let grown = |k: u64| Page {
        file_page: if last.file != 0 {
            last.file_page + 1 + (k - kept)
        } else {
            0
        },
        ..last
    };
    if got == addr && !dontunmap {
        prop_assert!(flags & MREMAP_FIXED == 0);
        // Grown in place.
        for k in n_old..n_new {
            prop_assert!(m.pages.insert(page_at(k), grown(k)).is_none());
        }
        return Ok(());
    }
    if fixed {
        prop_assert_eq!(got, new_addr);
        for k in 0..n_new {
            m.pages.remove(&(new_addr + k * P));
        }
    }
    // shrink first, then move what is left.
    for k in n_new..n_old {
        m.pages.remove(&page_at(k));
    }
    if !dontunmap {
        for k in 0..kept {
            m.pages.remove(&page_at(k));
        }
    }
    for k in 0..n_new {
        let pg = if k < kept { src[k as usize] } else { grown(k) };
        prop_assert!(
            m.pages.insert(got + k * P, pg).is_none(),
            "moved over a mapping at {:#x}",
            got + k * P
        );
    }
    Ok(())
}

/// One madvise against the model: the walk (madvise_walk_vmas) advises
/// every mapped part, stops at the first VMA that refuses (EINVAL), and
/// reports holes as ENOMEM.
fn madvise_step(
    sim: &Simulator,
    pid: u32,
    m: &mut Proc,
    page: u64,
    n: u64,
    advice: u32,
) -> Result<(), TestCaseError> {
    let addr = BASE + page * P;
    let r = sim.madvise(pid, addr, n * P, advice);
    let mut hole = false;
    let mut refused = false;
    for k in 0..n {
        let Some(pg) = m.pages.get_mut(&(addr + k * P)) else {
            hole = true;
            continue;
        };
        // MADV_FREE: vma_is_anonymous; MADV_WIPEONFORK: "only supported on
        // anonymous memory" (no file, not VM_SHARED).
        let anon_private = pg.file == 0 && !pg.shared;
        match advice {
            MADV_FREE | MADV_WIPEONFORK if !anon_private => {
                refused = true;
                break;
            }
            MADV_DONTFORK => pg.dontcopy = true,
            MADV_DOFORK => pg.dontcopy = false,
            MADV_WIPEONFORK => pg.wipe = true,
            MADV_KEEPONFORK => pg.wipe = false,
            _ => {}
        }
    }
    if refused {
        prop_assert!(matches!(r, Err(MmError::InvalidArgument { .. })), "{r:?}");
    } else if hole {
        prop_assert!(matches!(r, Err(MmError::AdviceHoles { .. })), "{r:?}");
    } else {
        prop_assert!(r.is_ok(), "{r:?}");
    }
    Ok(())
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
                        file_size: 0,
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
                                dontcopy: false,
                                wipe: false,
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
                                    file_page: 0,
                                    dontcopy: false,
                                    wipe: false,
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
                                dontcopy: false,
                                wipe: false,
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
                    let mut m = procs[i].1.clone();
                    // dup_mmap: "if (mpnt->vm_flags & VM_DONTCOPY)" the VMA
                    // is left out; a VM_WIPEONFORK one is copied empty (its
                    // flag stays).
                    m.pages.retain(|_, pg| !pg.dontcopy);
                    procs.push((child, m));
                }
            }
            Op::Mremap {
                p,
                page,
                n_old,
                n_new,
                kind,
                dst,
            } => {
                let i = idx(p);
                let (pid, m) = &mut procs[i];
                mremap_step(&sim, *pid, m, page, n_old, n_new, kind, dst)?;
            }
            Op::Madvise { p, page, n, advice } => {
                let i = idx(p);
                let (pid, m) = &mut procs[i];
                madvise_step(&sim, *pid, m, page, n, advice)?;
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
