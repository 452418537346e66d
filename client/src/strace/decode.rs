//! One call's text into a [`Syscall`]: numbers, `PROT_*`/`MAP_*`/
//! `MREMAP_*` names (the proto crate's tables), fds with their `-y` path,
//! return values (`= -1 ENOMEM (...)`, `= ?`) and signal names.

use super::Syscall;
use super::scan::{call_name, scan_args, skip_annotation, strip_comments, unescape};
use vmasim_proto::linux::map::MAP_HUGE_SHIFT;
use vmasim_proto::linux::{MAP_NAMES, MREMAP_NAMES, PROT_NAMES};

/// Signal numbers (x86-64) for `+++ killed by SIGxxx +++`.
pub(super) const SIGNALS: &[(&str, i64)] = &[
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

/// A non-negative number: `NULL`, `0x1f`, `4096` (comments allowed).
pub(super) fn parse_num(s: &str) -> Result<u64, String> {
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
pub(super) fn parse_flags(s: &str, table: &[(&str, u32)]) -> Result<u32, String> {
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
pub(super) fn parse_fd(s: &str) -> Result<(i64, Option<String>), String> {
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

/// A decoded return value.
pub(super) enum Ret {
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
pub(super) fn strip_duration(s: &str) -> &str {
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

pub(super) fn parse_ret(s: &str) -> Result<Ret, String> {
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

pub(super) fn child_pid(ret: &Ret) -> Result<u32, String> {
    match ret {
        Ret::Num(v) => u32::try_from(*v).map_err(|_| format!("pid {v} out of range")),
        Ret::Err(e) => Err(e.clone()),
        Ret::Unknown => Err("?".to_string()),
    }
}

pub(super) fn arg<'a>(args: &[&'a str], i: usize, name: &str) -> Result<&'a str, String> {
    args.get(i)
        .copied()
        .ok_or_else(|| format!("{name}: missing argument {}", i + 1))
}

/// Parses one complete call: `name(args) = ret`.
pub(super) fn parse_call(text: &str) -> Result<Syscall, String> {
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

pub(super) fn signal_number(sig: &str) -> Option<i64> {
    if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == sig) {
        return Some(n);
    }
    // SIGRTMIN (32 in the kernel's numbering, strace prints SIGRT_n = 32+n)
    let n: i64 = sig.strip_prefix("SIGRT_")?.parse().ok()?;
    (0..=32).contains(&n).then_some(32 + n)
}
