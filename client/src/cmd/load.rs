//! `vmasim load`: the load generator (see [`crate::load`]): its
//! arguments, the run configuration they make, and the report files,
//! opened before the run so a bad path fails at once.

use super::Ctx;
use crate::error::CliError;
use crate::load::mix::{DEFAULT_MIX, Mix, Profile};
use crate::load::report::{Format, Summary};
use crate::load::{self, LoadConfig};
use crate::output::OutputFile;
use crate::parse::parse_duration;
use std::path::PathBuf;
use std::time::Duration;

/// `--json` does not apply (`-o FILE.json` writes JSON).
pub const JSON: bool = false;

/// Arguments of `vmasim load`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Workers (closed loop: requests in flight; open loop: max in flight).
    #[arg(short = 'c', long, default_value_t = 8)]
    pub concurrency: usize,
    /// Open loop: requests per second (latency from the intended send time).
    #[arg(long)]
    pub rps: Option<f64>,
    /// Measured time (e.g. 30s; 0 = until Ctrl-C). Default 10s unless --requests.
    #[arg(short = 'z', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Connections (HTTP/2 channels) to spread the workers over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Processes each worker owns.
    #[arg(long, default_value_t = 2)]
    pub processes: usize,
    /// Fault-only workers per worker, faulting in its processes concurrently.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Operation mix, e.g. fault=90,mmap=4,munmap=4,fork=1,exit=1 (also mprotect, brk).
    #[arg(long)]
    pub mix: Option<Mix>,
    /// Faults per call (1 = unary Fault, more = FaultBatch).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Preset of mix and batch.
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Use the bidirectional Session stream (one per worker).
    #[arg(long)]
    pub stream: bool,
    /// Unmeasured warm-up time.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    pub warmup: Duration,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Check every reply against a shadow model of each process; exit 10 on a divergence.
    #[arg(long)]
    pub verify: bool,
    /// With --verify: compare Maps with the model every N operations per worker.
    #[arg(long, default_value_t = 25)]
    pub verify_every: u32,
    /// Write the report as JSON (`.json`: the summary, one object) or CSV
    /// (`.csv`: one row per request); checked before the run starts.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Stop the run once more than N calls failed unexpectedly (errors the
    /// workload provokes on purpose, labelled "expected" in the report, do
    /// not count); exit 12. The run always stops, exit 3, when the server
    /// goes away.
    #[arg(long, value_name = "N")]
    pub max_errors: Option<u64>,
    /// Write a self-contained HTML report (checked before the run starts).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Replay recorded programs (`vmasim record`) as the workload instead
    /// of --mix: each worker plays --processes instances at once, each
    /// starting over when its program ends (comma separated files).
    #[arg(long, value_name = "FILE[,FILE...]", value_delimiter = ',', conflicts_with_all = ["mix", "profile", "threads"])]
    pub trace: Vec<PathBuf>,
    /// With --trace: replay this many times faster than recorded (0: as
    /// fast as the server answers).
    #[arg(long, default_value_t = 0.0, requires = "trace")]
    pub speed: f64,
    /// With --trace: faults after each replayed call, on average, on pages
    /// drawn over what the process maps at that moment.
    #[arg(long, default_value_t = 1.0, requires = "trace")]
    pub fault_rate: f64,
}

impl Args {
    /// The run's configuration.
    pub fn config(&self) -> LoadConfig {
        let mix = self
            .mix
            .clone()
            .or_else(|| self.profile.map(Profile::mix))
            .unwrap_or_else(|| DEFAULT_MIX.parse().expect("default mix parses"));
        let batch = self
            .batch
            .or_else(|| self.profile.map(Profile::batch))
            .unwrap_or(1);
        let duration = match (self.duration, self.requests) {
            (Some(d), _) if d.is_zero() => None,
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        };
        LoadConfig {
            concurrency: self.concurrency,
            threads: self.threads,
            rps: self.rps,
            duration,
            requests: self.requests,
            connections: self.connections,
            processes: self.processes,
            mix,
            batch,
            stream: self.stream,
            warmup: self.warmup,
            seed: self.seed,
            verify: self.verify,
            verify_every: self.verify_every.max(1),
            progress: !self.quiet,
            traces: self.trace.clone(),
            speed: self.speed,
            fault_rate: self.fault_rate,
            max_errors: self.max_errors,
            keep_rows: self
                .output
                .as_deref()
                .is_some_and(|p| matches!(Format::of(p), Ok(Format::Csv))),
        }
    }
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let target = &ctx.target;
    // Output paths are checked before the run, not after it.
    let output = a
        .output
        .as_deref()
        .map(|p| Ok::<_, CliError>((Format::of(p)?, OutputFile::open(p, "--output")?)))
        .transpose()?;
    let html = a
        .html
        .as_deref()
        .map(|p| OutputFile::open(p, "--html"))
        .transpose()?;
    let cfg = a.config();
    if cfg.duration.is_none() && cfg.requests.is_none() {
        eprintln!("running until Ctrl-C ...");
    }
    let r = load::run(cfg, target).await?;
    let s = Summary::new(&r);
    print!("{}", s.text());
    if let Some(w) = &s.rate_warning {
        eprintln!("warning: {w}");
    }
    if let Some((format, f)) = output {
        match format {
            Format::Json => f.write(s.json().as_bytes())?,
            Format::Csv => f.write(crate::load::report::csv_rows(&r.rec).as_bytes())?,
        }
    }
    if let Some(f) = html {
        f.write(crate::load::html::render(&s).as_bytes())?;
    }
    match &r.stopped {
        load::StopReason::ServerGone(why) => {
            return Err(CliError::Connect(format!(
                "the server went away {:.1} s into the measurement ({why}); the report covers the {} requests answered before",
                r.elapsed.as_secs_f64(),
                s.count
            )));
        }
        load::StopReason::MaxErrors(n) => {
            return Err(CliError::TooManyErrors(format!(
                "stopped after more than --max-errors {n} unexpected errors (see the error distribution)"
            )));
        }
        _ => {}
    }
    if !s.divergences.is_empty() {
        return Err(CliError::Check(format!(
            "--verify: {} divergence(s) from the shadow model (see above)",
            s.divergences.len()
        )));
    }
    Ok(())
}
