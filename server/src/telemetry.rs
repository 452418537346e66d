//! Prometheus metrics: names, descriptions, the per-server recorder, and the
//! refresh from the engine's counters.
//!
//! Why shaped so:
//!
//! * **No global recorder.** Each [`Telemetry`] owns its own
//!   [`PrometheusRecorder`] and records through handles registered on it, so
//!   several servers can live in one process (integration tests; `vmasim
//!   demo` runs a `typesafe` and an `rcu` server back to back) without their
//!   numbers mixing.
//! * **The engine is the source of truth.** Engine counters live in sharded
//!   per-thread cells (see `mm::vmstat`); copying each event into a second
//!   metrics counter on the fault path would double its cost. Instead
//!   [`Telemetry::render`] reads [`SimStats`] once per scrape and sets the
//!   exported counters to those absolute values (and the gauges to the
//!   current ones). `Stats` and `/metrics` therefore show the same numbers.
//! * **Only what the engine does not count is recorded live:** RPC latency
//!   and status codes, and fault service latency.
//! * **Every series exists from start-up.** Each metric (and each label
//!   value of a bounded label set) is registered with 0 in
//!   [`Telemetry::new`], so dashboards and recording rules never see "no
//!   data" on an idle server.
//!
//! * **`process_*`** (CPU seconds, resident and virtual memory, open and
//!   max fds, threads, start time) come from `metrics-process`, the
//!   Prometheus client convention, collected at each render into this
//!   recorder (a local-recorder scope, so still no global one). They
//!   describe the process the server runs in: the server binary, or the
//!   test / `vmasim demo` process hosting an embedded server.
//!
//! Every name, kind and help text is in one table, [`METRICS`]: the
//! exposition is described from it, this file's test checks the idle
//! exposition against it, and the deploy check reads it from the binary
//! (`vmasim-server --print-metrics`). The names are a contract with
//! `deploy/` (Grafana dashboard, recording rules); change them only
//! together.

use crate::mm::{
    FaultOutcome, FaultPath, MapsEvent, PAGE_SIZE, ReuseCheck, SimConfig, SimStats, VmaLockEvent,
};
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tonic::Code;

