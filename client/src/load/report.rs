//! The load report: text (ghz-like), JSON and CSV.
//!
//! [`Summary`] is computed once from a [`LoadResult`] and is what every
//! output format shows, so the formats cannot disagree. Latencies are in
//! milliseconds in every format.

use crate::error::code_name;
use crate::load::LoadResult;
use crate::load::mix::OpKind;
use crate::stats::{StatsDelta, pct};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use tonic::Code;
use vmasim_proto::v1::FaultTotals;

/// One bar of the latency histogram.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Upper bound of the bucket, ms (inclusive).
    pub upper_ms: f64,
    /// Requests in the bucket.
    pub count: u64,
}

/// Latency statistics, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Fastest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the start of measurement.
    pub second: usize,
    /// RPCs completed in that second.
    pub requests: u64,
    /// Simulated faults completed in that second.
    pub faults: u64,
}

/// Everything the reports show.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The run's shape, one line.
    pub description: String,
    /// The configuration.
    pub config: crate::load::LoadConfig,
    /// RPCs recorded.
    pub count: u64,
    /// RPCs with a non-OK status.
    pub errors: u64,
    /// Measured time, s.
    pub total_secs: f64,
    /// RPCs per second.
    pub rps: f64,
    /// Simulated faults (successful calls only).
    pub faults: u64,
    /// Simulated faults per second.
    pub faults_per_sec: f64,
    /// Latency statistics.
    pub latency_ms: Latency,
    /// Latency histogram (log-spaced buckets).
    pub histogram: Vec<Bucket>,
    /// RPCs per operation kind.
    pub operations: Vec<(String, u64)>,
    /// RPCs per status code name.
    pub status_codes: Vec<(String, u64)>,
    /// Fault outcomes/paths as the replies reported them.
    pub fault_outcomes: Vec<(String, u64)>,
    /// Throughput per second.
    pub timeline: Vec<Second>,
    /// Server counters over the measured time.
    pub server: Option<StatsDelta>,
    /// `--verify` divergences.
    pub divergences: Vec<crate::load::worker::Divergence>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Latency {
    /// The statistics of a histogram of nanoseconds (all zero if empty).
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            min: ms(h.min()),
            mean: h.mean() / 1e6,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Fault totals as named rows.
pub fn totals_rows(t: &FaultTotals) -> Vec<(String, u64)> {
    [
        ("anon_zero_fill", t.anon_zero_fill),
        ("file_page", t.file_page),
        ("cow_break", t.cow_break),
        ("already_present", t.already_present),
        ("segv_maperr", t.segv_maperr),
        ("segv_accerr", t.segv_accerr),
        ("per_vma_lock", t.per_vma_lock),
        ("mmap_lock_fallback", t.mmap_lock_fallback),
        ("mmap_lock", t.mmap_lock),
        ("retries", t.retries),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect()
}

impl Summary {
    /// Computes the summary of a run.
    pub fn new(r: &LoadResult) -> Self {
        let rec = &r.rec;
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        let h = &rec.latency;
        let count = rec.requests();
        let latency_ms = Latency::of(h);
        Summary {
            description: r.config.describe(),
            config: r.config.clone(),
            count,
            errors: rec.errors(),
            total_secs: secs,
            rps: count as f64 / secs,
            faults: rec.faults,
            faults_per_sec: rec.faults as f64 / secs,
            latency_ms,
            histogram: histogram(h, 12),
            operations: OpKind::ALL
                .iter()
                .filter(|k| rec.ops[k.index()] > 0)
                .map(|k| (k.name().to_string(), rec.ops[k.index()]))
                .collect(),
            status_codes: rec
                .codes
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| (code_name(Code::from(c as i32)).to_string(), *n))
                .collect(),
            fault_outcomes: totals_rows(&rec.fault_totals),
            timeline: rec
                .per_second
                .iter()
                .zip(&rec.faults_per_second)
                .enumerate()
                .map(|(second, (&requests, &faults))| Second {
                    second,
                    requests,
                    faults,
                })
                .collect(),
            server: r.server.clone(),
            divergences: r.divergences.clone(),
        }
    }

    /// The ghz-like text report.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(o, "Summary:");
        let _ = writeln!(o, "  Run:          {}", self.description);
        let _ = writeln!(
            o,
            "  Count:        {} requests ({} errors)",
            self.count, self.errors
        );
        let _ = writeln!(o, "  Total:        {:.2} s", self.total_secs);
        let _ = writeln!(o, "  Slowest:      {:.3} ms", l.max);
        let _ = writeln!(o, "  Fastest:      {:.3} ms", l.min);
        let _ = writeln!(o, "  Average:      {:.3} ms", l.mean);
        let _ = writeln!(o, "  Requests/sec: {:.1}", self.rps);
        let _ = writeln!(
            o,
            "  Faults/sec:   {:.1} (simulated; {} faults)",
            self.faults_per_sec, self.faults
        );
        let _ = writeln!(o, "\nResponse time histogram:");
        let maxc = self
            .histogram
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(0)
            .max(1);
        for b in &self.histogram {
            let bar = "∎".repeat(((b.count as f64 / maxc as f64) * 40.0).round() as usize);
            let _ = writeln!(o, "  {:>10.3} ms [{:>9}] |{bar}", b.upper_ms, b.count);
        }
        let _ = writeln!(o, "\nLatency distribution:");
        for (q, v) in [
            ("50", l.p50),
            ("90", l.p90),
            ("99", l.p99),
            ("99.9", l.p999),
        ] {
            let _ = writeln!(o, "  {q:>4} % in {v:.3} ms");
        }
        let _ = writeln!(o, "\nOperations:");
        for (k, n) in &self.operations {
            let _ = writeln!(o, "  {k:<10} {n}");
        }
        let _ = writeln!(o, "\nStatus code distribution:");
        for (c, n) in &self.status_codes {
            let _ = writeln!(o, "  [{c}] {n} responses");
        }
        let _ = writeln!(o, "\nFault outcomes (client side):");
        for (k, n) in self.fault_outcomes.iter().filter(|(_, n)| *n > 0) {
            let _ = writeln!(o, "  {k:<20} {n}");
        }
        match &self.server {
            Some(d) => {
                let _ = writeln!(o, "\nServer-side (Stats delta over the measured time):");
                for (k, v) in d.summary_rows() {
                    let _ = writeln!(o, "  {k:<36} {v}");
                }
                let _ = writeln!(
                    o,
                    "  {:<36} {:.4}",
                    "retries per fault", d.retries_per_fault
                );
            }
            None => {
                let _ = writeln!(o, "\nServer-side: Stats unavailable");
            }
        }
        if !self.divergences.is_empty() {
            let _ = writeln!(o, "\nVERIFY: {} divergence(s):", self.divergences.len());
            for d in &self.divergences {
                let _ = write!(o, "{d}");
            }
        } else if self.config.verify {
            let _ = writeln!(o, "\nVERIFY: every reply matched the shadow model");
        }
        o
    }

    /// JSON (pretty).
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("summary serializes")
    }

    /// CSV: one `section,key,value` row per number.
    pub fn csv(&self) -> String {
        let mut o = String::from("section,key,value\n");
        let mut row = |s: &str, k: &str, v: String| {
            let _ = writeln!(o, "{s},{},{v}", k.replace(',', ";"));
        };
        row("summary", "count", self.count.to_string());
        row("summary", "errors", self.errors.to_string());
        row("summary", "total_secs", format!("{:.6}", self.total_secs));
        row("summary", "rps", format!("{:.3}", self.rps));
        row("summary", "faults", self.faults.to_string());
        row(
            "summary",
            "faults_per_sec",
            format!("{:.3}", self.faults_per_sec),
        );
        let l = &self.latency_ms;
        for (k, v) in [
            ("min", l.min),
            ("mean", l.mean),
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("max", l.max),
        ] {
            row("latency_ms", k, format!("{v:.6}"));
        }
        for b in &self.histogram {
            row(
                "histogram_le_ms",
                &format!("{:.6}", b.upper_ms),
                b.count.to_string(),
            );
        }
        for (k, n) in &self.operations {
            row("operation", k, n.to_string());
        }
        for (k, n) in &self.status_codes {
            row("status", k, n.to_string());
        }
        for (k, n) in &self.fault_outcomes {
            row("fault", k, n.to_string());
        }
        for s in &self.timeline {
            row(
                "requests_per_second",
                &s.second.to_string(),
                s.requests.to_string(),
            );
            row(
                "faults_per_second",
                &s.second.to_string(),
                s.faults.to_string(),
            );
        }
        if let Some(d) = &self.server {
            for (k, v) in &d.values {
                row("server", k, v.to_string());
            }
            row("server", "reuse_rate", format!("{:.6}", d.reuse_rate));
            row(
                "server",
                "call_rcu_avoided_rate",
                format!("{:.6}", d.call_rcu_avoided_rate),
            );
        }
        o
    }

    /// Writes the summary to `path`, as JSON (`.json`) or CSV (`.csv`).
    pub fn write(&self, path: &Path) -> Result<(), crate::error::CliError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body = match ext.as_str() {
            "json" => self.json(),
            "csv" => self.csv(),
            _ => {
                return Err(crate::error::CliError::Usage(format!(
                    "--output {}: use a .json or .csv file name",
                    path.display()
                )));
            }
        };
        std::fs::write(path, body).map_err(|e| {
            crate::error::CliError::Other(format!("cannot write {}: {e}", path.display()))
        })
    }

    /// One-line percentage helper for callers.
    pub fn error_rate(&self) -> String {
        pct(if self.count == 0 {
            0.0
        } else {
            self.errors as f64 / self.count as f64
        })
    }
}

