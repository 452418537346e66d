//! `vmasim record [-o FILE] -- CMD [ARGS...]`: record a program's
//! address-space history (see [`crate::record`]).

use crate::error::CliError;
use crate::record::tracer::{self, RecordOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

/// The default recording file.
pub const DEFAULT_OUTPUT: &str = "vmasim-record.jsonl";

/// Arguments of `vmasim record`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Runs CMD under ptrace (following every thread and child process) and writes, \
per address space: its /proc/PID/maps (with smaps VmFlags) right after execve, \
every mmap/munmap/mprotect/mremap/madvise/brk/mlock/clone/execve/exit with \
arguments and result, and its maps when its last task exits. A command that \
fails or is killed still leaves a complete recording; the recorder's exit \
status is 0 once the recording is written (the command's status is printed \
and kept in the file's last line).

Check it:   vmasim replay FILE --check
Replay it:  vmasim load --trace FILE")]
pub struct Args {
    /// Recording file to write (JSON lines; see `vmasim replay --help`).
    #[arg(short = 'o', long, value_name = "FILE", default_value = DEFAULT_OUTPUT)]
    pub output: PathBuf,
    /// No progress spinner on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// The command to record, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--json` does not apply.
pub const JSON: bool = false;

/// Runs it: ptrace requests must all come from one thread (the tracer),
/// so the recording runs on a blocking thread of its own.
pub async fn run(a: &Args, _ctx: &super::Ctx) -> Result<(), CliError> {
    let a = a.clone();
    tokio::task::spawn_blocking(move || record(&a))
        .await
        .map_err(|e| CliError::Other(format!("record: {e}")))?
}

/// The recording itself (blocking, see [`tracer`]'s docs).
fn record(a: &Args) -> Result<(), CliError> {
    let file = std::fs::File::create(&a.output)
        .map_err(|e| CliError::Other(format!("cannot write {}: {e}", a.output.display())))?;
    let o = RecordOptions {
        command: a.command.clone(),
        progress: !a.quiet && std::io::stderr().is_terminal(),
    };
    let s = tracer::record(&o, file).map_err(CliError::Other)?;
    let how = match (s.status, s.signal) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended".into(),
    };
    let names: Vec<String> = s.by_name.iter().map(|(k, n)| format!("{k} {n}")).collect();
    eprintln!(
        "vmasim record: {} {how}; {} calls ({}) in {} address spaces, {} tasks; wrote {} lines to {}",
        a.command.join(" "),
        s.calls,
        names.join(", "),
        s.mms,
        s.tasks,
        s.lines,
        a.output.display()
    );
    Ok(())
}
