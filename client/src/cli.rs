//! Command-line definition (clap derive) and dispatch.
//!
//! `main.rs` only parses [`Cli`] and calls [`run`]; every subcommand's
//! logic lives in its own module ([`crate::commands`], [`crate::race`],
//! [`crate::load`], [`crate::demo`], [`crate::bench`], [`crate::replay`]).

use crate::commands::{self, MmapArgs};
use crate::connect::{DEFAULT_SERVER, Target};
use crate::error::CliError;
use crate::load::mix::{DEFAULT_MIX, Mix, Profile};
use crate::load::report::{Format, Summary};
use crate::load::{self, LoadConfig};
use crate::output::OutputFile;
use crate::parse::{parse_addr, parse_duration, parse_map_flags_arg, parse_prot, parse_size};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use vmasim_proto::v1::Access;

/// vmasim: simulated Linux address spaces (mm_struct + VMAs) with per-VMA
/// locks and a SLAB_TYPESAFE_BY_RCU VMA cache, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "vmasim", version, about, long_about = None, after_help = crate::error::EXIT_CODES)]
pub struct Cli {
    /// Server URL (http://HOST:PORT, or https:// with --tls-ca).
    /// `demo` and `bench` without it start their own servers in-process.
    #[arg(long, global = true, env = "VMASIM_SERVER")]
    pub server: Option<String>,
    /// Bearer token, sent as `authorization: Bearer TOKEN`.
    #[arg(long, global = true, env = "VMASIM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (enables TLS).
    #[arg(long, global = true, env = "VMASIM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Limit on connecting (TCP, TLS and the HTTP/2 handshake), e.g. 5s, 500ms.
    #[arg(long, global = true, env = "VMASIM_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// Limit on each call until its answer starts, e.g. 30s; 0 for none. `health` uses at most 5s.
    #[arg(long, global = true, env = "VMASIM_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Print the answer as one JSON object (keys: the reply's proto field
    /// names). For the one-call commands (spawn, mmap, munmap, mprotect,
    /// brk, fault, fork, exit, maps, mremap, madvise, stats, health);
    /// `load` and `bench` write JSON with `-o FILE.json`.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub cmd: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a process (empty, or imported from /proc/PID/maps text); prints its pid.
    Spawn {
        /// /proc/PID/maps file to import (`-` for stdin); /proc/PID/smaps
        /// text also gives the flags maps does not show (VmFlags).
        #[arg(long, value_name = "FILE")]
        from_maps: Option<PathBuf>,
        /// Heap start (page aligned). Default: the server derives it (the
        /// `[heap]` line, else the end of the program's mappings). Replaying
        /// a trace needs the traced one: the first `brk(NULL)` of the log.
        #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
        start_brk: Option<u64>,
    },
    /// mmap(2); prints the address.
    Mmap {
        /// Process.
        pid: u32,
        /// Length (4096, 0x1000, 4K, 2M, 1G); rounded up to pages.
        #[arg(value_parser = parse_size)]
        length: u64,
        /// Address: a hint, or exact with --flags fixed (default 0: server chooses).
        #[arg(long, value_parser = parse_addr, default_value = "0")]
        addr: u64,
        /// Protection: rw-, r-x, ---, or r,w,x.
        #[arg(long, value_parser = parse_prot, default_value = "rw-")]
        prot: u32,
        /// Flags: private, shared, anonymous, fixed, fixed_noreplace (comma
        /// separated), added to the defaults: private, and anonymous unless
        /// --file-id (`--flags fixed` is a private anonymous MAP_FIXED). A
        /// number (0x22) is sent exactly as written.
        #[arg(long, value_parser = parse_map_flags_arg)]
        flags: Option<crate::parse::MapFlagsArg>,
        /// File identity for a file-backed mapping (same id, same file).
        #[arg(long)]
        file_id: Option<u64>,
        /// Offset in the file (page aligned).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
    },
    /// munmap(2).
    Munmap {
        /// Process.
        pid: u32,
        /// Start address (page aligned).
        #[arg(value_parser = parse_addr)]
        addr: u64,
        /// Length.
        #[arg(value_parser = parse_size)]
        length: u64,
    },
    /// mprotect(2).
    Mprotect {
        /// Process.
        pid: u32,
        /// Start address (page aligned).
        #[arg(value_parser = parse_addr)]
        addr: u64,
        /// Length.
        #[arg(value_parser = parse_size)]
        length: u64,
        /// New protection: rw-, r-x, ---, or r,w,x.
        #[arg(value_parser = parse_prot)]
        prot: u32,
    },
    /// brk(2): query (no ADDR) or move the program break.
    Brk {
        /// Process.
        pid: u32,
        /// New break.
        #[arg(value_parser = parse_addr)]
        addr: Option<u64>,
    },
    /// One page fault; prints outcome, locking path and retries.
    Fault {
        /// Process.
        pid: u32,
        /// Faulting address.
        #[arg(value_parser = parse_addr)]
        addr: u64,
        /// A store.
        #[arg(long, conflicts_with = "exec")]
        write: bool,
        /// An instruction fetch.
        #[arg(long)]
        exec: bool,
    },
    /// fork(2); prints the child's pid.
    Fork {
        /// Parent process.
        pid: u32,
    },
    /// exit(2): tear the process down.
    Exit {
        /// Process.
        pid: u32,
    },
    /// Print /proc/PID/maps (the kernel's format, byte for byte).
    Maps {
        /// Process.
        pid: u32,
    },
    /// Server counters and gauges (`--json`: one flat object).
    Stats,
    /// gRPC health check: exit 0 iff the server is SERVING.
    Health,
    /// Race lab: replay a scripted interleaving of a lockless fault
    /// against a VMA slot being freed and reused.
    Race {
        /// Scenario name (see --list).
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// List the scenarios.
        #[arg(long)]
        list: bool,
        /// Protocol variant.
        #[arg(long, value_enum, default_value = "fixed")]
        variant: Variant,
    },
    /// Same workload on a typesafe and an rcu server, side by side.
    Demo(DemoArgs),
    /// Load generator (ghz-like report).
    Load(Box<LoadArgs>),
    /// The README's benchmarks in one run: unary Fault vs a no-op call,
    /// bulk faults/s (FaultBatch, Session stream), latency at half the max rate.
    Bench(BenchArgs),
    /// Replay an strace log (-e trace=memory,process) or a `vmasim record`
    /// recording against simulated processes; `--check` compares the maps.
    Replay(ReplayArgs),
    /// Run a command under ptrace and record its address-space history
    /// (maps at exec and exit, every memory syscall) for `replay --check`
    /// and `load --trace`.
    Record(crate::cmd::record::RecordArgs),
    /// mremap(2): shrink, grow in place or move a mapping; prints the new
    /// address.
    Mremap(crate::cmd::mremap::Args),
    /// madvise(2): dontneed, free, dontfork, dofork, wipeonfork, keeponfork.
    Madvise(crate::cmd::madvise::Args),
    /// Run the same operations in a real process and in the simulation and
    /// compare maps, results and RSS after each (Linux x86-64).
    KernelDiff(Box<crate::cmd::kernel_diff::KernelDiffArgs>),
    /// The real-process side of kernel-diff (internal).
    #[command(name = "__kernel-diff-executor", hide = true)]
    KernelDiffExecutor {
        /// Command and reply pipe fds per process slot.
        #[arg(long)]
        fds: String,
    },
}

