//! `/proc/PID/maps`: rendering (`show_map_vma`) and import.
//!
//! Rendering is byte-for-byte the kernel's: `%08lx-%08lx %c%c%c%c %08llx
//! %02x:%02x %lu `, then, if the VMA has a name, `seq_pad`: spaces up to
//! column 72 plus one more, then the name. Import accepts what a real kernel prints (and what rendering
//! produces), so a real process's layout can be loaded and replayed.
//!
//! The x86-64 gate area (`[vsyscall]` at `VSYSCALL_ADDR`) is no VMA: the
//! kernel's `show_map` appends `get_gate_vma(mm)` after the last VMA.
//! An imported text that has the line keeps it the same way (the mm's
//! `gate_vma`, rendered last, inherited by fork, untouched by every
//! operation); an empty Spawn has none.

use crate::mm::mm_types::{VmaFields, vm_flags::*};
use crate::mm::rcu::rcu_read_lock;
use crate::mm::sync::Ordering;
use crate::mm::vma::Writer;
use crate::mm::{MmError, PAGE_SHIFT, TASK_SIZE, page_aligned};
use crate::mm::{
    file_table::FileInfo,
    mm_struct::{MM_ANONPAGES, MmStruct},
};
use crate::mm::{memory::rss_counter, mmap::insert_vma_nomerge};
use std::fmt::Write as _;

/// One line of maps, structured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// `vm_flags`.
    pub vm_flags: u64,
    /// Offset in bytes (0 for anonymous memory).
    pub offset: u64,
    /// File id (0 for anonymous memory).
    pub file_id: u64,
    /// Path or special name (`[heap]`), empty for plain anonymous memory.
    pub path: String,
    /// Device major.
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// Inode.
    pub inode: u64,
    /// Resident pages (smaps `Rss`: present PTEs but the zero page).
    pub rss_pages: u64,
    /// Resident anonymous pages (smaps `Anonymous`).
    pub anon_pages: u64,
}

/// The `rwxp` column of a VMA with `vm_flags`, as `show_vma_header_prefix`
/// prints it (`s` for `VM_MAYSHARE`, not `VM_SHARED`).
pub(crate) fn perms(vm_flags: u64) -> String {
    let c = |bit, ch| if vm_flags & bit != 0 { ch } else { '-' };
    [
        c(VM_READ, 'r'),
        c(VM_WRITE, 'w'),
        c(VM_EXEC, 'x'),
        if vm_flags & VM_MAYSHARE != 0 {
            's'
        } else {
            'p'
        },
    ]
    .into_iter()
    .collect()
}

impl MapsEntry {
    /// The `rwxp` column.
    pub fn perms(&self) -> String {
        perms(self.vm_flags)
    }

    /// The line as the kernel prints it, with the newline.
    pub fn render(&self, out: &mut String) {
        let at = out.len();
        let _ = write!(
            out,
            "{:08x}-{:08x} {} {:08x} {:02x}:{:02x} {} ",
            self.start,
            self.end,
            self.perms(),
            self.offset,
            self.dev_major,
            self.dev_minor,
            self.inode
        );
        if !self.path.is_empty() {
            // show_vma_header_prefix: seq_setwidth(25 + sizeof(void *) * 6
            // - 1) = 72; then seq_pad(m, ' ') pads up to column 72 *and*
            // always writes one more ' ' (fs/seq_file.c), so a prefix that
            // already reaches column 72 still gets a space before the name.
            let width = out.len() - at;
            out.extend(std::iter::repeat_n(' ', width.max(72) + 1 - width));
            out.push_str(&self.path);
        }
        out.push('\n');
    }
}

/// `VSYSCALL_ADDR` (arch/x86/include/uapi/asm/vsyscall.h), the gate area.
pub const VSYSCALL_ADDR: u64 = 0xffff_ffff_ff60_0000;

