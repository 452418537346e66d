//! `vmasim replay`: re-issue a real program's address-space syscalls.
//!
//! Input is an strace log, parsed by [`crate::strace`]. Each traced task
//! maps to a simulated process:
//!
//! * the first task of the log gets a fresh `Spawn` (or, with `--into PID`,
//!   the existing process PID — e.g. one made by `spawn --from-maps` from
//!   the program's own `/proc/PID/maps`);
//! * `fork`/`vfork`/`clone` without `CLONE_VM`: `Fork` of the parent, the
//!   child's pid maps to the new process; threads (`CLONE_VM`) map to the
//!   same process as their creator;
//! * `execve` (success): the old process is exited (unless it is the
//!   `--into` one) and the task gets a fresh `Spawn`;
//! * `exit`/`exit_group`: when the last task of a process is gone, `Exit`
//!   (never for the `--into` process, which the replay did not create).
//!
//! Syscalls:
//!
//! * `mmap` is replayed at the address the kernel returned, with the
//!   original flags plus `MAP_FIXED` (and without `MAP_FIXED_NOREPLACE`,
//!   which would win over it), so the kernel's placement is reproduced
//!   rather than predicted. Flags the server does not take are dropped
//!   (counted) on a retry.
//! * File mappings need a file id. The same path always gets the same id;
//!   a path already mapped in the process (imported from maps) reuses that
//!   VMA's id. A new path is *registered* with the server so that `Maps`
//!   shows it: the replay spawns a throw-away process from a one-line maps
//!   text naming the path, reads the file id the server assigned, and
//!   exits it (the API has no other way to name a file). Without `-y` in
//!   the log there is no path; the fd number stands in for it.
//! * `munmap`, `mprotect` as logged. In a process that started from a
//!   fresh `Spawn`, a range that is not mapped is skipped (the kernel
//!   mapped it at execve; the trace does not show that).
//! * `brk` relative to the heap start: the first `brk(NULL)` of a process
//!   gives the traced heap start; if the simulated one differs (the API
//!   cannot set it; the kernel randomizes it), every later break is shifted
//!   by the difference, and the result is compared with the logged one.
//! * `mremap` goes to the server's Mremap with the logged arguments; a
//!   move to a kernel-chosen address is replayed with `MREMAP_FIXED` to
//!   the address the kernel returned (as `mmap` is), so placement is
//!   reproduced rather than predicted. (Page faults are not in the log: a
//!   moved anonymous VMA the program had faulted keeps its old `vm_pgoff`
//!   in the kernel, one never faulted takes the new address; the replay
//!   cannot tell them apart. `vmasim record` recordings can.)
//! * Calls that failed in the log (`= -1 E...`, `= ?`) are skipped, with
//!   their error as the reason. Other syscalls are counted by name.
//!
//! A call that succeeded in the log but fails in the simulation is a
//! divergence: it is listed and the command exits with code 10.

use crate::connect::Client;
use crate::error::{CliError, code_name};
use crate::strace::{self, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, Syscall, TraceLine};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use tonic::{Code, Status};
use vmasim_proto::v1::{
    BrkRequest, ExitRequest, ForkRequest, MapFlag, MapsRequest, MmapRequest, MprotectRequest,
    MremapRequest, MunmapRequest, SpawnRequest, VmaEntry,
};

/// The `MAP_*` bits the proto documents (`MapFlag`); a server may refuse
/// others with INVALID_ARGUMENT.
const PROTO_FLAGS: u32 = MapFlag::MapShared as u32
    | MapFlag::MapPrivate as u32
    | MapFlag::MapFixed as u32
    | MapFlag::MapAnonymous as u32
    | MapFlag::MapFixedNoreplace as u32;

