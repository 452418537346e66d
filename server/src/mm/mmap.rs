//! `mmap`, `munmap`, `mprotect` and `brk`: the writers of an address space.
//!
//! Every operation follows one shape, so that a failure can never leave
//! anything half done:
//!
//! 1. take `mmap_lock` for write and write-lock every VMA the range touches
//!    (lockless faults on them now fall back and wait);
//! 2. **plan**: compute the new VMAs for the touched range, split at its
//!    ends, merged with each other and with the neighbours as `vma_merge`
//!    would, and check `max_map_count`;
//! 3. **allocate** every new slot from the pool; if one is missing, give the
//!    others back and fail, with nothing changed;
//! 4. **apply**, which cannot fail: update slots in place (a VMA keeps its
//!    slot when it only shrinks or grows, as `__split_vma` and `vma_expand`
//!    do), insert new ones write-locked, remove the old ones from the tree,
//!    then detach and free them, and fix the page table.
//!
//! Merging follows `vma_merge`: adjacent, same flags, same file with
//! contiguous offsets, same anonymous name, `anon_vma` compatible (one of
//! them none, or the same). Only pieces the operation changed merge;
//! untouched neighbours never merge with each other.

use crate::mm::mm_struct::{MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MmStruct, MmapWriteGuard};
use crate::mm::mm_types::{VmaFields, vm_flags::*};
use crate::mm::pgtable::{free_pgtables, pte};
use crate::mm::pool::VmaIdx;
use crate::mm::rcu::{RcuReadGuard, rcu_read_lock};
use crate::mm::sync::Ordering;
use crate::mm::vma_tree::TreeEntry;
use crate::mm::{
    MMAP_BASE, MMAP_MIN_ADDR, MmError, PAGE_SHIFT, TASK_SIZE, page_align, page_aligned,
};

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
    /// All known bits.
    pub const PROT_MASK: u32 = 0x7;
}

/// `mmap` flag bits (`MAP_*`, x86-64 values).
pub mod map {
    /// Shared mapping.
    pub const MAP_SHARED: u32 = 0x01;
    /// Private (copy-on-write) mapping.
    pub const MAP_PRIVATE: u32 = 0x02;
    /// `MAP_SHARED_VALIDATE`: shared, unknown flags refused.
    pub const MAP_SHARED_VALIDATE: u32 = 0x03;
    /// Map exactly at `addr`, replacing what is there.
    pub const MAP_FIXED: u32 = 0x10;
    /// Not backed by a file.
    pub const MAP_ANONYMOUS: u32 = 0x20;
    /// Stack-like (accepted, sets `VM_GROWSDOWN`-free behaviour: ignored).
    pub const MAP_GROWSDOWN: u32 = 0x100;
    /// Ignored by the kernel.
    pub const MAP_DENYWRITE: u32 = 0x800;
    /// Ignored by the kernel.
    pub const MAP_EXECUTABLE: u32 = 0x1000;
    /// Lock pages (accepted, not simulated).
    pub const MAP_LOCKED: u32 = 0x2000;
    /// No swap reservation (`VM_NORESERVE`, which blocks merges).
    pub const MAP_NORESERVE: u32 = 0x4000;
    /// Prefault (accepted, not simulated).
    pub const MAP_POPULATE: u32 = 0x8000;
    /// Don't block on I/O (ignored).
    pub const MAP_NONBLOCK: u32 = 0x10000;
    /// Stack (`VM_NOHUGEPAGE` since 6.7, which blocks merges).
    pub const MAP_STACK: u32 = 0x20000;
    /// Huge pages (accepted, mapped with base pages).
    pub const MAP_HUGETLB: u32 = 0x40000;
    /// Like `MAP_FIXED` but fail with `EEXIST` instead of replacing.
    pub const MAP_FIXED_NOREPLACE: u32 = 0x100000;
    /// Every bit `mmap` accepts.
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

/// `VM_NORESERVE`.
pub const VM_NORESERVE: u64 = 0x0020_0000;
/// `VM_NOHUGEPAGE`.
pub const VM_NOHUGEPAGE: u64 = 0x4000_0000;

/// Flags and protection of a new heap VMA (`brk`).
const VM_BRK_FLAGS: u64 = VM_READ | VM_WRITE;

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
}

