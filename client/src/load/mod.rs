//! `vmasim load`: a ghz-class load generator for the `AddressSpace` API.
//!
//! # How a run goes
//!
//! 1. Open `--connections` channels; build `--concurrency` owner workers
//!    (spread round-robin over the channels, [`worker`]) and `--threads`
//!    fault threads per owner ([`fault_thread`]); or, with `--trace`,
//!    players of recorded programs ([`trace`]). All of them go through
//!    [`shared`] (stop flag, open-loop admission, recording, expected
//!    failures) and report a [`divergence`] from the [`shadow`] model.
//! 2. **Setup**: every owner spawns its `--processes` processes and maps a
//!    few regions in each (not measured).
//! 3. **Warm-up** (`--warmup`): the load runs, nothing is recorded.
//! 4. `Stats` *before*; measurement starts (`t0`).
//! 5. The load runs until `--duration` is over, `--requests` have been
//!    sent, Ctrl-C, or a `--verify` divergence.
//! 6. `Stats` *after*; the owned processes are exited (cleanup, not
//!    measured).
//!
//! **Closed loop** (default): each worker sends its next request when the
//! previous reply arrived, so `--concurrency` requests are in flight.
//! **Open loop** (`--rps R`): requests are due on a fixed schedule (one
//! every 1/R s, shared by all workers); a worker takes the next slot,
//! waits for it and sends. A worker that takes a slot already in the past
//! (all workers were busy) measures latency from the slot's time, not
//! from the actual send: if the server stalls, the requests that *should*
//! have gone out meanwhile are charged the wait (coordinated omission
//! corrected, as wrk2 does). A worker on time measures from its wake-up,
//! so the timer's 1 ms granularity is not charged to the server. `--concurrency` then caps the requests in
//! flight; when every worker is busy the schedule runs late and latency
//! shows it.
//!
//! The measurements ([`recorder`]) are rendered by [`report`] (text, JSON,
//! CSV) and [`html`] (a self-contained HTML page).

pub mod divergence;
pub mod fault_thread;
pub mod html;
pub mod mix;
pub mod recorder;
pub mod report;
pub mod shadow;
pub mod shared;
pub mod trace;
pub mod worker;

use crate::connect::Target;
use crate::error::CliError;
use crate::stats::{self, StatsDelta};
use crate::transport::Transport;
use divergence::Divergence;
use fault_thread::FaultThread;
use mix::Mix;
use recorder::Recorder;
use shared::Shared;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use worker::Worker;

/// Everything a load run is configured with.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadConfig {
    /// Owner workers (requests in flight, closed loop).
    pub concurrency: usize,
    /// Fault-only workers per owner, faulting in its processes.
    pub threads: usize,
    /// Open loop: requests per second (None: closed loop).
    pub rps: Option<f64>,
    /// Measured run time; None: until `requests` or Ctrl-C.
    #[serde(serialize_with = "ser_opt_secs")]
    pub duration: Option<Duration>,
    /// Stop after this many measured requests.
    pub requests: Option<u64>,
    /// Channels (HTTP/2 connections) the workers are spread over.
    pub connections: usize,
    /// Processes each owner worker keeps alive.
    pub processes: usize,
    /// Operation weights.
    #[serde(serialize_with = "ser_display")]
    pub mix: Mix,
    /// Faults per call (1: unary `Fault`, else `FaultBatch`).
    pub batch: usize,
    /// Use the `Session` stream instead of unary calls.
    pub stream: bool,
    /// Unmeasured run time before measurement.
    #[serde(serialize_with = "ser_secs")]
    pub warmup: Duration,
    /// RNG seed (same seed, same operation sequence per worker).
    pub seed: u64,
    /// Check every reply against a shadow model.
    pub verify: bool,
    /// With `verify`: compare `Maps` with the model every this many
    /// operations per worker.
    pub verify_every: u32,
    /// Show a progress bar (only if stderr is a terminal).
    #[serde(skip)]
    pub progress: bool,
    /// `--trace`: recordings to replay as the workload instead of the mix.
    pub traces: Vec<std::path::PathBuf>,
    /// `--trace`: time compression (0: as fast as the server answers).
    pub speed: f64,
    /// `--trace`: faults per replayed call, on average.
    pub fault_rate: f64,
    /// `--max-errors`: stop once more unexpected errors than this came
    /// back (None: never stop for errors).
    pub max_errors: Option<u64>,
    /// Keep every call for the per-request CSV (`-o FILE.csv`).
    #[serde(skip)]
    pub keep_rows: bool,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            concurrency: 8,
            threads: 0,
            rps: None,
            duration: Some(Duration::from_secs(10)),
            requests: None,
            connections: 1,
            processes: 2,
            mix: mix::DEFAULT_MIX.parse().expect("default mix parses"),
            batch: 1,
            stream: false,
            warmup: Duration::ZERO,
            seed: 1,
            verify: false,
            verify_every: 25,
            progress: false,
            traces: Vec::new(),
            speed: 0.0,
            fault_rate: 1.0,
            max_errors: None,
            keep_rows: false,
        }
    }
}

