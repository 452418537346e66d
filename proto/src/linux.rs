//! The Linux ABI facts every side shares: `PROT_*`, `MAP_*` and
//! `MREMAP_*` bits (x86-64 values, `include/uapi/asm-generic/mman*.h`,
//! `include/uapi/linux/mman.h`), the names strace prints for them, and how
//! the engine's own files are named in `/proc/PID/maps`.
//!
//! Defined once here, the lowest crate both the server and the client
//! depend on: the engine's `mmap` checks, the service's validation, the
//! client's strace parser, replay, the load generator and kernel-diff all
//! read these constants instead of retyping them. The `Prot`, `MapFlag`
//! and `MremapFlag` enums of `types.proto` name the same bits on the wire;
//! a test below keeps them equal. Nothing here is gRPC.

/// `prot` bits (`PROT_*`).
pub mod prot {
    /// No access.
    pub const PROT_NONE: u32 = 0x0;
    /// Readable.
    pub const PROT_READ: u32 = 0x1;
    /// Writable.
    pub const PROT_WRITE: u32 = 0x2;
    /// Executable.
    pub const PROT_EXEC: u32 = 0x4;
    /// `PROT_SEM` (accepted by the kernel, no effect on x86-64).
    pub const PROT_SEM: u32 = 0x8;
    /// mprotect: extend the change down to the start of a growsdown VMA.
    pub const PROT_GROWSDOWN: u32 = 0x0100_0000;
    /// mprotect: extend the change up to the end of a growsup VMA.
    pub const PROT_GROWSUP: u32 = 0x0200_0000;
}

/// `mmap` flag bits (`MAP_*`, x86-64 values).
pub mod map {
    /// No bit: the historical name of a file mapping.
    pub const MAP_FILE: u32 = 0;
    /// Shared mapping.
    pub const MAP_SHARED: u32 = 0x01;
    /// Private (copy-on-write) mapping.
    pub const MAP_PRIVATE: u32 = 0x02;
    /// `MAP_SHARED_VALIDATE`: shared, unknown flags refused.
    pub const MAP_SHARED_VALIDATE: u32 = 0x03;
    /// `MAP_DROPPABLE` (6.11): zero-fill under memory pressure.
    pub const MAP_DROPPABLE: u32 = 0x08;
    /// `MAP_TYPE`: the bits holding the map type.
    pub const MAP_TYPE: u32 = 0x0f;
    /// Map exactly at `addr`, replacing what is there.
    pub const MAP_FIXED: u32 = 0x10;
    /// Not backed by a file.
    pub const MAP_ANONYMOUS: u32 = 0x20;
    /// `MAP_32BIT` (x86-64): place below 2 GiB.
    pub const MAP_32BIT: u32 = 0x40;
    /// `MAP_ABOVE4G` (x86-64, 6.7+): place above 4 GiB.
    pub const MAP_ABOVE4G: u32 = 0x80;
    /// Stack-like: the VMA is `VM_GROWSDOWN`.
    pub const MAP_GROWSDOWN: u32 = 0x100;
    /// Ignored by the kernel.
    pub const MAP_DENYWRITE: u32 = 0x800;
    /// Ignored by the kernel.
    pub const MAP_EXECUTABLE: u32 = 0x1000;
    /// Lock pages (`VM_LOCKED`).
    pub const MAP_LOCKED: u32 = 0x2000;
    /// No swap reservation (`VM_NORESERVE`, which blocks merges).
    pub const MAP_NORESERVE: u32 = 0x4000;
    /// Prefault.
    pub const MAP_POPULATE: u32 = 0x8000;
    /// Don't block on I/O (ignored).
    pub const MAP_NONBLOCK: u32 = 0x10000;
    /// Stack (`VM_NOHUGEPAGE` since 6.7, which blocks merges).
    pub const MAP_STACK: u32 = 0x20000;
    /// A hugetlb mapping: an anonymous hugetlbfs file of huge pages.
    pub const MAP_HUGETLB: u32 = 0x40000;
    /// `MAP_SYNC` (DAX files only, with `MAP_SHARED_VALIDATE`).
    pub const MAP_SYNC: u32 = 0x80000;
    /// Like `MAP_FIXED` but fail with `EEXIST` instead of replacing.
    pub const MAP_FIXED_NOREPLACE: u32 = 0x100000;
    /// `MAP_UNINITIALIZED` (no-MMU kernels only).
    pub const MAP_UNINITIALIZED: u32 = 0x400_0000;
    /// Shift of the huge page size's log2 in the flags (`MAP_HUGE_2MB` is
    /// `21 << MAP_HUGE_SHIFT`).
    pub const MAP_HUGE_SHIFT: u32 = 26;
    /// Mask of the huge page size's log2 after the shift.
    pub const MAP_HUGE_MASK: u32 = 0x3f;
}

/// `mremap` flag bits (`MREMAP_*`).
pub mod mremap {
    /// The mapping may move.
    pub const MREMAP_MAYMOVE: u32 = 1;
    /// Move to exactly `new_addr`.
    pub const MREMAP_FIXED: u32 = 2;
    /// Move, and leave the old range mapped (empty).
    pub const MREMAP_DONTUNMAP: u32 = 4;
}