/// `mmap_lock` held for write plus an RCU read section for tree updates.
pub(crate) struct Writer<'a> {
    pub(crate) mm: &'a MmStruct,
    pub(crate) w: MmapWriteGuard<'a>,
    pub(crate) guard: RcuReadGuard,
}

impl<'a> Writer<'a> {
    /// `mmap_write_lock`, failing if the mm has exited.
    pub(crate) fn lock(mm: &'a MmStruct) -> Result<Self, MmError> {
        let w = mm.mmap_write_lock();
        if w.state.dead {
            return Err(MmError::NoSuchProcess(mm.pid));
        }
        Ok(Self {
            mm,
            w,
            guard: rcu_read_lock(),
        })
    }

    fn seq(&self) -> u64 {
        self.w.seq()
    }
}

/// One VMA of a plan.
#[derive(Debug, Clone, Copy)]
struct Piece {
    f: VmaFields,
    /// The existing slot this piece comes from, if any.
    origin: Option<VmaIdx>,
    /// Created or changed by the operation (may merge).
    touched: bool,
}

fn pages(f: &VmaFields) -> u64 {
    (f.vm_end - f.vm_start) >> PAGE_SHIFT
}

/// Clip `f` to `[start, end)`, keeping the file offset consistent.
fn clip(f: &VmaFields, start: u64, end: u64) -> VmaFields {
    let mut c = *f;
    let s = start.max(f.vm_start);
    c.vm_pgoff = f.vm_pgoff + ((s - f.vm_start) >> PAGE_SHIFT);
    c.vm_start = s;
    c.vm_end = end.min(f.vm_end);
    c
}

/// `is_mergeable_vma` + `is_mergeable_anon_vma` + offset contiguity.
fn can_merge(a: &VmaFields, b: &VmaFields) -> bool {
    a.vm_end == b.vm_start
        && a.vm_flags == b.vm_flags
        && a.vm_file == b.vm_file
        && a.anon_name == b.anon_name
        && a.vm_pgoff + pages(a) == b.vm_pgoff
        && (a.anon_vma == 0 || b.anon_vma == 0 || a.anon_vma == b.anon_vma)
}

/// The result of planning: what replaces the old VMAs.
struct Plan {
    olds: Vec<TreeEntry>,
    pieces: Vec<Piece>,
    map_count: usize,
}

