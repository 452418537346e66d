//! Request validation and dispatch of every RPC, unary and streaming, with
//! arbitrary field values. Asserts: no panic, every error is one of the
//! documented statuses, and a failed call leaves the process's maps as
//! they were.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use tonic::{Code, Request};
use vmasim_proto::v1 as pb;
use vmasim_proto::v1::address_space_server::AddressSpace;
use vmasim_server::mm::{SimConfig, Simulator};
use vmasim_server::service::{AddressSpaceService, Limits};
use vmasim_server::telemetry::Telemetry;

#[derive(Arbitrary, Debug)]
enum Op {
    Spawn(String, u64),
    Mmap { pid: u8, addr: u64, len: u64, prot: u32, flags: u32, file: u64, off: u64 },
    Munmap { pid: u8, addr: u64, len: u64 },
    Mprotect { pid: u8, addr: u64, len: u64, prot: u32 },
    Brk { pid: u8, brk: u64 },
    Fault { pid: u8, addr: u64, access: i32 },
    Batch { pid: u8, addrs: Vec<u64>, access: i32, totals_only: bool },
    Fork(u8),
    Exit(u8),
    Maps(u8),
    Race { name: String, variant: i32 },
    Session(Vec<(u8, u64, u64, u32)>),
}

const DOCUMENTED: [Code; 6] = [
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Unavailable,
];

fuzz_target!(|ops: Vec<Op>| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let cfg = SimConfig { pool_capacity: 2048, max_map_count: 256, max_processes: 8, ..SimConfig::default() };
    let sim = Arc::new(Simulator::new(cfg));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let svc = AddressSpaceService::new(
        sim.clone(),
        Arc::new(Telemetry::new(&cfg)),
        Limits { max_batch: 64, max_maps_text: 1 << 16, stream_buffer: 4, ..Limits::default() },
        rx,
    );
    rt.block_on(async {
        for op in ops.into_iter().take(64) {
            let pid_of = |p: u8| u32::from(p % 10);
            let watched = match &op {
                Op::Mmap { pid, .. } | Op::Munmap { pid, .. } | Op::Mprotect { pid, .. } | Op::Brk { pid, .. } => Some(pid_of(*pid)),
                _ => None,
            };
            let before = watched.and_then(|p| sim.maps(p).ok());
            let r: Result<(), tonic::Status> = match op {
                Op::Spawn(t, start_brk) => svc.spawn(Request::new(pb::SpawnRequest { maps_text: t, start_brk })).await.map(drop),
                Op::Mmap { pid, addr, len, prot, flags, file, off } => svc
                    .mmap(Request::new(pb::MmapRequest { pid: pid_of(pid), addr, length: len, prot, flags, file_id: file, offset: off, file_size: 0 }))
                    .await
                    .map(drop),
                Op::Munmap { pid, addr, len } => svc.munmap(Request::new(pb::MunmapRequest { pid: pid_of(pid), addr, length: len })).await.map(drop),
                Op::Mprotect { pid, addr, len, prot } => svc
                    .mprotect(Request::new(pb::MprotectRequest { pid: pid_of(pid), addr, length: len, prot }))
                    .await
                    .map(drop),
                Op::Brk { pid, brk } => svc.brk(Request::new(pb::BrkRequest { pid: pid_of(pid), brk })).await.map(drop),
                Op::Fault { pid, addr, access } => svc.fault(Request::new(pb::FaultRequest { pid: pid_of(pid), addr, access })).await.map(drop),
                Op::Batch { pid, addrs, access, totals_only } => svc
                    .fault_batch(Request::new(pb::FaultBatchRequest { pid: pid_of(pid), addrs, access, totals_only }))
                    .await
                    .map(drop),
                Op::Fork(p) => svc.fork(Request::new(pb::ForkRequest { pid: pid_of(p) })).await.map(drop),
                Op::Exit(p) => svc.exit(Request::new(pb::ExitRequest { pid: pid_of(p) })).await.map(drop),
                Op::Maps(p) => svc.maps(Request::new(pb::MapsRequest { pid: pid_of(p) })).await.map(drop),
                Op::Race { name, variant } => {
                    // Only unknown names: real scenarios are exercised by their own tests.
                    let name = format!("x{name}");
                    svc.race_scenario(Request::new(pb::RaceScenarioRequest { name, variant })).await.map(drop)
                }
                Op::Session(items) => {
                    // The stream runs each request through `dispatch`.
                    for (i, (p, a, l, x)) in items.into_iter().take(16).enumerate() {
                        use pb::session_request::Op as O;
                        let op = match x % 4 {
                            0 => Some(O::Fault(pb::FaultRequest { pid: pid_of(p), addr: a, access: (l % 4) as i32 })),
                            1 => Some(O::Munmap(pb::MunmapRequest { pid: pid_of(p), addr: a, length: l })),
                            2 => Some(O::Mmap(pb::MmapRequest { pid: pid_of(p), addr: a, length: l, prot: x >> 2, flags: x >> 5, file_id: 0, offset: 0, file_size: 0 })),
                            _ => None,
                        };
                        let r = svc.dispatch(pb::SessionRequest { id: i as u64, op }).await;
                        assert_eq!(r.id, i as u64);
                        assert!(r.code == 0 || DOCUMENTED.contains(&Code::from(r.code)), "{r:?}");
                        assert_eq!(r.code == 0, r.result.is_some(), "{r:?}");
                    }
                    Ok(())
                }
            };
            if let Err(s) = r {
                assert!(DOCUMENTED.contains(&s.code()), "undocumented status {s:?}");
                assert!(!s.message().is_empty());
                if let Some(p) = watched {
                    assert_eq!(sim.maps(p).ok(), before, "failed call changed pid {p}: {s:?}");
                }
            }
        }
    });
});

