//! `vmasim mprotect`: mprotect(2) in a simulated process; prints the VMA
//! count afterwards.

use super::{Ctx, vma_count};
use crate::error::CliError;
use crate::parse::{parse_addr, parse_prot, parse_size};
use vmasim_proto::v1::MprotectRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim mprotect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process.
    pub pid: u32,
    /// Start address (page aligned).
    #[arg(value_parser = parse_addr)]
    pub addr: u64,
    /// Length.
    #[arg(value_parser = parse_size)]
    pub length: u64,
    /// New protection: rw-, r-x, ---, or r,w,x.
    #[arg(value_parser = parse_prot)]
    pub prot: u32,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .connect()
        .await?
        .mprotect(MprotectRequest {
            pid: a.pid,
            addr: a.addr,
            length: a.length,
            prot: a.prot,
        })
        .await?
        .into_inner();
    ctx.print(&vma_count(r.vma_count));
    Ok(())
}