/// Plan replacing `[start, end)` by `middle` (pieces inside the range, in
/// order), keeping the parts of old VMAs outside the range and merging with
/// the neighbours. Write-locks every VMA involved.
fn plan(w: &Writer<'_>, start: u64, end: u64, middle: Vec<Piece>) -> Result<Plan, MmError> {
    let mm = w.mm;
    let pool = &mm.ctx.pool;
    let g = &w.guard;
    let mut olds = mm.mm_mt.overlapping(start, end, g);
    // Neighbours that a touched piece may merge with.
    let prev = mm.mm_mt.prev(start, g).filter(|p| p.end == start);
    let next = mm.mm_mt.next(end, g).filter(|n| n.start == end);
    let mut seq: Vec<Piece> = Vec::with_capacity(middle.len() + 4);
    let fields = |e: &TreeEntry| pool.get(e.idx).fields();
    if let Some(p) = prev
        && middle.first().is_some_and(|m| m.f.vm_start == start)
    {
        seq.push(Piece {
            f: fields(&p),
            origin: Some(p.idx),
            touched: false,
        });
        olds.insert(0, p);
    }
    if let Some(first) = olds.iter().find(|o| o.start < start && o.end > start) {
        let f = fields(first);
        seq.push(Piece {
            f: clip(&f, f.vm_start, start),
            origin: Some(first.idx),
            touched: false,
        });
    }
    seq.extend(middle.iter().copied());
    if let Some(last) = olds.iter().find(|o| o.start < end && o.end > end) {
        let f = fields(last);
        seq.push(Piece {
            f: clip(&f, end, f.vm_end),
            origin: Some(last.idx),
            touched: false,
        });
    }
    if let Some(n) = next
        && middle.last().is_some_and(|m| m.f.vm_end == end)
    {
        seq.push(Piece {
            f: fields(&n),
            origin: Some(n.idx),
            touched: false,
        });
        olds.push(n);
    }
    for o in &olds {
        pool.get(o.idx).vma_start_write(w.seq());
    }
    // Merge touched pieces with whatever is adjacent and compatible.
    let mut merged: Vec<Piece> = Vec::with_capacity(seq.len());
    for p in seq {
        if let Some(last) = merged.last_mut()
            && (last.touched || p.touched)
            && can_merge(&last.f, &p.f)
        {
            last.f.vm_end = p.f.vm_end;
            last.f.anon_vma = last.f.anon_vma.max(p.f.anon_vma);
            last.origin = last.origin.or(p.origin);
            last.touched = true;
            continue;
        }
        merged.push(p);
    }
    let map_count = w.w.state.map_count - olds.len() + merged.len();
    if map_count > mm.ctx.max_map_count {
        return Err(MmError::MapCountExceeded {
            limit: mm.ctx.max_map_count,
        });
    }
    Ok(Plan {
        olds,
        pieces: merged,
        map_count,
    })
}

/// Allocate, then apply `plan`. `zap` is the range whose pages go away.
fn commit(w: &mut Writer<'_>, plan: Plan, zap: Option<(u64, u64)>) -> Result<(), MmError> {
    let mm = w.mm;
    let pool = &mm.ctx.pool;
    let mut claimed: Vec<VmaIdx> = Vec::new();
    let mut slots: Vec<(VmaIdx, bool)> = Vec::with_capacity(plan.pieces.len());
    for p in &plan.pieces {
        match p.origin {
            Some(o) if !claimed.contains(&o) => {
                claimed.push(o);
                slots.push((o, false));
            }
            _ => match pool.vm_area_alloc() {
                Ok((idx, _)) => slots.push((idx, true)),
                Err(e) => {
                    // Nothing applied yet: hand back what we took.
                    for (idx, fresh) in slots {
                        if fresh {
                            pool.vm_area_free_with(idx, &w.guard);
                        }
                    }
                    return Err(e.into());
                }
            },
        }
    }
    let g = &w.guard;
    let seq = w.seq();
    // Remove every old entry whose slot changes or goes away. A reader that
    // walks now sees a gap and falls back to mmap_lock, which we hold.
    for o in &plan.olds {
        let keep_same =
            plan.pieces.iter().zip(&slots).any(|(p, (idx, _))| {
                *idx == o.idx && p.f.vm_start == o.start && p.f.vm_end == o.end
            });
        if !keep_same {
            mm.mm_mt.erase(o.start, g);
        }
    }
    for (p, (idx, fresh)) in plan.pieces.iter().zip(&slots) {
        let vma = pool.get(*idx);
        let mut f = p.f;
        f.vm_mm = mm.id();
        if *fresh {
            vma.set_fields(&f);
            // Born write-locked: readers that find it before we unlock fall
            // back instead of using a VMA whose pages are being set up.
            vma.vma_start_write(seq);
        } else if vma.fields() != f {
            // Still attached and write-locked since plan(): readers are out.
            vma.set_fields(&f);
        } else {
            continue;
        }
        mm.mm_mt.store(
            TreeEntry {
                start: f.vm_start,
                end: f.vm_end,
                idx: *idx,
                generation: vma.generation(),
            },
            g,
        );
        if *fresh {
            vma.vma_mark_attached();
        }
    }
    if let Some((s, e)) = zap {
        zap_page_range(mm, s, e);
        // unmap_region: then the tables no VMA uses any more.
        free_pgtables(mm, s, e, g);
    }
    for o in &plan.olds {
        if !claimed.contains(&o.idx) {
            let vma = pool.get(o.idx);
            vma.vma_mark_detached();
            pool.vm_area_free_with(o.idx, g);
        }
    }
    w.w.state.map_count = plan.map_count;
    Ok(())
}

