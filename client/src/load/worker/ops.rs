//! The owner worker's operations, one method each: what it picks (a
//! mapped page, an existing VMA, a range just past one on purpose), the
//! call, and the check of the reply against the shadow model.

use super::*;

impl Worker {
    pub(super) fn pick_access(&mut self) -> Access {
        match self.rng.random_range(0..100) {
            0..60 => Access::Read,
            60..95 => Access::Write,
            _ => Access::Exec,
        }
    }

    pub(super) fn pick_fault_addr(rng: &mut StdRng, mm: &ShadowMm) -> u64 {
        if mm.is_empty() {
            return rng.random_range(MMAP_MIN_ADDR..TASK_SIZE);
        }
        if rng.random_range(0..100) < 8 {
            // Around the mapped area: hits holes (MAPERR) as well.
            let lo = mm.iter().next().map_or(0, |(s, _)| s);
            let hi = mm.iter().last().map_or(0, |(_, v)| v.end);
            let lo = lo.saturating_sub(16 * PAGE);
            let hi = (hi + 16 * PAGE).min(TASK_SIZE);
            return rng.random_range(lo..hi);
        }
        let (s, v) = mm.nth(rng.random_range(0..mm.len())).expect("not empty");
        rng.random_range(s..v.end)
    }

    pub(super) async fn fault(&mut self, i: usize) -> StepResult {
        let pid = self.procs[i].pid;
        let access = self.pick_access();
        let n = self.cfg.batch.max(1);
        let addrs: Vec<u64> = (0..n)
            .map(|_| Self::pick_fault_addr(&mut self.rng, &self.procs[i].mm))
            .collect();
        self.note(|| {
            format!(
                "fault pid {pid} {access:?} x{n} at {}",
                addrs
                    .iter()
                    .take(4)
                    .map(|a| format!("{a:#x}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        });
        let op = crate::transport::fault_op(pid, addrs.clone(), access, n, !self.cfg.verify);
        let Some(r) = self.call(OpKind::Fault, op, n as u64, true).await else {
            return Ok(Step::Stopped);
        };
        match r {
            Ok(Reply::Fault(f)) => {
                add_totals(&mut self.rec.fault_totals, &single_totals(&f));
                if self.cfg.verify {
                    let o = f.outcome;
                    self.note_reply(|| crate::parse::outcome_name(o));
                    self.check_fault(i, addrs[0], access, o)?;
                }
            }
            Ok(Reply::FaultBatch(b)) => {
                add_totals(&mut self.rec.fault_totals, &b.totals.unwrap_or_default());
                if self.cfg.verify {
                    if b.outcomes.len() != n {
                        return Err(format!(
                            "pid {pid}: FaultBatch of {n} returned {} outcomes",
                            b.outcomes.len()
                        ));
                    }
                    let t = b.totals.unwrap_or_default().faults;
                    if t != n as u64 {
                        return Err(format!("pid {pid}: FaultBatch of {n} reports {t} faults"));
                    }
                    self.note_reply(|| "OK".into());
                    for (a, o) in addrs.iter().zip(&b.outcomes) {
                        self.check_fault(i, *a, access, *o)?;
                    }
                }
            }
            Ok(_) => return Err(format!("pid {pid}: wrong reply type to a fault")),
            Err(s) => {
                let t = s.to_string();
                self.note_reply(|| t);
                return self.unexpected(i, "fault", &s).await;
            }
        }
        Ok(Step::Next)
    }

    /// Checks one fault outcome against the model.
    pub(crate) fn check_fault(
        &self,
        i: usize,
        addr: u64,
        access: Access,
        outcome: i32,
    ) -> Result<(), String> {
        let p = &self.procs[i];
        p.mm.expect_fault(addr, access)
            .check(outcome)
            .map_err(|e| format!("pid {}: fault {access:?} at {addr:#x}: {e}", p.pid))
    }

    /// Spawns a process with a heap and a few mappings. `admitted`: part of
    /// the measured load (replacing an exited process), else setup.
    pub(super) async fn spawn_proc(&mut self, admitted: bool) -> StepResult {
        self.note(|| "spawn".into());
        let Some(r) = self
            .call(
                OpKind::Spawn,
                Op::Spawn(SpawnRequest::default()),
                0,
                admitted,
            )
            .await
        else {
            return Ok(Step::Stopped);
        };
        let pid = match r {
            Ok(Reply::Spawn(s)) => s.pid,
            Ok(_) => return Err("wrong reply type to spawn".into()),
            Err(s) if self.cfg.verify => {
                return Err(format!(
                    "spawn failed: {}: {}",
                    crate::error::code_name(s.code()),
                    s.message()
                ));
            }
            Err(_) => return Ok(Step::Next),
        };
        self.note(|| format!("brk pid {pid} query"));
        let Some(r) = self
            .call(
                OpKind::Brk,
                Op::Brk(BrkRequest { pid, brk: 0 }),
                0,
                admitted,
            )
            .await
        else {
            // The run stopped between the spawn and its first query: the
            // process exists but is not modelled; hand it back for exit.
            self.orphans.push(pid);
            return Ok(Step::Stopped);
        };
        let (start_brk, brk) = match r {
            Ok(Reply::Brk(b)) => (b.start_brk, b.brk),
            Ok(_) => {
                self.orphans.push(pid);
                return Err(format!("pid {pid}: wrong reply type to brk"));
            }
            Err(s) => {
                self.orphans.push(pid);
                return Err(format!("pid {pid}: brk query failed: {s}"));
            }
        };
        if self.cfg.verify && brk != start_brk {
            return Err(format!(
                "pid {pid}: new process has brk {brk:#x} != start_brk {start_brk:#x}"
            ));
        }
        self.procs.push(Proc {
            pid,
            mm: ShadowMm::new(start_brk, brk),
        });
        let i = self.procs.len() - 1;
        let rw = Prot::Read as u32 | Prot::Write as u32;
        let anon = MapFlag::MapPrivate as u32 | MapFlag::MapAnonymous as u32;
        for (pages, prot, flags, file) in [
            (64, rw, anon, 0),
            (32, rw, anon, 0),
            (16, Prot::Read as u32, MapFlag::MapPrivate as u32, 1),
        ] {
            let req = MmapRequest {
                pid,
                addr: 0,
                length: pages * PAGE,
                prot,
                flags,
                file_id: file,
                offset: 0,
                file_size: 0,
            };
            match self.mmap(i, req, admitted).await? {
                Step::Next => {}
                Step::Stopped => return Ok(Step::Stopped),
            }
        }
        Ok(Step::Next)
    }

    /// A random non-heap VMA of process `i`.
    pub(super) fn pick_vma(&mut self, i: usize) -> Option<(u64, u64)> {
        let mm = &self.procs[i].mm;
        let cands: Vec<(u64, u64)> = mm
            .iter()
            .filter(|(_, v)| v.backing != Backing::Heap)
            .map(|(s, v)| (s, v.end))
            .collect();
        if cands.is_empty() {
            None
        } else {
            Some(cands[self.rng.random_range(0..cands.len())])
        }
    }

    pub(super) async fn random_mmap(&mut self, i: usize) -> StepResult {
        let pid = self.procs[i].pid;
        let pages = self.rng.random_range(1..=16u64);
        let length = pages * PAGE;
        let prot = match self.rng.random_range(0..10) {
            0..5 => Prot::Read as u32 | Prot::Write as u32,
            5..7 => Prot::Read as u32,
            7..9 => Prot::Read as u32 | Prot::Exec as u32,
            _ => Prot::None as u32,
        };
        let file = self.rng.random_bool(0.25);
        let shared = file && self.rng.random_bool(0.5);
        let (file_id, offset) = if file {
            (
                self.rng.random_range(1..=4u64),
                self.rng.random_range(0..32u64) * PAGE,
            )
        } else {
            (0, 0)
        };
        let mut flags = if shared {
            MapFlag::MapShared as u32
        } else {
            MapFlag::MapPrivate as u32
        };
        if !file {
            flags |= MapFlag::MapAnonymous as u32;
        }
        let mode = self.rng.random_range(0..100);
        let mut addr = 0;
        if let Some((s, e)) = self.pick_vma(i) {
            let vpages = (e - s) / PAGE;
            if mode < 8 {
                // MAP_FIXED over (part of) an existing VMA.
                addr = (s + self.rng.random_range(0..vpages) * PAGE)
                    .saturating_sub(self.rng.random_range(0..3u64) * PAGE)
                    .max(MMAP_MIN_ADDR);
                flags |= MapFlag::MapFixed as u32;
            } else if mode < 12 {
                // MAP_FIXED_NOREPLACE just above a VMA: free or not.
                addr = e + self.rng.random_range(0..4u64) * PAGE;
                flags |= MapFlag::MapFixedNoreplace as u32;
            } else if mode < 17 {
                // A hint just below a VMA.
                addr = s.saturating_sub(length + self.rng.random_range(0..8u64) * PAGE);
            }
        }
        if addr + length > TASK_SIZE {
            addr = 0;
            flags &= !(MapFlag::MapFixed as u32 | MapFlag::MapFixedNoreplace as u32);
        }
        let req = MmapRequest {
            pid,
            addr,
            length,
            prot,
            flags,
            file_id,
            offset,
            file_size: 0,
        };
        self.mmap(i, req, true).await
    }

    /// Sends an mmap, checks it against the model and applies it.
    pub(super) async fn mmap(&mut self, i: usize, req: MmapRequest, admitted: bool) -> StepResult {
        let pid = req.pid;
        let (addr, len, prot, flags) = (req.addr, req.length, req.prot, req.flags);
        let file_id = req.file_id;
        let offset = req.offset;
        self.note(|| {
            format!(
                "mmap pid {pid} addr {addr:#x} len {len:#x} {} flags {flags:#x} file {file_id} off {offset:#x}",
                crate::parse::format_prot(prot)
            )
        });
        let fixed = flags & MapFlag::MapFixed as u32 != 0;
        let noreplace = flags & MapFlag::MapFixedNoreplace as u32 != 0;
        let end_of = |a: u64| a + crate::load::shadow::page_up(len);
        let free_before = self.procs[i].mm.is_free(addr, end_of(addr));
        let Some(r) = self.call(OpKind::Mmap, Op::Mmap(req), 0, admitted).await else {
            return Ok(Step::Stopped);
        };
        let got = match r {
            Ok(Reply::Mmap(m)) => m.addr,
            Ok(_) => return Err(format!("pid {pid}: wrong reply type to mmap")),
            Err(s) if noreplace && s.code() == Code::AlreadyExists => {
                if self.cfg.verify && free_before {
                    return Err(format!(
                        "pid {pid}: MAP_FIXED_NOREPLACE at {addr:#x} got ALREADY_EXISTS but the model has [{addr:#x}, {:#x}) free",
                        end_of(addr)
                    ));
                }
                return Ok(Step::Next);
            }
            Err(s) => return self.unexpected(i, "mmap", &s).await,
        };
        let ret_end = end_of(got);
        self.note_reply(|| format!("{got:#x}"));
        if self.cfg.verify {
            if got % PAGE != 0 {
                return Err(format!("pid {pid}: mmap returned unaligned {got:#x}"));
            }
            if (fixed || noreplace) && got != addr {
                return Err(format!(
                    "pid {pid}: fixed mmap at {addr:#x} returned {got:#x}"
                ));
            }
            if noreplace && !free_before {
                return Err(format!(
                    "pid {pid}: MAP_FIXED_NOREPLACE at {addr:#x} succeeded over a mapping of the model"
                ));
            }
            if !fixed && !self.procs[i].mm.is_free(got, ret_end) {
                return Err(format!(
                    "pid {pid}: mmap returned [{got:#x}, {ret_end:#x}), which overlaps a mapping of the model"
                ));
            }
            if !fixed && !noreplace && addr != 0 && free_before && got != addr {
                return Err(format!(
                    "pid {pid}: hint {addr:#x} was free in the model but mmap returned {got:#x}"
                ));
            }
        }
        let backing = if flags & MapFlag::MapAnonymous as u32 != 0 {
            Backing::Anon
        } else {
            Backing::File {
                id: file_id,
                offset,
            }
        };
        let shared = flags & MapFlag::MapShared as u32 != 0;
        self.procs[i].mm.map(got, ret_end, prot, shared, backing);
        Ok(Step::Next)
    }

    pub(super) async fn munmap(&mut self, i: usize) -> StepResult {
        let Some((s, e)) = self.pick_vma(i) else {
            return Ok(Step::Next);
        };
        let pid = self.procs[i].pid;
        let pages = (e - s) / PAGE;
        let off = self.rng.random_range(0..pages);
        let n = self.rng.random_range(1..=pages - off + 2);
        let (addr, length) = (s + off * PAGE, n * PAGE);
        self.note(|| format!("munmap pid {pid} {addr:#x} len {length:#x}"));
        let Some(r) = self
            .call(
                OpKind::Munmap,
                Op::Munmap(MunmapRequest { pid, addr, length }),
                0,
                true,
            )
            .await
        else {
            return Ok(Step::Stopped);
        };
        match r {
            Ok(_) => {
                self.procs[i].mm.unmap(addr, addr + length);
                Ok(Step::Next)
            }
            Err(s) => self.unexpected(i, "munmap", &s).await,
        }
    }

    pub(super) async fn mprotect(&mut self, i: usize) -> StepResult {
        let Some((s, e)) = self.pick_vma(i) else {
            return Ok(Step::Next);
        };
        let pid = self.procs[i].pid;
        let pages = (e - s) / PAGE;
        let off = self.rng.random_range(0..pages);
        let mut n = self.rng.random_range(1..=pages - off);
        if self.rng.random_range(0..10) == 0 {
            n += self.rng.random_range(1..4); // maybe past the end: a hole?
        }
        let (addr, length) = (s + off * PAGE, n * PAGE);
        let prot = match self.rng.random_range(0..4) {
            0 => Prot::Read as u32,
            1 => Prot::Read as u32 | Prot::Write as u32,
            2 => Prot::Read as u32 | Prot::Exec as u32,
            _ => Prot::None as u32,
        };
        let mapped = self.procs[i].mm.fully_mapped(addr, addr + length);
        self.note(|| {
            format!(
                "mprotect pid {pid} {addr:#x} len {length:#x} {}",
                crate::parse::format_prot(prot)
            )
        });
        let Some(r) = self
            .call(
                OpKind::Mprotect,
                Op::Mprotect(MprotectRequest {
                    pid,
                    addr,
                    length,
                    prot,
                }),
                0,
                true,
            )
            .await
        else {
            return Ok(Step::Stopped);
        };
        match r {
            Ok(_) if mapped => {
                self.procs[i].mm.protect(addr, addr + length, prot);
                Ok(Step::Next)
            }
            Ok(_) => Err(format!(
                "pid {pid}: mprotect of [{addr:#x}, {:#x}) succeeded but the model has a hole there",
                addr + length
            )),
            Err(s) if !mapped && s.code() == Code::FailedPrecondition => {
                // The kernel changes the VMAs before the hole, then fails.
                let mm = &mut self.procs[i].mm;
                let upto = mm.mapped_up_to(addr, addr + length);
                mm.protect(addr, upto, prot);
                Ok(Step::Next)
            }
            Err(s) => self.unexpected(i, "mprotect", &s).await,
        }
    }

    /// `MADV_DONTNEED` (or, on private anonymous memory, `MADV_FREE`) on
    /// part of a VMA; now and then past its end, over a possible hole.
    /// Neither changes the layout; DONTNEED drops pages, which the next
    /// fault brings back (an outcome `Expect::PageIn` accepts).
    pub(super) async fn madvise(&mut self, i: usize) -> StepResult {
        let Some((s, e)) = self.pick_vma(i) else {
            return Ok(Step::Next);
        };
        let pid = self.procs[i].pid;
        let private_anon = self.procs[i]
            .mm
            .find(s)
            .is_some_and(|(_, v)| !v.shared && v.backing == Backing::Anon);
        let pages = (e - s) / PAGE;
        let off = self.rng.random_range(0..pages);
        let mut n = self.rng.random_range(1..=pages - off);
        let free = private_anon && self.rng.random_range(0..4) == 0;
        if !free && self.rng.random_range(0..10) == 0 {
            n += self.rng.random_range(1..4); // maybe past the end: a hole?
        }
        let (addr, length) = (s + off * PAGE, n * PAGE);
        let advice = if free {
            Advice::MadvFree
        } else {
            Advice::MadvDontneed
        };
        let mapped = self.procs[i].mm.fully_mapped(addr, addr + length);
        self.note(|| {
            format!(
                "madvise pid {pid} {addr:#x} len {length:#x} {}",
                advice.as_str_name()
            )
        });
        let Some(r) = self
            .call(
                OpKind::Madvise,
                Op::Madvise(MadviseRequest {
                    pid,
                    addr,
                    length,
                    advice: advice as u32,
                }),
                0,
                true,
            )
            .await
        else {
            return Ok(Step::Stopped);
        };
        match r {
            Ok(_) if mapped => Ok(Step::Next),
            Ok(_) => Err(format!(
                "pid {pid}: madvise of [{addr:#x}, {:#x}) succeeded but the model has a hole there",
                addr + length
            )),
            // madvise_walk_vmas: every mapped part advised, then ENOMEM.
            Err(s) if !mapped && s.code() == Code::FailedPrecondition => Ok(Step::Next),
            Err(s) => self.unexpected(i, "madvise", &s).await,
        }
    }

    pub(super) async fn brk(&mut self, i: usize) -> StepResult {
        let pid = self.procs[i].pid;
        let start = self.procs[i].mm.start_brk;
        let target =
            start + self.rng.random_range(0..64u64) * PAGE + self.rng.random_range(0..PAGE);
        self.note(|| format!("brk pid {pid} {target:#x}"));
        let Some(r) = self
            .call(
                OpKind::Brk,
                Op::Brk(BrkRequest { pid, brk: target }),
                0,
                true,
            )
            .await
        else {
            return Ok(Step::Stopped);
        };
        match r {
            Ok(Reply::Brk(b)) => {
                self.note_reply(|| format!("{:#x}", b.brk));
                if self.cfg.verify && b.start_brk != start {
                    return Err(format!(
                        "pid {pid}: start_brk changed from {start:#x} to {:#x}",
                        b.start_brk
                    ));
                }
                self.procs[i].mm.set_brk(b.brk);
                Ok(Step::Next)
            }
            Ok(_) => Err(format!("pid {pid}: wrong reply type to brk")),
            Err(s) => self.unexpected(i, "brk", &s).await,
        }
    }

    pub(super) async fn fork(&mut self, i: usize) -> StepResult {
        let pid = self.procs[i].pid;
        self.note(|| format!("fork pid {pid}"));
        let Some(r) = self
            .call(OpKind::Fork, Op::Fork(ForkRequest { pid }), 0, true)
            .await
        else {
            return Ok(Step::Stopped);
        };
        match r {
            Ok(Reply::Fork(f)) => {
                let child = f.child_pid;
                self.note_reply(|| format!("child {child}"));
                let mm = self.procs[i].mm.clone();
                self.procs.push(Proc { pid: child, mm });
                Ok(Step::Next)
            }
            Ok(_) => Err(format!("pid {pid}: wrong reply type to fork")),
            Err(s) if s.code() == Code::ResourceExhausted && !self.cfg.verify => Ok(Step::Next),
            Err(s) => self.unexpected(i, "fork", &s).await,
        }
    }

    pub(super) async fn exit(&mut self, i: usize) -> StepResult {
        let pid = self.procs[i].pid;
        self.note(|| format!("exit pid {pid}"));
        let Some(r) = self
            .call(OpKind::Exit, Op::Exit(ExitRequest { pid }), 0, true)
            .await
        else {
            return Ok(Step::Stopped);
        };
        if let Err(s) = r {
            return self.unexpected(i, "exit", &s).await;
        }
        self.procs.swap_remove(i);
        if self.procs.len() < self.cfg.processes {
            return self.spawn_proc(true).await;
        }
        Ok(Step::Next)
    }

    /// Compares the server's Maps of process `i` with the model.
    pub(super) async fn check_maps(&mut self, i: usize, admitted: bool) -> StepResult {
        let pid = self.procs[i].pid;
        self.note(|| format!("maps pid {pid}"));
        let Some(r) = self
            .call(OpKind::Maps, Op::Maps(MapsRequest { pid }), 0, admitted)
            .await
        else {
            return Ok(Step::Stopped);
        };
        match r {
            Ok(Reply::Maps(m)) => {
                let mm = &self.procs[i].mm;
                if let Some(d) = mm.diff_entries(&m.entries) {
                    return Err(format!("pid {pid}: {d}"));
                }
                if m.brk != mm.brk || m.start_brk != mm.start_brk {
                    return Err(format!(
                        "pid {pid}: brk {:#x}/start_brk {:#x}, model {:#x}/{:#x}",
                        m.brk, m.start_brk, mm.brk, mm.start_brk
                    ));
                }
                Ok(Step::Next)
            }
            Ok(_) => Err(format!("pid {pid}: wrong reply type to maps")),
            Err(s) => Err(format!("pid {pid}: maps failed: {s}")),
        }
    }
}
