//! `vmasim replay FILE --check` of a recording: rebuild every recorded
//! address space in the simulation and compare it with the kernel's.
//!
//! * An `exec` line spawns a process from the exec snapshot (its maps
//!   text and `start_brk`), a `clone` without `CLONE_VM` forks the
//!   parent's simulated process (`dup_mmap` at that point of the
//!   history), `mm_end` exits it (unless `--keep`).
//! * Each `call` is applied to its address space's process as the kernel
//!   ran it: `mmap` at the address the kernel returned, with the
//!   recorded flags (so `MAP_NORESERVE`, `MAP_STACK`... set the hidden
//!   flags they set in the kernel) plus `MAP_FIXED`; a file mapping's
//!   file is the one its maps line named (dev, inode, path: the same
//!   identity the exec snapshot's import gives, so pieces of one file
//!   merge as they do in the kernel). A call that failed in the kernel is
//!   replayed too and must fail in the simulation (and change nothing).
//! * A quiescent `maps` line (no other task could run on that mm while
//!   it was read) is compared with the simulated maps line by line on
//!   start, end, perms, offset and path. `[stack]` is compared on its end
//!   and perms: it grows by faults below it, which are not syscalls and
//!   are not in the recording (the note says how far it grew).
//!
//! `mremap` and `madvise` go to the server's Mremap and Madvise with the
//! recorded arguments (a moving mremap then lands where the kernel put it
//! only if the simulation picks the same place: MREMAP_FIXED calls do, and
//! a kernel-chosen destination is compared like every other result).
//! Calls the simulation has no operation for (mlock, prctl names, shmat,
//! `madvise` advice it does not take) are counted and named in a note; if
//! such a call changed the maps, the comparison shows where.

use super::format::{self, Event, FileRef, MapsLine, Recording};
use crate::connect::Client;
use crate::error::CliError;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use tonic::Status;
use vmasim_proto::v1::{
    Access, BrkRequest, ExitRequest, FaultOutcome, FaultRequest, ForkRequest, MadviseRequest,
    MapsRequest, MmapRequest, MprotectRequest, MremapRequest, MunmapRequest, SpawnRequest,
    VmaEntry,
};

/// Linux `MAP_FIXED`.
const MAP_FIXED: u64 = 0x10;
/// Linux `MAP_ANONYMOUS`.
const MAP_ANONYMOUS: u64 = 0x20;
/// Linux `MAP_FIXED_NOREPLACE`.
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
/// `MREMAP_FIXED`.
const MREMAP_FIXED: u64 = 2;
/// `MREMAP_MAYMOVE`.
const MREMAP_MAYMOVE: u64 = 1;
/// The advice the server's Madvise takes (see MadviseRequest).
const SIMULATED_ADVICE: &[u64] = &[4, 8, 10, 11, 18, 19];

/// `madvise` advice that changes `vm_flags` (and so may split or merge
/// VMAs): `madvise_update_vma` callers in mm/madvise.c.
const VMA_CHANGING_ADVICE: &[(u64, &str)] = &[
    (10, "MADV_DONTFORK"),
    (11, "MADV_DOFORK"),
    (12, "MADV_MERGEABLE"),
    (13, "MADV_UNMERGEABLE"),
    (14, "MADV_HUGEPAGE"),
    (15, "MADV_NOHUGEPAGE"),
    (16, "MADV_DONTDUMP"),
    (17, "MADV_DODUMP"),
    (18, "MADV_WIPEONFORK"),
    (19, "MADV_KEEPONFORK"),
];

/// How one recorded address space compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every compared snapshot matched (count of snapshots, lines of the last).
    Exact { snapshots: usize, lines: usize },
    /// A snapshot differed: its reason and the first differing lines.
    Differs { why: String, diff: Vec<String> },
    /// Nothing to compare (no quiescent snapshot: killed, or cut short).
    NotChecked(String),
}

/// Per address space.
#[derive(Debug, Clone)]
pub struct MmReport {
    /// Recording's mm number.
    pub mm: u64,
    /// Program (exec path, or "fork of mm N").
    pub what: String,
    /// Simulated pid.
    pub pid: u32,
    /// Calls applied to it.
    pub calls: u64,
    /// The verdict.
    pub verdict: Verdict,
}

