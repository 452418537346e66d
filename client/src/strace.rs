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
//! * **std only**: strace's notation is small and regular enough that a hand
//!   scanner (strings, comments, nesting, `-y` fd annotations) is shorter
//!   than a grammar.

use std::collections::{HashMap, HashSet};
use std::fmt;

use vmasim_proto::linux::{MAP_NAMES, MREMAP_NAMES, PROT_NAMES};
/// `PROT_*`, `MAP_*`, `MREMAP_*` (Linux, x86-64) and the names strace
/// prints for them: the proto crate owns them.
pub use vmasim_proto::linux::{map::*, mremap::*, prot::*};

/// Signal numbers (x86-64) for `+++ killed by SIGxxx +++`.
const SIGNALS: &[(&str, i64)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGIOT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPOLL", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];

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

/// A syscall whose first half (`<unfinished ...>`) was seen.
struct Pending {
    slot: usize,
    line_no: usize,
    name: String,
    text: String,
}

/// Parses a whole strace log. Never panics; every line that is neither
/// understood nor deliberately skipped yields a [`ParseError`].
pub fn parse(text: &str) -> (Vec<TraceLine>, Vec<ParseError>) {
    let mut p = Parser::default();
    for (i, raw) in text.lines().enumerate() {
        p.line(i + 1, raw);
    }
    p.finish()
}

#[derive(Default)]
struct Parser {
    slots: Vec<Option<TraceLine>>,
    errors: Vec<ParseError>,
    pending: HashMap<Option<u32>, Pending>,
    /// Tasks whose exit syscall was seen and whose `+++ exited` is due.
    exit_seen: HashSet<Option<u32>>,
}

impl Parser {
    fn error(&mut self, line_no: usize, line: &str, reason: impl Into<String>) {
        self.errors.push(ParseError {
            line_no,
            line: line.to_string(),
            reason: reason.into(),
        });
    }

    fn emit(&mut self, line_no: usize, pid: Option<u32>, call: Syscall) {
        self.note_exit(pid, &call);
        self.slots.push(Some(TraceLine { line_no, pid, call }));
    }

    fn note_exit(&mut self, pid: Option<u32>, call: &Syscall) {
        if matches!(call, Syscall::Exit { .. }) {
            self.exit_seen.insert(pid);
        }
    }

    fn line(&mut self, line_no: usize, raw: &str) {
        let line = raw.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return;
        }
        let (pid, rest) = match split_prefix(line) {
            Ok(v) => v,
            Err(e) => return self.error(line_no, line, e),
        };
        let rest = rest.trim();
        if rest.starts_with("---")
            || rest.starts_with("strace:")
            || rest.starts_with("[ Process")
            || rest.starts_with('>')
        {
            // signal delivery / stop, strace's own messages, -k stack frames
            return;
        }
        if let Some(body) = rest.strip_prefix("+++") {
            return self.task_end(line_no, line, pid, body);
        }
        if let Some(body) = rest.strip_prefix("<...") {
            return self.resumed(line_no, line, pid, body);
        }
        for marker in ["<unfinished ...>", "<detached ...>"] {
            if let Some(head) = rest.strip_suffix(marker) {
                let name = call_name(head);
                if name.is_empty() {
                    return self.error(line_no, line, "no syscall name before '('");
                }
                if marker.starts_with("<detached") {
                    // strace let go of the task mid-call: no result will come
                    let call = finish_without_result(head, name);
                    return self.emit(line_no, pid, call);
                }
                let slot = self.slots.len();
                self.slots.push(None);
                let new = Pending {
                    slot,
                    line_no,
                    name: name.to_string(),
                    text: head.trim_end().to_string(),
                };
                if let Some(old) = self.pending.insert(pid, new) {
                    self.error(
                        old.line_no,
                        &old.text,
                        "unfinished syscall superseded by another",
                    );
                }
                return;
            }
        }
        match parse_call(rest) {
            Ok(call) => self.emit(line_no, pid, call),
            Err(e) => self.error(line_no, line, e),
        }
    }

    fn resumed(&mut self, line_no: usize, line: &str, pid: Option<u32>, body: &str) {
        let body = body.trim_start();
        let Some(end) = body.find(" resumed>") else {
            return self.error(line_no, line, "malformed '<... resumed>'");
        };
        let name = &body[..end];
        let tail = &body[end + " resumed>".len()..];
        let Some(p) = self.pending.remove(&pid) else {
            return self.error(
                line_no,
                line,
                "'resumed' without a matching '<unfinished ...>'",
            );
        };
        if p.name != name {
            self.error(
                p.line_no,
                &p.text,
                format!("unfinished {} resumed as {name} on line {line_no}", p.name),
            );
            return self.error(line_no, line, "resumed syscall name does not match");
        }
        let joined = format!("{}{}", p.text, tail.trim_start());
        match parse_call(&joined) {
            Ok(call) => {
                self.note_exit(pid, &call);
                if let Some(s) = self.slots.get_mut(p.slot) {
                    *s = Some(TraceLine {
                        line_no: p.line_no,
                        pid,
                        call,
                    });
                }
            }
            Err(e) => self.error(p.line_no, &joined, e),
        }
    }

    /// Completes a pending call of a task that will never resume it.
    fn abandon(&mut self, pid: Option<u32>) {
        if let Some(p) = self.pending.remove(&pid) {
            let call = finish_without_result(&p.text, &p.name);
            self.note_exit(pid, &call);
            if let Some(s) = self.slots.get_mut(p.slot) {
                *s = Some(TraceLine {
                    line_no: p.line_no,
                    pid,
                    call,
                });
            }
        }
    }

    fn task_end(&mut self, line_no: usize, line: &str, pid: Option<u32>, body: &str) {
        let body = body.trim().trim_end_matches('+').trim();
        let code = if let Some(n) = body.strip_prefix("exited with") {
            match n.trim().parse::<i64>() {
                Ok(c) => c,
                Err(_) => return self.error(line_no, line, "bad exit status"),
            }
        } else if let Some(s) = body.strip_prefix("killed by") {
            let sig = s.split_whitespace().next().unwrap_or("");
            match signal_number(sig) {
                Some(n) => 128 + n,
                None => return self.error(line_no, line, format!("unknown signal {sig:?}")),
            }
        } else if body.starts_with("superseded by execve") {
            // a non-leader thread called execve and took over the leader's pid
            return;
        } else {
            return self.error(line_no, line, "unknown '+++' line");
        };
        self.abandon(pid);
        if !self.exit_seen.remove(&pid) {
            self.slots.push(Some(TraceLine {
                line_no,
                pid,
                call: Syscall::Exit { code },
            }));
        }
    }

    fn finish(mut self) -> (Vec<TraceLine>, Vec<ParseError>) {
        let mut left: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        left.sort_by_key(|p| p.line_no);
        for p in left {
            self.error(p.line_no, &p.text, "unfinished syscall never resumed");
        }
        self.errors.sort_by_key(|e| e.line_no);
        (self.slots.into_iter().flatten().collect(), self.errors)
    }
}

