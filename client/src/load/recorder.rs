//! Per-worker measurements, merged into one [`Recorder`] at the end.
//!
//! Each worker owns a `Recorder` (no sharing, no locks on the hot path);
//! the run merges them when every worker is done. Latency goes into an
//! HdrHistogram in nanoseconds (3 significant digits); throughput is
//! counted in 1-second buckets from the start of measurement, for the
//! throughput-over-time chart.
//!
//! Failed calls are of two kinds. A status the *server* answered with
//! (`NOT_FOUND`, `ALREADY_EXISTS`, ...) is a request like any other: it is
//! timed and counted, and it also enters the error distribution
//! ([`ErrorRow`], by operation, code and message, expected ones labelled).
//! A call that never reached a server (`UNAVAILABLE`: refused, reset, the
//! server shutting down) measured nothing about the server: it enters the
//! error distribution only, never the request count, rps or latency
//! ([`Recorder::record_unreachable`]), so a dead server cannot inflate
//! throughput with instant failures.
//!
//! With `keep_rows` every measured call is also kept as a [`Row`] for the
//! per-request CSV (ghz's `-O csv`), ~32 bytes each.

use crate::error::code_name;
use crate::load::mix::OpKind;
use crate::stats::add_totals;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::{Code, Status};
use vmasim_proto::v1::FaultTotals;

/// Distinct (operation, code, message) rows one recorder keeps; further
/// distinct messages are folded into one "other messages" row per
/// operation and code, so the table stays bounded whatever the server says.
pub const MAX_ERROR_ROWS: usize = 64;

/// Message of the row that folds messages past [`MAX_ERROR_ROWS`].
pub const OTHER_MESSAGES: &str = "(other messages)";

/// One line of the error distribution.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorKey {
    /// The operation that failed.
    pub op: OpKind,
    /// Its gRPC status code.
    pub code: i32,
    /// The message with its numbers replaced by `N` (pids and addresses
    /// differ per call; the kind of failure does not).
    pub message: String,
    /// Why this failure is expected from the workload (the worker provokes
    /// it on purpose or it is a race the workload has by design); `None`:
    /// unexpected.
    pub expected: Option<&'static str>,
    /// The call never reached a server (not counted as a request).
    pub unreachable: bool,
}

/// A counted [`ErrorKey`] with one original message as an example.
#[derive(Debug, Clone)]
pub struct ErrorRow {
    /// What failed.
    pub key: ErrorKey,
    /// Calls that failed so.
    pub count: u64,
    /// The first such message, numbers included.
    pub example: String,
}

/// One measured call, for the per-request CSV.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// When it was sent (or due, open loop), ns since the start of
    /// measurement.
    pub start_ns: u64,
    /// Its latency, ns.
    pub latency_ns: u64,
    /// What it was.
    pub op: OpKind,
    /// Its status code.
    pub code: u8,
    /// Index + 1 into [`Recorder::errors`] (0: it succeeded).
    pub error: u32,
}

/// Counts and latencies of one worker (or, merged, of the whole run).
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of every recorded RPC, in nanoseconds.
    pub latency: Histogram<u64>,
    /// RPCs by operation kind ([`OpKind::index`]).
    pub ops: [u64; OpKind::ALL.len()],
    /// Operations drawn from the mix, before the worker redirected the
    /// ones that could not apply (owner workers only).
    pub drawn: [u64; OpKind::ALL.len()],
    /// RPCs by gRPC status code number (0..=16).
    pub codes: [u64; 17],
    /// Simulated faults (one per address of a batch) whose call succeeded.
    pub faults: u64,
    /// Fault totals as the replies reported them (batch totals summed).
    pub fault_totals: FaultTotals,
    /// RPCs completed per 1-second bucket since the start of measurement.
    pub per_second: Vec<u64>,
    /// Simulated faults per 1-second bucket.
    pub faults_per_second: Vec<u64>,
    /// The error distribution (see the module docs).
    pub errors: Vec<ErrorRow>,
    /// Index of each key in `errors`.
    error_index: HashMap<ErrorKey, usize>,
    /// Calls that never reached a server (in `errors`, not in `ops`).
    pub unreachable: u64,
    /// Every measured call, if kept.
    pub rows: Option<Vec<Row>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: Histogram::new(3).expect("3 significant digits is valid"),
            ops: [0; OpKind::ALL.len()],
            drawn: [0; OpKind::ALL.len()],
            codes: [0; 17],
            faults: 0,
            fault_totals: FaultTotals::default(),
            per_second: Vec::new(),
            faults_per_second: Vec::new(),
            errors: Vec::new(),
            error_index: HashMap::new(),
            unreachable: 0,
            rows: None,
        }
    }
}

