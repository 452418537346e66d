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
//! 4. **The load generator's own cost**, when `h2load` (Debian
//!    `nghttp2-client`) is on `PATH` and the target is plain HTTP: the same
//!    unary `Fault` (a fixed present page of worker 0's process) driven by
//!    h2load at the same connections × streams, an independent transport
//!    ceiling for the server. `vmasim fault rps / h2load rps` says how much
//!    of the closed-loop figure the client itself costs (target ≥ 0.7).
//!    The two are measured A-B-B-A in half-phases, vmasim's closed loop
//!    again beside h2load rather than phase 1's figure from half a minute
//!    earlier: on this shared machine the load drifts within a run, and a
//!    ratio of two measurements taken apart measured the drift as much as
//!    the client.
//!    h2load counts HTTP/2 responses: a gRPC error still arrives as HTTP
//!    200 with a `grpc-status` trailer, so the body is one the setup
//!    checked succeeds.
//!
//! The measured unary calls (phases 1, 3 and 4, and `FaultBatch` in 2) go
//! straight over one h2 connection per `--connections` ([`crate::direct`]):
//! tonic's `Channel` costs a buffer task and a spawned task per call, which
//! the closed loop measured as the client's cost, not the server's. Setup
//! and the `Session` streams keep a `Channel` of their own.
//!
//! The admission (closed/open loop, coordinated-omission correction) and
//! the measurements (HdrHistogram [`Recorder`]) are the load generator's
//! ([`crate::load::shared::Shared`]); only the per-request work is
//! specific here, because the load workers draw random operations from a
//! shadow model, which would charge `Fault` client-side work the no-op
//! does not do and skew the ratio.

use crate::connect::{Client, Target};
use crate::demo::human;
use crate::direct::{DirectClient, DirectHealth, Via};
use crate::error::CliError;
use crate::load::mix::OpKind;
use crate::load::recorder::Recorder;
use crate::load::report::Latency;
use crate::load::shadow::PAGE;
use crate::load::shared::Shared;
use crate::stats::add_totals;
use crate::stats::single_totals;
use crate::transport::Transport;
use serde::Serialize;
use std::fmt::Write as _;
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
/// Target of `vmasim unary Fault rps / h2load unary Fault rps`.
pub const TARGET_VS_H2LOAD: f64 = 0.7;

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
    #[cfg(feature = "embedded")]
    #[serde(serialize_with = "ser_cache")]
    pub cache: crate::embedded::CachePolicy,
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
            #[cfg(feature = "embedded")]
            cache: crate::embedded::CachePolicy::default(),
            progress: true,
        }
    }
}

#[cfg(feature = "embedded")]
fn ser_cache<S: serde::Serializer>(
    c: &crate::embedded::CachePolicy,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.as_str())
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
    /// The same unary `Fault` driven by h2load (None: h2load not installed
    /// or the target not plain HTTP).
    pub h2load: Option<H2load>,
}

/// Unary `Fault` driven by h2load at the same connections x streams,
/// measured A-B-B-A against vmasim's own closed loop.
#[derive(Debug, Clone, Serialize)]
pub struct H2load {
    /// The command run (once per h2load half, the same each time).
    pub command: String,
    /// HTTP/2 connections (`-c`).
    pub connections: usize,
    /// Concurrent streams per connection (`-m`).
    pub streams: usize,
    /// Requests per second h2load reports (mean of its two halves, which
    /// last the same).
    pub rps: f64,
    /// Requests h2load counted as succeeded / failed or errored.
    pub succeeded: u64,
    /// Failed + errored requests.
    pub failed: u64,
    /// vmasim's closed-loop unary `Fault` in the halves beside h2load's.
    pub vmasim: Phase,
    /// `vmasim.rps / rps`.
    pub ratio: f64,
    /// [`TARGET_VS_H2LOAD`].
    pub target_ratio: f64,
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
    /// Setup, cleanup and the `Session` stream, through a `Channel`.
    client: Client,
    /// The measured unary calls, on the same connection's [`Via`] (straight
    /// over h2 on plain HTTP: see [`crate::direct`]).
    unary: DirectClient,
    health: DirectHealth,
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
        via: &Via,
        pages: usize,
    ) -> Result<Self, CliError> {
        let mut client = target.client(ch)?;
        let unary = via.client(target)?;
        let health = via.health(target)?;
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
                file_size: 0,
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
            unary,
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
                    .unary
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
                    self.unary
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
        #[cfg(feature = "embedded")]
        None => {
            let srv = crate::embedded::Embedded::start(o.cache, false).await?;
            let name = format!("embedded {} server on {}", o.cache.as_str(), srv.url);
            let r = run_on(o, &Target::plain(srv.url.clone()), name).await;
            srv.stop().await;
            r
        }
        #[cfg(not(feature = "embedded"))]
        None => Err(CliError::NeedsEmbedded("bench")),
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
        channels.push((target.channel().await?, Via::connect(target).await?));
    }
    let mut slots = Vec::new();
    for i in 0..o.concurrency {
        let (ch, via) = &channels[i % channels.len()];
        slots.push(Slot::setup(target, ch.clone(), via, o.batch).await?);
    }
    let r = phases(o, target, &mut slots, &say).await;
    // Cleanup, best effort: an external server should not keep our processes.
    for s in &mut slots {
        let _ = s.client.exit(ExitRequest { pid: s.pid }).await;
    }
    let (unary, bulk, half_rate, h2load) = r?;
    Ok(BenchReport {
        server: name,
        options: o.clone(),
        unary,
        bulk,
        half_rate,
        h2load,
    })
}

