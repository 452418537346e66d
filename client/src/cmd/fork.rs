//! `vmasim fork`: fork(2) of a simulated process; prints only the child's
//! pid.

use super::{Ctx, Printed};
use crate::error::CliError;
use serde_json::json;
use vmasim_proto::v1::ForkRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim fork`.
pub type Args = super::Pid;

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .call(|mut c| async move { c.fork(ForkRequest { pid: a.pid }).await })
        .await?;
    ctx.print(&Printed::new(
        format!("{}\n", r.child_pid),
        json!({ "child_pid": r.child_pid }),
    ));
    Ok(())
}