/// `msg` with every run of digits (and `0x` hex numbers) replaced by `N`:
/// `no such process 17` and `no such process 4` are one kind of failure.
pub fn normalize_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let b = msg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let hex = b[i] == b'0'
                && b.get(i + 1).is_some_and(|c| *c == b'x' || *c == b'X')
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            i += if hex { 2 } else { 1 };
            while i < b.len() && (b[i].is_ascii_digit() || (hex && b[i].is_ascii_hexdigit())) {
                i += 1;
            }
            out.push('N');
        } else {
            let c = msg[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

impl Recorder {
    /// A recorder that also keeps every call for the per-request CSV.
    pub fn with_rows() -> Self {
        Recorder {
            rows: Some(Vec::new()),
            ..Recorder::default()
        }
    }

    /// Records one finished RPC. `start` is when it was sent — or, in open
    /// loop, when it should have been sent (coordinated-omission
    /// correction) — and `end` when its reply arrived; `t0` is the start of
    /// measurement. `faults` is the number of simulated faults it carried
    /// (counted only if it succeeded).
    pub fn record(
        &mut self,
        kind: OpKind,
        t0: Instant,
        start: Instant,
        end: Instant,
        code: Code,
        faults: u64,
    ) {
        let ns = end.saturating_duration_since(start).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX).max(1);
        self.latency.record(ns).ok();
        self.ops[kind.index()] += 1;
        self.codes[(code as usize).min(16)] += 1;
        let sec = end.saturating_duration_since(t0).as_secs() as usize;
        if self.per_second.len() <= sec {
            self.per_second.resize(sec + 1, 0);
            self.faults_per_second.resize(sec + 1, 0);
        }
        self.per_second[sec] += 1;
        if code == Code::Ok {
            self.faults += faults;
            self.faults_per_second[sec] += faults;
        }
        if let Some(rows) = &mut self.rows {
            rows.push(Row {
                start_ns: start.saturating_duration_since(t0).as_nanos() as u64,
                latency_ns: ns,
                op: kind,
                code: (code as i32).clamp(0, 16) as u8,
                error: 0,
            });
        }
    }

    /// Records one RPC the server answered with an error status: as a
    /// request ([`Recorder::record`]) and in the error distribution.
    /// `expected`: why the workload expects it (see [`ErrorKey`]).
    pub fn record_failed(
        &mut self,
        kind: OpKind,
        t0: Instant,
        (start, end): (Instant, Instant),
        status: &Status,
        expected: Option<&'static str>,
    ) {
        self.record(kind, t0, start, end, status.code(), 0);
        let e = self.count_error(kind, status, expected, false);
        if let Some(last) = self.rows.as_mut().and_then(|r| r.last_mut()) {
            last.error = e as u32 + 1;
        }
    }

    /// Records a call that never reached a server: error distribution only
    /// (see the module docs).
    pub fn record_unreachable(&mut self, kind: OpKind, status: &Status) {
        self.unreachable += 1;
        self.count_error(kind, status, None, true);
    }

    /// Counts one failure in the error distribution; returns its row.
    fn count_error(
        &mut self,
        op: OpKind,
        status: &Status,
        expected: Option<&'static str>,
        unreachable: bool,
    ) -> usize {
        let mut key = ErrorKey {
            op,
            code: status.code() as i32,
            message: normalize_message(status.message()),
            expected,
            unreachable,
        };
        if !self.error_index.contains_key(&key) && self.errors.len() >= MAX_ERROR_ROWS {
            key.message = OTHER_MESSAGES.to_string();
        }
        self.add_error(key, 1, || status.message().to_string())
    }

    fn add_error(&mut self, key: ErrorKey, n: u64, example: impl FnOnce() -> String) -> usize {
        if let Some(&i) = self.error_index.get(&key) {
            self.errors[i].count += n;
            return i;
        }
        let i = self.errors.len();
        self.error_index.insert(key.clone(), i);
        self.errors.push(ErrorRow {
            key,
            count: n,
            example: example(),
        });
        i
    }

    /// Adds another worker's measurements.
    pub fn merge(&mut self, o: &Recorder) {
        self.latency.add(&o.latency).ok();
        for (a, b) in self.ops.iter_mut().zip(o.ops) {
            *a += b;
        }
        for (a, b) in self.drawn.iter_mut().zip(o.drawn) {
            *a += b;
        }
        for (a, b) in self.codes.iter_mut().zip(o.codes) {
            *a += b;
        }
        self.faults += o.faults;
        add_totals(&mut self.fault_totals, &o.fault_totals);
        if self.per_second.len() < o.per_second.len() {
            self.per_second.resize(o.per_second.len(), 0);
            self.faults_per_second.resize(o.per_second.len(), 0);
        }
        for (i, (n, f)) in o.per_second.iter().zip(&o.faults_per_second).enumerate() {
            self.per_second[i] += n;
            self.faults_per_second[i] += f;
        }
        // Error rows: merged by key (the merged table may exceed
        // MAX_ERROR_ROWS by the other recorder's rows: bounded all the same).
        let remap: Vec<usize> = o
            .errors
            .iter()
            .map(|r| self.add_error(r.key.clone(), r.count, || r.example.clone()))
            .collect();
        self.unreachable += o.unreachable;
        if let Some(theirs) = &o.rows {
            let mine = self.rows.get_or_insert_with(Vec::new);
            mine.extend(theirs.iter().map(|r| Row {
                error: if r.error == 0 {
                    0
                } else {
                    remap[r.error as usize - 1] as u32 + 1
                },
                ..*r
            }));
        }
    }

    /// All recorded RPCs.
    pub fn requests(&self) -> u64 {
        self.ops.iter().sum()
    }

    /// RPCs whose status was not OK.
    pub fn errors(&self) -> u64 {
        self.requests() - self.codes[0]
    }

    /// RPCs that failed as the workload expects (labelled rows).
    pub fn expected_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|r| r.key.expected.is_some())
            .map(|r| r.count)
            .sum()
    }

    /// A latency quantile (0..1) as a Duration.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_quantile(q))
    }
}

