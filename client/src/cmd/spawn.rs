//! `vmasim spawn`: create a simulated process, empty or imported from
//! `/proc/PID/maps` text; prints only the pid (`PID=$(vmasim spawn)`).

use super::{Ctx, Printed};
use crate::error::CliError;
use crate::parse::parse_addr;
use serde_json::json;
use std::path::{Path, PathBuf};
use vmasim_proto::v1::SpawnRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim spawn`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// /proc/PID/maps file to import (`-` for stdin); /proc/PID/smaps
    /// text also gives the flags maps does not show (VmFlags).
    #[arg(long, value_name = "FILE")]
    pub from_maps: Option<PathBuf>,
    /// Heap start (page aligned). Default: the server derives it (the
    /// `[heap]` line, else the end of the program's mappings). Replaying
    /// a trace needs the traced one: the first `brk(NULL)` of the log.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub start_brk: Option<u64>,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let maps_text = match a.from_maps.as_deref() {
        None => String::new(),
        Some(p) if p == Path::new("-") => std::io::read_to_string(std::io::stdin())?,
        Some(p) => std::fs::read_to_string(p).map_err(|e| CliError::read(p, e))?,
    };
    let r = ctx
        .call(|mut c| async move {
            c.spawn(SpawnRequest {
                maps_text,
                start_brk: a.start_brk.unwrap_or(0),
            })
            .await
        })
        .await?;
    ctx.print(&Printed::new(
        format!("{}\n", r.pid),
        json!({ "pid": r.pid }),
    ));
    Ok(())
}
