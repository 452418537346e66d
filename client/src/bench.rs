//! `vmasim bench`: the README's three benchmarks, measured in one run
//! against one server.
//!
//! The numbers the README quotes must be reproducible with one command and
//! comparable with each other, so they come from the same process, the
//! same server, the same connections and the same concurrency:
//!
//! 1. **Unary `Fault` vs a no-op unary call.** Closed loop, `--concurrency`
//!    requests in flight over `--connections` channels. The no-op is the
//!    gRPC health check (`grpc.health.v1.Health/Check`): it crosses the
//!    same HTTP/2 stack, tower layers and interceptor as `Fault` but does
//!    no work, so `fault rps / no-op rps` says how much of a `Fault`'s cost
//!    is the simulation rather than the RPC (target ≥ 0.9). Each worker
//!    faults (reads) in pages its process already has, populated during
//!    setup, so the figure is the fault path and the RPC, not page-table
//!    allocation. The two are measured A-B-B-A in half-phases so that a
//!    drift in the machine's load (this machine is shared) hits both alike.
//! 2. **Simulated faults/s in bulk**: `FaultBatch` with `--batch` addresses
//!    per call (`totals_only`, so the reply does not grow with the batch),
//!    once as unary calls and once as `FaultBatch` operations on one
//!    `Session` stream per worker (target ≥ 1M faults/s).
//! 3. **Latency at half the maximum rate**: the unary `Fault` rate of (1)
//!    halved, offered open loop; p50/p99/p99.9 are corrected for
//!    coordinated omission exactly as `vmasim load --rps` does (a request
//!    is timed from when it was due, not from when a worker got to it).
//!
//! The admission (closed/open loop, coordinated-omission correction) and
//! the measurements (HdrHistogram [`Recorder`]) are the load generator's
//! ([`crate::load::worker::Shared`]); only the per-request work is
//! specific here, because the load workers draw random operations from a
//! shadow model, which would charge `Fault` client-side work the no-op
//! does not do and skew the ratio.

use crate::connect::{Client, Health, Target};
use crate::demo::human;
use crate::embedded::{Cache, Embedded};
use crate::error::CliError;
use crate::load::mix::OpKind;
use crate::load::recorder::Recorder;
use crate::load::report::Latency;
use crate::load::shadow::PAGE;
use crate::load::worker::{Shared, single_totals};
use crate::stats::add_totals;
use crate::transport::Transport;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use vmasim_proto::v1::session_reply::Result as Reply;
use vmasim_proto::v1::session_request::Op;
use vmasim_proto::v1::{
    Access, ExitRequest, FaultBatchRequest, FaultRequest, MapFlag, MmapRequest, Prot, SpawnRequest,
};

/// Target of `fault rps / no-op rps`.
pub const TARGET_RATIO: f64 = 0.9;
/// Target of simulated faults per second through the bulk calls.
pub const TARGET_FAULTS_PER_SEC: f64 = 1e6;

/// `bench` options.
#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    /// Measured time per phase (the A-B-B-A halves of phase 1 add up to
    /// this per call kind).
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    /// Unmeasured time before each call kind's first measurement.
    #[serde(serialize_with = "ser_secs")]
    pub warmup: Duration,
    /// Workers: requests in flight (closed loop), max in flight (open).
    pub concurrency: usize,
    /// HTTP/2 channels the workers are spread over.
    pub connections: usize,
    /// Addresses per `FaultBatch` (also the pages each worker populates).
    pub batch: usize,
    /// VMA cache of the embedded server (unused with `--server`).
    pub cache: Cache,
    /// Progress lines on stderr.
    #[serde(skip)]
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            duration: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
            concurrency: 8,
            connections: 1,
            batch: 1024,
            cache: Cache::Typesafe,
            progress: true,
        }
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What one kind of call did in a phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Calls recorded.
    pub requests: u64,
    /// Calls with a non-OK status.
    pub errors: u64,
    /// Measured time, s.
    pub secs: f64,
    /// Calls per second.
    pub rps: f64,
    /// Simulated faults per second (successful calls only; 0 for the no-op).
    pub faults_per_sec: f64,
    /// Share of the simulated faults that found the page present (the
    /// setup populated them; anything else means allocation was measured).
    pub already_present: f64,
    /// Client-side latency, ms.
    pub latency_ms: Latency,
}