/// What `replay --check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// The recorded command.
    pub command: Vec<String>,
    /// Kernel of the recording.
    pub kernel: String,
    /// Per address space, in order of creation.
    pub mms: Vec<MmReport>,
    /// Calls applied by name.
    pub applied: BTreeMap<String, u64>,
    /// Notes, folded: text -> (count, first line).
    pub notes: BTreeMap<String, (u64, usize)>,
    /// Calls whose result differed from the kernel's: (line, what).
    pub diverged: Vec<(usize, String)>,
    /// Every call and what happened (with `-v`).
    pub trace: Vec<String>,
    /// The recording lacks its `end` line.
    pub incomplete: bool,
    /// `--keep`: (mm, simulated pid) left alive.
    pub kept: Vec<(u64, u32)>,
}

impl CheckReport {
    /// Any difference (exit code 10).
    pub fn failed(&self) -> bool {
        !self.diverged.is_empty()
            || self
                .mms
                .iter()
                .any(|m| matches!(m.verdict, Verdict::Differs { .. }))
    }

    /// The printed report.
    pub fn text(&self, verbose: bool) -> String {
        let mut o = String::new();
        if verbose {
            for l in &self.trace {
                let _ = writeln!(o, "{l}");
            }
        }
        let _ = writeln!(
            o,
            "recording of `{}` (kernel {}){}",
            self.command.join(" "),
            self.kernel,
            if self.incomplete {
                ", cut short (no end line)"
            } else {
                ""
            }
        );
        let total: u64 = self.applied.values().sum();
        let list: Vec<String> = self
            .applied
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(o, "applied {total} calls: {}", list.join(", "));
        for (n, (count, line)) in &self.notes {
            if *count == 1 {
                let _ = writeln!(o, "note: line {line}: {n}");
            } else {
                let _ = writeln!(o, "note: {count} x {n} (first at line {line})");
            }
        }
        for (l, d) in &self.diverged {
            let _ = writeln!(o, "DIVERGED: line {l}: {d}");
        }
        for m in &self.mms {
            let v = match &m.verdict {
                Verdict::Exact { snapshots, lines } => {
                    format!("exact ({snapshots} snapshot(s), {lines} lines)")
                }
                Verdict::Differs { why, .. } => format!("DIFFERS at {why}"),
                Verdict::NotChecked(r) => format!("not checked: {r}"),
            };
            let _ = writeln!(
                o,
                "mm {:<3} {} (sim pid {}): {} calls: {v}",
                m.mm, m.what, m.pid, m.calls
            );
            if let Verdict::Differs { diff, .. } = &m.verdict {
                for d in diff {
                    let _ = writeln!(o, "    {d}");
                }
            }
        }
        if !self.kept.is_empty() {
            let kept: Vec<String> = self
                .kept
                .iter()
                .map(|(mm, p)| format!("mm {mm} -> pid {p}"))
                .collect();
            let _ = writeln!(
                o,
                "kept (--keep; inspect with `vmasim maps PID`): {}",
                kept.join(", ")
            );
        }
        let exact = self
            .mms
            .iter()
            .filter(|m| matches!(m.verdict, Verdict::Exact { .. }))
            .count();
        let differ = self
            .mms
            .iter()
            .filter(|m| matches!(m.verdict, Verdict::Differs { .. }))
            .count();
        let _ = writeln!(
            o,
            "verdict: {exact} exact, {differ} differ, {} not checked, {} diverged calls",
            self.mms.len() - exact - differ,
            self.diverged.len()
        );
        o
    }
}

/// `replay --check` options.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Keep the simulated processes (print their pids) instead of exiting them.
    pub keep: bool,
}

struct Sim {
    pid: u32,
    report: usize,
    /// The exec snapshot had `[vsyscall]` and the simulation dropped it.
    lost_gate: bool,
}

struct Checker<'a> {
    c: &'a mut Client,
    o: CheckOptions,
    sims: HashMap<u64, Sim>,
    files: HashMap<(String, u64, String), u64>,
    r: CheckReport,
    refused_flags: bool,
}

fn status_text(s: &Status) -> String {
    format!("{}: {}", crate::error::code_name(s.code()), s.message())
}