type Phases = (UnaryVsNoop, Bulk, HalfRate, Option<H2load>);

async fn phases(
    o: &BenchOptions,
    target: &Target,
    slots: &mut Vec<Slot>,
    say: &dyn Fn(String),
) -> Result<Phases, CliError> {
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

    let h2 = match h2load_plan(o, target) {
        Some(streams) => {
            say(format!(
                "[4/4] unary Fault driven by h2load, {} connection(s) x {streams} streams, A-B-B-A with vmasim's ...",
                o.connections
            ));
            // h2load is an outside reference: if it cannot run, say why and
            // keep vmasim's own figures.
            match vs_h2load(o, target, slots, streams).await {
                Ok(h) => {
                    print!("{}", section_h2load(&h));
                    Some(h)
                }
                Err(e) => {
                    eprintln!("bench: h2load comparison skipped: {e}");
                    None
                }
            }
        }
        None => None,
    };
    Ok((unary, bulk, half_rate, h2))
}

/// Streams per connection for h2load, if it can run: installed, and the
/// target plain HTTP without a token (h2load is given no credentials).
fn h2load_plan(o: &BenchOptions, target: &Target) -> Option<usize> {
    if !target.url.starts_with("http://") || target.token.is_some() || target.tls_ca.is_some() {
        return None;
    }
    let found = std::process::Command::new("h2load")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    // vmasim spreads `concurrency` workers over `connections` channels.
    found.then(|| o.concurrency.div_ceil(o.connections).max(1))
}

/// The gRPC body of one unary call: the 5-byte frame header (uncompressed
/// flag, big-endian length) and the encoded message.
fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Phase 4: vmasim's closed-loop unary `Fault`, h2load, h2load, vmasim
/// again, each for half the duration (the first of each side after its
/// warm-up), so that a drift in the machine's load hits both alike.
async fn vs_h2load(
    o: &BenchOptions,
    target: &Target,
    slots: &mut Vec<Slot>,
    streams: usize,
) -> Result<H2load, CliError> {
    let half = o.duration / 2;
    let mut vm = (Recorder::default(), Duration::ZERO);
    let mut runs = Vec::new();
    for (i, by_h2load) in [false, true, true, false].into_iter().enumerate() {
        let warmup = if i < 2 { o.warmup } else { Duration::ZERO };
        if by_h2load {
            runs.push(run_h2load(o, target, &slots[0], streams, half, warmup).await?);
        } else {
            let (rec, d) = measure(slots, Kind::Fault, None, warmup, half).await;
            vm.0.merge(&rec);
            vm.1 += d;
        }
    }
    let vmasim = Phase::new(&vm.0, vm.1);
    check("unary Fault beside h2load", &vmasim)?;
    // Both h2load runs last `half`: their mean rate is the rate of both.
    let rps = runs.iter().map(|r| r.rps).sum::<f64>() / runs.len() as f64;
    Ok(H2load {
        command: runs[0].command.clone(),
        connections: o.connections,
        streams,
        rps,
        succeeded: runs.iter().map(|r| r.succeeded).sum(),
        failed: runs.iter().map(|r| r.failed).sum(),
        ratio: vmasim.rps / rps.max(1e-9),
        vmasim,
        target_ratio: TARGET_VS_H2LOAD,
    })
}

/// What one h2load run reported.
struct H2loadRun {
    command: String,
    rps: f64,
    succeeded: u64,
    failed: u64,
}

