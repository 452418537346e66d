//! `vmasim maps`: a simulated process's `/proc/PID/maps`, exactly the
//! server's text (the kernel's format, byte for byte).

use super::{Ctx, Printed};
use crate::error::CliError;
use crate::parse::format_prot;
use serde_json::{Value, json};
use vmasim_proto::v1::MapsRequest;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim maps`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process.
    pub pid: u32,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .connect()
        .await?
        .maps(MapsRequest { pid: a.pid })
        .await?
        .into_inner();
    let entries: Vec<Value> = r
        .entries
        .iter()
        .map(|e| {
            json!({
                "start": e.start,
                "end": e.end,
                "prot": format_prot(e.prot),
                "shared": e.shared,
                "offset": e.offset,
                "path": e.path,
            })
        })
        .collect();
    let j = json!({
        "text": r.text,
        "entries": entries,
        "start_brk": r.start_brk,
        "brk": r.brk,
        "rss_pages": r.rss_pages,
    });
    ctx.print(&Printed::new(r.text, j));
    Ok(())
}