/// Checks a parsed recording against the simulation.
pub async fn check(
    c: &mut Client,
    rec: &Recording,
    o: CheckOptions,
) -> Result<CheckReport, CliError> {
    let mut k = Checker {
        c,
        o,
        sims: HashMap::new(),
        files: HashMap::new(),
        r: CheckReport {
            command: rec.command.clone(),
            kernel: rec.kernel.clone(),
            incomplete: !rec.complete,
            ..Default::default()
        },
        refused_flags: false,
    };
    if let Some(l) = rec.truncated_line {
        k.note(
            l,
            "last line cut short (recorder stopped mid-write): ignored".into(),
        );
    }
    for e in &rec.events {
        k.event(e.line, &e.ev).await?;
    }
    // Address spaces still alive at the end (recording cut short).
    let left: Vec<u64> = k.sims.keys().copied().collect();
    for mm in left {
        k.end(mm).await;
    }
    for m in &mut k.r.mms {
        if let Verdict::Exact { snapshots: 0, .. } = m.verdict {
            m.verdict = Verdict::NotChecked("no quiescent final maps in the recording".into());
        }
    }
    Ok(k.r)
}

/// Parses and checks recording text (the `replay --check` entry point).
pub async fn check_text(
    c: &mut Client,
    text: &str,
    o: CheckOptions,
) -> Result<CheckReport, CliError> {
    let rec = format::parse(text).map_err(|e| CliError::Other(format!("recording: {e}")))?;
    check(c, &rec, o).await
}

