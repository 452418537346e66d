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
pub type Args = super::Pid;

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let r = ctx
        .call(|mut c| async move { c.maps(MapsRequest { pid: a.pid }).await })
        .await?;
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