/// mmap with the server's flag set, for replaying real programs' calls
/// (strace logs and recordings): tries the original flags, then (after
/// INVALID_ARGUMENT) only the flags the proto documents, and keeps to
/// those once `refused` is set. Returns the address and, the first time
/// flags are dropped, a note saying so.
pub(crate) async fn mmap_documented_flags(
    c: &mut Client,
    mut req: MmapRequest,
    refused: &mut bool,
) -> Result<(u64, Option<String>), Status> {
    if *refused {
        req.flags &= PROTO_FLAGS;
    }
    match c.mmap(req).await {
        Ok(r) => Ok((r.into_inner().addr, None)),
        Err(s) if s.code() == Code::InvalidArgument && req.flags & !PROTO_FLAGS != 0 => {
            *refused = true;
            let note = format!(
                "server refused mmap flags {:#x} ({}); replayed with the documented flags only",
                req.flags & !PROTO_FLAGS,
                s.message()
            );
            req.flags &= PROTO_FLAGS;
            Ok((c.mmap(req).await?.into_inner().addr, Some(note)))
        }
        Err(s) => Err(s),
    }
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Calls applied, by syscall name.
    pub applied: BTreeMap<String, u64>,
    /// Calls skipped: (log line, reason).
    pub skipped: Vec<(usize, String)>,
    /// Syscalls not replayed (not address-space changing), by name.
    pub other: BTreeMap<String, u64>,
    /// Calls that succeeded in the log but not in the simulation, or gave
    /// a different result: (log line, what happened).
    pub diverged: Vec<(usize, String)>,
    /// Notes (flags dropped, brk differences that did not fail a call).
    pub notes: Vec<(usize, String)>,
    /// Traced task -> simulated pid, in order of appearance.
    pub processes: Vec<(Option<u32>, u32)>,
    /// Parse errors of the log.
    pub parse_errors: Vec<String>,
    /// Every call and what happened to it, in order (printed with `-v`).
    pub trace: Vec<String>,
    /// Simulated processes left alive by `--keep` (traced task, pid).
    pub kept: Vec<(Option<u32>, u32)>,
}

impl ReplayReport {
    /// The text `vmasim replay` prints.
    pub fn text(&self, verbose: bool) -> String {
        let mut o = String::new();
        if verbose {
            for t in &self.trace {
                let _ = writeln!(o, "{t}");
            }
        }
        let total: u64 = self.applied.values().sum();
        let _ = writeln!(o, "applied {total} calls:");
        for (k, n) in &self.applied {
            let _ = writeln!(o, "  {k:<10} {n}");
        }
        let _ = writeln!(o, "skipped {} calls:", self.skipped.len());
        let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, r) in &self.skipped {
            *reasons.entry(r.as_str()).or_default() += 1;
        }
        if verbose {
            for (l, r) in &self.skipped {
                let _ = writeln!(o, "  line {l}: {r}");
            }
        } else {
            for (r, n) in reasons {
                let _ = writeln!(o, "  {n} x {r}");
            }
        }
        if !self.other.is_empty() {
            let list: Vec<String> = self.other.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(o, "other syscalls (not replayed): {}", list.join(", "));
        }
        // Notes folded: the same text once, with its count and first line.
        let mut folded: Vec<(&str, usize, u64)> = Vec::new();
        for (l, n) in &self.notes {
            match folded.iter_mut().find(|(t, _, _)| *t == n.as_str()) {
                Some(f) => f.2 += 1,
                None => folded.push((n, *l, 1)),
            }
        }
        for (n, l, count) in folded {
            if count == 1 {
                let _ = writeln!(o, "note: line {l}: {n}");
            } else {
                let _ = writeln!(o, "note: {count} x {n} (first at line {l})");
            }
        }
        if !self.parse_errors.is_empty() {
            let _ = writeln!(o, "unparsed lines: {}", self.parse_errors.len());
            for e in self
                .parse_errors
                .iter()
                .take(if verbose { usize::MAX } else { 5 })
            {
                let _ = writeln!(o, "  {e}");
            }
        }
        let procs: Vec<String> = self
            .processes
            .iter()
            .map(|(t, s)| match t {
                Some(t) => format!("{t} -> {s}"),
                None => format!("(traced) -> {s}"),
            })
            .collect();
        let _ = writeln!(o, "processes (traced -> simulated): {}", procs.join(", "));
        if !self.kept.is_empty() {
            let kept: Vec<String> = self.kept.iter().map(|(_, p)| p.to_string()).collect();
            let _ = writeln!(
                o,
                "kept (--keep; inspect with `vmasim maps PID`, remove with `vmasim exit PID`): {}",
                kept.join(" ")
            );
        }
        if !self.diverged.is_empty() {
            let _ = writeln!(o, "DIVERGED on {} calls:", self.diverged.len());
            for (l, d) in &self.diverged {
                let _ = writeln!(o, "  line {l}: {d}");
            }
        }
        o
    }
}

