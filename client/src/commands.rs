//! The one-RPC commands: `spawn`, `mmap`, `munmap`, `mprotect`, `brk`,
//! `fault`, `fork`, `exit`, `maps`, `stats`, `health`.
//!
//! Each returns a [`Printed`]: the text to print on stdout, and the same
//! answer as one JSON object for `--json` (keys are the reply's proto
//! field names). The text is made for shells: `spawn` and `fork` print
//! only the new pid and `mmap` only the address, so `PID=$(vmasim spawn)`
//! works; `maps` prints the server's text byte for byte (the kernel's
//! `/proc/PID/maps` format); the others label what they print
//! (`vmas 3`, `brk 0x... start_brk 0x...`).

use crate::connect::{Client, Target};
use crate::error::CliError;
use crate::parse::format_prot;
use crate::stats;
use serde_json::{Value, json};
use std::path::Path;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use vmasim_proto::v1::{
    Access, BrkRequest, ExitRequest, FaultOutcome, FaultPath, FaultRequest, ForkRequest, MapFlag,
    MapsRequest, MmapRequest, MprotectRequest, MunmapRequest, SpawnRequest,
};

/// What a one-call command prints: `text`, or with `--json` `json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Printed {
    /// For people and shells (ends with a newline).
    pub text: String,
    /// The same answer as one JSON object.
    pub json: Value,
}

impl Printed {
    /// Both forms.
    pub fn new(text: String, json: Value) -> Self {
        Printed { text, json }
    }

    /// The form to print.
    pub fn render(&self, json: bool) -> String {
        if json {
            format!("{:#}\n", self.json)
        } else {
            self.text.clone()
        }
    }
}

/// `spawn [--from-maps FILE] [--start-brk ADDR]` (`-` reads stdin). Prints
/// the pid.
pub async fn spawn(
    c: &mut Client,
    from_maps: Option<&Path>,
    start_brk: u64,
) -> Result<Printed, CliError> {
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
    Ok(Printed::new(
        format!("{}\n", r.pid),
        json!({ "pid": r.pid }),
    ))
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
    /// `--flags` as given (see [`mmap_flags`]).
    pub flags: Option<crate::parse::MapFlagsArg>,
    /// File identity (file-backed mapping).
    pub file_id: Option<u64>,
    /// Offset in the file.
    pub offset: u64,
}

/// The `MAP_*` bits `mmap` sends. The defaults are `MAP_PRIVATE`, plus
/// `MAP_ANONYMOUS` without a file; named flags are added to them (so
/// `--flags fixed` is a private anonymous `MAP_FIXED`): the mapping type
/// stays `MAP_PRIVATE` unless `shared` is named, `MAP_ANONYMOUS` is added
/// unless `--file-id` is given. A number is sent exactly as written, for
/// probing the server's own checks.
pub fn mmap_flags(given: Option<crate::parse::MapFlagsArg>, file: bool) -> u32 {
    let (private, shared, anon) = (
        MapFlag::MapPrivate as u32,
        MapFlag::MapShared as u32,
        MapFlag::MapAnonymous as u32,
    );
    let mut f = match given {
        Some(g) if g.exact => return g.bits,
        Some(g) => g.bits,
        None => 0,
    };
    if f & (private | shared) == 0 {
        f |= private;
    }
    if !file {
        f |= anon;
    }
    f
}

/// `mmap`. Prints the mapping's address in hex (only it, for
/// `ADDR=$(vmasim mmap ...)`).
pub async fn mmap(c: &mut Client, a: MmapArgs) -> Result<Printed, CliError> {
    let flags = mmap_flags(a.flags, a.file_id.is_some());
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
    Ok(Printed::new(
        format!("{:#x}\n", r.addr),
        json!({ "addr": r.addr }),
    ))
}

/// `munmap`. Prints the process's VMA count afterwards.
pub async fn munmap(c: &mut Client, pid: u32, addr: u64, length: u64) -> Result<Printed, CliError> {
    let r = c
        .munmap(MunmapRequest { pid, addr, length })
        .await?
        .into_inner();
    Ok(vma_count(r.vma_count))
}

/// `mprotect`. Prints the process's VMA count afterwards.
pub async fn mprotect(
    c: &mut Client,
    pid: u32,
    addr: u64,
    length: u64,
    prot: u32,
) -> Result<Printed, CliError> {
    let r = c
        .mprotect(MprotectRequest {
            pid,
            addr,
            length,
            prot,
        })
        .await?
        .into_inner();
    Ok(vma_count(r.vma_count))
}