/// `zap_page_range`: drop every PTE in `[start, end)` and its RSS.
pub(crate) fn zap_page_range(mm: &MmStruct, start: u64, end: u64) -> u64 {
    let mut freed = 0;
    mm.pgd.for_each_present(start, end, |_, p| {
        // Relaxed: mmap_lock write + write-locked VMAs exclude faults here.
        let v = p.swap(0, Ordering::Relaxed);
        if let Some(ctr) = rss_counter(v) {
            mm.rss.sub(ctr, 1);
            freed += 1;
        }
    });
    freed
}

/// Which RSS counter a PTE value counts in (`None` for the zero page).
pub(crate) fn rss_counter(v: u64) -> Option<usize> {
    if v & pte::PRESENT == 0 || v & pte::ZERO != 0 {
        None
    } else if v & pte::FILE != 0 {
        Some(MM_FILEPAGES)
    } else if v & pte::SHMEM != 0 {
        Some(MM_SHMEMPAGES)
    } else {
        Some(MM_ANONPAGES)
    }
}

fn check_range(start: u64, len: u64, field: &'static str) -> Result<u64, MmError> {
    if !page_aligned(start) {
        return Err(MmError::inval(
            "addr",
            format!("{start:#x} is not page aligned"),
        ));
    }
    if len == 0 {
        return Err(MmError::inval(field, "must be greater than 0"));
    }
    let len =
        page_align(len).ok_or_else(|| MmError::inval(field, format!("{len:#x} overflows")))?;
    match start.checked_add(len) {
        Some(end) if end <= TASK_SIZE => Ok(end),
        _ => Err(MmError::inval(
            field,
            format!("range {start:#x}+{len:#x} goes beyond user space ({TASK_SIZE:#x})"),
        )),
    }
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
    if args.flags & !MAP_KNOWN != 0 {
        return Err(MmError::inval(
            "flags",
            format!("unknown bits {:#x}", args.flags & !MAP_KNOWN),
        ));
    }
    let shared = match args.flags & MAP_SHARED_VALIDATE {
        MAP_SHARED | MAP_SHARED_VALIDATE => true,
        MAP_PRIVATE => false,
        _ => {
            return Err(MmError::inval(
                "flags",
                "exactly one of MAP_SHARED and MAP_PRIVATE is required",
            ));
        }
    };
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
    if args.len == 0 {
        return Err(MmError::inval("length", "must be greater than 0"));
    }
    let len = match page_align(args.len) {
        Some(l) if l <= TASK_SIZE => l,
        _ => return Err(MmError::NoSpace { len: args.len }),
    };
    if !page_aligned(args.offset) {
        return Err(MmError::inval(
            "offset",
            format!("{:#x} is not page aligned", args.offset),
        ));
    }
    if !anon && args.offset.checked_add(len).is_none() {
        return Err(MmError::Overflow {
            offset: args.offset,
            len,
        });
    }
    let fixed = args.flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0;
    if args.addr != 0 && !page_aligned(args.addr) {
        return Err(MmError::inval(
            "addr",
            format!("{:#x} is not page aligned", args.addr),
        ));
    }
    if fixed {
        if args.addr < MMAP_MIN_ADDR {
            return Err(MmError::inval(
                "addr",
                format!(
                    "{:#x} is below mmap_min_addr ({MMAP_MIN_ADDR:#x})",
                    args.addr
                ),
            ));
        }
        if args.addr.checked_add(len).is_none_or(|e| e > TASK_SIZE) {
            return Err(MmError::inval(
                "addr",
                format!(
                    "range {:#x}+{len:#x} goes beyond user space ({TASK_SIZE:#x})",
                    args.addr
                ),
            ));
        }
    }
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
    let mut w = Writer::lock(mm)?;
    let addr = if fixed {
        if args.flags & MAP_FIXED_NOREPLACE != 0
            && !mm
                .mm_mt
                .overlapping(args.addr, args.addr + len, &w.guard)
                .is_empty()
        {
            return Err(MmError::Exists {
                start: args.addr,
                end: args.addr + len,
            });
        }
        args.addr
    } else {
        get_unmapped_area(&w, args.addr, len)?
    };
    let file = if anon && shared {
        // shmem_zero_setup: a shared anonymous mapping is backed by its own
        // unlinked /dev/zero file and never merges with another.
        mm.ctx.files.import(crate::mm::mm_struct::FileInfo {
            path: "/dev/zero (deleted)".into(),
            dev_major: 0,
            dev_minor: 1,
            inode: mm.ctx.new_anon_vma(),
        })
    } else {
        args.file
    };
    let pgoff = if anon && !shared {
        addr >> PAGE_SHIFT
    } else {
        args.offset >> PAGE_SHIFT
    };
    let piece = Piece {
        f: VmaFields {
            vm_mm: mm.id(),
            vm_start: addr,
            vm_end: addr + len,
            vm_flags,
            vm_pgoff: pgoff,
            vm_file: file,
            anon_name: 0,
            anon_vma: 0,
        },
        origin: None,
        touched: true,
    };
    let p = plan(&w, addr, addr + len, vec![piece])?;
    commit(&mut w, p, Some((addr, addr + len)))?;
    Ok(addr)
}

