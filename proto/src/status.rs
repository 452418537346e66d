//! gRPC status names: the canonical upper-snake spelling of the gRPC
//! spec (`NOT_FOUND`), used as the server's `code` metric label, in the
//! client's error messages and in load reports. One table, so the label a
//! dashboard filters on and the name a user reads are the same string.

use tonic::Code;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_specs() {
        // tonic's description strings are the spec's prose; the names are
        // its enum spelling. Every code 0..=16 has a distinct name.
        let names: std::collections::HashSet<_> =
            (0..=16).map(|c| code_name(Code::from(c))).collect();
        assert_eq!(names.len(), 17);
        assert_eq!(code_name(Code::from(5)), "NOT_FOUND");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }
}
