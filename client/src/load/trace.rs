//! `vmasim load --trace FILE[,FILE...]`: recorded programs as the workload.
//!
//! Each recording (`vmasim record`) is compiled once into a [`Program`]:
//! its address-space history as a list of operations with their recorded
//! times — `Spawn` from each exec snapshot, `Fork` for each fork, the
//! calls (mmap at the kernel's address, munmap, mprotect, brk, mremap to
//! the kernel's destination),
//! `Exit` when an address space ends — and, for `--verify`, the recorded
//! result of every call and the recorded maps at each quiescent snapshot.
//!
//! Each worker plays `--processes` instances of the programs at once
//! (worker `w`, instance `i` plays file `(w + i) % files`), always the
//! instance whose next operation is due first, and starts an instance
//! over when its program ends, so a worker keeps that many recorded
//! process trees alive for the whole run. With `--speed S` an instance's
//! operation is due at `start + t / S` (`t` its recorded time): `--speed
//! 10` replays ten times faster than the program ran (the recorder's
//! overhead included); 0 plays as fast as the server answers.
//!
//! After each replayed call, `--fault-rate R` faults (on average; the
//! fraction is drawn) hit pages drawn uniformly over what the instance's
//! process maps at that moment, tracked client-side from the calls: a
//! write where the range is writable, else a read (SEGV outcomes on
//! PROT_NONE are outcomes, not errors). `--batch N` sends N addresses per
//! FaultBatch.
//!
//! `--verify`: a call must end as it did in the kernel (success with the
//! same result, or failure), and the simulated maps must equal each
//! recorded quiescent snapshot (the rules of `replay --check`: `[stack]`
//! on its end); the first difference is a divergence (exit 10).

use crate::load::LoadConfig;
use crate::load::mix::OpKind;
use crate::load::recorder::Recorder;
use crate::load::shared::Shared;
use crate::load::worker::WorkerOutput;
use crate::record::check::diff_maps;
use crate::record::format::{self, Event, FileRef, MapsLine};
use crate::stats::add_totals;
use crate::stats::single_totals;
use crate::transport::Transport;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;
use vmasim_proto::linux::{map, mremap};
use vmasim_proto::v1::session_reply::Result as Reply;
use vmasim_proto::v1::session_request::Op;
use vmasim_proto::v1::{
    Access, BrkRequest, ExitRequest, FaultRequest, ForkRequest, MapsRequest, MmapRequest,
    MprotectRequest, MremapRequest, MunmapRequest, SpawnRequest,
};

const PAGE: u64 = 4096;
// Recorded syscall arguments are u64 registers.
const MAP_FIXED: u64 = map::MAP_FIXED as u64;
const MAP_ANONYMOUS: u64 = map::MAP_ANONYMOUS as u64;
const MAP_FIXED_NOREPLACE: u64 = map::MAP_FIXED_NOREPLACE as u64;
const MREMAP_MAYMOVE: u64 = mremap::MREMAP_MAYMOVE as u64;
const MREMAP_FIXED: u64 = mremap::MREMAP_FIXED as u64;

/// One replayable operation.
#[derive(Debug, Clone)]
enum Step {
    Spawn {
        mm: u64,
        maps: Vec<String>,
        vmflags: Vec<String>,
        start_brk: u64,
    },
    Fork {
        mm: u64,
        child: u64,
    },
    Exit {
        mm: u64,
    },
    Mmap {
        mm: u64,
        addr: u64,
        length: u64,
        prot: u32,
        flags: u32,
        file: Option<FileRef>,
        offset: u64,
    },
    Munmap {
        mm: u64,
        addr: u64,
        length: u64,
        ok: bool,
    },
    Mprotect {
        mm: u64,
        addr: u64,
        length: u64,
        prot: u32,
        ok: bool,
    },
    Brk {
        mm: u64,
        addr: u64,
        ret: u64,
    },
    Mremap {
        mm: u64,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new: u64,
        /// The program had faulted the VMA (see `replay --check`).
        faulted: bool,
    },
    /// A quiescent recorded snapshot (compared with `--verify`).
    Check {
        mm: u64,
        maps: Vec<MapsLine>,
    },
}

