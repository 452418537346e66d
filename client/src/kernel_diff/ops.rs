//! The operations of `kernel-diff`, their script format and the random
//! generator.
//!
//! A script is one operation a line (blank lines and `#` comments are
//! ignored); `@P` in front selects the process (0 is the first, a `fork`
//! child is the lowest free number), default 0:
//!
//! ```text
//! mmap ADDR LEN PROT FLAGS [file=N offset=OFF]   # N = memfd 0..3
//! munmap ADDR LEN
//! mprotect ADDR LEN PROT
//! brk OFF        # brk(start_brk + OFF); OFF may be negative
//! brk query      # brk(0)
//! touch ADDR read|write
//! mremap OLD OLDLEN NEWLEN [FLAGS] [NEWADDR]  # FLAGS: 0 or MREMAP_MAYMOVE|...
//! madvise ADDR LEN ADVICE   # MADV_DONTNEED, MADV_FREE, MADV_DONTFORK, ...
//! fork
//! exit
//! fill ADDR COUNT  # COUNT one-page rw- anonymous mappings, every 2 pages
//! ```
//!
//! `ADDR`, `LEN`, `OFF` are hex (`0x...`) or decimal (`LEN` also `4K`, `2M`);
//! `PROT` is `rwx`-style (`r-x`, `---`); `FLAGS` are `MAP_*` names joined by
//! `|` (`MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED`), hex numbers allowed for
//! bits without a name. mremap `FLAGS` are `MREMAP_MAYMOVE`,
//! `MREMAP_FIXED`, `MREMAP_DONTUNMAP` joined by `|` (or a number, `0` for
//! none), `NEWADDR` defaults to 0; `ADVICE` is a `MADV_*` name (`dontneed`
//! works too) or a number. Addresses are absolute: the window is fixed at
//! [`WINDOW_START`]..[`WINDOW_END`], so a script means the same on every
//! machine.

use super::{FILE_SIZE, MAX_PROCS, NR_FILES, PAGE, WINDOW_END, WINDOW_START};
use crate::parse::{format_prot, parse_addr, parse_prot, parse_size};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vmasim_proto::v1::{Advice, MapFlag, MremapFlag};

/// The arguments of an [`Op::Mmap`]: the call's own, with `file` a memfd
/// index. A struct of its own (as [`MremapOp`]) because the op's
/// translators (script text, executor command, RPC) read it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmapOp {
    /// Address (hint or exact).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// `PROT_*`.
    pub prot: u32,
    /// `MAP_*`, passed through unchanged.
    pub flags: u32,
    /// memfd index, `None` for `fd = -1`.
    pub file: Option<u8>,
    /// File offset in bytes.
    pub offset: u64,
}

/// The arguments of an [`Op::Mremap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MremapOp {
    /// Start of the old range.
    pub old: u64,
    /// Old length.
    pub old_len: u64,
    /// New length.
    pub new_len: u64,
    /// `MREMAP_*`, passed through unchanged.
    pub flags: u32,
    /// Destination (`MREMAP_FIXED`) or hint (`MREMAP_DONTUNMAP`).
    pub new_addr: u64,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `mmap(addr, len, prot, flags, fd, offset)`.
    Mmap(MmapOp),
    /// `munmap(addr, len)`.
    Munmap {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// `mprotect(addr, len, prot)`.
    Mprotect {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// New `PROT_*`.
        prot: u32,
    },
    /// `brk(start_brk + off)`.
    Brk {
        /// Offset from `start_brk` in bytes.
        off: i64,
    },
    /// `brk(0)`.
    BrkQuery,
    /// A read or write of the byte at `addr`.
    Touch {
        /// Address.
        addr: u64,
        /// A store (else a load).
        write: bool,
    },
    /// `mremap(old, old_len, new_len, flags, new_addr)`.
    Mremap(MremapOp),
    /// `madvise(addr, len, advice)`.
    Madvise {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// `MADV_*`.
        advice: u32,
    },
    /// `fork()`: the child takes the lowest free process number.
    Fork,
    /// `_exit(0)` (never process 0).
    Exit,
    /// `count` one-page `rw-` private anonymous `MAP_FIXED` mappings at
    /// `addr + 2 * i * PAGE`, stopping at the first failure.
    Fill {
        /// Start.
        addr: u64,
        /// Number of mappings.
        count: u64,
    },
}

/// An operation on one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Process number (0..MAX_PROCS).
    pub proc: usize,
    /// What to do.
    pub op: Op,
}

/// `MAP_SHARED_VALIDATE`.
pub const MAP_SHARED_VALIDATE: u32 = 0x03;
/// A bit no `MAP_` flag uses on x86-64 (the kernel ignores it).
pub const MAP_UNKNOWN_BIT: u32 = 0x20_0000;

fn flag(f: MapFlag) -> u32 {
    f as u32
}

