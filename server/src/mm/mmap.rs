//! `mmap`, `munmap` and `brk` (`mm/mmap.c`): argument handling, placement
//! (`get_unmapped_area`) and population. The VMA work itself — gathering
//! what a `MAP_FIXED` mapping replaces, merging with the neighbours,
//! splitting — is `mm/vma.c`'s, in [`crate::mm::vma`].

use crate::mm::mm_types::{VmaFields, vm_flags::*};
use crate::mm::vma::{
    Vmg, Writer, do_vmi_munmap, munmap_range, vm_area_alloc_new, vma_merge_new_range,
    vms_complete_munmap_vmas, vms_gather_munmap_vmas,
};
use crate::mm::{
    MMAP_BASE, MMAP_MIN_ADDR, MmError, PAGE_SHIFT, PAGE_SIZE, TASK_SIZE, page_align, page_aligned,
};
use crate::mm::{file_table::huge_page_shift, mm_struct::MmStruct};

/// `prot` bits (`PROT_*`; the proto crate owns the bits).
pub mod prot {
    pub use vmasim_proto::linux::prot::*;
    /// All the bits `mmap` maps (`PROT_SEM` and the mprotect-only
    /// `PROT_GROWS*` aside).
    pub const PROT_MASK: u32 = PROT_READ | PROT_WRITE | PROT_EXEC;
}

/// `mmap` flag bits (`MAP_*`, x86-64 values; the proto crate owns the
/// bits) and the masks `do_mmap` checks them with.
pub mod map {
    pub use vmasim_proto::linux::map::*;
    /// `LEGACY_MAP_MASK` (include/linux/mman.h): the flags before
    /// MAP_SHARED_VALIDATE existed; `MAP_SHARED` keeps only these.
    pub const LEGACY_MAP_MASK: u32 = MAP_SHARED
        | MAP_PRIVATE
        | MAP_FIXED
        | MAP_ANONYMOUS
        | MAP_DENYWRITE
        | MAP_EXECUTABLE
        | MAP_GROWSDOWN
        | MAP_LOCKED
        | MAP_NORESERVE
        | MAP_POPULATE
        | MAP_NONBLOCK
        | MAP_STACK
        | MAP_HUGETLB
        | MAP_UNINITIALIZED;
    /// Every bit `mmap` has a name for (others are ignored).
    pub const MAP_KNOWN: u32 = MAP_SHARED
        | MAP_PRIVATE
        | MAP_FIXED
        | MAP_ANONYMOUS
        | MAP_GROWSDOWN
        | MAP_DENYWRITE
        | MAP_EXECUTABLE
        | MAP_LOCKED
        | MAP_NORESERVE
        | MAP_POPULATE
        | MAP_NONBLOCK
        | MAP_STACK
        | MAP_HUGETLB
        | MAP_FIXED_NOREPLACE;
}

/// `VM_DATA_DEFAULT_FLAGS` on x86-64 (`VM_MAY*` are not modelled): the
/// flags of a heap VMA, plus `VM_ACCOUNT` (`do_brk_flags`).
const VM_BRK_FLAGS: u64 = VM_READ | VM_WRITE | VM_ACCOUNT;

/// Arguments of `mmap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MmapArgs {
    /// 0, a hint, or the exact address with `MAP_FIXED*`.
    pub addr: u64,
    /// Length in bytes, rounded up to pages.
    pub len: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `MAP_*` bits.
    pub flags: u32,
    /// File id (0 for anonymous).
    pub file: u64,
    /// Byte offset in the file, page aligned.
    pub offset: u64,
    /// The file's size in bytes (`i_size`), 0 if the caller does not say:
    /// see [`FileTable::set_size`](crate::mm::file_table::FileTable::set_size).
    pub file_size: u64,
}

/// `accountable_mapping`: private writable memory is charged against the
/// commit limit and carries `VM_ACCOUNT`, which blocks merging with an
/// otherwise identical VMA that does not.
pub(crate) fn accountable_mapping(vm_flags: u64) -> bool {
    vm_flags & (VM_NORESERVE | VM_SHARED | VM_WRITE) == VM_WRITE
}

