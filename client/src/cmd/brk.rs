//! `vmasim brk`: brk(2) in a simulated process; prints the break and the
//! heap start.

use super::{Ctx, Printed};
use crate::error::CliError;
use crate::parse::parse_addr;
use serde_json::json;
use vmasim_proto::v1::BrkRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim brk`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process.
    pub pid: u32,
    /// New break.
    #[arg(value_parser = parse_addr)]
    pub addr: Option<u64>,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .call(|mut c| async move {
            c.brk(BrkRequest {
                pid: a.pid,
                brk: a.addr.unwrap_or(0),
            })
            .await
        })
        .await?;
    ctx.print(&Printed::new(
        format!("brk {:#x} start_brk {:#x}\n", r.brk, r.start_brk),
        json!({ "brk": r.brk, "start_brk": r.start_brk }),
    ));
    Ok(())
}
