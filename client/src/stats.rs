//! Server counters: `vmasim stats` output and before/after deltas.
//!
//! [`fields`] lists every number of a `StatsResponse` once, with its name
//! and whether it is a counter or a gauge; the table, the JSON, the deltas
//! of `load`/`demo` and the HTML report all come from that one list, so a
//! new field shows up everywhere by adding one line.
//!
//! One name per concept: a field is named as the `StatsResponse` field,
//! which is the Prometheus metric without `vmasim_` and `_total`, with its
//! label value appended (`vma_lock_success` is
//! `vmasim_vma_lock_total{result="success"}`, `vma_allocations_reused` is
//! `vmasim_vma_allocations_total{source="reused"}`); a ratio is named as
//! its recording rule (`vma_reuse_rate` is `vmasim:vma_reuse_rate:ratio_rate1m`).
//! The test `names_follow_the_metrics` checks the rule on the server's own
//! metric names.
//!
//! Also the `FaultTotals` arithmetic every fault-counting caller shares
//! (`add_totals`, `single_totals`) and `ser_counts`, so that the load
//! generator's modules, which all report through these, import this file
//! and it imports none of them.

use crate::error::CliError;
use serde_json::{Map, Value, json};
use vmasim_proto::v1::{FaultTotals, StatsResponse};

/// Whether a number only grows (a `_total` metric) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic since server start; deltas are meaningful.
    Counter,
    /// Current value.
    Gauge,
}

/// Every numeric field of `s`: (name, value, kind), in proto order. The
/// `reuse_detected` map entries follow as `reuse_detected_{check}`.
pub fn fields(s: &StatsResponse) -> Vec<(String, u64, Kind)> {
    use Kind::*;
    let f = s.faults.unwrap_or_default();
    let mut v: Vec<(String, u64, Kind)> = [
        ("vma_lock_success", s.vma_lock_success, Counter),
        ("vma_lock_abort", s.vma_lock_abort, Counter),
        ("vma_lock_retry", s.vma_lock_retry, Counter),
        ("vma_lock_miss", s.vma_lock_miss, Counter),
        ("mmap_lock_fallbacks", s.mmap_lock_fallbacks, Counter),
        ("faults", f.faults, Counter),
        ("faults_anon_zero_fill", f.anon_zero_fill, Counter),
        ("faults_file_page", f.file_page, Counter),
        ("faults_cow_break", f.cow_break, Counter),
        ("faults_already_present", f.already_present, Counter),
        ("faults_segv_maperr", f.segv_maperr, Counter),
        ("faults_segv_accerr", f.segv_accerr, Counter),
        ("faults_sigbus", f.sigbus, Counter),
        ("faults_per_vma_lock", f.per_vma_lock, Counter),
        ("faults_mmap_lock_fallback", f.mmap_lock_fallback, Counter),
        ("faults_mmap_lock", f.mmap_lock, Counter),
        ("fault_retries", f.retries, Counter),
        ("vma_allocations_reused", s.vma_allocations_reused, Counter),
        ("vma_allocations_fresh", s.vma_allocations_fresh, Counter),
        (
            "vma_reuse_before_grace_period",
            s.vma_reuse_before_grace_period,
            Counter,
        ),
        ("vma_frees", s.vma_frees, Counter),
        ("call_rcu", s.call_rcu, Counter),
        ("call_rcu_avoided", s.call_rcu_avoided, Counter),
        ("grace_periods", s.grace_periods, Counter),
        ("pool_slots_live", s.pool_slots_live, Gauge),
        ("pool_slots_free", s.pool_slots_free, Gauge),
        ("pool_slots_waiting", s.pool_slots_waiting, Gauge),
        ("pool_slabs", s.pool_slabs, Gauge),
        ("pool_capacity_slots", s.pool_capacity_slots, Gauge),
        ("processes", s.processes, Gauge),
        (
            "processes_spawned_total",
            s.processes_spawned_total,
            Counter,
        ),
        ("vmas", s.vmas, Gauge),
        ("rss_pages", s.rss_pages, Gauge),
    ]
    .into_iter()
    .map(|(n, x, k)| (n.to_string(), x, k))
    .collect();
    let mut checks: Vec<_> = s.reuse_detected.iter().collect();
    checks.sort();
    for (check, n) in checks {
        v.push((format!("reuse_detected_{check}"), *n, Counter));
    }
    // The maps readers' counters, by the metrics' label values.
    for (base, map) in [
        ("maps_reads", &s.maps_reads),
        ("maps_vma_lock", &s.maps_vma_lock),
    ] {
        let mut e: Vec<_> = map.iter().collect();
        e.sort();
        for (label, n) in e {
            v.push((format!("{base}_{label}"), *n, Counter));
        }
    }
    v
}