/// `mmap`: map `args` and return the address.
pub fn do_mmap(mm: &MmStruct, args: MmapArgs) -> Result<u64, MmError> {
    use map::*;
    if args.prot & !prot::PROT_MASK != 0 {
        return Err(MmError::inval(
            "prot",
            format!("unknown bits {:#x}", args.prot & !prot::PROT_MASK),
        ));
    }
    // Unknown bits are ignored below, as by the kernel; these two are real
    // x86-64 placement flags the simulation does not model, so ignoring
    // them would place the mapping where Linux would not.
    if args.flags & (MAP_32BIT | MAP_ABOVE4G) != 0 {
        return Err(MmError::inval(
            "flags",
            format!(
                "MAP_32BIT/MAP_ABOVE4G ({:#x}) are not simulated",
                args.flags & (MAP_32BIT | MAP_ABOVE4G)
            ),
        ));
    }
    let anon = args.flags & MAP_ANONYMOUS != 0;
    if anon && args.file != 0 {
        return Err(MmError::inval("file_id", "must be 0 with MAP_ANONYMOUS"));
    }
    if !anon && args.file == 0 {
        return Err(MmError::inval(
            "file_id",
            "a file mapping needs a non-zero file id (or MAP_ANONYMOUS)",
        ));
    }
    if args.file_size != 0 {
        if anon {
            return Err(MmError::inval("file_size", "must be 0 with MAP_ANONYMOUS"));
        }
        mm.ctx.files.set_size(args.file, args.file_size)?;
    }
    // x86 sys_mmap: "if (off & ~PAGE_MASK) return -EINVAL", for anonymous
    // mappings too (whose offset is otherwise ignored).
    if !page_aligned(args.offset) {
        return Err(MmError::inval(
            "offset",
            format!("{:#x} is not page aligned", args.offset),
        ));
    }
    // ksys_mmap_pgoff: MAP_HUGETLB on a file that is not hugetlbfs is
    // EINVAL. MAP_ANONYMOUS|MAP_HUGETLB maps a new hugetlb file
    // (hugetlb_file_setup) of the page size MAP_HUGE_* names
    // (hstate_sizelog; 0 is the default 2 MiB), the length rounded up to
    // it; from here on it is a file mapping. Without MAP_NORESERVE its
    // pages must be reserved, which fails later (__mmap_new_vma).
    let mut args = args;
    let mut anon = anon;
    let mut huge_shift = None;
    if args.flags & MAP_HUGETLB != 0 {
        if !anon {
            return Err(MmError::inval(
                "flags",
                "MAP_HUGETLB needs MAP_ANONYMOUS or a hugetlbfs file",
            ));
        }
        let shift = match (args.flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK {
            0 | 21 => 21,
            30 => 30,
            n => {
                return Err(MmError::inval(
                    "flags",
                    format!("MAP_HUGE_* names 2^{n}-byte pages: no such huge page size"),
                ));
            }
        };
        let h = 1u64 << shift;
        // ALIGN() may wrap to 0, which do_mmap then refuses as EINVAL.
        args.len = args.len.wrapping_add(h - 1) & !(h - 1);
        args.file = mm.ctx.files.new_hugetlb_file(shift);
        anon = false;
        huge_shift = Some(shift);
    }
    // do_mmap
    if args.len == 0 {
        return Err(MmError::inval("length", "must be greater than 0"));
    }
    // MAP_FIXED_NOREPLACE implies MAP_FIXED; other hints go through
    // round_hint_to_min: page-aligned down, raised to mmap_min_addr.
    let fixed = args.flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0;
    let hint = if fixed {
        args.addr
    } else {
        round_hint_to_min(args.addr)
    };
    // "Careful about overflows..": PAGE_ALIGN(len) wrapping to 0 is ENOMEM,
    // and so is a length beyond TASK_SIZE (__get_unmapped_area).
    let len = match page_align(args.len) {
        Some(l) if l <= TASK_SIZE => l,
        _ => return Err(MmError::NoSpace { len: args.len }),
    };
    // "offset overflow?": pgoff + pages wrapping; for files file_mmap_ok
    // also refuses offset + len past MAX_LFS_FILESIZE (i64::MAX).
    let pgoff_arg = args.offset >> PAGE_SHIFT;
    if pgoff_arg.checked_add(len >> PAGE_SHIFT).is_none()
        || (!anon
            && args
                .offset
                .checked_add(len)
                .is_none_or(|e| e > i64::MAX as u64))
    {
        return Err(MmError::Overflow {
            offset: args.offset,
            len,
        });
    }
    if fixed {
        get_unmapped_area_fixed(hint, len, huge_shift)?;
    }
    // The map type is checked after placement and MAP_FIXED_NOREPLACE, as
    // do_mmap does; compute it now, fail at that point.
    let map_type = map_type(args.flags, anon);
    let shared = matches!(map_type, Ok(true));
    // calc_vm_prot_bits | calc_vm_flag_bits
    let mut vm_flags = u64::from(args.prot);
    if shared {
        vm_flags |= VM_SHARED | VM_MAYSHARE;
    }
    if args.flags & MAP_NORESERVE != 0 {
        vm_flags |= VM_NORESERVE;
    }
    if args.flags & MAP_STACK != 0 {
        vm_flags |= VM_NOHUGEPAGE;
    }
    if args.flags & MAP_GROWSDOWN != 0 {
        vm_flags |= VM_GROWSDOWN;
    }
    if args.flags & MAP_LOCKED != 0 {
        vm_flags |= VM_LOCKED;
    }
    let mut w = Writer::lock(mm)?;
    // do_mmap: "Too many mappings?" -- checked with '>', so a process at
    // the limit may still map once.
    if w.w.state.map_count > mm.ctx.max_map_count {
        return Err(MmError::MapCountExceeded {
            limit: mm.ctx.max_map_count,
        });
    }
    let addr = if fixed {
        hint
    } else if let Some(shift) = huge_shift {
        hugetlb_get_unmapped_area(&w, hint, len, 1 << shift)?
    } else {
        get_unmapped_area_vmflags(&w, hint, len, anon && !shared)?
    };
    if args.flags & MAP_FIXED_NOREPLACE != 0 && w.vma_find(addr, addr + len).is_some() {
        return Err(MmError::Exists {
            start: addr,
            end: addr + len,
        });
    }
    map_type?;
    // MAP_GROWSDOWN is refused on files and shared anonymous memory.
    if vm_flags & VM_GROWSDOWN != 0 && (shared || !anon) {
        return Err(MmError::inval(
            "flags",
            "MAP_GROWSDOWN is only for private anonymous mappings",
        ));
    }
    let pgoff = if anon && !shared {
        // "Set pgoff according to addr for anon_vma."
        addr >> PAGE_SHIFT
    } else if anon {
        // A shared anonymous mapping ignores pgoff.
        0
    } else {
        args.offset >> PAGE_SHIFT
    };
    let file = if anon { 0 } else { args.file };
    // do_mmap: "(flags & (MAP_POPULATE | MAP_NONBLOCK)) == MAP_POPULATE",
    // or VM_LOCKED.
    let populate =
        args.flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE || vm_flags & VM_LOCKED != 0;
    if huge_shift.is_some() {
        // hugetlbfs_file_mmap sets VM_HUGETLB | VM_DONTEXPAND;
        // __mmap_complete clears VM_LOCKED on hugetlb VMAs (never mlocked).
        vm_flags = (vm_flags | VM_HUGETLB | VM_DONTEXPAND) & !VM_LOCKED;
    }
    mmap_region(&mut w, addr, len, vm_flags, pgoff, file)?;
    drop(w);
    if populate {
        // vm_mmap_pgoff: mm_populate after mmap_write_unlock.
        mm_populate(mm, addr, len);
    }
    Ok(addr)
}

/// `round_hint_to_min` (mm/mmap.c): a hint is page-aligned down and, if
/// non-zero but below `mmap_min_addr`, raised to it.
pub(crate) fn round_hint_to_min(hint: u64) -> u64 {
    let hint = hint & !(crate::mm::PAGE_SIZE - 1);
    if hint != 0 && hint < MMAP_MIN_ADDR {
        MMAP_MIN_ADDR
    } else {
        hint
    }
}

/// The `flags & MAP_TYPE` switch of do_mmap: `Ok(shared)`, or its error.
/// Unknown flag bits are ignored (a file's `MAP_SHARED` drops them to
/// `LEGACY_MAP_MASK`), except with `MAP_SHARED_VALIDATE` on a file, which
/// refuses them with EOPNOTSUPP -- `MAP_FIXED_NOREPLACE` included, as it
/// is not in `LEGACY_MAP_MASK`. Anonymous memory knows only MAP_SHARED and
/// MAP_PRIVATE.
fn map_type(flags: u32, anon: bool) -> Result<bool, MmError> {
    use map::*;
    match flags & MAP_TYPE {
        MAP_SHARED => Ok(true),
        MAP_PRIVATE => Ok(false),
        MAP_SHARED_VALIDATE if !anon => {
            let extra = flags & !LEGACY_MAP_MASK;
            if extra != 0 {
                Err(MmError::NotSupported(format!(
                    "flags: MAP_SHARED_VALIDATE does not support bits {extra:#x}"
                )))
            } else {
                Ok(true)
            }
        }
        t => Err(MmError::inval(
            "flags",
            format!("map type {t:#x}: MAP_SHARED or MAP_PRIVATE is required"),
        )),
    }
}

/// `__mmap_region`: put a VMA of `vm_flags` at `[addr, addr + len)`,
/// replacing whatever is there (`MAP_FIXED`).
fn mmap_region(
    w: &mut Writer<'_>,
    addr: u64,
    len: u64,
    mut vm_flags: u64,
    pgoff: u64,
    file: u64,
) -> Result<(), MmError> {
    let end = addr + len;
    // __mmap_prepare: gather (split and detach) what the mapping replaces.
    let gathered = match w.vma_find(addr, end) {
        Some(first) => Some(vms_gather_munmap_vmas(w, first, addr, end)?),
        None => None,
    };
    let (prev, next) = match &gathered {
        Some(g) => (g.prev, g.next),
        None => (
            w.prev_of_gap(addr).map(|e| e.idx),
            w.vma_next(end).map(|e| e.idx),
        ),
    };
    if accountable_mapping(vm_flags) {
        vm_flags |= VM_ACCOUNT;
    }
    // vms_clean_up_area: the old pages go while the VMAs are still in the
    // tree.
    if gathered.is_some() {
        crate::mm::memory::zap_page_range(w.mm, addr, end);
    }
    let mut merged = None;
    if prev.is_some() || next.is_some() {
        let mut vmg = Vmg {
            prev,
            middle: None,
            next,
            start: addr,
            end,
            pgoff,
            flags: vm_flags,
            file,
            anon_name: 0,
            anon_vma: 0,
            just_expand: false,
        };
        merged = vma_merge_new_range(w, &mut vmg);
    }
    let res = match merged {
        Some(_) => Ok(()),
        None => __mmap_new_vma(w, addr, end, vm_flags, pgoff, file),
    };
    // __mmap_complete / vms_abort_munmap_vmas: either way the old VMAs are
    // gone (after the PTEs were cleared the kernel cannot reattach them and
    // leaves a gap where a failed MAP_FIXED mapping was).
    if let Some(g) = gathered {
        vms_complete_munmap_vmas(w, g);
    }
    res
}

/// `__mmap_new_vma`: a VMA of its own for the range. A shared anonymous
/// mapping is backed by its own unlinked shmem file (`shmem_zero_setup`),
/// so it never merges with another.
fn __mmap_new_vma(
    w: &mut Writer<'_>,
    start: u64,
    end: u64,
    vm_flags: u64,
    pgoff: u64,
    mut file: u64,
) -> Result<(), MmError> {
    let mm = w.mm;
    if file == 0 && vm_flags & VM_SHARED != 0 {
        file = mm.ctx.files.new_shmem_file(end - start);
    }
    if let Some(shift) = huge_page_shift(file) {
        // hugetlbfs_file_mmap, after the replaced VMAs were gathered (so a
        // failed MAP_FIXED leaves a gap, as on the kernel): the offset must
        // be huge-page aligned, and without VM_NORESERVE the pages must be
        // reserved (hugetlb_reserve_pages), which a machine with
        // vm.nr_hugepages 0 cannot.
        if pgoff & ((1 << (shift - PAGE_SHIFT)) - 1) != 0 {
            return Err(MmError::inval(
                "offset",
                format!(
                    "{:#x} is not aligned to the huge page size ({:#x})",
                    pgoff << PAGE_SHIFT,
                    1u64 << shift
                ),
            ));
        }
        if vm_flags & VM_NORESERVE == 0 {
            return Err(MmError::NoHugePages);
        }
    }
    vm_area_alloc_new(
        w,
        VmaFields {
            vm_start: start,
            vm_end: end,
            vm_flags,
            vm_pgoff: pgoff,
            vm_file: file,
            ..Default::default()
        },
    )
    .map(|_| ())
}

/// `mm_populate` / `populate_vma_page_range`: fault in `[start, end)` as
/// `MAP_POPULATE` and `VM_LOCKED` do, under `mmap_lock` for read (GUP),
/// writing where the mapping is private and writable (to break COW up
/// front), reading elsewhere. Inaccessible VMAs are skipped.
pub(crate) fn mm_populate(mm: &MmStruct, start: u64, len: u64) {
    crate::mm::gup::populate_range(mm, start, start + len);
}

/// `PMD_SIZE`: a transparent huge page.
const PMD_SIZE: u64 = 2 << 20;

/// `__get_unmapped_area`: private anonymous memory without a hint whose
/// length is a multiple of `PMD_SIZE` is placed THP-aligned
/// (`thp_get_unmapped_area_vmflags`, CONFIG_TRANSPARENT_HUGEPAGE); shared
/// anonymous memory (`shmem_get_unmapped_area` with shmem THP off) and
/// files are not.
pub(crate) fn get_unmapped_area_vmflags(
    w: &Writer<'_>,
    hint: u64,
    len: u64,
    anon_private: bool,
) -> Result<u64, MmError> {
    if anon_private
        && hint == 0
        && len.is_multiple_of(PMD_SIZE)
        && let Some(a) = thp_get_unmapped_area(w, len)
    {
        return Ok(a);
    }
    get_unmapped_area(w, hint, len)
}

/// `hugetlb_get_unmapped_area` (fs/hugetlbfs/inode.c): the hint is
/// rounded up to the huge page size and used if free; else the top-down
/// search with `align_mask` set to the huge page size, which searches for
/// a gap of `len + align - PAGE_SIZE` and takes its highest aligned part.
fn hugetlb_get_unmapped_area(
    w: &Writer<'_>,
    hint: u64,
    len: u64,
    align: u64,
) -> Result<u64, MmError> {
    if hint != 0 {
        let aligned = hint.checked_add(align - 1).map(|a| a & !(align - 1));
        if let Some(a) = aligned
            && let Ok(got) = get_unmapped_area(w, a, len)
            && got == a
        {
            return Ok(a);
        }
    }
    let padded = len
        .checked_add(align - PAGE_SIZE)
        .ok_or(MmError::NoSpace { len })?;
    let low = get_unmapped_area(w, 0, padded)?;
    Ok((low + padded - len) & !(align - 1))
}

/// `__thp_get_unmapped_area` (mm/huge_memory.c) for offset 0: search
/// `len + PMD_SIZE`, then move up to the next PMD boundary -- by a whole
/// PMD when the found start is already aligned, since top-down the
/// padding is kept below.
fn thp_get_unmapped_area(w: &Writer<'_>, len: u64) -> Option<u64> {
    let len_pad = len.checked_add(PMD_SIZE)?;
    let ret = get_unmapped_area(w, 0, len_pad).ok()?;
    let off_sub = ret.wrapping_neg() & (PMD_SIZE - 1);
    Some(if off_sub == 0 {
        ret + PMD_SIZE
    } else {
        ret + off_sub
    })
}

/// `__get_unmapped_area` on a `MAP_FIXED` address (mmap's, and mremap's
/// `vrm_set_new_addr` for `MREMAP_FIXED`): past TASK_SIZE is ENOMEM,
/// unaligned is EINVAL, below mmap_min_addr is security_mmap_addr's EPERM
/// (cap_mmap_addr: a process without CAP_SYS_RAWIO, as the simulation's
/// processes are). hugetlb_get_unmapped_area: an address off the huge page
/// size is EINVAL, before those checks.
pub(crate) fn get_unmapped_area_fixed(
    hint: u64,
    len: u64,
    huge_shift: Option<u32>,
) -> Result<(), MmError> {
    if let Some(shift) = huge_shift
        && hint & ((1 << shift) - 1) != 0
    {
        return Err(MmError::inval(
            "addr",
            format!(
                "{hint:#x} is not aligned to the huge page size ({:#x})",
                1u64 << shift
            ),
        ));
    }
    if hint > TASK_SIZE - len {
        return Err(MmError::NoSpace { len });
    }
    if !page_aligned(hint) {
        return Err(MmError::inval(
            "addr",
            format!("{hint:#x} is not page aligned"),
        ));
    }
    if hint < MMAP_MIN_ADDR {
        return Err(MmError::Permission(format!(
            "addr {hint:#x} is below mmap_min_addr ({MMAP_MIN_ADDR:#x})"
        )));
    }
    Ok(())
}

/// `arch_get_unmapped_area_topdown` (arch/x86/kernel/sys_x86_64.c): the
/// hint if `[hint, hint + len)` is free (`mmap_address_hint_valid`, then
/// `find_vma`), else top-down below `mmap_base`, else bottom-up above it.
pub(crate) fn get_unmapped_area(w: &Writer<'_>, hint: u64, len: u64) -> Result<u64, MmError> {
    let t = &w.mm.mm_mt;
    let g = &w.guard;
    // vm_start_gap: below a VM_GROWSDOWN VMA, stack_guard_gap stays free.
    let start_gap = |e: &crate::mm::vma_tree::TreeEntry| {
        if w.mm.ctx.pool.get(e.idx).vm_flags() & VM_GROWSDOWN != 0 {
            e.start.saturating_sub(STACK_GUARD_GAP)
        } else {
            e.start
        }
    };
    if hint >= MMAP_MIN_ADDR
        && hint.checked_add(len).is_some_and(|e| e <= TASK_SIZE)
        && t.overlapping(hint, hint + len, g).is_empty()
        && t.next(hint + len, g)
            .is_none_or(|n| hint + len <= start_gap(&n))
    {
        return Ok(hint);
    }
    // unmapped_area_topdown (mm/vma.c): the highest gap below high_limit
    // that fits; if the VMA right above it is VM_GROWSDOWN and its
    // vm_start_gap reaches into the gap, search again below that gap.
    let mut high_limit = MMAP_BASE;
    'retry: loop {
        let mut below = high_limit;
        let top = loop {
            let prev = t.prev(below, g);
            let low = prev.map_or(MMAP_MIN_ADDR, |p| p.end.max(MMAP_MIN_ADDR));
            if below >= low && below - low >= len {
                break below;
            }
            match prev {
                Some(p) if p.start > MMAP_MIN_ADDR => below = p.start,
                _ => break 'retry,
            }
        };
        if let Some(n) = t.next(top, g) {
            let gap = start_gap(&n);
            if gap < n.start && gap < top {
                high_limit = gap;
                continue;
            }
        }
        return Ok(top - len);
    }
    let mut low = MMAP_BASE;
    loop {
        if let Some(p) = t.prev(low, g) {
            low = low.max(p.end);
        }
        let next = t.next(low, g);
        let high = next.map_or(TASK_SIZE, |n| n.start);
        if high >= low && high - low >= len {
            return Ok(low);
        }
        match next {
            Some(n) => low = n.end,
            None => return Err(MmError::NoSpace { len }),
        }
    }
}

