//! `vmasim race`: the race lab's scripted interleavings (see
//! [`crate::race`] for the timeline it prints).

use super::Ctx;
use crate::error::CliError;
use clap::ValueEnum;

/// `--json` does not apply (the timeline is a table).
pub const JSON: bool = false;

/// Race lab variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    /// The protocol as upstream implements it.
    Fixed,
    /// The scenario's check left out.
    Buggy,
}

/// Arguments of `vmasim race`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario name (see --list).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the scenarios.
    #[arg(long)]
    pub list: bool,
    /// Protocol variant.
    #[arg(long, value_enum, default_value = "fixed")]
    pub variant: Variant,
}

/// Runs it.
pub async fn run(a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let mut c = ctx.connect().await?;
    let out = if a.list {
        crate::race::list(&mut c).await?
    } else {
        let name = a.name.as_deref().unwrap_or_default();
        crate::race::run(&mut c, name, a.variant == Variant::Buggy).await?
    };
    print!("{out}");
    Ok(())
}