/// One h2load run of `duration` after `warmup` (`0`: none).
async fn run_h2load(
    o: &BenchOptions,
    target: &Target,
    slot: &Slot,
    streams: usize,
    duration: Duration,
    warmup: Duration,
) -> Result<H2loadRun, CliError> {
    let req = FaultRequest {
        pid: slot.pid,
        addr: slot.addrs[0],
        access: Access::Read as i32,
    };
    let path = std::env::temp_dir().join(format!("vmasim-h2load-{}.bin", std::process::id()));
    std::fs::write(&path, grpc_frame(&req))
        .map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))?;
    let url = format!(
        "{}/{}/Fault",
        target.url.trim_end_matches('/'),
        vmasim_proto::v1::address_space_server::SERVICE_NAME
    );
    let args: Vec<String> = vec![
        // Whole milliseconds: h2load takes a unit suffix, not fractions.
        "-D".into(),
        format!("{}ms", duration.as_millis().max(1)),
        format!("--warm-up-time={}ms", warmup.as_millis()),
        "-c".into(),
        o.connections.to_string(),
        "-m".into(),
        streams.to_string(),
        "-t".into(),
        "1".into(),
        "-H".into(),
        "content-type: application/grpc".into(),
        "-H".into(),
        "te: trailers".into(),
        "-d".into(),
        path.display().to_string(),
        url,
    ];
    let command = format!("h2load {}", args.join(" "));
    let out = wait_h2load(&args, duration + warmup + Duration::from_secs(30), &command).await;
    let _ = std::fs::remove_file(&path);
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (rps, succeeded, failed) = parse_h2load(&text).ok_or_else(|| {
        CliError::Other(format!(
            "cannot read h2load's output ({}): {command}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    if succeeded == 0 {
        return Err(CliError::Other(format!(
            "h2load: no request succeeded: {command}\n{text}"
        )));
    }
    Ok(H2loadRun {
        command,
        rps,
        succeeded,
        failed,
    })
}

/// Runs h2load to completion (it stops itself after `-D`), polling so the
/// runtime is not blocked; kills it if it is still running after `limit`.
async fn wait_h2load(
    args: &[String],
    limit: Duration,
    command: &str,
) -> Result<std::process::Output, CliError> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("h2load")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CliError::Other(format!("cannot run h2load: {e}")))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CliError::Other(format!(
                    "h2load did not finish within {limit:?}: {command}"
                )));
            }
            Err(e) => return Err(CliError::Other(format!("waiting for h2load: {e}"))),
        }
    }
    // Exited: its pipes hold the (small) summary.
    child
        .wait_with_output()
        .map_err(|e| CliError::Other(format!("reading h2load's output: {e}")))
}

/// `(req/s, succeeded, failed + errored)` from h2load's summary:
/// `finished in 5.00s, 68123.40 req/s, 4.5MB/s` and
/// `requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout`.
pub fn parse_h2load(text: &str) -> Option<(f64, u64, u64)> {
    let rps = text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("finished in ")?;
        let field = rest.split(", ").nth(1)?;
        field.strip_suffix(" req/s")?.trim().parse::<f64>().ok()
    })?;
    let reqs = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))?;
    let count = |name: &str| -> Option<u64> {
        reqs.split(", ").find_map(|f| {
            let (n, what) = f.trim().split_once(' ')?;
            (what == name).then(|| n.parse().ok()).flatten()
        })
    };
    let failed = count("failed").unwrap_or(0) + count("errored").unwrap_or(0);
    Some((rps, count("succeeded")?, failed))
}

fn section_h2load(h: &H2load) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "[4/4] the same unary Fault driven by h2load ({} connection(s) x {} streams)",
        h.connections, h.streams
    );
    let _ = writeln!(
        o,
        "  h2load {:>12.0} rps ({} succeeded, {} failed)",
        h.rps, h.succeeded, h.failed
    );
    let _ = writeln!(
        o,
        "  vmasim {:>12.0} rps (closed loop, A-B-B-A with h2load){}",
        h.vmasim.rps,
        errors(&h.vmasim)
    );
    let _ = writeln!(
        o,
        "  ratio vmasim/h2load: {:.3} (target >= {}: {})\n  {}\n",
        h.ratio,
        h.target_ratio,
        verdict(h.ratio >= h.target_ratio),
        h.command
    );
    o
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
        let mut rows = rows;
        if let Some(h2) = &self.h2load {
            rows.push([
                format!("Fault (unary) by h2load {}x{}", h2.connections, h2.streams),
                format!("{} rps", human(h2.rps)),
                String::new(),
            ]);
            rows.push([
                "ratio vmasim/h2load".into(),
                format!("{:.3}", h2.ratio),
                format!(
                    ">= {}  {}",
                    h2.target_ratio,
                    ok(h2.ratio >= h2.target_ratio)
                ),
            ]);
        }
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

    /// The report as pretty JSON (`bench -o FILE.json`).
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes") + "\n"
    }
}

#[cfg(test)]
mod h2load_tests {
    use super::*;

    #[test]
    fn parses_h2load_summary() {
        let out = "starting benchmark...\n\
finished in 5.00s, 68123.40 req/s, 4.55MB/s\n\
requests: 340617 total, 340625 started, 340617 done, 340600 succeeded, 17 failed, 0 errored, 0 timeout\n\
status codes: 340617 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        assert_eq!(parse_h2load(out), Some((68123.40, 340600, 17)));
        assert_eq!(parse_h2load("garbage"), None);
    }

    #[test]
    fn grpc_frame_has_the_five_byte_header() {
        let f = grpc_frame(&FaultRequest {
            pid: 1,
            addr: 0x1000,
            access: 0,
        });
        assert_eq!(f[0], 0);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len, f.len() - 5);
    }
}