/// `exit_group(0) = ?` for a head that never got its result.
fn finish_without_result(head: &str, name: &str) -> Syscall {
    let head = head.trim_end().trim_end_matches(',');
    parse_call(&format!("{head}) = ?")).unwrap_or_else(|_| Syscall::Other {
        name: name.to_string(),
        ret: None,
    })
}

/// Splits off `PID `, `[pid PID] `, `PID<comm> ` and timestamps.
fn split_prefix(line: &str) -> Result<(Option<u32>, &str), String> {
    let mut rest = line.trim_start();
    let mut pid = None;
    if let Some(r) = rest.strip_prefix("[pid") {
        let r = r.trim_start();
        let end = r.find(']').ok_or("unterminated '[pid'")?;
        pid = Some(r[..end].trim().parse::<u32>().map_err(|_| "bad pid")?);
        rest = &r[end + 1..];
    } else {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let after = &rest[digits..];
        if digits > 0 && (after.starts_with(char::is_whitespace) || after.starts_with('<')) {
            pid = Some(
                rest[..digits]
                    .parse::<u32>()
                    .map_err(|_| "pid out of range")?,
            );
            rest = after;
            if rest.starts_with('<') {
                // --decode-pids=comm: `PID<comm>`
                let end = rest.find("> ").ok_or("unterminated '<comm>'")?;
                rest = &rest[end + 1..];
            }
        }
    }
    let r = rest.trim_start();
    let tok = r.split(char::is_whitespace).next().unwrap_or("");
    let is_time = !tok.is_empty()
        && tok
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b':' || b == b'.')
        && tok.bytes().any(|b| b == b':' || b == b'.');
    if is_time {
        rest = &r[tok.len()..];
    }
    Ok((pid, rest))
}

/// The identifier before `(`, or "" if there is none.
fn call_name(s: &str) -> &str {
    let s = s.trim_start();
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if s.as_bytes().get(n) == Some(&b'(') {
        &s[..n]
    } else {
        ""
    }
}

/// Index just past the string literal that starts at `i` (a `"`).
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Index just past the `-y` annotation `<...>` that starts at `i` (a `<`).
/// strace escapes `<` and `>` inside paths; `[...]` (sockets with `-yy`,
/// e.g. `1.2.3.4:5->6.7.8.9:10`) may contain a raw `>`.
fn skip_annotation(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => depth += 1,
            b']' => depth = depth.saturating_sub(1),
            b'>' if depth == 0 => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether the `<` at `i` opens an fd annotation (`3</path>`) rather than a
/// shift (`21<<MAP_HUGE_SHIFT`).
fn is_annotation(b: &[u8], i: usize) -> bool {
    i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1) != Some(&b'<')
}

