//! `vmasim replay`: an strace log or a `vmasim record` recording against
//! simulated processes (see [`crate::replay`] and [`crate::record::check`]).

use super::Ctx;
use crate::connect::Client;
use crate::error::CliError;
use std::path::PathBuf;

/// `--json` does not apply.
pub const JSON: bool = false;

/// Arguments of `vmasim replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// strace log (`strace -f [-y] -e trace=memory,process -o FILE CMD`) or
    /// a recording (`vmasim record -o FILE -- CMD`).
    pub file: PathBuf,
    /// Recording: rebuild every address space from its exec snapshot (or
    /// its parent, for a fork), apply its calls, and compare its maps with
    /// the recorded ones line by line; exit 10 on any difference.
    #[arg(long)]
    pub check: bool,
    /// Leave the simulated processes alive (their pids are printed) for
    /// inspection with `vmasim maps PID`.
    #[arg(long)]
    pub keep: bool,
    /// Apply the first traced process's calls to this existing process.
    #[arg(long, value_name = "PID")]
    pub into: Option<u32>,
    /// Only replay calls that start on or after this log line (1-based).
    #[arg(long, value_name = "N")]
    pub from_line: Option<usize>,
    /// Only replay calls that start before this log line (1-based).
    #[arg(long, value_name = "N")]
    pub to_line: Option<usize>,
    /// Print every call and what happened to it.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let mut c = ctx.connect().await?;
    print!("{}", replay(&mut c, a).await?);
    Ok(())
}

async fn replay(c: &mut Client, a: &Args) -> Result<String, CliError> {
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| CliError::read(&a.file, e))?;
    if crate::record::format::is_recording(&text) {
        return run_recording(c, a, &text).await;
    }
    if a.check {
        return Err(CliError::Usage(format!(
            "--check needs a recording made by `vmasim record`; {} is not one (an strace log has no maps to compare with)",
            a.file.display()
        )));
    }
    let report = crate::replay::replay_with(c, &text, a.into, a.from_line, a.to_line, a.keep).await?;
    let out = report.text(a.verbose);
    if report.diverged.is_empty() {
        Ok(out)
    } else {
        print!("{out}");
        Err(CliError::Check(format!(
            "replay diverged on {} calls",
            report.diverged.len()
        )))
    }
}

/// `replay` of a recording (see [`crate::record::check`]).
async fn run_recording(c: &mut Client, a: &Args, text: &str) -> Result<String, CliError> {
    if a.into.is_some() || a.from_line.is_some() || a.to_line.is_some() {
        return Err(CliError::Usage(
            "--into, --from-line and --to-line take strace logs; a recording builds its own processes from its snapshots".into(),
        ));
    }
    let o = crate::record::check::CheckOptions { keep: a.keep };
    let r = crate::record::check::check_text(c, text, o).await?;
    let out = r.text(a.verbose);
    if a.check && r.failed() {
        print!("{out}");
        return Err(CliError::Check(
            "the simulated maps differ from the recorded ones (see above)".into(),
        ));
    }
    Ok(out)
}