/// The gate area's maps entry (`gate_vma` in arch/x86/entry/vsyscall).
fn gate_entry(vm_flags: u64) -> MapsEntry {
    MapsEntry {
        start: VSYSCALL_ADDR,
        end: VSYSCALL_ADDR + (1 << PAGE_SHIFT),
        vm_flags,
        offset: 0,
        file_id: 0,
        path: "[vsyscall]".into(),
        dev_major: 0,
        dev_minor: 0,
        inode: 0,
        rss_pages: 0,
        anon_pages: 0,
    }
}

/// `show_map_vma`: the maps entry of a VMA with fields `f`, whose caller
/// keeps it stable (read-locked, or `mmap_lock` held). `start_brk`/`brk`
/// are the mm's as `get_vma_name` reads them (`mm->brk`, no lock).
pub(crate) fn show_map_vma(mm: &MmStruct, f: &VmaFields, start_brk: u64, brk: u64) -> MapsEntry {
    let files = &mm.ctx.files;
    let mut m = MapsEntry {
        start: f.vm_start,
        end: f.vm_end,
        vm_flags: f.vm_flags,
        offset: 0,
        file_id: f.vm_file,
        path: String::new(),
        dev_major: 0,
        dev_minor: 0,
        inode: 0,
        rss_pages: 0,
        anon_pages: 0,
    };
    // smaps_pte_range: every present PTE but the zero page counts in Rss;
    // PageAnon ones also in Anonymous. (smaps' walk, which the kernel does
    // under mmap_lock; here the page table is lock-free to read and the
    // caller's VMA lock keeps the range, so either reader may do it.)
    mm.pgd.for_each_present(f.vm_start, f.vm_end, |_, p| {
        // Relaxed: a snapshot, like smaps.
        if let Some(ctr) = rss_counter(p.load(Ordering::Relaxed)) {
            m.rss_pages += 1;
            if ctr == MM_ANONPAGES {
                m.anon_pages += 1;
            }
        }
    });
    if f.vm_file != 0 {
        let info = files.file(f.vm_file);
        m.offset = f.vm_pgoff << PAGE_SHIFT;
        m.path = info.path.clone();
        m.dev_major = info.dev_major;
        m.dev_minor = info.dev_minor;
        m.inode = info.inode;
    } else if f.vm_start < brk && f.vm_end > start_brk {
        // get_vma_name (fs/proc/task_mmu.c) asks vma_is_initial_heap
        // (strict: vm_start < brk && vm_end > start_brk) before the anon
        // name, so a named VMA over the heap is still [heap].
        m.path = "[heap]".into();
    } else if let Some(n) = (f.anon_name != 0)
        .then(|| files.name(f.anon_name))
        .flatten()
    {
        m.path = n.to_string();
    }
    m
}

/// The gate area's entry if the mm has one (`get_gate_vma`).
pub(crate) fn gate_vma(flags: Option<u64>) -> Option<MapsEntry> {
    flags.map(gate_entry)
}

/// The maps of `mm` read the pre-6.17 way: `mmap_lock` held for read for
/// the whole walk (`--maps-reader mmap-lock`), plus `(start_brk, brk)`.
pub(crate) fn show_maps_mmap_lock(mm: &MmStruct) -> (Vec<MapsEntry>, u64, u64) {
    let state = mm.mmap_read_lock();
    let g = rcu_read_lock();
    let pool = &mm.ctx.pool;
    let mut entries = mm
        .mm_mt
        .entries(&g)
        .into_iter()
        .map(|e| {
            let v = pool.get(e.idx);
            if let Some(r) = mm.race_hooks() {
                r.hit(crate::mm::race::InjectPoint::MapsShowVma, v);
            }
            show_map_vma(mm, &v.fields(), state.start_brk, state.brk)
        })
        .collect::<Vec<_>>();
    // show_map's m_next: the gate VMA after the last real one.
    entries.extend(gate_vma(state.gate_vma));
    (entries, state.start_brk, state.brk)
}

/// Render entries as maps text.
pub fn render(entries: &[MapsEntry]) -> String {
    let mut s = String::with_capacity(entries.len() * 100);
    for e in entries {
        e.render(&mut s);
    }
    s
}

