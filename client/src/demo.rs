//! `vmasim demo`: the same workload against a `typesafe` and an `rcu`
//! server, side by side.
//!
//! Without `--server`, each mode gets a fresh in-process server on an
//! ephemeral loopback port ([`crate::embedded`]); nothing else needs to
//! run. The workload is a short mixed load ([`demo_config`]): owner
//! workers mmap/munmap/mprotect/brk/fork/exit their processes and fault in
//! them (mostly in batches), while fault threads fault concurrently in the
//! same processes, so per-VMA locks really contend. The table compares the
//! server-side counters (deltas of `Stats`) and client-side latency, and a
//! verdict says whether the throughput differs by more than the run's own
//! second-to-second noise (it usually does not: what typesafe buys is not
//! fault throughput).
//!
//! Then, with embedded servers, the slow-reader phase shows what
//! `SLAB_TYPESAFE_BY_RCU` does buy: one thread holds an RCU read section
//! (as a long `/proc/PID/maps` read would) while VMAs are mapped and
//! unmapped. Under `rcu` every freed slot waits for the grace period the
//! reader holds back, so the cache must carve new slabs; under `typesafe`
//! slots are reused at once and memory stays flat.

use crate::connect::Target;
#[cfg(feature = "embedded")]
use crate::embedded::{CachePolicy, Embedded};
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
    /// Slow-reader phase length per mode (zero: skip it).
    pub slow_reader: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(10),
            concurrency: 4,
            threads: 1,
            seed: 1,
            progress: true,
            slow_reader: Duration::from_secs(3),
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

/// The slow-reader phase's workload: mapping churn, so that frees happen
/// all the time while the reader is held.
pub fn slow_reader_config(o: &DemoOptions) -> LoadConfig {
    LoadConfig {
        concurrency: o.concurrency,
        threads: 0,
        duration: Some(o.slow_reader),
        processes: 2,
        mix: "mmap=40,munmap=40,fault=20"
            .parse()
            .expect("slow-reader mix parses"),
        batch: 1,
        warmup: Duration::ZERO,
        seed: o.seed,
        progress: o.progress,
        ..LoadConfig::default()
    }
}

/// What one mode's slow-reader phase ended with.
#[derive(Debug, Clone, Default)]
pub struct SlowReaderRun {
    /// Mode name.
    pub name: String,
    /// VMA frees during the phase.
    pub frees: u64,
    /// `call_rcu` made / avoided during the phase.
    pub call_rcu: (u64, u64),
    /// Slots waiting for a grace period at the end (reader still held).
    pub waiting: u64,
    /// Slabs at the end.
    pub slabs: u64,
    /// Fresh (never used) slots handed out during the phase.
    pub fresh: u64,
}

/// Runs the demo; returns the table to print.
pub async fn run(o: &DemoOptions, server: Option<&Target>) -> Result<String, CliError> {
    // Refused before anything is printed.
    #[cfg(not(feature = "embedded"))]
    if server.is_none() {
        return Err(CliError::NeedsEmbedded("demo"));
    }
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
        #[cfg(not(feature = "embedded"))]
        None => unreachable!("refused above"),
        #[cfg(feature = "embedded")]
        None => {
            for cache in [CachePolicy::Typesafe, CachePolicy::Rcu] {
                let srv = Embedded::start(cache, false).await?;
                eprintln!(
                    "[{}] embedded server on {}, running for {:?} ...",
                    cache.as_str(),
                    srv.url,
                    o.duration
                );
                let r = load::run(cfg.clone(), &Target::plain(srv.url.clone())).await;
                srv.stop().await;
                runs.push((cache.as_str().to_string(), Summary::new(&r?)));
            }
        }
    }
    let mut out = table(&runs);
    if runs.len() == 2 {
        out.push('\n');
        out.push_str(&throughput_verdict(&runs[0], &runs[1]));
    }
    #[cfg(feature = "embedded")]
    if server.is_none() && !o.slow_reader.is_zero() {
        let mut slow = Vec::new();
        for cache in [CachePolicy::Typesafe, CachePolicy::Rcu] {
            slow.push(run_slow_reader(o, cache).await?);
        }
        out.push('\n');
        out.push_str(&slow_reader_table(&slow));
    }
    Ok(out)
}

/// One mode's slow-reader phase on a fresh embedded server.
#[cfg(feature = "embedded")]
async fn run_slow_reader(o: &DemoOptions, cache: CachePolicy) -> Result<SlowReaderRun, CliError> {
    let srv = Embedded::start(cache, false).await?;
    eprintln!(
        "[{}] slow reader: one RCU read section held for {:?} while VMAs churn ...",
        cache.as_str(),
        o.slow_reader
    );
    let reader = crate::embedded::SlowReader::hold();
    let r = load::run(slow_reader_config(o), &Target::plain(srv.url.clone())).await;
    // Stats were read at the end of the run, before the reader lets go.
    drop(reader);
    srv.stop().await;
    let s = Summary::new(&r?);
    let get = |k: &str| s.server.as_ref().map_or(0, |d| d.get(k));
    Ok(SlowReaderRun {
        name: cache.as_str().to_string(),
        frees: get("vma_frees"),
        call_rcu: (get("call_rcu"), get("call_rcu_avoided")),
        waiting: get("pool_slots_waiting"),
        slabs: get("pool_slabs"),
        fresh: get("vma_allocations_fresh"),
    })
}

