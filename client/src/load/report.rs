//! The load report: text (ghz-like), JSON and CSV.
//!
//! [`Summary`] is computed once from a [`LoadResult`] and is what the text,
//! JSON and HTML reports show, so they cannot disagree. Latencies are in
//! milliseconds in every format. The JSON is one object (ghz's shape:
//! `date`, `target`, `version`, `options`, then the figures; every
//! distribution an object or a list of objects). The CSV is one row per
//! request ([`csv_rows`]), as ghz's `-O csv`.
//!
//! What the report says it ran is what ran: requests that found no
//! server are not requests (they are listed as `unreachable` in the error
//! distribution), the operations the worker drew from the mix are shown
//! beside those it sent after redirecting the ones that could not apply,
//! and under `--rps` the offered rate is shown beside the achieved one,
//! with a warning when the target was not met.

use crate::error::code_name;
use crate::load::LoadResult;
use crate::load::mix::OpKind;
use crate::load::recorder::Recorder;
use crate::stats::{StatsDelta, pct, ser_counts};
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

/// The percentiles every report lists (ghz's list).
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// An achieved rate below this share of `--rps` gets a warning.
pub const RATE_MET: f64 = 0.95;

/// One latency percentile.
#[derive(Debug, Clone, Serialize)]
pub struct Percentile {
    /// 10, 25, ..., 99.9.
    pub percentile: f64,
    /// Latency at it, ms.
    pub latency_ms: f64,
}

/// One line of the error distribution.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorLine {
    /// Operation (`mmap`, `fault`, ...).
    pub operation: String,
    /// gRPC status code name.
    pub code: String,
    /// The message with numbers replaced by `N`.
    pub message: String,
    /// Calls.
    pub count: u64,
    /// Why the workload expects it; absent: unexpected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// False: the call never reached a server (not counted as a request).
    pub reached_server: bool,
    /// One original message.
    pub example: String,
}

