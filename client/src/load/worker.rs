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
//! ([`FaultThread`]): workers that only fault, concurrently, in the owner's
//! processes — like the other threads of a multi-threaded program. They are
//! what makes per-VMA locks contend (aborts, retries, fallbacks). They read
//! a copy of the owner's layout that may be one operation old, so their
//! outcomes are counted but never verified, and `NOT_FOUND` (the owner
//! exited the process) is expected from them.

use crate::load::LoadConfig;
use crate::load::mix::OpKind;
use crate::load::recorder::Recorder;
use crate::load::shadow::{Backing, PAGE, ShadowMm};
use crate::stats::add_totals;
use crate::transport::Transport;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tonic::{Code, Status};
use vmasim_proto::v1::session_reply::Result as Reply;
use vmasim_proto::v1::session_request::Op;
use vmasim_proto::v1::{
    Access, Advice, BrkRequest, ExitRequest, FaultBatchRequest, FaultRequest, FaultTotals,
    ForkRequest, MadviseRequest, MapFlag, MapsRequest, MmapRequest, MprotectRequest, MunmapRequest,
    Prot, SpawnRequest,
};

/// Operations kept for a divergence report.
const HISTORY: usize = 20;
/// A process with this many VMAs (coalesced model count) maps no more.
const MAX_VMAS: usize = 96;
/// Lowest address MAP_FIXED may use (vm.mmap_min_addr).
const MMAP_MIN_ADDR: u64 = 0x10000;
/// Top of user space.
/// x86-64 `TASK_SIZE_MAX`: `(1 << 47) - PAGE_SIZE`.
const TASK_SIZE: u64 = (1 << 47) - PAGE;

/// State shared by every worker of a run.
#[derive(Debug)]
pub struct Shared {
    /// Set to end the run (duration over, request budget spent, Ctrl-C,
    /// divergence).
    pub stop: AtomicBool,
    /// Measurement has started (warm-up over); set together with `t0`.
    pub recording: AtomicBool,
    /// Start of measurement.
    pub t0: OnceLock<Instant>,
    /// Start of the open-loop schedule (set when the load starts, after
    /// setup, so setup time is not charged to the first requests).
    pub sched0: OnceLock<Instant>,
    /// Open loop: time between two intended sends, in ns.
    pub interval_ns: Option<f64>,
    /// Open loop: next slot of the schedule.
    pub ticket: AtomicU64,
    /// Recorded requests admitted so far (for `--requests`).
    pub issued: AtomicU64,
    /// `--requests`.
    pub limit: Option<u64>,
    /// Recorded requests finished (progress bar).
    pub completed: AtomicU64,
    /// Recorded simulated faults finished (progress bar).
    pub faults_done: AtomicU64,
    /// Divergences found by `--verify`.
    pub divergences: Mutex<Vec<Divergence>>,
    /// `--max-errors`: the run stops when more unexpected errors than this
    /// were answered.
    pub max_errors: Option<u64>,
    /// Unexpected errors the server answered so far (measured or not).
    pub unexpected_errors: AtomicU64,
    /// Set once, with the status, when a call found no server: the run
    /// stops and `vmasim load` exits 3.
    pub server_gone: OnceLock<Status>,
    /// Open loop: requests sent behind their schedule (every worker was
    /// busy when they were due).
    pub late: AtomicU64,
}