/// Replay state.
struct Replayer<'a> {
    c: &'a mut Client,
    /// Traced task -> simulated pid.
    tasks: HashMap<Option<u32>, u32>,
    /// The `--into` process (never exited by the replay).
    into: Option<u32>,
    /// Path (or "fd N") -> file id.
    files: HashMap<String, u64>,
    report: ReplayReport,
    /// The flags the server refused once (so later calls drop them first).
    refused_flags: bool,
    /// Per simulated process: simulated heap start minus the traced one
    /// (learnt from the first `brk(NULL)`), inherited by fork children.
    brk_delta: HashMap<u32, i128>,
    /// Simulated processes that start from a fresh `Spawn` (no `--into`):
    /// they lack what the kernel mapped at execve (the program, the
    /// loader, the stack), which the trace does not show.
    fresh: std::collections::HashSet<u32>,
    /// `--keep`: never exit a process the replay created.
    keep: bool,
}

fn status_text(s: &Status) -> String {
    format!("{}: {}", code_name(s.code()), s.message())
}

/// Replays the calls of `text` that start on lines `[from, to)`.
pub async fn replay(
    c: &mut Client,
    text: &str,
    into: Option<u32>,
    from: Option<usize>,
    to: Option<usize>,
) -> Result<ReplayReport, CliError> {
    replay_with(c, text, into, from, to, false).await
}

/// [`replay`], optionally keeping (`--keep`) the processes it created
/// instead of exiting them when their traced tasks exit.
pub async fn replay_with(
    c: &mut Client,
    text: &str,
    into: Option<u32>,
    from: Option<usize>,
    to: Option<usize>,
    keep: bool,
) -> Result<ReplayReport, CliError> {
    let (calls, errors) = strace::parse(text);
    if calls.is_empty() {
        // Nothing to replay is an error, not an empty success: the file is
        // most likely not an strace log (or was written without -o).
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        return Err(CliError::Usage(match errors.first() {
            Some(e) => format!(
                "no strace line could be parsed ({lines} non-empty lines, {} unparsable; first: {e})",
                errors.len()
            ),
            None => format!(
                "no strace line could be parsed ({lines} non-empty lines): expected `strace -f -e trace=memory,process -o FILE` output or a `vmasim record` recording"
            ),
        }));
    }
    let mut r = Replayer {
        c,
        tasks: HashMap::new(),
        into,
        files: HashMap::new(),
        report: ReplayReport {
            parse_errors: errors.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        },
        refused_flags: false,
        brk_delta: HashMap::new(),
        fresh: Default::default(),
        keep,
    };
    if let Some(pid) = into {
        // Learn the file ids of the imported files, by path.
        let m = r.c.maps(MapsRequest { pid }).await?.into_inner();
        r.learn_files(&m.entries);
    }
    let in_range =
        |t: &TraceLine| from.is_none_or(|f| t.line_no >= f) && to.is_none_or(|e| t.line_no < e);
    for t in calls.iter().filter(|t| in_range(t)) {
        let before = (
            r.report.applied.values().sum::<u64>(),
            r.report.skipped.len(),
            r.report.diverged.len(),
        );
        r.apply(t).await?;
        let what = if r.report.diverged.len() > before.2 {
            format!("DIVERGED: {}", r.report.diverged.last().expect("pushed").1)
        } else if r.report.skipped.len() > before.1 {
            format!("skipped: {}", r.report.skipped.last().expect("pushed").1)
        } else if r.report.applied.values().sum::<u64>() > before.0 {
            "applied".to_string()
        } else {
            "not replayed".to_string()
        };
        let task = t.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        let sim = r
            .tasks
            .get(&t.pid)
            .map_or_else(|| "-".into(), |p| p.to_string());
        r.report.trace.push(format!(
            "line {}: task {task} (sim {sim}): {}: {what}",
            t.line_no,
            describe(&t.call)
        ));
    }
    if keep {
        // Exited and exec'd-away processes were kept as they went; add the
        // ones still running at the end of the log.
        let live: Vec<(Option<u32>, u32)> = r.tasks.iter().map(|(t, p)| (*t, *p)).collect();
        let kept = &mut r.report.kept;
        kept.extend(live);
        kept.sort_by_key(|(_, p)| *p);
        kept.dedup_by_key(|(_, p)| *p);
    }
    Ok(r.report)
}

