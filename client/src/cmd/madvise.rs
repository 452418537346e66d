//! `vmasim madvise`: madvise(2) in a simulated process.

use super::Ctx;
use crate::error::CliError;
use crate::parse::parse_advice;
use vmasim_proto::v1::MadviseRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim madvise`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process, start and length.
    #[command(flatten)]
    pub range: super::Range,
    /// Advice: dontneed, free, dontfork, dofork, wipeonfork, keeponfork.
    #[arg(value_parser = parse_advice)]
    pub advice: u32,
}

/// Runs it; prints the VMA count.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .call(|mut c| async move {
            c.madvise(MadviseRequest {
                pid: a.range.pid,
                addr: a.range.addr,
                length: a.range.length,
                advice: a.advice,
            })
            .await
        })
        .await?;
    ctx.print(&super::vma_count(r.vma_count));
    Ok(())
}
