//! Load workers: each owns some simulated processes and drives them.
//!
//! An *owner* worker ([`Worker`]) spawns `--processes` processes, maps a
//! few regions in each, and then draws operations from the mix, one at a
//! time (closed loop), or at the times the open-loop schedule gives it. It
//! keeps a [`ShadowMm`] of each of its processes, which it needs anyway to
//! aim faults at mapped memory and munmap/mprotect at existing VMAs; with
//! `--verify` it also checks every reply against the model (see
//! [`crate::load::shadow`]).
//!
//! With `--threads N`, each owner also gets N *fault threads*
//! ([`crate::load::fault_thread::FaultThread`]): workers that only fault, concurrently, in the owner's
//! processes — like the other threads of a multi-threaded program. They are
//! what makes per-VMA locks contend (aborts, retries, fallbacks). They read
//! a copy of the owner's layout that may be one operation old, so their
//! outcomes are counted but never verified, and `NOT_FOUND` (the owner
//! exited the process) is expected from them.
//!
//! This file is the owner's life cycle (setup, the loop, calls, the
//! divergence history); `ops.rs` holds one method per operation of the mix.

use crate::load::LoadConfig;
use crate::load::divergence::Divergence;
use crate::load::mix::OpKind;
use crate::load::recorder::Recorder;
use crate::load::shadow::{Backing, PAGE, ShadowMm};
use crate::load::shared::{Shared, expected_failures, expected_reason, unreachable};
use crate::stats::add_totals;
use crate::stats::single_totals;
use crate::transport::Transport;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tonic::{Code, Status};
use vmasim_proto::v1::session_reply::Result as Reply;
use vmasim_proto::v1::session_request::Op;
use vmasim_proto::v1::{
    Access, Advice, BrkRequest, ExitRequest, ForkRequest, MadviseRequest, MapFlag, MapsRequest,
    MmapRequest, MprotectRequest, MunmapRequest, Prot, SpawnRequest,
};

mod ops;
#[cfg(test)]
mod tests;

/// Operations kept for a divergence report.
const HISTORY: usize = 20;
/// A process with this many VMAs (coalesced model count) maps no more.
const MAX_VMAS: usize = 96;
/// Lowest address MAP_FIXED may use (vm.mmap_min_addr).
pub(crate) const MMAP_MIN_ADDR: u64 = 0x10000;
/// Top of user space.
/// x86-64 `TASK_SIZE_MAX`: `(1 << 47) - PAGE_SIZE`.
pub(crate) const TASK_SIZE: u64 = (1 << 47) - PAGE;

/// One process of an owner worker.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    mm: ShadowMm,
}

/// A layout snapshot for fault threads: (pid, [(start, end)]).
pub(crate) type Layout = Vec<(u32, Vec<(u64, u64)>)>;

/// What one owner operation ended with.
enum Step {
    /// Go on.
    Next,
    /// The run is over (admission refused).
    Stopped,
}

/// The result of one owner operation: a step, or a divergence message.
type StepResult = Result<Step, String>;

/// A worker that owns processes (see the module docs).
pub struct Worker {
    id: usize,
    cfg: Arc<LoadConfig>,
    shared: Arc<Shared>,
    t: Transport,
    rng: StdRng,
    procs: Vec<Proc>,
    rec: Recorder,
    /// Last operations, only kept with `--verify`.
    history: VecDeque<String>,
    /// Published for this worker's fault threads (`--threads` > 0).
    layout: Option<Arc<RwLock<Layout>>>,
    /// Operations since the last Maps check.
    since_check: u32,
    /// Processes created but never modelled (the run stopped in between);
    /// exited with the rest at the end.
    orphans: Vec<u32>,
}

/// What an owner worker hands back at the end.
pub struct WorkerOutput {
    /// Its measurements.
    pub rec: Recorder,
    /// Processes still alive (exited by the run after the final Stats).
    pub pids: Vec<u32>,
}