/// Race lab variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    /// The protocol as upstream implements it.
    Fixed,
    /// The scenario's check left out.
    Buggy,
}

/// `demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
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

/// `bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
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
    #[arg(long, value_enum, default_value = "typesafe")]
    pub cache: crate::embedded::Cache,
    /// Also write the figures as JSON.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `load` arguments.
#[derive(Debug, Args)]
pub struct LoadArgs {
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

/// `replay` arguments.
#[derive(Debug, Args)]
pub struct ReplayArgs {
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

impl LoadArgs {
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

impl Cli {
    fn target(&self) -> Target {
        Target {
            url: self
                .server
                .clone()
                .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
            connect_timeout: self.connect_timeout,
            timeout: (!self.timeout.is_zero()).then_some(self.timeout),
        }
    }
}

/// Runs the parsed command; output goes to stdout, the error (if any) is
/// returned for `main` to print.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let target = cli.target();
    let one_call = !matches!(
        cli.cmd,
        Command::Race { .. }
            | Command::Demo(_)
            | Command::Load(_)
            | Command::Bench(_)
            | Command::Replay(_)
            | Command::Record(_)
            | Command::KernelDiff(_)
            | Command::KernelDiffExecutor { .. }
    );
    if cli.json && !one_call {
        return Err(CliError::Usage(
            "--json is for the one-call commands; `load` and `bench` write JSON with -o FILE.json"
                .into(),
        ));
    }
    let out = match &cli.cmd {
        Command::Health => commands::health(&target).await?.render(cli.json),
        Command::Demo(a) => {
            let o = crate::demo::DemoOptions {
                duration: a.duration,
                concurrency: a.concurrency,
                threads: a.threads,
                seed: a.seed,
                progress: std::io::stderr().is_terminal(),
                slow_reader: a.slow_reader,
            };
            let server = cli.server.as_ref().map(|_| &target);
            crate::demo::run(&o, server).await?
        }
        Command::Load(a) => return run_load(a, &target).await,
        Command::Bench(a) => return run_bench(a, cli.server.as_ref().map(|_| &target)).await,
        Command::Replay(a) => {
            let mut c = target.connect().await?;
            crate::replay::run(&mut c, a).await?
        }
        Command::Record(a) => {
            // ptrace requests must all come from one thread (the tracer).
            let a = a.clone();
            tokio::task::spawn_blocking(move || crate::cmd::record::run(&a))
                .await
                .map_err(|e| CliError::Other(format!("record: {e}")))??
        }
        Command::KernelDiff(a) => {
            return crate::cmd::kernel_diff::run(a, cli.server.as_ref().map(|_| &target)).await;
        }
        Command::KernelDiffExecutor { .. } => {
            return Err(CliError::Usage(
                "__kernel-diff-executor must run without a runtime (see main.rs)".into(),
            ));
        }
        cmd => {
            let mut c = target.connect().await?;
            match cmd {
                Command::Spawn {
                    from_maps,
                    start_brk,
                } => commands::spawn(&mut c, from_maps.as_deref(), start_brk.unwrap_or(0))
                    .await?
                    .render(cli.json),
                Command::Mmap {
                    pid,
                    length,
                    addr,
                    prot,
                    flags,
                    file_id,
                    offset,
                } => {
                    let a = MmapArgs {
                        pid: *pid,
                        addr: *addr,
                        length: *length,
                        prot: *prot,
                        flags: *flags,
                        file_id: *file_id,
                        offset: *offset,
                    };
                    commands::mmap(&mut c, a).await?.render(cli.json)
                }
                Command::Munmap { pid, addr, length } => {
                    commands::munmap(&mut c, *pid, *addr, *length)
                        .await?
                        .render(cli.json)
                }
                Command::Mprotect {
                    pid,
                    addr,
                    length,
                    prot,
                } => commands::mprotect(&mut c, *pid, *addr, *length, *prot)
                    .await?
                    .render(cli.json),
                Command::Brk { pid, addr } => {
                    commands::brk(&mut c, *pid, *addr).await?.render(cli.json)
                }
                Command::Mremap(a) => crate::cmd::mremap::run(&mut c, a).await?.render(cli.json),
                Command::Madvise(a) => crate::cmd::madvise::run(&mut c, a).await?.render(cli.json),
                Command::Fault {
                    pid,
                    addr,
                    write,
                    exec,
                } => {
                    let access = if *write {
                        Access::Write
                    } else if *exec {
                        Access::Exec
                    } else {
                        Access::Read
                    };
                    commands::fault(&mut c, *pid, *addr, access)
                        .await?
                        .render(cli.json)
                }
                Command::Fork { pid } => commands::fork(&mut c, *pid).await?.render(cli.json),
                Command::Exit { pid } => commands::exit(&mut c, *pid).await?.render(cli.json),
                Command::Maps { pid } => commands::maps(&mut c, *pid).await?.render(cli.json),
                Command::Stats => commands::stats(&mut c).await?.render(cli.json),
                Command::Race {
                    name,
                    list,
                    variant,
                } => {
                    if *list {
                        crate::race::list(&mut c).await?
                    } else {
                        let name = name.as_deref().unwrap_or_default();
                        crate::race::run(&mut c, name, *variant == Variant::Buggy).await?
                    }
                }
                Command::Health
                | Command::Demo(_)
                | Command::Load(_)
                | Command::Bench(_)
                | Command::Replay(_)
                | Command::Record(_)
                | Command::KernelDiff(_)
                | Command::KernelDiffExecutor { .. } => {
                    unreachable!("handled above")
                }
            }
        }
    };
    print!("{out}");
    Ok(())
}

async fn run_bench(a: &BenchArgs, server: Option<&Target>) -> Result<(), CliError> {
    let o = crate::bench::BenchOptions {
        duration: a.duration,
        warmup: a.warmup,
        concurrency: a.concurrency,
        connections: a.connections,
        batch: a.batch,
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
    let r = crate::bench::run(&o, server).await?;
    print!("{}", r.table());
    if let Some(f) = out {
        f.write(r.json().as_bytes())?;
    }
    Ok(())
}

async fn run_load(a: &LoadArgs, target: &Target) -> Result<(), CliError> {
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
