//! `vmasim record [-o FILE] -- CMD [ARGS...]`: record a program's
//! address-space history (see [`crate::record`]).

use crate::error::CliError;
use crate::record::tracer::{self, RecordOptions};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

/// The default recording file.
pub const DEFAULT_OUTPUT: &str = "vmasim-record.jsonl";

/// `record` arguments.
#[derive(Debug, Clone, Args)]
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
pub struct RecordArgs {
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

/// Runs `vmasim record` (blocking: call it on a thread of its own, see
/// [`tracer`]'s docs).
pub fn run(a: &RecordArgs) -> Result<String, CliError> {
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
    Ok(String::new())
}
