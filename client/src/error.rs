//! The CLI's error type (thiserror) and its exit codes.
//!
//! Every command returns `Result<(), CliError>`; `main` prints the error as
//! `error: ...` on stderr and exits with [`CliError::exit_code`]. Exit codes
//! are distinct per class so scripts (and the Dockerfile `HEALTHCHECK`) can
//! tell a refused request from a server that is down. The table is
//! [`EXIT_CODES`], printed at the end of `vmasim --help`.

use std::path::{Path, PathBuf};
use tonic::{Code, Status};

/// The exit codes, as `vmasim --help` prints them (one place: the
/// README's table is a copy of this one).
pub const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   any other failure: a file that cannot be read or written, bad input file
  2   usage error: a bad flag or value (also what the parser uses)
  3   no server: cannot connect, UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED;
      `load` when the server went away during the run
  4   INVALID_ARGUMENT, OUT_OF_RANGE
  5   NOT_FOUND
  6   ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED
  7   RESOURCE_EXHAUSTED
  8   UNAUTHENTICATED, PERMISSION_DENIED
  9   any other gRPC status (INTERNAL, UNIMPLEMENTED, UNKNOWN, DATA_LOSS)
  10  `load --verify` found a divergence; `replay` did not apply or --check differed
  11  `health`: the server answered but is not SERVING
  12  `load` stopped early: more unexpected errors than --max-errors";

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server answered with an error status.
    #[error("{}", rpc_message(.0))]
    Rpc(#[from] Status),
    /// No connection could be made to the server.
    #[error("{0}")]
    Connect(String),
    /// Bad command-line input that clap could not catch.
    #[error("{0}")]
    Usage(String),
    /// The command needs a server URL in a build without the server
    /// library (`--no-default-features`).
    #[error(
        "`{0}` without --server starts an in-process server, which this build of vmasim \
         leaves out (built without the `embedded` cargo feature); give --server URL \
         (or VMASIM_SERVER), or rebuild with the default features"
    )]
    NeedsEmbedded(&'static str),
    /// A check failed (`load --verify`, `replay`).
    #[error("{0}")]
    Check(String),
    /// `health` got an answer other than `SERVING`.
    #[error("{0}")]
    NotServing(String),
    /// `load` stopped early: `--max-errors` was exceeded.
    #[error("{0}")]
    TooManyErrors(String),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Any other I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit code for this error (see the module docs).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Other(_) | CliError::Read { .. } | CliError::Io(_) => 1,
            CliError::Usage(_) | CliError::NeedsEmbedded(_) => 2,
            CliError::Connect(_) => 3,
            CliError::Check(_) => 10,
            CliError::NotServing(_) => 11,
            CliError::TooManyErrors(_) => 12,
            CliError::Rpc(s) => match s.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => 3,
                Code::InvalidArgument | Code::OutOfRange => 4,
                Code::NotFound => 5,
                Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 6,
                Code::ResourceExhausted => 7,
                Code::Unauthenticated | Code::PermissionDenied => 8,
                _ => 9,
            },
        }
    }
}

/// The canonical upper-case name of a gRPC status code (`NOT_FOUND`),
/// from the proto crate (the server's `code` label is the same string).
pub use vmasim_proto::status::code_name;

impl CliError {
    /// `cannot read PATH: why`.
    pub fn read(path: &Path, source: std::io::Error) -> Self {
        CliError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `CODE: message`, with the transport's source chain: a connection
/// failure surfaces as UNAVAILABLE with a terse message of its own.
fn rpc_message(s: &Status) -> String {
    let mut msg = s.message().to_string();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        let t = e.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = e.source();
    }
    format!("{}: {}", code_name(s.code()), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_per_class() {
        let e = CliError::Rpc(Status::not_found("no such process 7"));
        assert_eq!(e.to_string(), "NOT_FOUND: no such process 7");
        assert_eq!(e.exit_code(), 5);
        assert_eq!(CliError::Rpc(Status::invalid_argument("x")).exit_code(), 4);
        assert_eq!(CliError::Rpc(Status::unavailable("x")).exit_code(), 3);
        assert_eq!(CliError::Check("x".into()).exit_code(), 10);
    }

    #[test]
    fn the_help_table_lists_every_code() {
        let cases = [
            (CliError::Other(String::new()), "1"),
            (CliError::Usage(String::new()), "2"),
            (CliError::NeedsEmbedded("demo"), "2"),
            (CliError::Connect(String::new()), "3"),
            (CliError::Rpc(Status::out_of_range("")), "4"),
            (CliError::Rpc(Status::not_found("")), "5"),
            (CliError::Rpc(Status::aborted("")), "6"),
            (CliError::Rpc(Status::resource_exhausted("")), "7"),
            (CliError::Rpc(Status::permission_denied("")), "8"),
            (CliError::Rpc(Status::data_loss("")), "9"),
            (CliError::Rpc(Status::unknown("")), "9"),
            (CliError::Check(String::new()), "10"),
            (CliError::NotServing(String::new()), "11"),
            (CliError::TooManyErrors(String::new()), "12"),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code().to_string(), code, "{e:?}");
            let line = EXIT_CODES
                .lines()
                .find(|l| l.split_whitespace().next() == Some(code))
                .unwrap_or_else(|| panic!("exit code {code} not in the table"));
            if let CliError::Rpc(s) = &e {
                let name = code_name(s.code());
                assert!(
                    line.contains(name),
                    "{name} (exit {code}) not in the table: {line}"
                );
            }
        }
    }
}