/// A maps text that could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("maps_text line {line}: {reason}")]
pub struct MapsParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// One parsed maps line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    /// Start.
    pub start: u64,
    /// End.
    pub end: u64,
    /// `vm_flags` from the perms column.
    pub vm_flags: u64,
    /// Offset in bytes.
    pub offset: u64,
    /// Device.
    pub dev: (u32, u32),
    /// Inode.
    pub inode: u64,
    /// Path or name, empty if none.
    pub path: String,
    /// The flags maps does not show, from an smaps `VmFlags:` line after
    /// this one (`None`: the text had none; the import then infers
    /// `VM_ACCOUNT` as `accountable_mapping` would).
    pub hidden: Option<u64>,
}

/// smaps `VmFlags:` mnemonics (`show_smap_vma_flags`, fs/proc/task_mmu.c)
/// of the flags the simulation models besides the perms column. Other
/// mnemonics (`mr`, `mw`, `me`, `sd`, `io`, `pf`, ...) name flags it does
/// not model and are ignored.
const VMFLAG_MNEMONICS: &[(&str, u64)] = &[
    ("gd", VM_GROWSDOWN),
    ("lo", VM_LOCKED),
    ("dc", VM_DONTCOPY),
    ("de", VM_DONTEXPAND),
    ("lf", VM_LOCKONFAULT),
    ("ac", VM_ACCOUNT),
    ("nr", VM_NORESERVE),
    ("ht", VM_HUGETLB),
    ("wf", VM_WIPEONFORK),
    ("dd", VM_DONTDUMP),
    ("hg", VM_HUGEPAGE),
    ("nh", VM_NOHUGEPAGE),
];

/// An smaps `Key: value` line (`Size:`, `Rss:`, `VmFlags:`, ...)?
fn smaps_field(raw: &str) -> Option<(&str, &str)> {
    let (k, v) = raw.split_once(':')?;
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some((k, v))
}