impl Checker<'_> {
    fn note(&mut self, line: usize, text: String) {
        self.r.notes.entry(text).or_insert((0, line)).0 += 1;
    }

    fn trace(&mut self, line: usize, text: String) {
        self.r.trace.push(format!("line {line}: {text}"));
    }

    fn diverge(&mut self, line: usize, what: String) {
        self.trace(line, format!("DIVERGED: {what}"));
        self.r.diverged.push((line, what));
    }

    fn applied(&mut self, mm: u64, name: &str) {
        *self.r.applied.entry(name.to_string()).or_default() += 1;
        if let Some(s) = self.sims.get(&mm) {
            self.r.mms[s.report].calls += 1;
        }
    }

    async fn event(&mut self, line: usize, ev: &Event) -> Result<(), CliError> {
        match ev {
            Event::Exec {
                mm,
                path,
                start_brk,
                maps,
                vmflags,
                ..
            } => {
                let text = format::spawn_text(maps, vmflags);
                let pid = self
                    .c
                    .spawn(SpawnRequest {
                        maps_text: text,
                        start_brk: *start_brk,
                    })
                    .await?
                    .into_inner()
                    .pid;
                let lost_gate = maps.iter().any(|l| l.ends_with("[vsyscall]"))
                    && !self
                        .c
                        .maps(MapsRequest { pid })
                        .await?
                        .into_inner()
                        .entries
                        .iter()
                        .any(|e| e.path == "[vsyscall]");
                self.learn_files(pid).await?;
                self.trace(line, format!("exec {path}: spawn -> pid {pid}"));
                self.add(*mm, pid, path.clone(), lost_gate);
            }
            Event::Clone {
                mm,
                child_mm,
                name,
                flags,
                child,
                ..
            } => {
                if child_mm == mm {
                    self.trace(
                        line,
                        format!("{name} {flags:#x}: task {child} shares mm {mm}"),
                    );
                    self.applied(*mm, "clone (CLONE_VM)");
                    return Ok(());
                }
                let Some(p) = self.sims.get(mm).map(|s| (s.pid, s.lost_gate)) else {
                    self.note(line, format!("{name} of an mm not in the recording"));
                    return Ok(());
                };
                match self.c.fork(ForkRequest { pid: p.0 }).await {
                    Ok(r) => {
                        let cpid = r.into_inner().child_pid;
                        self.trace(line, format!("{name} {flags:#x}: fork {} -> {cpid}", p.0));
                        self.applied(*mm, "fork");
                        self.add(*child_mm, cpid, format!("fork of mm {mm}"), p.1);
                    }
                    Err(s) => self.diverge(line, format!("fork: {}", status_text(&s))),
                }
            }
            Event::Call {
                mm,
                name,
                args,
                ret,
                errno,
                file,
                anon_kb,
                ..
            } => {
                let Some(pid) = self.sims.get(mm).map(|s| s.pid) else {
                    self.note(line, format!("{name} in an mm not in the recording"));
                    return Ok(());
                };
                if anon_kb.is_some_and(|k| k > 0) {
                    self.fault_source(line, pid, args[0]).await?;
                }
                self.call(
                    line,
                    *mm,
                    pid,
                    name,
                    args,
                    *ret,
                    errno.as_deref(),
                    file.as_ref(),
                )
                .await?;
            }
            Event::Maps {
                mm,
                why,
                quiescent,
                maps,
                ..
            } => {
                if !*quiescent {
                    self.note(
                        line,
                        format!("maps at {why} read while other tasks ran on the mm: not compared"),
                    );
                    return Ok(());
                }
                self.compare(line, *mm, why, maps).await?;
            }
            Event::MmEnd { mm } => self.end(*mm).await,
            Event::Header { .. } | Event::Exit { .. } | Event::End { .. } => {}
        }
        Ok(())
    }

    fn add(&mut self, mm: u64, pid: u32, what: String, lost_gate: bool) {
        self.r.mms.push(MmReport {
            mm,
            what,
            pid,
            calls: 0,
            verdict: Verdict::Exact {
                snapshots: 0,
                lines: 0,
            },
        });
        let report = self.r.mms.len() - 1;
        self.sims.insert(
            mm,
            Sim {
                pid,
                report,
                lost_gate,
            },
        );
    }

    async fn end(&mut self, mm: u64) {
        let Some(s) = self.sims.remove(&mm) else {
            return;
        };
        if self.o.keep {
            self.r.kept.push((mm, s.pid));
        } else {
            let _ = self.c.exit(ExitRequest { pid: s.pid }).await;
        }
    }

    async fn learn_files(&mut self, pid: u32) -> Result<(), CliError> {
        let m = self.c.maps(MapsRequest { pid }).await?.into_inner();
        for e in &m.entries {
            if e.file_id != 0 {
                let dev = format!("{:02x}:{:02x}", e.dev_major, e.dev_minor);
                self.files
                    .entry((dev, e.inode, e.path.clone()))
                    .or_insert(e.file_id);
            }
        }
        Ok(())
    }

    /// The server's id for a recorded file: the one the exec snapshot's
    /// import gave it, else registered by spawning a throw-away process
    /// from a one-line maps text naming it (the API's only way to name a
    /// file: the import keys files by dev, inode and path, as here).
    async fn file_id(&mut self, f: &FileRef) -> Result<u64, CliError> {
        let key = (f.dev.clone(), f.inode, f.path.clone());
        if let Some(id) = self.files.get(&key) {
            return Ok(*id);
        }
        let id = crate::files::register_file(self.c, &f.dev, f.inode, &f.path).await?;
        self.files.insert(key, id);
        Ok(id)
    }

    /// The program had faulted the VMA it remapped (`anon_kb`): fault its
    /// first page in the simulation too, so it has an `anon_vma` as in the
    /// kernel (a write; a read of anonymous memory maps the zero page).
    async fn fault_source(&mut self, line: usize, pid: u32, addr: u64) -> Result<(), CliError> {
        let r = self
            .c
            .fault(FaultRequest {
                pid,
                addr,
                access: Access::Write as i32,
            })
            .await?
            .into_inner();
        let o = FaultOutcome::try_from(r.outcome).unwrap_or(FaultOutcome::Unspecified);
        self.trace(
            line,
            format!("write fault at {addr:#x} (the program had faulted it): {o:?}"),
        );
        if matches!(o, FaultOutcome::SegvAccerr | FaultOutcome::SegvMaperr) {
            self.note(
                line,
                "a remapped VMA had anonymous pages but is not writable now: its anon_vma is not reproduced"
                    .into(),
            );
        } else {
            *self
                .r
                .applied
                .entry("fault (before mremap)".into())
                .or_default() += 1;
        }
        Ok(())
    }

    /// mmap, retried without the flags the server refuses (noted once).
    async fn mmap(&mut self, line: usize, req: MmapRequest) -> Result<u64, Status> {
        let (addr, note) =
            crate::replay::mmap_documented_flags(self.c, req, &mut self.refused_flags).await?;
        if let Some(n) = note {
            self.note(line, n);
        }
        Ok(addr)
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &mut self,
        line: usize,
        mm: u64,
        pid: u32,
        name: &str,
        a: &[u64; 6],
        ret: i64,
        errno: Option<&str>,
        file: Option<&FileRef>,
    ) -> Result<(), CliError> {
        let ok = errno.is_none();
        let kernel = match errno {
            None => format!("{ret:#x}"),
            Some(e) => e.to_string(),
        };
        // The outcome in the simulation, for the comparison with the kernel's.
        let sim: Result<String, Status> = match name {
            "mmap" => {
                let (flags, anon) = (a[3], a[3] & MAP_ANONYMOUS != 0);
                let file_id = match (anon, file) {
                    (true, _) => 0,
                    (false, Some(f)) => self.file_id(f).await?,
                    // A failed file mapping: any id will fail the same way.
                    (false, None) => 1 << 40 | (a[4] & 0xffff),
                };
                let req = if ok {
                    // At the kernel's address, as if fixed.
                    MmapRequest {
                        pid,
                        addr: ret as u64,
                        length: a[1],
                        prot: (a[2] & 7) as u32,
                        flags: ((flags | MAP_FIXED) & !MAP_FIXED_NOREPLACE) as u32,
                        file_id,
                        offset: if anon { 0 } else { a[5] },
                        file_size: 0,
                    }
                } else {
                    MmapRequest {
                        pid,
                        addr: a[0],
                        length: a[1],
                        prot: (a[2] & 7) as u32,
                        flags: flags as u32,
                        file_id,
                        offset: if anon { 0 } else { a[5] },
                        file_size: 0,
                    }
                };
                let len = req.length;
                let r = self.mmap(line, req).await.map(|x| format!("{x:#x}"));
                if !ok && let Ok(addr) = &r {
                    // Undo what the kernel did not do, to go on.
                    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap_or(0);
                    let _ = self
                        .c
                        .munmap(MunmapRequest {
                            pid,
                            addr,
                            length: len,
                        })
                        .await;
                }
                r
            }
            "munmap" => self
                .c
                .munmap(MunmapRequest {
                    pid,
                    addr: a[0],
                    length: a[1],
                })
                .await
                .map(|_| "0x0".to_string()),
            "mprotect" | "pkey_mprotect" => {
                if a[2] & !7 != 0 {
                    self.note(
                        line,
                        format!(
                            "{name} with PROT_GROWSDOWN/UP ({:#x}): replayed without",
                            a[2]
                        ),
                    );
                }
                self.c
                    .mprotect(MprotectRequest {
                        pid,
                        addr: a[0],
                        length: a[1],
                        prot: (a[2] & 7) as u32,
                    })
                    .await
                    .map(|_| "0x0".to_string())
            }
            "brk" => self
                .c
                .brk(BrkRequest { pid, brk: a[0] })
                .await
                .map(|r| format!("{:#x}", r.into_inner().brk)),
            "mremap" => {
                // A kernel-chosen destination (MAYMOVE without FIXED) is
                // replayed as MREMAP_FIXED to where the kernel moved it, as
                // mmap is replayed at the kernel's address: placement is
                // not what is being checked.
                let moved = ok && ret as u64 != a[0];
                let (flags, new_addr) = if moved && a[3] & MREMAP_FIXED == 0 {
                    (a[3] | MREMAP_FIXED | MREMAP_MAYMOVE, ret as u64)
                } else {
                    (a[3], a[4])
                };
                self.c
                    .mremap(MremapRequest {
                        pid,
                        addr: a[0],
                        old_length: a[1],
                        new_length: a[2],
                        flags: flags as u32,
                        new_addr,
                    })
                    .await
                    .map(|r| format!("{:#x}", r.into_inner().addr))
            }
            "madvise" | "process_madvise" => {
                let advice = if name == "madvise" { a[2] } else { a[3] };
                if name == "madvise" && SIMULATED_ADVICE.contains(&advice) {
                    self.c
                        .madvise(MadviseRequest {
                            pid,
                            addr: a[0],
                            length: a[1],
                            advice: advice as u32,
                        })
                        .await
                        .map(|_| "0x0".to_string())
                } else {
                    if let Some((_, n)) = VMA_CHANGING_ADVICE.iter().find(|(v, _)| *v == advice) {
                        self.note(
                            line,
                            format!("madvise {n} changes VMA flags: not simulated"),
                        );
                    } else {
                        self.applied(mm, "madvise (no VMA change)");
                    }
                    return Ok(());
                }
            }
            "execve" | "execveat" | "clone" | "clone3" | "fork" | "vfork" => {
                // Only failures are `call` lines: nothing changed.
                self.applied(mm, &format!("{name} (failed)"));
                return Ok(());
            }
            other => {
                if ok {
                    self.note(line, format!("{other}: not simulated (no such operation)"));
                }
                return Ok(());
            }
        };
        let desc = format!("{name}({:#x}, {:#x}, {:#x}, {:#x})", a[0], a[1], a[2], a[3]);
        match (&sim, ok) {
            (Ok(s), true)
                if matches!(name, "munmap" | "madvise")
                    || name.ends_with("mprotect")
                    || *s == kernel =>
            {
                self.trace(line, format!("{desc} = {kernel}: same"));
                self.applied(mm, name);
            }
            (Ok(s), true) => self.diverge(line, format!("{desc}: kernel {kernel}, simulation {s}")),
            (Err(s), true) => self.diverge(
                line,
                format!("{desc}: kernel {kernel}, simulation {}", status_text(s)),
            ),
            (Err(s), false) => {
                self.trace(
                    line,
                    format!("{desc}: failed in both ({kernel}; {})", status_text(s)),
                );
                self.applied(mm, &format!("{name} (failed)"));
            }
            (Ok(s), false) => self.diverge(
                line,
                format!("{desc}: kernel failed with {kernel}, simulation succeeded ({s})"),
            ),
        }
        Ok(())
    }

    async fn compare(
        &mut self,
        line: usize,
        mm: u64,
        why: &str,
        maps: &[String],
    ) -> Result<(), CliError> {
        let Some((pid, report, lost_gate)) =
            self.sims.get(&mm).map(|s| (s.pid, s.report, s.lost_gate))
        else {
            return Ok(());
        };
        let entries = self.c.maps(MapsRequest { pid }).await?.into_inner().entries;
        let sim: Vec<MapsLine> = entries.iter().map(sim_line).collect();
        let mut kernel: Vec<MapsLine> = maps.iter().filter_map(|l| MapsLine::parse(l)).collect();
        if lost_gate {
            kernel.retain(|l| l.path != "[vsyscall]");
            self.note(
                line,
                "[vsyscall] (the gate area, not a VMA) is not kept by this server's import: not compared"
                    .into(),
            );
        }
        let (diff, grown) = diff_maps(&kernel, &sim);
        if grown > 0 {
            self.note(
                line,
                format!(
                    "[stack] grew by faults (not syscalls): compared on its end (mm {mm}: {} pages)",
                    grown / 4096
                ),
            );
        }
        let m = &mut self.r.mms[report];
        if diff.is_empty() {
            if let Verdict::Exact { snapshots, lines } = &mut m.verdict {
                *snapshots += 1;
                *lines = kernel.len();
            }
            self.trace(
                line,
                format!("maps at {why} of mm {mm}: {} lines, exact", kernel.len()),
            );
        } else if matches!(m.verdict, Verdict::Exact { .. }) {
            m.verdict = Verdict::Differs {
                why: format!("{why} (line {line})"),
                diff: diff.clone(),
            };
            self.trace(line, format!("maps at {why} of mm {mm}: differ"));
        }
        Ok(())
    }
}