/// `vmasim stats` as an aligned two-column table.
pub fn table(s: &StatsResponse) -> String {
    let mut out = format!(
        "{:<34} {}\n{:<34} {}\n{:<34} {}\n",
        "vma_cache", s.vma_cache, "fault_lock", s.fault_lock, "maps_reader", s.maps_reader
    );
    for (name, v, kind) in fields(s) {
        let tag = if kind == Kind::Gauge { " (gauge)" } else { "" };
        out.push_str(&format!("{name:<34} {v}{tag}\n"));
    }
    out
}

/// `vmasim stats --json`: one flat object, the same names as the table.
pub fn to_json(s: &StatsResponse) -> Value {
    let mut m = Map::new();
    m.insert("vma_cache".into(), json!(s.vma_cache));
    m.insert("fault_lock".into(), json!(s.fault_lock));
    m.insert("maps_reader".into(), json!(s.maps_reader));
    for (name, v, _) in fields(s) {
        m.insert(name, json!(v));
    }
    Value::Object(m)
}

/// What changed on the server between two `Stats` snapshots, plus the
/// ratios people look at.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StatsDelta {
    /// Server's VMA cache policy.
    pub vma_cache: String,
    /// Server's fault locking mode.
    pub fault_lock: String,
    /// Counter increments (gauges: the value after); a JSON object.
    #[serde(serialize_with = "ser_counts")]
    pub values: Vec<(String, u64)>,
    /// reused / (reused + fresh) VMA allocations, 0..1
    /// (`vmasim:vma_reuse_rate:ratio_rate1m`).
    pub vma_reuse_rate: f64,
    /// Reuses before a grace period / all reuses, 0..1
    /// (`vmasim:vma_reuse_before_grace_period_rate:ratio_rate1m`).
    pub vma_reuse_before_grace_period_rate: f64,
    /// call_rcu avoided / (made + avoided), 0..1
    /// (`vmasim:call_rcu_savings:ratio_rate1m`).
    pub call_rcu_savings: f64,
    /// Lockless lookup retries per fault.
    pub retries_per_fault: f64,
}

impl StatsDelta {
    /// `after - before` for counters, `after` for gauges.
    pub fn between(before: &StatsResponse, after: &StatsResponse) -> Self {
        let b = fields(before);
        let values: Vec<(String, u64)> = fields(after)
            .into_iter()
            .map(|(name, a, kind)| {
                let prev = b.iter().find(|(n, ..)| *n == name).map_or(0, |x| x.1);
                let v = match kind {
                    Kind::Counter => a.saturating_sub(prev),
                    Kind::Gauge => a,
                };
                (name, v)
            })
            .collect();
        let mut d = StatsDelta {
            vma_cache: after.vma_cache.clone(),
            fault_lock: after.fault_lock.clone(),
            values,
            ..Default::default()
        };
        let reused = d.get("vma_allocations_reused");
        d.vma_reuse_rate = ratio(reused, reused + d.get("vma_allocations_fresh"));
        d.vma_reuse_before_grace_period_rate =
            ratio(d.get("vma_reuse_before_grace_period"), reused);
        let made = d.get("call_rcu");
        d.call_rcu_savings = ratio(d.get("call_rcu_avoided"), made + d.get("call_rcu_avoided"));
        d.retries_per_fault = ratio(d.get("fault_retries"), d.get("faults"));
        d
    }

    /// One value by name (0 if absent).
    pub fn get(&self, name: &str) -> u64 {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |x| x.1)
    }

    /// The counters people look at first, as `(label, text)` rows.
    pub fn summary_rows(&self) -> Vec<(String, String)> {
        let reused = self.get("vma_allocations_reused");
        let all = reused + self.get("vma_allocations_fresh");
        vec![
            (
                "mode".into(),
                format!("{} / {}", self.vma_cache, self.fault_lock),
            ),
            ("faults".into(), self.get("faults").to_string()),
            (
                "VMA reuse rate".into(),
                format!("{} ({reused}/{all})", pct(self.vma_reuse_rate)),
            ),
            (
                "reuses before a grace period".into(),
                format!(
                    "{} ({})",
                    self.get("vma_reuse_before_grace_period"),
                    pct(self.vma_reuse_before_grace_period_rate)
                ),
            ),
            (
                "call_rcu made / avoided".into(),
                format!(
                    "{} / {} ({} avoided)",
                    self.get("call_rcu"),
                    self.get("call_rcu_avoided"),
                    pct(self.call_rcu_savings)
                ),
            ),
            (
                "vma lock success/abort/retry/miss".into(),
                format!(
                    "{} / {} / {} / {}",
                    self.get("vma_lock_success"),
                    self.get("vma_lock_abort"),
                    self.get("vma_lock_retry"),
                    self.get("vma_lock_miss")
                ),
            ),
            (
                "mmap_lock fallbacks".into(),
                self.get("mmap_lock_fallbacks").to_string(),
            ),
            (
                "grace periods".into(),
                self.get("grace_periods").to_string(),
            ),
        ]
    }
}