/// A recording compiled for replay.
#[derive(Debug, Clone)]
pub struct Program {
    /// The file it came from.
    pub name: String,
    steps: Vec<(u64, Step)>,
    /// Server file ids of the files it maps, by (dev, inode, path).
    files: HashMap<(String, u64, String), u64>,
}

impl Program {
    /// Operations per run of the program (calls, spawns, forks, exits).
    pub fn ops(&self) -> usize {
        self.steps
            .iter()
            .filter(|(_, s)| !matches!(s, Step::Check { .. }))
            .count()
    }

    /// Recorded duration.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.steps.last().map_or(0, |(t, _)| *t))
    }
}

/// Reads and compiles recordings; registers the files they map with the
/// server (through `control`), so every worker uses the same ids.
pub async fn load(
    paths: &[std::path::PathBuf],
    control: &mut crate::connect::Client,
) -> Result<Vec<Program>, crate::error::CliError> {
    use crate::error::CliError;
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| CliError::read(p, e))?;
        if !format::is_recording(&text) {
            return Err(CliError::Usage(format!(
                "{} is not a `vmasim record` recording (--trace replays recordings; strace logs go to `vmasim replay`)",
                p.display()
            )));
        }
        let rec =
            format::parse(&text).map_err(|e| CliError::Other(format!("{}: {e}", p.display())))?;
        let mut prog = compile(&p.display().to_string(), &rec);
        if prog.ops() == 0 {
            return Err(CliError::Usage(format!(
                "{}: the recording has no replayable operation",
                p.display()
            )));
        }
        // Register each file once: a throw-away process naming it (the
        // API's only way to name a file; see `replay`).
        let mut files: Vec<FileRef> = Vec::new();
        for (_, s) in &prog.steps {
            match s {
                Step::Mmap { file: Some(f), .. } => files.push(f.clone()),
                Step::Spawn { maps, .. } => {
                    files.extend(maps.iter().filter_map(|l| FileRef::from_maps_line(l)));
                }
                _ => {}
            }
        }
        for f in files {
            let key = (f.dev.clone(), f.inode, f.path.clone());
            if prog.files.contains_key(&key) {
                continue;
            }
            let id = crate::files::register_file(control, &f.dev, f.inode, &f.path).await?;
            prog.files.insert(key, id);
        }
        out.push(prog);
    }
    Ok(out)
}

