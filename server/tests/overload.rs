//! Overload: a server with a low global concurrency limit (8 calls) and a
//! small VMA cache (256 slots), driven far past both, and a client that
//! stops reading its `Session` replies.
//!
//! What this proves:
//!
//! * **Concurrency limit.** With every slot held, 80 concurrent calls over
//!   four connections (10× the limit) are all refused with
//!   RESOURCE_EXHAUSTED at once, none queued (a queued call would wait for
//!   slots that are never released and trip the hang guard); the calls
//!   holding the slots keep working. Under plain contention, every call is
//!   either answered correctly or refused, and a refused call did nothing
//!   (the fault and mapping totals equal those of the accepted calls).
//! * **Pool capacity.** 2048 attempted VMAs against 256 slots: exactly the
//!   pool's worth succeed, the rest get RESOURCE_EXHAUSTED naming the VMA
//!   cache, a refused `mmap`/`fork` changes nothing, and exiting the
//!   processes returns every slot.
//! * **Health** answers SERVING throughout (polled concurrently: health
//!   checks are exempt from the limit).
//! * **Memory.** The whole test process (server, clients, every request in
//!   flight) stays under [`RSS_BOUND_MIB`] resident.
//! * **Stalled clients** (see [`stalled_session_is_bounded_and_freed_on_drop`]).
//!
//! Timeouts here only catch hangs; nothing asserts how fast anything is.

mod common;
use common::{PAGE, PRIVATE_ANON};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vmasim_proto::v1::address_space_client::AddressSpaceClient;
use vmasim_proto::v1::{self as pb, session_request::Op};
use vmasim_server::mm::SimConfig;
use vmasim_server::server::{SERVICE_NAME, ServerConfig};

const LIMIT: usize = 8;
const POOL: u32 = 256;
/// The resident-memory bound for the whole test process: the server, all
/// clients and every request in flight. Far above what the tests need (a
/// few tens of MiB); it catches unbounded buffering, not small growth.
const RSS_BOUND_MIB: u64 = 512;

use common::{
    Exited, HANG, TestServer, anon_request, fixed_request, health_status, many_vmas, maps,
    mmap_anon, mmap_request, rss_mib, spawn, spawn_maps, stats,
};

fn overload_cfg() -> ServerConfig {
    ServerConfig {
        sim: SimConfig {
            pool_capacity: POOL,
            max_processes: 1024,
            ..SimConfig::default()
        },
        concurrency_limit: LIMIT,
        ..ServerConfig::default()
    }
}

fn check_rss(when: &str) {
    let rss = rss_mib();
    eprintln!("VmRSS {when}: {rss} MiB (bound {RSS_BOUND_MIB} MiB)");
    assert!(
        rss < RSS_BOUND_MIB,
        "{when}: resident {rss} MiB, bound {RSS_BOUND_MIB} MiB"
    );
}

