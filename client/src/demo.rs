//! `vmasim demo`: the same workload against a `typesafe` and an `rcu`
//! server, side by side.
//!
//! Without `--server`, each mode gets a fresh in-process server on an
//! ephemeral loopback port ([`crate::embedded`]); nothing else needs to
//! run. The workload is a short mixed load ([`demo_config`]): owner
//! workers mmap/munmap/mprotect/brk/fork/exit their processes and fault in
//! them (mostly in batches), while fault threads fault concurrently in the
//! same processes, so per-VMA locks really contend. The table compares the
//! server-side counters (deltas of `Stats`) and client-side latency.

use crate::connect::Target;
use crate::embedded::{Cache, Embedded};
use crate::error::CliError;
use crate::load::report::Summary;
use crate::load::{self, LoadConfig};
use crate::stats::pct;
use std::fmt::Write as _;
use std::time::Duration;

/// `demo` options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Measured time per mode.
    pub duration: Duration,
    /// Owner workers.
    pub concurrency: usize,
    /// Fault threads per owner.
    pub threads: usize,
    /// RNG seed.
    pub seed: u64,
    /// Show progress bars.
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(10),
            concurrency: 4,
            threads: 1,
            seed: 1,
            progress: true,
        }
    }
}

/// The demo's workload.
pub fn demo_config(o: &DemoOptions) -> LoadConfig {
    LoadConfig {
        concurrency: o.concurrency,
        threads: o.threads,
        duration: Some(o.duration),
        processes: 2,
        mix: "fault=70,mmap=8,munmap=7,mprotect=7,brk=2,fork=3,exit=3"
            .parse()
            .expect("demo mix parses"),
        batch: 32,
        warmup: Duration::from_millis(500),
        seed: o.seed,
        progress: o.progress,
        ..LoadConfig::default()
    }
}

/// Runs the demo; returns the table to print.
pub async fn run(o: &DemoOptions, server: Option<&Target>) -> Result<String, CliError> {
    let cfg = demo_config(o);
    eprintln!("workload: {}", cfg.describe());
    let mut runs: Vec<(String, Summary)> = Vec::new();
    match server {
        Some(t) => {
            eprintln!("running against {} for {:?} ...", t.url, o.duration);
            let r = load::run(cfg.clone(), t).await?;
            let s = Summary::new(&r);
            let name = s
                .server
                .as_ref()
                .map_or_else(|| t.url.clone(), |d| d.vma_cache.clone());
            runs.push((name, s));
        }
        None => {
            for cache in [Cache::Typesafe, Cache::Rcu] {
                let srv = Embedded::start(cache, false).await?;
                eprintln!(
                    "[{}] embedded server on {}, running for {:?} ...",
                    cache.name(),
                    srv.url,
                    o.duration
                );
                let r = load::run(cfg.clone(), &Target::plain(srv.url.clone())).await;
                srv.stop().await;
                runs.push((cache.name().to_string(), Summary::new(&r?)));
            }
        }
    }
    Ok(table(&runs))
}

/// The side-by-side table.
pub fn table(runs: &[(String, Summary)]) -> String {
    let get = |s: &Summary, k: &str| s.server.as_ref().map_or(0, |d| d.get(k));
    type Row = (&'static str, Box<dyn Fn(&Summary) -> String>);
    let rows: Vec<Row> = vec![
        ("simulated faults/s", Box::new(|s| human(s.faults_per_sec))),
        ("RPCs/s", Box::new(|s| human(s.rps))),
        (
            "VMA reuse rate (reused/all allocs)",
            Box::new(move |s| {
                s.server.as_ref().map_or("-".into(), |d| {
                    let r = get(s, "vma_alloc_reused");
                    format!(
                        "{} ({r}/{})",
                        pct(d.reuse_rate),
                        r + get(s, "vma_alloc_fresh")
                    )
                })
            }),
        ),
        (
            "reuses before a grace period",
            Box::new(move |s| get(s, "vma_reuse_before_gp").to_string()),
        ),
        (
            "call_rcu made / avoided",
            Box::new(move |s| {
                format!(
                    "{} / {}",
                    get(s, "call_rcu_made"),
                    get(s, "call_rcu_avoided")
                )
            }),
        ),
        (
            "grace periods",
            Box::new(move |s| get(s, "grace_periods").to_string()),
        ),
        (
            "vma lock success",
            Box::new(move |s| get(s, "vma_lock_success").to_string()),
        ),
        (
            "vma lock abort",
            Box::new(move |s| get(s, "vma_lock_abort").to_string()),
        ),
        (
            "vma lock retry",
            Box::new(move |s| get(s, "vma_lock_retry").to_string()),
        ),
        (
            "vma lock miss",
            Box::new(move |s| get(s, "vma_lock_miss").to_string()),
        ),
        (
            "mmap_lock fallbacks",
            Box::new(move |s| get(s, "mmap_lock_fallbacks").to_string()),
        ),
        (
            "VMA allocs (reused + fresh)",
            Box::new(move |s| (get(s, "vma_alloc_reused") + get(s, "vma_alloc_fresh")).to_string()),
        ),
        (
            "pool slots waiting for a GP (end)",
            Box::new(move |s| get(s, "pool_slots_waiting").to_string()),
        ),
        (
            "RPC latency p50",
            Box::new(|s| format!("{:.3} ms", s.latency_ms.p50)),
        ),
        (
            "RPC latency p99",
            Box::new(|s| format!("{:.3} ms", s.latency_ms.p99)),
        ),
        (
            "RPCs (errors)",
            Box::new(|s| format!("{} ({})", s.count, s.errors)),
        ),
    ];
    let lw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, f)| runs.iter().map(|(_, s)| f(s)).collect())
        .collect();
    let cw = runs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            cells
                .iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(name.len())
        })
        .collect::<Vec<_>>();
    let mut o = String::new();
    let _ = write!(o, "{:<lw$}", "");
    for (i, (name, _)) in runs.iter().enumerate() {
        let _ = write!(o, "  {:>w$}", name, w = cw[i]);
    }
    o.push('\n');
    for (r, (label, _)) in cells.iter().zip(&rows) {
        let _ = write!(o, "{label:<lw$}");
        for (i, c) in r.iter().enumerate() {
            let _ = write!(o, "  {:>w$}", c, w = cw[i]);
        }
        o.push('\n');
    }
    if runs.len() == 2 {
        o.push_str(
            "\ntypesafe: a freed VMA slot goes straight back to the free list (no call_rcu)\n\
             and is often handed out again before a grace period has passed; the per-VMA\n\
             lock's checks (vm_refcnt, vm_mm, vm_lock_seq, range) keep lockless faults safe.\n\
             rcu: every free costs a call_rcu and the slot waits for a grace period before\n\
             it can be reused. Non-OK replies are expected ones (MAP_FIXED_NOREPLACE over a\n\
             mapping, mprotect over a hole, faults racing an exit). Watch the checks work:\n\
             `vmasim race --list`.\n",
        );
    }
    o
}

/// 1234567.8 -> "1.23M".
pub(crate) fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}