/// Parse maps text. Blank lines are skipped; the `[vsyscall]` gate area
/// line (exactly `VSYSCALL_ADDR`, one page, last) is returned as a line
/// above user space, which [`import_maps`] keeps as the mm's gate. smaps
/// text is accepted too: its `VmFlags:` line sets the hidden flags of the
/// maps line above it, its other `Key: value` lines are skipped. Anything
/// else malformed is an error naming the line.
pub fn parse_maps(text: &str) -> Result<Vec<MapsLine>, MapsParseError> {
    let mut out: Vec<MapsLine> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |reason: String| MapsParseError { line, reason };
        if raw.trim().is_empty() {
            continue;
        }
        if let Some((key, value)) = smaps_field(raw) {
            let Some(prev) = out.last_mut() else {
                return Err(err(format!("smaps field {key:?} before any maps line")));
            };
            if key == "VmFlags" {
                prev.hidden = Some(
                    value
                        .split_whitespace()
                        .filter_map(|m| VMFLAG_MNEMONICS.iter().find(|(n, _)| *n == m))
                        .fold(0, |a, (_, f)| a | f),
                );
            }
            continue;
        }
        let mut rest = raw.trim_start();
        let mut field = |name: &str| -> Result<&str, MapsParseError> {
            rest = rest.trim_start_matches(' ');
            let end = rest.find(' ').unwrap_or(rest.len());
            let (f, r) = rest.split_at(end);
            rest = r;
            if f.is_empty() {
                Err(MapsParseError {
                    line,
                    reason: format!("missing {name} column"),
                })
            } else {
                Ok(f)
            }
        };
        let range = field("address range")?;
        let perms = field("perms")?;
        let offset = field("offset")?;
        let dev = field("device")?;
        let inode = field("inode")?;
        let path = rest.trim_start_matches(' ').to_string();
        let (s, e) = range
            .split_once('-')
            .ok_or_else(|| err(format!("address range {range:?} is not START-END")))?;
        let hex = |v: &str, what: &str| {
            u64::from_str_radix(v, 16).map_err(|_| err(format!("{what} {v:?} is not hexadecimal")))
        };
        let (start, end) = (hex(s, "start")?, hex(e, "end")?);
        if out.last().is_some_and(|l: &MapsLine| l.start >= TASK_SIZE) {
            return Err(err(
                "a line after the [vsyscall] gate area (the kernel prints it last)".into(),
            ));
        }
        let gate = path == "[vsyscall]" && start >= TASK_SIZE;
        if gate && (start != VSYSCALL_ADDR || end != VSYSCALL_ADDR + (1 << PAGE_SHIFT)) {
            return Err(err(format!(
                "[vsyscall] at {start:#x}-{end:#x}: the x86-64 gate area is {VSYSCALL_ADDR:x}-{:x}",
                VSYSCALL_ADDR + (1 << PAGE_SHIFT)
            )));
        }
        if start >= end {
            return Err(err(format!("start {start:#x} is not below end {end:#x}")));
        }
        if !page_aligned(start) || !page_aligned(end) {
            return Err(err("range is not page aligned".into()));
        }
        if end > TASK_SIZE && !gate {
            return Err(err(format!(
                "end {end:#x} is beyond user space ({TASK_SIZE:#x})"
            )));
        }
        let pb = perms.as_bytes();
        if pb.len() != 4
            || !matches!(pb[0], b'r' | b'-')
            || !matches!(pb[1], b'w' | b'-')
            || !matches!(pb[2], b'x' | b'-')
            || !matches!(pb[3], b'p' | b's')
        {
            return Err(err(format!("perms {perms:?} is not like rwxp")));
        }
        let mut vm_flags = 0;
        if pb[0] == b'r' {
            vm_flags |= VM_READ;
        }
        if pb[1] == b'w' {
            vm_flags |= VM_WRITE;
        }
        if pb[2] == b'x' {
            vm_flags |= VM_EXEC;
        }
        if pb[3] == b's' {
            vm_flags |= VM_MAYSHARE | VM_SHARED;
        }
        let offset = hex(offset, "offset")?;
        if !page_aligned(offset) {
            return Err(err(format!("offset {offset:#x} is not page aligned")));
        }
        let (ma, mi) = dev
            .split_once(':')
            .ok_or_else(|| err(format!("device {dev:?} is not MAJOR:MINOR")))?;
        let dev = (
            u32::from_str_radix(ma, 16)
                .map_err(|_| err(format!("device major {ma:?} is not hexadecimal")))?,
            u32::from_str_radix(mi, 16)
                .map_err(|_| err(format!("device minor {mi:?} is not hexadecimal")))?,
        );
        let inode = inode
            .parse::<u64>()
            .map_err(|_| err(format!("inode {inode:?} is not a number")))?;
        if let Some(prev) = out.last() {
            let prev: &MapsLine = prev;
            if start < prev.end {
                return Err(err(format!(
                    "range starts at {start:#x}, inside or before the previous line's {:#x}-{:#x}",
                    prev.start, prev.end
                )));
            }
        }
        out.push(MapsLine {
            start,
            end,
            vm_flags,
            offset,
            dev,
            inode,
            path,
            hidden: None,
        });
    }
    Ok(out)
}

