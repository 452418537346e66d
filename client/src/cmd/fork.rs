//! `vmasim fork`: fork(2) of a simulated process; prints only the child's
//! pid.

use super::{Ctx, Printed};
use crate::error::CliError;
use serde_json::json;
use vmasim_proto::v1::ForkRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim fork`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Parent process.
    pub pid: u32,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .connect()
        .await?
        .fork(ForkRequest { pid: a.pid })
        .await?
        .into_inner();
    ctx.print(&Printed::new(
        format!("{}\n", r.child_pid),
        json!({ "child_pid": r.child_pid }),
    ));
    Ok(())
}