/// a / b, or 0 when b is 0.
pub fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// A 0..1 ratio as a percentage with one decimal.
pub fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

/// `[(name, n)]` as the JSON object `{name: n}`, in order.
pub fn ser_counts<S: serde::Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, n) in v {
        m.serialize_entry(k, n)?;
    }
    m.end()
}

/// A fault's reply as batch totals.
pub fn single_totals(f: &vmasim_proto::v1::FaultResponse) -> FaultTotals {
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

/// Sums `b` into `a` (fault totals of several batches).
pub fn add_totals(a: &mut FaultTotals, b: &FaultTotals) {
    a.faults += b.faults;
    a.anon_zero_fill += b.anon_zero_fill;
    a.file_page += b.file_page;
    a.cow_break += b.cow_break;
    a.already_present += b.already_present;
    a.segv_maperr += b.segv_maperr;
    a.segv_accerr += b.segv_accerr;
    a.sigbus += b.sigbus;
    a.per_vma_lock += b.per_vma_lock;
    a.mmap_lock_fallback += b.mmap_lock_fallback;
    a.mmap_lock += b.mmap_lock;
    a.retries += b.retries;
}

/// Fetches `Stats` from the server.
pub async fn fetch(client: &mut crate::connect::Client) -> Result<StatsResponse, CliError> {
    Ok(client
        .stats(vmasim_proto::v1::StatsRequest {})
        .await?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_of_counters_and_gauges() {
        let before = StatsResponse {
            vma_allocations_reused: 10,
            vma_allocations_fresh: 10,
            processes: 5,
            call_rcu_avoided: 4,
            ..Default::default()
        };
        let after = StatsResponse {
            vma_allocations_reused: 40,
            vma_allocations_fresh: 20,
            processes: 3,
            call_rcu_avoided: 14,
            vma_cache: "typesafe".into(),
            ..Default::default()
        };
        let d = StatsDelta::between(&before, &after);
        assert_eq!(d.get("vma_allocations_reused"), 30);
        assert_eq!(d.get("processes"), 3);
        assert!((d.vma_reuse_rate - 0.75).abs() < 1e-9);
        assert!((d.call_rcu_savings - 1.0).abs() < 1e-9);
        assert!(table(&after).contains("vma_allocations_reused"));
        assert_eq!(to_json(&after)["vma_cache"], "typesafe");
    }

    #[test]
    fn names_follow_the_metrics() {
        // Every name a server exports, as `fields` must spell it: the
        // metric without `vmasim_`/`_total`, label values appended.
        let t = vmasim_server::telemetry::Telemetry::new(&Default::default());
        let text = t.render(&Default::default());
        let mut names = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("vmasim_")) {
            let series = line.split_whitespace().next().unwrap();
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            let base = metric
                .trim_start_matches("vmasim_")
                .trim_end_matches("_total")
                .to_string();
            let values: Vec<&str> = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.trim_matches('"')))
                .collect();
            names.insert(base.clone());
            for v in &values {
                names.insert(format!("{base}_{v}"));
            }
        }
        // Numbers with no metric of their own (said so in the proto).
        let no_metric = ["fault_retries", "processes_spawned_total", "rss_pages"];
        let s = StatsResponse {
            reuse_detected: [("vm_mm".to_string(), 1)].into(),
            maps_reads: [("per-vma".to_string(), 1), ("mmap-lock".to_string(), 0)].into(),
            maps_vma_lock: vmasim_server::mm::MapsEvent::STEPS
                .iter()
                .map(|e| (e.as_str().to_string(), 1))
                .collect(),
            ..Default::default()
        };
        for (name, ..) in fields(&s) {
            assert!(
                names.contains(&name) || no_metric.contains(&name.as_str()),
                "stats name `{name}` is no metric's name; metrics: {names:?}"
            );
        }
    }
}