impl Phase {
    fn new(rec: &Recorder, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let t = &rec.fault_totals;
        Phase {
            requests: rec.requests(),
            errors: rec.errors(),
            secs,
            rps: rec.requests() as f64 / secs,
            faults_per_sec: rec.faults as f64 / secs,
            already_present: if t.faults == 0 {
                0.0
            } else {
                t.already_present as f64 / t.faults as f64
            },
            latency_ms: Latency::of(&rec.latency),
        }
    }
}

/// Phase 1.
#[derive(Debug, Clone, Serialize)]
pub struct UnaryVsNoop {
    /// `grpc.health.v1.Health/Check`.
    pub noop: Phase,
    /// Unary `Fault` on present pages.
    pub fault: Phase,
    /// `fault.rps / noop.rps`.
    pub ratio: f64,
    /// [`TARGET_RATIO`].
    pub target_ratio: f64,
}

/// Phase 2.
#[derive(Debug, Clone, Serialize)]
pub struct Bulk {
    /// Addresses per call.
    pub batch: usize,
    /// Unary `FaultBatch`.
    pub fault_batch: Phase,
    /// `FaultBatch` operations on `Session` streams.
    pub session_stream: Phase,
    /// [`TARGET_FAULTS_PER_SEC`].
    pub target_faults_per_sec: f64,
}

/// Phase 3.
#[derive(Debug, Clone, Serialize)]
pub struct HalfRate {
    /// The maximum unary `Fault` rate (phase 1), rps.
    pub max_rps: f64,
    /// The offered rate (half of it), rps.
    pub offered_rps: f64,
    /// The open-loop run (latency corrected for coordinated omission).
    pub open_loop: Phase,
}

/// Everything `bench` measured (also the `--output` JSON).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The server measured: its URL, or `embedded (CACHE)`.
    pub server: String,
    /// The options.
    pub options: BenchOptions,
    /// Phase 1.
    pub unary: UnaryVsNoop,
    /// Phase 2.
    pub bulk: Bulk,
    /// Phase 3.
    pub half_rate: HalfRate,
}

/// What a worker sends in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Health check.
    Noop,
    /// Unary `Fault`, one present page after the other.
    Fault,
    /// Unary `FaultBatch` over all its pages.
    Batch,
    /// `FaultBatch` over its `Session` stream.
    Stream,
}

/// One worker's process and clients; moved into a task for each phase and
/// handed back, so the process and the stream outlive the phases.
struct Slot {
    client: Client,
    health: Health,
    /// Lazily opened `Session` stream (phase 2).
    stream: Transport,
    pid: u32,
    /// One address per populated page.
    addrs: Vec<u64>,
    /// Next page for a unary `Fault`.
    next: usize,
}

impl Slot {
    /// Spawns the worker's process, maps `pages` anonymous read-write pages
    /// and populates them with a write `FaultBatch`, so every measured
    /// fault finds its page present (none of this is measured).
    async fn setup(
        target: &Target,
        ch: tonic::transport::Channel,
        pages: usize,
    ) -> Result<Self, CliError> {
        let mut client = target.client(ch.clone())?;
        let health = target.health_client(ch)?;
        let pid = client
            .spawn(SpawnRequest::default())
            .await?
            .into_inner()
            .pid;
        let base = client
            .mmap(MmapRequest {
                pid,
                addr: 0,
                length: pages as u64 * PAGE,
                prot: Prot::Read as u32 | Prot::Write as u32,
                flags: MapFlag::MapPrivate as u32 | MapFlag::MapAnonymous as u32,
                file_id: 0,
                offset: 0,
            })
            .await?
            .into_inner()
            .addr;
        // An offset inside the page, so the address is not the page start
        // the server might special-case; any address of the page faults it.
        let addrs: Vec<u64> = (0..pages as u64).map(|i| base + i * PAGE + 0x80).collect();
        client
            .fault_batch(FaultBatchRequest {
                pid,
                addrs: addrs.clone(),
                access: Access::Write as i32,
                totals_only: true,
            })
            .await?;
        let stream = Transport::new(client.clone(), true);
        Ok(Slot {
            client,
            health,
            stream,
            pid,
            addrs,
            next: 0,
        })
    }

