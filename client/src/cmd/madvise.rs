//! `vmasim madvise`: madvise(2) in a simulated process.

use crate::connect::Client;
use crate::error::CliError;
use crate::parse::{parse_addr, parse_advice, parse_size};
use vmasim_proto::v1::MadviseRequest;

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
pub async fn run(c: &mut Client, a: &Args) -> Result<crate::commands::Printed, CliError> {
    let r = c
        .madvise(MadviseRequest {
            pid: a.pid,
            addr: a.addr,
            length: a.length,
            advice: a.advice,
        })
        .await?
        .into_inner();
    Ok(crate::commands::vma_count(r.vma_count))
}
