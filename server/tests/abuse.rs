//! Abuse: arbitrary, including absurd, field values thrown at every RPC of
//! `vmasim.v1.AddressSpace` through a real tonic client against a real
//! in-process server (proptest, 64 cases per test unless `PROPTEST_CASES`
//! says otherwise).
//!
//! For every call that fails, this proves:
//!
//! * the status is one of the documented ones (INVALID_ARGUMENT,
//!   NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, FAILED_PRECONDITION);
//!   never INTERNAL, UNKNOWN or a dropped connection;
//! * an INVALID_ARGUMENT message starts with `FIELD:` where FIELD is a
//!   field of that request (`addr`, `length`, `prot`, `flags`, `pid`,
//!   `maps_text`, ...);
//! * the target process's `Maps` (text, entries, brk and RSS) is exactly
//!   what it was before the call.
//!
//! The `Session` stream gets the same random operations one at a time, and
//! each reply is held to the same rules (the unary call and the stream share
//! one code path, so they must agree).
//!
//! Each test function runs one server for all its cases on one shared tokio
//! runtime; every case works on a freshly spawned target process and exits
//! every process it created, so cases are independent (and shrink cleanly).

mod common;
use common::{PAGE, maps, spawn_maps};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use tokio::runtime::Runtime;
use tonic::Code;
use tonic::transport::Channel;
use vmasim_proto::v1::address_space_client::AddressSpaceClient;
use vmasim_proto::v1::{self as pb, session_request::Op};
use vmasim_server::mm::{SimConfig, Simulator, TASK_SIZE};
use vmasim_server::server::{LocalServer, ServerConfig, spawn_local};

/// `FaultBatch` limit of the servers under test: small, so that random
/// batches cross it often without megabyte messages.
const MAX_BATCH: usize = 512;

/// The process every case starts from: file, anonymous, shared, guard,
/// heap and stack mappings, so random ranges hit splits, merges, COW and
/// file pages.
const TARGET_MAPS: &str = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
00651000-00652000 r--p 00051000 08:02 173521      /usr/bin/dbus-daemon
00652000-00655000 rw-p 00052000 08:02 173521      /usr/bin/dbus-daemon
00e03000-00e24000 rw-p 00000000 00:00 0           [heap]
7f0000000000-7f0000010000 rw-p 00000000 00:00 0
7f0000010000-7f0000011000 ---p 00000000 00:00 0
7f0000011000-7f0000020000 rw-s 00000000 00:05 42          /dev/shm/abuse
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0           [stack]
";

/// Addresses worth hitting: the target's VMA boundaries.
const MARKS: &[u64] = &[
    0x0040_0000,
    0x0045_2000,
    0x0065_1000,
    0x0065_2000,
    0x0065_5000,
    0x00e0_3000,
    0x00e2_4000,
    0x7f00_0000_0000,
    0x7f00_0001_0000,
    0x7f00_0001_1000,
    0x7f00_0002_0000,
    0x7ffd_0000_0000,
    0x7ffd_0002_1000,
];

/// One runtime for every test in this file (2 workers: the machine is
/// shared).
static RT: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------
// The server and the checks.

struct Harness {
    client: AddressSpaceClient<Channel>,
    sim: Arc<Simulator>,
    /// Calls made, by RPC and status: printed at the end, and checked to
    /// show the run was not vacuous (both successes and failures seen).
    tally: Arc<Mutex<BTreeMap<(&'static str, String), u32>>>,
    /// Serves until the harness is dropped.
    _server: LocalServer,
}

impl Harness {
    fn start() -> Self {
        RT.block_on(async {
            let cfg = ServerConfig {
                sim: SimConfig {
                    max_processes: 64,
                    max_map_count: 512,
                    pool_capacity: 1 << 16,
                    ..SimConfig::default()
                },
                max_batch: MAX_BATCH,
                ..ServerConfig::default()
            };
            let server = spawn_local(cfg).await.unwrap();
            let sim = server.simulator().clone();
            let ch = Channel::from_shared(server.url())
                .unwrap()
                .connect()
                .await
                .unwrap();
            Self {
                client: AddressSpaceClient::new(ch),
                sim,
                tally: Arc::default(),
                _server: server,
            }
        })
    }