/// `get_unmapped_area`: the hint if it fits, else top-down below
/// `mmap_base`, else bottom-up above it.
fn get_unmapped_area(w: &Writer<'_>, hint: u64, len: u64) -> Result<u64, MmError> {
    let t = &w.mm.mm_mt;
    let g = &w.guard;
    if hint >= MMAP_MIN_ADDR
        && hint.checked_add(len).is_some_and(|e| e <= TASK_SIZE)
        && t.overlapping(hint, hint + len, g).is_empty()
    {
        return Ok(hint);
    }
    let mut high = MMAP_BASE;
    loop {
        let prev = t.prev(high, g);
        let low = prev.map_or(MMAP_MIN_ADDR, |p| p.end.max(MMAP_MIN_ADDR));
        if high >= low && high - low >= len {
            return Ok(high - len);
        }
        match prev {
            Some(p) if p.start > MMAP_MIN_ADDR => high = p.start,
            _ => break,
        }
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

/// `munmap`.
pub fn do_munmap(mm: &MmStruct, start: u64, len: u64) -> Result<(), MmError> {
    let end = check_range(start, len, "length")?;
    let mut w = Writer::lock(mm)?;
    let p = plan(&w, start, end, Vec::new())?;
    commit(&mut w, p, Some((start, end)))
}

/// `mprotect`.
pub fn do_mprotect(mm: &MmStruct, start: u64, len: u64, prot: u32) -> Result<(), MmError> {
    if prot & !prot::PROT_MASK != 0 {
        return Err(MmError::inval(
            "prot",
            format!("unknown bits {:#x}", prot & !prot::PROT_MASK),
        ));
    }
    if !page_aligned(start) {
        return Err(MmError::inval(
            "addr",
            format!("{start:#x} is not page aligned"),
        ));
    }
    if len == 0 {
        return Ok(());
    }
    let end = check_range(start, len, "length")?;
    let mut w = Writer::lock(mm)?;
    let olds = mm.mm_mt.overlapping(start, end, &w.guard);
    // The whole range must be mapped, or nothing changes (ENOMEM).
    let mut cursor = start;
    for o in &olds {
        if o.start > cursor {
            break;
        }
        cursor = o.end;
    }
    if cursor < end {
        return Err(MmError::NotMapped { start, end });
    }
    let pool = &mm.ctx.pool;
    let new_access = u64::from(prot);
    if olds
        .iter()
        .all(|o| pool.get(o.idx).vm_flags() & VM_ACCESS_FLAGS == new_access)
    {
        return Ok(());
    }
    let middle = olds
        .iter()
        .map(|o| {
            let f = pool.get(o.idx).fields();
            let mut c = clip(&f, start, end);
            c.vm_flags = (f.vm_flags & !VM_ACCESS_FLAGS) | new_access;
            Piece {
                f: c,
                origin: Some(o.idx),
                touched: true,
            }
        })
        .collect();
    let p = plan(&w, start, end, middle)?;
    commit(&mut w, p, None)?;
    if prot & prot::PROT_WRITE == 0 {
        // change_protection: existing PTEs lose their write bit.
        mm.pgd.for_each_present(start, end, |_, p| {
            let v = p.load(Ordering::Relaxed);
            p.store(v & !pte::WRITE, Ordering::Relaxed);
        });
    }
    Ok(())
}

/// `brk`: set the program break, returning the new one. Like the kernel,
/// a request that cannot be met (below the heap start, into a mapping, out
/// of map count or pool) leaves the break unchanged and returns it; 0
/// queries.
pub fn do_brk(mm: &MmStruct, brk: u64) -> Result<(u64, u64), MmError> {
    let mut w = Writer::lock(mm)?;
    let (start_brk, old) = (w.w.state.start_brk, w.w.state.brk);
    if brk < start_brk || brk > TASK_SIZE {
        return Ok((old, start_brk));
    }
    let (Some(new_end), Some(old_end)) = (page_align(brk), page_align(old)) else {
        return Ok((old, start_brk));
    };
    if new_end == old_end {
        w.w.state.brk = brk;
        return Ok((brk, start_brk));
    }
    let res = if new_end < old_end {
        plan(&w, new_end, old_end, Vec::new())
            .and_then(|p| commit(&mut w, p, Some((new_end, old_end))))
    } else {
        // Leave a guard page before the next mapping (vm_start_gap).
        let limit = new_end.saturating_add(crate::mm::PAGE_SIZE).min(TASK_SIZE);
        if !mm.mm_mt.overlapping(old_end, limit, &w.guard).is_empty() {
            return Ok((old, start_brk));
        }
        let piece = Piece {
            f: VmaFields {
                vm_mm: mm.id(),
                vm_start: old_end,
                vm_end: new_end,
                vm_flags: VM_BRK_FLAGS,
                vm_pgoff: old_end >> PAGE_SHIFT,
                vm_file: 0,
                anon_name: 0,
                anon_vma: 0,
            },
            origin: None,
            touched: true,
        };
        plan(&w, old_end, new_end, vec![piece]).and_then(|p| commit(&mut w, p, None))
    };
    match res {
        Ok(()) => {
            w.w.state.brk = brk;
            Ok((brk, start_brk))
        }
        Err(_) => Ok((old, start_brk)),
    }
}

/// Insert `f` as a VMA without merging (maps import). The range must be free.
pub(crate) fn insert_vma_nomerge(w: &mut Writer<'_>, f: VmaFields) -> Result<(), MmError> {
    let mm = w.mm;
    if w.w.state.map_count >= mm.ctx.max_map_count {
        return Err(MmError::MapCountExceeded {
            limit: mm.ctx.max_map_count,
        });
    }
    let (idx, vma) = mm.ctx.pool.vm_area_alloc()?;
    vma.set_fields(&VmaFields {
        vm_mm: mm.id(),
        ..f
    });
    vma.vma_start_write(w.seq());
    mm.mm_mt.store(
        TreeEntry {
            start: f.vm_start,
            end: f.vm_end,
            idx,
            generation: vma.generation(),
        },
        &w.guard,
    );
    vma.vma_mark_attached();
    w.w.state.map_count += 1;
    Ok(())
}