/// `munmap` (`__vm_munmap` -> `do_vmi_munmap`).
pub fn do_munmap(mm: &MmStruct, start: u64, len: u64) -> Result<(), MmError> {
    let end = munmap_range(start, len)?;
    let mut w = Writer::lock(mm)?;
    do_vmi_munmap(&mut w, start, end)
}

/// `brk`: set the program break, returning the new one. Like the kernel,
/// a request that cannot be met (below the heap start, into a mapping, out
/// of map count or pool) leaves the break unchanged and returns it; 0
/// queries.
pub fn do_brk(mm: &MmStruct, brk: u64) -> Result<(u64, u64), MmError> {
    let mut w = Writer::lock(mm)?;
    let (start_brk, origbrk) = (w.w.state.start_brk, w.w.state.brk);
    if brk < start_brk || brk > TASK_SIZE {
        return Ok((origbrk, start_brk));
    }
    let (Some(newbrk), Some(oldbrk)) = (page_align(brk), page_align(origbrk)) else {
        return Ok((origbrk, start_brk));
    };
    if oldbrk == newbrk {
        w.w.state.brk = brk;
        return Ok((brk, start_brk));
    }
    if brk <= origbrk {
        // Always allow shrinking brk -- if there is a heap VMA to shrink.
        let Some(brkvma) = w.vma_find(newbrk, oldbrk) else {
            return Ok((origbrk, start_brk));
        };
        if brkvma.start >= oldbrk {
            return Ok((origbrk, start_brk));
        }
        return match do_vmi_munmap(&mut w, newbrk, oldbrk) {
            Ok(()) => {
                w.w.state.brk = brk;
                Ok((brk, start_brk))
            }
            Err(_) => Ok((origbrk, start_brk)),
        };
    }
    // check_brk_limits: get_unmapped_area(MAP_FIXED) only checks the end.
    if newbrk > TASK_SIZE {
        return Ok((origbrk, start_brk));
    }
    // Only check whether the next VMA is within the stack guard gap of the
    // expansion area (one page, or stack_guard_gap below a stack).
    if let Some(next) = w.vma_find(oldbrk, newbrk.saturating_add(PAGE_SIZE + STACK_GUARD_GAP))
        && newbrk + PAGE_SIZE > vm_start_gap(&w.fields(next.idx))
    {
        return Ok((origbrk, start_brk));
    }
    // vma_prev_limit(&vmi, mm->start_brk)
    let brkvma = w
        .prev_of_gap(oldbrk)
        .filter(|p| p.start >= start_brk)
        .map(|e| e.idx);
    match do_brk_flags(&mut w, brkvma, oldbrk, newbrk - oldbrk) {
        Ok(()) => {
            w.w.state.brk = brk;
            Ok((brk, start_brk))
        }
        Err(_) => Ok((origbrk, start_brk)),
    }
}