    /// Run `calls` (resolved against a fresh target) one by one, checking
    /// each; then tear down every process the case created.
    fn run_case(&self, calls: Vec<Call>, via_session: bool) -> Result<(), TestCaseError> {
        let r = RT.block_on(async {
            let mut c = self.client.clone();
            let target = c
                .spawn(pb::SpawnRequest {
                    maps_text: TARGET_MAPS.into(),
                    start_brk: 0,
                })
                .await
                .map_err(|e| format!("spawn target: {e:?}"))?
                .into_inner()
                .pid;
            // Some resident pages, so failed calls have RSS to disturb.
            c.fault_batch(pb::FaultBatchRequest {
                pid: target,
                addrs: vec![0x0040_0000, 0x0065_2000, 0x7f00_0000_0000, 0x7f00_0001_1000],
                access: pb::Access::Read as i32,
                totals_only: true,
            })
            .await
            .map_err(|e| format!("prefault: {e:?}"))?;
            let mut case = Case {
                c: c.clone(),
                target,
                created: vec![target],
                session: None,
                next_id: 1,
                tally: self.tally.clone(),
            };
            if via_session {
                case.open_session().await?;
            }
            let mut result = Ok(());
            for call in calls {
                if let Err(e) = case.check(call).await {
                    result = Err(e);
                    break;
                }
            }
            case.session = None;
            case.cleanup().await;
            result
        });
        r.map_err(TestCaseError::fail)
    }
}

/// A stream opened for a case: requests go in one at a time, each reply is
/// awaited before the next request is sent.
struct Session {
    tx: tokio::sync::mpsc::Sender<pb::SessionRequest>,
    rx: tonic::Streaming<pb::SessionReply>,
}

struct Case {
    c: AddressSpaceClient<Channel>,
    target: u32,
    /// Processes to exit when the case ends (already exited ones just
    /// answer NOT_FOUND).
    created: Vec<u32>,
    session: Option<Session>,
    next_id: u64,
    tally: Arc<Mutex<BTreeMap<(&'static str, String), u32>>>,
}

/// What a failed call may answer, and the fields its INVALID_ARGUMENT
/// message may name.
struct Expect {
    fields: &'static [&'static str],
}

const DOCUMENTED: &[Code] = &[
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    // MAP_FIXED below mmap_min_addr: the kernel's EPERM (cap_mmap_addr).
    Code::PermissionDenied,
];

fn check_status(what: &str, code: Code, msg: &str, e: &Expect) -> Result<(), String> {
    if !DOCUMENTED.contains(&code) {
        return Err(format!(
            "{what}: undocumented status {code:?}: {msg:?} (documented: {DOCUMENTED:?})"
        ));
    }
    if code == Code::InvalidArgument
        && !e
            .fields
            .iter()
            .any(|f| msg.strip_prefix(f).is_some_and(|r| r.starts_with(':')))
    {
        return Err(format!(
            "{what}: INVALID_ARGUMENT message {msg:?} does not start with one of the request's fields {:?}",
            e.fields
        ));
    }
    if msg.is_empty() {
        return Err(format!("{what}: {code:?} with an empty message"));
    }
    Ok(())
}

/// The target's observable state: its `Maps`, or the status of asking.
type Snapshot = Result<pb::MapsResponse, Code>;

/// What maps say about the byte at `x`: protection, sharing, file, file
/// offset at `x`, path.
fn attrs_at(m: &pb::MapsResponse, x: u64) -> Option<(u32, bool, u64, u64, String)> {
    m.entries
        .iter()
        .find(|e| e.start <= x && x < e.end)
        .map(|e| {
            let off = if e.file_id != 0 {
                e.offset + (x - e.start)
            } else {
                0
            };
            (e.prot, e.shared, e.file_id, off, e.path.clone())
        })
}

/// A failed madvise: every byte has the protection, sharing, file, offset
/// and path it had, brk is unchanged, and RSS did not grow.
fn check_partial_madvise(before: &Snapshot, after: &Snapshot) -> Result<(), String> {
    let (Ok(b), Ok(a)) = (before, after) else {
        return if before == after {
            Ok(())
        } else {
            Err("snapshot status changed".into())
        };
    };
    if (a.brk, a.start_brk) != (b.brk, b.start_brk) || a.rss_pages > b.rss_pages {
        return Err("brk changed or rss grew".into());
    }
    for x in b
        .entries
        .iter()
        .chain(&a.entries)
        .flat_map(|e| [e.start, e.end])
    {
        if attrs_at(a, x) != attrs_at(b, x) {
            return Err(format!(
                "at {x:#x}: was {:?}, now {:?}",
                attrs_at(b, x),
                attrs_at(a, x)
            ));
        }
    }
    Ok(())
}

/// A failed mprotect over a hole: `[addr, changed_up_to)` (from the
/// message; `addr` if it says nothing was changed) has protection `prot`,
/// everything else is as before, and nothing but protections changed.
fn check_partial_mprotect(
    before: &Snapshot,
    after: &Snapshot,
    addr: u64,
    len: u64,
    prot: u32,
    msg: &str,
) -> Result<(), String> {
    let (Ok(b), Ok(a)) = (before, after) else {
        return if before == after {
            Ok(())
        } else {
            Err("snapshot status changed".into())
        };
    };
    let changed_up_to = match msg.split_once(" (before the hole)") {
        Some((head, _)) => {
            let range = head.rsplit(' ').next().unwrap_or_default();
            let hi = range.rsplit_once('-').map(|(_, hi)| hi).unwrap_or_default();
            u64::from_str_radix(hi.trim_start_matches("0x"), 16)
                .map_err(|e| format!("no changed range in the message: {e}"))?
        }
        None if msg.contains("nothing was changed") => addr,
        None => return Err("the message does not say what was changed".into()),
    };
    if changed_up_to < addr || changed_up_to > addr.saturating_add(len) {
        return Err(format!(
            "changed range ends at {changed_up_to:#x}, outside the call"
        ));
    }
    if (a.brk, a.start_brk, a.rss_pages) != (b.brk, b.start_brk, b.rss_pages) {
        return Err("brk or rss changed".into());
    }
    let mut points: Vec<u64> = b
        .entries
        .iter()
        .chain(&a.entries)
        .flat_map(|e| [e.start, e.end])
        .chain([addr, changed_up_to])
        .collect();
    points.sort_unstable();
    points.dedup();
    for x in points {
        let expect = attrs_at(b, x).map(|mut t| {
            if (addr..changed_up_to).contains(&x) {
                t.0 = prot;
            }
            t
        });
        if attrs_at(a, x) != expect {
            return Err(format!(
                "at {x:#x}: expected {expect:?}, got {:?}",
                attrs_at(a, x)
            ));
        }
    }
    Ok(())
}

/// A failed mremap that says what it did first (`MmError::Partial`'s "as
/// the kernel does, the destination 0x..-0x.. was unmapped and ..."): every
/// byte outside the ranges it names is as before; inside a range it says
/// was unmapped and outside any it says was moved, nothing is mapped; brk
/// is unchanged and RSS did not grow.
fn check_partial_mremap(before: &Snapshot, after: &Snapshot, msg: &str) -> Result<(), String> {
    let (Ok(b), Ok(a)) = (before, after) else {
        return if before == after {
            Ok(())
        } else {
            Err("snapshot status changed".into())
        };
    };
    let Some((_, applied)) = msg.split_once("; as the kernel does, ") else {
        return Err("a changed map but the message does not say what was done".into());
    };
    let hex = |t: &str| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok();
    let range = |t: &str| {
        let (lo, hi) = t.split_once('-')?;
        Some((hex(lo)?, hex(hi)?))
    };
    let (mut unmapped, mut moved) = (Vec::new(), Vec::new());
    for step in applied.trim_end_matches(" first").split(" and ") {
        let words: Vec<&str> = step.split(' ').collect();
        match words.as_slice() {
            [.., r, "was", "unmapped"] => unmapped.push(range(r).ok_or(step)?),
            [r, "was", "moved", "to", to] => {
                moved.push(range(r).ok_or(step)?);
                moved.push(range(to).ok_or(step)?);
            }
            _ => return Err(format!("cannot read {step:?}")),
        }
    }
    if (a.brk, a.start_brk) != (b.brk, b.start_brk) || a.rss_pages > b.rss_pages {
        return Err("brk changed or rss grew".into());
    }
    let inside = |rs: &[(u64, u64)], x: u64| rs.iter().any(|&(lo, hi)| lo <= x && x < hi);
    for x in b
        .entries
        .iter()
        .chain(&a.entries)
        .flat_map(|e| [e.start, e.end])
    {
        let named = inside(&unmapped, x) || inside(&moved, x);
        if !named && attrs_at(a, x) != attrs_at(b, x) {
            return Err(format!(
                "at {x:#x}, outside what the message names: was {:?}, now {:?}",
                attrs_at(b, x),
                attrs_at(a, x)
            ));
        }
        if inside(&unmapped, x) && !inside(&moved, x) && attrs_at(a, x).is_some() {
            return Err(format!("{x:#x} is still mapped after \"{applied}\""));
        }
    }
    Ok(())
}

impl Case {
    async fn snapshot(&mut self) -> Snapshot {
        self.c
            .maps(pb::MapsRequest { pid: self.target })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.code())
    }