/// `MAP_*` names for a flags word (`MAP_PRIVATE|MAP_ANONYMOUS|0x200000`).
pub fn format_flags(flags: u32) -> String {
    let mut parts = Vec::new();
    let mut rest = flags;
    if rest & MAP_SHARED_VALIDATE == MAP_SHARED_VALIDATE {
        parts.push("MAP_SHARED_VALIDATE".to_string());
        rest &= !MAP_SHARED_VALIDATE;
    }
    for bit in (0..32).map(|i| 1u32 << i) {
        if rest & bit == 0 {
            continue;
        }
        if let Ok(f) = MapFlag::try_from(bit as i32)
            && f != MapFlag::Unspecified
        {
            parts.push(f.as_str_name().to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join("|")
    }
}

/// `MREMAP_*` names for an mremap flags word (`0` for none).
pub fn format_mremap_flags(flags: u32) -> String {
    let mut parts = Vec::new();
    let mut rest = flags;
    for f in [
        MremapFlag::MremapMaymove,
        MremapFlag::MremapFixed,
        MremapFlag::MremapDontunmap,
    ] {
        if rest & f as u32 != 0 {
            parts.push(f.as_str_name().to_string());
            rest &= !(f as u32);
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join("|")
    }
}

/// Parse `format_mremap_flags`' output: names and hex numbers for bits
/// without a name (`MREMAP_MAYMOVE|0x8`), joined by `|` or `,`.
pub fn parse_mremap_flags(s: &str) -> Result<u32, String> {
    let mut f = 0;
    for part in s.split(['|', ',']).map(str::trim).filter(|p| !p.is_empty()) {
        f |= match parse_addr(part) {
            Ok(n) => u32::try_from(n).map_err(|_| format!("`{part}` does not fit in 32 bits"))?,
            Err(_) => crate::parse::parse_mremap_flags(part)?,
        };
    }
    Ok(f)
}

/// The `MADV_*` name of an advice, else its number.
pub fn format_advice(advice: u32) -> String {
    match i32::try_from(advice).ok().map(Advice::try_from) {
        Some(Ok(a)) if a != Advice::MadvNormal => a.as_str_name().to_string(),
        _ => advice.to_string(),
    }
}

/// Parse `format_flags`' output (also lower case, `,` separators, hex).
pub fn parse_flags(s: &str) -> Result<u32, String> {
    let mut f = 0;
    for part in s.split(['|', ',']) {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        if let Ok(n) = parse_addr(p) {
            f |= u32::try_from(n).map_err(|_| format!("`{p}` does not fit in 32 bits"))?;
            continue;
        }
        let up = p.to_ascii_uppercase().replace('-', "_");
        let name = if up.starts_with("MAP_") {
            up
        } else {
            format!("MAP_{up}")
        };
        let name = match name.as_str() {
            "MAP_ANON" => "MAP_ANONYMOUS".to_string(),
            "MAP_NOREPLACE" => "MAP_FIXED_NOREPLACE".to_string(),
            _ => name,
        };
        if name == "MAP_SHARED_VALIDATE" {
            f |= MAP_SHARED_VALIDATE;
            continue;
        }
        match MapFlag::from_str_name(&name) {
            Some(m) if m != MapFlag::Unspecified => f |= m as u32,
            _ => return Err(format!("unknown mmap flag `{p}`")),
        }
    }
    Ok(f)
}

impl Step {
    /// The operation's script name (`mmap`, `touch`, ...).
    pub fn op_name(&self) -> &'static str {
        match self.op {
            Op::Mmap { .. } => "mmap",
            Op::Munmap { .. } => "munmap",
            Op::Mprotect { .. } => "mprotect",
            Op::Brk { .. } | Op::BrkQuery => "brk",
            Op::Touch { .. } => "touch",
            Op::Mremap { .. } => "mremap",
            Op::Madvise { .. } => "madvise",
            Op::Fork => "fork",
            Op::Exit => "exit",
            Op::Fill { .. } => "fill",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.proc != 0 {
            write!(f, "@{} ", self.proc)?;
        }
        match &self.op {
            Op::Mmap(m) => {
                write!(
                    f,
                    "mmap {:#x} {:#x} {} {}",
                    m.addr,
                    m.len,
                    format_prot(m.prot),
                    format_flags(m.flags)
                )?;
                if m.prot & !7 != 0 {
                    write!(f, "|prot={:#x}", m.prot)?;
                }
                if let Some(n) = m.file {
                    write!(f, " file={n}")?;
                }
                if m.offset != 0 || m.file.is_some() {
                    write!(f, " offset={:#x}", m.offset)?;
                }
                Ok(())
            }
            Op::Munmap { addr, len } => write!(f, "munmap {addr:#x} {len:#x}"),
            Op::Mprotect { addr, len, prot } => {
                write!(f, "mprotect {addr:#x} {len:#x} {}", format_prot(*prot))
            }
            Op::Brk { off } if *off < 0 => write!(f, "brk -{:#x}", off.unsigned_abs()),
            Op::Brk { off } => write!(f, "brk {off:#x}"),
            Op::BrkQuery => write!(f, "brk query"),
            Op::Touch { addr, write } => {
                write!(
                    f,
                    "touch {addr:#x} {}",
                    if *write { "write" } else { "read" }
                )
            }
            Op::Mremap(r) => {
                write!(
                    f,
                    "mremap {:#x} {:#x} {:#x} {}",
                    r.old,
                    r.old_len,
                    r.new_len,
                    format_mremap_flags(r.flags)
                )?;
                if r.new_addr != 0 {
                    write!(f, " {:#x}", r.new_addr)?;
                }
                Ok(())
            }
            Op::Madvise { addr, len, advice } => {
                write!(f, "madvise {addr:#x} {len:#x} {}", format_advice(*advice))
            }
            Op::Fork => write!(f, "fork"),
            Op::Exit => write!(f, "exit"),
            Op::Fill { addr, count } => write!(f, "fill {addr:#x} {count}"),
        }
    }
}

/// Parse a script (see the module docs). Errors name the 1-based line.
pub fn parse_script(text: &str) -> Result<Vec<Step>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let step = parse_step(line).map_err(|e| format!("script line {}: {e}: {raw:?}", i + 1))?;
        out.push(step);
    }
    Ok(out)
}

fn parse_step(line: &str) -> Result<Step, String> {
    let mut toks: Vec<&str> = line.split_whitespace().collect();
    let mut proc = 0;
    if let Some(p) = toks.first().and_then(|t| t.strip_prefix('@')) {
        proc = p
            .parse::<usize>()
            .ok()
            .filter(|&p| p < MAX_PROCS)
            .ok_or_else(|| format!("process `@{p}` is not 0..{}", MAX_PROCS - 1))?;
        toks.remove(0);
    }
    let (name, args) = toks.split_first().ok_or("empty operation")?;
    let need = |n: usize| {
        if args.len() < n {
            Err(format!("`{name}` needs {n} arguments"))
        } else {
            Ok(())
        }
    };
    let addr = |s: &str| parse_addr(s);
    let op = match *name {
        "mmap" => {
            need(4)?;
            let mut file = None;
            let mut offset = 0;
            let mut flags_s = args[3].to_string();
            let mut extra_prot = 0;
            if let Some((f, p)) = flags_s.clone().split_once("|prot=") {
                flags_s = f.to_string();
                extra_prot = parse_addr(p)? as u32;
            }
            for kv in &args[4..] {
                match kv.split_once('=') {
                    Some(("file", v)) => {
                        let n: u8 = v.parse().map_err(|_| format!("bad file `{v}`"))?;
                        if usize::from(n) >= NR_FILES {
                            return Err(format!("file={n}: there are {NR_FILES} files (0..3)"));
                        }
                        file = Some(n);
                    }
                    Some(("offset", v)) => offset = parse_size(v)?,
                    _ => return Err(format!("unknown mmap argument `{kv}`")),
                }
            }
            Op::Mmap(MmapOp {
                addr: addr(args[0])?,
                len: parse_size(args[1])?,
                prot: parse_prot(args[2])? | extra_prot,
                flags: parse_flags(&flags_s)?,
                file,
                offset,
            })
        }
        "munmap" => {
            need(2)?;
            Op::Munmap {
                addr: addr(args[0])?,
                len: parse_size(args[1])?,
            }
        }
        "mprotect" => {
            need(3)?;
            Op::Mprotect {
                addr: addr(args[0])?,
                len: parse_size(args[1])?,
                prot: parse_prot(args[2])?,
            }
        }
        "brk" => {
            need(1)?;
            if args[0] == "query" {
                Op::BrkQuery
            } else if let Some(n) = args[0].strip_prefix('-') {
                Op::Brk {
                    off: -(parse_size(n)? as i64),
                }
            } else {
                Op::Brk {
                    off: parse_size(args[0].trim_start_matches('+'))? as i64,
                }
            }
        }
        "touch" => {
            need(2)?;
            let write = match args[1] {
                "read" | "r" => false,
                "write" | "w" => true,
                o => return Err(format!("touch access `{o}` is not read or write")),
            };
            Op::Touch {
                addr: addr(args[0])?,
                write,
            }
        }
        "mremap" => {
            need(3)?;
            Op::Mremap(MremapOp {
                old: addr(args[0])?,
                old_len: parse_size(args[1])?,
                new_len: parse_size(args[2])?,
                flags: args.get(3).map_or(Ok(0), |s| parse_mremap_flags(s))?,
                new_addr: args.get(4).map_or(Ok(0), |s| addr(s))?,
            })
        }
        "madvise" => {
            need(3)?;
            Op::Madvise {
                addr: addr(args[0])?,
                len: parse_size(args[1])?,
                advice: crate::parse::parse_advice(args[2])?,
            }
        }
        "fork" => Op::Fork,
        "exit" => Op::Exit,
        "fill" => {
            need(2)?;
            Op::Fill {
                addr: addr(args[0])?,
                count: args[1].parse().map_err(|_| "bad count".to_string())?,
            }
        }
        o => return Err(format!("unknown operation `{o}`")),
    };
    Ok(Step { proc, op })
}

/// The labels an operation counts under in the summary (one per kind it
/// exercises: `mmap`, `mmap:anon-private`, `mmap:MAP_FIXED`, ...).
pub fn kinds(op: &Op) -> Vec<String> {
    let mut k = Vec::new();
    match op {
        Op::Mmap(MmapOp {
            addr,
            flags,
            file,
            prot,
            ..
        }) => {
            k.push("mmap".into());
            let shared = match flags & MAP_SHARED_VALIDATE {
                1 | 3 => "shared",
                2 => "private",
                _ => "no-type",
            };
            let backing = if file.is_some() { "file" } else { "anon" };
            k.push(format!("mmap:{backing}-{shared}"));
            k.push(format!("mmap:prot={}", format_prot(*prot)));
            let fixed = flags & (flag(MapFlag::MapFixed) | flag(MapFlag::MapFixedNoreplace));
            if fixed == 0 {
                k.push(if *addr == 0 {
                    "mmap:non-fixed".into()
                } else {
                    "mmap:hint".into()
                });
            }
            let mut rest = *flags & !MAP_SHARED_VALIDATE;
            if flags & MAP_SHARED_VALIDATE == MAP_SHARED_VALIDATE {
                k.push("mmap:MAP_SHARED_VALIDATE".into());
            }
            while rest != 0 {
                let bit = rest & rest.wrapping_neg();
                rest &= !bit;
                k.push(format!("mmap:{}", format_flags(bit)));
            }
        }
        Op::Munmap { .. } => k.push("munmap".into()),
        Op::Mprotect { prot, .. } => {
            k.push("mprotect".into());
            k.push(format!("mprotect:prot={}", format_prot(*prot)));
        }
        Op::Brk { .. } | Op::BrkQuery => k.push("brk".into()),
        Op::Touch { write, .. } => k.push(if *write { "touch:write" } else { "touch:read" }.into()),
        Op::Mremap(MremapOp {
            old_len,
            new_len,
            flags,
            ..
        }) => {
            k.push("mremap".into());
            let (o, n) = (old_len.div_ceil(PAGE), new_len.div_ceil(PAGE));
            k.push(
                match o.cmp(&n) {
                    std::cmp::Ordering::Greater => "mremap:shrink",
                    std::cmp::Ordering::Less => "mremap:grow",
                    std::cmp::Ordering::Equal => "mremap:same-size",
                }
                .into(),
            );
            if *flags == 0 {
                k.push("mremap:no-flags".into());
            }
            let mut rest = *flags;
            while rest != 0 {
                let bit = rest & rest.wrapping_neg();
                rest &= !bit;
                k.push(format!("mremap:{}", format_mremap_flags(bit)));
            }
        }
        Op::Madvise { advice, .. } => {
            k.push("madvise".into());
            k.push(format!("madvise:{}", format_advice(*advice)));
        }
        Op::Fork => k.push("fork".into()),
        Op::Exit => k.push("exit".into()),
        Op::Fill { .. } => k.push("fill".into()),
    }
    k
}

/// What the generator sees of one live process: its VMAs in the compared
/// region and its break.
#[derive(Debug, Clone, Default)]
pub struct ProcView {
    /// `(start, end)` of each VMA, ascending.
    pub vmas: Vec<(u64, u64)>,
    /// Current break minus `start_brk`.
    pub brk_off: i64,
}

/// Families of operations the generator can leave out (`--without`).
pub const FAMILIES: &[(&str, &str)] = &[
    ("anon-shared", "MAP_SHARED|MAP_ANONYMOUS mappings (shmem)"),
    ("file", "memfd mappings, private and shared"),
    ("populate", "MAP_POPULATE and MAP_LOCKED (prefaulted pages)"),
    ("growsdown", "MAP_GROWSDOWN"),
    ("hugetlb", "MAP_HUGETLB"),
    (
        "odd-flags",
        "unknown bits, MAP_SHARED_VALIDATE, no map type",
    ),
    (
        "odd-args",
        "unaligned hints/addresses/lengths, offsets on anonymous maps",
    ),
    ("thp", "2 MiB-multiple anonymous mappings without a hint"),
    ("brk", "brk"),
    ("fork", "fork and exit"),
    ("mprotect", "mprotect"),
    (
        "mprotect-hole",
        "mprotect ranges that may cover unmapped pages (else inside one VMA)",
    ),
    ("munmap", "munmap"),
    (
        "mremap",
        "mremap: shrink, grow in place, MREMAP_MAYMOVE moves, MREMAP_FIXED, MREMAP_DONTUNMAP",
    ),
    (
        "madvise",
        "madvise: MADV_DONTNEED, FREE, DONTFORK, DOFORK, WIPEONFORK, KEEPONFORK",
    ),
    ("touch", "page touches"),
];

/// The random operation generator: weighted choices around the top of the
/// window, where non-fixed placement lands, and inside existing VMAs.
pub struct Generator {
    rng: StdRng,
    without: Vec<String>,
    /// Steps already decided (the touches around an mremap or madvise,
    /// a fork after a fork flag), served before new ones.
    pending: std::collections::VecDeque<Step>,
    /// Low end of the area fixed addresses and hints are drawn from.
    pub hot_lo: u64,
    /// High end of it.
    pub hot_hi: u64,
    /// Past this many VMAs in a process, prune (see [`PRUNE_ABOVE`]);
    /// `None` in the limit scenario, whose point is a full window.
    prune_above: Option<usize>,
}

/// The VMA count above which the random run starts pruning. Every
/// comparison reads the whole window on both sides, so an operation costs
/// time in proportion to the VMAs there, and left alone the hot area keeps
/// gaining them (mmap is drawn 300 times in 1100, munmap 140): by 100,000
/// operations a process had 2,700 VMAs and each operation cost 8× what it
/// did at the start, so 1M operations would not end (held at 1,000, a
/// 1M-op run still took 10,000 operations per 50 s). Past this count one
/// step in five unmaps 1 MiB from a random VMA's start, which holds the
/// count near it; 500 VMAs in the 16 MiB the generator works in are still
/// one every 32 KiB. The crowded end is the limit scenario's (`--limit`),
/// at `vm.max_map_count`.
pub const PRUNE_ABOVE: usize = 500;

impl Generator {
    /// A generator seeded with `seed`, leaving out the `without` families.
    pub fn new(seed: u64, without: &[String]) -> Result<Self, String> {
        for w in without {
            if !FAMILIES.iter().any(|(n, _)| n == w) {
                let names: Vec<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "--without {w}: not a family ({})",
                    names.join(", ")
                ));
            }
        }
        Ok(Generator {
            rng: StdRng::seed_from_u64(seed),
            without: without.to_vec(),
            pending: std::collections::VecDeque::new(),
            hot_lo: WINDOW_END - (16 << 20),
            hot_hi: WINDOW_END,
            prune_above: Some(PRUNE_ABOVE),
        })
    }

    fn on(&self, family: &str) -> bool {
        !self.without.iter().any(|w| w == family)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn page_in(&mut self, lo: u64, hi: u64) -> u64 {
        let pages = ((hi - lo) / PAGE).max(1);
        lo + self.rng.random_range(0..pages) * PAGE
    }

    fn pages(&mut self) -> u64 {
        let r = self.rng.random_range(0..100);
        if r < 70 {
            self.rng.random_range(1..=8)
        } else if r < 95 {
            self.rng.random_range(9..=64)
        } else {
            self.rng.random_range(65..=512)
        }
    }

    /// A range: inside or across an existing VMA most of the time.
    fn range(&mut self, v: &ProcView) -> (u64, u64) {
        let len = self.pages().min(64) * PAGE;
        if !v.vmas.is_empty() && self.chance(0.6) {
            let (s, e) = v.vmas[self.rng.random_range(0..v.vmas.len())];
            let a = self.page_in(s, e);
            let a = if self.chance(0.3) { s } else { a };
            return (a, len.min(WINDOW_END.saturating_sub(a)).max(PAGE));
        }
        (self.page_in(self.hot_lo, self.hot_hi - len), len)
    }

    /// The next operation for one of the live processes (`views[p]` is
    /// `Some` for each live process `p`).
    pub fn next(&mut self, views: &[Option<ProcView>]) -> Step {
        // A pending step whose process died meanwhile is dropped.
        while let Some(s) = self.pending.pop_front() {
            if views.get(s.proc).is_some_and(Option::is_some) {
                return s;
            }
        }
        let live: Vec<usize> = (0..views.len()).filter(|&p| views[p].is_some()).collect();
        let proc = live[self.rng.random_range(0..live.len())];
        let v = views[proc].clone().unwrap_or_default();
        let free_slot = live.len() < MAX_PROCS;
        if let Some(max) = self.prune_above
            && v.vmas.len() > max
            && self.chance(0.2)
        {
            let (s, _) = v.vmas[self.rng.random_range(0..v.vmas.len())];
            return Step {
                proc,
                op: Op::Munmap {
                    addr: s,
                    len: (256 * PAGE).min(WINDOW_END.saturating_sub(s)).max(PAGE),
                },
            };
        }
        loop {
            let r = self.rng.random_range(0..1100);
            let op = match r {
                0..=299 => self.mmap(&v),
                300..=439 if self.on("munmap") => {
                    let (addr, len) = self.range(&v);
                    let len = if self.on("odd-args") && self.chance(0.05) {
                        len - self.rng.random_range(1..PAGE)
                    } else {
                        len
                    };
                    Op::Munmap { addr, len }
                }
                440..=599 if self.on("mprotect") => {
                    let (addr, len) = if self.on("mprotect-hole") {
                        self.range(&v)
                    } else if v.vmas.is_empty() {
                        continue;
                    } else {
                        // Inside one VMA: no hole.
                        let (s, e) = v.vmas[self.rng.random_range(0..v.vmas.len())];
                        let a = self.page_in(s, e);
                        (a, (self.pages() * PAGE).min(e - a))
                    };
                    Op::Mprotect {
                        addr,
                        len,
                        prot: self.rng.random_range(0..8),
                    }
                }
                600..=939 if self.on("touch") => {
                    let addr = if !v.vmas.is_empty() && self.chance(0.85) {
                        let (s, e) = v.vmas[self.rng.random_range(0..v.vmas.len())];
                        self.rng.random_range(s..e)
                    } else {
                        self.rng.random_range(self.hot_lo..self.hot_hi)
                    };
                    Op::Touch {
                        addr,
                        write: self.chance(0.5),
                    }
                }
                940..=989 if self.on("brk") => {
                    let r = self.rng.random_range(0..100);
                    if r < 10 {
                        Op::BrkQuery
                    } else if r < 15 {
                        Op::Brk {
                            off: -(self.rng.random_range(1..16) * PAGE as i64),
                        }
                    } else {
                        let delta = self.rng.random_range(-16..=24) * PAGE as i64;
                        let mut off = (v.brk_off + delta).max(0);
                        if self.chance(0.3) {
                            off += self.rng.random_range(1..PAGE as i64);
                        }
                        Op::Brk { off }
                    }
                }
                990..=994 if self.on("fork") && free_slot => Op::Fork,
                995..=999 if self.on("fork") && proc != 0 => Op::Exit,
                1000..=1059 if self.on("mremap") => {
                    let steps = self.mremap(&v);
                    return self.queue(proc, steps, views);
                }
                1060..=1099 if self.on("madvise") => {
                    let steps = self.madvise(&v);
                    return self.queue(proc, steps, views);
                }
                _ => continue,
            };
            return Step { proc, op };
        }
    }

    /// Return the first of `steps` and keep the rest for later. Each step
    /// is for `proc` (`true`) or for the child of the `Fork` before it.
    fn queue(&mut self, proc: usize, steps: Vec<(bool, Op)>, views: &[Option<ProcView>]) -> Step {
        let child = (0..views.len()).find(|&p| views[p].is_none());
        let mut out: Vec<Step> = Vec::new();
        for (on_parent, op) in steps {
            let p = if on_parent {
                proc
            } else if let Some(c) = child {
                c
            } else {
                continue;
            };
            out.push(Step { proc: p, op });
        }
        let first = out.remove(0);
        self.pending.extend(out);
        first
    }

    /// Up to `n` touches inside `[lo, hi)` (if the `touch` family is on).
    fn touches(&mut self, lo: u64, hi: u64, n: u64, write: Option<bool>) -> Vec<Op> {
        if !self.on("touch") || hi <= lo {
            return Vec::new();
        }
        let n = self.rng.random_range(1..=n);
        (0..n)
            .map(|_| Op::Touch {
                addr: self.rng.random_range(lo..hi),
                write: write.unwrap_or_else(|| self.chance(0.5)),
            })
            .collect()
    }

    /// An mremap, with touches before (so pages move) and after (the old
    /// and new ranges).
    fn mremap(&mut self, v: &ProcView) -> Vec<(bool, Op)> {
        const MAYMOVE: u32 = MremapFlag::MremapMaymove as u32;
        const FIXED: u32 = MremapFlag::MremapFixed as u32;
        const DONTUNMAP: u32 = MremapFlag::MremapDontunmap as u32;
        let (s, e) = if !v.vmas.is_empty() && self.chance(0.9) {
            v.vmas[self.rng.random_range(0..v.vmas.len())]
        } else {
            let (a, l) = self.range(v);
            (a, a + l)
        };
        let old = if self.chance(0.5) {
            s
        } else {
            self.page_in(s, e)
        };
        let to_end = (e - old).max(PAGE);
        // Lengths that run past the VMA (into a hole or the next VMA) stay
        // inside the window.
        let room = WINDOW_END.saturating_sub(old).max(PAGE);
        let beyond = |g: &mut Self| (to_end + g.rng.random_range(1..=16) * PAGE).min(room);
        let some_of = |g: &mut Self, len: u64| g.rng.random_range(1..=(len / PAGE).max(1)) * PAGE;
        let hot = |g: &mut Self, len: u64| {
            let hi = g.hot_hi.saturating_sub(len).max(g.hot_lo + PAGE);
            g.page_in(g.hot_lo, hi)
        };
        let r = self.rng.random_range(0..100);
        let (mut old_len, new_len, mut flags, mut new_addr);
        if r < 20 {
            // Shrink; the unmapped tail may cross the VMA's end.
            old_len = if self.chance(0.8) {
                to_end
            } else {
                beyond(self)
            };
            if old_len < 2 * PAGE {
                old_len = 2 * PAGE;
            }
            new_len = self.rng.random_range(1..old_len / PAGE) * PAGE;
            flags = if self.chance(0.3) { MAYMOVE } else { 0 };
            new_addr = 0;
        } else if r < 55 {
            // Grow: in place if the range ends the VMA and the space after
            // it is free, else move (MAYMOVE) or ENOMEM.
            old_len = if self.chance(0.8) {
                to_end
            } else {
                some_of(self, to_end)
            };
            new_len = old_len + self.rng.random_range(1..=16) * PAGE;
            flags = if self.chance(0.6) { MAYMOVE } else { 0 };
            new_addr = 0;
        } else if r < 60 {
            // Same size, no flags: nothing to do.
            old_len = if self.chance(0.7) {
                to_end
            } else {
                beyond(self)
            };
            new_len = old_len;
            flags = 0;
            new_addr = 0;
        } else if r < 82 {
            // MREMAP_FIXED: replaces the destination; same size may span
            // several VMAs (remap_move).
            old_len = if self.chance(0.6) {
                some_of(self, to_end)
            } else {
                beyond(self)
            };
            new_len = if self.chance(0.6) {
                old_len
            } else {
                self.pages().min(64) * PAGE
            };
            flags = MAYMOVE | FIXED;
            new_addr = hot(self, new_len);
        } else {
            // MREMAP_DONTUNMAP: the old range stays, empty.
            old_len = some_of(self, to_end);
            new_len = old_len;
            flags = MAYMOVE | DONTUNMAP;
            new_addr = 0;
            if self.chance(0.4) {
                flags |= FIXED;
                new_addr = hot(self, new_len);
            } else if self.chance(0.5) {
                new_addr = hot(self, new_len);
            }
        }
        let mut old = old;
        if self.on("odd-args") {
            let r = self.rng.random_range(0..100);
            if r < 2 {
                old += self.rng.random_range(1..PAGE);
            } else if r < 4 {
                flags |= 8;
            } else if r < 6 {
                flags &= !MAYMOVE;
            } else if r < 7 && !self.on("anon-shared") && !self.on("file") {
                // On private memory EINVAL; duplicating a shared mapping
                // (old_len 0 on shmem or a file) is not simulated.
                old_len = 0;
            } else if r < 9 && new_addr != 0 {
                new_addr += self.rng.random_range(1..PAGE);
            }
        }
        let mut out = Vec::new();
        if self.chance(0.6) {
            let hi = (old + old_len.min(to_end)).min(e);
            for t in self.touches(old.max(s), hi, 3, Some(true)) {
                out.push((true, t));
            }
        }
        out.push((
            true,
            Op::Mremap(MremapOp {
                old,
                old_len,
                new_len,
                flags,
                new_addr,
            }),
        ));
        if self.chance(0.5) {
            let mut after = self.touches(old, old + old_len.max(PAGE), 2, None);
            if new_addr != 0 {
                after.extend(self.touches(new_addr, new_addr + new_len, 2, None));
            }
            out.extend(after.into_iter().map(|t| (true, t)));
        }
        out
    }

    /// A madvise, with touches before (so there are pages to drop) and
    /// after, and sometimes a fork with a touch in the child (the fork
    /// flags).
    fn madvise(&mut self, v: &ProcView) -> Vec<(bool, Op)> {
        let advice = {
            let r = self.rng.random_range(0..100);
            let a = if r < 30 {
                Advice::MadvDontneed
            } else if r < 50 {
                Advice::MadvFree
            } else if r < 65 {
                Advice::MadvDontfork
            } else if r < 75 {
                Advice::MadvDofork
            } else if r < 90 {
                Advice::MadvWipeonfork
            } else {
                Advice::MadvKeeponfork
            };
            a as u32
        };
        let (mut addr, mut len) = if !v.vmas.is_empty() && self.chance(0.7) {
            let (s, e) = v.vmas[self.rng.random_range(0..v.vmas.len())];
            let a = if self.chance(0.3) {
                s
            } else {
                self.page_in(s, e)
            };
            (a, (self.pages() * PAGE).min(e - a))
        } else {
            self.range(v)
        };
        if self.on("odd-args") {
            let r = self.rng.random_range(0..100);
            if r < 2 {
                len = 0;
            } else if r < 4 {
                addr += self.rng.random_range(1..PAGE);
            } else if r < 7 {
                len -= self.rng.random_range(1..PAGE);
            }
        }
        let mut out = Vec::new();
        if self.chance(0.6) {
            for t in self.touches(addr, addr + len, 3, Some(true)) {
                out.push((true, t));
            }
        }
        out.push((true, Op::Madvise { addr, len, advice }));
        if self.chance(0.5) {
            for t in self.touches(addr, addr + len.max(1), 2, None) {
                out.push((true, t));
            }
        }
        let fork_flag = [Advice::MadvDontfork, Advice::MadvWipeonfork]
            .iter()
            .any(|a| *a as u32 == advice);
        if fork_flag && self.on("fork") && self.chance(0.4) {
            out.push((true, Op::Fork));
            for t in self.touches(addr, addr + len.max(1), 2, None) {
                out.push((false, t));
            }
        }
        out
    }

    fn mmap(&mut self, v: &ProcView) -> Op {
        let mut len = self.pages() * PAGE;
        let mut flags;
        let mut file = None;
        let mut offset = 0;
        let r = self.rng.random_range(0..100);
        let anon_shared = self.on("anon-shared");
        let files = self.on("file");
        if r < 45 || (!anon_shared && !files) {
            flags = flag(MapFlag::MapPrivate) | flag(MapFlag::MapAnonymous);
        } else if r < 60 && anon_shared {
            flags = flag(MapFlag::MapShared) | flag(MapFlag::MapAnonymous);
        } else if files {
            flags = if self.chance(0.5) {
                flag(MapFlag::MapShared)
            } else {
                flag(MapFlag::MapPrivate)
            };
            file = Some(self.rng.random_range(0..NR_FILES as u8));
            len = len.min(FILE_SIZE / 2);
            offset = self.rng.random_range(0..(FILE_SIZE - len) / PAGE) * PAGE;
        } else {
            flags = flag(MapFlag::MapShared) | flag(MapFlag::MapAnonymous);
        }
        let anon = file.is_none();
        let place = self.rng.random_range(0..100);
        let mut addr = 0;
        if place < 35 {
            flags |= flag(MapFlag::MapFixed);
            addr = self.range(v).0;
        } else if place < 50 {
            flags |= flag(MapFlag::MapFixedNoreplace);
            addr = self.range(v).0;
        } else if place < 70 {
            addr = self.range(v).0;
        } else if anon && self.on("thp") && self.chance(0.15) {
            len = self.rng.random_range(1..=2) * (2 << 20);
        }
        let opt = [
            (MapFlag::MapNoreserve, 0.10, ""),
            (MapFlag::MapStack, 0.05, ""),
            (MapFlag::MapDenywrite, 0.02, ""),
            (MapFlag::MapExecutable, 0.02, ""),
            (MapFlag::MapNonblock, 0.02, ""),
            (MapFlag::MapPopulate, 0.04, "populate"),
            (MapFlag::MapLocked, 0.02, "populate"),
            (MapFlag::MapGrowsdown, 0.03, "growsdown"),
            (MapFlag::MapHugetlb, 0.01, "hugetlb"),
        ];
        for (f, p, family) in opt {
            if (family.is_empty() || self.on(family)) && self.chance(p) {
                flags |= flag(f);
            }
        }
        if self.on("odd-flags") {
            let r = self.rng.random_range(0..100);
            if r < 2 {
                flags |= MAP_UNKNOWN_BIT;
            } else if r < 4 {
                flags |= MAP_SHARED_VALIDATE;
            } else if r < 5 {
                flags &= !MAP_SHARED_VALIDATE;
            }
        }
        if self.on("odd-args") {
            let r = self.rng.random_range(0..100);
            if r < 3 {
                len -= self.rng.random_range(1..PAGE);
            } else if r < 5 && addr != 0 {
                addr += self.rng.random_range(1..PAGE);
            } else if r < 6 && anon {
                offset = self.rng.random_range(1..16) * PAGE;
            }
        }
        Op::Mmap(MmapOp {
            addr,
            len,
            prot: self.rng.random_range(0..8),
            flags,
            file,
            offset,
        })
    }

    /// Operations for the `vm.max_map_count` scenario: `fill` the window
    /// with `count` one-page VMAs, then `ops` random operations among them
    /// (the area the generator draws from is the filled one).
    pub fn limit_scenario(&mut self, count: u64) -> Vec<Step> {
        self.prune_above = None;
        self.hot_lo = WINDOW_START;
        self.hot_hi = WINDOW_START + (count * 2 * PAGE).min(WINDOW_END - WINDOW_START);
        vec![Step {
            proc: 0,
            op: Op::Fill {
                addr: WINDOW_START,
                count,
            },
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_round_trip() {
        let mut g = Generator::new(7, &[]).unwrap();
        let mut views = vec![None; MAX_PROCS];
        views[0] = Some(ProcView {
            vmas: vec![(WINDOW_END - 0x4000, WINDOW_END)],
            brk_off: 0x3000,
        });
        views[2] = Some(ProcView::default());
        let steps: Vec<Step> = (0..2000).map(|_| g.next(&views)).collect();
        let text: String = steps.iter().map(|s| format!("{s}\n")).collect();
        assert_eq!(parse_script(&text).unwrap(), steps);
    }

    /// The random run holds a process near PRUNE_ABOVE VMAs (its cost per
    /// operation grows with them); the limit scenario does not prune.
    #[test]
    fn a_crowded_process_is_pruned_except_in_the_limit_scenario() {
        let crowded = ProcView {
            vmas: (0..PRUNE_ABOVE as u64 + 1)
                .map(|i| {
                    let s = WINDOW_END - (i + 1) * 2 * PAGE;
                    (s, s + PAGE)
                })
                .collect(),
            brk_off: 0,
        };
        let views = vec![Some(crowded.clone())];
        let big_unmaps = |g: &mut Generator| {
            (0..1000)
                .map(|_| g.next(&views))
                .filter(|s| matches!(s.op, Op::Munmap { len, .. } if len == 256 * PAGE))
                .count()
        };
        let mut g = Generator::new(7, &[]).unwrap();
        let pruned = big_unmaps(&mut g);
        assert!(
            (120..=300).contains(&pruned),
            "{pruned} pruning munmaps in 1000"
        );
        let mut g = Generator::new(7, &[]).unwrap();
        g.limit_scenario(crowded.vmas.len() as u64);
        assert_eq!(big_unmaps(&mut g), 0);
    }

    #[test]
    fn flags_by_name() {
        assert_eq!(
            parse_flags("MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED").unwrap(),
            0x32
        );
        assert_eq!(parse_flags("shared,anon").unwrap(), 0x21);
        assert_eq!(
            format_flags(0x22 | MAP_UNKNOWN_BIT),
            "MAP_PRIVATE|MAP_ANONYMOUS|0x200000"
        );
        assert_eq!(format_flags(0x23), "MAP_SHARED_VALIDATE|MAP_ANONYMOUS");
        assert!(parse_flags("MAP_BOGUS").is_err());
        assert_eq!(parse_mremap_flags("MREMAP_MAYMOVE|0x8").unwrap(), 9);
        assert_eq!(format_mremap_flags(9), "MREMAP_MAYMOVE|0x8");
        let e = parse_script("mmap 0x1000 4K rw- MAP_PRIVATE\nfrob 1\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn without_unknown_family_is_an_error() {
        assert!(Generator::new(1, &["nope".into()]).is_err());
    }
}