impl Worker {
    /// A worker; `layout` is shared with its fault threads, if any.
    pub fn new(
        id: usize,
        cfg: Arc<LoadConfig>,
        shared: Arc<Shared>,
        t: Transport,
        layout: Option<Arc<RwLock<Layout>>>,
    ) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(id as u64 * 0x9e37_79b9));
        let rec = cfg.recorder();
        Worker {
            id,
            cfg,
            shared,
            t,
            rng,
            procs: Vec::new(),
            rec,
            history: VecDeque::new(),
            layout,
            since_check: 0,
            orphans: Vec::new(),
        }
    }

    /// A layout cell for fault threads.
    pub fn new_layout() -> Arc<RwLock<Layout>> {
        Arc::new(RwLock::new(Vec::new()))
    }

    /// Creates the worker's processes (not recorded, not admitted).
    pub async fn setup(&mut self) -> Result<(), Status> {
        for _ in 0..self.cfg.processes {
            match self.spawn_proc(false).await {
                Ok(Step::Next) => {}
                Ok(Step::Stopped) => break,
                Err(m) => return Err(Status::internal(m)),
            }
        }
        self.publish();
        Ok(())
    }

    /// Runs until the run stops; divergences are pushed to `Shared`.
    pub async fn run(mut self) -> WorkerOutput {
        loop {
            let r = self.step().await;
            match r {
                Ok(Step::Next) => {}
                Ok(Step::Stopped) => break,
                Err(msg) => {
                    self.diverged(msg);
                    break;
                }
            }
        }
        if self.cfg.verify && !self.has_diverged() {
            // Final check of every process, not recorded.
            for i in 0..self.procs.len() {
                if let Err(msg) = self.check_maps(i, false).await {
                    self.diverged(msg);
                    break;
                }
            }
        }
        WorkerOutput {
            rec: self.rec,
            pids: self
                .procs
                .iter()
                .map(|p| p.pid)
                .chain(self.orphans.iter().copied())
                .collect(),
        }
    }

    fn has_diverged(&self) -> bool {
        self.shared
            .divergences
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|d| d.worker == self.id)
    }

    fn diverged(&mut self, message: String) {
        if self.shared.server_gone.get().is_some() {
            // Calls failing because the server went away are not the
            // server's answers: no divergence (the run reports the loss).
            return;
        }
        let pid = self.procs.first().map_or(0, |p| p.pid);
        // The message names the pid; the first process is a fallback.
        let pid = message
            .split("pid ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(pid);
        let d = Divergence {
            worker: self.id,
            pid,
            message,
            history: self.history.iter().cloned().collect(),
        };
        self.shared
            .divergences
            .lock()
            .expect("not poisoned")
            .push(d);
        self.shared.stop.store(true, Ordering::Relaxed);
    }

    fn note(&mut self, f: impl FnOnce() -> String) {
        if self.cfg.verify {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(f());
        }
    }

    /// Amends the last history entry with the reply.
    fn note_reply(&mut self, f: impl FnOnce() -> String) {
        if self.cfg.verify
            && let Some(last) = self.history.back_mut()
        {
            last.push_str(" -> ");
            last.push_str(&f());
        }
    }

    /// Sends one operation. `admitted`: go through admission (and the
    /// request budget / open-loop schedule); setup calls are not.
    async fn call(
        &mut self,
        kind: OpKind,
        op: Op,
        faults: u64,
        admitted: bool,
    ) -> Option<Result<Reply, Status>> {
        let due = if admitted {
            self.shared.admit().await?
        } else {
            None
        };
        let start = due.unwrap_or_else(Instant::now);
        let expected = expected_failures(&op);
        let r = self.t.call(op).await;
        if admitted {
            let expected = expected_reason(&r, expected);
            self.shared
                .finish(&mut self.rec, kind, start, &r, faults, expected);
        } else if let Err(s) = &r
            && unreachable(s)
        {
            let _ = self.shared.server_gone.set(s.clone());
            self.shared.stop.store(true, Ordering::Relaxed);
        }
        let r_str = || match &r {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{}: {}", crate::error::code_name(s.code()), s.message()),
        };
        if !matches!(kind, OpKind::Fault) {
            let t = r_str();
            self.note_reply(|| t);
        }
        Some(r)
    }

    /// Publishes the layout for fault threads.
    fn publish(&self) {
        if let Some(l) = &self.layout {
            let snap: Layout = self
                .procs
                .iter()
                .map(|p| (p.pid, p.mm.iter().map(|(s, v)| (s, v.end)).collect()))
                .collect();
            *l.write().expect("not poisoned") = snap;
        }
    }

    async fn step(&mut self) -> StepResult {
        if self.procs.is_empty() {
            return self.spawn_proc(true).await;
        }
        if self.cfg.verify && self.since_check >= self.cfg.verify_every {
            self.since_check = 0;
            let i = self.rng.random_range(0..self.procs.len());
            return self.check_maps(i, true).await;
        }
        self.since_check += 1;
        let i = self.rng.random_range(0..self.procs.len());
        let mut kind = self.cfg.mix.pick(&mut self.rng);
        if self.shared.recording.load(Ordering::Relaxed) {
            self.rec.drawn[kind.index()] += 1;
        }
        // Redirect operations that cannot apply (no async recursion); the
        // report shows what was drawn beside what ran.
        let has_vma = self.procs[i]
            .mm
            .iter()
            .any(|(_, v)| v.backing != Backing::Heap);
        kind = match kind {
            OpKind::Mmap if self.procs[i].mm.distinct_len() >= MAX_VMAS => OpKind::Munmap,
            OpKind::Munmap | OpKind::Mprotect | OpKind::Madvise if !has_vma => OpKind::Mmap,
            OpKind::Fork if self.procs.len() >= 2 * self.cfg.processes.max(1) => OpKind::Exit,
            k => k,
        };
        let r = match kind {
            OpKind::Fault => return self.fault(i).await,
            OpKind::Mmap => self.random_mmap(i).await,
            OpKind::Munmap => self.munmap(i).await,
            OpKind::Mprotect => self.mprotect(i).await,
            OpKind::Brk => self.brk(i).await,
            OpKind::Fork => self.fork(i).await,
            OpKind::Exit => self.exit(i).await,
            OpKind::Madvise => self.madvise(i).await,
            OpKind::Spawn | OpKind::Maps | OpKind::Health | OpKind::Mremap => {
                unreachable!("not in a mix")
            }
        };
        self.publish();
        r
    }

    /// Handles a failed call that was not expected: a divergence with
    /// `--verify`, otherwise resynchronise the model from the server.
    async fn unexpected(&mut self, i: usize, what: &str, s: &Status) -> StepResult {
        let pid = self.procs[i].pid;
        if self.cfg.verify {
            return Err(format!(
                "pid {pid}: {what} failed unexpectedly: {}: {}",
                crate::error::code_name(s.code()),
                s.message()
            ));
        }
        self.resync(i).await
    }

    async fn resync(&mut self, i: usize) -> StepResult {
        let pid = self.procs[i].pid;
        let r = self.t.call(Op::Maps(MapsRequest { pid })).await;
        match r {
            Ok(Reply::Maps(m)) => {
                self.procs[i].mm = ShadowMm::from_entries(&m.entries, m.start_brk, m.brk);
            }
            _ => {
                // Gone or unreachable: forget it; a new one is spawned when
                // none is left.
                self.procs.swap_remove(i);
            }
        }
        Ok(Step::Next)
    }
}
