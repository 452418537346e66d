//! `vmasim madvise`: madvise(2) in a simulated process.

use super::Ctx;
use crate::error::CliError;
use crate::parse::{parse_addr, parse_advice, parse_size};
use vmasim_proto::v1::MadviseRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim madvise`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process.
    pub pid: u32,
    /// Start of the range (page aligned).
    #[arg(value_parser = parse_addr)]
    pub addr: u64,
    /// Length (4096, 4K, 2M...).
    #[arg(value_parser = parse_size)]
    pub length: u64,
    /// Advice: dontneed, free, dontfork, dofork, wipeonfork, keeponfork.
    #[arg(value_parser = parse_advice)]
    pub advice: u32,
}

/// Runs it; prints the VMA count.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .connect()
        .await?
        .madvise(MadviseRequest {
            pid: a.pid,
            addr: a.addr,
            length: a.length,
            advice: a.advice,
        })
        .await?
        .into_inner();
    ctx.print(&super::vma_count(r.vma_count));
    Ok(())
}