    async fn open_session(&mut self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let replies = self
            .c
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("open Session: {e:?}"))?
            .into_inner();
        self.session = Some(Session { tx, rx: replies });
        Ok(())
    }

    fn pid(&self, p: Pid) -> u32 {
        match p {
            Pid::Target => self.target,
            Pid::Zero => 0,
            Pid::Near(d) => self.target.wrapping_add(d),
            Pid::Max => u32::MAX,
            Pid::Any(v) => v,
        }
    }

    /// Make one call; on failure check the status, the message and that
    /// the target did not change.
    async fn check(&mut self, call: Call) -> Result<(), String> {
        let before = self.snapshot().await;
        let (what, expect) = (call.name(), call.expect());
        let mprotect_of_target = match &call {
            Call::Mprotect(Pid::Target, addr, len, prot) => Some((*addr, *len, *prot)),
            _ => None,
        };
        let madvise_of_target = matches!(&call, Call::Madvise(Pid::Target, ..));
        let mremap_of_target = matches!(&call, Call::Mremap(Pid::Target, ..));
        let req = call.resolve(self);
        let outcome: Result<Option<u32>, (Code, String)> = if self.session.is_some() {
            self.via_session(req).await?
        } else {
            self.unary(req).await
        };
        let code = match &outcome {
            Ok(_) => Code::Ok,
            Err((c, _)) => *c,
        };
        *self
            .tally
            .lock()
            .unwrap()
            .entry((what, format!("{code:?}")))
            .or_default() += 1;
        match outcome {
            Ok(created) => {
                self.created.extend(created);
                Ok(())
            }
            Err((code, msg)) => {
                check_status(what, code, &msg, &expect)?;
                let after = self.snapshot().await;
                if let (Some((addr, len, prot)), Code::FailedPrecondition) =
                    (mprotect_of_target, code)
                {
                    // do_mprotect_pkey changes the VMAs before a hole, then
                    // fails with ENOMEM: exactly that part may differ.
                    return check_partial_mprotect(&before, &after, addr, len, prot, &msg)
                        .map_err(|e| format!("Mprotect failed with {code:?} ({msg}): {e}"));
                }
                if mremap_of_target && msg.contains("; as the kernel does, ") {
                    return check_partial_mremap(&before, &after, &msg)
                        .map_err(|e| format!("Mremap failed with {code:?} ({msg}): {e}"));
                }
                if madvise_of_target {
                    // madvise_walk_vmas advises every VMA up to the one that
                    // fails (or all of them around a hole): pages may be
                    // gone and VM_DONTCOPY/VM_WIPEONFORK set, nothing else.
                    return check_partial_madvise(&before, &after)
                        .map_err(|e| format!("Madvise failed with {code:?} ({msg}): {e}"));
                }
                if after != before {
                    return Err(format!(
                        "{what} failed with {code:?} ({msg}) but changed the target:\nbefore {before:?}\nafter {after:?}"
                    ));
                }
                Ok(())
            }
        }
    }

    /// The call as its unary RPC. `Ok(Some(pid))` for a process it created.
    async fn unary(&mut self, req: Req) -> Result<Option<u32>, (Code, String)> {
        let c = &mut self.c;
        let err = |s: tonic::Status| (s.code(), s.message().to_string());
        match req {
            Req::Op(op) => match op {
                Op::Spawn(r) => c.spawn(r).await.map(|r| Some(r.into_inner().pid)),
                Op::Mmap(r) => c.mmap(r).await.map(|_| None),
                Op::Munmap(r) => c.munmap(r).await.map(|_| None),
                Op::Mprotect(r) => c.mprotect(r).await.map(|_| None),
                Op::Brk(r) => c.brk(r).await.map(|_| None),
                Op::Fault(r) => c.fault(r).await.map(|_| None),
                Op::FaultBatch(r) => {
                    let n = r.addrs.len() as u64;
                    let totals_only = r.totals_only;
                    c.fault_batch(r).await.map(|resp| {
                        let resp = resp.into_inner();
                        // A successful batch answers every address.
                        assert_eq!(resp.totals.unwrap().faults, n);
                        if !totals_only {
                            assert_eq!(resp.outcomes.len() as u64, n);
                        }
                        None
                    })
                }
                Op::Fork(r) => c.fork(r).await.map(|r| Some(r.into_inner().child_pid)),
                Op::Exit(r) => c.exit(r).await.map(|_| None),
                Op::Maps(r) => c.maps(r).await.map(|_| None),
                Op::Mremap(r) => c.mremap(r).await.map(|_| None),
                Op::Madvise(r) => c.madvise(r).await.map(|_| None),
            }
            .map_err(err),
            Req::Race(r) => c.race_scenario(r).await.map(|_| None).map_err(err),
            Req::NoOp => unreachable!("only sent on a Session"),
        }
    }

    /// The call as one `Session` operation.
    async fn via_session(
        &mut self,
        req: Req,
    ) -> Result<Result<Option<u32>, (Code, String)>, String> {
        let op = match req {
            Req::Op(op) => Some(op),
            Req::NoOp => None,
            // Not a Session operation: unary.
            Req::Race(_) => return Ok(self.unary(req).await),
        };
        let id = self.next_id;
        self.next_id += 1;
        let s = self.session.as_mut().unwrap();
        s.tx.send(pb::SessionRequest { id, op })
            .await
            .map_err(|_| "Session request stream closed".to_string())?;
        let reply =
            s.rx.message()
                .await
                .map_err(|e| format!("Session stream failed: {e:?}"))?
                .ok_or("Session stream ended early")?;
        if reply.id != id {
            return Err(format!("reply id {} for request {id}", reply.id));
        }
        if reply.code == 0 {
            use pb::session_reply::Result as R;
            return Ok(Ok(match reply.result {
                Some(R::Spawn(r)) => Some(r.pid),
                Some(R::Fork(r)) => Some(r.child_pid),
                Some(_) => None,
                None => return Err(format!("OK reply {id} without a result")),
            }));
        }
        if reply.result.is_some() {
            return Err(format!("error reply {id} carries a result"));
        }
        Ok(Err((Code::from(reply.code), reply.message)))
    }

    async fn cleanup(&mut self) {
        for &pid in &self.created {
            // Already exited (by the case itself): NOT_FOUND, fine.
            let _ = self.c.exit(pb::ExitRequest { pid }).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Random calls.

/// A pid, resolved against the case's target when the case runs.
#[derive(Debug, Clone, Copy)]
enum Pid {
    Target,
    Zero,
    Near(u32),
    Max,
    Any(u32),
}

fn pid() -> impl Strategy<Value = Pid> {
    prop_oneof![
        6 => Just(Pid::Target),
        1 => Just(Pid::Zero),
        1 => (1..4u32).prop_map(Pid::Near),
        1 => Just(Pid::Max),
        1 => any::<u32>().prop_map(Pid::Any),
    ]
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (prop::sample::select(MARKS), -4i64..4).prop_map(|(m, d)| m.wrapping_add_signed(d * PAGE as i64)),
        1 => (prop::sample::select(MARKS), 1..PAGE).prop_map(|(m, o)| m + o),
        1 => Just(0u64),
        1 => prop::sample::select(vec![
            PAGE,
            TASK_SIZE - PAGE,
            TASK_SIZE,
            TASK_SIZE + PAGE,
            u64::MAX,
            u64::MAX - PAGE + 1,
            1 << 63,
        ]),
        2 => any::<u64>(),
    ]
}

fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (1..64u64).prop_map(|p| p * PAGE),
        1 => 0..3 * PAGE,
        1 => prop::sample::select(vec![
            0,
            TASK_SIZE,
            TASK_SIZE + 1,
            TASK_SIZE - PAGE,
            u64::MAX,
            u64::MAX - PAGE + 2,
            1 << 63,
        ]),
        1 => any::<u64>(),
    ]
}