    /// One call; returns its status and the simulated faults it carried.
    async fn once(&mut self, kind: Kind, rec: &mut Recorder) -> (Code, u64) {
        match kind {
            Kind::Noop => {
                let r = self
                    .health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                (r.map_or_else(|s| s.code(), |_| Code::Ok), 0)
            }
            Kind::Fault => {
                let addr = self.addrs[self.next];
                self.next = (self.next + 1) % self.addrs.len();
                let r = self
                    .client
                    .fault(FaultRequest {
                        pid: self.pid,
                        addr,
                        access: Access::Read as i32,
                    })
                    .await;
                match r {
                    Ok(f) => {
                        add_totals(&mut rec.fault_totals, &single_totals(f.get_ref()));
                        (Code::Ok, 1)
                    }
                    Err(s) => (s.code(), 1),
                }
            }
            Kind::Batch | Kind::Stream => {
                let req = FaultBatchRequest {
                    pid: self.pid,
                    addrs: self.addrs.clone(),
                    access: Access::Read as i32,
                    totals_only: true,
                };
                let n = self.addrs.len() as u64;
                let r = if kind == Kind::Stream {
                    self.stream.call(Op::FaultBatch(req)).await
                } else {
                    self.client
                        .fault_batch(req)
                        .await
                        .map(|r| Reply::FaultBatch(r.into_inner()))
                };
                match r {
                    Ok(Reply::FaultBatch(b)) => {
                        add_totals(&mut rec.fault_totals, &b.totals.unwrap_or_default());
                        (Code::Ok, n)
                    }
                    Ok(_) => (Code::Internal, n),
                    Err(s) => (s.code(), n),
                }
            }
        }
    }

    /// Sends `kind` calls as the shared admission allows until it stops.
    async fn drive(mut self, kind: Kind, shared: Arc<Shared>) -> (Slot, Recorder) {
        let mut rec = Recorder::default();
        let op = if kind == Kind::Noop {
            OpKind::Health
        } else {
            OpKind::Fault
        };
        while let Some(due) = shared.admit().await {
            let start = due.unwrap_or_else(Instant::now);
            let (code, faults) = self.once(kind, &mut rec).await;
            shared.record(&mut rec, op, start, code, faults);
        }
        (self, rec)
    }
}

/// Runs `kind` on every slot for `warmup` + `duration`; closed loop, or
/// open loop at `rps`. Returns the merged measurements and the measured
/// time (start of measurement to the last reply, as `vmasim load` does).
async fn measure(
    slots: &mut Vec<Slot>,
    kind: Kind,
    rps: Option<f64>,
    warmup: Duration,
    duration: Duration,
) -> (Recorder, Duration) {
    let shared = Arc::new(Shared::new(rps.map(|r| 1e9 / r), None));
    shared.sched0.get_or_init(Instant::now);
    let tasks: Vec<_> = slots
        .drain(..)
        .map(|s| tokio::spawn(s.drive(kind, shared.clone())))
        .collect();
    tokio::time::sleep(warmup).await;
    shared.start_recording();
    let t0 = *shared.t0.get().expect("recording started");
    tokio::time::sleep_until((t0 + duration).into()).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut rec = Recorder::default();
    for t in tasks {
        let (s, r) = t.await.expect("bench worker panicked");
        rec.merge(&r);
        slots.push(s);
    }
    (rec, t0.elapsed())
}

/// Runs the three phases against `server`, or a fresh embedded server.
pub async fn run(o: &BenchOptions, server: Option<&Target>) -> Result<BenchReport, CliError> {
    if o.concurrency == 0 || o.connections == 0 || o.batch == 0 {
        return Err(CliError::Usage(
            "--concurrency, --connections and --batch must be at least 1".into(),
        ));
    }
    if o.duration.is_zero() {
        return Err(CliError::Usage("--duration must be > 0".into()));
    }
    match server {
        Some(t) => run_on(o, t, t.url.clone()).await,
        None => {
            let srv = Embedded::start(o.cache, false).await?;
            let name = format!("embedded {} server on {}", o.cache.name(), srv.url);
            let r = run_on(o, &Target::plain(srv.url.clone()), name).await;
            srv.stop().await;
            r
        }
    }
}

