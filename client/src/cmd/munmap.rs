//! `vmasim munmap`: munmap(2) in a simulated process; prints the VMA
//! count afterwards.

use super::{Ctx, vma_count};
use crate::error::CliError;
use vmasim_proto::v1::MunmapRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim munmap`.
pub type Args = super::Range;

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .call(|mut c| async move {
            c.munmap(MunmapRequest {
                pid: a.pid,
                addr: a.addr,
                length: a.length,
            })
            .await
        })
        .await?;
    ctx.print(&vma_count(r.vma_count));
    Ok(())
}