impl Shared {
    /// Fresh state for a run.
    pub fn new(interval_ns: Option<f64>, limit: Option<u64>) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            recording: AtomicBool::new(false),
            t0: OnceLock::new(),
            sched0: OnceLock::new(),
            interval_ns,
            ticket: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            limit,
            completed: AtomicU64::new(0),
            faults_done: AtomicU64::new(0),
            divergences: Mutex::new(Vec::new()),
            max_errors: None,
            unexpected_errors: AtomicU64::new(0),
            server_gone: OnceLock::new(),
            late: AtomicU64::new(0),
        }
    }

    /// With `--max-errors`.
    pub fn with_max_errors(mut self, max_errors: Option<u64>) -> Self {
        self.max_errors = max_errors;
        self
    }

    /// Whether `--max-errors` stopped the run.
    pub fn max_errors_reached(&self) -> bool {
        self.max_errors
            .is_some_and(|m| self.unexpected_errors.load(Ordering::Relaxed) > m)
    }

    /// Starts measurement now.
    pub fn start_recording(&self) {
        self.t0.get_or_init(Instant::now);
        self.recording.store(true, Ordering::Release);
    }

    /// Waits for the right to send one request. `None`: the run is over.
    /// `Some(Some(t))`: open loop, the request was due at `t` (latency is
    /// measured from there, or from the wake-up if it was not late).
    /// `Some(None)`: closed loop, send now.
    pub(crate) async fn admit(&self) -> Option<Option<Instant>> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(limit) = self.limit
            && self.recording.load(Ordering::Acquire)
            && self.issued.fetch_add(1, Ordering::Relaxed) >= limit
        {
            self.stop.store(true, Ordering::Relaxed);
            return None;
        }
        let Some(iv) = self.interval_ns else {
            return Some(None);
        };
        let k = self.ticket.fetch_add(1, Ordering::Relaxed);
        let due =
            *self.sched0.get_or_init(Instant::now) + Duration::from_nanos((k as f64 * iv) as u64);
        let behind = due <= Instant::now();
        if !behind {
            tokio::time::sleep_until(due.into()).await;
        } else if self.recording.load(Ordering::Relaxed) {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
        // A request counted against --requests is sent even if the budget
        // ran out meanwhile; otherwise a stop during the wait cancels it.
        if self.limit.is_none() && self.stop.load(Ordering::Relaxed) {
            return None;
        }
        // Behind schedule (every worker was busy): latency counts from when
        // the request was due, the coordinated-omission correction. On
        // time: from the wake-up, so the timer's 1 ms granularity is not
        // charged to the server.
        Some(Some(if behind { due } else { Instant::now() }))
    }

    /// Records one finished request if measurement is on (and counts it for
    /// the progress bar).
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        kind: OpKind,
        start: Instant,
        code: Code,
        faults: u64,
    ) {
        if !self.recording.load(Ordering::Acquire) {
            return;
        }
        let Some(&t0) = self.t0.get() else { return };
        // Requests sent during the warm-up but finished after it count from
        // t0, not from before it.
        rec.record(kind, t0, start.max(t0), Instant::now(), code, faults);
        self.completed.fetch_add(1, Ordering::Relaxed);
        if code == Code::Ok {
            self.faults_done.fetch_add(faults, Ordering::Relaxed);
        }
    }

    /// Accounts for one finished call of the load (owner, fault thread or
    /// trace worker): a success or a server-answered error is recorded
    /// (if measurement is on) with its error row; a call that found no
    /// server stops the run ([`Shared::server_gone`]) and is kept out of
    /// the request count; an unexpected error counts against
    /// `--max-errors`. `expected`: why this status is expected, if it is.
    pub(crate) fn finish<T>(
        &self,
        rec: &mut Recorder,
        kind: OpKind,
        start: Instant,
        r: &Result<T, Status>,
        faults: u64,
        expected: Option<&'static str>,
    ) {
        let s = match r {
            Ok(_) => return self.record(rec, kind, start, Code::Ok, faults),
            Err(s) => s,
        };
        let recording = self.recording.load(Ordering::Acquire);
        if unreachable(s) {
            if recording {
                rec.record_unreachable(kind, s);
            }
            let _ = self.server_gone.set(s.clone());
            self.stop.store(true, Ordering::Relaxed);
            return;
        }
        if expected.is_none() {
            self.unexpected_errors.fetch_add(1, Ordering::Relaxed);
            if self.max_errors_reached() {
                self.stop.store(true, Ordering::Relaxed);
            }
        }
        if !recording {
            return;
        }
        let Some(&t0) = self.t0.get() else { return };
        rec.record_failed(kind, t0, (start.max(t0), Instant::now()), s, expected);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a failed call never reached a server. `UNAVAILABLE` is what a
/// refused or reset connection and a server in shutdown give (the vmasim
/// server answers it for nothing else); `UNKNOWN` with a source error is
/// a connection that broke mid-call (tonic maps h2/hyper errors so; a
/// status the server sent has no source).
pub fn unreachable(s: &Status) -> bool {
    s.code() == Code::Unavailable
        || (s.code() == Code::Unknown && std::error::Error::source(s).is_some())
}

/// The failures the load's own workload sends `op` knowing it may get,
/// each with why (for the error distribution): the kernel rule the call
/// exercises. Any other failure is unexpected.
pub fn expected_failures(op: &Op) -> &'static [(Code, &'static str)] {
    match op {
        // mmap(MAP_FIXED_NOREPLACE) over an existing mapping is EEXIST in
        // do_mmap; the worker aims some just above a VMA on purpose.
        Op::Mmap(m) if m.flags & MapFlag::MapFixedNoreplace as u32 != 0 => &[(
            Code::AlreadyExists,
            "MAP_FIXED_NOREPLACE over a mapping (EEXIST)",
        )],
        // mprotect over a hole is ENOMEM (do_mprotect_pkey); the worker
        // runs some past the end of a VMA on purpose.
        Op::Mprotect(_) => &[(
            Code::FailedPrecondition,
            "mprotect range over a hole (ENOMEM)",
        )],
        // madvise over a hole is ENOMEM after advising the mapped parts
        // (madvise_walk_vmas); the worker runs some past a VMA's end.
        Op::Madvise(_) => &[(
            Code::FailedPrecondition,
            "madvise range over a hole (ENOMEM)",
        )],
        _ => &[],
    }
}

