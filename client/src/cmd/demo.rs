//! `vmasim demo`: the same workload on a typesafe and an rcu server, side
//! by side (see [`crate::demo`]). Without `--server` it starts both servers
//! in-process, which needs the `embedded` cargo feature.

use super::Ctx;
use crate::error::CliError;
use crate::parse::parse_duration;
use std::io::IsTerminal;
use std::time::Duration;

/// `--json` does not apply.
pub const JSON: bool = false;

/// Arguments of `vmasim demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Without --server, starts its own typesafe and rcu servers in-process \
(needs the `embedded` cargo feature, on by default).")]
pub struct Args {
    /// Measured time per mode.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Owner workers.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Fault threads per owner worker.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Length of the slow-reader phase per mode (embedded servers only): a
    /// thread holds one RCU read section the whole time, as a big
    /// /proc/PID/maps read would, while VMAs are mapped and unmapped. `rcu`
    /// must park every freed slot and grow new slabs; `typesafe` stays flat.
    /// `0s` skips the phase.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub slow_reader: Duration,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let o = crate::demo::DemoOptions {
        duration: a.duration,
        concurrency: a.concurrency,
        threads: a.threads,
        seed: a.seed,
        progress: std::io::stderr().is_terminal(),
        slow_reader: a.slow_reader,
    };
    print!("{}", crate::demo::run(&o, ctx.server()).await?);
    Ok(())
}