async fn run_on(o: &BenchOptions, target: &Target, name: String) -> Result<BenchReport, CliError> {
    let say = |m: String| {
        if o.progress {
            eprintln!("{m}");
        }
    };
    say(format!(
        "bench: {name}, {} workers over {} connection(s), {:?} per phase",
        o.concurrency, o.connections, o.duration
    ));
    let mut channels = Vec::new();
    for _ in 0..o.connections {
        channels.push(target.channel().await?);
    }
    let mut slots = Vec::new();
    for i in 0..o.concurrency {
        let ch = channels[i % channels.len()].clone();
        slots.push(Slot::setup(target, ch, o.batch).await?);
    }
    let r = phases(o, &mut slots, &say).await;
    // Cleanup, best effort: an external server should not keep our processes.
    for s in &mut slots {
        let _ = s.client.exit(ExitRequest { pid: s.pid }).await;
    }
    let (unary, bulk, half_rate) = r?;
    Ok(BenchReport {
        server: name,
        options: o.clone(),
        unary,
        bulk,
        half_rate,
    })
}

async fn phases(
    o: &BenchOptions,
    slots: &mut Vec<Slot>,
    say: &dyn Fn(String),
) -> Result<(UnaryVsNoop, Bulk, HalfRate), CliError> {
    // Phase 1, A-B-B-A: each kind gets two halves of the duration, one
    // early and one late, so a change in background load affects both.
    let half = o.duration / 2;
    say("[1/3] unary Fault vs no-op Health/Check (closed loop) ...".into());
    let mut noop = (Recorder::default(), Duration::ZERO);
    let mut fault = (Recorder::default(), Duration::ZERO);
    for (i, kind) in [Kind::Noop, Kind::Fault, Kind::Fault, Kind::Noop]
        .into_iter()
        .enumerate()
    {
        // The first run of each kind warms up its code paths and buffers.
        let warmup = if i < 2 { o.warmup } else { Duration::ZERO };
        let (rec, d) = measure(slots, kind, None, warmup, half).await;
        let acc = if kind == Kind::Noop {
            &mut noop
        } else {
            &mut fault
        };
        acc.0.merge(&rec);
        acc.1 += d;
    }
    let noop = Phase::new(&noop.0, noop.1);
    let fault = Phase::new(&fault.0, fault.1);
    check("no-op Health/Check", &noop)?;
    check("unary Fault", &fault)?;
    let unary = UnaryVsNoop {
        ratio: fault.rps / noop.rps.max(1e-9),
        noop,
        fault,
        target_ratio: TARGET_RATIO,
    };
    print!("{}", section_unary(&unary));

    say("[2/3] FaultBatch, unary and over Session streams (closed loop) ...".into());
    let (rec, d) = measure(slots, Kind::Batch, None, o.warmup, o.duration).await;
    let fault_batch = Phase::new(&rec, d);
    check("FaultBatch", &fault_batch)?;
    // The streams open during this warm-up, so opening is not measured.
    let (rec, d) = measure(slots, Kind::Stream, None, o.warmup, o.duration).await;
    let session_stream = Phase::new(&rec, d);
    check("Session stream", &session_stream)?;
    let bulk = Bulk {
        batch: o.batch,
        fault_batch,
        session_stream,
        target_faults_per_sec: TARGET_FAULTS_PER_SEC,
    };
    print!("{}", section_bulk(&bulk));

    let max_rps = unary.fault.rps;
    let offered_rps = max_rps / 2.0;
    say(format!(
        "[3/3] unary Fault open loop at {offered_rps:.0} rps ..."
    ));
    let (rec, d) = measure(slots, Kind::Fault, Some(offered_rps), o.warmup, o.duration).await;
    let open_loop = Phase::new(&rec, d);
    check("open-loop Fault", &open_loop)?;
    let half_rate = HalfRate {
        max_rps,
        offered_rps,
        open_loop,
    };
    print!("{}", section_half_rate(&half_rate));
    Ok((unary, bulk, half_rate))
}

