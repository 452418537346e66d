//! `vmasim exit`: exit(2) of a simulated process; prints what was torn
//! down.

use super::{Ctx, Printed};
use crate::error::CliError;
use serde_json::json;
use vmasim_proto::v1::ExitRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim exit`.
pub type Args = super::Pid;

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .call(|mut c| async move { c.exit(ExitRequest { pid: a.pid }).await })
        .await?;
    ctx.print(&Printed::new(
        format!(
            "vmas_freed {} rss_pages_freed {}\n",
            r.vmas_freed, r.rss_pages_freed
        ),
        json!({ "vmas_freed": r.vmas_freed, "rss_pages_freed": r.rss_pages_freed }),
    ));
    Ok(())
}
