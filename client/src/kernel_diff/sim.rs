//! The simulated side of `kernel-diff`: the same operations as RPCs.
//!
//! Only the proto is used, so the embedded server and a remote one
//! (`--server`) are driven alike. The first process is spawned from the
//! executor's own maps with its `start_brk` (see [`super`]); `fork` children
//! take the same process numbers as on the kernel side.

use super::compare::{Backing, HUGETLB_PATH, SHMEM_PATH, Vma};
use super::ops::Op;
use super::{FILE_SIZE, MAX_PROCS, NR_FILES, PAGE};
use crate::connect::Client;
use crate::error::CliError;
use vmasim_proto::v1::{self as pb, Access, FaultOutcome};

/// The result of one operation in the simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SResult {
    /// OK, with the value the kernel's call would return (address, break,
    /// count); 0 where the RPC has none.
    Ok(u64),
    /// An error status.
    Err(tonic::Code, String),
    /// A touch was answered SEGV_MAPERR / SEGV_ACCERR / SIGBUS (the
    /// executor's probe sees EFAULT for each).
    Segv(FaultOutcome),
}

/// Requests of `fill` in flight at once. Each is a small DATA frame; h2's
/// server counts the small frames it holds unread against a budget of
/// half its connection window (at least 25,600 bytes of overhead, 256
/// bytes a frame less its payload) and ends the connection with
/// `ENHANCE_YOUR_CALM` ("too_many_data_frames") past it. A server slowed
/// by load stops reading a Session whose replies queue up, so an unbounded
/// pipeline of 65,530 requests could trip it; 64 in flight cannot.
const FILL_IN_FLIGHT: usize = 64;

/// `fill` as one pipelined `Session` stream (65530 unary round trips
/// would dominate the max_map_count scenario), at most [`FILL_IN_FLIGHT`]
/// requests ahead of the replies. Returns how many mappings succeeded
/// before the first failure, as the executor's loop does.
async fn fill(c: &mut Client, pid: u32, addr: u64, count: u64) -> Result<u64, CliError> {
    use pb::session_request::Op as SOp;
    use vmasim_proto::linux::{map::*, prot::*};
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(FILL_IN_FLIGHT));
    let (tx, rx) = tokio::sync::mpsc::channel(FILL_IN_FLIGHT);
    let mut replies = c
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let sender_window = window.clone();
    let sender = tokio::spawn(async move {
        for i in 0..count {
            // A permit per request, given back by its reply.
            let Ok(permit) = sender_window.acquire().await else {
                break;
            };
            permit.forget();
            let req = pb::SessionRequest {
                id: i,
                op: Some(SOp::Mmap(pb::MmapRequest {
                    pid,
                    addr: addr + i * 2 * PAGE,
                    length: PAGE,
                    prot: PROT_READ | PROT_WRITE,
                    flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                    file_id: 0,
                    offset: 0,
                    file_size: 0,
                })),
            };
            if tx.send(req).await.is_err() {
                break;
            }
        }
    });
    let read = async {
        let mut ok = 0;
        let mut failed = false;
        for _ in 0..count {
            let Some(r) = replies.message().await? else {
                break;
            };
            window.add_permits(1);
            if r.code != 0 {
                failed = true;
            } else if !failed {
                ok += 1;
            }
        }
        Ok::<_, CliError>(ok)
    };
    let ok = read.await;
    // A stream that ended early must not leave the sender waiting for a
    // permit: closing the window ends it.
    window.close();
    let _ = sender.await;
    ok
}

/// Simulated processes, by process number.
pub struct Sim {
    client: Client,
    /// Server pid of each live process number.
    pub pids: [Option<u32>; MAX_PROCS],
    /// `file_id` of memfd 0; memfd N is `file_base + N`.
    file_base: u64,
    start_brk: u64,
}

impl Sim {
    /// Spawn process 0 from `maps` with `start_brk`.
    pub async fn spawn(
        mut client: Client,
        maps: &str,
        start_brk: u64,
        file_base: u64,
    ) -> Result<Sim, CliError> {
        // [vsyscall] is the gate area, not a VMA: it is not in map_count.
        // `maps` is smaps-style (each maps line may be followed by its
        // `VmFlags:` line), so the gate's fields go with it.
        let mut in_gate = false;
        let text: String = maps
            .lines()
            .filter(|l| {
                let smaps_field = l
                    .split_once(':')
                    .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_alphanumeric()));
                if !smaps_field {
                    in_gate = l.ends_with("[vsyscall]");
                }
                !in_gate
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let pid = client
            .spawn(pb::SpawnRequest {
                maps_text: text,
                start_brk,
            })
            .await?
            .into_inner()
            .pid;
        let mut pids = [None; MAX_PROCS];
        pids[0] = Some(pid);
        Ok(Sim {
            client,
            pids,
            file_base,
            start_brk,
        })
    }

    fn pid(&self, proc: usize) -> Result<u32, CliError> {
        self.pids[proc]
            .ok_or_else(|| CliError::Other(format!("simulated process {proc} is not alive")))
    }

