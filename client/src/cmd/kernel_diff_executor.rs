//! `vmasim __kernel-diff-executor` (hidden): the real-process side of
//! kernel-diff. `main.rs` runs it before any tokio runtime exists (its
//! address space must be one nothing else touches); reaching [`run`]
//! means it was called from inside one.

use super::Ctx;
use crate::error::CliError;

/// `--json` does not apply.
pub const JSON: bool = false;

/// Arguments of the executor.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Command and reply pipe fds per process slot.
    #[arg(long)]
    pub fds: String,
}

/// Refuses: the executor must run without a runtime (see `main.rs`).
pub async fn run(_a: &Args, _ctx: &Ctx) -> Result<(), CliError> {
    Err(CliError::Usage(
        "__kernel-diff-executor must run without a runtime (see main.rs)".into(),
    ))
}