/// Polls health on its own connection until told to stop; every answer
/// must be SERVING. Returns how many checks it made.
fn health_poller(ch: Channel) -> (watch::Sender<bool>, JoinHandle<u64>) {
    let (tx, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut h = HealthClient::new(ch);
        let mut n = 0u64;
        loop {
            let r = tokio::time::timeout(
                HANG,
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: SERVICE_NAME.into(),
                }),
            )
            .await
            .expect("health check hung")
            .expect("health check failed");
            assert_eq!(r.into_inner().status(), ServingStatus::Serving);
            n += 1;
            tokio::select! {
                _ = rx.wait_for(|&s| s) => return n,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
    (tx, task)
}

async fn stop_poller(p: (watch::Sender<bool>, JoinHandle<u64>)) -> u64 {
    p.0.send(true).unwrap();
    let n = tokio::time::timeout(HANG, p.1).await.unwrap().unwrap();
    assert!(n > 0);
    n
}

/// Bytes mapped in `pid`.
async fn mapped(c: &mut AddressSpaceClient<Channel>, pid: u32) -> u64 {
    let m = maps(c, pid).await;
    m.entries.iter().map(|e| e.end - e.start).sum()
}

fn is_concurrency_refusal(s: &tonic::Status) -> bool {
    s.code() == Code::ResourceExhausted && s.message().contains("concurrency limit")
}

/// One of the calls thrown at the server: a fault batch or an mmap.
enum Outcome {
    Batch(u64),
    Mmap,
    Refused,
}

async fn one_call(
    mut c: AddressSpaceClient<Channel>,
    i: usize,
    pid: u32,
    base: u64,
    batch: usize,
) -> Result<Outcome, tonic::Status> {
    let call = async {
        if i.is_multiple_of(2) {
            let addrs: Vec<u64> = (0..batch as u64).map(|k| base + (k % 64) * PAGE).collect();
            c.fault_batch(pb::FaultBatchRequest {
                pid,
                addrs,
                access: pb::Access::Write as i32,
                totals_only: false,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                assert_eq!(r.outcomes.len(), batch);
                Outcome::Batch(r.totals.unwrap().faults)
            })
        } else {
            c.mmap(anon_request(pid, PAGE)).await.map(|_| Outcome::Mmap)
        }
    };
    match tokio::time::timeout(HANG, call).await {
        Err(_) => panic!("call {i} hung: neither answered nor refused"),
        Ok(Ok(o)) => Ok(o),
        Ok(Err(s)) if is_concurrency_refusal(&s) => Ok(Outcome::Refused),
        Ok(Err(s)) => Err(s),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_calls_are_refused_at_once_and_accepted_calls_complete() {
    let srv = TestServer::start(overload_cfg()).await;
    let mut c = srv.client().await;
    let pid = spawn(&mut c).await;
    let base = mmap_anon(&mut c, pid, 64 * PAGE).await;
    let poller = health_poller(srv.channel().await);
    let conns: Vec<AddressSpaceClient<Channel>> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(srv.client().await);
        }
        v
    };

    // Phase 1: every slot held by a unary call whose request never
    // arrives (held until --request-timeout: no idle stream holds one),
    // then 10x the limit in concurrent calls.
    let mut slow = common::raw::connect(srv.grpc).await;
    for k in 0..LIMIT as u32 {
        common::raw::open(&mut slow, 2 * k + 1, "/vmasim.v1.AddressSpace/Stats").await;
    }
    tokio::time::timeout(HANG, async {
        while srv.metric("vmasim_calls_in_flight").await < LIMIT as f64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slow calls never took every slot");
    let faults_before = srv.sim.stats().faults.total();
    let mapped_before = srv.sim.maps(pid).unwrap().entries.len();
    let calls: Vec<_> = (0..10 * LIMIT)
        .map(|i| tokio::spawn(one_call(conns[i % conns.len()].clone(), i, pid, base, 4096)))
        .collect();
    for (i, t) in calls.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(Outcome::Refused) => {}
            Ok(_) => panic!("call {i} ran although every slot was taken"),
            Err(s) => panic!("call {i}: {s:?}"),
        }
    }
    // The refused calls did nothing.
    assert_eq!(srv.sim.stats().faults.total(), faults_before);
    assert_eq!(srv.sim.maps(pid).unwrap().entries.len(), mapped_before);
    // A Session opens (an idle stream takes no slot), but its operations
    // are refused like unary calls, and change nothing.
    {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut replies = conns[0]
            .clone()
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(pb::SessionRequest {
            id: 1,
            op: Some(Op::FaultBatch(pb::FaultBatchRequest {
                pid,
                addrs: vec![base; 100],
                access: 0,
                totals_only: true,
            })),
        })
        .await
        .unwrap();
        let r = tokio::time::timeout(HANG, replies.message())
            .await
            .expect("session hung")
            .unwrap()
            .unwrap();
        assert_eq!(r.code, Code::ResourceExhausted as i32, "{r:?}");
        assert!(r.result.is_none());
        assert_eq!(srv.sim.stats().faults.total(), faults_before);
    }
    // The calls holding the slots go with their connection, and give
    // every slot back.
    drop(slow);
    tokio::time::timeout(HANG, async {
        while srv.metric("vmasim_calls_in_flight").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slots were never given back");

    // Phase 2: plain contention. Each call is answered in full or refused,
    // and the totals are exactly those of the answered calls.
    let faults_before = stats(&mut c).await.faults.unwrap().faults;
    let mapped_before = mapped(&mut c, pid).await;
    let calls: Vec<_> = (0..10 * LIMIT)
        .map(|i| {
            tokio::spawn(one_call(
                conns[i % conns.len()].clone(),
                i,
                pid,
                base,
                16384,
            ))
        })
        .collect();
    let (mut faults, mut mmaps, mut refused) = (0u64, 0u64, 0u64);
    for (i, t) in calls.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(Outcome::Batch(n)) => faults += n,
            Ok(Outcome::Mmap) => mmaps += 1,
            Ok(Outcome::Refused) => refused += 1,
            Err(s) => panic!("call {i}: {s:?}"),
        }
    }
    eprintln!(
        "contention: {} calls, {refused} refused, {mmaps} mmaps and {} batches answered",
        10 * LIMIT,
        faults / 16384
    );
    assert!(faults + mmaps > 0, "every call refused");
    assert_eq!(
        stats(&mut c).await.faults.unwrap().faults - faults_before,
        faults
    );
    assert_eq!(mapped(&mut c, pid).await - mapped_before, mmaps * PAGE);

    let checks = stop_poller(poller).await;
    eprintln!("health: {checks} checks, all SERVING");
    check_rss("after 2 x 80 concurrent calls");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_is_resource_exhausted_and_recovers() {
    const PROCS: u64 = 4;
    const PER_PROC: u64 = 512;
    let srv = TestServer::start(overload_cfg()).await;
    let mut c = srv.client().await;
    let poller = health_poller(srv.channel().await);
    let mut pids = Vec::new();
    for _ in 0..PROCS {
        pids.push(spawn(&mut c).await);
    }

    // PROCS workers (<= LIMIT: none is refused for concurrency), each on
    // its own connection, mapping one page every other page (no merges, so
    // one VMA per success): 2048 attempts, 8x the pool.
    let mut workers = Vec::new();
    for &pid in &pids {
        let mut c = srv.client().await;
        workers.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u64, 0u64);
            for i in 0..PER_PROC {
                let r = tokio::time::timeout(
                    HANG,
                    c.mmap(fixed_request(pid, 0x1000_0000 + i * 2 * PAGE, PAGE)),
                )
                .await
                .expect("mmap hung");
                match r {
                    Ok(_) => ok += 1,
                    Err(s) => {
                        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                        assert!(
                            s.message().contains("VMA cache exhausted")
                                && s.message().contains(&POOL.to_string()),
                            "the message names the pool and its size: {s:?}"
                        );
                        refused += 1;
                    }
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for w in workers {
        let (o, r) = w.await.unwrap();
        ok += o;
        refused += r;
    }
    let s = stats(&mut c).await;
    eprintln!(
        "pool: {ok} VMAs mapped, {refused} refused; live {} free {} waiting {}",
        s.pool_slots_live, s.pool_slots_free, s.pool_slots_waiting
    );
    assert_eq!(ok + refused, PROCS * PER_PROC);
    assert_eq!(ok, u64::from(POOL), "exactly the pool's worth fits");
    assert_eq!(s.vmas, ok);
    assert_eq!(s.pool_slots_live, u64::from(POOL));

    // A fork needs slots too: refused, and nothing changes.
    let before = c
        .maps(pb::MapsRequest { pid: pids[0] })
        .await
        .unwrap()
        .into_inner();
    let e = c.fork(pb::ForkRequest { pid: pids[0] }).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("VMA cache exhausted"), "{e:?}");
    let after = c
        .maps(pb::MapsRequest { pid: pids[0] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before, after);
    assert_eq!(stats(&mut c).await.processes, PROCS);

    // Everything comes back.
    for &pid in &pids {
        c.exit(pb::ExitRequest { pid }).await.unwrap();
    }
    let s = stats(&mut c).await;
    assert_eq!(s.pool_slots_live, 0, "{s:?}");
    assert_eq!(s.vmas, 0);
    let pid = spawn(&mut c).await;
    mmap_anon(&mut c, pid, PAGE).await;

    let checks = stop_poller(poller).await;
    eprintln!("health: {checks} checks, all SERVING");
    check_rss("after pool exhaustion");
    srv.shutdown().await;
}

/// A client opens a `Session`, sends requests as fast as it can and never
/// reads a reply.
///
/// Stated behaviour: the server handles requests in order and queues at
/// most `stream_buffer` replies per stream; beyond that its stream task
/// stops reading requests, so HTTP/2 flow control stops the client. What
/// the stalled stream can pin is therefore bounded: `stream_buffer` + 1
/// replies in the server, plus the bytes the transport holds (the client's
/// receive window, hyper's per-stream send buffer of 400 KiB, tonic's
/// encode buffer, and on the request side the server's receive window of
/// 1 MiB, hyper's default). Other clients are unaffected, and when the
/// client goes away the stream task ends and its concurrency slot is
/// released.
///
/// Here: `stream_buffer` 8, fault batches of 4096 addresses (replies of
/// ~12 KiB), a client window of 64 KiB, so the transport holds about
/// 0.5 MiB of replies; the bound allows twice that: at most
/// `stream_buffer + 1 + 1 MiB / 12 KiB` (= 94) of the 10 000 requests the
/// client tries to send are consumed (about 17 in practice).
///
/// "Goes away" means its connection closes (a client that exits or
/// crashes). A client that only drops the response stream but keeps its
/// connection may not free the stream: hyper's client sends RST_STREAM
/// for a call dropped before its response headers, but after them it waits
/// for the request-body pipe, which the server's flow control keeps
/// blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_session_is_bounded_and_freed_on_drop() {
    const STREAM_BUFFER: usize = 8;
    const BATCH: u64 = 4096;
    const N: u64 = 10_000;
    let srv = TestServer::start(ServerConfig {
        stream_buffer: STREAM_BUFFER,
        concurrency_limit: 2,
        ..overload_cfg()
    })
    .await;
    let mut c = srv.client().await;
    let pid = spawn(&mut c).await;
    let base = mmap_anon(&mut c, pid, 64 * PAGE).await;

    // The stalled client: its own runtime (so that it can go away the way
    // a crashed or exited client does) and its own connection with the
    // smallest HTTP/2 windows.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    {
        let sent = sent.clone();
        let endpoint = srv
            .endpoint()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535);
        client_rt.spawn(async move {
            let ch = endpoint.connect().await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            // Never read.
            let _replies = AddressSpaceClient::new(ch)
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            for id in 0..N {
                let addrs = (0..BATCH).map(|k| base + (k % 64) * PAGE).collect();
                let req = pb::SessionRequest {
                    id,
                    op: Some(Op::FaultBatch(pb::FaultBatchRequest {
                        pid,
                        addrs,
                        access: 0,
                        totals_only: false,
                    })),
                };
                if tx.send(req).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            std::future::pending::<()>().await;
        });
    }

    // Wait until the server stops consuming (the fault counter holds still
    // for a while); the guard only catches a server that never stops.
    let consumed = tokio::time::timeout(HANG, async {
        let (mut last, mut still) = (u64::MAX, 0);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = srv.sim.stats().faults.total();
            if now == last {
                still += 1;
                if still == 10 {
                    return now / BATCH;
                }
            } else {
                (last, still) = (now, 0);
            }
        }
    })
    .await
    .expect("the server never stopped reading the stalled stream");
    let reply_bytes = 3 * BATCH + 16;
    let bound = STREAM_BUFFER as u64 + 1 + (1 << 20) / reply_bytes;
    eprintln!(
        "stalled stream: client sent {} requests, server consumed {consumed} (bound {bound})",
        sent.load(Ordering::Relaxed)
    );
    assert!(consumed <= bound, "consumed {consumed} > bound {bound}");
    assert!(
        sent.load(Ordering::Relaxed) < N,
        "the client was never stopped"
    );

    // Others are served as usual meanwhile (one slot is left).
    let mut other = srv.client().await;
    let p2 = tokio::time::timeout(HANG, spawn(&mut other))
        .await
        .expect("spawn hung");
    let a2 = mmap_anon(&mut other, p2, PAGE).await;
    let f = other
        .fault(pb::FaultRequest {
            pid: p2,
            addr: a2,
            access: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.outcome(), pb::FaultOutcome::AnonZeroFill);
    assert_eq!(
        health_status(srv.channel().await, SERVICE_NAME).await,
        ServingStatus::Serving
    );
    check_rss("with a stalled stream");

    // The stalled stream holds no concurrency slot (its operations are
    // done; it waits for the client to read), only its queued replies.
    assert_eq!(srv.metric("vmasim_calls_in_flight").await, 0.0);
    assert!(srv.metric("vmasim_reply_buffer_bytes").await > 0.0);

    // The stalled client goes away (its runtime, and with it its
    // connection, is torn down): the server drops the stream, its task
    // ends, and its queued replies' bytes are given back. Freeing is
    // asynchronous, so wait for it until the guard.
    client_rt.shutdown_background();
    tokio::time::timeout(HANG, async {
        while srv.metric("vmasim_reply_buffer_bytes").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled stream's replies were never released");
    // Two concurrent streams work (both slots are free).
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut replies = other
            .clone()
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(pb::SessionRequest {
            id: 1,
            op: Some(Op::Maps(pb::MapsRequest { pid })),
        })
        .await
        .unwrap();
        let r = replies.message().await.unwrap().unwrap();
        assert_eq!(r.code, 0, "{r:?}");
    }
    srv.shutdown().await;
}

/// The limits of [`every_case_at_once_stays_under_the_memory_bound`], as
/// flags of the real binary, and the README's memory bound for them.
mod all_at_once {
    pub const MIB: u64 = 1 << 20;
    pub const PROCESSES: u64 = 64;
    pub const POOL: u64 = 131_072;
    pub const PGTABLES: u64 = 16 * MIB;
    pub const REPLY_BUFFER: u64 = 16 * MIB;
    pub const REPLY_MAX: u64 = 4 * MIB;
    pub const REQUEST_MAX: u64 = 4 * MIB;
    pub const CONCURRENCY: u64 = 8;
    pub const CONNECTIONS: u64 = 32;
    pub const STREAMS: u64 = 16;

    pub fn flags() -> Vec<String> {
        [
            ("--max-processes", PROCESSES.to_string()),
            ("--pool-capacity", POOL.to_string()),
            ("--max-pgtables-bytes", PGTABLES.to_string()),
            ("--max-reply-buffer-bytes", REPLY_BUFFER.to_string()),
            ("--max-reply-bytes", REPLY_MAX.to_string()),
            ("--concurrency-limit", CONCURRENCY.to_string()),
            ("--max-connections", CONNECTIONS.to_string()),
            ("--max-streams-per-connection", STREAMS.to_string()),
            ("--max-watch-streams", "16".into()),
            ("--handshake-timeout", "2s".into()),
            ("--request-timeout", "5s".into()),
            ("--keepalive", "2s".into()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }

    /// The README's bound over the idle server (base excluded):
    /// P·(4 KiB + mm) + S·slot + T + R + C·(Q + W) + K·Wc + N·H.
    pub fn bound() -> u64 {
        // An mm_struct with its tree, counters and lock: well under 64 KiB.
        let mm = 64 << 10;
        // A VMA slot, its tree entry and the slab's bookkeeping.
        let slot = std::mem::size_of::<vmasim_server::mm::Vma>() as u64 + 256;
        // HTTP/2's connection receive window (hyper's default, 1 MiB):
        // request bytes a connection can make the server buffer.
        let conn_window = MIB;
        // Per stream: HTTP/2 state, one 16 KiB slice, and a Session's
        // queue of small (uncharged, <= 4 KiB) replies, 64 deep.
        let stream = (4 << 10) + (16 << 10) + 64 * (4 << 10);
        PROCESSES * ((4 << 10) + mm)
            + POOL * slot
            + PGTABLES
            + REPLY_BUFFER
            + CONCURRENCY * (REQUEST_MAX + REPLY_MAX)
            + CONNECTIONS * conn_window
            + CONNECTIONS * STREAMS * stream
    }
}

/// Issue 12's server cases all at once against one real `vmasim-server`
/// (the binary: its own resident memory is measured, sampled every 20 ms):
/// 64 TiB mapped and read-faulted every 2 MiB; `Maps` replies of a
/// 20,000-VMA process that four raw connections and a `Session` never
/// read; `Maps` of a 30,000-VMA process with 3 ms deadlines from sixteen
/// clients; `Fork`s and `Spawn`s of 30,000 VMAs with 2 ms deadlines;
/// 200 half-open connections; 30,000 health `Watch` streams on one
/// connection; idle `Session`s; and a well-behaved client throughout.
///
/// Asserted: the server's peak resident growth over its idle size stays
/// under the README's memory bound for these limits
/// ([`all_at_once::bound`]); the well-behaved client is served; afterwards
/// every reply byte and slot is given back, the only processes are those
/// clients received, and SIGTERM ends the server (exit 0) without the
/// drain running out. `VMASIM_SERVER_BIN=target/release/vmasim-server`
/// runs it against a release build (the README's figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_at_once_stays_under_the_memory_bound() {
    use all_at_once::*;
    use common::raw;
    use prost::Message;
    use std::sync::Mutex;
    let flags = flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let srv = Arc::new(common::BinServer::start(&flags, None).await);
    let mut c = srv.client().await;
    let big20 = spawn_maps(&mut c, many_vmas(20_000)).await;
    let text30 = many_vmas(30_000);
    let big30 = spawn_maps(&mut c, text30.clone()).await;
    // Processes clients received and did not exit.
    let alive = Arc::new(Mutex::new(vec![big20, big30]));
    let _ = srv.metrics_text().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = srv.rss_bytes();
    let threads_idle = srv.threads();

    // The sampler: peak resident memory and threads.
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = {
        let srv = srv.clone();
        tokio::spawn(async move {
            let (mut rss, mut threads) = (0, 0);
            while !*stop_rx.borrow() {
                rss = srv.rss_bytes().max(rss);
                threads = srv.threads().max(threads);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (rss, threads)
        })
    };
    let mut attacks: Vec<JoinHandle<()>> = Vec::new();
    // Page tables: 64 TiB, a read fault every 2 MiB, four full batches.
    {
        let mut c = srv.client().await;
        let pid = spawn(&mut c).await;
        alive.lock().unwrap().push(pid);
        let alive = alive.clone();
        let base = c
            .mmap(mmap_request(pid, 64 << 40, 0x1, PRIVATE_ANON | 0x4000))
            .await
            .unwrap()
            .into_inner()
            .addr;
        attacks.push(tokio::spawn(async move {
            for batch in 0..4u64 {
                let addrs: Vec<u64> = (0..65536u64)
                    .map(|i| base + ((batch * 65536 + i) << 21))
                    .collect();
                // Retried while the other attacks hold every slot.
                let e = loop {
                    let r = c
                        .fault_batch(pb::FaultBatchRequest {
                            pid,
                            addrs: addrs.clone(),
                            access: pb::Access::Read as i32,
                            totals_only: true,
                        })
                        .await;
                    match r.expect_err("a batch fitted in the page-table budget") {
                        e if is_concurrency_refusal(&e) => {
                            tokio::time::sleep(Duration::from_millis(10)).await
                        }
                        e => break e,
                    }
                };
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("--max-pgtables-bytes"), "{e:?}");
            }
            // Exiting gives the tables back (before: nothing came back).
            while let Err(e) = c.exit(pb::ExitRequest { pid }).await {
                assert!(is_concurrency_refusal(&e), "{e:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            alive.lock().unwrap().retain(|&q| q != pid);
        }));
    }
    // Unread replies: four raw connections with a 1-byte window, 12 Maps
    // each (1.5 MiB per reply), and a Session sending 16 Maps.
    let mut raws = Vec::new();
    let maps20 = pb::MapsRequest { pid: big20 }.encode_to_vec();
    for _ in 0..4 {
        let mut s = raw::connect(srv.grpc).await;
        for k in 0..12u32 {
            raw::call(&mut s, 2 * k + 1, "/vmasim.v1.AddressSpace/Maps", &maps20).await;
        }
        raws.push(s);
    }
    {
        let mut s = raw::connect(srv.grpc).await;
        raw::open(&mut s, 1, "/vmasim.v1.AddressSpace/Session").await;
        for id in 0..16 {
            let r = pb::SessionRequest {
                id,
                op: Some(Op::Maps(pb::MapsRequest { pid: big20 })),
            };
            raw::send(&mut s, 1, &r.encode_to_vec()).await;
        }
        raws.push(s);
    }
    // Short deadlines: sixteen clients on four connections, Maps of the
    // 30,000-VMA process with 3 ms each; Forks and Spawns with 2 ms.
    let mut deadline_conns = Vec::new();
    for _ in 0..4 {
        deadline_conns.push(srv.client().await);
    }
    for i in 0..16 {
        let mut c = deadline_conns[i % 4].clone();
        attacks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let mut r = tonic::Request::new(pb::MapsRequest { pid: big30 });
                r.set_timeout(Duration::from_millis(3));
                let _ = c.maps(r).await;
            }
        }));
    }
    {
        let mut c = deadline_conns[0].clone();
        let (alive, text30) = (alive.clone(), text30.clone());
        attacks.push(tokio::spawn(async move {
            for i in 0..10 {
                let r = if i % 2 == 0 {
                    let mut r = tonic::Request::new(pb::ForkRequest { pid: big30 });
                    r.set_timeout(Duration::from_millis(2));
                    c.fork(r).await.map(|r| r.into_inner().child_pid)
                } else {
                    let mut r = tonic::Request::new(pb::SpawnRequest {
                        maps_text: text30.clone(),
                        start_brk: 0,
                    });
                    r.set_timeout(Duration::from_millis(2));
                    c.spawn(r).await.map(|r| r.into_inner().pid)
                };
                // A received process is the client's: it exits it (retried
                // past slot refusals), as a well-behaved client would.
                if let Ok(p) = r {
                    alive.lock().unwrap().push(p);
                    while let Err(e) = c.exit(pb::ExitRequest { pid: p }).await {
                        assert!(is_concurrency_refusal(&e), "{e:?}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    alive.lock().unwrap().retain(|&q| q != p);
                }
            }
        }));
    }
    // Idle Sessions.
    let idle_conn = srv.client().await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SessionRequest>(1);
        let r = idle_conn
            .clone()
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        idle.push((tx, r));
    }
    // A well-behaved client throughout, and on until it has been served
    // five times after the attacks are over.
    let (attacks_done_tx, attacks_done) = watch::channel(false);
    let good = {
        let mut c = srv.client().await;
        let alive = alive.clone();
        tokio::spawn(async move {
            let (mut tries, mut served, mut after) = (0u32, 0u32, 0u32);
            let (mut tries_during, mut served_during) = (0u32, 0u32);
            loop {
                let during = !*attacks_done.borrow();
                if !during && after >= 5 {
                    break;
                }
                tries += 1;
                assert!(tries < 10_000, "the well-behaved client is never served");
                let pid = match c.spawn(pb::SpawnRequest::default()).await {
                    Ok(r) => r.into_inner().pid,
                    Err(s) => {
                        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                alive.lock().unwrap().push(pid);
                let r: Result<(), tonic::Status> = async {
                    let a = c
                        .mmap(anon_request(pid, 16 * PAGE))
                        .await?
                        .into_inner()
                        .addr;
                    c.fault(pb::FaultRequest {
                        pid,
                        addr: a,
                        access: 1,
                    })
                    .await?;
                    Ok(())
                }
                .await;
                // Its process goes whatever happened (retried past slot
                // refusals).
                while let Err(e) = c.exit(pb::ExitRequest { pid }).await {
                    assert!(is_concurrency_refusal(&e), "{e:?}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                alive.lock().unwrap().retain(|&p| p != pid);
                match r {
                    Ok(()) => {
                        served += 1;
                        if !during {
                            after += 1;
                        }
                    }
                    // Refused at a limit (slots, the VMA cache the attacks
                    // fill): allowed, never a hang or another error.
                    Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
                }
                if during {
                    tries_during += 1;
                    served_during = served;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (served_during, tries_during)
        })
    };
    // 30,000 Watch streams on one connection, and 200 half-open ones.
    let mut watch = raw::connect(srv.grpc).await;
    let mut watch_sent = 0u32;
    for i in 0..30_000u32 {
        if raw::try_call(&mut watch, 2 * i + 1, "/grpc.health.v1.Health/Watch", &[])
            .await
            .is_err()
        {
            break;
        }
        watch_sent += 1;
    }
    let mut half = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(srv.grpc).await {
            half.push(s);
        }
    }

    for a in attacks {
        tokio::time::timeout(HANG * 3, a)
            .await
            .expect("an attack hung")
            .unwrap();
    }
    let _ = attacks_done_tx.send(true);
    let (served, tries) = tokio::time::timeout(HANG, good)
        .await
        .expect("the well-behaved client hung")
        .unwrap();
    // The half-open connections are closed (cap or handshake timeout),
    // the raw ones that answer no PING are dropped (--keepalive 2s).
    for mut s in half.into_iter().chain(raws) {
        assert!(
            tokio::time::timeout(HANG, raw::closed_by_server(&mut s))
                .await
                .unwrap_or(false),
            "a connection was never closed"
        );
    }
    drop(watch);
    drop(idle);
    let _ = stop_tx.send(true);
    let (rss_peak, threads_peak) = sampler.await.unwrap();
    // Everything is given back; the only processes are those received.
    let start = std::time::Instant::now();
    loop {
        let text = srv.metrics_text().await;
        let in_flight = common::metric(&text, "vmasim_calls_in_flight", &[]);
        let held = common::metric(&text, "vmasim_reply_buffer_bytes", &[]);
        if in_flight == 0.0 && held == 0.0 {
            break;
        }
        assert!(start.elapsed() < HANG, "in flight {in_flight}, held {held}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = srv.metrics_text().await;
    let procs = common::metric(&text, "vmasim_processes", &[]);
    let alive = alive.lock().unwrap().len();
    assert_eq!(
        procs, alive as f64,
        "processes a client never received exist"
    );
    let pgtables = common::metric(&text, "vmasim_pgtables_bytes", &[]);
    assert!(pgtables <= PGTABLES as f64, "{pgtables}");
    let growth = rss_peak.saturating_sub(rss_idle);
    let bound = bound();
    println!(
        "every case at once: server RSS idle {} MiB, peak {} MiB (+{} MiB; bound +{} MiB); \
         threads {threads_idle} -> peak {threads_peak}; well-behaved client served {served} of {tries} rounds during the attacks; \
         {watch_sent} Watch requests sent; {procs} processes left, all received; \
         size_of::<Vma>() = {} B",
        rss_idle / MIB,
        rss_peak / MIB,
        growth / MIB,
        bound / MIB,
        std::mem::size_of::<vmasim_server::mm::Vma>()
    );
    assert!(
        growth < bound,
        "server RSS grew by {} MiB, past the bound of {} MiB",
        growth / MIB,
        bound / MIB
    );
    let srv = Arc::into_inner(srv).expect("the server handle is shared still");
    let Exited {
        status, took, log, ..
    } = srv.terminate().await;
    println!("SIGTERM to exit: {took:.2?}");
    assert!(status.success(), "{status}\n{log}");
    assert!(
        !log.contains("still running after"),
        "the drain ran out:\n{log}"
    );
}