/// Latency statistics, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Fastest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 25th percentile.
    pub p25: f64,
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
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
    /// When measurement started, RFC 3339 (UTC).
    pub date: String,
    /// The server's URL.
    pub target: String,
    /// vmasim version of the client.
    pub version: String,
    /// The run's shape, one line.
    pub description: String,
    /// The configuration (every option, defaults included).
    #[serde(rename = "options")]
    pub config: crate::load::LoadConfig,
    /// Why measurement ended.
    pub stopped: crate::load::StopReason,
    /// RPCs the server answered (successes and error statuses).
    pub count: u64,
    /// RPCs with a non-OK status.
    pub errors: u64,
    /// Of `errors`, those the workload expects (labelled in
    /// `error_distribution`).
    pub expected_errors: u64,
    /// Calls that never reached a server: not in `count`, rps or latency.
    pub unreachable: u64,
    /// Measured time, s.
    pub total_secs: f64,
    /// RPCs per second achieved (`count / total_secs`).
    pub rps: f64,
    /// `--rps`: the rate offered.
    pub offered_rps: Option<f64>,
    /// Open loop: requests sent behind their schedule (every worker busy).
    pub late_requests: u64,
    /// Set when `--rps` was not met (achieved below 95 % of it).
    pub rate_warning: Option<String>,
    /// Simulated faults (successful calls only).
    pub faults: u64,
    /// Simulated faults per second.
    pub faults_per_sec: f64,
    /// Latency statistics.
    pub latency_ms: Latency,
    /// Latency at [`PERCENTILES`].
    pub latency_distribution: Vec<Percentile>,
    /// Latency histogram (log-spaced buckets).
    pub histogram: Vec<Bucket>,
    /// RPCs sent per operation kind (after redirection).
    #[serde(serialize_with = "ser_counts")]
    pub operations: Vec<(String, u64)>,
    /// Operations drawn from `--mix` by the owner workers, before those
    /// that could not apply were redirected (mmap at the VMA cap becomes
    /// munmap, munmap/mprotect without a VMA become mmap, fork past twice
    /// `--processes` becomes exit).
    #[serde(serialize_with = "ser_counts")]
    pub drawn: Vec<(String, u64)>,
    /// RPCs per status code name.
    #[serde(serialize_with = "ser_counts")]
    pub status_codes: Vec<(String, u64)>,
    /// Failed calls by operation, code and message.
    pub error_distribution: Vec<ErrorLine>,
    /// Fault outcomes/paths as the replies reported them.
    #[serde(serialize_with = "ser_counts")]
    pub fault_outcomes: Vec<(String, u64)>,
    /// Throughput per second.
    pub timeline: Vec<Second>,
    /// Server counters over the measured time.
    pub server: Option<StatsDelta>,
    /// `--verify` divergences.
    pub divergences: Vec<crate::load::divergence::Divergence>,
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
            p10: ms(h.value_at_quantile(0.1)),
            p25: ms(h.value_at_quantile(0.25)),
            p50: ms(h.value_at_quantile(0.5)),
            p75: ms(h.value_at_quantile(0.75)),
            p90: ms(h.value_at_quantile(0.9)),
            p95: ms(h.value_at_quantile(0.95)),
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
        ("sigbus", t.sigbus),
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
        let rps = count as f64 / secs;
        let rate_warning = r.config.rps.filter(|&o| rps < RATE_MET * o).map(|o| {
            format!(
                "the offered rate was not met: {rps:.1} of {o} requests/s ({:.0} %); {} requests went out late, with latency counted from when they were due — raise --concurrency or lower --rps",
                100.0 * rps / o,
                r.late
            )
        });
        let kinds = |v: &[u64]| -> Vec<(String, u64)> {
            OpKind::ALL
                .iter()
                .filter(|k| v[k.index()] > 0)
                .map(|k| (k.name().to_string(), v[k.index()]))
                .collect()
        };
        Summary {
            date: humantime::format_rfc3339_seconds(r.started).to_string(),
            target: r.target.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: r.config.describe(),
            config: r.config.clone(),
            stopped: r.stopped.clone(),
            count,
            errors: rec.errors(),
            expected_errors: rec.expected_errors(),
            unreachable: rec.unreachable,
            total_secs: secs,
            rps,
            offered_rps: r.config.rps,
            late_requests: r.late,
            rate_warning,
            faults: rec.faults,
            faults_per_sec: rec.faults as f64 / secs,
            latency_distribution: PERCENTILES
                .iter()
                .map(|&p| Percentile {
                    percentile: p,
                    latency_ms: if h.is_empty() {
                        0.0
                    } else {
                        ms(h.value_at_quantile(p / 100.0))
                    },
                })
                .collect(),
            latency_ms,
            histogram: histogram(h, 12),
            operations: kinds(&rec.ops),
            drawn: kinds(&rec.drawn),
            status_codes: rec
                .codes
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| (code_name(Code::from(c as i32)).to_string(), *n))
                .collect(),
            error_distribution: {
                let mut v: Vec<ErrorLine> = rec
                    .errors
                    .iter()
                    .map(|e| ErrorLine {
                        operation: e.key.op.name().to_string(),
                        code: e.code_name().to_string(),
                        message: e.key.message.clone(),
                        count: e.count,
                        expected: e.key.expected.map(str::to_string),
                        reached_server: !e.key.unreachable,
                        example: e.example.clone(),
                    })
                    .collect();
                // The server's unexpected answers first, then the expected
                // ones, then calls that found no server; by count within.
                let rank = |e: &ErrorLine| {
                    (
                        !e.reached_server,
                        e.expected.is_some(),
                        std::cmp::Reverse(e.count),
                    )
                };
                v.sort_by_key(rank);
                v
            },
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
        let _ = writeln!(o, "  Target:       {} at {}", self.target, self.date);
        let _ = writeln!(o, "  Stopped:      {}", self.stopped);
        let _ = writeln!(
            o,
            "  Count:        {} requests ({} errors, {} of them expected)",
            self.count, self.errors, self.expected_errors
        );
        if self.unreachable > 0 {
            let _ = writeln!(
                o,
                "  Unreachable:  {} call(s) found no server (not counted as requests)",
                self.unreachable
            );
        }
        let _ = writeln!(o, "  Total:        {:.2} s", self.total_secs);
        let _ = writeln!(o, "  Slowest:      {:.3} ms", l.max);
        let _ = writeln!(o, "  Fastest:      {:.3} ms", l.min);
        let _ = writeln!(o, "  Average:      {:.3} ms", l.mean);
        let _ = writeln!(o, "  Requests/sec: {:.1}", self.rps);
        if let Some(offered) = self.offered_rps {
            let _ = writeln!(
                o,
                "  Offered:      {offered} requests/s ({} sent late)",
                self.late_requests
            );
        }
        if let Some(w) = &self.rate_warning {
            let _ = writeln!(o, "  WARNING:      {w}");
        }
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
        for p in &self.latency_distribution {
            let _ = writeln!(o, "  {:>4} % in {:.3} ms", p.percentile, p.latency_ms);
        }
        let _ = writeln!(o, "\nOperations:");
        let drawn_total: u64 = self.drawn.iter().map(|x| x.1).sum();
        if drawn_total > 0 {
            let _ = writeln!(o, "  {:<10} {:>10} {:>10}", "", "sent", "drawn");
        }
        for (k, n) in &self.operations {
            if drawn_total > 0 {
                let d = self.drawn.iter().find(|x| x.0 == *k).map_or(0, |x| x.1);
                let _ = writeln!(o, "  {k:<10} {n:>10} {d:>10}");
            } else {
                let _ = writeln!(o, "  {k:<10} {n}");
            }
        }
        if drawn_total > 0 {
            let _ = writeln!(
                o,
                "  (drawn: picked from --mix; an operation that cannot apply is sent as another: mmap at the VMA cap as munmap, munmap/mprotect/madvise with no VMA as mmap, fork past 2x --processes as exit; spawn, brk and maps are the workers' own, and --threads fault threads send faults outside the mix)"
            );
        }
        let _ = writeln!(o, "\nStatus code distribution:");
        for (c, n) in &self.status_codes {
            let _ = writeln!(o, "  [{c}] {n} responses");
        }
        if !self.error_distribution.is_empty() {
            let _ = writeln!(o, "\nError distribution (calls, operation, code: message):");
            for e in &self.error_distribution {
                let tag = match (&e.expected, e.reached_server) {
                    (_, false) => " (no server: not a request)".to_string(),
                    (Some(why), _) => format!(" (expected: {why})"),
                    (None, _) => String::new(),
                };
                let _ = writeln!(
                    o,
                    "  {:>8}  {:<8} {}: {}{tag}",
                    e.count, e.operation, e.code, e.message
                );
            }
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

    /// One-line percentage helper for callers.
    pub fn error_rate(&self) -> String {
        pct(if self.count == 0 {
            0.0
        } else {
            self.errors as f64 / self.count as f64
        })
    }
}

