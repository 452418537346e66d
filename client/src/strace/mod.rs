//! Parser for `strace` logs, the input of `vmasim replay`.
//!
//! `vmasim replay` takes the log of a real program and re-issues its
//! address-space syscalls against a simulated `mm_struct`, so that the
//! simulation can be checked against what the kernel really did (the
//! program's `/proc/self/maps` before and after) and so that real workloads
//! can drive the engine. This module turns the log text into a list of
//! [`TraceLine`]s; it knows nothing about the engine.
//!
//! # What it reads
//!
//! The output of `strace -e trace=memory,process [-f] [-y] [-t|-tt|-ttt|-r] [-T]
//! -o FILE`, in strace's default (symbolic, non-raw) notation, e.g.
//!
//! ```text
//! 4879  mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, 3</tmp/f>, 0x1000) = 0x7f6691f3d000
//! 4879  wait4(4880,  <unfinished ...>
//! 4880  exit_group(3)                     = ?
//! 4880  +++ exited with 3 +++
//! 4879  <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 3}], 0, NULL) = 4880
//! 4879  --- SIGCHLD {si_signo=SIGCHLD, ...} ---
//! ```
//!
//! * A leading pid (`-f` with `-o`, or `[pid N]` on a terminal) becomes
//!   [`TraceLine::pid`]; lines without one have `pid: None` ("the traced
//!   process"). Timestamps (`-t`, `-tt`, `-ttt`, `-r`) and `-T` durations are
//!   skipped.
//! * The syscalls that change an address space are decoded into typed
//!   variants of [`Syscall`] with numeric Linux x86-64 flag values (the
//!   `PROT_*`, `MAP_*`, `MREMAP_*` constants of this module), so the replayer
//!   can hand them to the engine as-is. With `-y` the file behind an mmap fd
//!   is kept as `path`, spelled as `/proc/PID/maps` spells it (escapes
//!   decoded, `" (deleted)"` appended for unlinked files).
//! * Process life cycle: `clone`/`clone3`/`fork`/`vfork` become
//!   [`Syscall::Fork`] (new mm) or [`Syscall::Thread`] (shared mm); `execve`
//!   and `execveat` become [`Syscall::Execve`]; `exit`/`exit_group` and
//!   `+++ exited with N +++` / `+++ killed by SIG +++` become
//!   [`Syscall::Exit`], one per task (the `+++` line is dropped when an exit
//!   syscall of the same pid already produced the event).
//! * Everything else that looks like a syscall is [`Syscall::Other`]; signal
//!   lines (`--- SIG... ---`), `strace:` messages and `+++ superseded ... +++`
//!   are skipped.
//!
//! # Why it is shaped so
//!
//! * **Never fatal.** Logs come from arbitrary programs and arbitrary strace
//!   versions; one odd line must not lose the rest. [`parse`] returns every
//!   line it understood plus a [`ParseError`] for each line it did not, and it
//!   never panics (a test feeds it garbage). The replayer decides whether
//!   errors are acceptable.
//! * **Calls are ordered by the line on which they *started*.** With `-f`, a
//!   syscall that blocks is printed as `<unfinished ...>` and completed later
//!   by `<... name resumed>`; the two halves are joined per pid. The joined
//!   call takes the place (and the `line_no`) of its first half: that is what
//!   makes `vfork( <unfinished ...>` come before the child's `execve`, i.e.
//!   the child exists before its first syscall is replayed.
//! * **Return values are kept, not judged.** A failed `mmap` is still a
//!   [`Syscall::Mmap`] with `ret: Err("ENOMEM")` (the replayer can check the
//!   simulation fails too); `= ?` (no return, e.g. the task died) is
//!   `Err("?")`. A failed `brk` does not return an error at all: it returns
//!   the old break, which is kept as `Ok` — compare it with `addr`.
//! * **`vfork` is a [`Syscall::Fork`].** A vfork child borrows the parent's
//!   mm only until it calls `execve` or `_exit`, and may not map anything in
//!   between, so replaying it as a fork whose child then execs (gets a fresh
//!   mm) or exits gives the same parent address space. A `clone` with
//!   `CLONE_VM` but neither `CLONE_THREAD` nor `CLONE_VFORK` really shares
//!   the mm and is a [`Syscall::Thread`].
//! * **One concept per file**: `parser.rs` joins lines into calls (pid
//!   prefixes, `<unfinished ...>`/`<... resumed>`, `+++` lines), `scan.rs`
//!   is the lexical layer (argument lists, strings, `-y` annotations,
//!   comments, escapes), `decode.rs` turns one call's text into a
//!   [`Syscall`] (numbers, flag names, fds, return values, signals).
//! * **std only**: strace's notation is small and regular enough that a hand
//!   scanner (strings, comments, nesting, `-y` fd annotations) is shorter
//!   than a grammar.