impl LoadConfig {
    /// A worker's recorder (keeping rows for the per-request CSV if asked).
    pub fn recorder(&self) -> Recorder {
        if self.keep_rows {
            Recorder::with_rows()
        } else {
            Recorder::default()
        }
    }

    /// One line describing the run's shape.
    pub fn describe(&self) -> String {
        let lp = match self.rps {
            Some(r) => format!("open loop at {r} rps (max {} in flight)", self.concurrency),
            None => format!("closed loop, {} workers", self.concurrency),
        };
        if !self.traces.is_empty() {
            let files: Vec<String> = self
                .traces
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return format!(
                "{lp}, {} recorded program instance(s) each, {} connection(s), {}, batch {}, trace {} at {}, fault rate {}{}",
                self.processes,
                self.connections,
                if self.stream {
                    "Session stream"
                } else {
                    "unary"
                },
                self.batch,
                files.join(","),
                if self.speed > 0.0 {
                    format!("speed {}x", self.speed)
                } else {
                    "full speed".into()
                },
                self.fault_rate,
                if self.verify { ", verified" } else { "" }
            );
        }
        format!(
            "{lp}, {} fault threads each, {} processes each, {} connection(s), {}, batch {}, mix {}{}",
            self.threads,
            self.processes,
            self.connections,
            if self.stream {
                "Session stream"
            } else {
                "unary"
            },
            self.batch,
            self.mix,
            if self.verify { ", verified" } else { "" }
        )
    }
}

/// Why the measurement ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum StopReason {
    /// `--duration` was over.
    Duration,
    /// `--requests` were sent.
    Requests,
    /// Ctrl-C.
    Interrupted,
    /// `--verify` found a divergence.
    Divergence,
    /// A call found no server (the status it got).
    ServerGone(String),
    /// More unexpected errors than `--max-errors`.
    MaxErrors(u64),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Duration => f.write_str("--duration over"),
            StopReason::Requests => f.write_str("--requests sent"),
            StopReason::Interrupted => f.write_str("interrupted (Ctrl-C)"),
            StopReason::Divergence => f.write_str("--verify divergence"),
            StopReason::ServerGone(s) => write!(f, "SERVER GONE: {s}"),
            StopReason::MaxErrors(n) => write!(f, "more than --max-errors {n} unexpected errors"),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// The configuration it ran with.
    pub config: LoadConfig,
    /// All workers' measurements, merged.
    pub rec: Recorder,
    /// Measured time (t0 to the last reply).
    pub elapsed: Duration,
    /// Server counters over the measured time (None if Stats failed).
    pub server: Option<StatsDelta>,
    /// `--verify` divergences (empty: none found, or not verifying).
    pub divergences: Vec<Divergence>,
    /// Why measurement ended.
    pub stopped: StopReason,
    /// Open loop: requests sent behind their schedule.
    pub late: u64,
    /// The server's URL.
    pub target: String,
    /// When measurement started (wall clock).
    pub started: std::time::SystemTime,
}

