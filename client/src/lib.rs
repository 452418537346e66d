//! vmasim client: the `vmasim` command line, load generator, race lab
//! front end, strace replay and the one-command demo.
//!
//! Everything here talks to a server through the `vmasim.v1` proto only,
//! except [`embedded`] (cargo feature `embedded`, on by default), which
//! starts an in-process server for `demo`, `bench`, `kernel-diff` and the
//! tests.
//!
//! # Layout
//!
//! * [`cli`]: the global options and dispatch (`main.rs` is just a call);
//!   [`cmd`]: one file per subcommand, owning its arguments and its run,
//!   all named once in `cmd/mod.rs`.
//! * [`connect`]: endpoint, TLS, bearer-token interceptor, the client type.
//! * [`direct`]: the bench's transport, straight over one h2 connection
//!   (no `tower::Buffer`, no task per call).
//! * [`error`]: the error type (thiserror) and its exit codes.
//! * [`output`]: report files, opened before the work starts.
//! * [`parse`]: addresses, sizes, protections, flags, durations; short
//!   names of fault outcomes and paths.
//! * [`files`]: naming a file to the server (replay, record, load --trace).
//! * [`stats`]: `Stats` as a table / JSON, and before/after deltas.
//! * [`race`]: the race lab's timeline table.
//! * [`transport`]: one operation over a unary call or the `Session` stream.
//! * [`load`]: the load generator (shared run state, owner workers, fault
//!   threads, trace players, mix, shadow model for `--verify`, recorder,
//!   text/JSON/CSV/HTML reports).
//! * [`demo`]: typesafe vs rcu, side by side.
//! * [`bench`]: the README's benchmarks (unary vs no-op, bulk faults/s,
//!   latency at half the max rate) in one run.
//! * [`embedded`]: an in-process server on 127.0.0.1:0, only with the
//!   default cargo feature `embedded` (the one use of the server crate).
//! * [`strace`]: strace log parser; [`replay`]: applies it to processes.
//! * [`record`]: `vmasim record` (ptrace) and `replay --check` of its
//!   recordings.
//! * [`kernel_diff`]: the kernel as oracle (executor, simulation, compare,
//!   shrink).
pub mod bench;
pub mod cli;
pub mod cmd;
pub mod connect;
pub mod demo;
pub mod direct;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod error;
pub mod files;
pub mod kernel_diff;
pub mod load;
pub mod output;
pub mod parse;
pub mod race;
pub mod record;
pub mod replay;
pub mod stats;
pub mod strace;
pub mod transport;