use std::fmt;

/// `PROT_*`, `MAP_*`, `MREMAP_*` (Linux, x86-64) and the names strace
/// prints for them: the proto crate owns them.
pub use vmasim_proto::linux::{map::*, mremap::*, prot::*};

mod decode;
mod parser;
mod scan;
#[cfg(test)]
mod tests;

/// One completed syscall (or task exit) of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    /// 1-based line number where the call started (for a joined
    /// `<unfinished ...>` / `<... resumed>` pair: the `unfinished` line).
    pub line_no: usize,
    /// The task (thread id) that made the call; `None` when the log has no
    /// pid column (strace without `-f`).
    pub pid: Option<u32>,
    pub call: Syscall,
}

/// A decoded syscall. Addresses, lengths and flags are the numeric Linux
/// x86-64 values; `ret` is `Ok(value)` on success, `Err(errno name)` on
/// failure (e.g. `"ENOMEM"`), and `Err("?")` when strace saw no return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Syscall {
    /// `mmap` (and `mmap2`, whose page offset is converted to bytes).
    /// `path` is the `-y` annotation of `fd`, as `/proc/PID/maps` shows it.
    Mmap {
        addr: u64,
        length: u64,
        prot: u32,
        flags: u32,
        fd: i64,
        path: Option<String>,
        offset: u64,
        ret: Result<u64, String>,
    },
    Munmap {
        addr: u64,
        length: u64,
        ret: Result<u64, String>,
    },
    /// `mprotect` and `pkey_mprotect` (the key is dropped).
    Mprotect {
        addr: u64,
        length: u64,
        prot: u32,
        ret: Result<u64, String>,
    },
    /// `brk(addr)`; `addr` 0 for `brk(NULL)`. `ret` is the new break; a
    /// refused brk returns the old break (still `Ok`): compare with `addr`.
    Brk { addr: u64, ret: Result<u64, String> },
    Mremap {
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: Option<u64>,
        ret: Result<u64, String>,
    },
    /// A new process with its own mm (`fork`, `vfork`, `clone`/`clone3`
    /// without `CLONE_VM`, or with `CLONE_VFORK`). `child` is its pid.
    Fork { child: Result<u32, String> },
    /// A new task sharing the caller's mm (`CLONE_THREAD`, or `CLONE_VM`
    /// without `CLONE_VFORK`).
    Thread { child: Result<u32, String> },
    /// The task ended: `exit`/`exit_group(code)`, `+++ exited with code +++`,
    /// or `+++ killed by SIG +++` (code = 128 + signal number).
    Exit { code: i64 },
    /// `execve`/`execveat`; on success the task gets a fresh mm.
    Execve { ret: Result<u64, String> },
    /// Anything else. `ret` is the raw text after `= ` (e.g. `"0"`,
    /// `"-1 EINVAL (Invalid argument)"`), `None` for `= ?`.
    Other { name: String, ret: Option<String> },
}

/// A line [`parse`] could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line_no: usize,
    pub line: String,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line_no, self.reason, self.line)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole strace log. Never panics; every line that is neither
/// understood nor deliberately skipped yields a [`ParseError`].
pub fn parse(text: &str) -> (Vec<TraceLine>, Vec<ParseError>) {
    let mut p = parser::Parser::default();
    for (i, raw) in text.lines().enumerate() {
        p.line(i + 1, raw);
    }
    p.finish()
}
