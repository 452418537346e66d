//! `vmasim bench`: the README's benchmarks in one run (see
//! [`crate::bench`]). Without `--server` it starts a server in-process,
//! which needs the `embedded` cargo feature.

use super::Ctx;
use crate::error::CliError;
use crate::output::OutputFile;
use crate::parse::parse_duration;
use std::path::PathBuf;
use std::time::Duration;

/// `--json` does not apply (`-o FILE.json` writes JSON).
pub const JSON: bool = false;

/// Arguments of `vmasim bench`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Without --server, starts its own server in-process (needs the \
`embedded` cargo feature, on by default).")]
pub struct Args {
    /// Measured time per phase.
    #[arg(short = 'z', long, value_parser = parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// Unmeasured time before each kind of call is first measured.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub warmup: Duration,
    /// Workers: requests in flight (closed loop), max in flight (open loop).
    #[arg(short = 'c', long, default_value_t = 8)]
    pub concurrency: usize,
    /// Connections (HTTP/2 channels) to spread the workers over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Addresses per FaultBatch (and pages each worker populates).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// VMA cache of the embedded server (ignored with --server).
    #[cfg(feature = "embedded")]
    #[arg(long, value_enum, default_value_t = crate::embedded::CachePolicy::default())]
    pub cache: crate::embedded::CachePolicy,
    /// Also write the figures as JSON.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let o = crate::bench::BenchOptions {
        duration: a.duration,
        warmup: a.warmup,
        concurrency: a.concurrency,
        connections: a.connections,
        batch: a.batch,
        #[cfg(feature = "embedded")]
        cache: a.cache,
        progress: true,
    };
    let out = a
        .output
        .as_deref()
        .map(|p| OutputFile::open(p, "--output"))
        .transpose()?;
    // The three sections are printed as their phases finish; the table
    // repeats the figures in one place for the README.
    let r = crate::bench::run(&o, ctx.server()).await?;
    print!("{}", r.table());
    if let Some(f) = out {
        f.write(r.json().as_bytes())?;
    }
    Ok(())
}
