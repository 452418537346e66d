//! The operations of `vmasim.v1.AddressSpace`, one method of [`Ops`] per
//! RPC and named as the RPC's stub (`mmap`, `fault_batch`): check what the
//! engine cannot know, make one engine call, convert the answer.
//!
//! Why shaped so:
//!
//! * **One code path per operation.** The unary handlers and the `Session`
//!   stream call the same methods, so a stream reply carries exactly the
//!   status the unary call would have returned; the methods are named as
//!   the stubs so that the stream's dispatch is generated from the proto
//!   crate's [`vmasim_proto::for_each_session_op!`] list.
//! * **Blocking work off the async workers.** Writers (`mmap`, `munmap`,
//!   `mprotect`, `brk`) take `mmap_lock` for write and may wait behind a
//!   `fork` that holds it for O(VMAs); `fork`, `exit`, spawn-from-maps and
//!   `maps` are O(VMAs) themselves. They run in [`blocking`], so a long
//!   writer never stalls the tokio workers that serve every other call. A
//!   single fault is short (lockless on the per-VMA path) and runs inline;
//!   a large `FaultBatch` goes to the blocking pool too.
//! * **An abandoned call undoes what nobody could name.** A process
//!   created for a call whose answer never arrives is exited again
//!   ([`NewProcess`]); any other effect stands and is counted.

use super::Limits;
use super::convert::{
    access_from, check_length, check_pid, count, entry_to_pb, fault_oom, invalid, outcome_to_pb,
    path_to_pb, race_report_to_pb, race_scenarios_to_pb, req_len_bound, stats_to_pb, status_from,
};
use crate::mm::{self, MmapArgs, PAGE_SIZE, Simulator, TASK_SIZE, Task};
use crate::race_lab;
use crate::server::call::{CallCtx, Charge, ReplyBudget, ReplyHold};
use crate::telemetry::Telemetry;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tonic::{Response, Status};
use vmasim_proto::v1 as pb;

/// In a `FaultBatch`, one fault in this many is timed for
/// `vmasim_fault_duration_seconds`. The batch's average is not the latency
/// of any fault, so individual faults are sampled instead; timing every one
/// would add two clock reads per fault to a throughput path.
pub const FAULT_BATCH_SAMPLE: usize = 64;

/// Batches up to this many addresses run inline on the async worker; larger
/// ones go to `spawn_blocking` (a 64 Ki batch is milliseconds of work).
const INLINE_BATCH: usize = 1024;

/// What every operation works with; shared by the service's clones and
/// its `Session` tasks.
pub(super) struct Ops {
    pub(super) sim: Arc<Simulator>,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) limits: Limits,
    /// Becomes `true` when shutdown starts: open `Session` streams end with
    /// UNAVAILABLE after the operation in hand, so the drain does not wait
    /// for load generators that never hang up.
    pub(super) shutdown: watch::Receiver<bool>,
    /// Bytes of replies not yet handed to HTTP/2, server-wide.
    pub(super) replies: Arc<ReplyBudget>,
    /// The server's concurrency slots, taken by each `Session` operation
    /// while it runs (unary calls take theirs in the RPC layer). `None`:
    /// no limit (the service used alone).
    pub(super) slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// An operation's reply and, for a reply large enough to count against
/// the server's reply budget, the charge of its bytes. Every reply type
/// converts into one (no charge), so the `Session` dispatch treats all
/// operations alike.
pub(super) struct Charged<T> {
    pub(super) reply: T,
    pub(super) charge: Option<Charge>,
}

impl<T: prost::Message> From<T> for Charged<T> {
    fn from(reply: T) -> Self {
        Charged {
            reply,
            charge: None,
        }
    }
}

impl<T> Charged<T> {
    /// A unary response whose bytes are charged: the charge rides in the
    /// response's extensions to the RPC layer, which holds it until the
    /// bytes are delivered or the call's time is up.
    pub(super) fn into_response(self) -> Response<T> {
        let mut r = Response::new(self.reply);
        if let Some(c) = self.charge {
            let hold = ReplyHold::default();
            hold.set_charge(Some(c));
            r.extensions_mut().insert(hold);
        }
        r
    }
}

