//! `vmasim stats`: the server's counters and gauges as a table, or with
//! `--json` one flat object (see [`crate::stats`]).

use super::{Ctx, Printed};
use crate::error::CliError;
use crate::stats;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim stats` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs it.
pub async fn run(_a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let s = stats::fetch(&mut ctx.connect().await?).await?;
    ctx.print(&Printed::new(stats::table(&s), stats::to_json(&s)));
    Ok(())
}