/// Every metric vmasim exports (beside the standard `process_*` set),
/// with its kind, unit and `# HELP` text: the one place a metric is named.
/// [`Telemetry::new`] describes each from here, and the telemetry test and
/// the deploy check (through the hidden `vmasim-server --print-metrics`)
/// check the exposition against [`METRICS`] instead of keeping lists of
/// their own. Each entry also becomes a `pub const` of its name.
macro_rules! metrics_table {
    ($($(#[doc = $doc:literal])* $id:ident: $kind:ident($unit:ident) = $name:literal, $help:literal;)*) => {
        $($(#[doc = $doc])* pub const $id: &str = $name;)*

        /// The table, in the order written.
        pub const METRICS: &[Metric] = &[$(Metric {
            name: $name,
            kind: Kind::$kind,
            unit: Unit::$unit,
            help: $help,
        }),*];
    };
}

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One row of [`METRICS`].
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// `vmasim_*`, with Prometheus' `_total` / unit suffixes.
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// The `# HELP` text.
    pub help: &'static str,
}

metrics_table! {
    /// `vmasim_build_info{version,vma_cache,fault_lock}`: always 1.
    BUILD_INFO: Gauge(Count) = "vmasim_build_info",
        "Always 1; labels give the server version, VMA cache policy (typesafe|rcu) and fault locking mode (per-vma|mmap-lock).";
    /// `vmasim_vma_lock_total{result}`: per-VMA lock events (kernel `VMA_LOCK_*`).
    VMA_LOCK: Counter(Count) = "vmasim_vma_lock_total",
        "Per-VMA lock events by result (kernel VMA_LOCK_SUCCESS, _ABORT, _RETRY, _MISS).";
    /// Faults served under `mmap_lock` after a failed per-VMA attempt.
    MMAP_LOCK_FALLBACKS: Counter(Count) = "vmasim_mmap_lock_fallbacks_total",
        "Faults served under mmap_lock after a failed per-VMA lock attempt.";
    /// `vmasim_faults_total{outcome,path}`.
    FAULTS: Counter(Count) = "vmasim_faults_total",
        "Page faults handled, by outcome and by the locking path that served them.";
    /// `vmasim_vma_allocations_total{source=reused|fresh}`.
    VMA_ALLOCATIONS: Counter(Count) = "vmasim_vma_allocations_total",
        "VMA allocations from the VMA cache, by source: a reused (previously freed) slot or a fresh one.";
    /// Reused slots handed out before a grace period had passed.
    VMA_REUSE_BEFORE_GP: Counter(Count) = "vmasim_vma_reuse_before_grace_period_total",
        "Reused VMA slots handed out before a grace period had passed since their free (SLAB_TYPESAFE_BY_RCU only).";
    /// `vm_area_free` calls.
    VMA_FREES: Counter(Count) = "vmasim_vma_frees_total",
        "VMA frees (vm_area_free calls).";
    /// Frees that went through `call_rcu`.
    CALL_RCU: Counter(Count) = "vmasim_call_rcu_total",
        "VMA frees that went through call_rcu (vma_cache=rcu).";
    /// Frees that did not need `call_rcu`.
    CALL_RCU_AVOIDED: Counter(Count) = "vmasim_call_rcu_avoided_total",
        "VMA frees that needed no call_rcu (vma_cache=typesafe).";
    /// Grace periods observed.
    GRACE_PERIODS: Counter(Count) = "vmasim_grace_periods_total",
        "RCU grace periods (epoch advances) observed.";
    /// `vmasim_pool_slots{state=live|free|waiting}`.
    POOL_SLOTS: Gauge(Count) = "vmasim_pool_slots",
        "VMA cache slots by state: live (holding a VMA), free (on the free list), waiting (for a grace period).";
    /// Slots in all allocated slabs.
    POOL_CAPACITY_SLOTS: Gauge(Count) = "vmasim_pool_capacity_slots",
        "VMA cache slots in all allocated slabs (live + free + waiting).";
    /// Slabs allocated.
    POOL_SLABS: Gauge(Count) = "vmasim_pool_slabs",
        "VMA cache slabs allocated.";
    /// `vmasim_vma_cache_sheaf_hits_total{op=alloc|free}`: VMA cache operations
    /// served by the thread's own sheaves (kernel `ALLOC_PCS` / `FREE_PCS`
    /// without a barn or slab trip).
    SHEAF_HITS: Counter(Count) = "vmasim_vma_cache_sheaf_hits_total",
        "VMA cache allocations and frees served by the calling thread's own sheaves, touching no shared cache line (kernel ALLOC_PCS/FREE_PCS without a barn or slab trip).";
    /// `vmasim_vma_cache_barn_exchanges_total{op=get|put}`: sheaves exchanged
    /// with the shared barn (`BARN_GET` / `BARN_PUT`).
    BARN_EXCHANGES: Counter(Count) = "vmasim_vma_cache_barn_exchanges_total",
        "Sheaves exchanged with the VMA cache's shared barn: op=get took a full sheaf for an empty one (BARN_GET), op=put gave a full one for an empty one (BARN_PUT).";
    /// Sheaves refilled from the slabs (`SHEAF_REFILL`).
    SLAB_REFILLS: Counter(Count) = "vmasim_vma_cache_slab_refills_total",
        "Empty sheaves refilled from the slabs' free lists and new slab slots (SHEAF_REFILL).";
    /// Sheaves flushed back to the slabs (`SHEAF_FLUSH`).
    SHEAF_FLUSHES: Counter(Count) = "vmasim_vma_cache_sheaf_flushes_total",
        "Sheaves flushed back to the slabs because the barn held enough full sheaves, or to drain free slots at the capacity (SHEAF_FLUSH).";
    /// Live processes.
    PROCESSES: Gauge(Count) = "vmasim_processes",
        "Live simulated processes.";
    /// VMAs in all live processes.
    VMAS: Gauge(Count) = "vmasim_vmas",
        "VMAs in all live processes.";
    /// Resident memory of all live processes, bytes.
    RSS_BYTES: Gauge(Bytes) = "vmasim_rss_bytes",
        "Simulated resident memory of all live processes in bytes (4 KiB pages; a COW-shared page counts in each process; the zero page, mapped by read faults on anonymous memory, counts nowhere, as in the kernel). The server's own memory is process_resident_memory_bytes.";
    /// Page-table memory of all live processes, bytes (`VmPTE` summed).
    PGTABLES_BYTES: Gauge(Bytes) = "vmasim_pgtables_bytes",
        "Page-table memory of all live processes in bytes (the kernel's VmPTE, summed): one 4 KiB table per 2 MiB region touched, plus upper levels. Real server memory, bounded by vmasim_pgtables_limit_bytes.";
    /// The page-table memory limit (`--max-pgtables-bytes`), bytes.
    PGTABLES_LIMIT_BYTES: Gauge(Bytes) = "vmasim_pgtables_limit_bytes",
        "The page-table memory limit (--max-pgtables-bytes); a fault needing a table past it is answered RESOURCE_EXHAUSTED and counted as outcome=\"oom\".";
    /// `vmasim_maps_reads_total{reader=per-vma|mmap-lock}`: Maps reads.
    MAPS_READS: Counter(Count) = "vmasim_maps_reads_total",
        "Maps (/proc/PID/maps) reads, by reader: per-vma (RCU walk and per-VMA read locks, lock_next_vma, Linux 6.17+) or mmap-lock (mmap_lock for the whole walk).";
    /// `vmasim_maps_vma_lock_total{result}`: the steps of `lock_next_vma` in
    /// per-VMA maps reads (labels: [`crate::mm::MapsEvent::as_str`]).
    MAPS_VMA_LOCK: Counter(Count) = "vmasim_maps_vma_lock_total",
        "Steps of lock_next_vma in per-vma maps reads: locked (from the RCU walk), detached_retry, gap_recheck, mmap_lock_fallback (next VMA locked under a momentary mmap_lock), rest_under_mmap_lock, unstable_tree (vmasim only: a gap or end seen while a writer changed the tree, asked again under mmap_lock).";
    /// `vmasim_reuse_detected_total{check}`.
    REUSE_DETECTED: Counter(Count) = "vmasim_reuse_detected_total",
        "Reuses of a VMA slot under a lockless reader caught in ordinary traffic, by the check that caught them.";
    /// `vmasim_rpc_duration_seconds{method}` histogram.
    RPC_DURATION: Histogram(Seconds) = "vmasim_rpc_duration_seconds",
        "gRPC call duration in seconds, from request to end of response (whole stream for Session), by method.";
    /// `vmasim_rpc_requests_total{method,code}`.
    RPC_REQUESTS: Counter(Count) = "vmasim_rpc_requests_total",
        "Finished gRPC calls by method and status code.";
    /// `vmasim_fault_duration_seconds` histogram.
    FAULT_DURATION: Histogram(Seconds) = "vmasim_fault_duration_seconds",
        "Service time of one page fault in seconds (every Fault, every Session fault, 1 in 64 faults of a FaultBatch).";
    /// Open gRPC connections.
    CONNECTIONS: Gauge(Count) = "vmasim_connections",
        "Open gRPC connections.";
    /// Bytes of large replies built but not yet handed to HTTP/2.
    REPLY_BUFFER_BYTES: Gauge(Bytes) = "vmasim_reply_buffer_bytes",
        "Bytes of large replies built but not yet handed to HTTP/2 (what clients that do not read pin), all calls together.";
    /// Its limit (`--max-reply-buffer-bytes`).
    REPLY_BUFFER_LIMIT_BYTES: Gauge(Bytes) = "vmasim_reply_buffer_limit_bytes",
        "The limit on vmasim_reply_buffer_bytes (--max-reply-buffer-bytes); past it calls with large replies are RESOURCE_EXHAUSTED.";
    /// Calls holding a concurrency slot now (including work that outlived
    /// its call).
    CALLS_IN_FLIGHT: Gauge(Count) = "vmasim_calls_in_flight",
        "Calls holding a concurrency slot, including engine work still running for a call that was abandoned (at most --concurrency-limit).";
    /// `vmasim_connections_refused_total{reason=limit|handshake_timeout}`.
    CONNECTIONS_REFUSED: Counter(Count) = "vmasim_connections_refused_total",
        "Connections closed by the server: reason=limit (over --max-connections, closed on accept), reason=handshake_timeout (no HTTP/2 preface and SETTINGS frame within --handshake-timeout).";
    /// `accept` failures (EMFILE at the fd limit, ENFILE, ENOMEM), each
    /// followed by a pause.
    ACCEPT_ERRORS: Counter(Count) = "vmasim_accept_errors_total",
        "accept() failures (EMFILE at the open-file limit, ENFILE, ENOMEM); each is followed by a 100 ms pause instead of a retry at once.";
    /// `vmasim_rpc_applied_after_abandon_total{method}`: calls whose engine
    /// work completed after the client had gone (cancelled or past its
    /// deadline), so their effect stands although nobody saw the answer.
    RPC_APPLIED_AFTER_ABANDON: Counter(Count) = "vmasim_rpc_applied_after_abandon_total",
        "Calls whose engine work completed although the client had already cancelled or passed its deadline: the effect stands, nobody saw the answer. Work that had not started when the call was abandoned is not done at all.";
    /// `vmasim_rpc_undone_after_abandon_total{method}`: abandoned `Fork`s and
    /// `Spawn`s whose new process was exited again, since nobody received its
    /// pid.
    RPC_UNDONE_AFTER_ABANDON: Counter(Count) = "vmasim_rpc_undone_after_abandon_total",
        "Abandoned Fork and Spawn calls whose new process was exited again because nobody received its pid.";
}

/// RPC latency buckets, seconds: 50 µs (a unary call on loopback) up to the
/// default 30 s request timeout.
const RPC_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Fault latency buckets, seconds: a lockless fault takes well under a
/// microsecond, one that waits for `mmap_lock` behind a `fork` can take
/// milliseconds.
const FAULT_BUCKETS: &[f64] = &[
    0.000_000_1,
    0.000_000_25,
    0.000_000_5,
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.001,
    0.01,
    0.1,
];

/// The methods of `vmasim.v1.AddressSpace` (the `method` label values
/// registered at start-up) and the gRPC status names (the `code` label):
/// the proto crate owns both.
pub use vmasim_proto::{METHODS, status::code_name};

/// Handles of the metrics refreshed from [`SimStats`] at render time.
struct EngineMetrics {
    vma_lock: [Counter; VmaLockEvent::ALL.len()],
    mmap_lock_fallbacks: Counter,
    faults: [[Counter; FaultPath::ALL.len()]; FaultOutcome::ALL.len()],
    alloc_reused: Counter,
    alloc_fresh: Counter,
    reuse_before_gp: Counter,
    frees: Counter,
    call_rcu: Counter,
    call_rcu_avoided: Counter,
    grace_periods: Counter,
    slots_live: Gauge,
    slots_free: Gauge,
    slots_waiting: Gauge,
    capacity_slots: Gauge,
    slabs: Gauge,
    processes: Gauge,
    vmas: Gauge,
    rss_bytes: Gauge,
    pgtables_bytes: Gauge,
    reuse_detected: [Counter; 4],
    /// `[alloc, free]`.
    sheaf_hits: [Counter; 2],
    /// `[get, put]`.
    barn_exchanges: [Counter; 2],
    slab_refills: Counter,
    sheaf_flushes: Counter,
    /// Indexed by `MapsEvent`.
    maps: Vec<Counter>,
}

/// Per-method RPC handles, registered lazily per `code` (a bounded set: 17
/// codes times a fixed list of methods).
struct RpcMetrics {
    duration: Histogram,
    requests: Mutex<HashMap<Code, Counter>>,
}

/// One server's metrics.
pub struct Telemetry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    engine: EngineMetrics,
    rpc: HashMap<&'static str, RpcMetrics>,
    fault_duration: Histogram,
    connections: Gauge,
    refused_limit: Counter,
    refused_handshake: Counter,
    accept_errors: Counter,
    /// What the server layer lets the metrics read at render time: the
    /// reply budget and the concurrency semaphore.
    server_state: std::sync::OnceLock<ServerState>,
    /// `process_*` metrics of this OS process.
    process: metrics_process::Collector,
}

/// Server-layer state sampled when metrics are rendered.
#[derive(Debug)]
pub struct ServerState {
    /// The reply-byte budget.
    pub replies: std::sync::Arc<crate::server::call::ReplyBudget>,
    /// The global concurrency limit's semaphore and its size.
    pub slots: (std::sync::Arc<tokio::sync::Semaphore>, usize),
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

impl Telemetry {
    /// A recorder with every metric described and registered at 0, and
    /// `vmasim_build_info` set for `cfg`.
    pub fn new(cfg: &SimConfig) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(RPC_DURATION.into()), RPC_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(FAULT_DURATION.into()), FAULT_BUCKETS)
            })
            // Both bucket lists are non-empty constants: this cannot fail.
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || {
            process.describe();
            process.collect();
        });

        let r = &recorder;
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            r.register_counter(&key(name, labels), &METADATA)
        };
        let gauge = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            r.register_gauge(&key(name, labels), &METADATA)
        };

        let build = Key::from_parts(
            BUILD_INFO,
            vec![
                Label::new("version", env!("CARGO_PKG_VERSION")),
                Label::new("vma_cache", cfg.vma_cache.as_str()),
                Label::new("fault_lock", cfg.fault_lock.as_str()),
            ],
        );
        r.register_gauge(&build, &METADATA).set(1.0);

        let engine = EngineMetrics {
            vma_lock: VmaLockEvent::ALL.map(|e| counter(VMA_LOCK, &[("result", e.as_str())])),
            mmap_lock_fallbacks: counter(MMAP_LOCK_FALLBACKS, &[]),
            faults: FaultOutcome::ALL.map(|o| {
                FaultPath::ALL
                    .map(|p| counter(FAULTS, &[("outcome", o.as_str()), ("path", p.as_str())]))
            }),
            alloc_reused: counter(VMA_ALLOCATIONS, &[("source", "reused")]),
            alloc_fresh: counter(VMA_ALLOCATIONS, &[("source", "fresh")]),
            reuse_before_gp: counter(VMA_REUSE_BEFORE_GP, &[]),
            frees: counter(VMA_FREES, &[]),
            call_rcu: counter(CALL_RCU, &[]),
            call_rcu_avoided: counter(CALL_RCU_AVOIDED, &[]),
            grace_periods: counter(GRACE_PERIODS, &[]),
            slots_live: gauge(POOL_SLOTS, &[("state", "live")]),
            slots_free: gauge(POOL_SLOTS, &[("state", "free")]),
            slots_waiting: gauge(POOL_SLOTS, &[("state", "waiting")]),
            capacity_slots: gauge(POOL_CAPACITY_SLOTS, &[]),
            slabs: gauge(POOL_SLABS, &[]),
            processes: gauge(PROCESSES, &[]),
            vmas: gauge(VMAS, &[]),
            rss_bytes: gauge(RSS_BYTES, &[]),
            pgtables_bytes: gauge(PGTABLES_BYTES, &[]),
            reuse_detected: ReuseCheck::ALL
                .map(|c| counter(REUSE_DETECTED, &[("check", c.as_str())])),
            sheaf_hits: ["alloc", "free"].map(|op| counter(SHEAF_HITS, &[("op", op)])),
            barn_exchanges: ["get", "put"].map(|op| counter(BARN_EXCHANGES, &[("op", op)])),
            slab_refills: counter(SLAB_REFILLS, &[]),
            sheaf_flushes: counter(SHEAF_FLUSHES, &[]),
            maps: MapsEvent::ALL
                .iter()
                .map(|&e| match e {
                    MapsEvent::ReadPerVma | MapsEvent::ReadMmapLock => {
                        counter(MAPS_READS, &[("reader", e.as_str())])
                    }
                    _ => counter(MAPS_VMA_LOCK, &[("result", e.as_str())]),
                })
                .collect(),
        };
        // A gauge is only exported once it has been set.
        for g in [
            &engine.slots_live,
            &engine.slots_free,
            &engine.slots_waiting,
            &engine.capacity_slots,
            &engine.slabs,
            &engine.processes,
            &engine.vmas,
            &engine.rss_bytes,
            &engine.pgtables_bytes,
        ] {
            g.set(0.0);
        }
        r.register_gauge(&key(PGTABLES_LIMIT_BYTES, &[]), &METADATA)
            .set(cfg.max_pgtables_bytes as f64);

        let rpc = METHODS
            .iter()
            .map(|&m| {
                let ok = counter(RPC_REQUESTS, &[("method", m), ("code", "OK")]);
                let rm = RpcMetrics {
                    duration: r.register_histogram(&key(RPC_DURATION, &[("method", m)]), &METADATA),
                    requests: Mutex::new(HashMap::from([(Code::Ok, ok)])),
                };
                (m, rm)
            })
            .collect();
        let fault_duration = r.register_histogram(&key(FAULT_DURATION, &[]), &METADATA);
        let connections = gauge(CONNECTIONS, &[]);
        connections.set(0.0);
        let refused_limit = counter(CONNECTIONS_REFUSED, &[("reason", "limit")]);
        let refused_handshake = counter(CONNECTIONS_REFUSED, &[("reason", "handshake_timeout")]);
        let accept_errors = counter(ACCEPT_ERRORS, &[]);
        for m in METHODS {
            counter(RPC_APPLIED_AFTER_ABANDON, &[("method", m)]).absolute(0);
        }
        for m in ["Fork", "Spawn"] {
            counter(RPC_UNDONE_AFTER_ABANDON, &[("method", m)]).absolute(0);
        }

        Self {
            recorder,
            handle,
            engine,
            rpc,
            fault_duration,
            connections,
            refused_limit,
            refused_handshake,
            accept_errors,
            server_state: std::sync::OnceLock::new(),
            process,
        }
    }

    /// Record one finished RPC. `method` is one of [`METHODS`] or one of the
    /// few other fixed names the server layer passes (health, reflection,
    /// `unknown`), so the label set stays bounded.
    pub fn record_rpc(&self, method: &'static str, code: Code, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(m) = self.rpc.get(method) {
            m.duration.record(secs);
            // The map is tiny and the lock is held for a lookup: far cheaper
            // than the RPC it counts. Poison cannot leave it inconsistent.
            let mut by_code = m.requests.lock().unwrap_or_else(|e| e.into_inner());
            by_code
                .entry(code)
                .or_insert_with(|| {
                    self.recorder.register_counter(
                        &key(
                            RPC_REQUESTS,
                            &[("method", method), ("code", code_name(code))],
                        ),
                        &METADATA,
                    )
                })
                .increment(1);
        } else {
            self.recorder
                .register_histogram(&key(RPC_DURATION, &[("method", method)]), &METADATA)
                .record(secs);
            self.recorder
                .register_counter(
                    &key(
                        RPC_REQUESTS,
                        &[("method", method), ("code", code_name(code))],
                    ),
                    &METADATA,
                )
                .increment(1);
        }
    }

    /// Let rendering sample the server's reply budget and slots (once).
    pub fn attach_server_state(&self, state: ServerState) {
        let r = &self.recorder;
        r.register_gauge(&key(REPLY_BUFFER_LIMIT_BYTES, &[]), &METADATA)
            .set(state.replies.limit() as f64);
        let _ = self.server_state.set(state);
        self.refresh_server_state();
    }

    fn refresh_server_state(&self) {
        if let Some(s) = self.server_state.get() {
            self.recorder
                .register_gauge(&key(REPLY_BUFFER_BYTES, &[]), &METADATA)
                .set(s.replies.used() as f64);
            let (sem, size) = &s.slots;
            self.recorder
                .register_gauge(&key(CALLS_IN_FLIGHT, &[]), &METADATA)
                .set(size.saturating_sub(sem.available_permits()) as f64);
        }
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.connections.increment(1.0);
    }

    /// An accepted connection closed.
    pub fn connection_closed(&self) {
        self.connections.decrement(1.0);
    }

    /// A connection was closed by the server: `reason` is `limit` (over
    /// `--max-connections`) or `handshake_timeout`.
    pub fn connection_refused(&self, reason: &'static str) {
        match reason {
            "limit" => self.refused_limit.increment(1),
            _ => self.refused_handshake.increment(1),
        }
    }

    /// `accept` failed (the server pauses before the next one).
    pub fn accept_error(&self) {
        self.accept_errors.increment(1);
    }

    /// `method`'s work took effect after its caller had gone.
    pub fn applied_after_abandon(&self, method: &'static str) {
        self.recorder
            .register_counter(
                &key(RPC_APPLIED_AFTER_ABANDON, &[("method", method)]),
                &METADATA,
            )
            .increment(1);
    }

    /// `method` (Fork, Spawn) created a process after its caller had gone,
    /// and the process was exited again.
    pub fn undone_after_abandon(&self, method: &'static str) {
        self.recorder
            .register_counter(
                &key(RPC_UNDONE_AFTER_ABANDON, &[("method", method)]),
                &METADATA,
            )
            .increment(1);
    }

    /// Record the service time of one page fault.
    #[inline]
    pub fn record_fault(&self, elapsed: Duration) {
        self.fault_duration.record(elapsed.as_secs_f64());
    }

    /// Set the engine-derived metrics from `s`: counters to their absolute
    /// values, gauges to the current ones.
    pub fn refresh(&self, s: &SimStats) {
        let e = &self.engine;
        for (c, ev) in e.vma_lock.iter().zip(VmaLockEvent::ALL) {
            c.absolute(s.faults.vma_lock(ev));
        }
        e.mmap_lock_fallbacks
            .absolute(s.faults.by_path(FaultPath::MmapLockFallback));
        for (row, vals) in e.faults.iter().zip(s.faults.faults) {
            for (c, v) in row.iter().zip(vals) {
                c.absolute(v);
            }
        }
        e.alloc_reused.absolute(s.pool.alloc_reused);
        e.alloc_fresh.absolute(s.pool.alloc_fresh);
        e.reuse_before_gp.absolute(s.pool.reuse_before_gp);
        e.frees.absolute(s.pool.frees);
        e.call_rcu.absolute(s.pool.call_rcu);
        e.call_rcu_avoided.absolute(s.pool.call_rcu_avoided);
        e.grace_periods.absolute(s.pool.grace_periods);
        // Gauges are f64; counts up to 2^53 are exact.
        e.slots_live.set(s.pool.live as f64);
        e.slots_free.set(s.pool.free as f64);
        e.slots_waiting.set(s.pool.waiting as f64);
        e.capacity_slots
            .set((s.pool.live + s.pool.free + s.pool.waiting) as f64);
        e.slabs.set(s.pool.slabs as f64);
        e.processes.set(s.processes as f64);
        e.vmas.set(s.vmas as f64);
        e.rss_bytes
            .set(s.rss_pages.saturating_mul(PAGE_SIZE) as f64);
        e.pgtables_bytes.set(s.pgtables_bytes as f64);
        for (c, v) in e.reuse_detected.iter().zip(s.faults.reuse_detected) {
            c.absolute(v);
        }
        e.sheaf_hits[0].absolute(s.pool.sheaf_alloc_hits);
        e.sheaf_hits[1].absolute(s.pool.sheaf_free_hits);
        e.barn_exchanges[0].absolute(s.pool.barn_get);
        e.barn_exchanges[1].absolute(s.pool.barn_put);
        e.slab_refills.absolute(s.pool.slab_refills);
        e.sheaf_flushes.absolute(s.pool.sheaf_flushes);
        for (c, v) in e.maps.iter().zip(s.maps) {
            c.absolute(v);
        }
    }

    /// The Prometheus text exposition of everything, after
    /// [`Self::refresh`] with `s`.
    pub fn render(&self, s: &SimStats) -> String {
        self.refresh(s);
        self.refresh_server_state();
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }

    /// Move recorded histogram samples into their buckets. Rendering does
    /// this too; call it periodically so an unscraped server does not keep
    /// every fault sample in memory.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|&(k, v)| Label::new(k, v))
            .collect::<Vec<_>>(),
    )
}