/// The steps of a recording (see the module docs). Failed mmap and
/// mremap calls are left out (their kernel-chosen addresses are not
/// known); failed munmap/mprotect are kept and must fail.
fn compile(name: &str, rec: &format::Recording) -> Program {
    let mut steps = Vec::new();
    for e in &rec.events {
        let t = e.t_us;
        let step = match &e.ev {
            Event::Exec {
                mm,
                maps,
                vmflags,
                start_brk,
                ..
            } => Step::Spawn {
                mm: *mm,
                maps: maps.clone(),
                vmflags: vmflags.clone(),
                start_brk: *start_brk,
            },
            Event::Clone { mm, child_mm, .. } if child_mm != mm => Step::Fork {
                mm: *mm,
                child: *child_mm,
            },
            Event::MmEnd { mm } => Step::Exit { mm: *mm },
            Event::Maps {
                mm,
                quiescent: true,
                maps,
                ..
            } => Step::Check {
                mm: *mm,
                maps: maps.iter().filter_map(|l| MapsLine::parse(l)).collect(),
            },
            Event::Call {
                mm,
                name,
                args: a,
                ret,
                errno,
                file,
                anon_kb,
                ..
            } => {
                let ok = errno.is_none();
                match name.as_str() {
                    "mmap" if ok => Step::Mmap {
                        mm: *mm,
                        addr: *ret as u64,
                        length: a[1],
                        prot: (a[2] & 7) as u32,
                        flags: ((a[3] | MAP_FIXED) & !MAP_FIXED_NOREPLACE) as u32,
                        file: file.clone(),
                        offset: if a[3] & MAP_ANONYMOUS != 0 { 0 } else { a[5] },
                    },
                    "munmap" => Step::Munmap {
                        mm: *mm,
                        addr: a[0],
                        length: a[1],
                        ok,
                    },
                    "mprotect" | "pkey_mprotect" => Step::Mprotect {
                        mm: *mm,
                        addr: a[0],
                        length: a[1],
                        prot: (a[2] & 7) as u32,
                        ok,
                    },
                    "brk" => Step::Brk {
                        mm: *mm,
                        addr: a[0],
                        ret: *ret as u64,
                    },
                    "mremap" if ok => Step::Mremap {
                        mm: *mm,
                        old: a[0],
                        old_len: a[1],
                        new_len: a[2],
                        flags: a[3],
                        new: *ret as u64,
                        faulted: anon_kb.is_some_and(|k| k > 0),
                    },
                    _ => continue,
                }
            }
            _ => continue,
        };
        steps.push((t, step));
    }
    Program {
        name: name.to_string(),
        steps,
        files: HashMap::new(),
    }
}

/// What the client knows of one mapped range (for faults and mremap).
#[derive(Debug, Clone, Copy)]
struct Range {
    end: u64,
    prot: u32,
    file_id: u64,
    offset: u64,
}

/// A process's mapped ranges, split and trimmed as the calls go.
#[derive(Debug, Clone, Default)]
struct Ranges(BTreeMap<u64, Range>);

impl Ranges {
    /// Removes `[a, b)`, splitting ranges at its edges; returns the pieces
    /// that were inside.
    fn carve(&mut self, a: u64, b: u64) -> Vec<(u64, Range)> {
        let mut inside = Vec::new();
        let keys: Vec<u64> = self
            .0
            .range(..b)
            .rev()
            .take_while(|(_, r)| r.end > a)
            .map(|(s, _)| *s)
            .collect();
        for s in keys {
            let r = self.0.remove(&s).expect("listed");
            if s < a {
                self.0.insert(s, Range { end: a, ..r });
            }
            if r.end > b {
                let off = if r.file_id == 0 {
                    0
                } else {
                    r.offset + (b - s)
                };
                self.0.insert(b, Range { offset: off, ..r });
            }
            let (ps, pe) = (s.max(a), r.end.min(b));
            let off = if r.file_id == 0 {
                0
            } else {
                r.offset + (ps - s)
            };
            inside.push((
                ps,
                Range {
                    end: pe,
                    offset: off,
                    ..r
                },
            ));
        }
        inside.sort_by_key(|(s, _)| *s);
        inside
    }

    fn map(&mut self, a: u64, r: Range) {
        self.carve(a, r.end);
        self.0.insert(a, r);
    }

    fn protect(&mut self, a: u64, b: u64, prot: u32) {
        for (s, r) in self.carve(a, b) {
            self.0.insert(s, Range { prot, ..r });
        }
    }

    /// Accessible pages (`PROT_NONE` reservations and guard pages are
    /// mapped but never touched by a working program).
    fn pages(&self) -> u64 {
        self.0
            .iter()
            .filter(|(_, r)| r.prot != 0)
            .map(|(s, r)| (r.end - s) / PAGE)
            .sum()
    }

    /// The `n`th accessible page (in address order) and its protection.
    fn page(&self, mut n: u64) -> Option<(u64, u32)> {
        for (s, r) in self.0.iter().filter(|(_, r)| r.prot != 0) {
            let p = (r.end - s) / PAGE;
            if n < p {
                return Some((s + n * PAGE, r.prot));
            }
            n -= p;
        }
        None
    }
}

