//! `vmasim mremap`: mremap(2) in a simulated process.

use super::{Ctx, Printed};
use crate::error::CliError;
use crate::parse::{parse_addr, parse_mremap_flags, parse_size};
use vmasim_proto::v1::MremapRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim mremap`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process.
    pub pid: u32,
    /// Start of the mapping (page aligned; the old range must be one VMA).
    #[arg(value_parser = parse_addr)]
    pub addr: u64,
    /// Current length (4096, 4K, 2M...).
    #[arg(value_parser = parse_size)]
    pub old_length: u64,
    /// New length: smaller unmaps the tail, larger grows in place or moves.
    #[arg(value_parser = parse_size)]
    pub new_length: u64,
    /// Flags: maymove, fixed, dontunmap (comma separated) or a number.
    #[arg(long, value_parser = parse_mremap_flags, default_value = "0")]
    pub flags: u32,
    /// Destination with --flags maymove,fixed.
    #[arg(long, value_parser = parse_addr, default_value = "0")]
    pub new_addr: u64,
}

/// Runs it; prints the new address and the VMA count.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .call(|mut c| async move {
            c.mremap(MremapRequest {
                pid: a.pid,
                addr: a.addr,
                old_length: a.old_length,
                new_length: a.new_length,
                flags: a.flags,
                new_addr: a.new_addr,
            })
            .await
        })
        .await?;
    ctx.print(&Printed::new(
        format!("{:#x}\nvmas {}\n", r.addr, r.vma_count),
        serde_json::json!({ "addr": r.addr, "vma_count": r.vma_count }),
    ));
    Ok(())
}