fn prot() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0..8u32, 1 => any::<u32>(), 1 => Just(u32::MAX)]
}

fn flags() -> impl Strategy<Value = u32> {
    // Any subset of the API's bits (including none and both of
    // SHARED|PRIVATE), or anything at all.
    let bits = prop::sample::subsequence(vec![0x01u32, 0x02, 0x10, 0x20, 0x10_0000], 0..=5)
        .prop_map(|v| v.into_iter().fold(0, |a, b| a | b));
    prop_oneof![4 => bits, 1 => any::<u32>()]
}

fn small_or_any() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(0u64), 2 => 1..4u64, 1 => (0..16u64).prop_map(|p| p * PAGE), 1 => any::<u64>()]
}

fn access() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..3i32, 1 => any::<i32>(), 1 => Just(-1), 1 => Just(i32::MIN)]
}

/// A `maps_text`: valid-looking lines with random (often absurd) columns,
/// or plain garbage.
fn maps_text() -> impl Strategy<Value = String> {
    let hex = prop_oneof![
        3 => (0..0x1000u64).prop_map(|p| p * PAGE),
        1 => any::<u64>(),
        1 => Just(TASK_SIZE),
        1 => Just(u64::MAX),
    ];
    let line = (
        hex.clone(),
        hex.clone(),
        "[r-][w-][x-][ps]|[a-z-]{0,5}",
        hex,
        "[0-9a-f]{1,3}:[0-9a-f]{1,3}|[a-z:]{0,4}",
        prop_oneof![Just("0".to_string()), "[0-9]{1,22}"],
        prop_oneof![
            Just(String::new()),
            Just("[heap]".into()),
            Just("[stack]".into()),
            Just("[vsyscall]".into()),
            "/[a-z/]{1,20}",
            "\\PC{0,30}",
        ],
    )
        .prop_map(|(s, e, perms, off, dev, inode, path)| {
            format!("{s:x}-{e:x} {perms} {off:08x} {dev} {inode} {path}")
        });
    // Well-formed, ascending lines: mostly accepted; sometimes more than
    // the server's max_map_count (512).
    let valid_line = (
        1..16u64,
        1..16u64,
        "[r-][w-][x-][ps]",
        prop_oneof![Just(String::new()), Just("[heap]".into()), "/[a-z]{1,8}",],
    );
    let valid = prop_oneof![
        4 => prop::collection::vec(valid_line.clone(), 1..16),
        1 => prop::collection::vec(valid_line, 500..600),
    ]
    .prop_map(|lines| {
        let mut at = 0x10_0000u64;
        let mut out = String::new();
        for (gap, len, perms, path) in lines {
            let start = at + gap * PAGE;
            at = start + len * PAGE;
            let inode = if path.starts_with('/') { 7 } else { 0 };
            out += &format!("{start:x}-{at:x} {perms} 00000000 08:01 {inode} {path}\n");
        }
        out
    });
    prop_oneof![
        3 => valid,
        3 => prop::collection::vec(line, 1..12).prop_map(|v| v.join("\n")),
        1 => "\\PC{0,200}",
        1 => prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn batch() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        4 => prop::collection::vec(addr(), 0..64),
        1 => (MAX_BATCH - 2..MAX_BATCH + 3).prop_map(|n| vec![0x7f00_0000_0000; n]),
        1 => (MAX_BATCH..8 * MAX_BATCH).prop_map(|n| (0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect()),
    ]
}

/// One random call.
#[derive(Debug, Clone)]
enum Call {
    Spawn(String),
    Mmap {
        pid: Pid,
        addr: u64,
        length: u64,
        prot: u32,
        flags: u32,
        file_id: u64,
        offset: u64,
    },
    Munmap(Pid, u64, u64),
    Mprotect(Pid, u64, u64, u32),
    /// pid, addr, old_length, new_length, flags, new_addr.
    Mremap(Pid, u64, u64, u64, u32, u64),
    /// pid, addr, length, advice.
    Madvise(Pid, u64, u64, u32),
    Brk(Pid, u64),
    Fault(Pid, u64, i32),
    FaultBatch(Pid, Vec<u64>, i32, bool),
    Fork(Pid),
    Exit(Pid),
    Maps(Pid),
    Race(String, i32),
    /// A `Session` request with no operation (unary calls cannot say that).
    NoOp,
}

enum Req {
    Op(Op),
    Race(pb::RaceScenarioRequest),
    NoOp,
}

impl Call {
    fn name(&self) -> &'static str {
        match self {
            Call::Spawn(_) => "Spawn",
            Call::Mmap { .. } => "Mmap",
            Call::Munmap(..) => "Munmap",
            Call::Mprotect(..) => "Mprotect",
            Call::Mremap(..) => "Mremap",
            Call::Madvise(..) => "Madvise",
            Call::Brk(..) => "Brk",
            Call::Fault(..) => "Fault",
            Call::FaultBatch(..) => "FaultBatch",
            Call::Fork(_) => "Fork",
            Call::Exit(_) => "Exit",
            Call::Maps(_) => "Maps",
            Call::Race(..) => "RaceScenario",
            Call::NoOp => "Session(op unset)",
        }
    }

    /// The fields an INVALID_ARGUMENT may name: the request's own fields
    /// (address_space.proto, race.proto).
    fn expect(&self) -> Expect {
        let fields: &'static [&'static str] = match self {
            Call::Spawn(_) => &["maps_text"],
            Call::Mmap { .. } => &[
                "pid", "addr", "length", "prot", "flags", "file_id", "offset",
            ],
            Call::Munmap(..) => &["pid", "addr", "length"],
            Call::Mprotect(..) => &["pid", "addr", "length", "prot"],
            Call::Mremap(..) => &[
                "pid",
                "addr",
                "old_length",
                "new_length",
                "flags",
                "new_addr",
            ],
            Call::Madvise(..) => &["pid", "addr", "length", "advice"],
            Call::Brk(..) => &["pid", "brk"],
            Call::Fault(..) => &["pid", "addr", "access"],
            Call::FaultBatch(..) => &["pid", "addrs", "access"],
            Call::Fork(_) | Call::Exit(_) | Call::Maps(_) => &["pid"],
            Call::Race(..) => &["name", "variant"],
            Call::NoOp => &["op"],
        };
        Expect { fields }
    }

    fn resolve(self, case: &Case) -> Req {
        match self {
            Call::Spawn(maps_text) => Req::Op(Op::Spawn(pb::SpawnRequest {
                maps_text,
                start_brk: 0,
            })),
            Call::Mmap {
                pid,
                addr,
                length,
                prot,
                flags,
                file_id,
                offset,
            } => Req::Op(Op::Mmap(pb::MmapRequest {
                pid: case.pid(pid),
                addr,
                length,
                prot,
                flags,
                file_id,
                offset,
                file_size: 0,
            })),
            Call::Munmap(p, addr, length) => Req::Op(Op::Munmap(pb::MunmapRequest {
                pid: case.pid(p),
                addr,
                length,
            })),
            Call::Mprotect(p, addr, length, prot) => Req::Op(Op::Mprotect(pb::MprotectRequest {
                pid: case.pid(p),
                addr,
                length,
                prot,
            })),
            Call::Mremap(p, addr, old_length, new_length, flags, new_addr) => {
                Req::Op(Op::Mremap(pb::MremapRequest {
                    pid: case.pid(p),
                    addr,
                    old_length,
                    new_length,
                    flags,
                    new_addr,
                }))
            }
            Call::Madvise(p, addr, length, advice) => Req::Op(Op::Madvise(pb::MadviseRequest {
                pid: case.pid(p),
                addr,
                length,
                advice,
            })),
            Call::Brk(p, brk) => Req::Op(Op::Brk(pb::BrkRequest {
                pid: case.pid(p),
                brk,
            })),
            Call::Fault(p, addr, access) => Req::Op(Op::Fault(pb::FaultRequest {
                pid: case.pid(p),
                addr,
                access,
            })),
            Call::FaultBatch(p, addrs, access, totals_only) => {
                Req::Op(Op::FaultBatch(pb::FaultBatchRequest {
                    pid: case.pid(p),
                    addrs,
                    access,
                    totals_only,
                }))
            }
            Call::Fork(p) => Req::Op(Op::Fork(pb::ForkRequest { pid: case.pid(p) })),
            Call::Exit(p) => Req::Op(Op::Exit(pb::ExitRequest { pid: case.pid(p) })),
            Call::Maps(p) => Req::Op(Op::Maps(pb::MapsRequest { pid: case.pid(p) })),
            Call::Race(name, variant) => Req::Race(pb::RaceScenarioRequest { name, variant }),
            Call::NoOp => Req::NoOp,
        }
    }
}