/// Scans an argument list that starts right after `(`: returns the trimmed
/// top-level arguments and the index of the closing `)`.
fn scan_args(s: &str) -> Option<(Vec<&str>, usize)> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut start = 0;
    let mut args = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = skip_string(b, i)?;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = i + 2 + s.get(i + 2..)?.find("*/")? + 2;
                continue;
            }
            b'<' if is_annotation(b, i) => {
                i = skip_annotation(b, i)?;
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' if depth == 0 => {
                let last = s[start..i].trim();
                if !(args.is_empty() && last.is_empty()) {
                    args.push(last);
                }
                return Some((args, i));
            }
            b')' | b']' | b'}' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => {
                args.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Strips `/* ... */` comments (`0x10 /* MAP_??? */`).
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        match rest[i + 2..].find("*/") {
            Some(j) => rest = &rest[i + 2 + j + 2..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A non-negative number: `NULL`, `0x1f`, `4096` (comments allowed).
fn parse_num(s: &str) -> Result<u64, String> {
    let t = strip_comments(s);
    let t = t.trim();
    let r = if t == "NULL" {
        Ok(0)
    } else if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        t.parse::<u64>()
    };
    r.map_err(|_| format!("bad number {s:?}"))
}

/// A `|`-separated set of symbolic flags and numbers.
fn parse_flags(s: &str, table: &[(&str, u32)]) -> Result<u32, String> {
    let t = strip_comments(s);
    let mut v: u32 = 0;
    for part in t.split('|') {
        let part = part.trim();
        if let Some(&(_, bits)) = table.iter().find(|(n, _)| *n == part) {
            v |= bits;
        } else if let Some((n, shift)) = part.split_once("<<") {
            if shift.trim() != "MAP_HUGE_SHIFT" {
                return Err(format!("unknown shift {part:?}"));
            }
            let n = parse_num(n)?;
            if n >= 1 << (32 - MAP_HUGE_SHIFT) {
                return Err(format!("huge page size out of range in {part:?}"));
            }
            v |= (n as u32) << MAP_HUGE_SHIFT;
        } else if part.starts_with(|c: char| c.is_ascii_digit()) {
            let n = parse_num(part)?;
            v |= u32::try_from(n).map_err(|_| format!("flag value too large {part:?}"))?;
        } else {
            return Err(format!("unknown flag {part:?}"));
        }
    }
    Ok(v)
}

/// `-1`, `3`, `3</path>`, `3</path>(deleted)`.
fn parse_fd(s: &str) -> Result<(i64, Option<String>), String> {
    let s = strip_comments(s);
    let s = s.trim();
    let (num, ann) = match s.find('<') {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    };
    let fd = num
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("bad fd {s:?}"))?;
    let path = match ann {
        None => None,
        Some(a) => {
            let end = skip_annotation(a.as_bytes(), 0).ok_or("unterminated fd annotation")?;
            let mut path = unescape(&a[1..end - 1]);
            match a[end..].trim() {
                "" => {}
                "(deleted)" => path.push_str(" (deleted)"),
                other => return Err(format!("unexpected {other:?} after fd path")),
            }
            Some(path)
        }
    };
    Ok((fd, path))
}

/// Decodes strace's C-style escapes (`\t`, `\76`, `\x3e`, `\\`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 1;
        let c = b[i];
        i += 1;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'v' => out.push(0x0b),
            b'f' => out.push(0x0c),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'x' => {
                let n = b[i..]
                    .iter()
                    .take(2)
                    .take_while(|c| c.is_ascii_hexdigit())
                    .count();
                let h = std::str::from_utf8(&b[i..i + n]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => out.push(v),
                    Err(_) => out.extend_from_slice(b"\\x"),
                }
                i += n;
            }
            b'0'..=b'7' => {
                let n = 1 + b[i..]
                    .iter()
                    .take(2)
                    .take_while(|c| (b'0'..=b'7').contains(c))
                    .count();
                let o = std::str::from_utf8(&b[i - 1..i - 1 + n]).unwrap_or("");
                out.push(u32::from_str_radix(o, 8).map_or(b'?', |v| v as u8));
                i += n - 1;
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A decoded return value.
enum Ret {
    Num(u64),
    Err(String),
    Unknown,
}

impl Ret {
    fn result(&self) -> Result<u64, String> {
        match self {
            Ret::Num(v) => Ok(*v),
            Ret::Err(e) => Err(e.clone()),
            Ret::Unknown => Err("?".to_string()),
        }
    }
}

/// Drops a trailing `-T` duration (` <0.000048>`).
fn strip_duration(s: &str) -> &str {
    let s = s.trim_end();
    if let Some(body) = s.strip_suffix('>')
        && let Some(i) = body.rfind(" <")
        && body[i + 2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.')
    {
        return s[..i].trim_end();
    }
    s
}

fn parse_ret(s: &str) -> Result<Ret, String> {
    let s = s.trim();
    if let Some(r) = s.strip_prefix('?') {
        return Ok(match r.split_whitespace().next() {
            None => Ret::Unknown,
            Some(e) => Ret::Err(e.to_string()), // ? ERESTARTNOINTR (To be restarted)
        });
    }
    if let Some(r) = s.strip_prefix('-') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("bad return value {s:?}"));
        }
        let rest = r[digits..].trim_start();
        return Ok(match rest.split_whitespace().next() {
            Some(e) if e.starts_with('E') => Ret::Err(e.to_string()),
            _ => Ret::Err(format!("-{}", &r[..digits])),
        });
    }
    let tok_len = s.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
    parse_num(&s[..tok_len]).map(Ret::Num)
}

fn child_pid(ret: &Ret) -> Result<u32, String> {
    match ret {
        Ret::Num(v) => u32::try_from(*v).map_err(|_| format!("pid {v} out of range")),
        Ret::Err(e) => Err(e.clone()),
        Ret::Unknown => Err("?".to_string()),
    }
}

fn arg<'a>(args: &[&'a str], i: usize, name: &str) -> Result<&'a str, String> {
    args.get(i)
        .copied()
        .ok_or_else(|| format!("{name}: missing argument {}", i + 1))
}