impl Replayer<'_> {
    fn learn_files(&mut self, entries: &[VmaEntry]) {
        for e in entries {
            if e.file_id != 0 && !e.path.is_empty() {
                self.files.entry(e.path.clone()).or_insert(e.file_id);
            }
        }
    }

    fn applied(&mut self, name: &str) {
        *self.report.applied.entry(name.to_string()).or_default() += 1;
    }

    fn skip(&mut self, line: usize, reason: String) {
        self.report.skipped.push((line, reason));
    }

    fn diverge(&mut self, line: usize, what: String) {
        self.report.diverged.push((line, what));
    }

    /// A failed munmap/mprotect/mremap: in a fresh process a range that is
    /// not mapped is most likely one the kernel mapped at execve (not in
    /// the trace), so the call is skipped; anywhere else it diverged.
    fn failed(&mut self, line: usize, pid: u32, what: String, s: &Status) {
        if self.fresh.contains(&pid) && s.code() == Code::FailedPrecondition {
            self.skip(
                line,
                "range not mapped in the simulation (mapped by the kernel at execve, not in the trace)"
                    .into(),
            );
        } else {
            self.diverge(line, format!("{what}: {}", status_text(s)));
        }
    }

    /// The simulated process of a task; the first task seen becomes the
    /// root (the `--into` process or a fresh one).
    async fn process(&mut self, task: Option<u32>) -> Result<Option<u32>, CliError> {
        if let Some(p) = self.tasks.get(&task) {
            return Ok(Some(*p));
        }
        if !self.tasks.is_empty() || !self.report.processes.is_empty() {
            return Ok(None);
        }
        let pid = match self.into {
            Some(p) => p,
            None => {
                let pid = self
                    .c
                    .spawn(SpawnRequest::default())
                    .await?
                    .into_inner()
                    .pid;
                self.fresh.insert(pid);
                pid
            }
        };
        self.tasks.insert(task, pid);
        self.report.processes.push((task, pid));
        Ok(Some(pid))
    }

    /// The file id for a path (or fd), registering the path with the
    /// server on first use.
    async fn file_id(&mut self, path: Option<&str>, fd: i64) -> Result<u64, CliError> {
        let key = path.map_or_else(|| format!("fd {fd}"), str::to_string);
        if let Some(id) = self.files.get(&key) {
            return Ok(*id);
        }
        let id = match path {
            Some(p) if !p.contains('\n') => {
                // Register the path: a throw-away process with one line
                // naming it; the server assigns the id (see module docs).
                let inode = 1 + (fnv1a(p) & 0x7fff_ffff_ffff);
                crate::files::register_file(self.c, "00:00", inode, p).await?
            }
            _ => 0,
        };
        let id = if id != 0 {
            id
        } else {
            // No path (strace without -y): a client-chosen id per fd.
            (1u64 << 40) + fd.unsigned_abs()
        };
        self.files.insert(key, id);
        Ok(id)
    }

    /// mmap with the server's flag set (see [`mmap_documented_flags`]).
    async fn mmap(&mut self, line: usize, req: MmapRequest) -> Result<u64, Status> {
        let (addr, note) = mmap_documented_flags(self.c, req, &mut self.refused_flags).await?;
        if let Some(n) = note {
            self.report.notes.push((line, n));
        }
        Ok(addr)
    }

    async fn apply(&mut self, t: &TraceLine) -> Result<(), CliError> {
        let line = t.line_no;
        // Failed calls: skipped.
        let failed = match &t.call {
            Syscall::Mmap { ret, .. }
            | Syscall::Munmap { ret, .. }
            | Syscall::Mprotect { ret, .. }
            | Syscall::Brk { ret, .. }
            | Syscall::Mremap { ret, .. }
            | Syscall::Execve { ret } => ret.as_ref().err().cloned(),
            Syscall::Fork { child } | Syscall::Thread { child } => child.as_ref().err().cloned(),
            Syscall::Exit { .. } => None,
            Syscall::Other { name, .. } => {
                *self.report.other.entry(name.clone()).or_default() += 1;
                return Ok(());
            }
        };
        let name = syscall_name(&t.call);
        if let Some(e) = failed {
            self.skip(line, format!("{name} failed in the trace ({e})"));
            return Ok(());
        }
        let Some(pid) = self.process(t.pid).await? else {
            let task = t.pid.map_or("?".into(), |p| p.to_string());
            self.skip(
                line,
                format!("{name} of task {task}, not created in the replayed range"),
            );
            return Ok(());
        };
        match &t.call {
            Syscall::Mmap {
                length,
                prot,
                flags,
                fd,
                path,
                offset,
                ret,
                ..
            } => {
                let addr = *ret.as_ref().expect("checked");
                let anon = flags & MAP_ANONYMOUS != 0;
                let file_id = if anon {
                    0
                } else {
                    self.file_id(path.as_deref(), *fd).await?
                };
                let req = MmapRequest {
                    pid,
                    addr,
                    length: *length,
                    prot: prot & 0x7,
                    flags: (flags | MAP_FIXED) & !MAP_FIXED_NOREPLACE,
                    file_id,
                    offset: if anon { 0 } else { *offset },
                    file_size: 0,
                };
                match self.mmap(line, req).await {
                    Ok(a) if a == addr => self.applied(name),
                    Ok(a) => self.diverge(line, format!("mmap at {addr:#x} returned {a:#x}")),
                    Err(s) => self.diverge(line, format!("mmap at {addr:#x}: {}", status_text(&s))),
                }
            }
            Syscall::Munmap { addr, length, .. } => {
                let req = MunmapRequest {
                    pid,
                    addr: *addr,
                    length: *length,
                };
                match self.c.munmap(req).await {
                    Ok(_) => self.applied(name),
                    Err(s) => self.failed(line, pid, format!("munmap {addr:#x}"), &s),
                }
            }
            Syscall::Mprotect {
                addr, length, prot, ..
            } => {
                let req = MprotectRequest {
                    pid,
                    addr: *addr,
                    length: *length,
                    prot: prot & 0x7,
                };
                match self.c.mprotect(req).await {
                    Ok(_) => self.applied(name),
                    Err(s) => self.failed(line, pid, format!("mprotect {addr:#x}"), &s),
                }
            }
            Syscall::Brk { addr, ret } => {
                let want = *ret.as_ref().expect("checked");
                self.brk(line, pid, *addr, want).await?;
                self.applied(name);
            }
            Syscall::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                new_addr,
                ret,
            } => {
                let new = *ret.as_ref().expect("checked");
                // MREMAP_FIXED | MREMAP_MAYMOVE to where the kernel moved it.
                let (flags, to) = if new != *old_addr && flags & 2 == 0 {
                    (flags | 3, new)
                } else {
                    (*flags, new_addr.unwrap_or(new))
                };
                let req = MremapRequest {
                    pid,
                    addr: *old_addr,
                    old_length: *old_len,
                    new_length: *new_len,
                    flags,
                    new_addr: to,
                };
                match self.c.mremap(req).await {
                    Ok(r) if r.get_ref().addr == new => self.applied(name),
                    Ok(r) => self.diverge(
                        line,
                        format!(
                            "mremap {old_addr:#x} returned {:#x}, the kernel {new:#x}",
                            r.get_ref().addr
                        ),
                    ),
                    Err(s) => self.failed(line, pid, format!("mremap {old_addr:#x}"), &s),
                }
            }
            Syscall::Fork { child } => {
                let child = *child.as_ref().expect("checked");
                match self.c.fork(ForkRequest { pid }).await {
                    Ok(r) => {
                        let sim = r.into_inner().child_pid;
                        if let Some(d) = self.brk_delta.get(&pid).copied() {
                            self.brk_delta.insert(sim, d);
                        }
                        if self.fresh.contains(&pid) {
                            self.fresh.insert(sim);
                        }
                        self.tasks.insert(Some(child), sim);
                        self.report.processes.push((Some(child), sim));
                        self.applied(name);
                    }
                    Err(s) => self.diverge(line, format!("fork: {}", status_text(&s))),
                }
            }
            Syscall::Thread { child } => {
                let child = *child.as_ref().expect("checked");
                self.tasks.insert(Some(child), pid);
                self.applied(name);
            }
            Syscall::Exit { .. } => {
                self.tasks.remove(&t.pid);
                if self.tasks.values().any(|p| *p == pid) {
                    self.applied("exit (thread)");
                } else if Some(pid) == self.into {
                    self.skip(line, "exit of the --into process (kept)".into());
                } else if self.keep {
                    self.report.kept.push((t.pid, pid));
                    self.skip(line, "exit (process kept: --keep)".into());
                } else {
                    match self.c.exit(ExitRequest { pid }).await {
                        Ok(_) => self.applied(name),
                        Err(s) => self.diverge(line, format!("exit: {}", status_text(&s))),
                    }
                }
            }
            Syscall::Execve { .. } => {
                // The other threads die; the task gets a fresh mm.
                self.tasks.retain(|_, p| *p != pid);
                if self.keep {
                    self.report.kept.push((t.pid, pid));
                } else if Some(pid) != self.into {
                    let _ = self.c.exit(ExitRequest { pid }).await;
                }
                let fresh = self
                    .c
                    .spawn(SpawnRequest::default())
                    .await?
                    .into_inner()
                    .pid;
                self.fresh.insert(fresh);
                self.tasks.insert(t.pid, fresh);
                self.report.processes.push((t.pid, fresh));
                self.applied(name);
            }
            Syscall::Other { .. } => unreachable!("handled above"),
        }
        Ok(())
    }

    /// brk, relative to the heap start: the simulated process may have its
    /// heap elsewhere than the traced one (see the module docs).
    async fn brk(&mut self, line: usize, pid: u32, addr: u64, want: u64) -> Result<(), CliError> {
        if addr == 0 || !self.brk_delta.contains_key(&pid) {
            let got = self.c.brk(BrkRequest { pid, brk: 0 }).await?.into_inner();
            let delta = i128::from(got.brk) - i128::from(if addr == 0 { want } else { got.brk });
            if addr == 0 && delta != 0 && !self.brk_delta.contains_key(&pid) {
                // One text for every process, so that the notes fold; the
                // addresses go to the -v trace.
                self.report.notes.push((
                    line,
                    "the simulated heap starts elsewhere than the traced one: brk is replayed relative to it".into(),
                ));
                self.report.trace.push(format!(
                    "  (heap of pid {pid} is at {:#x} in the simulation, {want:#x} in the trace)",
                    got.brk
                ));
            }
            self.brk_delta.entry(pid).or_insert(delta);
            if addr == 0 {
                return Ok(());
            }
        }
        let delta = self.brk_delta[&pid];
        let shift = |x: u64| u64::try_from(i128::from(x) + delta).unwrap_or(0);
        let got = self
            .c
            .brk(BrkRequest {
                pid,
                brk: shift(addr),
            })
            .await?
            .into_inner();
        if got.brk != shift(want) {
            self.diverge(
                line,
                format!(
                    "brk({:#x}) gave {:#x} in the simulation; the trace's {want:#x} corresponds to {:#x}",
                    shift(addr),
                    got.brk,
                    shift(want)
                ),
            );
        }
        Ok(())
    }
}