/// A phase with no successful call measured nothing: fail rather than
/// print a meaningless figure. Some errors are reported, not fatal.
fn check(what: &str, p: &Phase) -> Result<(), CliError> {
    if p.requests == p.errors {
        return Err(CliError::Other(format!(
            "bench: {what}: no successful call ({} calls, {} errors)",
            p.requests, p.errors
        )));
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn errors(p: &Phase) -> String {
    if p.errors == 0 {
        String::new()
    } else {
        format!(" ({} errors)", p.errors)
    }
}

fn section_unary(u: &UnaryVsNoop) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "[1/3] unary Fault vs no-op unary call (closed loop)");
    let _ = writeln!(
        o,
        "  no-op  Health/Check  {:>12.0} rps  p50 {:.3} ms{}",
        u.noop.rps,
        u.noop.latency_ms.p50,
        errors(&u.noop)
    );
    let _ = writeln!(
        o,
        "  Fault  (present pg)  {:>12.0} rps  p50 {:.3} ms, {:.1}% already present{}",
        u.fault.rps,
        u.fault.latency_ms.p50,
        u.fault.already_present * 100.0,
        errors(&u.fault)
    );
    let _ = writeln!(
        o,
        "  ratio fault/noop: {:.3} (target >= {}: {})\n",
        u.ratio,
        u.target_ratio,
        verdict(u.ratio >= u.target_ratio)
    );
    o
}

fn section_bulk(b: &Bulk) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "[2/3] simulated faults/s, {} addresses per FaultBatch (totals_only, closed loop)",
        b.batch
    );
    for (name, p) in [
        ("FaultBatch (unary)", &b.fault_batch),
        ("Session stream", &b.session_stream),
    ] {
        let _ = writeln!(
            o,
            "  {name:<19} {:>10} faults/s  ({:.0} calls/s, target >= {}: {}){}",
            human(p.faults_per_sec),
            p.rps,
            human(b.target_faults_per_sec),
            verdict(p.faults_per_sec >= b.target_faults_per_sec),
            errors(p)
        );
    }
    o.push('\n');
    o
}

fn section_half_rate(h: &HalfRate) -> String {
    let mut o = String::new();
    let l = &h.open_loop.latency_ms;
    let _ = writeln!(
        o,
        "[3/3] unary Fault latency at half the max rate (open loop, coordinated-omission corrected)"
    );
    let _ = writeln!(
        o,
        "  offered {:.0} rps (max {:.0}), achieved {:.0} rps{}",
        h.offered_rps,
        h.max_rps,
        h.open_loop.rps,
        errors(&h.open_loop)
    );
    let _ = writeln!(
        o,
        "  p50 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms\n",
        l.p50, l.p99, l.p999, l.max
    );
    o
}

impl BenchReport {
    /// The compact table printed at the end.
    pub fn table(&self) -> String {
        let u = &self.unary;
        let b = &self.bulk;
        let h = &self.half_rate;
        let l = &h.open_loop.latency_ms;
        let ok = |m: bool| verdict(m).to_string();
        let bulk_row = |how: &str, p: &Phase| -> [String; 3] {
            [
                format!("FaultBatch x{} ({how})", b.batch),
                format!("{} faults/s", human(p.faults_per_sec)),
                format!(
                    ">= {}  {}",
                    human(b.target_faults_per_sec),
                    ok(p.faults_per_sec >= b.target_faults_per_sec)
                ),
            ]
        };
        let rows: Vec<[String; 3]> = vec![
            [
                "no-op Health/Check (unary)".into(),
                format!("{} rps", human(u.noop.rps)),
                String::new(),
            ],
            [
                "Fault (unary)".into(),
                format!("{} rps", human(u.fault.rps)),
                String::new(),
            ],
            [
                "ratio fault/noop".into(),
                format!("{:.3}", u.ratio),
                format!(">= {}  {}", u.target_ratio, ok(u.ratio >= u.target_ratio)),
            ],
            bulk_row("unary", &b.fault_batch),
            bulk_row("Session stream", &b.session_stream),
            [
                format!("Fault open loop @ {} rps", human(h.offered_rps)),
                format!("p50 {:.3} ms", l.p50),
                String::new(),
            ],
            ["".into(), format!("p99 {:.3} ms", l.p99), String::new()],
            ["".into(), format!("p99.9 {:.3} ms", l.p999), String::new()],
        ];
        let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} | {} workers, {} connection(s), {:?} per phase",
            self.server, self.options.concurrency, self.options.connections, self.options.duration
        );
        let _ = writeln!(o, "{:<w0$}  {:>w1$}  target", "benchmark", "result");
        for [a, b, c] in rows {
            let _ = writeln!(o, "{a:<w0$}  {b:>w1$}  {c}");
        }
        // Trailing spaces of rows without a target are noise in a README.
        o.lines().map(|l| l.trim_end().to_string() + "\n").collect()
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(self).expect("report serializes");
        std::fs::write(path, text + "\n")
            .map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))
    }
}
