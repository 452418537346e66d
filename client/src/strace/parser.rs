//! Lines into calls: the pid and timestamp prefix, `<unfinished ...>` /
//! `<... resumed>` pairs joined per task in the order they *started*,
//! `+++ exited +++` / `+++ killed +++` folded with the exit syscall, and
//! the lines that are skipped on purpose (signals, `strace:` messages).

use super::decode::{parse_call, signal_number};
use super::scan::call_name;
use super::{ParseError, Syscall, TraceLine};
use std::collections::{HashMap, HashSet};

/// A syscall whose first half (`<unfinished ...>`) was seen.
pub(super) struct Pending {
    slot: usize,
    line_no: usize,
    name: String,
    text: String,
}

#[derive(Default)]
pub(super) struct Parser {
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

    pub(super) fn line(&mut self, line_no: usize, raw: &str) {
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

    pub(super) fn finish(mut self) -> (Vec<TraceLine>, Vec<ParseError>) {
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
pub(super) fn finish_without_result(head: &str, name: &str) -> Syscall {
    let head = head.trim_end().trim_end_matches(',');
    parse_call(&format!("{head}) = ?")).unwrap_or_else(|_| Syscall::Other {
        name: name.to_string(),
        ret: None,
    })
}

/// Splits off `PID `, `[pid PID] `, `PID<comm> ` and timestamps.
pub(super) fn split_prefix(line: &str) -> Result<(Option<u32>, &str), String> {
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
