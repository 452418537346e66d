//! `vmasim.v1.AddressSpace` on top of the engine: validation, translation
//! and error mapping, nothing else.
//!
//! Why shaped so:
//!
//! * **Validate, translate, call.** Every handler checks what the engine
//!   cannot know (wire enums, pid 0, `--max-batch`, the flag bits the API
//!   allows) and turns the request into one engine call. The engine
//!   validates the rest (alignment, ranges, limits) and fails without
//!   changing anything, so a failed RPC never leaves half an operation
//!   behind. [`status_from`] maps [`MmError`] to a gRPC status with an
//!   exhaustive match, so a new engine error cannot slip through unmapped.
//! * **Blocking work off the async workers.** Writers (`mmap`, `munmap`,
//!   `mprotect`, `brk`) take `mmap_lock` for write and may wait behind a
//!   `fork` that holds it for O(VMAs); `fork`, `exit`, spawn-from-maps and
//!   `maps` are O(VMAs) themselves. They run in `spawn_blocking`, so a long
//!   writer never stalls the tokio workers that serve every other call. A
//!   single fault is short (lockless on the per-VMA path) and runs inline;
//!   a large `FaultBatch` goes to `spawn_blocking` too.
//! * **One code path per operation.** The unary RPCs and the `Session`
//!   stream call the same `op_*` functions, so a stream reply carries
//!   exactly the status the unary call would have returned.
//! * **Session backpressure.** One task per stream handles requests in
//!   order and sends replies into a bounded channel of `stream_buffer`
//!   entries. When the client stops reading, the channel fills, the task
//!   stops reading requests, and HTTP/2 flow control pushes back on the
//!   client: nothing is buffered without bound.
//! * **A Session holds a concurrency slot only while it works.** Each
//!   operation on the stream takes a slot of `--concurrency-limit` for as
//!   long as its engine work runs, exactly like a unary call, and gets
//!   RESOURCE_EXHAUSTED when none is free. An idle stream (a load
//!   generator between requests, or one that never sends) holds no slot,
//!   so idle streams cannot lock other clients out; what an idle stream
//!   costs is bounded by the connection and per-connection stream caps.

use crate::call::{CallCtx, Charge, ReplyBudget, ReplyHold};
use crate::mm::MmError;
use crate::mm::fault::{self as mmfault, FaultResult, do_user_addr_fault};
use crate::mm::madvise::do_madvise;
use crate::mm::mm_types::vm_flags::{VM_ACCESS_FLAGS, VM_MAYSHARE};
use crate::mm::mmap::{MmapArgs, do_brk, do_mmap, do_munmap};
use crate::mm::mprotect::do_mprotect;
use crate::mm::mremap::do_mremap;
use crate::mm::proc_maps::MapsEntry;
use crate::mm::race_lab;
use crate::mm::sim::Simulator;
use crate::mm::vmstat::MapsEvent;
use crate::mm::{PAGE_SIZE, TASK_SIZE};
use crate::telemetry::Telemetry;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};
use vmasim_proto::v1::address_space_server::AddressSpace;
use vmasim_proto::v1::{self as pb, session_reply, session_request};

/// In a `FaultBatch`, one fault in this many is timed for
/// `vmasim_fault_duration_seconds`. The batch's average is not the latency
/// of any fault, so individual faults are sampled instead; timing every one
/// would add two clock reads per fault to a throughput path.
pub const FAULT_BATCH_SAMPLE: usize = 64;

/// Batches up to this many addresses run inline on the async worker; larger
/// ones go to `spawn_blocking` (a 64 Ki batch is milliseconds of work).
const INLINE_BATCH: usize = 1024;

/// Request-size limits the service enforces itself.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum addresses in one `FaultBatch`.
    pub max_batch: usize,
    /// Maximum size of a `maps_text`, bytes (the decoder already caps whole
    /// messages; this gives a clear field-level error).
    pub max_maps_text: usize,
    /// Replies in flight per `Session` stream.
    pub stream_buffer: usize,
    /// Largest reply message, bytes.
    pub max_reply_bytes: usize,
    /// How long a `Session` reply may wait for the client to read before
    /// the stream ends with DEADLINE_EXCEEDED (the server's
    /// `--request-timeout`).
    pub request_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 65536,
            max_maps_text: 4 << 20,
            stream_buffer: 64,
            max_reply_bytes: 16 << 20,
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The `AddressSpace` service. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AddressSpaceService {
    inner: Arc<Inner>,
}