fn page_up(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

/// One playing copy of a program.
struct Instance {
    prog: usize,
    next: usize,
    start: Instant,
    /// Recorded mm -> simulated pid.
    sims: HashMap<u64, u32>,
    ranges: HashMap<u32, Ranges>,
}

/// A `--trace` worker (see the module docs).
pub struct TraceWorker {
    id: usize,
    cfg: Arc<LoadConfig>,
    shared: Arc<Shared>,
    t: Transport,
    rng: StdRng,
    programs: Arc<Vec<Program>>,
    rec: Recorder,
    instances: Vec<Instance>,
}

impl TraceWorker {
    /// A worker playing `programs`.
    pub fn new(
        id: usize,
        cfg: Arc<LoadConfig>,
        shared: Arc<Shared>,
        t: Transport,
        programs: Arc<Vec<Program>>,
    ) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(id as u64 * 0x9e37_79b9));
        let now = Instant::now();
        let instances = (0..cfg.processes.max(1))
            .map(|i| Instance {
                prog: (id + i) % programs.len(),
                next: 0,
                start: now,
                sims: HashMap::new(),
                ranges: HashMap::new(),
            })
            .collect();
        let rec = cfg.recorder();
        TraceWorker {
            id,
            cfg,
            shared,
            t,
            rng,
            programs,
            rec,
            instances,
        }
    }

    /// Plays until the run stops.
    pub async fn run(mut self) -> WorkerOutput {
        let speed = self.cfg.speed;
        loop {
            // The instance whose next step is due first.
            let due = |inst: &Instance, progs: &[Program]| {
                let t = progs[inst.prog].steps[inst.next].0;
                if speed > 0.0 {
                    inst.start + Duration::from_secs_f64(t as f64 / 1e6 / speed)
                } else {
                    inst.start
                }
            };
            let Some((i, when)) = self
                .instances
                .iter()
                .enumerate()
                .map(|(i, inst)| (i, due(inst, &self.programs)))
                .min_by_key(|(_, w)| *w)
            else {
                break;
            };
            if when > Instant::now() {
                tokio::time::sleep_until(when.into()).await;
            }
            match self.step(i).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(msg) => {
                    self.diverged(i, msg);
                    break;
                }
            }
            let inst = &mut self.instances[i];
            inst.next += 1;
            if inst.next == self.programs[inst.prog].steps.len() {
                // Program over: exit what is left, start again.
                let left: Vec<u32> = inst.sims.drain().map(|(_, p)| p).collect();
                inst.ranges.clear();
                inst.next = 0;
                inst.start = Instant::now();
                for pid in left {
                    if self
                        .call(OpKind::Exit, Op::Exit(ExitRequest { pid }), 0)
                        .await
                        .is_none()
                    {
                        break;
                    }
                }
            }
        }
        let pids = self
            .instances
            .iter()
            .flat_map(|i| i.sims.values().copied())
            .collect();
        WorkerOutput {
            rec: self.rec,
            pids,
        }
    }

    fn diverged(&mut self, i: usize, message: String) {
        if self.shared.server_gone.get().is_some() {
            // Failures of a server that went away are not divergences.
            return;
        }
        let inst = &self.instances[i];
        let prog = &self.programs[inst.prog];
        let d = crate::load::divergence::Divergence {
            worker: self.id,
            pid: inst.sims.values().next().copied().unwrap_or(0),
            message: format!("{}: {message}", prog.name),
            history: Vec::new(),
        };
        self.shared
            .divergences
            .lock()
            .expect("not poisoned")
            .push(d);
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// One admitted, measured call; `None` when the run is over.
    async fn call(&mut self, kind: OpKind, op: Op, faults: u64) -> Option<Result<Reply, Status>> {
        self.call_expecting(kind, op, faults, None).await
    }

    /// [`Self::call`]; a failure is labelled `expected` in the error
    /// distribution (the recorded call failed too).
    async fn call_expecting(
        &mut self,
        kind: OpKind,
        op: Op,
        faults: u64,
        expected: Option<&'static str>,
    ) -> Option<Result<Reply, Status>> {
        let due = self.shared.admit().await?;
        let start = due.unwrap_or_else(Instant::now);
        let r = self.t.call(op).await;
        self.shared
            .finish(&mut self.rec, kind, start, &r, faults, expected);
        Some(r)
    }

    /// Runs step `instances[i].next`; `Ok(false)` when the run is over,
    /// `Err` on a `--verify` divergence.
    async fn step(&mut self, i: usize) -> Result<bool, String> {
        let programs = self.programs.clone();
        let prog = &programs[self.instances[i].prog];
        let (_, step) = prog.steps[self.instances[i].next].clone();
        let mm_of_step = step_mm(&step);
        let sims = self.instances[i].sims.clone();
        let verify = self.cfg.verify;
        let file_id = |f: &FileRef| {
            prog.files
                .get(&(f.dev.clone(), f.inode, f.path.clone()))
                .copied()
                .unwrap_or(0)
        };
        macro_rules! call {
            ($kind:expr, $op:expr) => {
                call!($kind, $op, None)
            };
            ($kind:expr, $op:expr, $expected:expr) => {
                match self.call_expecting($kind, $op, 0, $expected).await {
                    None => return Ok(false),
                    Some(r) => r,
                }
            };
        }
        // A call that failed in the recording is expected to fail here.
        let as_recorded = |ok: bool| (!ok).then_some(FAILED_AS_RECORDED);
        let pid_of = |mm: u64| sims.get(&mm).copied();
        match step {
            Step::Spawn {
                mm,
                maps,
                vmflags,
                start_brk,
            } => {
                let mut ranges = Ranges::default();
                for l in &maps {
                    if let Some(m) = MapsLine::parse(l)
                        && m.path != "[vsyscall]"
                    {
                        let prot = u32::from(m.perms.as_bytes()[0] == b'r')
                            | u32::from(m.perms.as_bytes()[1] == b'w') << 1
                            | u32::from(m.perms.as_bytes()[2] == b'x') << 2;
                        let fid = FileRef::from_maps_line(l).map_or(0, |f| file_id(&f));
                        ranges.0.insert(
                            m.start,
                            Range {
                                end: m.end,
                                prot,
                                file_id: fid,
                                offset: m.offset,
                            },
                        );
                    }
                }
                let r = call!(
                    OpKind::Spawn,
                    Op::Spawn(SpawnRequest {
                        maps_text: format::spawn_text(&maps, &vmflags),
                        start_brk,
                    })
                );
                match r {
                    Ok(Reply::Spawn(s)) => {
                        let inst = &mut self.instances[i];
                        inst.sims.insert(mm, s.pid);
                        inst.ranges.insert(s.pid, ranges);
                    }
                    Ok(_) => return Err("wrong reply to Spawn".into()),
                    Err(s) if verify => return Err(format!("spawn of mm {mm}: {s}")),
                    Err(_) => {}
                }
                return Ok(true);
            }
            Step::Fork { mm, child } => {
                let Some(pid) = pid_of(mm) else {
                    return Ok(true);
                };
                match call!(OpKind::Fork, Op::Fork(ForkRequest { pid })) {
                    Ok(Reply::Fork(f)) => {
                        let inst = &mut self.instances[i];
                        inst.sims.insert(child, f.child_pid);
                        let r = inst.ranges.get(&pid).cloned().unwrap_or_default();
                        inst.ranges.insert(f.child_pid, r);
                    }
                    Ok(_) => return Err("wrong reply to Fork".into()),
                    Err(s) if verify => return Err(format!("fork of pid {pid}: {s}")),
                    Err(_) => {}
                }
                return Ok(true);
            }
            Step::Exit { mm } => {
                let Some(pid) = self.instances[i].sims.remove(&mm) else {
                    return Ok(true);
                };
                self.instances[i].ranges.remove(&pid);
                let r = call!(OpKind::Exit, Op::Exit(ExitRequest { pid }));
                if let Err(s) = r
                    && verify
                {
                    return Err(format!("exit of pid {pid}: {s}"));
                }
                return Ok(true);
            }
            Step::Check { mm, maps } => {
                if !verify {
                    return Ok(true);
                }
                let Some(pid) = pid_of(mm) else {
                    return Ok(true);
                };
                let r = call!(OpKind::Maps, Op::Maps(MapsRequest { pid }));
                let entries = match r {
                    Ok(Reply::Maps(m)) => m.entries,
                    Ok(_) => return Err("wrong reply to Maps".into()),
                    Err(s) => return Err(format!("maps of pid {pid}: {s}")),
                };
                let sim: Vec<MapsLine> =
                    entries.iter().map(crate::record::check::sim_line).collect();
                let has_gate = sim.iter().any(|l| l.path == "[vsyscall]");
                let kernel: Vec<MapsLine> = maps
                    .into_iter()
                    .filter(|l| has_gate || l.path != "[vsyscall]")
                    .collect();
                let (diff, _) = diff_maps(&kernel, &sim);
                if !diff.is_empty() {
                    return Err(format!(
                        "pid {pid}: maps differ from the recording:\n{}",
                        diff.join("\n")
                    ));
                }
                return Ok(true);
            }
            Step::Mmap {
                mm,
                addr,
                length,
                prot,
                flags,
                ref file,
                offset,
            } => {
                let Some(pid) = pid_of(mm) else {
                    return Ok(true);
                };
                let fid = file.as_ref().map_or(0, file_id);
                let req = MmapRequest {
                    pid,
                    addr,
                    length,
                    prot,
                    flags,
                    file_id: fid,
                    offset,
                    file_size: 0,
                };
                match call!(OpKind::Mmap, Op::Mmap(req)) {
                    Ok(Reply::Mmap(m)) if m.addr == addr => {
                        let r = Range {
                            end: addr + page_up(length),
                            prot,
                            file_id: fid,
                            offset,
                        };
                        self.ranges(i, pid).map(addr, r);
                    }
                    Ok(Reply::Mmap(m)) if verify => {
                        return Err(format!(
                            "pid {pid}: mmap at {addr:#x} returned {:#x}",
                            m.addr
                        ));
                    }
                    Err(s) if verify => {
                        return Err(format!("pid {pid}: mmap at {addr:#x}: {s}"));
                    }
                    _ => {}
                }
            }
            Step::Munmap {
                mm,
                addr,
                length,
                ok,
            } => {
                let Some(pid) = pid_of(mm) else {
                    return Ok(true);
                };
                let r = call!(
                    OpKind::Munmap,
                    Op::Munmap(MunmapRequest { pid, addr, length }),
                    as_recorded(ok)
                );
                check_outcome(verify, pid, "munmap", addr, ok, &r)?;
                if r.is_ok() {
                    self.ranges(i, pid).carve(addr, addr + page_up(length));
                }
            }
            Step::Mprotect {
                mm,
                addr,
                length,
                prot,
                ok,
            } => {
                let Some(pid) = pid_of(mm) else {
                    return Ok(true);
                };
                let r = call!(
                    OpKind::Mprotect,
                    Op::Mprotect(MprotectRequest {
                        pid,
                        addr,
                        length,
                        prot,
                    }),
                    as_recorded(ok)
                );
                check_outcome(verify, pid, "mprotect", addr, ok, &r)?;
                if r.is_ok() {
                    self.ranges(i, pid)
                        .protect(addr, addr + page_up(length), prot);
                }
            }
            Step::Brk { mm, addr, ret } => {
                let Some(pid) = pid_of(mm) else {
                    return Ok(true);
                };
                match call!(OpKind::Brk, Op::Brk(BrkRequest { pid, brk: addr })) {
                    Ok(Reply::Brk(b)) if b.brk == ret || !verify => {
                        // The heap: [start_brk, brk), replacing the old one.
                        let r = self.ranges(i, pid);
                        let start = b.start_brk;
                        if let Some(old_end) = r.0.get(&start).map(|x| x.end) {
                            r.carve(start, old_end);
                        }
                        if page_up(b.brk) > start {
                            r.map(
                                start,
                                Range {
                                    end: page_up(b.brk),
                                    prot: 3,
                                    file_id: 0,
                                    offset: 0,
                                },
                            );
                        }
                    }
                    Ok(Reply::Brk(b)) => {
                        return Err(format!(
                            "pid {pid}: brk({addr:#x}) = {:#x}, recorded {ret:#x}",
                            b.brk
                        ));
                    }
                    Ok(_) => return Err("wrong reply to Brk".into()),
                    Err(s) if verify => return Err(format!("pid {pid}: brk: {s}")),
                    Err(_) => {}
                }
            }
            Step::Mremap {
                mm,
                old,
                old_len,
                new_len,
                flags,
                new,
                faulted,
            } => {
                let Some(pid) = pid_of(mm) else {
                    return Ok(true);
                };
                if faulted {
                    // As the program did before it remapped (anon_vma).
                    let op = Op::Fault(FaultRequest {
                        pid,
                        addr: old,
                        access: Access::Write as i32,
                    });
                    match self.call(OpKind::Fault, op, 1).await {
                        None => return Ok(false),
                        Some(Ok(Reply::Fault(f))) => {
                            add_totals(&mut self.rec.fault_totals, &single_totals(&f));
                        }
                        Some(_) => {}
                    }
                }
                // At the kernel's destination, as replay --check does.
                let (flags, new_addr) = if new != old && flags & MREMAP_FIXED == 0 {
                    (flags | MREMAP_FIXED | MREMAP_MAYMOVE, new)
                } else {
                    (flags, new)
                };
                let req = MremapRequest {
                    pid,
                    addr: old,
                    old_length: old_len,
                    new_length: new_len,
                    flags: flags as u32,
                    new_addr,
                };
                match call!(OpKind::Mremap, Op::Mremap(req)) {
                    Ok(Reply::Mremap(m)) if m.addr == new => {
                        let r = self.ranges(i, pid);
                        let (old_len, new_len) = (page_up(old_len), page_up(new_len));
                        let moved = r.carve(old, old + old_len);
                        if let Some((_, r0)) = moved.first() {
                            let r0 = *r0;
                            r.carve(new, new + new_len);
                            r.map(
                                new,
                                Range {
                                    end: new + new_len,
                                    ..r0
                                },
                            );
                        }
                    }
                    Ok(Reply::Mremap(m)) if verify => {
                        return Err(format!(
                            "pid {pid}: mremap of {old:#x} returned {:#x}, recorded {new:#x}",
                            m.addr
                        ));
                    }
                    Err(s) if verify => {
                        return Err(format!("pid {pid}: mremap of {old:#x}: {s}"));
                    }
                    _ => {}
                }
            }
        }
        self.faults(i, mm_of_step).await
    }

    fn ranges(&mut self, i: usize, pid: u32) -> &mut Ranges {
        self.instances[i].ranges.entry(pid).or_default()
    }

    /// `--fault-rate` faults over the pages the instance's process maps.
    async fn faults(&mut self, i: usize, mm: u64) -> Result<bool, String> {
        let rate = self.cfg.fault_rate;
        let mut n = rate.floor() as u64;
        if self.rng.random::<f64>() < rate.fract() {
            n += 1;
        }
        let Some(pid) = self.instances[i].sims.get(&mm).copied() else {
            return Ok(true);
        };
        let batch = self.cfg.batch.max(1);
        for _ in 0..n {
            let ranges = self.ranges(i, pid).clone();
            let pages = ranges.pages();
            if pages == 0 {
                break;
            }
            let picks: Vec<(u64, u32)> = (0..batch)
                .filter_map(|_| ranges.page(self.rng.random_range(0..pages)))
                .collect();
            let access = if picks[0].1 & 2 != 0 {
                Access::Write
            } else {
                Access::Read
            };
            let addrs = picks.iter().map(|p| p.0).collect();
            let op = crate::transport::fault_op(pid, addrs, access, batch, true);
            match self.call(OpKind::Fault, op, batch as u64).await {
                None => return Ok(false),
                Some(Ok(Reply::Fault(f))) => {
                    add_totals(&mut self.rec.fault_totals, &single_totals(&f));
                }
                Some(Ok(Reply::FaultBatch(b))) => {
                    add_totals(&mut self.rec.fault_totals, &b.totals.unwrap_or_default());
                }
                Some(Ok(_)) => return Err("wrong reply to a fault".into()),
                Some(Err(s)) if self.cfg.verify => {
                    return Err(format!("pid {pid}: fault: {s}"));
                }
                Some(Err(_)) => {}
            }
        }
        Ok(true)
    }
}

