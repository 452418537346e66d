//! `vmasim fault`: one page fault in a simulated process; prints outcome,
//! locking path and retries.

use super::{Ctx, Printed};
use crate::error::CliError;
use crate::parse::{outcome_name, parse_addr, path_name};
use serde_json::json;
use vmasim_proto::v1::{Access, FaultRequest};

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim fault`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process.
    pub pid: u32,
    /// Faulting address.
    #[arg(value_parser = parse_addr)]
    pub addr: u64,
    /// A store.
    #[arg(long, conflicts_with = "exec")]
    pub write: bool,
    /// An instruction fetch.
    #[arg(long)]
    pub exec: bool,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let access = if a.write {
        Access::Write
    } else if a.exec {
        Access::Exec
    } else {
        Access::Read
    };
    let r = ctx
        .call(|mut c| async move {
            c.fault(FaultRequest {
                pid: a.pid,
                addr: a.addr,
                access: access as i32,
            })
            .await
        })
        .await?;
    ctx.print(&Printed::new(
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
    ));
    Ok(())
}
