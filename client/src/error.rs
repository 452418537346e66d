//! The CLI's error type and its exit codes.
//!
//! Every command returns `Result<(), CliError>`; `main` prints the error as
//! `error: ...` on stderr and exits with [`CliError::exit_code`]. Exit codes
//! are distinct per class so scripts (and the Dockerfile `HEALTHCHECK`) can
//! tell a refused request from a server that is down:
//!
//! | code | meaning                                                        |
//! |------|----------------------------------------------------------------|
//! | 1    | any other failure (I/O, bad input file)                        |
//! | 2    | usage error (bad flag or value; also what clap uses)           |
//! | 3    | cannot connect / server unavailable / deadline exceeded        |
//! | 4    | `INVALID_ARGUMENT` / `OUT_OF_RANGE`                            |
//! | 5    | `NOT_FOUND`                                                    |
//! | 6    | `ALREADY_EXISTS` / `FAILED_PRECONDITION` / `ABORTED`           |
//! | 7    | `RESOURCE_EXHAUSTED`                                           |
//! | 8    | `UNAUTHENTICATED` / `PERMISSION_DENIED`                        |
//! | 9    | any other gRPC status (`INTERNAL`, `UNIMPLEMENTED`, ...)       |
//! | 10   | `load --verify` found a divergence, or replay did not apply    |
//! | 11   | `health`: the server answered, but is not `SERVING`            |

use std::fmt;
use tonic::{Code, Status};

/// A failed command.
#[derive(Debug)]
pub enum CliError {
    /// The server answered with an error status.
    Rpc(Status),
    /// No connection could be made to the server.
    Connect(String),
    /// Bad command-line input that clap could not catch.
    Usage(String),
    /// A check failed (`load --verify`, `replay`).
    Check(String),
    /// `health` got an answer other than `SERVING`.
    NotServing(String),
    /// Anything else (files, I/O).
    Other(String),
}

impl CliError {
    /// The process exit code for this error (see the module docs).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Other(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Connect(_) => 3,
            CliError::Check(_) => 10,
            CliError::NotServing(_) => 11,
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

/// The canonical upper-case name of a gRPC status code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Rpc(s) => {
                // A connection failure surfaces as UNAVAILABLE with a terse
                // message; keep the transport's source chain for it.
                let mut msg = s.message().to_string();
                let mut src = std::error::Error::source(s);
                while let Some(e) = src {
                    let t = e.to_string();
                    if !msg.contains(&t) {
                        msg = format!("{msg}: {t}");
                    }
                    src = e.source();
                }
                write!(f, "{}: {}", code_name(s.code()), msg)
            }
            CliError::Connect(m)
            | CliError::Usage(m)
            | CliError::Check(m)
            | CliError::NotServing(m)
            | CliError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}

impl From<Status> for CliError {
    fn from(s: Status) -> Self {
        CliError::Rpc(s)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Other(e.to_string())
    }
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
}
