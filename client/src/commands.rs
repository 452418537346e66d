//! The one-RPC commands: `spawn`, `mmap`, `munmap`, `mprotect`, `brk`,
//! `fault`, `fork`, `exit`, `maps`, `stats`, `health`.
//!
//! Each returns the text to print on stdout. Output is made for shells:
//! `spawn` and `fork` print only the new pid and `mmap` only the address,
//! so `PID=$(vmasim spawn)` works; `maps` prints the server's text byte for
//! byte (the kernel's `/proc/PID/maps` format).

use crate::connect::{Client, Target};
use crate::error::CliError;
use crate::parse::format_prot;
use crate::stats;
use std::path::Path;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use vmasim_proto::v1::{
    Access, BrkRequest, ExitRequest, FaultOutcome, FaultPath, FaultRequest, ForkRequest, MapFlag,
    MapsRequest, MmapRequest, MprotectRequest, MunmapRequest, SpawnRequest,
};

/// `spawn [--from-maps FILE] [--start-brk ADDR]` (`-` reads stdin). Prints
/// the pid.
pub async fn spawn(
    c: &mut Client,
    from_maps: Option<&Path>,
    start_brk: u64,
) -> Result<String, CliError> {
    let maps_text = match from_maps {
        None => String::new(),
        Some(p) if p == Path::new("-") => std::io::read_to_string(std::io::stdin())?,
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| CliError::Other(format!("cannot read {}: {e}", p.display())))?,
    };
    let r = c
        .spawn(SpawnRequest {
            maps_text,
            start_brk,
        })
        .await?
        .into_inner();
    Ok(format!("{}\n", r.pid))
}

/// Arguments of `mmap`, already parsed.
#[derive(Debug, Clone)]
pub struct MmapArgs {
    /// Target process.
    pub pid: u32,
    /// Address or hint (0: server chooses).
    pub addr: u64,
    /// Length in bytes.
    pub length: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `MAP_*` bits; `None` = `private,anonymous`, or `private` with a file.
    pub flags: Option<u32>,
    /// File identity (file-backed mapping).
    pub file_id: Option<u64>,
    /// Offset in the file.
    pub offset: u64,
}

/// `mmap`. Prints the mapping's address in hex.
pub async fn mmap(c: &mut Client, a: MmapArgs) -> Result<String, CliError> {
    let flags = a.flags.unwrap_or(if a.file_id.is_some() {
        MapFlag::MapPrivate as u32
    } else {
        MapFlag::MapPrivate as u32 | MapFlag::MapAnonymous as u32
    });
    let r = c
        .mmap(MmapRequest {
            pid: a.pid,
            addr: a.addr,
            length: a.length,
            prot: a.prot,
            flags,
            file_id: a.file_id.unwrap_or(0),
            offset: a.offset,
        })
        .await?
        .into_inner();
    Ok(format!("{:#x}\n", r.addr))
}

/// `munmap`. Prints the process's VMA count afterwards.
pub async fn munmap(c: &mut Client, pid: u32, addr: u64, length: u64) -> Result<String, CliError> {
    let r = c
        .munmap(MunmapRequest { pid, addr, length })
        .await?
        .into_inner();
    Ok(format!("vmas {}\n", r.vma_count))
}

/// `mprotect`. Prints the process's VMA count afterwards.
pub async fn mprotect(
    c: &mut Client,
    pid: u32,
    addr: u64,
    length: u64,
    prot: u32,
) -> Result<String, CliError> {
    let r = c
        .mprotect(MprotectRequest {
            pid,
            addr,
            length,
            prot,
        })
        .await?
        .into_inner();
    Ok(format!("vmas {}\n", r.vma_count))
}

/// `brk PID [ADDR]`. Prints the break and the heap start.
pub async fn brk(c: &mut Client, pid: u32, addr: Option<u64>) -> Result<String, CliError> {
    let r = c
        .brk(BrkRequest {
            pid,
            brk: addr.unwrap_or(0),
        })
        .await?
        .into_inner();
    Ok(format!("brk {:#x} start_brk {:#x}\n", r.brk, r.start_brk))
}

/// Short name of a fault outcome (`ANON_ZERO_FILL`).
pub fn outcome_name(o: i32) -> String {
    FaultOutcome::try_from(o)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("FAULT_OUTCOME_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("outcome {o}"))
}

/// Short name of a fault path (`PER_VMA_LOCK`).
pub fn path_name(p: i32) -> String {
    FaultPath::try_from(p)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("FAULT_PATH_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("path {p}"))
}

/// `fault PID ADDR [--write|--exec]`. Prints outcome, path and retries.
pub async fn fault(
    c: &mut Client,
    pid: u32,
    addr: u64,
    access: Access,
) -> Result<String, CliError> {
    let r = c
        .fault(FaultRequest {
            pid,
            addr,
            access: access as i32,
        })
        .await?
        .into_inner();
    Ok(format!(
        "{} via {} (retries {})\n",
        outcome_name(r.outcome),
        path_name(r.path),
        r.retries
    ))
}

/// `fork PID`. Prints the child's pid.
pub async fn fork(c: &mut Client, pid: u32) -> Result<String, CliError> {
    let r = c.fork(ForkRequest { pid }).await?.into_inner();
    Ok(format!("{}\n", r.child_pid))
}

/// `exit PID`. Prints what was torn down.
pub async fn exit(c: &mut Client, pid: u32) -> Result<String, CliError> {
    let r = c.exit(ExitRequest { pid }).await?.into_inner();
    Ok(format!(
        "vmas_freed {} rss_pages_freed {}\n",
        r.vmas_freed, r.rss_pages_freed
    ))
}

/// `maps PID`: exactly the server's text.
pub async fn maps(c: &mut Client, pid: u32) -> Result<String, CliError> {
    Ok(c.maps(MapsRequest { pid }).await?.into_inner().text)
}

/// `stats [--json]`.
pub async fn stats(c: &mut Client, json: bool) -> Result<String, CliError> {
    let s = stats::fetch(c).await?;
    Ok(if json {
        format!("{:#}\n", stats::to_json(&s))
    } else {
        stats::table(&s)
    })
}

/// `health`: `SERVING` (exit 0) or an error (non-zero).
pub async fn health(target: &Target) -> Result<String, CliError> {
    let limit = target.timeout.map_or(crate::connect::HEALTH_TIMEOUT, |t| {
        t.min(crate::connect::HEALTH_TIMEOUT)
    });
    let probe = async {
        let mut h = target.health().await?;
        Ok::<_, CliError>(
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner(),
        )
    };
    let r = tokio::time::timeout(limit, probe).await.map_err(|_| {
        CliError::Connect(format!(
            "no health answer from {} within {limit:?}",
            target.url
        ))
    })??;
    let status = ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown);
    if status == ServingStatus::Serving {
        Ok("SERVING\n".into())
    } else {
        Err(CliError::NotServing(format!(
            "server is {}",
            status.as_str_name()
        )))
    }
}

/// One `VmaEntry` as a compact line (used by `load --verify` and `replay`
/// diagnostics).
pub fn entry_line(e: &vmasim_proto::v1::VmaEntry) -> String {
    format!(
        "{:x}-{:x} {}{} {:08x} {}",
        e.start,
        e.end,
        format_prot(e.prot),
        if e.shared { 's' } else { 'p' },
        e.offset,
        e.path
    )
}