/// The syscall's name for reports.
fn syscall_name(c: &Syscall) -> &'static str {
    match c {
        Syscall::Mmap { .. } => "mmap",
        Syscall::Munmap { .. } => "munmap",
        Syscall::Mprotect { .. } => "mprotect",
        Syscall::Brk { .. } => "brk",
        Syscall::Mremap { .. } => "mremap",
        Syscall::Fork { .. } => "fork",
        Syscall::Thread { .. } => "thread",
        Syscall::Exit { .. } => "exit",
        Syscall::Execve { .. } => "execve",
        Syscall::Other { .. } => "other",
    }
}

/// A call as `-v` prints it.
fn describe(c: &Syscall) -> String {
    let r = |r: &Result<u64, String>| match r {
        Ok(v) => format!("{v:#x}"),
        Err(e) => e.clone(),
    };
    match c {
        Syscall::Mmap {
            addr,
            length,
            prot,
            flags,
            fd,
            path,
            offset,
            ret,
        } => format!(
            "mmap({addr:#x}, {length:#x}, {prot:#x}, {flags:#x}, {fd}{}, {offset:#x}) = {}",
            path.as_ref().map_or_else(String::new, |p| format!("<{p}>")),
            r(ret)
        ),
        Syscall::Munmap { addr, length, ret } => {
            format!("munmap({addr:#x}, {length:#x}) = {}", r(ret))
        }
        Syscall::Mprotect {
            addr,
            length,
            prot,
            ret,
        } => format!("mprotect({addr:#x}, {length:#x}, {prot:#x}) = {}", r(ret)),
        Syscall::Brk { addr, ret } => format!("brk({addr:#x}) = {}", r(ret)),
        Syscall::Mremap {
            old_addr,
            old_len,
            new_len,
            flags,
            ret,
            ..
        } => format!(
            "mremap({old_addr:#x}, {old_len:#x}, {new_len:#x}, {flags:#x}) = {}",
            r(ret)
        ),
        Syscall::Fork { child } | Syscall::Thread { child } => format!(
            "{}() = {}",
            syscall_name(c),
            match child {
                Ok(p) => p.to_string(),
                Err(e) => e.clone(),
            }
        ),
        Syscall::Exit { code } => format!("exit({code})"),
        Syscall::Execve { ret } => format!("execve() = {}", r(ret)),
        Syscall::Other { name, ret } => {
            format!("{name}() = {}", ret.as_deref().unwrap_or("?"))
        }
    }
}

/// FNV-1a, for stable synthetic inode numbers of registered paths.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