/// `RLIMIT_STACK`'s default soft limit (8 MiB): how far a stack may grow
/// (`acct_stack_growth`).
pub const STACK_RLIMIT: u64 = 8 << 20;

/// `expand_stack` (since 6.5: `mmap_lock` for write, `expand_downwards`):
/// grow the `VM_GROWSDOWN` VMA just above `addr` down to cover it. Fails
/// (the fault is then SEGV_MAPERR) if that would come within
/// `stack_guard_gap` of an accessible VMA below, exceed `RLIMIT_STACK`, or
/// go under `mmap_min_addr`.
pub(crate) fn expand_stack(mm: &MmStruct, addr: u64) -> Result<(), MmError> {
    let w = Writer::lock(mm)?;
    let addr = addr & !(PAGE_SIZE - 1);
    if addr < MMAP_MIN_ADDR {
        return Err(MmError::NoSpace { len: PAGE_SIZE });
    }
    let Some(vma) = w.find_vma(addr) else {
        return Err(MmError::NoSpace { len: PAGE_SIZE });
    };
    let f = w.fields(vma.idx);
    if f.vm_start <= addr {
        // Somebody else expanded it already.
        return Ok(());
    }
    if f.vm_flags & VM_GROWSDOWN == 0 {
        return Err(MmError::NoSpace { len: PAGE_SIZE });
    }
    // Enforce stack_guard_gap.
    if let Some(prev) = w.vma_prev(f.vm_start) {
        let pf = w.fields(prev.idx);
        if pf.vm_flags & VM_GROWSDOWN == 0
            && pf.vm_flags & VM_ACCESS_FLAGS != 0
            && addr.saturating_sub(pf.vm_end) < STACK_GUARD_GAP
        {
            return Err(MmError::NoSpace { len: PAGE_SIZE });
        }
        if pf.vm_end > addr {
            return Err(MmError::NoSpace { len: PAGE_SIZE });
        }
    }
    let grow = (f.vm_start - addr) >> PAGE_SHIFT;
    if grow > f.vm_pgoff || f.vm_end - addr > STACK_RLIMIT {
        return Err(MmError::NoSpace { len: PAGE_SIZE });
    }
    // "We must make sure the anon_vma is allocated."
    let v = w.pool().get(vma.idx);
    if f.anon_vma == 0 {
        crate::mm::memory::__anon_vma_prepare(mm, v, &f);
    }
    // Lock the VMA before expanding, to keep concurrent faults out.
    w.vma_start_write(vma.idx);
    w.vma_set_range(vma.idx, addr, f.vm_end, f.vm_pgoff - grow);
    Ok(())
}