/// Load parsed maps into the empty `mm`. Imported VMAs never merge with
/// each other (they are what the kernel left), and anonymous private ones
/// get distinct `anon_vma`s so later operations don't merge them either.
/// `start_brk`, if given, places the heap (the kernel randomises it, so a
/// maps text alone cannot say where an empty heap starts).
pub fn import_maps(
    mm: &MmStruct,
    lines: &[MapsLine],
    start_brk: Option<u64>,
) -> Result<(), MmError> {
    let mut w = Writer::lock(mm)?;
    let ctx = mm.ctx.clone();
    let mut heap: Option<(u64, u64)> = None;
    for l in lines {
        if l.start >= TASK_SIZE {
            // The gate area ([vsyscall], parse_maps checked it): no VMA.
            w.w.state.gate_vma = Some(l.vm_flags);
            continue;
        }
        let named = l.path.starts_with('[') && l.path.ends_with(']');
        let is_file = l.inode != 0 || (!l.path.is_empty() && !named);
        let mut f = VmaFields {
            vm_mm: mm.id(),
            vm_start: l.start,
            vm_end: l.end,
            // With smaps VmFlags, the flags the kernel had. Without, infer:
            // a private writable VMA was accountable when it was made
            // (accountable_mapping) and carries VM_ACCOUNT, which decides
            // whether later mappings merge with it. (A private mapping made
            // writable and back, like RELRO, keeps it too; maps does not
            // show that, so such a VMA imports without it: give smaps.)
            vm_flags: match l.hidden {
                Some(h) => l.vm_flags | h,
                None if crate::mm::mmap::accountable_mapping(l.vm_flags) => l.vm_flags | VM_ACCOUNT,
                None => l.vm_flags,
            },
            vm_pgoff: l.start >> PAGE_SHIFT,
            ..Default::default()
        };
        if is_file {
            f.vm_file = ctx.files.import(FileInfo {
                path: l.path.clone(),
                dev_major: l.dev.0,
                dev_minor: l.dev.1,
                inode: l.inode,
            });
            f.vm_pgoff = l.offset >> PAGE_SHIFT;
        } else if l.path == "[stack]" {
            // The main thread's stack grows down (setup_arg_pages).
            f.vm_flags |= VM_GROWSDOWN;
            f.anon_name = ctx.files.name_id(&l.path);
        } else if l.path == "[heap]" {
            heap = Some((l.start, l.end));
        } else if !l.path.is_empty() {
            f.anon_name = ctx.files.name_id(&l.path);
        }
        if !is_file && l.vm_flags & VM_MAYSHARE == 0 {
            f.anon_vma = ctx.new_anon_vma();
            f.anon_vma_chain = 1;
        }
        if let Err(e) = insert_vma_nomerge(&mut w, f) {
            // All or nothing: undo what this import inserted.
            drop(w);
            let _ = crate::mm::exit::exit_mmap(mm);
            return Err(e);
        }
    }
    if let Some(b) = start_brk {
        w.w.state.start_brk = b;
        w.w.state.brk = heap.map_or(b, |(_, e)| e.max(b));
    } else if let Some((s, e)) = heap {
        w.w.state.start_brk = s;
        w.w.state.brk = e;
    } else if let Some(last_file_end) = lines
        .iter()
        .filter(|l| l.start < 0x7000_0000_0000)
        .map(|l| l.end)
        .max()
    {
        // No heap yet: the break starts right after the program's mappings.
        w.w.state.start_brk = last_file_end;
        w.w.state.brk = last_file_end;
    }
    Ok(())
}

#[cfg(test)]
mod render_tests {
    use super::*;

    fn entry(start: u64, end: u64, offset: u64, inode: u64, path: &str) -> MapsEntry {
        MapsEntry {
            start,
            end,
            vm_flags: VM_READ | VM_WRITE,
            offset,
            file_id: 0,
            path: path.into(),
            dev_major: 0,
            dev_minor: 1,
            inode,
            rss_pages: 0,
            anon_pages: 0,
        }
    }

    /// show_vma_header_prefix + seq_pad (fs/proc/task_mmu.c, fs/seq_file.c):
    /// the name starts at column 73 after a short prefix, and a prefix that
    /// reaches column 72 still gets one space.
    #[test]
    fn seq_pad_always_adds_one_space() {
        let mut s = String::new();
        entry(0x7f00_0000_0000, 0x7f00_0000_1000, 0, 1043, "/x").render(&mut s);
        assert_eq!(s.find("/x"), Some(73), "{s:?}");
        let mut long = String::new();
        // 64-bit offset and a 20-digit inode: the prefix is past column 72.
        entry(
            0x7f00_0000_0000,
            0x7f00_0000_1000,
            0xffff_ffff_ffff_f000,
            u64::MAX,
            "/y",
        )
        .render(&mut long);
        let name = long.find("/y").unwrap();
        assert!(name > 73, "{long:?}");
        assert_eq!(
            &long[name - 2..name],
            "  ",
            "prefix space + seq_pad's: {long:?}"
        );
    }
}
