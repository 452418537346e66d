//! Per-worker measurements, merged into one [`Recorder`] at the end.
//!
//! Each worker owns a `Recorder` (no sharing, no locks on the hot path);
//! the run merges them when every worker is done. Latency goes into an
//! HdrHistogram in nanoseconds (3 significant digits); throughput is
//! counted in 1-second buckets from the start of measurement, for the
//! throughput-over-time chart.

use crate::load::mix::OpKind;
use crate::stats::add_totals;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use tonic::Code;
use vmasim_proto::v1::FaultTotals;

/// Counts and latencies of one worker (or, merged, of the whole run).
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of every recorded RPC, in nanoseconds.
    pub latency: Histogram<u64>,
    /// RPCs by operation kind ([`OpKind::index`]).
    pub ops: [u64; OpKind::ALL.len()],
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
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: Histogram::new(3).expect("3 significant digits is valid"),
            ops: [0; OpKind::ALL.len()],
            codes: [0; 17],
            faults: 0,
            fault_totals: FaultTotals::default(),
            per_second: Vec::new(),
            faults_per_second: Vec::new(),
        }
    }
}

impl Recorder {
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
        self.latency
            .record(u64::try_from(ns).unwrap_or(u64::MAX).max(1))
            .ok();
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
    }

    /// Adds another worker's measurements.
    pub fn merge(&mut self, o: &Recorder) {
        self.latency.add(&o.latency).ok();
        for (a, b) in self.ops.iter_mut().zip(o.ops) {
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
    }

    /// All recorded RPCs.
    pub fn requests(&self) -> u64 {
        self.ops.iter().sum()
    }

    /// RPCs whose status was not OK.
    pub fn errors(&self) -> u64 {
        self.requests() - self.codes[0]
    }

    /// A latency quantile (0..1) as a Duration.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_quantile(q))
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
}