/// `stack_guard_gap`: 256 pages kept free below a `VM_GROWSDOWN` VMA.
pub const STACK_GUARD_GAP: u64 = 256 << PAGE_SHIFT;

/// `vm_start_gap`: where a VMA's start really is, counting the guard gap
/// below a stack.
pub(crate) fn vm_start_gap(f: &VmaFields) -> u64 {
    if f.vm_flags & VM_GROWSDOWN != 0 {
        f.vm_start.saturating_sub(STACK_GUARD_GAP)
    } else {
        f.vm_start
    }
}

/// `do_brk_flags`: extend the heap VMA `vma` over `[addr, addr + len)`, or
/// create a new one.
fn do_brk_flags(
    w: &mut Writer<'_>,
    vma: Option<crate::mm::slab::VmaIdx>,
    addr: u64,
    len: u64,
) -> Result<(), MmError> {
    if w.w.state.map_count > w.mm.ctx.max_map_count {
        return Err(MmError::MapCountExceeded {
            limit: w.mm.ctx.max_map_count,
        });
    }
    // Expand the existing heap VMA if possible (VMG_FLAG_JUST_EXPAND).
    if let Some(v) = vma
        && w.fields(v).vm_end == addr
    {
        let mut vmg = Vmg {
            prev: Some(v),
            middle: None,
            next: None,
            start: addr,
            end: addr + len,
            pgoff: addr >> PAGE_SHIFT,
            flags: VM_BRK_FLAGS,
            file: 0,
            anon_name: 0,
            anon_vma: 0,
            just_expand: true,
        };
        if vma_merge_new_range(w, &mut vmg).is_some() {
            return Ok(());
        }
    }
    vm_area_alloc_new(
        w,
        VmaFields {
            vm_start: addr,
            vm_end: addr + len,
            vm_flags: VM_BRK_FLAGS,
            vm_pgoff: addr >> PAGE_SHIFT,
            ..Default::default()
        },
    )
    .map(|_| ())
}

/// Insert `f` as a VMA without merging (maps import). The range must be free.
pub(crate) fn insert_vma_nomerge(w: &mut Writer<'_>, f: VmaFields) -> Result<(), MmError> {
    if w.w.state.map_count >= w.mm.ctx.max_map_count {
        return Err(MmError::MapCountExceeded {
            limit: w.mm.ctx.max_map_count,
        });
    }
    vm_area_alloc_new(w, f).map(|_| ())
}