/// The reason `r` is expected, if it failed as `expected` lists.
pub fn expected_reason<T>(
    r: &Result<T, Status>,
    expected: &[(Code, &'static str)],
) -> Option<&'static str> {
    let code = r.as_ref().err()?.code();
    expected
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, why)| *why)
}

/// What a fault thread expects: its layout copy may be one operation old,
/// so the owner may have exited the process (`NOT_FOUND`).
const RACED_WITH_EXIT: &str = "fault thread raced with the owner's exit";

/// A reply that did not match the shadow model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Divergence {
    /// Worker index.
    pub worker: usize,
    /// Process the reply was about.
    pub pid: u32,
    /// What was expected and what came back.
    pub message: String,
    /// The worker's last operations, oldest first (the last one is the
    /// operation that diverged).
    pub history: Vec<String>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "divergence in worker {} pid {}: {}",
            self.worker, self.pid, self.message
        )?;
        writeln!(f, "  last operations (oldest first):")?;
        for h in &self.history {
            writeln!(f, "    {h}")?;
        }
        Ok(())
    }
}

/// One process of an owner worker.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    mm: ShadowMm,
}

/// A layout snapshot for fault threads: (pid, [(start, end)]).
type Layout = Vec<(u32, Vec<(u64, u64)>)>;

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

    fn pick_access(&mut self) -> Access {
        match self.rng.random_range(0..100) {
            0..60 => Access::Read,
            60..95 => Access::Write,
            _ => Access::Exec,
        }
    }

    fn pick_fault_addr(rng: &mut StdRng, mm: &ShadowMm) -> u64 {
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

    async fn fault(&mut self, i: usize) -> StepResult {
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
        let op = if n == 1 {
            Op::Fault(FaultRequest {
                pid,
                addr: addrs[0],
                access: access as i32,
            })
        } else {
            Op::FaultBatch(FaultBatchRequest {
                pid,
                addrs: addrs.clone(),
                access: access as i32,
                totals_only: !self.cfg.verify,
            })
        };
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
    async fn spawn_proc(&mut self, admitted: bool) -> StepResult {
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
            };
            match self.mmap(i, req, admitted).await? {
                Step::Next => {}
                Step::Stopped => return Ok(Step::Stopped),
            }
        }
        Ok(Step::Next)
    }

    /// A random non-heap VMA of process `i`.
    fn pick_vma(&mut self, i: usize) -> Option<(u64, u64)> {
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

    async fn random_mmap(&mut self, i: usize) -> StepResult {
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
        };
        self.mmap(i, req, true).await
    }

    /// Sends an mmap, checks it against the model and applies it.
    async fn mmap(&mut self, i: usize, req: MmapRequest, admitted: bool) -> StepResult {
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

    async fn munmap(&mut self, i: usize) -> StepResult {
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

    async fn mprotect(&mut self, i: usize) -> StepResult {
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
    async fn madvise(&mut self, i: usize) -> StepResult {
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

    async fn brk(&mut self, i: usize) -> StepResult {
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

    async fn fork(&mut self, i: usize) -> StepResult {
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

    async fn exit(&mut self, i: usize) -> StepResult {
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
    async fn check_maps(&mut self, i: usize, admitted: bool) -> StepResult {
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

/// A fault's reply as batch totals.
pub(crate) fn single_totals(f: &vmasim_proto::v1::FaultResponse) -> FaultTotals {
    use vmasim_proto::v1::{FaultOutcome as O, FaultPath as P};
    let mut t = FaultTotals {
        faults: 1,
        retries: u64::from(f.retries),
        ..Default::default()
    };
    match O::try_from(f.outcome) {
        Ok(O::AnonZeroFill) => t.anon_zero_fill = 1,
        Ok(O::FilePage) => t.file_page = 1,
        Ok(O::CowBreak) => t.cow_break = 1,
        Ok(O::AlreadyPresent) => t.already_present = 1,
        Ok(O::SegvMaperr) => t.segv_maperr = 1,
        Ok(O::SegvAccerr) => t.segv_accerr = 1,
        Ok(O::Sigbus) => t.sigbus = 1,
        _ => {}
    }
    match P::try_from(f.path) {
        Ok(P::PerVmaLock) => t.per_vma_lock = 1,
        Ok(P::MmapLockFallback) => t.mmap_lock_fallback = 1,
        Ok(P::MmapLock) => t.mmap_lock = 1,
        _ => {}
    }
    t
}

/// A worker that only faults in an owner's processes (`--threads`).
pub struct FaultThread {
    cfg: Arc<LoadConfig>,
    shared: Arc<Shared>,
    t: Transport,
    rng: StdRng,
    layout: Arc<RwLock<Layout>>,
    rec: Recorder,
}

impl FaultThread {
    /// A fault thread reading `layout`.
    pub fn new(
        id: usize,
        cfg: Arc<LoadConfig>,
        shared: Arc<Shared>,
        t: Transport,
        layout: Arc<RwLock<Layout>>,
    ) -> Self {
        let rng = StdRng::seed_from_u64(
            cfg.seed ^ (0x5851_f42d_4c95_7f2d_u64.wrapping_mul(id as u64 + 1)),
        );
        let rec = cfg.recorder();
        FaultThread {
            cfg,
            shared,
            t,
            rng,
            layout,
            rec,
        }
    }

    /// Faults until the run stops; returns the measurements.
    pub async fn run(mut self) -> Recorder {
        let n = self.cfg.batch.max(1);
        loop {
            let pick = {
                let l = self.layout.read().expect("not poisoned");
                if l.is_empty() {
                    None
                } else {
                    let (pid, ranges) = &l[self.rng.random_range(0..l.len())];
                    let addrs: Vec<u64> = (0..n)
                        .map(|_| {
                            if ranges.is_empty() {
                                return self.rng.random_range(MMAP_MIN_ADDR..TASK_SIZE);
                            }
                            let (s, e) = ranges[self.rng.random_range(0..ranges.len())];
                            self.rng.random_range(s..e)
                        })
                        .collect();
                    Some((*pid, addrs))
                }
            };
            let Some((pid, addrs)) = pick else {
                if self.shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            let access = if self.rng.random_bool(0.3) {
                Access::Write
            } else {
                Access::Read
            };
            let Some(due) = self.shared.admit().await else {
                break;
            };
            let op = if n == 1 {
                Op::Fault(FaultRequest {
                    pid,
                    addr: addrs[0],
                    access: access as i32,
                })
            } else {
                Op::FaultBatch(FaultBatchRequest {
                    pid,
                    addrs,
                    access: access as i32,
                    totals_only: true,
                })
            };
            let start = due.unwrap_or_else(Instant::now);
            let r = self.t.call(op).await;
            match &r {
                Ok(Reply::Fault(f)) => add_totals(&mut self.rec.fault_totals, &single_totals(f)),
                Ok(Reply::FaultBatch(b)) => {
                    add_totals(&mut self.rec.fault_totals, &b.totals.unwrap_or_default())
                }
                _ => {}
            }
            let expected = match &r {
                Err(s) if s.code() == Code::NotFound => Some(RACED_WITH_EXIT),
                _ => None,
            };
            self.shared
                .finish(&mut self.rec, OpKind::Fault, start, &r, n as u64, expected);
        }
        self.rec
    }
}

#[cfg(test)]
mod tests {
    //! The checker must catch a corrupted reply: the worker's checks are
    //! driven here directly, without a server.
    use super::*;
    use crate::load::mix::Mix;
    use vmasim_proto::v1::{FaultOutcome, VmaEntry};

    fn worker_with(mm: ShadowMm) -> Worker {
        let cfg = Arc::new(LoadConfig {
            verify: true,
            mix: "fault=1".parse::<Mix>().unwrap(),
            ..LoadConfig::default()
        });
        // The transport is never used by these checks; a lazy channel to
        // nowhere is enough to build one.
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let client = crate::connect::Target::plain("http://127.0.0.1:9")
            .client(ch)
            .unwrap();
        let mut w = Worker::new(
            0,
            cfg,
            Arc::new(Shared::new(None, None)),
            Transport::new(client, false),
            None,
        );
        w.procs.push(Proc { pid: 42, mm });
        w
    }

    #[tokio::test]
    async fn corrupted_fault_reply_is_caught() {
        let mut mm = ShadowMm::new(0x1000_0000, 0x1000_0000);
        let rw = Prot::Read as u32 | Prot::Write as u32;
        mm.map(0x7f00_0000_0000, 0x7f00_0001_0000, rw, false, Backing::Anon);
        let w = worker_with(mm);
        // The true answers pass.
        assert!(
            w.check_fault(
                0,
                0x7f00_0000_0010,
                Access::Write,
                FaultOutcome::AnonZeroFill as i32
            )
            .is_ok()
        );
        assert!(
            w.check_fault(
                0,
                0x1234_0000,
                Access::Read,
                FaultOutcome::SegvMaperr as i32
            )
            .is_ok()
        );
        // Corrupted: a fault in a hole reported as served, a mapped page
        // reported as SEGV_MAPERR, a read-write page refusing a write.
        let e = w
            .check_fault(
                0,
                0x1234_0000,
                Access::Read,
                FaultOutcome::AnonZeroFill as i32,
            )
            .unwrap_err();
        assert!(e.contains("pid 42") && e.contains("MapErr"), "{e}");
        assert!(
            w.check_fault(
                0,
                0x7f00_0000_0000,
                Access::Read,
                FaultOutcome::SegvMaperr as i32
            )
            .is_err()
        );
        assert!(
            w.check_fault(
                0,
                0x7f00_0000_0000,
                Access::Write,
                FaultOutcome::SegvAccerr as i32
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn corrupted_maps_reply_is_caught_with_history() {
        let mut mm = ShadowMm::new(0x1000_0000, 0x1000_0000);
        let rw = Prot::Read as u32 | Prot::Write as u32;
        mm.map(0x7f00_0000_0000, 0x7f00_0001_0000, rw, false, Backing::Anon);
        let mut w = worker_with(mm);
        w.note(|| "mmap pid 42 ...".into());
        // The server "forgot" to apply an mprotect: perms differ.
        let entries = [VmaEntry {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0001_0000,
            prot: Prot::Read as u32,
            ..Default::default()
        }];
        let d = w.procs[0].mm.diff_entries(&entries).expect("caught");
        w.diverged(format!("pid 42: {d}"));
        let divs = w.shared.divergences.lock().unwrap().clone();
        assert_eq!(divs.len(), 1);
        assert_eq!(divs[0].pid, 42);
        assert_eq!(divs[0].history, vec!["mmap pid 42 ...".to_string()]);
        assert!(divs[0].to_string().contains("r--p"), "{}", divs[0]);
        assert!(w.shared.stop.load(Ordering::Relaxed));
    }
}
