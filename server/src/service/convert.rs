//! Between the wire and the engine: request checks the engine cannot make
//! (wire enums, pid 0, lengths outside user space), engine results turned
//! into messages, and [`status_from`], the one map from [`MmError`] to the
//! gRPC status the API documents.
//!
//! Kept apart from the operations so that every translation is written
//! once and an operation reads as "check, call the engine, convert". The
//! error map is an exhaustive match: a new engine error cannot slip
//! through unmapped.

use crate::mm::{
    self, FaultResult, MapsEntry, MapsEvent, MmError, Simulator, TASK_SIZE, VmaLockEvent,
    vm_flags::{VM_ACCESS_FLAGS, VM_MAYSHARE},
};
use crate::race_lab;
use tonic::Status;
use vmasim_proto::v1 as pb;

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
        // The status of what it failed with, the message saying what was
        // done before (and starting, as that error's does, with its field).
        MmError::Partial { error, .. } => Status::new(status_from(*error).code(), msg),
    }
}

pub(super) fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

pub(super) fn check_pid(pid: u32) -> Result<u32, Status> {
    if pid == 0 {
        return Err(invalid("pid", "must be set (0 is never a process id)"));
    }
    Ok(pid)
}

/// A length the engine would round up: > 0 and, rounded, inside user space.
/// `field` names it in the error (`length`, Mremap's `new_length`).
pub(super) fn check_length(field: &str, len: u64) -> Result<(), Status> {
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

pub(super) fn access_from(v: i32) -> Result<mm::Access, Status> {
    match pb::Access::try_from(v) {
        Ok(pb::Access::Read) => Ok(mm::Access::Read),
        Ok(pb::Access::Write) => Ok(mm::Access::Write),
        Ok(pb::Access::Exec) => Ok(mm::Access::Exec),
        Err(_) => Err(invalid("access", format!("unknown value {v}"))),
    }
}

pub(super) fn outcome_to_pb(o: mm::FaultOutcome) -> pb::FaultOutcome {
    use mm::FaultOutcome as O;
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
pub(super) fn fault_oom(limit: u64, addr: u64, done: Option<usize>) -> Status {
    let applied = match done {
        Some(n) => format!("; the {n} faults before it in this batch were applied"),
        None => String::new(),
    };
    Status::resource_exhausted(format!(
        "fault at {addr:#x}: page-table memory limit ({limit} bytes, --max-pgtables-bytes) \
         reached, nothing mapped (VM_FAULT_OOM){applied}; unmap or exit processes to free tables"
    ))
}

pub(super) fn path_to_pb(p: mm::FaultPath) -> pb::FaultPath {
    use mm::FaultPath as P;
    match p {
        P::PerVmaLock => pb::FaultPath::PerVmaLock,
        P::MmapLockFallback => pb::FaultPath::MmapLockFallback,
        P::MmapLock => pb::FaultPath::MmapLock,
    }
}

/// An upper bound on the encoded size of a `FaultBatchResponse` for `n`
/// addresses: three packed varint arrays (outcome and path fit a byte,
/// retries at most 5) plus the totals (11 varints of at most 10 bytes).
pub(super) fn req_len_bound(n: usize, totals_only: bool) -> usize {
    let per = if totals_only { 0 } else { 1 + 1 + 5 };
    n.saturating_mul(per).saturating_add(3 * 16 + 128)
}

/// Add one fault to `t`.
pub(super) fn count(t: &mut pb::FaultTotals, r: &FaultResult) {
    use mm::{FaultOutcome as O, FaultPath as P};
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

pub(super) fn entry_to_pb(e: MapsEntry) -> pb::VmaEntry {
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

/// `Stats` from the engine's counters and modes.
pub(super) fn stats_to_pb(sim: &Simulator) -> pb::StatsResponse {
    use mm::{FaultOutcome as O, FaultPath as P, ReuseCheck};
    let cfg = sim.config();
    let s = sim.stats();
    let f = &s.faults;
    pb::StatsResponse {
        vma_cache: cfg.vma_cache.as_str().to_string(),
        fault_lock: cfg.fault_lock.as_str().to_string(),
        vma_lock_success: f.vma_lock(VmaLockEvent::VmaLockSuccess),
        vma_lock_abort: f.vma_lock(VmaLockEvent::VmaLockAbort),
        vma_lock_retry: f.vma_lock(VmaLockEvent::VmaLockRetry),
        vma_lock_miss: f.vma_lock(VmaLockEvent::VmaLockMiss),
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
            .map(|&c| (c.as_str().to_string(), f.reuse_detected(c)))
            .collect(),
        maps_reader: cfg.maps_reader.as_str().to_string(),
        maps_reads: [MapsEvent::ReadPerVma, MapsEvent::ReadMmapLock]
            .iter()
            .map(|&e| (e.as_str().to_string(), s.maps_event(e)))
            .collect(),
        maps_vma_lock: MapsEvent::STEPS
            .iter()
            .map(|&e| (e.as_str().to_string(), s.maps_event(e)))
            .collect(),
    }
}

/// `ListRaceScenarios`: every scenario, sorted by name as the API promises.
pub(super) fn race_scenarios_to_pb() -> pb::ListRaceScenariosResponse {
    let mut scenarios: Vec<pb::RaceScenarioInfo> = race_lab::scenarios()
        .into_iter()
        .map(|s| pb::RaceScenarioInfo {
            name: s.name.to_string(),
            description: s.description.to_string(),
        })
        .collect();
    scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListRaceScenariosResponse { scenarios }
}

/// A race-lab run's report as the `RaceScenario` reply for `variant`.
pub(super) fn race_report_to_pb(
    report: race_lab::RaceReport,
    variant: pb::RaceVariant,
) -> pb::RaceScenarioResponse {
    let verdict = match report.verdict {
        race_lab::Verdict::Caught => pb::RaceVerdict::Caught,
        race_lab::Verdict::Retried => pb::RaceVerdict::Retried,
        race_lab::Verdict::UseAfterReuse => pb::RaceVerdict::UseAfterReuse,
        race_lab::Verdict::Safe => pb::RaceVerdict::Safe,
        race_lab::Verdict::GuaranteeBroken => pb::RaceVerdict::GuaranteeBroken,
    };
    pb::RaceScenarioResponse {
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
    }
}