/// Parses one complete call: `name(args) = ret`.
fn parse_call(text: &str) -> Result<Syscall, String> {
    let text = text.trim();
    let name = call_name(text);
    if name.is_empty() {
        return Err("not a syscall line".to_string());
    }
    let after = &text[name.len() + 1..];
    let (args, close) = scan_args(after).ok_or("unbalanced argument list")?;
    let tail = after[close + 1..].trim_start();
    let ret_text = tail
        .strip_prefix('=')
        .ok_or("no '= return value' after the arguments")?;
    let ret_text = strip_duration(ret_text).trim();
    let ret = parse_ret(ret_text)?;
    let a = |i| arg(&args, i, name);
    Ok(match name {
        "mmap" | "mmap2" => {
            let (fd, path) = parse_fd(a(4)?)?;
            let mut offset = parse_num(a(5)?)?;
            if name == "mmap2" {
                offset = offset.checked_mul(4096).ok_or("mmap2 offset overflows")?;
            }
            Syscall::Mmap {
                addr: parse_num(a(0)?)?,
                length: parse_num(a(1)?)?,
                prot: parse_flags(a(2)?, PROT_NAMES)?,
                flags: parse_flags(a(3)?, MAP_NAMES)?,
                fd,
                path,
                offset,
                ret: ret.result(),
            }
        }
        "munmap" => Syscall::Munmap {
            addr: parse_num(a(0)?)?,
            length: parse_num(a(1)?)?,
            ret: ret.result(),
        },
        "mprotect" | "pkey_mprotect" => Syscall::Mprotect {
            addr: parse_num(a(0)?)?,
            length: parse_num(a(1)?)?,
            prot: parse_flags(a(2)?, PROT_NAMES)?,
            ret: ret.result(),
        },
        "brk" => Syscall::Brk {
            addr: parse_num(a(0)?)?,
            ret: ret.result(),
        },
        "mremap" => Syscall::Mremap {
            old_addr: parse_num(a(0)?)?,
            old_len: parse_num(a(1)?)?,
            new_len: parse_num(a(2)?)?,
            flags: parse_flags(a(3)?, MREMAP_NAMES)?,
            new_addr: args.get(4).map(|s| parse_num(s)).transpose()?,
            ret: ret.result(),
        },
        "fork" | "vfork" => Syscall::Fork {
            child: child_pid(&ret),
        },
        "clone" | "clone2" | "clone3" => {
            let flags = strip_comments(&args.join(","));
            let has = |f: &str| {
                flags
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|t| t == f)
            };
            let child = child_pid(&ret);
            if has("CLONE_THREAD") || (has("CLONE_VM") && !has("CLONE_VFORK")) {
                Syscall::Thread { child }
            } else {
                Syscall::Fork { child }
            }
        }
        "exit" | "exit_group" => {
            let c = strip_comments(a(0)?);
            Syscall::Exit {
                code: c
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("bad exit code {c:?}"))?,
            }
        }
        "execve" | "execveat" => Syscall::Execve { ret: ret.result() },
        _ => Syscall::Other {
            name: name.to_string(),
            ret: (ret_text != "?").then(|| ret_text.to_string()),
        },
    })
}