    /// Apply `op` to process `proc`; `child` is the number a fork's child gets.
    pub async fn apply(&mut self, proc: usize, op: &Op, child: usize) -> Result<SResult, CliError> {
        let pid = self.pid(proc)?;
        let c = &mut self.client;
        let r: Result<u64, tonic::Status> = match *op {
            Op::Mmap(ref m) => c
                .mmap(pb::MmapRequest {
                    pid,
                    addr: m.addr,
                    length: m.len,
                    prot: m.prot,
                    flags: m.flags,
                    file_id: m.file.map_or(0, |n| self.file_base + u64::from(n)),
                    offset: m.offset,
                    // The executor's memfds are FILE_SIZE long: a touch
                    // past the end of one (a file mapping grown by
                    // mremap) is SIGBUS on both sides.
                    file_size: if m.file.is_some() { FILE_SIZE } else { 0 },
                })
                .await
                .map(|r| r.into_inner().addr),
            Op::Munmap { addr, len } => c
                .munmap(pb::MunmapRequest {
                    pid,
                    addr,
                    length: len,
                })
                .await
                .map(|_| 0),
            Op::Mprotect { addr, len, prot } => c
                .mprotect(pb::MprotectRequest {
                    pid,
                    addr,
                    length: len,
                    prot,
                })
                .await
                .map(|_| 0),
            Op::Brk { off } => c
                .brk(pb::BrkRequest {
                    pid,
                    brk: self.start_brk.wrapping_add_signed(off),
                })
                .await
                .map(|r| r.into_inner().brk),
            Op::BrkQuery => c
                .brk(pb::BrkRequest { pid, brk: 0 })
                .await
                .map(|r| r.into_inner().brk),
            Op::Touch { addr, write } => {
                let access = if write { Access::Write } else { Access::Read };
                let r = c
                    .fault(pb::FaultRequest {
                        pid,
                        addr,
                        access: access as i32,
                    })
                    .await?
                    .into_inner();
                let o = FaultOutcome::try_from(r.outcome).unwrap_or(FaultOutcome::Unspecified);
                if matches!(
                    o,
                    FaultOutcome::SegvMaperr | FaultOutcome::SegvAccerr | FaultOutcome::Sigbus
                ) {
                    return Ok(SResult::Segv(o));
                }
                Ok(0)
            }
            Op::Mremap(ref r) => c
                .mremap(pb::MremapRequest {
                    pid,
                    addr: r.old,
                    old_length: r.old_len,
                    new_length: r.new_len,
                    flags: r.flags,
                    new_addr: r.new_addr,
                })
                .await
                .map(|r| r.into_inner().addr),
            Op::Madvise { addr, len, advice } => c
                .madvise(pb::MadviseRequest {
                    pid,
                    addr,
                    length: len,
                    advice,
                })
                .await
                .map(|_| 0),
            Op::Fork => {
                let r = c.fork(pb::ForkRequest { pid }).await;
                if let Ok(r) = &r {
                    self.pids[child] = Some(r.get_ref().child_pid);
                }
                r.map(|_| 0)
            }
            Op::Exit => {
                let r = c.exit(pb::ExitRequest { pid }).await;
                self.pids[proc] = None;
                r.map(|_| 0)
            }
            Op::Fill { addr, count } => Ok(fill(c, pid, addr, count).await?),
        };
        Ok(match r {
            Ok(v) => SResult::Ok(v),
            Err(s) => SResult::Err(s.code(), s.message().to_string()),
        })
    }

    /// The VMAs of process `proc` overlapping `[lo, hi)`, and its break.
    pub async fn maps(&mut self, proc: usize, lo: u64, hi: u64) -> Result<Vec<Vma>, CliError> {
        let pid = self.pid(proc)?;
        let m = self
            .client
            .maps(pb::MapsRequest { pid })
            .await?
            .into_inner();
        let lines: Vec<&str> = m.text.lines().collect();
        let mut out = Vec::new();
        for (i, e) in m.entries.iter().enumerate() {
            if e.end <= lo || e.start >= hi {
                continue;
            }
            let n = e.file_id.wrapping_sub(self.file_base);
            let backing = if e.file_id != 0 && n < NR_FILES as u64 {
                Backing::File(n as u8)
            } else if e.path == SHMEM_PATH {
                Backing::Shmem(e.inode)
            } else if e.path == HUGETLB_PATH {
                Backing::Hugetlb(e.inode)
            } else if e.file_id != 0 {
                Backing::Other(e.path.clone())
            } else {
                Backing::Anon
            };
            let name = if backing == Backing::Anon {
                e.path.clone()
            } else {
                String::new()
            };
            let perms = format!(
                "{}{}",
                crate::parse::format_prot(e.prot),
                if e.shared { 's' } else { 'p' }
            );
            out.push(Vma {
                start: e.start,
                end: e.end,
                perms,
                offset: e.offset,
                backing,
                name,
                rss_kb: Some(e.rss_pages * 4),
                anon_kb: Some(e.anon_pages * 4),
                text: lines.get(i).copied().unwrap_or("").to_string(),
            });
        }
        Ok(out)
    }

    /// Exit every live process (best effort, for a shared server).
    pub async fn cleanup(&mut self) {
        for p in self.pids.iter_mut() {
            if let Some(pid) = p.take() {
                let _ = self.client.exit(pb::ExitRequest { pid }).await;
            }
        }
    }
}