fn spawn_call() -> impl Strategy<Value = Call> {
    maps_text().prop_map(Call::Spawn)
}

/// `mmap` flags and file id that agree with each other (most such calls
/// succeed), plus a matching page-aligned offset.
fn plausible_mmap() -> impl Strategy<Value = Call> {
    let kind = prop::sample::select(vec![
        (0x02u32 | 0x20, false),
        (0x01 | 0x20, false),
        (0x02 | 0x20 | 0x10, false),
        (0x02 | 0x20 | 0x10_0000, false),
        (0x02, true),
        (0x01, true),
        (0x01 | 0x10, true),
    ]);
    (
        pid(),
        prop_oneof![2 => Just(0u64), 3 => (prop::sample::select(MARKS), -8i64..8).prop_map(|(m, d)| m.wrapping_add_signed(d * PAGE as i64))],
        (1..32u64).prop_map(|p| p * PAGE),
        0..8u32,
        kind,
        1..4u64,
        (0..16u64).prop_map(|p| p * PAGE),
    )
        .prop_map(|(pid, addr, length, prot, (flags, file), f, offset)| Call::Mmap {
            pid,
            addr,
            length,
            prot,
            flags,
            file_id: if file { f } else { 0 },
            offset: if file { offset } else { 0 },
        })
}

