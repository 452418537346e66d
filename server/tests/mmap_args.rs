//! `do_mmap`'s argument handling, rule by rule, as Linux 6.18 does it (each
//! case was also checked against the running kernel with
//! `vmasim kernel-diff --script`).

use vmasim_server::mm::{
    Errno, MMAP_BASE, MMAP_MIN_ADDR, MmapArgs, SimConfig, Simulator, map::*, prot::*,
};

const P: u64 = 4096;
const PMD: u64 = 2 << 20;

fn args(addr: u64, len: u64, flags: u32) -> MmapArgs {
    MmapArgs {
        addr,
        len,
        prot: PROT_READ | PROT_WRITE,
        flags,
        ..Default::default()
    }
}

fn errno(s: &Simulator, pid: u32, a: MmapArgs) -> Errno {
    s.mmap(pid, a).expect_err("must fail").errno()
}

/// round_hint_to_min: an unaligned hint is aligned down, not EINVAL; a
/// hint below mmap_min_addr is raised to it.
#[test]
fn hints_are_rounded_by_round_hint_to_min() {
    let s = Simulator::new(SimConfig::default());
    let pid = s.spawn().unwrap();
    let a = s
        .mmap(pid, args(0x7f00_0010_0123, P, MAP_PRIVATE | MAP_ANONYMOUS))
        .unwrap();
    assert_eq!(a, 0x7f00_0010_0000);
    let low = s
        .mmap(pid, args(0x1000, P, MAP_PRIVATE | MAP_ANONYMOUS))
        .unwrap();
    assert_eq!(low, MMAP_MIN_ADDR);
}

/// __get_unmapped_area on MAP_FIXED: unaligned is EINVAL, past TASK_SIZE
/// is ENOMEM, below mmap_min_addr is EPERM (cap_mmap_addr).
#[test]
fn fixed_addresses_fail_as_get_unmapped_area_does() {
    let s = Simulator::new(SimConfig::default());
    let pid = s.spawn().unwrap();
    let f = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    assert_eq!(errno(&s, pid, args(0x7f00_0000_0001, P, f)), Errno::EINVAL);
    assert_eq!(
        errno(
            &s,
            pid,
            args(
                0x7fff_ffff_e000,
                4 * P,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
            )
        ),
        Errno::ENOMEM
    );
    assert_eq!(errno(&s, pid, args(0x1000, P, f)), Errno::EPERM);
    assert_eq!(
        errno(&s, pid, args(0, 0, MAP_PRIVATE | MAP_ANONYMOUS)),
        Errno::EINVAL
    );
}

/// The MAP_TYPE switch of do_mmap: unknown bits ignored; no type, or
/// MAP_SHARED_VALIDATE on anonymous memory, EINVAL; MAP_SHARED_VALIDATE on
/// a file refuses bits outside LEGACY_MAP_MASK (MAP_FIXED_NOREPLACE too)
/// with EOPNOTSUPP.
#[test]
fn map_type_and_unknown_bits() {
    let s = Simulator::new(SimConfig::default());
    let pid = s.spawn().unwrap();
    s.mmap(pid, args(0, P, MAP_PRIVATE | MAP_ANONYMOUS | 0x20_0000))
        .unwrap();
    assert_eq!(errno(&s, pid, args(0, P, MAP_ANONYMOUS)), Errno::EINVAL);
    assert_eq!(
        errno(&s, pid, args(0, P, MAP_SHARED_VALIDATE | MAP_ANONYMOUS)),
        Errno::EINVAL
    );
    let file = |flags| MmapArgs {
        file: 7,
        ..args(0, P, flags)
    };
    s.mmap(pid, file(MAP_SHARED | 0x20_0000)).unwrap();
    s.mmap(pid, file(MAP_SHARED_VALIDATE)).unwrap();
    assert_eq!(
        errno(&s, pid, file(MAP_SHARED_VALIDATE | 0x20_0000)),
        Errno::EOPNOTSUPP
    );
    let noreplace = MmapArgs {
        addr: 0x7f00_0000_0000,
        ..file(MAP_SHARED_VALIDATE | MAP_FIXED_NOREPLACE)
    };
    assert_eq!(errno(&s, pid, noreplace), Errno::EOPNOTSUPP);
}