/// The report format `-o PATH` asks for, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The summary as one JSON object.
    Json,
    /// One row per request.
    Csv,
}

impl Format {
    /// `.json` or `.csv` (any case); anything else is a usage error.
    pub fn of(path: &Path) -> Result<Self, crate::error::CliError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            _ => Err(crate::error::CliError::Usage(format!(
                "--output {}: use a .json or .csv file name",
                path.display()
            ))),
        }
    }
}

/// Header of the per-request CSV.
pub const CSV_HEADER: &str = "start_ms,operation,latency_ms,status,error,expected";

/// The per-request CSV (ghz's `-O csv`): one row per measured request,
/// in send order: when it was sent (ms since the start of measurement;
/// open loop: when it was due), its operation, latency, status code name,
/// error message (numbers as `N`, empty on success) and why the error is
/// expected (empty: unexpected or none). Calls that found no server are
/// not requests and have no row.
pub fn csv_rows(rec: &Recorder) -> String {
    let mut rows = rec.rows.clone().unwrap_or_default();
    rows.sort_by_key(|r| r.start_ns);
    let mut o = String::with_capacity(48 * (rows.len() + 1));
    o.push_str(CSV_HEADER);
    o.push('\n');
    for r in &rows {
        let (msg, why) = match r.error {
            0 => ("", ""),
            i => {
                let e = &rec.errors[i as usize - 1];
                (e.key.message.as_str(), e.key.expected.unwrap_or(""))
            }
        };
        let _ = writeln!(
            o,
            "{:.6},{},{:.6},{},{},{}",
            ms(r.start_ns),
            r.op.name(),
            ms(r.latency_ns),
            code_name(Code::from(r.code as i32)),
            csv_field(msg),
            csv_field(why)
        );
    }
    o
}