/// Every arm boxed: a union of this many large tuple strategies overflows
/// a test thread's stack in debug builds when unboxed.
fn mm_call() -> BoxedStrategy<Call> {
    prop_oneof![
        3 => plausible_mmap().boxed(),
        3 => (pid(), addr(), length(), prot(), flags(), small_or_any(), small_or_any()).prop_map(
            |(pid, addr, length, prot, flags, file_id, offset)| Call::Mmap {
                pid,
                addr,
                length,
                prot,
                flags,
                file_id,
                offset,
            }
        ).boxed(),
        2 => (pid(), addr(), length()).prop_map(|(p, a, l)| Call::Munmap(p, a, l)).boxed(),
        2 => (pid(), addr(), length(), prot()).prop_map(|(p, a, l, x)| Call::Mprotect(p, a, l, x)).boxed(),
        2 => (pid(), prop::sample::select(MARKS), 0..4u64, 1..4u64, 0..8u32)
            .prop_map(|(p, m, d, l, x)| Call::Mprotect(p, m + d * PAGE, l * PAGE, x)).boxed(),
        1 => (pid(), addr()).prop_map(|(p, a)| Call::Brk(p, a)).boxed(),
        2 => (pid(), addr(), length(), length(), mremap_flags(), addr())
            .prop_map(|(p, a, o, n, f, na)| Call::Mremap(p, a, o, n, f, na)).boxed(),
        2 => (pid(), prop::sample::select(MARKS), 0..4u64, 1..4u64, 1..8u64, mremap_flags(), mark_near())
            .prop_map(|(p, m, d, o, n, f, na)| Call::Mremap(p, m + d * PAGE, o * PAGE, n * PAGE, f, na)).boxed(),
        2 => (pid(), addr(), length(), advice())
            .prop_map(|(p, a, l, x)| Call::Madvise(p, a, l, x)).boxed(),
        2 => (pid(), prop::sample::select(MARKS), 0..4u64, 1..8u64, advice())
            .prop_map(|(p, m, d, l, x)| Call::Madvise(p, m + d * PAGE, l * PAGE, x)).boxed(),
    ]
    .boxed()
}