/// Run `f` on the blocking pool, as part of the current call: the call's
/// concurrency slot stays taken until `f` has returned even if the call
/// is abandoned meanwhile, and `f` does not run at all if, by the time a
/// thread picks it up, the client has gone or the deadline has passed
/// (`what` names the operation in that answer). An engine panic becomes
/// INTERNAL for this call instead of taking a worker (and the connection)
/// down.
pub(super) async fn blocking<T: Send + 'static>(
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

fn vma_count(task: &Task) -> u32 {
    u32::try_from(task.map_count()).unwrap_or(u32::MAX)
}

impl Ops {
    fn sim(&self) -> Arc<Simulator> {
        self.sim.clone()
    }

    /// A writer's engine work: `f` on `pid`'s address space on the
    /// blocking pool, as part of the call ([`blocking`], `what` naming it
    /// there), counted under `method` if it took effect after the call was
    /// abandoned.
    async fn on_task<T: Send + 'static>(
        &self,
        what: &'static str,
        method: &'static str,
        pid: u32,
        f: impl FnOnce(&Task) -> Result<T, mm::MmError> + Send + 'static,
    ) -> Result<T, Status> {
        let sim = self.sim();
        let telemetry = self.telemetry.clone();
        blocking(what, move |ctx| {
            let task = sim.task(pid).map_err(status_from)?;
            let r = f(&task).map_err(status_from)?;
            note_applied(ctx, &telemetry, method);
            Ok(r)
        })
        .await
    }

    pub(super) async fn spawn(&self, req: pb::SpawnRequest) -> Result<pb::SpawnResponse, Status> {
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
        let max = self.limits.max_maps_text;
        if req.maps_text.len() > max {
            return Err(invalid(
                "maps_text",
                format!(
                    "{} bytes exceeds the limit of {max} bytes",
                    req.maps_text.len()
                ),
            ));
        }
        let created = NewProcess::new(sim.clone(), self.telemetry.clone(), "Spawn");
        let mut guard = AbandonGuard(Some(created.clone()));
        let r = blocking("spawn", move |ctx| {
            let pid = sim
                .spawn_from_maps(&req.maps_text, start_brk)
                .map_err(status_from)?;
            // The process may already have been killed by another client;
            // then it started with as many VMAs as the text has lines, which
            // we no longer know, so report 0 rather than fail a done spawn.
            let vma_count = sim.task(pid).map(|t| vma_count(&t)).unwrap_or(0);
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

    pub(super) async fn mmap(&self, req: pb::MmapRequest) -> Result<pb::MmapResponse, Status> {
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
            file_size: req.file_size,
        };
        let addr = self
            .on_task("mmap", "Mmap", pid, move |t| t.mmap(args))
            .await?;
        Ok(pb::MmapResponse { addr })
    }

    pub(super) async fn munmap(
        &self,
        req: pb::MunmapRequest,
    ) -> Result<pb::MunmapResponse, Status> {
        let pid = check_pid(req.pid)?;
        check_length("length", req.length)?;
        let vma_count = self
            .on_task("munmap", "Munmap", pid, move |t| {
                t.munmap(req.addr, req.length)?;
                Ok(vma_count(t))
            })
            .await?;
        Ok(pb::MunmapResponse { vma_count })
    }

    pub(super) async fn mprotect(
        &self,
        req: pb::MprotectRequest,
    ) -> Result<pb::MprotectResponse, Status> {
        let pid = check_pid(req.pid)?;
        check_length("length", req.length)?;
        let vma_count = self
            .on_task("mprotect", "Mprotect", pid, move |t| {
                t.mprotect(req.addr, req.length, req.prot)?;
                Ok(vma_count(t))
            })
            .await?;
        Ok(pb::MprotectResponse { vma_count })
    }

    pub(super) async fn mremap(
        &self,
        req: pb::MremapRequest,
    ) -> Result<pb::MremapResponse, Status> {
        let pid = check_pid(req.pid)?;
        check_length("new_length", req.new_length)?;
        let (addr, vma_count) = self
            .on_task("mremap", "Mremap", pid, move |t| {
                let addr = t.mremap(
                    req.addr,
                    req.old_length,
                    req.new_length,
                    req.flags,
                    req.new_addr,
                )?;
                Ok((addr, vma_count(t)))
            })
            .await?;
        Ok(pb::MremapResponse { addr, vma_count })
    }

    pub(super) async fn madvise(
        &self,
        req: pb::MadviseRequest,
    ) -> Result<pb::MadviseResponse, Status> {
        let pid = check_pid(req.pid)?;
        let vma_count = self
            .on_task("madvise", "Madvise", pid, move |t| {
                t.madvise(req.addr, req.length, req.advice)?;
                Ok(vma_count(t))
            })
            .await?;
        Ok(pb::MadviseResponse { vma_count })
    }

    pub(super) async fn brk(&self, req: pb::BrkRequest) -> Result<pb::BrkResponse, Status> {
        let pid = check_pid(req.pid)?;
        let (brk, start_brk) = self
            .on_task("brk", "Brk", pid, move |t| t.brk(req.brk))
            .await?;
        Ok(pb::BrkResponse { brk, start_brk })
    }

    /// One fault, inline: it is short, and on the per-VMA path it takes no
    /// lock at all.
    pub(super) async fn fault(&self, req: pb::FaultRequest) -> Result<pb::FaultResponse, Status> {
        let pid = check_pid(req.pid)?;
        let access = access_from(req.access)?;
        let task = self.sim.task(pid).map_err(status_from)?;
        let t = Instant::now();
        let r = task.fault(req.addr, access);
        self.telemetry.record_fault(t.elapsed());
        if r.outcome == mm::FaultOutcome::Oom {
            return Err(fault_oom(task.pgtables_limit(), req.addr, None));
        }
        Ok(pb::FaultResponse {
            outcome: outcome_to_pb(r.outcome) as i32,
            path: path_to_pb(r.path) as i32,
            retries: r.retries,
        })
    }

    pub(super) async fn fault_batch(
        &self,
        req: pb::FaultBatchRequest,
    ) -> Result<Charged<pb::FaultBatchResponse>, Status> {
        let pid = check_pid(req.pid)?;
        let access = access_from(req.access)?;
        let max = self.limits.max_batch;
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
        let task = self.sim.task(pid).map_err(status_from)?;
        let telemetry = self.telemetry.clone();
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
                    let r = task.fault(addr, access);
                    telemetry.record_fault(t.elapsed());
                    r
                } else {
                    task.fault(addr, access)
                };
                if r.outcome == mm::FaultOutcome::Oom {
                    return Err(fault_oom(task.pgtables_limit(), addr, Some(i)));
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
        let charge = if req_len_bound(n_addrs, totals_only) > crate::server::call::CHARGE_MIN_BYTES
        {
            self.replies
                .try_charge(req_len_bound(n_addrs, totals_only), "FaultBatch")?
        } else {
            None
        };
        let resp = if inline {
            run()
        } else {
            blocking("FaultBatch", move |_| run()).await
        }?;
        Ok(Charged {
            reply: resp,
            charge,
        })
    }

    pub(super) async fn fork(&self, req: pb::ForkRequest) -> Result<pb::ForkResponse, Status> {
        let pid = check_pid(req.pid)?;
        let sim = self.sim();
        let created = NewProcess::new(sim.clone(), self.telemetry.clone(), "Fork");
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

    pub(super) async fn exit(&self, req: pb::ExitRequest) -> Result<pb::ExitResponse, Status> {
        let pid = check_pid(req.pid)?;
        let sim = self.sim();
        let telemetry = self.telemetry.clone();
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

    pub(super) async fn maps(
        &self,
        req: pb::MapsRequest,
    ) -> Result<Charged<pb::MapsResponse>, Status> {
        let pid = check_pid(req.pid)?;
        let sim = self.sim();
        let max = self.limits.max_reply_bytes;
        let replies = self.replies.clone();
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
            Ok(Charged {
                reply: resp,
                charge,
            })
        })
        .await
    }

    pub(super) fn stats(&self) -> pb::StatsResponse {
        stats_to_pb(&self.sim)
    }

    pub(super) fn list_race_scenarios(&self) -> pb::ListRaceScenariosResponse {
        race_scenarios_to_pb()
    }

    pub(super) async fn race_scenario(
        &self,
        req: pb::RaceScenarioRequest,
    ) -> Result<pb::RaceScenarioResponse, Status> {
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
        Ok(race_report_to_pb(report, variant))
    }
}