fn step_mm(s: &Step) -> u64 {
    match s {
        Step::Spawn { mm, .. }
        | Step::Fork { mm, .. }
        | Step::Exit { mm }
        | Step::Mmap { mm, .. }
        | Step::Munmap { mm, .. }
        | Step::Mprotect { mm, .. }
        | Step::Brk { mm, .. }
        | Step::Mremap { mm, .. }
        | Step::Check { mm, .. } => *mm,
    }
}

/// Why a replayed call's failure is expected: the recorded one failed.
const FAILED_AS_RECORDED: &str = "failed in the recording too";

/// With `--verify`, a call must succeed or fail as it did in the kernel.
fn check_outcome(
    verify: bool,
    pid: u32,
    what: &str,
    addr: u64,
    ok: bool,
    r: &Result<Reply, Status>,
) -> Result<(), String> {
    if !verify || r.is_ok() == ok {
        return Ok(());
    }
    Err(match r {
        Ok(_) => format!("pid {pid}: {what} {addr:#x} failed in the kernel but succeeded"),
        Err(s) => format!("pid {pid}: {what} {addr:#x} succeeded in the kernel: {s}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(end: u64, prot: u32) -> Range {
        Range {
            end,
            prot,
            file_id: 0,
            offset: 0,
        }
    }

    #[test]
    fn ranges_split_and_trim_like_munmap_and_mprotect() {
        let mut r = Ranges::default();
        r.map(0x10000, anon(0x20000, 3));
        r.protect(0x14000, 0x18000, 1);
        let v: Vec<(u64, u64, u32)> = r.0.iter().map(|(s, x)| (*s, x.end, x.prot)).collect();
        assert_eq!(
            v,
            vec![
                (0x10000, 0x14000, 3),
                (0x14000, 0x18000, 1),
                (0x18000, 0x20000, 3)
            ]
        );
        r.carve(0x12000, 0x19000);
        assert_eq!(r.pages(), 2 + 7);
        assert_eq!(r.page(0), Some((0x10000, 3)));
        assert_eq!(r.page(2), Some((0x19000, 3)));
        assert_eq!(r.page(9), None);
        // PROT_NONE pages are never drawn.
        r.protect(0x10000, 0x12000, 0);
        assert_eq!(r.pages(), 7);
        assert_eq!(r.page(0), Some((0x19000, 3)));
        // A file range keeps its offset per piece.
        let mut f = Ranges::default();
        f.map(
            0x40000,
            Range {
                file_id: 9,
                offset: 0x1000,
                ..anon(0x44000, 1)
            },
        );
        f.carve(0x41000, 0x42000);
        assert_eq!(f.0[&0x42000].offset, 0x3000);
    }
}
