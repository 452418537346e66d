//! What every worker of a run shares: the stop flag, the open-loop
//! schedule that admits each call, the recording of each call's outcome
//! (measured or warm-up), and which failures the workload provokes on
//! purpose (labelled "expected" in the report). Owner workers, fault
//! threads, `--trace` players and `vmasim bench` all go through it.

use crate::load::divergence::Divergence;
use crate::load::mix::OpKind;
use crate::load::recorder::Recorder;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tonic::{Code, Status};
use vmasim_proto::v1::MapFlag;
use vmasim_proto::v1::session_request::Op;

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
