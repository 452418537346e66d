//! The `vmasim` binary: parses the command line and runs it (see
//! `vmasim_client::cli`).

use clap::Parser;
use vmasim_client::cli::{Cli, run};

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