/// `MREMAP_*` bits: the valid combinations mostly, then anything.
fn mremap_flags() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => Just(0u32),
        2 => Just(1u32),
        2 => Just(1u32 | 2),
        2 => Just(1u32 | 4),
        1 => 0..8u32,
        1 => any::<u32>(),
    ]
}

/// The madvise advice vmasim simulates, and anything else.
fn advice() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => prop::sample::select(vec![4u32, 8, 10, 11, 18, 19]),
        1 => 0..32u32,
        1 => any::<u32>(),
    ]
}

/// An address a few pages around one of the target's VMA boundaries.
fn mark_near() -> impl Strategy<Value = u64> {
    (prop::sample::select(MARKS), -8i64..8)
        .prop_map(|(m, d)| m.wrapping_add_signed(d * PAGE as i64))
}

fn fault_call() -> impl Strategy<Value = Call> {
    prop_oneof![
        1 => (pid(), addr(), access()).prop_map(|(p, a, x)| Call::Fault(p, a, x)),
        1 => (pid(), batch(), access(), any::<bool>()).prop_map(|(p, b, x, t)| Call::FaultBatch(p, b, x, t)),
    ]
}

fn process_call() -> impl Strategy<Value = Call> {
    prop_oneof![
        2 => pid().prop_map(Call::Fork),
        1 => pid().prop_map(Call::Exit),
        2 => pid().prop_map(Call::Maps),
    ]
}

