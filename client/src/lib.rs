//! vmasim client library.
pub mod strace;