/// strace's names of the `PROT_*` bits.
pub const PROT_NAMES: &[(&str, u32)] = {
    use prot::*;
    &[
        ("PROT_NONE", PROT_NONE),
        ("PROT_READ", PROT_READ),
        ("PROT_WRITE", PROT_WRITE),
        ("PROT_EXEC", PROT_EXEC),
        ("PROT_SEM", PROT_SEM),
        ("PROT_GROWSDOWN", PROT_GROWSDOWN),
        ("PROT_GROWSUP", PROT_GROWSUP),
    ]
};

/// strace's names of the `MAP_*` bits (`MAP_ANON` is an alias).
pub const MAP_NAMES: &[(&str, u32)] = {
    use map::*;
    &[
        ("MAP_FILE", MAP_FILE),
        ("MAP_SHARED", MAP_SHARED),
        ("MAP_PRIVATE", MAP_PRIVATE),
        ("MAP_SHARED_VALIDATE", MAP_SHARED_VALIDATE),
        ("MAP_DROPPABLE", MAP_DROPPABLE),
        ("MAP_FIXED", MAP_FIXED),
        ("MAP_ANONYMOUS", MAP_ANONYMOUS),
        ("MAP_ANON", MAP_ANONYMOUS),
        ("MAP_32BIT", MAP_32BIT),
        ("MAP_GROWSDOWN", MAP_GROWSDOWN),
        ("MAP_DENYWRITE", MAP_DENYWRITE),
        ("MAP_EXECUTABLE", MAP_EXECUTABLE),
        ("MAP_LOCKED", MAP_LOCKED),
        ("MAP_NORESERVE", MAP_NORESERVE),
        ("MAP_POPULATE", MAP_POPULATE),
        ("MAP_NONBLOCK", MAP_NONBLOCK),
        ("MAP_STACK", MAP_STACK),
        ("MAP_HUGETLB", MAP_HUGETLB),
        ("MAP_SYNC", MAP_SYNC),
        ("MAP_FIXED_NOREPLACE", MAP_FIXED_NOREPLACE),
        ("MAP_UNINITIALIZED", MAP_UNINITIALIZED),
    ]
};

/// strace's names of the `MREMAP_*` bits.
pub const MREMAP_NAMES: &[(&str, u32)] = {
    use mremap::*;
    &[
        ("MREMAP_MAYMOVE", MREMAP_MAYMOVE),
        ("MREMAP_FIXED", MREMAP_FIXED),
        ("MREMAP_DONTUNMAP", MREMAP_DONTUNMAP),
    ]
};

/// How an anonymous hugetlb file appears in maps (`HUGETLB_ANON_FILE`,
/// `hugetlb_file_setup`).
pub const HUGETLB_ANON_PATH: &str = "/anon_hugepage (deleted)";
/// How a shared anonymous mapping's file appears in maps
/// (`shmem_zero_setup` names it `dev/zero`).
pub const SHMEM_ANON_PATH: &str = "/dev/zero (deleted)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{MapFlag, MremapFlag, Prot};

    #[test]
    fn the_wire_enums_name_the_same_bits() {
        assert_eq!(Prot::None as u32, prot::PROT_NONE);
        assert_eq!(Prot::Read as u32, prot::PROT_READ);
        assert_eq!(Prot::Write as u32, prot::PROT_WRITE);
        assert_eq!(Prot::Exec as u32, prot::PROT_EXEC);
        assert_eq!(MapFlag::MapShared as u32, map::MAP_SHARED);
        assert_eq!(MapFlag::MapPrivate as u32, map::MAP_PRIVATE);
        assert_eq!(MapFlag::MapFixed as u32, map::MAP_FIXED);
        assert_eq!(MapFlag::MapAnonymous as u32, map::MAP_ANONYMOUS);
        assert_eq!(MapFlag::MapFixedNoreplace as u32, map::MAP_FIXED_NOREPLACE);
        assert_eq!(MremapFlag::MremapMaymove as u32, mremap::MREMAP_MAYMOVE);
        assert_eq!(MremapFlag::MremapFixed as u32, mremap::MREMAP_FIXED);
        assert_eq!(MremapFlag::MremapDontunmap as u32, mremap::MREMAP_DONTUNMAP);
    }

    #[test]
    fn every_name_is_its_constant() {
        for (table, prefix) in [
            (PROT_NAMES, "PROT_"),
            (MAP_NAMES, "MAP_"),
            (MREMAP_NAMES, "MREMAP_"),
        ] {
            for (name, _) in table {
                assert!(name.starts_with(prefix), "{name}");
            }
        }
        let by_name = |n: &str| MAP_NAMES.iter().find(|(m, _)| *m == n).map(|&(_, v)| v);
        assert_eq!(by_name("MAP_ANON"), by_name("MAP_ANONYMOUS"));
        assert_eq!(by_name("MAP_FIXED_NOREPLACE"), Some(0x10_0000));
    }
}