impl ErrorRow {
    /// `NOT_FOUND`, ...
    pub fn code_name(&self) -> &'static str {
        code_name(Code::from(self.key.code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_merge() {
        let t0 = Instant::now();
        let mut a = Recorder::default();
        a.record(
            OpKind::Fault,
            t0,
            t0,
            t0 + Duration::from_micros(100),
            Code::Ok,
            16,
        );
        let mut b = Recorder::default();
        b.record(
            OpKind::Mmap,
            t0,
            t0 + Duration::from_secs(1),
            t0 + Duration::from_millis(1500),
            Code::NotFound,
            0,
        );
        a.merge(&b);
        assert_eq!(a.requests(), 2);
        assert_eq!(a.errors(), 1);
        assert_eq!(a.faults, 16);
        assert_eq!(a.per_second, vec![1, 1]);
        assert_eq!(a.faults_per_second, vec![16, 0]);
        assert!(a.quantile(1.0) >= Duration::from_millis(499));
    }

    #[test]
    fn messages_are_grouped_without_their_numbers() {
        assert_eq!(
            normalize_message("no such process 17 at 0x7f00a000, len 4096"),
            "no such process N at N, len N"
        );
        assert_eq!(normalize_message("µs 0xzz 0xAbc"), "µs Nxzz N");
    }

    #[test]
    fn error_distribution_by_operation_code_and_message() {
        let t0 = Instant::now();
        let span = (t0, t0 + Duration::from_micros(10));
        let mut a = Recorder::with_rows();
        a.record_failed(
            OpKind::Mmap,
            t0,
            span,
            &Status::already_exists("[0x1000, 0x2000) is mapped"),
            Some("MAP_FIXED_NOREPLACE"),
        );
        a.record_failed(
            OpKind::Fault,
            t0,
            span,
            &Status::not_found("no such process 3"),
            None,
        );
        let mut b = Recorder::with_rows();
        b.record_failed(
            OpKind::Fault,
            t0,
            span,
            &Status::not_found("no such process 9"),
            None,
        );
        b.record_unreachable(OpKind::Fault, &Status::unavailable("tcp connect error"));
        a.merge(&b);
        // Two requests of one kind, one of another; the unreachable call
        // is in the table but not a request.
        assert_eq!(a.requests(), 3);
        assert_eq!(a.errors(), 3);
        assert_eq!(a.expected_errors(), 1);
        assert_eq!(a.unreachable, 1);
        assert_eq!(a.errors.len(), 3);
        let nf = &a.errors[1];
        assert_eq!(
            (nf.key.op, nf.code_name(), nf.key.message.as_str(), nf.count),
            (OpKind::Fault, "NOT_FOUND", "no such process N", 2)
        );
        assert_eq!(nf.example, "no such process 3");
        assert!(a.errors[2].key.unreachable);
        // Rows point at their error row after the merge.
        let rows = a.rows.as_ref().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].error, 2, "b's NOT_FOUND row remapped to a's");
        assert_eq!(a.errors[rows[0].error as usize - 1].key.op, OpKind::Mmap);
    }

    #[test]
    fn error_table_stays_bounded() {
        let t0 = Instant::now();
        let mut r = Recorder::default();
        for i in 0..1000 {
            // Messages that differ in words, not numbers: all distinct.
            let msg = format!("failure {}", "x".repeat(i % 200 + 1));
            r.record_failed(OpKind::Fault, t0, (t0, t0), &Status::internal(msg), None);
        }
        assert_eq!(r.errors.len(), MAX_ERROR_ROWS + 1);
        assert_eq!(r.errors.iter().map(|e| e.count).sum::<u64>(), 1000);
        assert!(r.errors.iter().any(|e| e.key.message == OTHER_MESSAGES));
    }
}