/// Runs a load against `target`.
pub async fn run(cfg: LoadConfig, target: &Target) -> Result<LoadResult, CliError> {
    if cfg.concurrency == 0 {
        return Err(CliError::Usage("--concurrency must be at least 1".into()));
    }
    if cfg.processes == 0 {
        return Err(CliError::Usage("--processes must be at least 1".into()));
    }
    if let Some(r) = cfg.rps
        && !(r.is_finite() && r > 0.0)
    {
        return Err(CliError::Usage("--rps must be > 0".into()));
    }
    let cfg = Arc::new(cfg);
    let mut channels = Vec::new();
    for _ in 0..cfg.connections.max(1) {
        channels.push(target.channel().await?);
    }
    let mut control = target.client(channels[0].clone())?;
    let shared = Arc::new(
        Shared::new(cfg.rps.map(|r| 1e9 / r), cfg.requests).with_max_errors(cfg.max_errors),
    );

    // Build the workers, round-robin over the channels.
    let mut owners = Vec::new();
    let mut threads = Vec::new();
    let mut next_ch = 0;
    let mut transport = || -> Result<Transport, CliError> {
        let ch = channels[next_ch % channels.len()].clone();
        next_ch += 1;
        Ok(Transport::new(target.client(ch)?, cfg.stream))
    };
    let programs = if cfg.traces.is_empty() {
        None
    } else {
        if !(cfg.speed.is_finite() && cfg.speed >= 0.0) {
            return Err(CliError::Usage("--speed must be >= 0".into()));
        }
        if !(cfg.fault_rate.is_finite() && cfg.fault_rate >= 0.0) {
            return Err(CliError::Usage("--fault-rate must be >= 0".into()));
        }
        Some(Arc::new(trace::load(&cfg.traces, &mut control).await?))
    };
    let mut trace_workers = Vec::new();
    for w in 0..cfg.concurrency {
        if let Some(p) = &programs {
            trace_workers.push(trace::TraceWorker::new(
                w,
                cfg.clone(),
                shared.clone(),
                transport()?,
                p.clone(),
            ));
            continue;
        }
        let layout = (cfg.threads > 0).then(Worker::new_layout);
        owners.push(Worker::new(
            w,
            cfg.clone(),
            shared.clone(),
            transport()?,
            layout.clone(),
        ));
        if let Some(layout) = layout {
            for t in 0..cfg.threads {
                threads.push(FaultThread::new(
                    w * cfg.threads + t,
                    cfg.clone(),
                    shared.clone(),
                    transport()?,
                    layout.clone(),
                ));
            }
        }
    }

    // Setup, all owners at once.
    let mut setups = Vec::new();
    for mut w in owners {
        setups.push(tokio::spawn(async move { w.setup().await.map(|()| w) }));
    }
    let mut ready = Vec::new();
    let mut setup_err = None;
    for h in setups {
        match h.await.expect("setup task panicked") {
            Ok(w) => ready.push(w),
            Err(s) => setup_err = Some(CliError::Rpc(s)),
        }
    }
    if let Some(e) = setup_err {
        return Err(e);
    }

    // Run.
    let mut before = None;
    if cfg.warmup.is_zero() {
        before = stats::fetch(&mut control).await.ok();
        shared.start_recording();
    }
    shared.sched0.get_or_init(Instant::now);
    let mut owner_tasks: Vec<_> = ready.into_iter().map(|w| tokio::spawn(w.run())).collect();
    owner_tasks.extend(trace_workers.into_iter().map(|w| tokio::spawn(w.run())));
    let thread_tasks: Vec<_> = threads.into_iter().map(|t| tokio::spawn(t.run())).collect();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ctrl_c = {
        let shared = shared.clone();
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::Relaxed);
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    if !cfg.warmup.is_zero() {
        sleep_unless_stopped(&shared, cfg.warmup).await;
        before = stats::fetch(&mut control).await.ok();
        shared.start_recording();
    }
    let t0 = *shared.t0.get().expect("recording started");
    let started = std::time::SystemTime::now() - t0.elapsed();
    let timer = {
        let shared = shared.clone();
        let d = cfg.duration.filter(|d| !d.is_zero());
        tokio::spawn(async move {
            if let Some(d) = d {
                tokio::time::sleep_until((t0 + d).into()).await;
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let progress = cfg
        .progress
        .then(|| spawn_progress(&cfg, shared.clone(), t0));

    let mut rec = cfg.recorder();
    let mut pids = Vec::new();
    for h in owner_tasks {
        let out = h.await.expect("worker task panicked");
        rec.merge(&out.rec);
        pids.extend(out.pids);
    }
    for h in thread_tasks {
        rec.merge(&h.await.expect("fault thread panicked"));
    }
    let elapsed = t0.elapsed();
    timer.abort();
    ctrl_c.abort();
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    let gone = shared.server_gone.get().cloned();
    // A server that went away has no Stats and nothing to clean up.
    let after = match gone {
        None => stats::fetch(&mut control).await.ok(),
        Some(_) => None,
    };
    let server = match (&before, &after) {
        (Some(b), Some(a)) => Some(StatsDelta::between(b, a)),
        _ => None,
    };
    // Cleanup, best effort and not measured.
    for pid in pids {
        if gone.is_some() {
            break;
        }
        let _ = control.exit(vmasim_proto::v1::ExitRequest { pid }).await;
    }
    let divergences = std::mem::take(&mut *shared.divergences.lock().expect("not poisoned"));
    let stopped = if let Some(s) = gone {
        StopReason::ServerGone(CliError::Rpc(s).to_string())
    } else if !divergences.is_empty() {
        StopReason::Divergence
    } else if shared.max_errors_reached() {
        StopReason::MaxErrors(cfg.max_errors.unwrap_or(0))
    } else if interrupted.load(Ordering::Relaxed) {
        StopReason::Interrupted
    } else if cfg.requests.is_some_and(|n| rec.requests() >= n) {
        StopReason::Requests
    } else {
        StopReason::Duration
    };
    Ok(LoadResult {
        config: (*cfg).clone(),
        rec,
        elapsed,
        server,
        divergences,
        stopped,
        late: shared.late.load(Ordering::Relaxed),
        target: target.url.clone(),
        started,
    })
}

async fn sleep_unless_stopped(shared: &Shared, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50).min(end - Instant::now())).await;
    }
}

/// A progress bar on stderr with the current rate; none if stderr is not a
/// terminal.
fn spawn_progress(
    cfg: &LoadConfig,
    shared: Arc<Shared>,
    t0: Instant,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let (len, by_time) = match (cfg.requests, cfg.duration.filter(|d| !d.is_zero())) {
        (Some(n), _) => (n, false),
        (None, Some(d)) => (d.as_millis() as u64, true),
        (None, None) => (0, true),
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let template = if len == 0 {
        "{spinner} {elapsed_precise} {msg}"
    } else {
        "{bar:40.cyan/blue} {percent:>3}% {elapsed_precise} {msg}"
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    let b = bar.clone();
    let task = tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64, 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            let done = shared.completed.load(Ordering::Relaxed);
            let faults = shared.faults_done.load(Ordering::Relaxed);
            let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
            let rps = (done - last.1) as f64 / dt;
            let fps = (faults - last.2) as f64 / dt;
            last = (now, done, faults);
            if by_time {
                b.set_position(now.duration_since(t0).as_millis() as u64);
            } else {
                b.set_position(done);
            }
            b.set_message(format!("{done} req, {rps:.0} req/s, {fps:.0} faults/s"));
        }
    });
    (bar, task)
}