/// ksys_mmap_pgoff: MAP_HUGETLB on a non-hugetlbfs file is EINVAL; an
/// anonymous one fails to reserve pages (vm.nr_hugepages 0): ENOMEM.
/// do_mmap: MAP_GROWSDOWN only on private anonymous memory.
#[test]
fn hugetlb_and_growsdown() {
    let s = Simulator::new(SimConfig::default());
    let pid = s.spawn().unwrap();
    assert_eq!(
        errno(
            &s,
            pid,
            args(0, PMD, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB)
        ),
        Errno::ENOMEM
    );
    assert_eq!(
        errno(
            &s,
            pid,
            MmapArgs {
                file: 7,
                ..args(0, P, MAP_SHARED | MAP_HUGETLB)
            }
        ),
        Errno::EINVAL
    );
    assert_eq!(
        errno(
            &s,
            pid,
            args(0, P, MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN)
        ),
        Errno::EINVAL
    );
    assert_eq!(
        errno(
            &s,
            pid,
            MmapArgs {
                file: 7,
                ..args(0, P, MAP_PRIVATE | MAP_GROWSDOWN)
            }
        ),
        Errno::EINVAL
    );
    s.mmap(pid, args(0, P, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN))
        .unwrap();
}

/// Offsets: unaligned is EINVAL for anonymous memory too (x86 sys_mmap),
/// otherwise ignored there; a file offset + length past MAX_LFS_FILESIZE
/// is EOVERFLOW (file_mmap_ok). A shared anonymous mapping shows offset 0.
#[test]
fn offsets() {
    let s = Simulator::new(SimConfig::default());
    let pid = s.spawn().unwrap();
    let anon = |off| MmapArgs {
        offset: off,
        ..args(0, 2 * P, MAP_PRIVATE | MAP_ANONYMOUS)
    };
    assert_eq!(errno(&s, pid, anon(0x123)), Errno::EINVAL);
    s.mmap(pid, anon(0xffff_ffff_ffff_f000)).unwrap();
    let f = MmapArgs {
        file: 7,
        offset: 0xffff_ffff_ffff_f000,
        ..args(0, 2 * P, MAP_PRIVATE)
    };
    assert_eq!(errno(&s, pid, f), Errno::EOVERFLOW);
    let shm = MmapArgs {
        offset: 0x9000,
        ..args(0, 2 * P, MAP_SHARED | MAP_ANONYMOUS)
    };
    let a = s.mmap(pid, shm).unwrap();
    let m = s.maps(pid).unwrap();
    let e = m.entries.iter().find(|e| e.start == a).unwrap();
    assert_eq!(e.offset, 0, "do_mmap: MAP_SHARED anonymous ignores pgoff");
}

/// __get_unmapped_area -> thp_get_unmapped_area_vmflags: private anonymous
/// memory without a hint, a multiple of PMD_SIZE long, is PMD aligned;
/// shared anonymous memory is not.
#[test]
fn large_anonymous_mappings_are_thp_aligned() {
    let s = Simulator::new(SimConfig::default());
    let pid = s.spawn().unwrap();
    // Unalign the top of the free area.
    s.mmap(
        pid,
        args(0, 4 * P, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE),
    )
    .unwrap();
    let a = s
        .mmap(pid, args(0, 2 * PMD, MAP_PRIVATE | MAP_ANONYMOUS))
        .unwrap();
    assert_eq!(a % PMD, 0, "{a:#x}");
    assert!(a + 2 * PMD <= MMAP_BASE - 4 * P);
    let b = s
        .mmap(pid, args(0, PMD, MAP_SHARED | MAP_ANONYMOUS))
        .unwrap();
    assert_eq!(b, a - PMD - (a - (a & !(PMD - 1))), "shmem: plain top-down");
    let c = s
        .mmap(pid, args(0, PMD + P, MAP_PRIVATE | MAP_ANONYMOUS))
        .unwrap();
    assert_ne!(c % PMD, 0, "not a PMD multiple: plain top-down");
}