/// Bytes of one slab of VMA slots.
#[cfg(feature = "embedded")]
fn slab_bytes() -> u64 {
    u64::from(vmasim_server::mm::SLAB_SIZE) * std::mem::size_of::<vmasim_server::mm::Vma>() as u64
}

/// The slow-reader phase, side by side.
#[cfg(feature = "embedded")]
pub fn slow_reader_table(runs: &[SlowReaderRun]) -> String {
    type Row = (&'static str, Box<dyn Fn(&SlowReaderRun) -> String>);
    let rows: Vec<Row> = vec![
        ("VMA frees", Box::new(|r| r.frees.to_string())),
        (
            "call_rcu made / avoided",
            Box::new(|r| format!("{} / {}", r.call_rcu.0, r.call_rcu.1)),
        ),
        (
            "slots waiting for a grace period",
            Box::new(|r| r.waiting.to_string()),
        ),
        (
            "fresh slots carved from slabs",
            Box::new(|r| r.fresh.to_string()),
        ),
        (
            "slabs (VMA cache memory)",
            Box::new(|r| format!("{} ({} KiB)", r.slabs, r.slabs * slab_bytes() / 1024)),
        ),
    ];
    let lw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut o = String::from("slow reader held (one RCU read section for the whole phase):\n");
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, f)| runs.iter().map(f).collect())
        .collect();
    let cw: Vec<usize> = (0..runs.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(runs[i].name.len())
        })
        .collect();
    let _ = write!(o, "{:<lw$}", "");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(o, "  {:>w$}", r.name, w = cw[i]);
    }
    o.push('\n');
    for (r, (label, _)) in cells.iter().zip(&rows) {
        let _ = write!(o, "{label:<lw$}");
        for (i, c) in r.iter().enumerate() {
            let _ = write!(o, "  {:>w$}", c, w = cw[i]);
        }
        o.push('\n');
    }
    if let [ts, rcu] = runs {
        let _ = writeln!(
            o,
            "\nWith a reader that never leaves, rcu parks every freed slot ({} waiting) and \
             had to grow to {} slabs; typesafe reused slots at once: {} waiting, {} slab(s). \
             That memory, and the {} call_rcu it avoided, is what SLAB_TYPESAFE_BY_RCU buys.",
            rcu.waiting, rcu.slabs, ts.waiting, ts.slabs, ts.call_rcu.1
        );
    }
    o
}

/// Median, min and max of a run's per-second simulated fault counts (the
/// last, partial second left out when there are others).
pub fn per_second_faults(s: &Summary) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = s.timeline.iter().map(|x| x.faults as f64).collect();
    if v.len() > 2 {
        v.pop();
    }
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((med, v[0], v[v.len() - 1]))
}

/// Says plainly whether two runs' fault throughput differs by more than the
/// runs' own second-to-second spread.
pub fn throughput_verdict(a: &(String, Summary), b: &(String, Summary)) -> String {
    let (Some((am, alo, ahi)), Some((bm, blo, bhi))) =
        (per_second_faults(&a.1), per_second_faults(&b.1))
    else {
        return "throughput: too short a run to compare\n".into();
    };
    let ratio = if bm > 0.0 { am / bm } else { f64::NAN };
    let ranges = format!(
        "{} median {}/s (per-second min-max {}-{}), {} median {}/s ({}-{})",
        a.0,
        human(am),
        human(alo),
        human(ahi),
        b.0,
        human(bm),
        human(blo),
        human(bhi)
    );
    if alo <= bhi && blo <= ahi {
        format!(
            "throughput: {} and {} are EQUAL WITHIN NOISE: {ranges}; ratio {ratio:.2}x, but the \
             per-second ranges overlap, so neither mode is faster here.\n",
            a.0, b.0
        )
    } else {
        let (fast, slow, r) = if am >= bm {
            (&a.0, &b.0, ratio)
        } else {
            (&b.0, &a.0, 1.0 / ratio)
        };
        format!(
            "throughput: {fast} ran {r:.2}x {slow} ({ranges}); the per-second ranges do not \
             overlap. One run each: repeat before calling it a speedup.\n"
        )
    }
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
                    let r = get(s, "vma_allocations_reused");
                    format!(
                        "{} ({r}/{})",
                        pct(d.vma_reuse_rate),
                        r + get(s, "vma_allocations_fresh")
                    )
                })
            }),
        ),
        (
            "reuses before a grace period",
            Box::new(move |s| get(s, "vma_reuse_before_grace_period").to_string()),
        ),
        (
            "call_rcu made / avoided",
            Box::new(move |s| format!("{} / {}", get(s, "call_rcu"), get(s, "call_rcu_avoided"))),
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
            Box::new(move |s| {
                (get(s, "vma_allocations_reused") + get(s, "vma_allocations_fresh")).to_string()
            }),
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
