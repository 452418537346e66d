//! `cargo xtask`: the CI checks that run the release binaries from the
//! outside (`.ci/run` calls them after `cargo build --release`).
//!
//! * `cargo xtask deploy-check`: everything under `deploy/` against a
//!   live server and a real Prometheus ([`deploy_check`]).
//! * `cargo xtask soak [SECONDS]`: a release server under
//!   `vmasim load --verify`, then no leaked slot and a clean exit
//!   ([`soak`]).
//!
//! Why a crate and not shell: these checks start and stop several
//! processes, parse JSON and the Prometheus text format, and must clean up
//! whatever happens; in bash that took a 310-line Python heredoc besides.
//! Here one language does it, with the child processes owned by guards
//! that stop them on every exit path ([`proc::Child`]). The metric names
//! come from the server binary itself (`--print-metrics`, the telemetry
//! table), never from a copy.

/// Fail with a formatted message.
macro_rules! fail {
    ($($t:tt)*) => {
        return Err($crate::Fail(format!($($t)*)))
    };
}

mod deploy_check;
mod http;
mod proc;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

/// A failed check: what failed, printed as `<check>: FAIL: <message>`.
#[derive(Debug)]
pub struct Fail(pub String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

/// The result of a check.
pub type Result<T = ()> = std::result::Result<T, Fail>;

/// The workspace root (this crate's parent), where `deploy/` and
/// `target/` are.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is inside the workspace")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR/release/NAME` (default `target/`).
pub fn release_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let target = if target.is_relative() {
        root().join(target)
    } else {
        target
    };
    target.join("release").join(name)
}

/// A scratch directory removed on drop (kept, and named, with `keep`).
pub struct Scratch {
    pub path: PathBuf,
    pub keep: bool,
}

impl Scratch {
    pub fn new(what: &str) -> Result<Self> {
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!("vmasim-{what}.{}.{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Scratch { path, keep: false })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: cargo xtask deploy-check | cargo xtask soak [SECONDS >= 2]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, r) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["deploy-check"] => ("deploy-check", deploy_check::run()),
        ["soak"] => ("soak", soak::run(60)),
        ["soak", secs] => match secs.parse::<u64>() {
            Ok(s) if s >= 2 => ("soak", soak::run(s)),
            _ => return usage(),
        },
        _ => return usage(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("{name}: FAIL: {msg}");
            ExitCode::FAILURE
        }
    }
}
