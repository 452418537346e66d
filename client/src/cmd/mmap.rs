//! `vmasim mmap`: mmap(2) in a simulated process; prints only the address
//! in hex (`ADDR=$(vmasim mmap ...)`).

use super::{Ctx, Printed};
use crate::error::CliError;
use crate::parse::{MapFlagsArg, parse_addr, parse_map_flags_arg, parse_prot, parse_size};
use serde_json::json;
use vmasim_proto::linux::map::{MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED};
use vmasim_proto::v1::MmapRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim mmap`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process.
    pub pid: u32,
    /// Length (4096, 0x1000, 4K, 2M, 1G); rounded up to pages.
    #[arg(value_parser = parse_size)]
    pub length: u64,
    /// Address: a hint, or exact with --flags fixed (default 0: server chooses).
    #[arg(long, value_parser = parse_addr, default_value = "0")]
    pub addr: u64,
    /// Protection: rw-, r-x, ---, or r,w,x.
    #[arg(long, value_parser = parse_prot, default_value = "rw-")]
    pub prot: u32,
    /// Flags: private, shared, anonymous, fixed, fixed_noreplace (comma
    /// separated), added to the defaults: private, and anonymous unless
    /// --file-id (`--flags fixed` is a private anonymous MAP_FIXED). A
    /// number (0x22) is sent exactly as written.
    #[arg(long, value_parser = parse_map_flags_arg)]
    pub flags: Option<MapFlagsArg>,
    /// File identity for a file-backed mapping (same id, same file).
    #[arg(long)]
    pub file_id: Option<u64>,
    /// Offset in the file (page aligned).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// The file's size (i_size), with --file-id: once a file has one, a
    /// fault past its end is SIGBUS. 0: not given (the file is unbounded).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub file_size: u64,
}

/// The `MAP_*` bits `mmap` sends. The defaults are `MAP_PRIVATE`, plus
/// `MAP_ANONYMOUS` without a file; named flags are added to them (so
/// `--flags fixed` is a private anonymous `MAP_FIXED`): the mapping type
/// stays `MAP_PRIVATE` unless `shared` is named, `MAP_ANONYMOUS` is added
/// unless `--file-id` is given. A number is sent exactly as written, for
/// probing the server's own checks.
pub fn mmap_flags(given: Option<MapFlagsArg>, file: bool) -> u32 {
    let mut f = match given {
        Some(g) if g.exact => return g.bits,
        Some(g) => g.bits,
        None => 0,
    };
    if f & (MAP_PRIVATE | MAP_SHARED) == 0 {
        f |= MAP_PRIVATE;
    }
    if !file {
        f |= MAP_ANONYMOUS;
    }
    f
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let flags = mmap_flags(a.flags, a.file_id.is_some());
    let r = ctx
        .call(|mut c| async move {
            c.mmap(MmapRequest {
                pid: a.pid,
                addr: a.addr,
                length: a.length,
                prot: a.prot,
                flags,
                file_id: a.file_id.unwrap_or(0),
                offset: a.offset,
                file_size: a.file_size,
            })
            .await
        })
        .await?;
    ctx.print(&Printed::new(
        format!("{:#x}\n", r.addr),
        json!({ "addr": r.addr }),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