struct Inner {
    sim: Arc<Simulator>,
    telemetry: Arc<Telemetry>,
    limits: Limits,
    /// Becomes `true` when shutdown starts: open `Session` streams end with
    /// UNAVAILABLE after the operation in hand, so the drain does not wait
    /// for load generators that never hang up.
    shutdown: watch::Receiver<bool>,
    /// Bytes of replies not yet handed to HTTP/2, server-wide.
    replies: Arc<ReplyBudget>,
    /// The server's concurrency slots, taken by each `Session` operation
    /// while it runs (unary calls take theirs in the RPC layer). `None`:
    /// no limit (the service used alone).
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl std::fmt::Debug for AddressSpaceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpaceService")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Map an engine error to the status the API documents.
pub fn status_from(e: MmError) -> Status {
    let msg = e.to_string();
    match e {
        // Both messages start with the field name ("field: reason").
        MmError::InvalidArgument { .. } | MmError::Overflow { .. } => Status::invalid_argument(msg),
        MmError::Permission(_) => Status::permission_denied(msg),
        MmError::NotSupported(_) => Status::invalid_argument(msg),
        MmError::NoSuchProcess(_) => Status::not_found(msg),
        MmError::Exists { .. } => Status::already_exists(msg),
        MmError::NotMapped { .. } | MmError::AdviceHoles { .. } | MmError::BadAddress { .. } => {
            Status::failed_precondition(msg)
        }
        MmError::MapCountExceeded { .. }
        | MmError::PoolExhausted { .. }
        | MmError::TooManyProcesses { .. }
        | MmError::NoSpace { .. }
        | MmError::NoHugePages => Status::resource_exhausted(msg),
        MmError::PgtablesExhausted { .. } => {
            Status::resource_exhausted(format!("{msg} (--max-pgtables-bytes)"))
        }
    }
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

fn check_pid(pid: u32) -> Result<u32, Status> {
    if pid == 0 {
        return Err(invalid("pid", "must be set (0 is never a process id)"));
    }
    Ok(pid)
}

/// A length the engine would round up: > 0 and, rounded, inside user space.
/// `field` names it in the error (`length`, Mremap's `new_length`).
fn check_length(field: &str, len: u64) -> Result<(), Status> {
    if len == 0 {
        return Err(invalid(field, "must be greater than 0"));
    }
    if len > TASK_SIZE {
        return Err(invalid(
            field,
            format!("{len:#x} bytes does not fit in user space ({TASK_SIZE:#x} bytes)"),
        ));
    }
    Ok(())
}

fn access_from(v: i32) -> Result<mmfault::Access, Status> {
    match pb::Access::try_from(v) {
        Ok(pb::Access::Read) => Ok(mmfault::Access::Read),
        Ok(pb::Access::Write) => Ok(mmfault::Access::Write),
        Ok(pb::Access::Exec) => Ok(mmfault::Access::Exec),
        Err(_) => Err(invalid("access", format!("unknown value {v}"))),
    }
}

fn outcome_to_pb(o: mmfault::FaultOutcome) -> pb::FaultOutcome {
    use mmfault::FaultOutcome as O;
    match o {
        O::AnonZeroFill => pb::FaultOutcome::AnonZeroFill,
        O::FilePage => pb::FaultOutcome::FilePage,
        O::CowBreak => pb::FaultOutcome::CowBreak,
        O::AlreadyPresent => pb::FaultOutcome::AlreadyPresent,
        O::SegvMaperr => pb::FaultOutcome::SegvMaperr,
        O::SegvAccerr => pb::FaultOutcome::SegvAccerr,
        O::Sigbus => pb::FaultOutcome::Sigbus,
        // Never on the wire: answered as RESOURCE_EXHAUSTED (`fault_oom`).
        O::Oom => pb::FaultOutcome::Unspecified,
    }
}

/// The status of a fault that hit the page-table budget (`VM_FAULT_OOM`).
/// `done` faults of the same call were applied before it.
fn fault_oom(limit: u64, addr: u64, done: Option<usize>) -> Status {
    let applied = match done {
        Some(n) => format!("; the {n} faults before it in this batch were applied"),
        None => String::new(),
    };
    Status::resource_exhausted(format!(
        "fault at {addr:#x}: page-table memory limit ({limit} bytes, --max-pgtables-bytes) \
         reached, nothing mapped (VM_FAULT_OOM){applied}; unmap or exit processes to free tables"
    ))
}

fn path_to_pb(p: mmfault::FaultPath) -> pb::FaultPath {
    use mmfault::FaultPath as P;
    match p {
        P::PerVmaLock => pb::FaultPath::PerVmaLock,
        P::MmapLockFallback => pb::FaultPath::MmapLockFallback,
        P::MmapLock => pb::FaultPath::MmapLock,
    }
}

/// An upper bound on the encoded size of a `FaultBatchResponse` for `n`
/// addresses: three packed varint arrays (outcome and path fit a byte,
/// retries at most 5) plus the totals (11 varints of at most 10 bytes).
fn req_len_bound(n: usize, totals_only: bool) -> usize {
    let per = if totals_only { 0 } else { 1 + 1 + 5 };
    n.saturating_mul(per).saturating_add(3 * 16 + 128)
}

/// Add one fault to `t`.
fn count(t: &mut pb::FaultTotals, r: &FaultResult) {
    use mmfault::{FaultOutcome as O, FaultPath as P};
    t.faults += 1;
    match r.outcome {
        O::AnonZeroFill => t.anon_zero_fill += 1,
        O::FilePage => t.file_page += 1,
        O::CowBreak => t.cow_break += 1,
        O::AlreadyPresent => t.already_present += 1,
        O::SegvMaperr => t.segv_maperr += 1,
        O::SegvAccerr => t.segv_accerr += 1,
        O::Sigbus => t.sigbus += 1,
        O::Oom => {}
    }
    match r.path {
        P::PerVmaLock => t.per_vma_lock += 1,
        P::MmapLockFallback => t.mmap_lock_fallback += 1,
        P::MmapLock => t.mmap_lock += 1,
    }
    t.retries += u64::from(r.retries);
}

fn entry_to_pb(e: MapsEntry) -> pb::VmaEntry {
    pb::VmaEntry {
        start: e.start,
        end: e.end,
        // VM_READ/WRITE/EXEC have the PROT_* values.
        prot: (e.vm_flags & VM_ACCESS_FLAGS) as u32,
        shared: e.vm_flags & VM_MAYSHARE != 0,
        offset: e.offset,
        file_id: e.file_id,
        path: e.path,
        dev_major: e.dev_major,
        dev_minor: e.dev_minor,
        inode: e.inode,
        rss_pages: e.rss_pages,
        anon_pages: e.anon_pages,
    }
}

/// Run `f` on the blocking pool, as part of the current call: the call's
/// concurrency slot stays taken until `f` has returned even if the call
/// is abandoned meanwhile, and `f` does not run at all if, by the time a
/// thread picks it up, the client has gone or the deadline has passed
/// (`what` names the operation in that answer). An engine panic becomes
/// INTERNAL for this call instead of taking a worker (and the connection)
/// down.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce(Option<&CallCtx>) -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let ctx = CallCtx::current();
    tokio::task::spawn_blocking(move || {
        if let Some(c) = &ctx {
            c.check_live(what)?;
        }
        // `ctx` (and the slot in it) is dropped after `f`, never before.
        f(ctx.as_ref())
    })
    .await
    .map_err(|e| Status::internal(format!("engine task failed: {e}")))?
}

/// After engine work that took effect: if the call was abandoned
/// meanwhile, count it (the effect stands; nobody saw the answer).
fn note_applied(ctx: Option<&CallCtx>, telemetry: &Telemetry, method: &'static str) {
    if ctx.is_some_and(|c| c.is_dead()) {
        telemetry.applied_after_abandon(method);
    }
}

/// A process created for a call whose answer may never be delivered: if
/// the call is abandoned before the pid is handed over, the process is
/// exited again (nobody could ever name it). Shared between the engine
/// closure, the handler and the handler's drop.
struct NewProcess {
    state: std::sync::Mutex<(Option<u32>, bool)>,
    sim: Arc<Simulator>,
    telemetry: Arc<Telemetry>,
    method: &'static str,
}

impl NewProcess {
    fn new(sim: Arc<Simulator>, telemetry: Arc<Telemetry>, method: &'static str) -> Arc<Self> {
        Arc::new(Self {
            state: std::sync::Mutex::new((None, false)),
            sim,
            telemetry,
            method,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<u32>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn undo(&self, pid: u32) {
        let _ = self.sim.exit(pid);
        self.telemetry.undone_after_abandon(self.method);
    }

    /// Engine side: `pid` exists now. Undone at once if the call is gone.
    fn created(&self, pid: u32, ctx: Option<&CallCtx>) -> Result<(), Status> {
        let mut s = self.lock();
        if s.1 || ctx.is_some_and(|c| c.is_dead()) {
            drop(s);
            self.undo(pid);
            return Err(Status::cancelled(format!(
                "{}: the call was abandoned while it ran; the new process {pid} was exited again",
                self.method
            )));
        }
        s.0 = Some(pid);
        Ok(())
    }

    /// Handler side: the pid goes into the reply now.
    fn claim(&self) -> Option<u32> {
        self.lock().0.take()
    }

    /// The handler's future was dropped: undo whatever was not claimed.
    fn abandon(&self) {
        let pid = {
            let mut s = self.lock();
            s.1 = true;
            s.0.take()
        };
        if let Some(pid) = pid {
            // exit is O(VMAs): off the async worker.
            let sim = self.sim.clone();
            let telemetry = self.telemetry.clone();
            let method = self.method;
            tokio::task::spawn_blocking(move || {
                let _ = sim.exit(pid);
                telemetry.undone_after_abandon(method);
            });
        }
    }
}

/// Calls [`NewProcess::abandon`] unless the handler got to the end.
struct AbandonGuard(Option<Arc<NewProcess>>);

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.abandon();
        }
    }
}

fn vma_count(mm: &crate::mm::mm_struct::MmStruct) -> u32 {
    u32::try_from(mm.mmap_read_lock().map_count).unwrap_or(u32::MAX)
}

impl AddressSpaceService {
    /// A service over `sim`, recording into `telemetry`. `shutdown` turns
    /// `true` when the server starts shutting down.
    pub fn new(
        sim: Arc<Simulator>,
        telemetry: Arc<Telemetry>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sim,
                telemetry,
                limits,
                shutdown,
                replies: Arc::new(ReplyBudget::new(usize::MAX)),
                slots: None,
            }),
        }
    }

    /// Charge large replies against `budget` (shared with the server's
    /// other services; unlimited by default).
    pub fn with_reply_budget(mut self, budget: Arc<ReplyBudget>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.replies = budget;
        }
        self
    }

    /// Take `Session` operations' concurrency slots from `slots` (the
    /// semaphore the RPC layer takes unary calls' slots from).
    pub fn with_slots(mut self, slots: Arc<tokio::sync::Semaphore>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.slots = Some(slots);
        }
        self
    }

    fn sim(&self) -> Arc<Simulator> {
        self.inner.sim.clone()
    }

    async fn op_spawn(&self, req: pb::SpawnRequest) -> Result<pb::SpawnResponse, Status> {
        let sim = self.sim();
        let start_brk = match req.start_brk {
            0 => None,
            b if b % PAGE_SIZE != 0 || b >= TASK_SIZE => {
                return Err(invalid(
                    "start_brk",
                    format!("{b:#x} must be page aligned and below {TASK_SIZE:#x}"),
                ));
            }
            b => Some(b),
        };
        if req.maps_text.is_empty() {
            let pid = sim.spawn_from_maps("", start_brk).map_err(status_from)?;
            return Ok(pb::SpawnResponse { pid, vma_count: 0 });
        }
        let max = self.inner.limits.max_maps_text;
        if req.maps_text.len() > max {
            return Err(invalid(
                "maps_text",
                format!(
                    "{} bytes exceeds the limit of {max} bytes",
                    req.maps_text.len()
                ),
            ));
        }
        let created = NewProcess::new(sim.clone(), self.inner.telemetry.clone(), "Spawn");
        let mut guard = AbandonGuard(Some(created.clone()));
        let r = blocking("spawn", move |ctx| {
            let pid = sim
                .spawn_from_maps(&req.maps_text, start_brk)
                .map_err(status_from)?;
            // The process may already have been killed by another client;
            // then it started with as many VMAs as the text has lines, which
            // we no longer know, so report 0 rather than fail a done spawn.
            let vma_count = sim.mm(pid).map(|mm| vma_count(&mm)).unwrap_or(0);
            created.created(pid, ctx)?;
            Ok(vma_count)
        })
        .await;
        let created = guard.0.take().expect("guard armed");
        let vma_count = r?;
        match created.claim() {
            Some(pid) => Ok(pb::SpawnResponse { pid, vma_count }),
            None => Err(Status::internal("spawned process lost")),
        }
    }

    async fn op_mmap(&self, req: pb::MmapRequest) -> Result<pb::MmapResponse, Status> {
        let pid = check_pid(req.pid)?;
        check_length("length", req.length)?;
        // Flag bits are the engine's to judge, as do_mmap's: unknown ones
        // are ignored, MAP_SHARED_VALIDATE refuses them (EOPNOTSUPP).
        let args = MmapArgs {
            addr: req.addr,
            len: req.length,
            prot: req.prot,
            flags: req.flags,
            file: req.file_id,
            offset: req.offset,
        };
        let sim = self.sim();
        let telemetry = self.inner.telemetry.clone();
        blocking("mmap", move |ctx| {
            let mm = sim.mm(pid).map_err(status_from)?;
            let addr = do_mmap(&mm, args).map_err(status_from)?;
            note_applied(ctx, &telemetry, "Mmap");
            Ok(pb::MmapResponse { addr })
        })
        .await
    }

    async fn op_munmap(&self, req: pb::MunmapRequest) -> Result<pb::MunmapResponse, Status> {
        let pid = check_pid(req.pid)?;
        check_length("length", req.length)?;
        let sim = self.sim();
        let telemetry = self.inner.telemetry.clone();
        blocking("munmap", move |ctx| {
            let mm = sim.mm(pid).map_err(status_from)?;
            do_munmap(&mm, req.addr, req.length).map_err(status_from)?;
            note_applied(ctx, &telemetry, "Munmap");
            Ok(pb::MunmapResponse {
                vma_count: vma_count(&mm),
            })
        })
        .await
    }

    async fn op_mprotect(&self, req: pb::MprotectRequest) -> Result<pb::MprotectResponse, Status> {
        let pid = check_pid(req.pid)?;
        check_length("length", req.length)?;
        let sim = self.sim();
        let telemetry = self.inner.telemetry.clone();
        blocking("mprotect", move |ctx| {
            let mm = sim.mm(pid).map_err(status_from)?;
            do_mprotect(&mm, req.addr, req.length, req.prot).map_err(status_from)?;
            note_applied(ctx, &telemetry, "Mprotect");
            Ok(pb::MprotectResponse {
                vma_count: vma_count(&mm),
            })
        })
        .await
    }

    async fn op_mremap(&self, req: pb::MremapRequest) -> Result<pb::MremapResponse, Status> {
        let pid = check_pid(req.pid)?;
        check_length("new_length", req.new_length)?;
        let sim = self.sim();
        let telemetry = self.inner.telemetry.clone();
        blocking("mremap", move |ctx| {
            let mm = sim.mm(pid).map_err(status_from)?;
            let addr = do_mremap(
                &mm,
                req.addr,
                req.old_length,
                req.new_length,
                req.flags,
                req.new_addr,
            )
            .map_err(status_from)?;
            note_applied(ctx, &telemetry, "Mremap");
            Ok(pb::MremapResponse {
                addr,
                vma_count: vma_count(&mm),
            })
        })
        .await
    }

    async fn op_madvise(&self, req: pb::MadviseRequest) -> Result<pb::MadviseResponse, Status> {
        let pid = check_pid(req.pid)?;
        let sim = self.sim();
        let telemetry = self.inner.telemetry.clone();
        blocking("madvise", move |ctx| {
            let mm = sim.mm(pid).map_err(status_from)?;
            do_madvise(&mm, req.addr, req.length, req.advice).map_err(status_from)?;
            note_applied(ctx, &telemetry, "Madvise");
            Ok(pb::MadviseResponse {
                vma_count: vma_count(&mm),
            })
        })
        .await
    }

    async fn op_brk(&self, req: pb::BrkRequest) -> Result<pb::BrkResponse, Status> {
        let pid = check_pid(req.pid)?;
        let sim = self.sim();
        let telemetry = self.inner.telemetry.clone();
        blocking("brk", move |ctx| {
            let mm = sim.mm(pid).map_err(status_from)?;
            let (brk, start_brk) = do_brk(&mm, req.brk).map_err(status_from)?;
            note_applied(ctx, &telemetry, "Brk");
            Ok(pb::BrkResponse { brk, start_brk })
        })
        .await
    }

    /// One fault, inline: it is short, and on the per-VMA path it takes no
    /// lock at all.
    fn op_fault(&self, req: pb::FaultRequest) -> Result<pb::FaultResponse, Status> {
        let pid = check_pid(req.pid)?;
        let access = access_from(req.access)?;
        let mm = self.inner.sim.mm(pid).map_err(status_from)?;
        let t = Instant::now();
        let r = do_user_addr_fault(&mm, req.addr, access);
        self.inner.telemetry.record_fault(t.elapsed());
        if r.outcome == mmfault::FaultOutcome::Oom {
            return Err(fault_oom(mm.ctx().pgtables.limit(), req.addr, None));
        }
        Ok(pb::FaultResponse {
            outcome: outcome_to_pb(r.outcome) as i32,
            path: path_to_pb(r.path) as i32,
            retries: r.retries,
        })
    }

    async fn op_fault_batch(
        &self,
        req: pb::FaultBatchRequest,
    ) -> Result<(pb::FaultBatchResponse, Option<Charge>), Status> {
        let pid = check_pid(req.pid)?;
        let access = access_from(req.access)?;
        let max = self.inner.limits.max_batch;
        if req.addrs.len() > max {
            return Err(invalid(
                "addrs",
                format!(
                    "{} addresses exceeds the server's --max-batch of {max}",
                    req.addrs.len()
                ),
            ));
        }
        // One process lookup for the whole batch.
        let mm = self.inner.sim.mm(pid).map_err(status_from)?;
        let telemetry = self.inner.telemetry.clone();
        let inline = req.addrs.len() <= INLINE_BATCH;
        let (n_addrs, totals_only) = (req.addrs.len(), req.totals_only);
        let run = move || {
            let n = if req.totals_only { 0 } else { req.addrs.len() };
            let mut resp = pb::FaultBatchResponse {
                outcomes: Vec::with_capacity(n),
                paths: Vec::with_capacity(n),
                retries: Vec::with_capacity(n),
                totals: None,
            };
            let mut totals = pb::FaultTotals::default();
            for (i, &addr) in req.addrs.iter().enumerate() {
                let r = if i % FAULT_BATCH_SAMPLE == 0 {
                    let t = Instant::now();
                    let r = do_user_addr_fault(&mm, addr, access);
                    telemetry.record_fault(t.elapsed());
                    r
                } else {
                    do_user_addr_fault(&mm, addr, access)
                };
                if r.outcome == mmfault::FaultOutcome::Oom {
                    return Err(fault_oom(mm.ctx().pgtables.limit(), addr, Some(i)));
                }
                count(&mut totals, &r);
                if !req.totals_only {
                    resp.outcomes.push(outcome_to_pb(r.outcome) as i32);
                    resp.paths.push(path_to_pb(r.path) as i32);
                    resp.retries.push(r.retries);
                }
            }
            resp.totals = Some(totals);
            Ok(resp)
        };
        // The reply's size is known before any fault: charge it first, so
        // a full reply budget refuses the batch before it does anything.
        let charge = if req_len_bound(n_addrs, totals_only) > crate::call::CHARGE_MIN_BYTES {
            self.inner
                .replies
                .try_charge(req_len_bound(n_addrs, totals_only), "FaultBatch")?
        } else {
            None
        };
        let resp = if inline {
            run()
        } else {
            blocking("FaultBatch", move |_| run()).await
        }?;
        Ok((resp, charge))
    }

    async fn op_fork(&self, req: pb::ForkRequest) -> Result<pb::ForkResponse, Status> {
        let pid = check_pid(req.pid)?;
        let sim = self.sim();
        let created = NewProcess::new(sim.clone(), self.inner.telemetry.clone(), "Fork");
        let mut guard = AbandonGuard(Some(created.clone()));
        let r = blocking("fork", move |ctx| {
            let child_pid = sim.fork(pid).map_err(status_from)?;
            created.created(child_pid, ctx)
        })
        .await;
        let created = guard.0.take().expect("guard armed");
        r?;
        match created.claim() {
            Some(child_pid) => Ok(pb::ForkResponse { child_pid }),
            None => Err(Status::internal("forked process lost")),
        }
    }

    async fn op_exit(&self, req: pb::ExitRequest) -> Result<pb::ExitResponse, Status> {
        let pid = check_pid(req.pid)?;
        let sim = self.sim();
        let telemetry = self.inner.telemetry.clone();
        blocking("exit", move |ctx| {
            let s = sim.exit(pid).map_err(status_from)?;
            note_applied(ctx, &telemetry, "Exit");
            Ok(pb::ExitResponse {
                vmas_freed: s.vmas_freed,
                rss_pages_freed: s.rss_pages_freed,
            })
        })
        .await
    }

    async fn op_maps(
        &self,
        req: pb::MapsRequest,
    ) -> Result<(pb::MapsResponse, Option<Charge>), Status> {
        let pid = check_pid(req.pid)?;
        let sim = self.sim();
        let max = self.inner.limits.max_reply_bytes;
        let replies = self.inner.replies.clone();
        blocking("maps", move |_| {
            let m = sim.maps(pid).map_err(status_from)?;
            let resp = pb::MapsResponse {
                text: m.text,
                entries: m.entries.into_iter().map(entry_to_pb).collect(),
                brk: m.brk,
                start_brk: m.start_brk,
                rss_pages: m.rss_pages,
            };
            let len = prost::Message::encoded_len(&resp);
            if len > max {
                return Err(Status::resource_exhausted(format!(
                    "maps of pid {pid}: the reply would be {len} bytes ({} VMAs), over the \
                     server's --max-reply-bytes of {max}",
                    resp.entries.len()
                )));
            }
            let charge = replies.try_charge(len, "Maps")?;
            Ok((resp, charge))
        })
        .await
    }

    fn op_stats(&self) -> pb::StatsResponse {
        use mmfault::{FaultOutcome as O, FaultPath as P, ReuseCheck};
        let sim = &self.inner.sim;
        let cfg = sim.config();
        let s = sim.stats();
        let f = &s.faults;
        pb::StatsResponse {
            vma_cache: cfg.vma_cache.as_str().to_string(),
            fault_lock: cfg.fault_lock.as_str().to_string(),
            vma_lock_success: f.vma_lock[0],
            vma_lock_abort: f.vma_lock[1],
            vma_lock_retry: f.vma_lock[2],
            vma_lock_miss: f.vma_lock[3],
            mmap_lock_fallbacks: f.by_path(P::MmapLockFallback),
            faults: Some(pb::FaultTotals {
                faults: f.total(),
                anon_zero_fill: f.by_outcome(O::AnonZeroFill),
                file_page: f.by_outcome(O::FilePage),
                cow_break: f.by_outcome(O::CowBreak),
                already_present: f.by_outcome(O::AlreadyPresent),
                segv_maperr: f.by_outcome(O::SegvMaperr),
                segv_accerr: f.by_outcome(O::SegvAccerr),
                sigbus: f.by_outcome(O::Sigbus),
                per_vma_lock: f.by_path(P::PerVmaLock),
                mmap_lock_fallback: f.by_path(P::MmapLockFallback),
                mmap_lock: f.by_path(P::MmapLock),
                retries: f.retries,
            }),
            vma_allocations_reused: s.pool.alloc_reused,
            vma_allocations_fresh: s.pool.alloc_fresh,
            vma_reuse_before_grace_period: s.pool.reuse_before_gp,
            vma_frees: s.pool.frees,
            call_rcu: s.pool.call_rcu,
            call_rcu_avoided: s.pool.call_rcu_avoided,
            grace_periods: s.pool.grace_periods,
            pool_slots_live: s.pool.live,
            pool_slots_free: s.pool.free,
            pool_slots_waiting: s.pool.waiting,
            pool_slabs: s.pool.slabs,
            pool_capacity_slots: s.pool.live + s.pool.free + s.pool.waiting,
            processes: s.processes,
            processes_spawned_total: s.processes_created,
            vmas: s.vmas,
            rss_pages: s.rss_pages,
            // Keyed by the metric's `check` label value (one name per
            // concept, as address_space.proto documents).
            reuse_detected: ReuseCheck::ALL
                .iter()
                .map(|&c| (c.as_str().to_string(), f.reuse_detected[c as usize]))
                .collect(),
            maps_reader: cfg.maps_reader.as_str().to_string(),
            maps_reads: [MapsEvent::ReadPerVma, MapsEvent::ReadMmapLock]
                .iter()
                .map(|&e| (e.as_str().to_string(), s.maps[e as usize]))
                .collect(),
            maps_vma_lock: MapsEvent::STEPS
                .iter()
                .map(|&e| (e.as_str().to_string(), s.maps[e as usize]))
                .collect(),
        }
    }

    /// One `Session` operation, answered like its unary RPC.
    /// Run one `Session` operation exactly as the stream does (used by the
    /// stream task and by the dispatch fuzzer).
    pub async fn dispatch(&self, req: pb::SessionRequest) -> pb::SessionReply {
        self.session_op(req).await.0
    }

    /// One `Session` operation: the reply and the budget charge of its
    /// bytes, if large.
    async fn session_op(&self, req: pb::SessionRequest) -> (pb::SessionReply, Option<Charge>) {
        use session_reply::Result as R;
        use session_request::Op;
        let mut charge = None;
        let result: Result<R, Status> = match req.op {
            None => Err(invalid("op", "not set")),
            Some(Op::Spawn(r)) => self.op_spawn(r).await.map(R::Spawn),
            Some(Op::Mmap(r)) => self.op_mmap(r).await.map(R::Mmap),
            Some(Op::Munmap(r)) => self.op_munmap(r).await.map(R::Munmap),
            Some(Op::Mprotect(r)) => self.op_mprotect(r).await.map(R::Mprotect),
            Some(Op::Brk(r)) => self.op_brk(r).await.map(R::Brk),
            Some(Op::Fault(r)) => self.op_fault(r).map(R::Fault),
            Some(Op::FaultBatch(r)) => self.op_fault_batch(r).await.map(|(r, c)| {
                charge = c;
                R::FaultBatch(r)
            }),
            Some(Op::Fork(r)) => self.op_fork(r).await.map(R::Fork),
            Some(Op::Exit(r)) => self.op_exit(r).await.map(R::Exit),
            Some(Op::Maps(r)) => self.op_maps(r).await.map(|(r, c)| {
                charge = c;
                R::Maps(r)
            }),
            Some(Op::Mremap(r)) => self.op_mremap(r).await.map(R::Mremap),
            Some(Op::Madvise(r)) => self.op_madvise(r).await.map(R::Madvise),
        };
        let reply = match result {
            Ok(r) => pb::SessionReply {
                id: req.id,
                code: Code::Ok as i32,
                message: String::new(),
                result: Some(r),
            },
            Err(s) => pb::SessionReply {
                id: req.id,
                code: s.code() as i32,
                message: s.message().to_string(),
                result: None,
            },
        };
        (reply, charge)
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionReply, Status>> + Send>>;

/// A unary response whose bytes are charged: the charge rides in the
/// response's extensions to the RPC layer, which holds it until the bytes
/// are delivered or the call's time is up.
fn with_charge<T>(resp: T, charge: Option<Charge>) -> Response<T> {
    let mut r = Response::new(resp);
    if let Some(c) = charge {
        let hold = ReplyHold::default();
        hold.set_charge(Some(c));
        r.extensions_mut().insert(hold);
    }
    r
}

/// A `Session` reply and the budget charge of its bytes.
type QueuedItem = (Result<pb::SessionReply, Status>, Option<Charge>);

/// One queued `Session` reply. The task keeps a weak reference to every
/// queued reply so that, when the client stops reading for longer than
/// the request timeout, it can drop them from its side of the channel.
type Queued = Arc<std::sync::Mutex<Option<QueuedItem>>>;

fn queued(item: Result<pb::SessionReply, Status>, charge: Option<Charge>) -> Queued {
    Arc::new(std::sync::Mutex::new(Some((item, charge))))
}

/// Replies queued on a `Session` stream and when they were queued.
type SentLog = std::collections::VecDeque<(
    std::sync::Weak<std::sync::Mutex<Option<QueuedItem>>>,
    tokio::time::Instant,
)>;

/// Drop the contents of every reply still queued.
fn drain(sent: &mut SentLog) {
    for (w, _) in sent.drain(..) {
        if let Some(q) = w.upgrade() {
            q.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
}

#[tonic::async_trait]
impl AddressSpace for AddressSpaceService {
    async fn spawn(
        &self,
        r: Request<pb::SpawnRequest>,
    ) -> Result<Response<pb::SpawnResponse>, Status> {
        self.op_spawn(r.into_inner()).await.map(Response::new)
    }

    async fn mmap(
        &self,
        r: Request<pb::MmapRequest>,
    ) -> Result<Response<pb::MmapResponse>, Status> {
        self.op_mmap(r.into_inner()).await.map(Response::new)
    }

    async fn munmap(
        &self,
        r: Request<pb::MunmapRequest>,
    ) -> Result<Response<pb::MunmapResponse>, Status> {
        self.op_munmap(r.into_inner()).await.map(Response::new)
    }

    async fn mprotect(
        &self,
        r: Request<pb::MprotectRequest>,
    ) -> Result<Response<pb::MprotectResponse>, Status> {
        self.op_mprotect(r.into_inner()).await.map(Response::new)
    }

    async fn mremap(
        &self,
        r: Request<pb::MremapRequest>,
    ) -> Result<Response<pb::MremapResponse>, Status> {
        self.op_mremap(r.into_inner()).await.map(Response::new)
    }

    async fn madvise(
        &self,
        r: Request<pb::MadviseRequest>,
    ) -> Result<Response<pb::MadviseResponse>, Status> {
        self.op_madvise(r.into_inner()).await.map(Response::new)
    }

    async fn brk(&self, r: Request<pb::BrkRequest>) -> Result<Response<pb::BrkResponse>, Status> {
        self.op_brk(r.into_inner()).await.map(Response::new)
    }

    async fn fault(
        &self,
        r: Request<pb::FaultRequest>,
    ) -> Result<Response<pb::FaultResponse>, Status> {
        self.op_fault(r.into_inner()).map(Response::new)
    }

    async fn fault_batch(
        &self,
        r: Request<pb::FaultBatchRequest>,
    ) -> Result<Response<pb::FaultBatchResponse>, Status> {
        self.op_fault_batch(r.into_inner())
            .await
            .map(|(r, c)| with_charge(r, c))
    }

    async fn fork(
        &self,
        r: Request<pb::ForkRequest>,
    ) -> Result<Response<pb::ForkResponse>, Status> {
        self.op_fork(r.into_inner()).await.map(Response::new)
    }

    async fn exit(
        &self,
        r: Request<pb::ExitRequest>,
    ) -> Result<Response<pb::ExitResponse>, Status> {
        self.op_exit(r.into_inner()).await.map(Response::new)
    }

    async fn maps(
        &self,
        r: Request<pb::MapsRequest>,
    ) -> Result<Response<pb::MapsResponse>, Status> {
        self.op_maps(r.into_inner())
            .await
            .map(|(r, c)| with_charge(r, c))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(self.op_stats()))
    }

    async fn list_race_scenarios(
        &self,
        _: Request<pb::ListRaceScenariosRequest>,
    ) -> Result<Response<pb::ListRaceScenariosResponse>, Status> {
        let mut scenarios: Vec<pb::RaceScenarioInfo> = race_lab::scenarios()
            .into_iter()
            .map(|s| pb::RaceScenarioInfo {
                name: s.name.to_string(),
                description: s.description.to_string(),
            })
            .collect();
        // The API promises them sorted by name.
        scenarios.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListRaceScenariosResponse { scenarios }))
    }

    async fn race_scenario(
        &self,
        r: Request<pb::RaceScenarioRequest>,
    ) -> Result<Response<pb::RaceScenarioResponse>, Status> {
        let req = r.into_inner();
        if req.name.is_empty() {
            return Err(invalid("name", "must be set (see ListRaceScenarios)"));
        }
        let variant = pb::RaceVariant::try_from(req.variant)
            .map_err(|_| invalid("variant", format!("unknown value {}", req.variant)))?;
        let buggy = variant == pb::RaceVariant::Buggy;
        // A scenario drives real threads through a private address space
        // for a few milliseconds: off the async workers.
        let report = blocking("race scenario", move |_| {
            race_lab::run(&req.name, buggy).map_err(|e| Status::not_found(e.to_string()))
        })
        .await?;
        let verdict = match report.verdict {
            race_lab::Verdict::Caught => pb::RaceVerdict::Caught,
            race_lab::Verdict::Retried => pb::RaceVerdict::Retried,
            race_lab::Verdict::UseAfterReuse => pb::RaceVerdict::UseAfterReuse,
            race_lab::Verdict::Safe => pb::RaceVerdict::Safe,
            race_lab::Verdict::GuaranteeBroken => pb::RaceVerdict::GuaranteeBroken,
        };
        Ok(Response::new(pb::RaceScenarioResponse {
            name: report.name,
            variant: variant as i32,
            description: report.description,
            timeline: report
                .timeline
                .into_iter()
                .map(|s| pb::RaceStep {
                    step: s.step,
                    thread: s.thread,
                    action: s.action,
                    vm_refcnt: s.vm_refcnt,
                    vm_lock_seq: s.vm_lock_seq,
                    mm_lock_seq: s.mm_lock_seq,
                    generation: s.generation,
                })
                .collect(),
            verdict: verdict as i32,
            caught_by: report.caught_by,
            summary: report.summary,
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        r: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = r.into_inner();
        let (tx, rx) = mpsc::channel::<Queued>(self.inner.limits.stream_buffer.max(1));
        let this = self.clone();
        let mut shutdown = self.inner.shutdown.clone();
        let hold = ReplyHold::default();
        let task_hold = hold.clone();
        let patience = self.inner.limits.request_timeout;
        let buffer = self.inner.limits.stream_buffer.max(1);
        let push_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut sent = SentLog::new();
            let stop = async move {
                let _ = shutdown.wait_for(|&s| s).await;
            };
            tokio::pin!(stop);
            // Queue one reply; false when the stream is over (client gone,
            // not reading for longer than `patience`, or, while it waits
            // for room, the server shutting down: a client that does not
            // read must not hold the drain up).
            let push = |tx: &mpsc::Sender<Queued>,
                        sent: &mut std::collections::VecDeque<_>,
                        item: Result<pb::SessionReply, Status>,
                        charge: Option<Charge>| {
                let q = queued(item, charge);
                if sent.len() >= 2 * buffer {
                    sent.retain(|(w, _): &(std::sync::Weak<_>, _)| w.strong_count() > 0);
                }
                sent.push_back((Arc::downgrade(&q), tokio::time::Instant::now()));
                let tx = tx.clone();
                let mut shutdown = push_shutdown.clone();
                async move {
                    tokio::select! {
                        // Room first: the last reply (UNAVAILABLE at
                        // shutdown) still goes out if it fits.
                        biased;
                        r = tokio::time::timeout(patience, tx.send(q)) => matches!(r, Ok(Ok(()))),
                        _ = shutdown.wait_for(|&s| s) => false,
                    }
                }
            };
            let expire = |sent: &mut SentLog| {
                drain(sent);
                let status = if *push_shutdown.borrow() {
                    Status::unavailable("server is shutting down")
                } else {
                    Status::deadline_exceeded(format!(
                        "Session: replies not read for {}; stream closed",
                        humantime::format_duration(patience)
                    ))
                };
                task_hold.expire(status);
            };
            loop {
                // Replies the client has taken are gone from the front.
                while sent
                    .front()
                    .is_some_and(|(w, _): &(std::sync::Weak<_>, _)| w.strong_count() == 0)
                {
                    sent.pop_front();
                }
                let oldest = sent.front().map(|(_, t)| *t);
                let next = tokio::select! {
                    // Shutdown first: stop taking new work as soon as it
                    // starts; the operation in hand has already finished.
                    biased;
                    _ = &mut stop => {
                        let _ = push(&tx, &mut sent, Err(Status::unavailable("server is shutting down")), None).await;
                        return;
                    }
                    // A reply left unread for `patience`, even with no new
                    // request coming: the client is not reading.
                    _ = tokio::time::sleep_until(oldest.unwrap_or_else(tokio::time::Instant::now) + patience), if oldest.is_some() => {
                        if sent.front().is_some_and(|(w, t)| w.strong_count() > 0 && t.elapsed() >= patience) {
                            expire(&mut sent);
                            return;
                        }
                        continue;
                    }
                    m = inbound.message() => m,
                };
                match next {
                    Ok(Some(req)) => {
                        if tx.is_closed() {
                            return;
                        }
                        let op = session_op_name(&req);
                        // Each operation is a call of its own inside the
                        // stream: it holds a concurrency slot while its
                        // work runs (and only then), no deadline.
                        let (reply, charge) = match this.session_slot() {
                            Ok(slot) => CallCtx::new(slot, None).scope(this.session_op(req)).await,
                            Err(status) => (
                                pb::SessionReply {
                                    id: req.id,
                                    code: status.code() as i32,
                                    message: status.message().to_string(),
                                    result: None,
                                },
                                None,
                            ),
                        };
                        if tx.is_closed() {
                            // Nobody will read this reply: undo what would
                            // be lost for good, count what stands.
                            this.session_abandoned(op, &reply);
                            return;
                        }
                        // Waits while `stream_buffer` replies are unread:
                        // that is the backpressure. Past `patience` the
                        // client is not reading at all: end the stream and
                        // drop what it left queued.
                        if !push(&tx, &mut sent, Ok(reply), charge).await {
                            expire(&mut sent);
                            return;
                        }
                    }
                    // The client closed its side: end the stream with OK.
                    Ok(None) => return,
                    // Undecodable message or transport error.
                    Err(status) => {
                        // A message over the decode limit: the gRPC
                        // status for it is RESOURCE_EXHAUSTED.
                        let status = if status.code() == Code::OutOfRange {
                            Status::resource_exhausted(status.message().to_string())
                        } else {
                            status
                        };
                        let _ = push(&tx, &mut sent, Err(status), None).await;
                        return;
                    }
                }
            }
        });
        // Hand each reply over, moving its charge to the body's hold: the
        // bytes are then the body's until they reach HTTP/2.
        let body_hold = hold.clone();
        let stream = ReceiverStream::new(rx).filter_map(move |q| {
            let item = q.lock().unwrap_or_else(|e| e.into_inner()).take();
            item.map(|(reply, charge)| {
                body_hold.set_charge(charge);
                reply
            })
        });
        let mut resp = Response::new(Box::pin(stream) as Self::SessionStream);
        resp.extensions_mut().insert(hold);
        Ok(resp)
    }
}

/// The method name of a `Session` operation (for the abandoned-call
/// counters).
fn session_op_name(req: &pb::SessionRequest) -> &'static str {
    req.op
        .as_ref()
        .map_or("Session", session_request::Op::method)
}

impl AddressSpaceService {
    /// A concurrency slot for one `Session` operation, or the
    /// RESOURCE_EXHAUSTED a unary call would get.
    fn session_slot(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Status> {
        match &self.inner.slots {
            None => Ok(None),
            Some(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| Status::resource_exhausted(crate::call::CONCURRENCY_LIMIT_MESSAGE)),
        }
    }

    /// A `Session` operation finished after its stream's client had gone:
    /// exit a process nobody received the pid of, count what stands.
    fn session_abandoned(&self, op: &'static str, reply: &pb::SessionReply) {
        use session_reply::Result as R;
        let t = &self.inner.telemetry;
        match &reply.result {
            Some(R::Spawn(s)) => {
                let _ = self.inner.sim.exit(s.pid);
                t.undone_after_abandon(op);
            }
            Some(R::Fork(f)) => {
                let _ = self.inner.sim.exit(f.child_pid);
                t.undone_after_abandon(op);
            }
            Some(R::Maps(_)) | None => {}
            Some(_) => t.applied_after_abandon(op),
        }
    }
}