/// A simulated VMA as a compared maps line.
pub fn sim_line(e: &VmaEntry) -> MapsLine {
    let c = |bit: u32, ch: char| if e.prot & bit != 0 { ch } else { '-' };
    MapsLine {
        start: e.start,
        end: e.end,
        perms: [
            c(1, 'r'),
            c(2, 'w'),
            c(4, 'x'),
            if e.shared { 's' } else { 'p' },
        ]
        .into_iter()
        .collect(),
        offset: if e.file_id == 0 { 0 } else { e.offset },
        path: e.path.clone(),
    }
}

/// The first differing lines of two maps (`-` kernel, `+` simulation, up
/// to 3 of context), and by how much the kernel's `[stack]` grew below
/// the simulation's.
pub fn diff_maps(kernel: &[MapsLine], sim: &[MapsLine]) -> (Vec<String>, u64) {
    let mut grown = 0;
    let same = |k: &MapsLine, s: &MapsLine, grown: &mut u64| {
        if k == s {
            return true;
        }
        if k.path == "[stack]" && s.path == "[stack]" && k.end == s.end && k.perms == s.perms {
            *grown = s.start.saturating_sub(k.start);
            return k.start <= s.start;
        }
        false
    };
    let n = kernel.len().max(sim.len());
    for i in 0..n {
        match (kernel.get(i), sim.get(i)) {
            (Some(k), Some(s)) if same(k, s, &mut grown) => continue,
            _ => {
                let mut d = Vec::new();
                if i > 0 {
                    d.push(format!("  {}", kernel[i - 1].short()));
                }
                for j in i..(i + 3).min(n) {
                    if let Some(k) = kernel.get(j) {
                        d.push(format!("- {}", k.short()));
                    }
                    if let Some(s) = sim.get(j) {
                        d.push(format!("+ {}", s.short()));
                    }
                }
                d.push(format!(
                    "  ({} lines in the kernel's maps, {} in the simulation's; - kernel, + simulation)",
                    kernel.len(),
                    sim.len()
                ));
                return (d, grown);
            }
        }
    }
    (Vec::new(), grown)
}
