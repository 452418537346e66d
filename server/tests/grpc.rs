//! End-to-end tests of the gRPC server: a real server on 127.0.0.1:0 (gRPC
//! and /metrics), a real tonic client, every RPC, every documented error
//! status, the Session stream, health, reflection, auth, shutdown, and a
//! concurrency run whose counts are checked against Stats and /metrics.

mod common;
use common::{MAP_FIXED, MAP_FIXED_NOREPLACE, PAGE, PRIVATE_ANON, RW};

use std::time::Duration;
use tonic::{Code, Request};
use vmasim_proto::v1::address_space_client::AddressSpaceClient;
use vmasim_proto::v1::{self as pb, session_reply, session_request};
use vmasim_server::mm::{SimConfig, TASK_SIZE};
use vmasim_server::server::{SERVICE_NAME, ServerConfig};

use common::{
    TestServer, anon_request, fixed_request, health_status, http_get, maps, metric, mmap_anon,
    spawn, stats,
};

/// `promtool check metrics` must accept the exposition (skipped, loudly,
/// where Debian's `prometheus` package is not installed).
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not found: exposition lint skipped");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && msg.trim().is_empty(),
        "promtool check metrics:\n{msg}"
    );
}

fn small_cfg() -> ServerConfig {
    ServerConfig {
        sim: SimConfig {
            max_processes: 64,
            ..SimConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc() {
    let srv = TestServer::start(small_cfg()).await;
    let mut c = srv.client().await;

    let pid = spawn(&mut c).await;
    assert_ne!(pid, 0);
    let addr = mmap_anon(&mut c, pid, 4 * PAGE).await;
    assert_eq!(addr % PAGE, 0);

    let f = c
        .fault(pb::FaultRequest {
            pid,
            addr: addr + 10,
            access: pb::Access::Write as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.outcome(), pb::FaultOutcome::AnonZeroFill);
    // The first write needs an anon_vma: __vmf_anon_prepare takes
    // mmap_read_trylock under the VMA lock, so it stays on the per-VMA path.
    assert_eq!(f.path(), pb::FaultPath::PerVmaLock);

    let addrs = vec![addr, addr + PAGE, addr + 100 * PAGE * 1000, 5];
    let b = c
        .fault_batch(pb::FaultBatchRequest {
            pid,
            addrs: addrs.clone(),
            access: pb::Access::Write as i32,
            totals_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.outcomes.len(), 4);
    assert_eq!(b.outcomes[0], pb::FaultOutcome::AlreadyPresent as i32);
    assert_eq!(b.outcomes[1], pb::FaultOutcome::AnonZeroFill as i32);
    assert_eq!(b.outcomes[3], pb::FaultOutcome::SegvMaperr as i32);
    assert_eq!(b.paths[1], pb::FaultPath::PerVmaLock as i32);
    let t = b.totals.unwrap();
    assert_eq!(t.faults, 4);
    assert_eq!(t.already_present + t.anon_zero_fill + t.segv_maperr, 4);
    let b = c
        .fault_batch(pb::FaultBatchRequest {
            pid,
            addrs,
            access: pb::Access::Read as i32,
            totals_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(b.outcomes.is_empty() && b.paths.is_empty() && b.retries.is_empty());
    assert_eq!(b.totals.unwrap().faults, 4);

    let m = c
        .mprotect(pb::MprotectRequest {
            pid,
            addr: addr + PAGE,
            length: PAGE,
            prot: 0x1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.vma_count, 3);
    let brk = c
        .brk(pb::BrkRequest { pid, brk: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(brk.brk, brk.start_brk);
    let brk2 = c
        .brk(pb::BrkRequest {
            pid,
            brk: brk.start_brk + 3 * PAGE,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(brk2.brk, brk.start_brk + 3 * PAGE);

    let mp = maps(&mut c, pid).await;
    assert_eq!(mp.entries.len(), 4, "{}", mp.text);
    assert!(mp.text.contains("[heap]"), "{}", mp.text);
    assert_eq!(mp.rss_pages, 2);
    let ro = mp.entries.iter().find(|e| e.start == addr + PAGE).unwrap();
    assert_eq!((ro.prot, ro.shared), (0x1, false));

    let child = c
        .fork(pb::ForkRequest { pid })
        .await
        .unwrap()
        .into_inner()
        .child_pid;
    assert_ne!(child, pid);
    assert_eq!(maps(&mut c, child).await.text, mp.text);

    let un = c
        .munmap(pb::MunmapRequest {
            pid,
            addr,
            length: PAGE,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(un.vma_count, 3);

    let ex = c
        .exit(pb::ExitRequest { pid: child })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ex.vmas_freed, 4);
    assert_eq!(ex.rss_pages_freed, 2);

    let text = "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon\n\
                00651000-00652000 r--p 00051000 08:02 173521      /usr/bin/dbus-daemon\n\
                00e03000-00e24000 rw-p 00000000 00:00 0           [heap]\n";
    let sp = c
        .spawn(pb::SpawnRequest {
            maps_text: text.into(),
            start_brk: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sp.vma_count, 3);
    let imported = maps(&mut c, sp.pid).await;
    assert_eq!(imported.entries.len(), 3);
    assert_eq!(imported.start_brk, 0xe03000);

    let s = stats(&mut c).await;
    assert_eq!(s.vma_cache, "typesafe");
    assert_eq!(s.fault_lock, "per-vma");
    assert_eq!(s.processes, 2);
    assert_eq!(s.processes_spawned_total, 3);
    assert_eq!(s.faults.unwrap().faults, 9);
    assert_eq!(s.reuse_detected.len(), 4);
    assert_eq!(s.vmas, 3 + 3);

    // The race lab: listed sorted, runs, and leaves Stats alone.
    let list = c
        .list_race_scenarios(pb::ListRaceScenariosRequest {})
        .await
        .unwrap()
        .into_inner()
        .scenarios;
    assert!(!list.is_empty());
    assert!(list.windows(2).all(|w| w[0].name < w[1].name));
    for variant in [pb::RaceVariant::Fixed, pb::RaceVariant::Buggy] {
        let r = c
            .race_scenario(pb::RaceScenarioRequest {
                name: list[0].name.clone(),
                variant: variant as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.name.as_str(), r.variant()),
            (list[0].name.as_str(), variant)
        );
        assert!(!r.timeline.is_empty());
        assert_ne!(r.verdict(), pb::RaceVerdict::Unspecified);
    }
    let race = |name: &str, variant: i32| pb::RaceScenarioRequest {
        name: name.into(),
        variant,
    };
    let e = c.race_scenario(race("", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.race_scenario(race("no-such-race", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.race_scenario(race(&list[0].name, 9)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("variant:")),
        (Code::InvalidArgument, true)
    );

    srv.shutdown().await;
}

/// Run `f`, expect `code` with `needle` in the message, and check that the
/// maps of `pid` and the process count did not change.
macro_rules! fails {
    ($c:expr, $pid:expr, $code:expr, $needle:expr, $call:expr) => {{
        let before = maps(&mut $c, $pid).await;
        let procs = stats(&mut $c).await.processes;
        let e = $call.await.expect_err("call should fail");
        assert_eq!(e.code(), $code, "{e:?}");
        assert!(
            e.message().contains($needle),
            "message {:?} lacks {:?}",
            e.message(),
            $needle
        );
        assert_eq!(
            maps(&mut $c, $pid).await,
            before,
            "a failed call changed the maps"
        );
        assert_eq!(
            stats(&mut $c).await.processes,
            procs,
            "a failed call changed the process count"
        );
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_change_nothing() {
    let srv = TestServer::start(ServerConfig {
        max_batch: 16,
        ..small_cfg()
    })
    .await;
    let mut c = srv.client().await;
    let pid = spawn(&mut c).await;
    let addr = mmap_anon(&mut c, pid, 8 * PAGE).await;
    let mut c2 = c.clone();
    let mm = |addr: u64, length: u64, prot: u32, flags: u32| pb::MmapRequest {
        pid,
        addr,
        length,
        prot,
        flags,
        ..Default::default()
    };

    use Code::*;
    fails!(
        c,
        pid,
        InvalidArgument,
        "addr",
        c2.mmap(mm(addr + 1, PAGE, RW, PRIVATE_ANON | MAP_FIXED))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "length",
        c2.mmap(mm(0, 0, RW, PRIVATE_ANON))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "length",
        c2.mmap(mm(0, TASK_SIZE + 1, RW, PRIVATE_ANON))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "length",
        c2.mmap(mm(0, u64::MAX, RW, PRIVATE_ANON))
    );
    // __get_unmapped_area: a MAP_FIXED range past TASK_SIZE is ENOMEM.
    fails!(
        c,
        pid,
        ResourceExhausted,
        "no free range",
        c2.mmap(mm(TASK_SIZE - PAGE, 2 * PAGE, RW, PRIVATE_ANON | MAP_FIXED))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "prot",
        c2.mmap(mm(0, PAGE, 0x8, PRIVATE_ANON))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "flags",
        // MAP_32BIT: a real x86 flag the simulation does not model.
        c2.mmap(mm(0, PAGE, RW, PRIVATE_ANON | 0x40))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "flags",
        c2.mmap(mm(0, PAGE, RW, 0x03 | 0x20))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "flags",
        c2.mmap(mm(0, PAGE, RW, 0x20))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "file_id",
        c2.mmap(pb::MmapRequest {
            file_id: 7,
            ..mm(0, PAGE, RW, PRIVATE_ANON)
        })
    );
    fails!(
        c,
        pid,
        AlreadyExists,
        "overlaps",
        c2.mmap(mm(addr, PAGE, RW, PRIVATE_ANON | MAP_FIXED_NOREPLACE))
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "addr",
        c2.munmap(pb::MunmapRequest {
            pid,
            addr: addr + 3,
            length: PAGE
        })
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "length",
        c2.munmap(pb::MunmapRequest {
            pid,
            addr,
            length: 0
        })
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "prot",
        c2.mprotect(pb::MprotectRequest {
            pid,
            addr,
            length: PAGE,
            prot: 0x10
        })
    );
    fails!(
        c,
        pid,
        FailedPrecondition,
        "nothing was changed",
        c2.mprotect(pb::MprotectRequest {
            pid,
            // A hole at the start: do_mprotect_pkey changes nothing. (A
            // hole further in changes what comes before it, as the kernel
            // does: server/tests/engine.rs.)
            addr: addr - 16 * PAGE,
            length: 24 * PAGE,
            prot: 0x1
        })
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "access",
        c2.fault(pb::FaultRequest {
            pid,
            addr,
            access: 7
        })
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "access",
        c2.fault_batch(pb::FaultBatchRequest {
            pid,
            addrs: vec![addr],
            access: -1,
            totals_only: false
        })
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "max-batch",
        c2.fault_batch(pb::FaultBatchRequest {
            pid,
            addrs: vec![addr; 17],
            access: 1,
            totals_only: false
        })
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "pid",
        c2.maps(pb::MapsRequest { pid: 0 })
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "pid",
        c2.fork(pb::ForkRequest { pid: 0 })
    );
    fails!(
        c,
        pid,
        NotFound,
        "no such process",
        c2.maps(pb::MapsRequest { pid: 9999 })
    );
    fails!(
        c,
        pid,
        NotFound,
        "no such process",
        c2.mmap(pb::MmapRequest {
            pid: 9999,
            ..mm(0, PAGE, RW, PRIVATE_ANON)
        })
    );
    fails!(
        c,
        pid,
        InvalidArgument,
        "maps_text: line 1",
        c2.spawn(pb::SpawnRequest {
            maps_text: "garbage\n".into(),
            start_brk: 0,
        })
    );

    // An exited process is gone for every call.
    let gone = spawn(&mut c).await;
    c.exit(pb::ExitRequest { pid: gone }).await.unwrap();
    for e in [
        c.maps(pb::MapsRequest { pid: gone }).await.unwrap_err(),
        c.exit(pb::ExitRequest { pid: gone }).await.unwrap_err(),
        c.fault(pb::FaultRequest {
            pid: gone,
            addr,
            access: 0,
        })
        .await
        .unwrap_err(),
        c.fork(pb::ForkRequest { pid: gone }).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), NotFound, "{e:?}");
    }

    // Nothing was faulted by the failed calls.
    assert_eq!(stats(&mut c).await.faults.unwrap().faults, 0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_resource_exhausted() {
    // max_map_count.
    let srv = TestServer::start(ServerConfig {
        sim: SimConfig {
            max_map_count: 4,
            max_processes: 3,
            pool_capacity: 64 * 1024,
            ..SimConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut c = srv.client().await;
    let pid = spawn(&mut c).await;
    let base = 0x1000_0000;
    for i in 0..4 {
        c.mmap(fixed_request(
            pid,
            base + i * 2 * PAGE,
            if i == 3 { 3 * PAGE } else { PAGE },
        ))
        .await
        .unwrap();
    }
    let mut c2 = c.clone();
    // do_mmap refuses only when map_count > max_map_count: at the limit (4)
    // one more mapping is allowed, the next is not.
    c.mmap(fixed_request(pid, base + 100 * PAGE, PAGE))
        .await
        .unwrap();
    fails!(
        c,
        pid,
        Code::ResourceExhausted,
        "max_map_count",
        c2.mmap(fixed_request(pid, base + 200 * PAGE, PAGE))
    );
    // Unmapping the middle of the last (three-page) VMA would split it in
    // two while the count is at or above the limit.
    fails!(
        c,
        pid,
        Code::ResourceExhausted,
        "max_map_count",
        c2.munmap(pb::MunmapRequest {
            pid,
            addr: base + 7 * PAGE,
            length: PAGE,
        })
    );

    // max_processes: 3 (pid is one).
    let _p2 = spawn(&mut c).await;
    let _p3 = c.fork(pb::ForkRequest { pid }).await.unwrap();
    fails!(
        c,
        pid,
        Code::ResourceExhausted,
        "process limit",
        c2.spawn(pb::SpawnRequest::default())
    );
    fails!(
        c,
        pid,
        Code::ResourceExhausted,
        "process limit",
        c2.fork(pb::ForkRequest { pid })
    );
    srv.shutdown().await;

    // Pool capacity: 64 slots, shared by every process.
    let srv = TestServer::start(ServerConfig {
        sim: SimConfig {
            pool_capacity: 64,
            ..SimConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut c = srv.client().await;
    let pid = spawn(&mut c).await;
    for i in 0..64 {
        c.mmap(fixed_request(pid, base + i * 2 * PAGE, PAGE))
            .await
            .unwrap();
    }
    let mut c2 = c.clone();
    fails!(
        c,
        pid,
        Code::ResourceExhausted,
        "VMA cache exhausted",
        c2.mmap(fixed_request(pid, base + 1000 * PAGE, PAGE))
    );
    fails!(
        c,
        pid,
        Code::ResourceExhausted,
        "VMA cache exhausted",
        c2.fork(pb::ForkRequest { pid })
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_required_except_for_health() {
    let srv = TestServer::start(ServerConfig {
        auth_token: Some("t0ken".into()),
        ..small_cfg()
    })
    .await;
    let ch = srv.channel().await;
    let mut anon = AddressSpaceClient::new(ch.clone());
    let e = anon.spawn(pb::SpawnRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let with = |tok: &'static str| {
        move |mut r: Request<()>| {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {tok}").parse().unwrap());
            Ok(r)
        }
    };
    let mut wrong = AddressSpaceClient::with_interceptor(ch.clone(), with("t0kem"));
    let e = wrong.spawn(pb::SpawnRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(!e.message().contains("t0ken"));
    let mut good = AddressSpaceClient::with_interceptor(ch.clone(), with("t0ken"));
    assert!(good.spawn(pb::SpawnRequest::default()).await.is_ok());
    assert_eq!(srv.sim.pids().len(), 1, "rejected calls did nothing");

    assert_eq!(
        health_status(ch.clone(), SERVICE_NAME).await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let text = srv.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "vmasim_rpc_requests_total",
            &[("method", "Spawn"), ("code", "UNAUTHENTICATED")]
        ),
        2.0
    );
    srv.shutdown().await;
}

fn op(id: u64, op: session_request::Op) -> pb::SessionRequest {
    pb::SessionRequest { id, op: Some(op) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_stream_mixes_ops_and_survives_errors() {
    use session_request::Op;
    let srv = TestServer::start(small_cfg()).await;
    let mut c = srv.client().await;
    let pid = spawn(&mut c).await;
    let addr = mmap_anon(&mut c, pid, 4 * PAGE).await;

    let reqs = vec![
        op(
            1,
            Op::Fault(pb::FaultRequest {
                pid,
                addr,
                access: 1,
            }),
        ),
        op(2, Op::Mmap(anon_request(pid, 0))),
        pb::SessionRequest { id: 3, op: None },
        op(
            4,
            Op::FaultBatch(pb::FaultBatchRequest {
                pid,
                addrs: vec![addr, addr + PAGE],
                access: 1,
                totals_only: false,
            }),
        ),
        op(5, Op::Maps(pb::MapsRequest { pid: 4242 })),
        op(6, Op::Fork(pb::ForkRequest { pid })),
        op(7, Op::Maps(pb::MapsRequest { pid })),
    ];
    let n = reqs.len();
    let mut replies = c
        .session(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = replies.message().await.unwrap() {
        got.push(r);
    }
    assert_eq!(got.len(), n);
    assert_eq!(
        got.iter().map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );
    let codes: Vec<i32> = got.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [
            0,
            Code::InvalidArgument as i32,
            Code::InvalidArgument as i32,
            0,
            Code::NotFound as i32,
            0,
            0
        ]
    );
    assert!(got[1].message.starts_with("length:"), "{}", got[1].message);
    assert!(got[1].result.is_none());
    match &got[0].result {
        Some(session_reply::Result::Fault(f)) => {
            assert_eq!(f.outcome(), pb::FaultOutcome::AnonZeroFill)
        }
        r => panic!("{r:?}"),
    }
    match &got[3].result {
        Some(session_reply::Result::FaultBatch(b)) => {
            assert_eq!(b.totals.as_ref().unwrap().faults, 2)
        }
        r => panic!("{r:?}"),
    }
    match &got[6].result {
        Some(session_reply::Result::Maps(m)) => assert_eq!(m.rss_pages, 2),
        r => panic!("{r:?}"),
    }
    assert_eq!(stats(&mut c).await.faults.unwrap().faults, 3);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_backpressure_delivers_everything() {
    use session_request::Op;
    let srv = TestServer::start(ServerConfig {
        stream_buffer: 2,
        ..small_cfg()
    })
    .await;
    let mut c = srv.client().await;
    let pid = spawn(&mut c).await;
    let addr = mmap_anon(&mut c, pid, 64 * PAGE).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let sender = tokio::spawn(async move {
        for i in 0..2000u64 {
            let a = addr + (i % 64) * PAGE;
            tx.send(op(
                i,
                Op::Fault(pb::FaultRequest {
                    pid,
                    addr: a,
                    access: 1,
                }),
            ))
            .await
            .unwrap();
        }
    });
    // Read slowly at first, so the server's buffer fills.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = 0;
    while let Some(r) = replies.message().await.unwrap() {
        assert_eq!((r.id, r.code), (next, 0));
        next += 1;
        if next == 2000 {
            break;
        }
    }
    sender.await.unwrap();
    assert_eq!(next, 2000);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let srv = TestServer::start(small_cfg()).await;
    let ch = srv.channel().await;
    for service in ["", SERVICE_NAME] {
        assert_eq!(
            health_status(ch.clone(), service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }

    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut r = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut s = r
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = s.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(l)) = resp.message_response else {
            panic!("{resp:?}")
        };
        let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&SERVICE_NAME), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    }
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut r = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut s = r
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = s.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(l)) = resp.message_response else {
            panic!("{resp:?}")
        };
        assert!(l.service.iter().any(|s| s.name == SERVICE_NAME));
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_calls_and_flips_health() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let srv = TestServer::start(small_cfg()).await;
    let ch = srv.channel().await;
    let mut c = AddressSpaceClient::new(ch.clone());
    let pid = spawn(&mut c).await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    // Hold the process's mmap_lock for write on a plain thread, so an Mmap
    // call is provably in flight (blocked in the engine) during shutdown.
    let task = srv.sim.task(pid).unwrap();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _w = task.mmap_write_lock();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    locked_rx.recv().unwrap();
    let mut c2 = c.clone();
    let in_flight = tokio::spawn(async move { c2.mmap(anon_request(pid, PAGE)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!in_flight.is_finished());

    let mut srv = srv;
    let grpc = srv.grpc;
    assert!(srv.begin_shutdown());
    let h = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(h.status(), ServingStatus::NotServing);
    drop(watch);

    // New connections are refused once shutdown has started (the listener
    // closes soon after health flips; poll rather than guess how soon).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(grpc).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting connections 10 s into shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let r = in_flight.await.unwrap().expect("in-flight call completes");
    assert_ne!(r.into_inner().addr, 0);
    tokio::time::timeout(Duration::from_secs(5), srv.shutdown())
        .await
        .expect("serve returns after the drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_refuses_excess_but_not_health() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let srv = TestServer::start(ServerConfig {
        concurrency_limit: 1,
        ..small_cfg()
    })
    .await;
    let ch = srv.channel().await;
    let mut c = AddressSpaceClient::new(ch.clone());
    // A unary call whose request never arrives holds the only slot (until
    // --request-timeout; an idle stream would hold none). The server takes
    // it once it has read the call's HEADERS.
    let mut slow = common::raw::connect(srv.grpc).await;
    common::raw::open(&mut slow, 1, "/vmasim.v1.AddressSpace/Stats").await;
    let mut refused = None;
    for _ in 0..250 {
        match c.spawn(pb::SpawnRequest::default()).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the slow call never took the slot");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(health_status(ch.clone(), "").await, ServingStatus::Serving);
    drop(slow);
    // The slot comes back once the call is gone.
    let mut ok = false;
    for _ in 0..50 {
        if c.spawn(pb::SpawnRequest::default()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_traffic_adds_up() {
    const CLIENTS: usize = 4;
    const ROUNDS: u64 = 40;
    const BATCH: u64 = 64;
    let srv = TestServer::start(small_cfg()).await;

    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = srv.client().await;
        let pid = spawn(&mut c).await;
        let region = mmap_anon(&mut c, pid, 64 * PAGE).await;
        // Faulter: batches and single faults over a region the mutator
        // keeps changing.
        let mut fc = c.clone();
        let faulter = tokio::spawn(async move {
            let (mut faults, mut batches, mut singles) = (0u64, 0u64, 0u64);
            for r in 0..ROUNDS * 4 {
                let addrs: Vec<u64> = (0..BATCH)
                    .map(|i| region + ((i * 7 + r) % 64) * PAGE)
                    .collect();
                let b = fc
                    .fault_batch(pb::FaultBatchRequest {
                        pid,
                        addrs,
                        access: (r % 2) as i32,
                        totals_only: r % 3 == 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(b.totals.unwrap().faults, BATCH);
                faults += BATCH;
                batches += 1;
                fc.fault(pb::FaultRequest {
                    pid,
                    addr: region + (r % 64) * PAGE,
                    access: 1,
                })
                .await
                .unwrap();
                faults += 1;
                singles += 1;
            }
            (faults, batches, singles)
        });
        let mutator = tokio::spawn(async move {
            let mut forks = 0u64;
            for r in 0..ROUNDS {
                let hole = region + (r % 60 + 1) * PAGE;
                c.munmap(pb::MunmapRequest {
                    pid,
                    addr: hole,
                    length: 2 * PAGE,
                })
                .await
                .unwrap();
                c.mmap(fixed_request(pid, hole, 2 * PAGE)).await.unwrap();
                c.mprotect(pb::MprotectRequest {
                    pid,
                    addr: hole,
                    length: PAGE,
                    prot: 0x1,
                })
                .await
                .unwrap();
                // A maps read (per-VMA locks) while the faulter runs.
                let m = maps(&mut c, pid).await;
                assert!(!m.entries.is_empty());
                let child = c
                    .fork(pb::ForkRequest { pid })
                    .await
                    .unwrap()
                    .into_inner()
                    .child_pid;
                forks += 1;
                c.fault(pb::FaultRequest {
                    pid: child,
                    addr: region,
                    access: 1,
                })
                .await
                .unwrap();
                c.exit(pb::ExitRequest { pid: child }).await.unwrap();
            }
            forks
        });
        tasks.push((faulter, mutator));
    }
    let (mut faults, mut batches, mut singles, mut forks) = (0, 0, 0, 0);
    for (f, m) in tasks {
        let (a, b, s) = f.await.unwrap();
        faults += a;
        batches += b;
        singles += s;
        forks += m.await.unwrap();
    }
    faults += forks; // one fault per child

    let mut c = srv.client().await;
    // Some failures, so non-OK codes show up in the exposition too.
    assert!(c.maps(pb::MapsRequest { pid: 0 }).await.is_err());
    assert!(c.maps(pb::MapsRequest { pid: 77_777 }).await.is_err());
    let s = stats(&mut c).await;
    let text = srv.metrics_text().await;
    promtool_check(&text);
    let s2 = stats(&mut c).await;
    let t = s.faults.unwrap();
    assert_eq!(t.faults, faults, "every fault sent was counted once");
    assert_eq!(
        t.anon_zero_fill
            + t.file_page
            + t.cow_break
            + t.already_present
            + t.segv_maperr
            + t.segv_accerr,
        t.faults
    );
    assert_eq!(
        t.per_vma_lock + t.mmap_lock_fallback + t.mmap_lock,
        t.faults
    );
    assert_eq!(s.processes, CLIENTS as u64);
    assert_eq!(s.processes_spawned_total, CLIENTS as u64 + forks);
    assert_eq!(
        s.vma_allocations_fresh + s.vma_allocations_reused - s.vma_frees,
        s.vmas
    );
    assert_eq!(s.pool_slots_live, s.vmas);

    // /metrics says exactly what Stats says.
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels) as u64;
    assert_eq!(m("vmasim_faults_total", &[]), t.faults);
    for (label, v) in [
        ("anon_zero_fill", t.anon_zero_fill),
        ("already_present", t.already_present),
        ("cow_break", t.cow_break),
        ("segv_maperr", t.segv_maperr),
        ("segv_accerr", t.segv_accerr),
        ("file_page", t.file_page),
    ] {
        assert_eq!(
            m("vmasim_faults_total", &[("outcome", label)]),
            v,
            "{label}"
        );
    }
    for (label, v) in [
        ("per_vma_lock", t.per_vma_lock),
        ("mmap_lock_fallback", t.mmap_lock_fallback),
        ("mmap_lock", t.mmap_lock),
    ] {
        assert_eq!(m("vmasim_faults_total", &[("path", label)]), v, "{label}");
    }
    assert_eq!(
        m("vmasim_mmap_lock_fallbacks_total", &[]),
        s.mmap_lock_fallbacks
    );
    for (label, v) in [
        ("success", s.vma_lock_success),
        ("abort", s.vma_lock_abort),
        ("retry", s.vma_lock_retry),
        ("miss", s.vma_lock_miss),
    ] {
        assert_eq!(
            m("vmasim_vma_lock_total", &[("result", label)]),
            v,
            "{label}"
        );
    }
    assert_eq!(
        m("vmasim_vma_allocations_total", &[("source", "reused")]),
        s.vma_allocations_reused
    );
    assert_eq!(
        m("vmasim_vma_allocations_total", &[("source", "fresh")]),
        s.vma_allocations_fresh
    );
    assert_eq!(
        m("vmasim_vma_reuse_before_grace_period_total", &[]),
        s.vma_reuse_before_grace_period
    );
    assert_eq!(m("vmasim_vma_frees_total", &[]), s.vma_frees);
    assert_eq!(m("vmasim_call_rcu_total", &[]), s.call_rcu);
    assert_eq!(m("vmasim_call_rcu_avoided_total", &[]), s.call_rcu_avoided);
    let gp = m("vmasim_grace_periods_total", &[]);
    assert!(s.grace_periods <= gp && gp <= s2.grace_periods);
    assert_eq!(
        m("vmasim_pool_slots", &[("state", "live")]),
        s.pool_slots_live
    );
    assert_eq!(
        m("vmasim_pool_slots", &[("state", "free")]),
        s.pool_slots_free
    );
    assert_eq!(
        m("vmasim_pool_slots", &[("state", "waiting")]),
        s.pool_slots_waiting
    );
    assert_eq!(m("vmasim_pool_capacity_slots", &[]), s.pool_capacity_slots);
    assert_eq!(m("vmasim_pool_slabs", &[]), s.pool_slabs);
    // The sheaves serve most allocations; never more than were made.
    let hits = m("vmasim_vma_cache_sheaf_hits_total", &[("op", "alloc")]);
    assert!(
        hits > 0 && hits <= s.vma_allocations_reused + s.vma_allocations_fresh,
        "{hits}"
    );
    assert!(m("vmasim_vma_cache_slab_refills_total", &[]) > 0);
    assert_eq!(m("vmasim_processes", &[]), s.processes);
    assert_eq!(m("vmasim_vmas", &[]), s.vmas);
    assert_eq!(m("vmasim_rss_bytes", &[]), s.rss_pages * PAGE);
    // One name per concept: the map key is the metric's label value.
    for check in ["vm_refcnt", "vm_mm", "vm_lock_seq", "range"] {
        assert_eq!(
            m("vmasim_reuse_detected_total", &[("check", check)]),
            s.reuse_detected[check]
        );
    }
    // One Maps read per mutator round, all by the default per-VMA reader.
    assert_eq!(s.maps_reader, "per-vma");
    assert_eq!(s.maps_reads["per-vma"], CLIENTS as u64 * ROUNDS);
    assert_eq!(s.maps_reads["mmap-lock"], 0);
    for (reader, v) in &s.maps_reads {
        assert_eq!(
            m("vmasim_maps_reads_total", &[("reader", reader.as_str())]),
            *v
        );
    }
    assert_eq!(s.maps_vma_lock.len(), 6);
    assert!(s.maps_vma_lock["locked"] > 0);
    for (result, v) in &s.maps_vma_lock {
        assert_eq!(
            m("vmasim_maps_vma_lock_total", &[("result", result.as_str())]),
            *v
        );
    }
    assert_eq!(
        m(
            "vmasim_build_info",
            &[("vma_cache", "typesafe"), ("fault_lock", "per-vma")]
        ),
        1
    );

    // RPC counts match the calls made.
    assert_eq!(
        m(
            "vmasim_rpc_requests_total",
            &[("method", "FaultBatch"), ("code", "OK")]
        ),
        batches
    );
    assert_eq!(
        m(
            "vmasim_rpc_requests_total",
            &[("method", "Fault"), ("code", "OK")]
        ),
        singles + forks
    );
    assert_eq!(
        m(
            "vmasim_rpc_requests_total",
            &[("method", "Fork"), ("code", "OK")]
        ),
        forks
    );
    assert_eq!(
        m("vmasim_rpc_duration_seconds_count", &[("method", "Fork")]),
        forks
    );
    // Every unary fault is timed, plus one in 64 of each batch.
    let sampled = batches * BATCH.div_ceil(64);
    assert_eq!(
        m("vmasim_fault_duration_seconds_count", &[]),
        singles + forks + sampled
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_at_start_and_servers_are_independent() {
    let a = TestServer::start(small_cfg()).await;
    let b = TestServer::start(ServerConfig {
        sim: SimConfig {
            vma_cache: vmasim_server::mm::CachePolicy::Rcu,
            ..SimConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let text = a.metrics_text().await;
    for name in [
        "vmasim_build_info",
        "vmasim_vma_lock_total",
        "vmasim_mmap_lock_fallbacks_total",
        "vmasim_faults_total",
        "vmasim_vma_allocations_total",
        "vmasim_vma_reuse_before_grace_period_total",
        "vmasim_vma_frees_total",
        "vmasim_call_rcu_total",
        "vmasim_call_rcu_avoided_total",
        "vmasim_grace_periods_total",
        "vmasim_pool_slots",
        "vmasim_pool_capacity_slots",
        "vmasim_pool_slabs",
        "vmasim_processes",
        "vmasim_vmas",
        "vmasim_rss_bytes",
        "vmasim_reuse_detected_total",
        "vmasim_rpc_requests_total",
        "vmasim_rpc_duration_seconds_bucket",
        "vmasim_fault_duration_seconds_bucket",
    ] {
        assert_eq!(
            metric(&text, name, &[]),
            0.0 + if name == "vmasim_build_info" {
                1.0
            } else {
                0.0
            },
            "{name}"
        );
    }
    let mut c = a.client().await;
    spawn(&mut c).await;
    let tb = b.metrics_text().await;
    assert_eq!(
        metric(&tb, "vmasim_build_info", &[("vma_cache", "rcu")]),
        1.0
    );
    assert_eq!(
        metric(&tb, "vmasim_rpc_requests_total", &[("method", "Spawn")]),
        0.0
    );
    assert_eq!(
        metric(&a.metrics_text().await, "vmasim_processes", &[]),
        1.0
    );
    let (head, _) = http_get(a.metrics, "/nope").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    a.shutdown().await;
    b.shutdown().await;
}