/// `brk PID [ADDR]`. Prints the break and the heap start.
pub async fn brk(c: &mut Client, pid: u32, addr: Option<u64>) -> Result<Printed, CliError> {
    let r = c
        .brk(BrkRequest {
            pid,
            brk: addr.unwrap_or(0),
        })
        .await?
        .into_inner();
    Ok(Printed::new(
        format!("brk {:#x} start_brk {:#x}\n", r.brk, r.start_brk),
        json!({ "brk": r.brk, "start_brk": r.start_brk }),
    ))
}

/// `vmas N`: the VMA count munmap, mprotect and madvise reply with.
pub fn vma_count(n: u32) -> Printed {
    Printed::new(format!("vmas {n}\n"), json!({ "vma_count": n }))
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
) -> Result<Printed, CliError> {
    let r = c
        .fault(FaultRequest {
            pid,
            addr,
            access: access as i32,
        })
        .await?
        .into_inner();
    Ok(Printed::new(
        format!(
            "{} via {} (retries {})\n",
            outcome_name(r.outcome),
            path_name(r.path),
            r.retries
        ),
        json!({
            "outcome": outcome_name(r.outcome),
            "path": path_name(r.path),
            "retries": r.retries,
        }),
    ))
}

/// `fork PID`. Prints the child's pid.
pub async fn fork(c: &mut Client, pid: u32) -> Result<Printed, CliError> {
    let r = c.fork(ForkRequest { pid }).await?.into_inner();
    Ok(Printed::new(
        format!("{}\n", r.child_pid),
        json!({ "child_pid": r.child_pid }),
    ))
}

/// `exit PID`. Prints what was torn down.
pub async fn exit(c: &mut Client, pid: u32) -> Result<Printed, CliError> {
    let r = c.exit(ExitRequest { pid }).await?.into_inner();
    Ok(Printed::new(
        format!(
            "vmas_freed {} rss_pages_freed {}\n",
            r.vmas_freed, r.rss_pages_freed
        ),
        json!({ "vmas_freed": r.vmas_freed, "rss_pages_freed": r.rss_pages_freed }),
    ))
}

/// `maps PID`: exactly the server's text.
pub async fn maps(c: &mut Client, pid: u32) -> Result<Printed, CliError> {
    let r = c.maps(MapsRequest { pid }).await?.into_inner();
    let entries: Vec<Value> = r
        .entries
        .iter()
        .map(|e| {
            json!({
                "start": e.start,
                "end": e.end,
                "prot": format_prot(e.prot),
                "shared": e.shared,
                "offset": e.offset,
                "path": e.path,
            })
        })
        .collect();
    let j = json!({
        "text": r.text,
        "entries": entries,
        "start_brk": r.start_brk,
        "brk": r.brk,
        "rss_pages": r.rss_pages,
    });
    Ok(Printed::new(r.text, j))
}

/// `stats [--json]`.
pub async fn stats(c: &mut Client) -> Result<Printed, CliError> {
    let s = stats::fetch(c).await?;
    Ok(Printed::new(stats::table(&s), stats::to_json(&s)))
}

/// `health`: `SERVING` (exit 0) or an error (non-zero).
pub async fn health(target: &Target) -> Result<Printed, CliError> {
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
        Ok(Printed::new(
            "SERVING\n".into(),
            json!({ "status": status.as_str_name() }),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_map_flags_arg;

    #[test]
    fn named_flags_keep_the_defaults() {
        let f = |s: &str, file| mmap_flags(Some(parse_map_flags_arg(s).unwrap()), file);
        let (p, sh, a) = (0x02, 0x01, 0x20);
        // MAP_FIXED = 0x10, MAP_FIXED_NOREPLACE = 0x100000.
        assert_eq!(mmap_flags(None, false), p | a);
        assert_eq!(mmap_flags(None, true), p);
        assert_eq!(f("fixed", false), p | a | 0x10);
        assert_eq!(f("fixed_noreplace", true), p | 0x10_0000);
        assert_eq!(f("shared", false), sh | a);
        assert_eq!(f("shared,fixed", true), sh | 0x10);
        // A number is exact: the server's "exactly one of" check is
        // still reachable.
        assert_eq!(f("0x10", false), 0x10);
    }
}
