//! `vmasim mprotect`: mprotect(2) in a simulated process; prints the VMA
//! count afterwards.

use super::{Ctx, vma_count};
use crate::error::CliError;
use crate::parse::parse_prot;
use vmasim_proto::v1::MprotectRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim mprotect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process, start and length.
    #[command(flatten)]
    pub range: super::Range,
    /// New protection: rw-, r-x, ---, or r,w,x.
    #[arg(value_parser = parse_prot)]
    pub prot: u32,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .call(|mut c| async move {
            c.mprotect(MprotectRequest {
                pid: a.range.pid,
                addr: a.range.addr,
                length: a.range.length,
                prot: a.prot,
            })
            .await
        })
        .await?;
    ctx.print(&vma_count(r.vma_count));
    Ok(())
}