fn signal_number(sig: &str) -> Option<i64> {
    if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == sig) {
        return Some(n);
    }
    // SIGRTMIN (32 in the kernel's numbering, strace prints SIGRT_n = 32+n)
    let n: i64 = sig.strip_prefix("SIGRT_")?.parse().ok()?;
    (0..=32).contains(&n).then_some(32 + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Syscall {
        let (calls, errs) = parse(line);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(calls.len(), 1, "{calls:?}");
        calls.into_iter().next().unwrap().call
    }

    fn err(line: &str) -> String {
        let (calls, errs) = parse(line);
        assert!(calls.is_empty(), "{calls:?}");
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs[0].reason.clone()
    }

    #[test]
    fn mmap_anonymous() {
        assert_eq!(
            one(
                "mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f6691f40000"
            ),
            Syscall::Mmap {
                addr: 0,
                length: 8192,
                prot: PROT_READ | PROT_WRITE,
                flags: MAP_PRIVATE | MAP_ANONYMOUS,
                fd: -1,
                path: None,
                offset: 0,
                ret: Ok(0x7f66_91f4_0000),
            }
        );
    }

    #[test]
    fn mmap_file_with_y_path_and_pid() {
        let (calls, errs) = parse(
            "4879  mmap(0x7f6691d7b000, 1400832, PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_FIXED|MAP_DENYWRITE, 3</usr/lib/x86_64-linux-gnu/libc.so.6>, 0x26000) = 0x7f6691d7b000",
        );
        assert!(errs.is_empty());
        assert_eq!(calls[0].pid, Some(4879));
        assert_eq!(calls[0].line_no, 1);
        assert_eq!(
            calls[0].call,
            Syscall::Mmap {
                addr: 0x7f66_91d7_b000,
                length: 1_400_832,
                prot: PROT_READ | PROT_EXEC,
                flags: MAP_PRIVATE | MAP_FIXED | MAP_DENYWRITE,
                fd: 3,
                path: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
                offset: 0x26000,
                ret: Ok(0x7f66_91d7_b000),
            }
        );
    }

    #[test]
    fn mmap_without_y_has_no_path() {
        match one(
            "mmap(0x7f95ca756000, 4096, PROT_READ, MAP_PRIVATE|MAP_FIXED, 3, 0x6000) = 0x7f95ca756000",
        ) {
            Syscall::Mmap {
                fd, path, offset, ..
            } => {
                assert_eq!((fd, path, offset), (3, None, 0x6000));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn mmap_escaped_deleted_path() {
        match one(
            r"mmap(NULL, 4096, PROT_READ, MAP_SHARED, 3</tmp/we\76ird, (name)\tx.txt>(deleted), 0) = 0x7f50e70c4000",
        ) {
            Syscall::Mmap { path, flags, .. } => {
                assert_eq!(
                    path.as_deref(),
                    Some("/tmp/we>ird, (name)\tx.txt (deleted)")
                );
                assert_eq!(flags, MAP_SHARED);
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn all_map_flags_and_numeric_bits() {
        let line = "mmap(0x10000, 4096, PROT_NONE, MAP_SHARED_VALIDATE|MAP_FIXED|MAP_ANONYMOUS|MAP_DENYWRITE|MAP_STACK|MAP_NORESERVE|MAP_POPULATE|MAP_FIXED_NOREPLACE|MAP_GROWSDOWN|MAP_LOCKED|MAP_HUGETLB|21<<MAP_HUGE_SHIFT|0x800000, -1, 0) = -1 EINVAL (Invalid argument)";
        match one(line) {
            Syscall::Mmap {
                prot, flags, ret, ..
            } => {
                assert_eq!(prot, 0);
                assert_eq!(
                    flags,
                    0x3 | 0x10
                        | 0x20
                        | 0x800
                        | 0x2_0000
                        | 0x4000
                        | 0x8000
                        | 0x10_0000
                        | 0x100
                        | 0x2000
                        | 0x4_0000
                        | (21 << 26)
                        | 0x80_0000
                );
                assert_eq!(ret, Err("EINVAL".into()));
            }
            c => panic!("{c:?}"),
        }
        match one("mmap(NULL, 4096, 0x1, 0x10 /* MAP_??? */, -1, 0) = -1 EINVAL (Invalid argument)")
        {
            Syscall::Mmap { prot, flags, .. } => assert_eq!((prot, flags), (1, 0x10)),
            c => panic!("{c:?}"),
        }
        match one(
            "mmap(NULL, 4096, PROT_READ|0x10, MAP_FILE, -1, 0) = -1 EBADF (Bad file descriptor)",
        ) {
            Syscall::Mmap { prot, flags, .. } => assert_eq!((prot, flags), (0x11, 0)),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn unknown_flag_is_an_error() {
        let e = err("mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_BOGUS, -1, 0) = 0x1000");
        assert!(e.contains("MAP_BOGUS"), "{e}");
    }

    #[test]
    fn mmap_errors() {
        match one(
            "mmap(NULL, 4611686018427387904, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = -1 ENOMEM (Cannot allocate memory)",
        ) {
            Syscall::Mmap { length, ret, .. } => {
                assert_eq!(length, 1 << 62);
                assert_eq!(ret, Err("ENOMEM".into()));
            }
            c => panic!("{c:?}"),
        }
        match one(
            "mmap(0x7f6691d4a000, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE, -1, 0) = -1 EEXIST (File exists)",
        ) {
            Syscall::Mmap { flags, ret, .. } => {
                assert_eq!(flags, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
                assert_eq!(ret, Err("EEXIST".into()));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn mmap2_offset_is_in_pages() {
        match one("mmap2(NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0x2) = 0xf7f00000") {
            Syscall::Mmap { offset, .. } => assert_eq!(offset, 0x2000),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn munmap_mprotect_brk() {
        assert_eq!(
            one("munmap(0x7f6691d3b000, 8192)      = 0"),
            Syscall::Munmap {
                addr: 0x7f66_91d3_b000,
                length: 8192,
                ret: Ok(0)
            }
        );
        assert_eq!(
            one("munmap(0x7f6691d42001, 4096)      = -1 EINVAL (Invalid argument)"),
            Syscall::Munmap {
                addr: 0x7f66_91d4_2001,
                length: 4096,
                ret: Err("EINVAL".into())
            }
        );
        assert_eq!(
            one("mprotect(0x7f6691d38000, 4096, PROT_NONE) = 0"),
            Syscall::Mprotect {
                addr: 0x7f66_91d3_8000,
                length: 4096,
                prot: 0,
                ret: Ok(0)
            }
        );
        assert_eq!(
            one("pkey_mprotect(0x7f0000000000, 4096, PROT_READ|PROT_EXEC, 1) = 0"),
            Syscall::Mprotect {
                addr: 0x7f00_0000_0000,
                length: 4096,
                prot: 5,
                ret: Ok(0)
            }
        );
        assert_eq!(
            one("brk(NULL)                         = 0x55d572317000"),
            Syscall::Brk {
                addr: 0,
                ret: Ok(0x55d5_7231_7000)
            }
        );
        // refused brk: returns the old break
        assert_eq!(
            one("brk(0x7fffffffffff) = 0x55d572317000"),
            Syscall::Brk {
                addr: 0x7fff_ffff_ffff,
                ret: Ok(0x55d5_7231_7000)
            }
        );
    }

    #[test]
    fn mremap_forms() {
        assert_eq!(
            one("mremap(0x7f6691d24000, 16384, 49152, MREMAP_MAYMOVE) = 0x7f6691d18000"),
            Syscall::Mremap {
                old_addr: 0x7f66_91d2_4000,
                old_len: 16384,
                new_len: 49152,
                flags: MREMAP_MAYMOVE,
                new_addr: None,
                ret: Ok(0x7f66_91d1_8000)
            }
        );
        assert_eq!(
            one(
                "mremap(0x7f6691d18000, 24576, 24576, MREMAP_MAYMOVE|MREMAP_FIXED, 0x100000100000) = 0x100000100000"
            ),
            Syscall::Mremap {
                old_addr: 0x7f66_91d1_8000,
                old_len: 24576,
                new_len: 24576,
                flags: MREMAP_MAYMOVE | MREMAP_FIXED,
                new_addr: Some(0x1000_0010_0000),
                ret: Ok(0x1000_0010_0000)
            }
        );
        match one("mremap(0x1000, 4096, 8192, 0) = -1 ENOMEM (Cannot allocate memory)") {
            Syscall::Mremap { flags, ret, .. } => {
                assert_eq!((flags, ret), (0, Err("ENOMEM".into())));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn fork_and_thread_classification() {
        assert_eq!(
            one(
                "clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f6691d52a10) = 4880"
            ),
            Syscall::Fork { child: Ok(4880) }
        );
        assert_eq!(
            one(
                "clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7f5d095b0990, parent_tid=0x7f5d095b0990, exit_signal=0, stack=0x7f5d08db0000, stack_size=0x7fff80, tls=0x7f5d095b06c0} => {parent_tid=[5070]}, 88) = 5070"
            ),
            Syscall::Thread { child: Ok(5070) }
        );
        assert_eq!(
            one(
                "clone3({flags=CLONE_VM|CLONE_VFORK|CLONE_CLEAR_SIGHAND, exit_signal=SIGCHLD, stack=0x7f1c2f3e6000, stack_size=0x9000}, 88) = 5071"
            ),
            Syscall::Fork { child: Ok(5071) }
        );
        assert_eq!(
            one("clone(child_stack=0x7f0000001000, flags=CLONE_VM|SIGCHLD) = 77"),
            Syscall::Thread { child: Ok(77) }
        );
        assert_eq!(one("fork() = 12"), Syscall::Fork { child: Ok(12) });
        assert_eq!(one("vfork() = 13"), Syscall::Fork { child: Ok(13) });
        assert_eq!(
            one(
                "clone(child_stack=NULL, flags=SIGCHLD) = -1 EAGAIN (Resource temporarily unavailable)"
            ),
            Syscall::Fork {
                child: Err("EAGAIN".into())
            }
        );
    }

    #[test]
    fn exec_and_exit() {
        assert_eq!(
            one(r#"execve("./memprog", ["./memprog"], 0x7fff53f221a0 /* 35 vars */) = 0"#),
            Syscall::Execve { ret: Ok(0) }
        );
        assert_eq!(
            one(
                r#"execve("/usr/sbin/true", ["true"], 0x7fff872c89e8 /* 35 vars */) = -1 ENOENT (No such file or directory)"#
            ),
            Syscall::Execve {
                ret: Err("ENOENT".into())
            }
        );
        assert_eq!(
            one("exit_group(3)                     = ?"),
            Syscall::Exit { code: 3 }
        );
        assert_eq!(one("+++ exited with 7 +++"), Syscall::Exit { code: 7 });
        assert_eq!(
            one("+++ killed by SIGKILL +++"),
            Syscall::Exit { code: 137 }
        );
        assert_eq!(
            one("+++ killed by SIGSEGV (core dumped) +++"),
            Syscall::Exit { code: 139 }
        );
    }

    #[test]
    fn exit_syscall_and_exited_line_give_one_event() {
        let (calls, errs) =
            parse("1 exit_group(0) = ?\n1 +++ exited with 0 +++\n2 +++ exited with 1 +++\n");
        assert!(errs.is_empty());
        let exits: Vec<_> = calls.iter().map(|c| (c.pid, c.line_no)).collect();
        assert_eq!(exits, [(Some(1), 1), (Some(2), 3)]);
        // without pids too
        let (calls, _) = parse("exit_group(0) = ?\n+++ exited with 0 +++\n");
        assert_eq!(calls.len(), 1);
    }

    #[test]
    fn other_syscalls_keep_raw_return() {
        assert_eq!(
            one("madvise(0x55d53cb7d000, 28672, MADV_NORMAL) = 0"),
            Syscall::Other {
                name: "madvise".into(),
                ret: Some("0".into())
            }
        );
        assert_eq!(
            one("wait4(4880, [{WIFEXITED(s) && WEXITSTATUS(s) == 3}], 0, NULL) = 4880"),
            Syscall::Other {
                name: "wait4".into(),
                ret: Some("4880".into())
            }
        );
        assert_eq!(
            one("arch_prctl(0x3001 /* ARCH_??? */, 0x7ffc5e3e0a70) = -1 EINVAL (Invalid argument)"),
            Syscall::Other {
                name: "arch_prctl".into(),
                ret: Some("-1 EINVAL (Invalid argument)".into())
            }
        );
        assert_eq!(
            one("rt_sigreturn({mask=[]}) = ?"),
            Syscall::Other {
                name: "rt_sigreturn".into(),
                ret: None
            }
        );
    }

    #[test]
    fn unfinished_resumed_are_joined_in_start_order() {
        let log = "\
5070  vfork( <unfinished ...>
5071  execve(\"/usr/bin/true\", [\"true\"], 0x19852d10 /* 2 vars */ <unfinished ...>
5070  <... vfork resumed>)              = 5071
5071  <... execve resumed>)             = 0
5070  wait4(5071,  <unfinished ...>
5071  exit_group(0)                     = ?
5071  +++ exited with 0 +++
5070  <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 5071
5070  --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=5071} ---
5069  mmap(NULL, 8192, PROT_READ <unfinished ...>
5070  exit(0 <unfinished ...>
5069  <... mmap resumed>, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000
5070  <... exit resumed>)               = ?
5070  +++ exited with 0 +++
";
        let (calls, errs) = parse(log);
        assert!(errs.is_empty(), "{errs:?}");
        let got: Vec<_> = calls
            .iter()
            .map(|c| (c.line_no, c.pid, c.call.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (1, Some(5070), Syscall::Fork { child: Ok(5071) }),
                (2, Some(5071), Syscall::Execve { ret: Ok(0) }),
                (
                    5,
                    Some(5070),
                    Syscall::Other {
                        name: "wait4".into(),
                        ret: Some("5071".into())
                    }
                ),
                (6, Some(5071), Syscall::Exit { code: 0 }),
                (
                    10,
                    Some(5069),
                    Syscall::Mmap {
                        addr: 0,
                        length: 8192,
                        prot: PROT_READ,
                        flags: MAP_PRIVATE | MAP_ANONYMOUS,
                        fd: -1,
                        path: None,
                        offset: 0,
                        ret: Ok(0x7f00_0000_0000)
                    }
                ),
                (11, Some(5070), Syscall::Exit { code: 0 }),
            ]
        );
    }

    #[test]
    fn unfinished_cut_by_death_or_eof() {
        // killed while blocked: the call completes with no result
        let (calls, errs) =
            parse("9 munmap(0x1000, 4096 <unfinished ...>\n9 +++ killed by SIGKILL +++\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            calls[0].call,
            Syscall::Munmap {
                addr: 0x1000,
                length: 4096,
                ret: Err("?".into())
            }
        );
        assert_eq!(calls[1].call, Syscall::Exit { code: 137 });
        // truncated log: an error, not a call
        let (calls, errs) = parse("9 brk(NULL <unfinished ...>\n");
        assert!(calls.is_empty());
        assert_eq!(errs[0].line_no, 1);
        // resumed without unfinished, or with another name
        assert_eq!(parse("9 <... brk resumed>) = 0").1.len(), 1);
        let (calls, errs) = parse("9 brk(NULL <unfinished ...>\n9 <... mmap resumed>) = 0\n");
        assert!(calls.is_empty());
        assert_eq!(errs.len(), 2);
        // detached mid-call
        assert_eq!(
            one("9 wait4(-1,  <detached ...>"),
            Syscall::Other {
                name: "wait4".into(),
                ret: None
            }
        );
    }

    #[test]
    fn prefixes_timestamps_and_durations() {
        let want = Syscall::Munmap {
            addr: 0x1000,
            length: 4096,
            ret: Ok(0),
        };
        for (line, pid) in [
            ("munmap(0x1000, 4096) = 0", None),
            ("11:31:01 munmap(0x1000, 4096) = 0", None),
            ("11:31:01.147595 munmap(0x1000, 4096) = 0 <0.000048>", None),
            ("1795606261.156516 munmap(0x1000, 4096) = 0", None),
            ("     0.000122 munmap(0x1000, 4096) = 0", None),
            (
                "42 11:31:01.147595 munmap(0x1000, 4096) = 0 <0.000048>",
                Some(42),
            ),
            ("[pid  42] munmap(0x1000, 4096) = 0", Some(42)),
            ("42<memprog> munmap(0x1000, 4096) = 0", Some(42)),
            ("42  munmap(0x1000, 4096) = 0\r", Some(42)),
        ] {
            let (calls, errs) = parse(line);
            assert!(errs.is_empty(), "{line}: {errs:?}");
            assert_eq!(calls.len(), 1, "{line}");
            assert_eq!((calls[0].pid, &calls[0].call), (pid, &want), "{line}");
        }
    }

    #[test]
    fn skipped_lines() {
        let (calls, errs) = parse(
            "\n--- SIGCHLD {si_signo=SIGCHLD} ---\nstrace: Process 5 attached\n5 --- stopped by SIGSTOP ---\n5 +++ superseded by execve in pid 4 +++\n   \n",
        );
        assert!(calls.is_empty() && errs.is_empty(), "{calls:?} {errs:?}");
    }

    #[test]
    fn bad_lines_are_errors() {
        for line in [
            "hello world",
            "mmap(NULL, 8192",
            "mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, -1, 0)",
            "mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, -1) = 0x1000",
            "mmap(NULL, 99999999999999999999999, PROT_READ, MAP_PRIVATE, -1, 0) = 0x1000",
            "mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, -1, 0) = 0x1ffffffffffffffffff",
            "mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|0x1ffffffff, -1, 0) = 0x1000",
            "mmap(NULL, 4096, PROT_READ, 99<<MAP_HUGE_SHIFT, -1, 0) = 0x1000",
            "mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3</x, 0) = 0x1000",
            "mmap2(NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0xffffffffffffffff) = 0x1000",
            "99999999999 munmap(0x1000, 4096) = 0",
            "+++ killed by SIGBOGUS +++",
            "+++ exited with lots +++",
            "exit_group(zero) = ?",
        ] {
            let (calls, errs) = parse(line);
            assert!(calls.is_empty(), "{line}: {calls:?}");
            assert_eq!(errs.len(), 1, "{line}");
            assert_eq!(errs[0].line, line);
        }
    }

    #[test]
    fn garbage_never_panics() {
        // deterministic xorshift, no proptest
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet: &[&str] = &[
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            "<",
            ">",
            "\"",
            "\\",
            ",",
            " ",
            "=",
            "?",
            "-",
            "|",
            "0x",
            "1",
            "9",
            "/*",
            "*/",
            "mmap",
            "munmap",
            "brk",
            "mremap",
            "clone",
            "exit_group",
            "<unfinished ...>",
            "<... mmap resumed>",
            "+++",
            "---",
            "[pid ",
            "NULL",
            "PROT_READ",
            "MAP_FIXED",
            "<<",
            "3<",
            "\\7",
            "\\x",
            "é",
            "\u{0}",
            "\n",
            "18446744073709551616",
            "MAP_HUGE_SHIFT",
            "(deleted)",
            "exited with",
            "killed by",
            " resumed>",
            "123 ",
        ];
        for _ in 0..20_000 {
            let n = (next() % 24) as usize;
            let s: String = (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = parse(&s);
        }
        // random bytes (lossy) and every prefix of every real line
        for _ in 0..2_000 {
            let bytes: Vec<u8> = (0..(next() % 80)).map(|_| next() as u8).collect();
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
        for log in [MEMPROG, MEMPROG_NOF, PYTHON] {
            for line in log.lines() {
                for (i, _) in line.char_indices() {
                    let _ = parse(&line[..i]);
                    let _ = parse(&line[i..]);
                }
            }
        }
        // huge numbers everywhere
        let big = "340282366920938463463374607431768211456";
        let _ = parse(&format!(
            "{big} mmap({big}, {big}, {big}, {big}<<MAP_HUGE_SHIFT, {big}<{big}>, {big}) = {big}\n+++ exited with {big} +++\n+++ killed by SIGRT_{big} +++"
        ));
    }

    const MEMPROG: &str = include_str!("../tests/data/memprog.strace");
    const MEMPROG_NOF: &str = include_str!("../tests/data/memprog-nof.strace");
    const PYTHON: &str = include_str!("../tests/data/python.strace");

    #[derive(Default, Debug, PartialEq)]
    struct Counts {
        mmap: usize,
        munmap: usize,
        mprotect: usize,
        brk: usize,
        mremap: usize,
        fork: usize,
        thread: usize,
        exit: usize,
        execve: usize,
        other: usize,
    }

    fn counts(calls: &[TraceLine]) -> Counts {
        let mut c = Counts::default();
        for t in calls {
            match t.call {
                Syscall::Mmap { .. } => c.mmap += 1,
                Syscall::Munmap { .. } => c.munmap += 1,
                Syscall::Mprotect { .. } => c.mprotect += 1,
                Syscall::Brk { .. } => c.brk += 1,
                Syscall::Mremap { .. } => c.mremap += 1,
                Syscall::Fork { .. } => c.fork += 1,
                Syscall::Thread { .. } => c.thread += 1,
                Syscall::Exit { .. } => c.exit += 1,
                Syscall::Execve { .. } => c.execve += 1,
                Syscall::Other { .. } => c.other += 1,
            }
        }
        c
    }

    /// The two marker madvise calls of memprog (see testdata-src/README.md):
    /// indices into `calls`, found via the raw line's length argument.
    fn markers(text: &str, calls: &[TraceLine]) -> (usize, usize) {
        let lines: Vec<&str> = text.lines().collect();
        let find = |len: &str| {
            calls
                .iter()
                .position(|t| {
                    matches!(&t.call, Syscall::Other { name, .. } if name == "madvise")
                        && lines[t.line_no - 1].contains(&format!(", {len}, MADV_NORMAL)"))
                })
                .expect("marker")
        };
        (find("28672"), find("45056"))
    }

    #[test]
    fn memprog_log() {
        let (calls, errs) = parse(MEMPROG);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            counts(&calls),
            Counts {
                mmap: 24,
                munmap: 5,
                mprotect: 7,
                brk: 4,
                mremap: 3,
                fork: 1,
                thread: 0,
                exit: 2,
                execve: 1,
                other: 3,
            }
        );
        let parent = calls[0].pid.expect("-f log has pids");
        let Some(Syscall::Fork { child: Ok(child) }) = calls
            .iter()
            .find(|t| matches!(t.call, Syscall::Fork { .. }))
            .map(|t| t.call.clone())
        else {
            panic!("no fork")
        };
        let (m1, m2) = markers(MEMPROG, &calls);
        assert!(m1 < m2);
        assert!(
            calls[m1..=m2]
                .iter()
                .all(|t| t.pid == Some(parent) || t.pid == Some(child))
        );
        // the child's calls all sit between the fork and the parent's wait4
        let child_calls: Vec<_> = calls.iter().filter(|t| t.pid == Some(child)).collect();
        assert_eq!(child_calls.len(), 5);
        assert_eq!(child_calls.last().unwrap().call, Syscall::Exit { code: 3 });
        // -y paths: the data file is mapped private, shared and fixed
        let data_maps = calls
            .iter()
            .filter(|t| {
                matches!(&t.call, Syscall::Mmap { path: Some(p), .. } if p.ends_with("/memprog.data"))
            })
            .count();
        assert_eq!(data_maps, 4);
        let parent_exit = calls.iter().rev().find(|t| t.pid == Some(parent)).unwrap();
        assert_eq!(parent_exit.call, Syscall::Exit { code: 0 });
    }

    #[test]
    fn memprog_nof_log() {
        let (calls, errs) = parse(MEMPROG_NOF);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(calls.iter().all(|t| t.pid.is_none()));
        assert!(
            calls
                .iter()
                .all(|t| !matches!(&t.call, Syscall::Mmap { path: Some(_), .. }))
        );
        // same program without the child's 4 syscalls and its exit
        let c = counts(&calls);
        assert_eq!(
            (c.mmap, c.munmap, c.mprotect, c.fork, c.exit),
            (22, 4, 6, 1, 1)
        );
        let (m1, m2) = markers(MEMPROG_NOF, &calls);
        assert!(m1 < m2);
    }

    #[test]
    fn python_log() {
        let (calls, errs) = parse(PYTHON);
        assert!(errs.is_empty(), "{errs:?}");
        let c = counts(&calls);
        assert_eq!((c.thread, c.fork), (1, 1), "{c:?}");
        assert!(c.mmap > 20, "{c:?}");
        // the vfork'd child's execve comes after the (joined) vfork
        let vfork = calls
            .iter()
            .position(|t| matches!(t.call, Syscall::Fork { .. }))
            .unwrap();
        let Syscall::Fork { child: Ok(child) } = calls[vfork].call else {
            panic!()
        };
        let first_child = calls.iter().position(|t| t.pid == Some(child)).unwrap();
        assert!(vfork < first_child);
        assert_eq!(calls[first_child].call, Syscall::Execve { ret: Ok(0) });
        // every task that appears exits exactly once
        let mut exits: HashMap<Option<u32>, usize> = HashMap::new();
        for t in &calls {
            if matches!(t.call, Syscall::Exit { .. }) {
                *exits.entry(t.pid).or_default() += 1;
            }
        }
        assert_eq!(exits.len(), 3);
        assert!(exits.values().all(|&n| n == 1));
    }
}