/// `n` log-spaced buckets between the fastest and the slowest request.
fn histogram(h: &hdrhistogram::Histogram<u64>, n: usize) -> Vec<Bucket> {
    if h.is_empty() {
        return Vec::new();
    }
    let (lo, hi) = (h.min().max(1) as f64, h.max().max(1) as f64);
    let bounds: Vec<u64> = if hi <= lo * 1.01 {
        vec![h.max()]
    } else {
        let r = (hi / lo).powf(1.0 / n as f64);
        (1..=n)
            .map(|i| (lo * r.powi(i as i32)).ceil() as u64)
            .collect()
    };
    let mut counts = vec![0u64; bounds.len()];
    for v in h.iter_recorded() {
        let x = v.value_iterated_to();
        let i = bounds
            .iter()
            .position(|&b| x <= b)
            .unwrap_or(bounds.len() - 1);
        counts[i] += v.count_at_value();
    }
    bounds
        .into_iter()
        .zip(counts)
        .map(|(b, count)| Bucket {
            upper_ms: ms(b),
            count,
        })
        .collect()
}

/// Test data shared by the report tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::load::mix::OpKind;
    use crate::load::recorder::Recorder;
    use crate::load::{LoadConfig, LoadResult};
    use std::time::{Duration, Instant};
    use tonic::Code;

    /// A fake run: 1000 requests over 3 s, 1% NOT_FOUND.
    pub(crate) fn sample() -> LoadResult {
        let t0 = Instant::now();
        let mut rec = Recorder::default();
        for i in 0..1000u64 {
            let start = t0 + Duration::from_millis(i * 3);
            let code = if i % 100 == 0 {
                Code::NotFound
            } else {
                Code::Ok
            };
            rec.record(
                if i % 10 == 0 {
                    OpKind::Mmap
                } else {
                    OpKind::Fault
                },
                t0,
                start,
                start + Duration::from_micros(50 + i * 7),
                code,
                if i % 10 == 0 { 0 } else { 16 },
            );
        }
        LoadResult {
            config: LoadConfig::default(),
            rec,
            elapsed: Duration::from_secs(3),
            server: None,
            divergences: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_agree() {
        let s = Summary::new(&tests_support::sample());
        assert_eq!(s.count, 1000);
        assert_eq!(s.errors, 10);
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 1000);
        let t = s.text();
        assert!(t.contains("Requests/sec"));
        assert!(t.contains("[NOT_FOUND] 10 responses"));
        let j: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
        assert_eq!(j["count"], 1000);
        let c = s.csv();
        assert!(c.starts_with("section,key,value\n"));
        assert!(c.lines().all(|l| l.split(',').count() == 3), "{c}");
    }
}