/// One CSV field, quoted if it must be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
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
    use crate::load::{LoadConfig, LoadResult, StopReason};
    use std::time::{Duration, Instant, SystemTime};
    use tonic::{Code, Status};

    /// A fake run: 1000 requests over 3 s, 1% NOT_FOUND (every 100th, a
    /// `fault`), 2 calls that found no server.
    pub(crate) fn sample() -> LoadResult {
        let t0 = Instant::now();
        let mut rec = Recorder::with_rows();
        for i in 0..1000u64 {
            let start = t0 + Duration::from_millis(i * 3);
            let end = start + Duration::from_micros(50 + i * 7);
            let kind = if i % 10 == 5 {
                OpKind::Mmap
            } else {
                OpKind::Fault
            };
            if i % 100 == 0 {
                let s = Status::not_found(format!("no such process {i}, \"quoted\""));
                rec.record_failed(kind, t0, (start, end), &s, None);
            } else {
                rec.record(kind, t0, start, end, Code::Ok, 16);
            }
        }
        for _ in 0..2 {
            rec.record_unreachable(OpKind::Fault, &Status::unavailable("tcp connect error"));
        }
        LoadResult {
            config: LoadConfig::default(),
            rec,
            elapsed: Duration::from_secs(3),
            server: None,
            divergences: Vec::new(),
            stopped: StopReason::Duration,
            late: 0,
            target: "http://127.0.0.1:9".into(),
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
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
        assert_eq!(s.unreachable, 2);
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 1000);
        let t = s.text();
        assert!(t.contains("Requests/sec: 333.3"), "{t}");
        assert!(t.contains("[NOT_FOUND] 10 responses"));
        assert!(
            t.contains("      10  fault    NOT_FOUND: no such process N, "),
            "{t}"
        );
        assert!(t.contains("2 call(s) found no server"), "{t}");
        // ghz's percentile list, in order.
        let ps: Vec<f64> = s
            .latency_distribution
            .iter()
            .map(|p| p.percentile)
            .collect();
        assert_eq!(ps, PERCENTILES);
        assert!(
            s.latency_distribution
                .windows(2)
                .all(|w| w[0].latency_ms <= w[1].latency_ms)
        );
        for p in ["10", "25", "75", "95", "99.9"] {
            assert!(t.contains(&format!(" {p} % in ")), "{p}: {t}");
        }

        // JSON: one object, distributions as objects, the run described.
        let j: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
        assert_eq!(j["count"], 1000);
        assert_eq!(j["date"], "2027-01-15T08:00:00Z");
        assert_eq!(j["target"], "http://127.0.0.1:9");
        assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(j["options"]["concurrency"], 8);
        assert_eq!(j["stopped"]["reason"], "duration");
        assert_eq!(j["status_codes"]["NOT_FOUND"], 10);
        assert_eq!(j["status_codes"]["OK"], 990);
        assert_eq!(j["operations"]["mmap"], 100);
        assert_eq!(j["latency_distribution"][2]["percentile"], 50.0);
        let errs = j["error_distribution"].as_array().unwrap();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0]["code"], "NOT_FOUND");
        assert_eq!(errs[0]["count"], 10);
        assert_eq!(errs[0]["reached_server"], true);
        assert_eq!(errs[1]["reached_server"], false);

        // CSV: a header and one row per request, six fields each.
        let c = csv_rows(&tests_support::sample().rec);
        let mut lines = c.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER));
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 1000);
        assert!(rows[0].starts_with("0.000000,fault,"), "{}", rows[0]);
        assert!(
            rows[0].ends_with(",NOT_FOUND,\"no such process N, \"\"quoted\"\"\","),
            "{}",
            rows[0]
        );
        assert!(rows[1].ends_with(",OK,,"), "{}", rows[1]);
        assert_eq!(
            rows.iter().filter(|r| r.contains(",NOT_FOUND,")).count(),
            10
        );
    }

    #[test]
    fn unmet_offered_rate_is_reported() {
        // 1000 requests in 3 s is 333/s: an --rps of 1000 was not met ...
        let mut r = tests_support::sample();
        r.config.rps = Some(1000.0);
        r.late = 600;
        let s = Summary::new(&r);
        let w = s.rate_warning.as_deref().expect("warned");
        assert!(
            w.contains("333.3 of 1000") && w.contains("600 requests went out late"),
            "{w}"
        );
        assert!(
            s.text()
                .contains("Offered:      1000 requests/s (600 sent late)")
        );
        // ... one of 340 was (within 95 %), and closed loop offers nothing.
        r.config.rps = Some(340.0);
        assert!(Summary::new(&r).rate_warning.is_none());
        r.config.rps = None;
        let s = Summary::new(&r);
        assert!(s.rate_warning.is_none() && s.offered_rps.is_none());
        assert!(!s.text().contains("Offered:"));
    }
}