/// `# HELP` text (with units) for every metric of [`METRICS`].
fn describe(r: &PrometheusRecorder) {
    for m in METRICS {
        let (name, unit, help) = (m.name.into(), Some(m.unit), m.help.into());
        match m.kind {
            Kind::Counter => r.describe_counter(name, unit, help),
            Kind::Gauge => r.describe_gauge(name, unit, help),
            Kind::Histogram => r.describe_histogram(name, unit, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_server_exports_every_metric() {
        let t = Telemetry::new(&SimConfig::default());
        // What a serving server has attached (the reply-buffer and
        // in-flight gauges).
        t.attach_server_state(ServerState {
            replies: std::sync::Arc::new(crate::server::call::ReplyBudget::new(1 << 20)),
            slots: (std::sync::Arc::new(tokio::sync::Semaphore::new(4)), 4),
        });
        let text = t.render(&SimStats::default());
        for &Metric { name, kind, .. } in METRICS {
            assert!(
                text.contains(&format!("# TYPE {name} {}", kind.as_str())),
                "{name}:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            // A histogram's samples are its `_bucket`, `_sum`, `_count`.
            let series = match kind {
                Kind::Histogram => format!("{name}_bucket"),
                _ => name.to_string(),
            };
            assert!(
                text.contains(&format!("\n{series}{{")) || text.contains(&format!("\n{series} ")),
                "{name}:\n{text}"
            );
        }
        // The process collector's standard names, with live values.
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            let v: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .parse()
                .unwrap();
            if name != "process_cpu_seconds_total" {
                assert!(v > 0.0, "{name} = {v}");
            }
        }
        for h in [RPC_DURATION, FAULT_DURATION] {
            assert!(
                text.contains(&format!("# TYPE {h} histogram")),
                "{h}:\n{text}"
            );
            assert!(text.contains(&format!("{h}_bucket{{")), "{h}:\n{text}");
        }
    }

    #[test]
    fn two_servers_do_not_share_numbers() {
        let a = Telemetry::new(&SimConfig::default());
        let b = Telemetry::new(&SimConfig::default());
        a.record_rpc("Mmap", Code::InvalidArgument, Duration::from_millis(1));
        assert!(
            a.render(&SimStats::default())
                .contains(r#"vmasim_rpc_requests_total{method="Mmap",code="INVALID_ARGUMENT"} 1"#)
        );
        assert!(!b.render(&SimStats::default()).contains("INVALID_ARGUMENT"));
    }
}
