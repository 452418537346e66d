//! The top-level command line: the global options ([`Cli`]) and the
//! dispatch to a subcommand.
//!
//! `main.rs` only parses [`Cli`] and calls [`run`]; every subcommand, its
//! arguments and its run live in [`crate::cmd`] (one file each).

pub use crate::cmd::Command;
use crate::cmd::Ctx;
use crate::connect::{DEFAULT_SERVER, Target};
use crate::error::CliError;
use crate::parse::parse_duration;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// vmasim: simulated Linux address spaces (mm_struct + VMAs) with per-VMA
/// locks and a SLAB_TYPESAFE_BY_RCU VMA cache, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "vmasim", version, about, long_about = None, after_help = crate::error::EXIT_CODES)]
pub struct Cli {
    /// Server URL (http://HOST:PORT, or https:// with --tls-ca).
    /// `demo`, `bench` and `kernel-diff` without it start their own servers
    /// in-process (the `embedded` cargo feature, on by default).
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
    if cli.json && !cli.cmd.takes_json() {
        return Err(CliError::Usage(
            "--json is for the one-call commands; `load` and `bench` write JSON with -o FILE.json"
                .into(),
        ));
    }
    let ctx = Ctx {
        target: cli.target(),
        server_given: cli.server.is_some(),
        json: cli.json,
    };
    cli.cmd.run(&ctx).await
}
