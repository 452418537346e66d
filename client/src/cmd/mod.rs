//! The subcommands: one module per subcommand, each owning its clap
//! `Args`, a `JSON` flag (whether `--json` applies) and its `run`.
//!
//! The list below is the one place a subcommand is named: it declares the
//! module, the [`Command`] variant (with the doc comment `vmasim --help`
//! shows) and the dispatch. Adding a subcommand is a new `cmd/<name>.rs`
//! plus one line here. The logic that is more than a call or two (load
//! generator, demo, bench, replay, race lab, kernel-diff, record) lives in
//! its own library module; the `cmd` module turns the arguments into its
//! options and prints the result, as tokio-rs/mini-redis's `cmd/` does.

use crate::connect::{Client, Target};
use crate::error::CliError;
use crate::parse::{parse_addr, parse_size};
use serde_json::{Value, json};
use std::future::Future;

/// What every subcommand gets besides its own arguments: the global
/// options.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The server to talk to (`--server`, or the default URL).
    pub target: Target,
    /// Whether `--server` (or `VMASIM_SERVER`) was given: `demo`, `bench`
    /// and `kernel-diff` start their own in-process server without it.
    pub server_given: bool,
    /// `--json`.
    pub json: bool,
}

impl Ctx {
    /// The server given with `--server`, if any.
    pub fn server(&self) -> Option<&Target> {
        self.server_given.then_some(&self.target)
    }

    /// Connects to the target.
    pub async fn connect(&self) -> Result<Client, CliError> {
        self.target.connect().await
    }

    /// One unary call on a fresh connection: `f` gets the client and
    /// makes the call; the reply's message comes back.
    pub async fn call<R, Fut>(&self, f: impl FnOnce(Client) -> Fut) -> Result<R, CliError>
    where
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        Ok(f(self.connect().await?).await?.into_inner())
    }

    /// Prints a one-call command's answer, as text or (`--json`) JSON.
    pub fn print(&self, p: &Printed) {
        print!("{}", p.render(self.json));
    }
}

/// What a one-call command prints: `text`, or with `--json` `json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Printed {
    /// For people and shells (ends with a newline).
    pub text: String,
    /// The same answer as one JSON object.
    pub json: Value,
}

impl Printed {
    /// Both forms.
    pub fn new(text: String, json: Value) -> Self {
        Printed { text, json }
    }

    /// The form to print.
    pub fn render(&self, json: bool) -> String {
        if json {
            format!("{:#}\n", self.json)
        } else {
            self.text.clone()
        }
    }
}

/// The process argument of the commands that take only it (`fork`,
/// `exit`, `maps`).
#[derive(Debug, clap::Args)]
pub struct Pid {
    /// Process.
    pub pid: u32,
}

/// The `PID ADDR LENGTH` a range command (`munmap`, `mprotect`,
/// `madvise`) starts with.
#[derive(Debug, clap::Args)]
pub struct Range {
    /// Process.
    pub pid: u32,
    /// Start address (page aligned).
    #[arg(value_parser = parse_addr)]
    pub addr: u64,
    /// Length (4096, 0x1000, 4K, 2M, 1G).
    #[arg(value_parser = parse_size)]
    pub length: u64,
}

/// `vmas N`: the VMA count munmap, mprotect and madvise reply with.
pub fn vma_count(n: u32) -> Printed {
    Printed::new(format!("vmas {n}\n"), json!({ "vma_count": n }))
}

/// Declares the subcommand modules, [`Command`] and its dispatch from one
/// list of `doc-comment Variant => module`.
macro_rules! subcommands {
    ($( $(#[$attr:meta])* $variant:ident => $module:ident, )*) => {
        $( pub mod $module; )*

        /// Subcommands.
        #[derive(Debug, clap::Subcommand)]
        pub enum Command {
            $( $(#[$attr])* $variant(Box<$module::Args>), )*
        }

        impl Command {
            /// Whether `--json` applies to this subcommand.
            pub fn takes_json(&self) -> bool {
                match self {
                    $( Command::$variant(_) => $module::JSON, )*
                }
            }

            /// Runs the subcommand; its output goes to stdout.
            pub async fn run(&self, ctx: &Ctx) -> Result<(), CliError> {
                match self {
                    $( Command::$variant(a) => $module::run(a, ctx).await, )*
                }
            }
        }
    };
}

subcommands! {
    /// Create a process (empty, or imported from /proc/PID/maps text); prints its pid.
    Spawn => spawn,
    /// mmap(2); prints the address.
    Mmap => mmap,
    /// munmap(2).
    Munmap => munmap,
    /// mprotect(2).
    Mprotect => mprotect,
    /// brk(2): query (no ADDR) or move the program break.
    Brk => brk,
    /// One page fault; prints outcome, locking path and retries.
    Fault => fault,
    /// fork(2); prints the child's pid.
    Fork => fork,
    /// exit(2): tear the process down.
    Exit => exit,
    /// Print /proc/PID/maps (the kernel's format, byte for byte).
    Maps => maps,
    /// Server counters and gauges (`--json`: one flat object).
    Stats => stats,
    /// gRPC health check: exit 0 iff the server is SERVING.
    Health => health,
    /// Race lab: replay a scripted interleaving of a lockless fault
    /// against a VMA slot being freed and reused.
    Race => race,
    /// Same workload on a typesafe and an rcu server, side by side.
    Demo => demo,
    /// Load generator (ghz-like report).
    Load => load,
    /// The README's benchmarks in one run: unary Fault vs a no-op call,
    /// bulk faults/s (FaultBatch, Session stream), latency at half the max rate.
    Bench => bench,
    /// Replay an strace log (-e trace=memory,process) or a `vmasim record`
    /// recording against simulated processes; `--check` compares the maps.
    Replay => replay,
    /// Run a command under ptrace and record its address-space history
    /// (maps at exec and exit, every memory syscall) for `replay --check`
    /// and `load --trace`.
    Record => record,
    /// mremap(2): shrink, grow in place or move a mapping; prints the new
    /// address.
    Mremap => mremap,
    /// madvise(2): dontneed, free, dontfork, dofork, wipeonfork, keeponfork.
    Madvise => madvise,
    /// Run the same operations in a real process and in the simulation and
    /// compare maps, results and RSS after each (Linux x86-64).
    KernelDiff => kernel_diff,
    /// The real-process side of kernel-diff (internal).
    #[command(name = "__kernel-diff-executor", hide = true)]
    KernelDiffExecutor => kernel_diff_executor,
}
