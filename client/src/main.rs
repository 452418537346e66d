//! The `vmasim` binary: parses the command line and runs it (see
//! `vmasim_client::cli`).

use clap::Parser;
use vmasim_client::cli::{Cli, Command, run};

fn main() {
    let cli = Cli::parse();
    // kernel-diff's executor must stay single-threaded with an address
    // space nothing else touches: no tokio runtime for it.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if let Command::KernelDiffExecutor(a) = &cli.cmd {
        vmasim_client::kernel_diff::executor::main(&a.fds);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