fn race_call() -> impl Strategy<Value = Call> {
    let names: Vec<String> = vmasim_server::race_lab::scenarios()
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    let name = prop_oneof![
        1 => prop::sample::select(names),
        1 => Just(String::new()),
        2 => "\\PC{0,40}",
    ];
    let variant = prop_oneof![3 => 0..2i32, 1 => any::<i32>()];
    (name, variant).prop_map(|(n, v)| Call::Race(n, v))
}

fn any_call() -> impl Strategy<Value = Call> {
    prop_oneof![
        1 => spawn_call(),
        1 => race_call(),
        4 => mm_call(),
        3 => fault_call(),
        2 => process_call(),
    ]
}

/// A sequence of calls on one target (later calls see what earlier
/// successful ones did).
fn run(strategy: impl Strategy<Value = Call>, max_len: usize, via_session: bool, cases: u32) {
    let h = Harness::start();
    runner(cases)
        .run(&prop::collection::vec(strategy, 1..=max_len), |calls| {
            h.run_case(calls, via_session)
        })
        .unwrap();
    // Every case exited what it created.
    assert!(h.sim.pids().is_empty(), "left behind: {:?}", h.sim.pids());
    let tally = h.tally.lock().unwrap();
    eprintln!("calls by RPC and status: {tally:?}");
    let ok = tally.iter().filter(|((_, c), _)| c == "Ok").count();
    assert!(ok > 0, "no call succeeded: {tally:?}");
    assert!(ok < tally.len(), "no call failed: {tally:?}");
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn spawn_with_arbitrary_maps_text() {
    run(spawn_call(), 4, false, cases());
}

#[test]
fn mmap_munmap_mprotect_brk_with_arbitrary_fields() {
    run(mm_call(), 8, false, cases());
}

#[test]
fn fault_and_fault_batch_with_arbitrary_fields() {
    run(fault_call(), 6, false, cases());
}

#[test]
fn fork_exit_maps_with_arbitrary_pids() {
    run(process_call(), 6, false, cases());
}

#[test]
fn race_scenario_with_arbitrary_names_and_variants() {
    // A known scenario runs real threads for a few milliseconds: fewer
    // cases, one call each.
    run(race_call(), 1, false, cases().min(32));
}

#[test]
fn session_stream_with_arbitrary_operations() {
    let op = prop_oneof![10 => any_call(), 1 => Just(Call::NoOp)];
    run(op, 8, true, cases());
}

/// A message over the server's decode limit (4 MiB) is refused before any
/// handler runs with RESOURCE_EXHAUSTED, the status gRPC's status-code
/// table gives a message larger than the configured limit (tonic says
/// OUT_OF_RANGE; the RPC layer corrects it). The connection survives and
/// the target is untouched.
#[test]
fn oversized_message_is_refused_and_changes_nothing() {
    let h = Harness::start();
    RT.block_on(async {
        let mut c = h.client.clone();
        let pid = spawn_maps(&mut c, TARGET_MAPS).await;
        let before = maps(&mut c, pid).await;
        // 5 MiB of maps text; then 700 Ki addresses of ~8 bytes each.
        let e = c
            .spawn(pb::SpawnRequest {
                maps_text: "x".repeat(5 << 20),
                start_brk: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("too large"), "{e:?}");
        let e = c
            .fault_batch(pb::FaultBatchRequest {
                pid,
                addrs: vec![0x7f00_0000_0000; 700 << 10],
                access: 0,
                totals_only: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("too large"), "{e:?}");
        let after = maps(&mut c, pid).await;
        assert_eq!(before, after);
        assert_eq!(h.sim.pids(), vec![pid]);
        c.exit(pb::ExitRequest { pid }).await.unwrap();
    });
}
