//! The recording file format (`vmasim record`), version 1: JSON lines.
//!
//! One JSON object per line, each with an `"ev"` tag, in the order the
//! tracer saw the events (the kernel's order for one task; across tasks,
//! the order their ptrace stops were reported). Lines are flushed as they
//! are made, so a recording cut short (the recorder killed) is still
//! readable up to its last complete line; a missing `end` line says so.
//!
//! ```text
//! {"ev":"header","format":"vmasim-record","version":1,"kernel":"6.18.44","machine":"x86_64",
//!  "page_size":4096,"command":["python3","-c","import json"],"recorder":"vmasim 0.1.0","started_unix_ms":..}
//! {"ev":"exec","tid":T,"mm":1,"old_mm":0,"path":"/usr/bin/python3","start_brk":N,"maps":[..],"vmflags":[..]}
//! {"ev":"call","tid":T,"mm":1,"name":"mmap","nr":9,"args":[a0,..,a5],"ret":R,"errno":"ENOMEM"?,"file":{..}?}
//! {"ev":"clone","tid":T,"mm":1,"name":"clone3","flags":F,"child":C,"child_mm":2}
//! {"ev":"maps","tid":T,"mm":1,"why":"exit","quiescent":true,"maps":[..],"vmflags":[..]}
//! {"ev":"exit","tid":T,"mm":1,"status":S}
//! {"ev":"mm_end","mm":1}
//! {"ev":"end","status":S,"signal":null,"calls":N,"duration_ms":D}
//! ```
//!
//! Every line after the header also has `"t_us"`: microseconds since the
//! recording started, when the tracer saw the event (what `load --trace
//! --speed` paces a replay by; it includes the tracer's own overhead).
//!
//! * `mm` numbers address spaces (the kernel's `mm_struct`s), not
//!   processes: a `CLONE_VM` child (a thread, or `vfork`/`posix_spawn`'s
//!   child until it execs) shares its parent's `mm`; `execve` and a fork
//!   without `CLONE_VM` make a new one. `mm` 0 is the recorder's own child
//!   before its first `execve` (never recorded).
//! * `maps` are `/proc/TID/maps` lines as the kernel printed them (from
//!   `smaps`, read in the same pass), `vmflags` the matching `VmFlags:`
//!   line of `smaps` for each (the flags maps does not show: `ac` =
//!   `VM_ACCOUNT`, `nr` = `VM_NORESERVE`, `nh` = `VM_NOHUGEPAGE`, `gd` =
//!   `VM_GROWSDOWN`, ...).
//! * `call` args are the six syscall argument registers at entry; `ret` is
//!   the raw return value (`-errno` on error, with `errno` naming it). A
//!   file mapping's `file` is the line `/proc/TID/maps` shows for the new
//!   mapping (`dev`, `inode`, `path`), read right after the call, so it
//!   names the file exactly as the exec snapshot's lines do. A successful
//!   `mremap` has `anon_kb`, the `Anonymous:` kB smaps gives the VMA at
//!   its result: page faults are not syscalls and are not recorded, but
//!   whether the moved VMA was faulted (has an `anon_vma`) decides where
//!   `copy_vma` puts its `vm_pgoff` and so what it merges with.
//! * `clone` is written when the kernel reports the new task (before the
//!   child can run), with the flags of `clone`/`clone3` (`fork` is
//!   `SIGCHLD`, `vfork` is `CLONE_VM | CLONE_VFORK | SIGCHLD`).
//! * `maps` with `why: "execve"` is taken at `execve` entry (the old `mm`'s
//!   last state if the exec succeeds), `why: "exit"` at the
//!   `PTRACE_EVENT_EXIT` of the last task using the `mm`. `quiescent` is
//!   true when no other task could change the `mm` while it was read.
//! * `exit` has the `PTRACE_EVENT_EXIT` status (a `wait` status);
//!   `mm_end` says the `mm` has no task left.

use serde::{Deserialize, Serialize};

/// The `format` value of the header.
pub const FORMAT_NAME: &str = "vmasim-record";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A file mapping's file, as `/proc/PID/maps` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// `major:minor`, hexadecimal, as maps prints it.
    pub dev: String,
    /// Inode number.
    pub inode: u64,
    /// Path (may end in ` (deleted)`).
    pub path: String,
}

impl FileRef {
    /// The file columns of a maps line (`None` for anonymous memory).
    pub fn from_maps_line(line: &str) -> Option<FileRef> {
        // Five space-separated columns, then the path (which may contain
        // spaces), as `show_map_vma` prints them.
        let mut rest = line;
        let mut cols = [""; 5];
        for c in &mut cols {
            rest = rest.trim_start_matches(' ');
            let end = rest.find(' ')?;
            (*c, rest) = rest.split_at(end);
        }
        let inode: u64 = cols[4].parse().ok()?;
        let path = rest.trim_start_matches(' ').to_string();
        (inode != 0).then(|| FileRef {
            dev: cols[3].to_string(),
            inode,
            path,
        })
    }
}

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// First line.
    Header {
        /// [`FORMAT_NAME`].
        format: String,
        /// [`FORMAT_VERSION`].
        version: u32,
        /// `uname -r` of the recording machine.
        kernel: String,
        /// `uname -m`.
        machine: String,
        /// Page size in bytes.
        page_size: u64,
        /// The recorded command line.
        command: Vec<String>,
        /// Name and version of the recorder.
        recorder: String,
        /// Wall-clock start, ms since the Unix epoch.
        started_unix_ms: u64,
    },
    /// A successful `execve`: `mm` is new, its maps right after the exec.
    Exec {
        /// The task (after the exec: the thread group leader's id).
        tid: u32,
        /// The new address space.
        mm: u64,
        /// The address space the task left (0: the recorder's child).
        old_mm: u64,
        /// `/proc/TID/exe`.
        path: String,
        /// `start_brk` (`/proc/TID/stat` field 47); `brk` equals it here.
        start_brk: u64,
        /// Maps lines.
        maps: Vec<String>,
        /// `VmFlags` per maps line.
        vmflags: Vec<String>,
    },
    /// A memory-related syscall that returned.
    Call {
        /// The calling task.
        tid: u32,
        /// Its address space.
        mm: u64,
        /// Syscall name.
        name: String,
        /// Syscall number (x86-64).
        nr: u64,
        /// The six argument registers at entry.
        args: [u64; 6],
        /// Raw return value (`-errno` on failure).
        ret: i64,
        /// The errno's name when the call failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errno: Option<String>,
        /// For a file mapping that succeeded: the new mapping's file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FileRef>,
        /// For a successful `mremap`: the `Anonymous:` kB of the VMA at
        /// its result (smaps), i.e. whether the program had faulted it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anon_kb: Option<u64>,
    },
    /// A new task (thread or process).
    Clone {
        /// The parent task.
        tid: u32,
        /// The parent's address space.
        mm: u64,
        /// `clone`, `clone3`, `fork` or `vfork`.
        name: String,
        /// Clone flags (see the module docs for fork/vfork).
        flags: u64,
        /// The new task.
        child: u32,
        /// The child's address space: `mm` itself with `CLONE_VM`, else a
        /// new one, a copy of `mm` at this point (`dup_mmap`).
        child_mm: u64,
    },
    /// A maps snapshot.
    Maps {
        /// The task whose `/proc/TID/smaps` was read.
        tid: u32,
        /// Its address space.
        mm: u64,
        /// `execve` (at entry) or `exit` (last task's `PTRACE_EVENT_EXIT`).
        why: String,
        /// No other live task could change `mm` during the read.
        quiescent: bool,
        /// Maps lines.
        maps: Vec<String>,
        /// `VmFlags` per maps line.
        vmflags: Vec<String>,
    },
    /// A task is exiting (`PTRACE_EVENT_EXIT`).
    Exit {
        /// The task.
        tid: u32,
        /// Its address space.
        mm: u64,
        /// Wait status (`WIFEXITED`/`WIFSIGNALED` encoding).
        status: i32,
    },
    /// No task uses `mm` any more.
    MmEnd {
        /// The address space.
        mm: u64,
    },
    /// Last line: the recording is complete.
    End {
        /// Exit code of the recorded command (when it exited).
        #[serde(default)]
        status: Option<i32>,
        /// Signal number that killed it (when it was killed).
        #[serde(default)]
        signal: Option<i32>,
        /// Number of `call` lines.
        calls: u64,
        /// Recording time in milliseconds.
        duration_ms: u64,
    },
}

/// One line as written: the event and its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Microseconds since the recording started (0 in the header).
    #[serde(default)]
    pub t_us: u64,
    /// The event.
    #[serde(flatten)]
    pub ev: Event,
}

/// One event read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// 1-based line number in the file.
    pub line: usize,
    /// Microseconds since the recording started.
    pub t_us: u64,
    /// The event.
    pub ev: Event,
}

/// A recording read back.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Events after the header, in file order.
    pub events: Vec<Timed>,
    /// The header's command.
    pub command: Vec<String>,
    /// The header's kernel.
    pub kernel: String,
    /// `false` when the `end` line is missing (the recorder was stopped).
    pub complete: bool,
    /// A last line that was cut in the middle (ignored), by line number.
    pub truncated_line: Option<usize>,
}

/// A file that is not a recording, or a damaged one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct FormatError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Does this text look like a recording (rather than an strace log)?
pub fn is_recording(text: &str) -> bool {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    first.trim_start().starts_with('{') && first.contains(FORMAT_NAME)
}

/// Parses a recording. A malformed line is an error, except a last line
/// without its newline (a recorder killed mid-write), which is dropped
/// and reported in [`Recording::truncated_line`].
pub fn parse(text: &str) -> Result<Recording, FormatError> {
    let mut rec = Recording::default();
    let mut header = false;
    let ends_with_newline = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (i, raw) in lines.iter().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let Line { t_us, ev } = match serde_json::from_str(raw) {
            Ok(e) => e,
            Err(_) if i + 1 == lines.len() && !ends_with_newline && header => {
                rec.truncated_line = Some(line);
                break;
            }
            Err(e) => {
                return Err(FormatError {
                    line,
                    reason: format!("not a recording event: {e}"),
                });
            }
        };
        match ev {
            Event::Header {
                format,
                version,
                kernel,
                command,
                ..
            } => {
                if header {
                    return Err(FormatError {
                        line,
                        reason: "second header".into(),
                    });
                }
                if format != FORMAT_NAME {
                    return Err(FormatError {
                        line,
                        reason: format!("format {format:?} is not {FORMAT_NAME:?}"),
                    });
                }
                if version != FORMAT_VERSION {
                    return Err(FormatError {
                        line,
                        reason: format!(
                            "format version {version}; this vmasim reads version {FORMAT_VERSION}"
                        ),
                    });
                }
                header = true;
                rec.kernel = kernel;
                rec.command = command;
            }
            _ if !header => {
                return Err(FormatError {
                    line,
                    reason: "the first line must be the header".into(),
                });
            }
            Event::End { .. } => {
                rec.complete = true;
                rec.events.push(Timed { line, t_us, ev });
            }
            ev => rec.events.push(Timed { line, t_us, ev }),
        }
    }
    if !header {
        return Err(FormatError {
            line: 1,
            reason: "no header line: not a vmasim recording".into(),
        });
    }
    Ok(rec)
}

/// The text a `Spawn` imports for a snapshot: each maps line followed by
/// its smaps `VmFlags:` line (the server takes smaps text), so the
/// simulated VMAs get the flags maps does not show.
pub fn spawn_text(maps: &[String], vmflags: &[String]) -> String {
    let mut t = String::new();
    for (i, l) in maps.iter().enumerate() {
        t.push_str(l);
        t.push('\n');
        if let Some(f) = vmflags.get(i).filter(|f| !f.is_empty()) {
            t.push_str("VmFlags: ");
            t.push_str(f);
            t.push('\n');
        }
    }
    t
}

/// One maps line, as `replay --check` compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// `rwxp`.
    pub perms: String,
    /// Offset column.
    pub offset: u64,
    /// Path column (empty if none).
    pub path: String,
}

impl MapsLine {
    /// Parses one `/proc/PID/maps` line.
    pub fn parse(l: &str) -> Option<MapsLine> {
        let mut rest = l.trim_start();
        let mut field = || {
            rest = rest.trim_start_matches(' ');
            let end = rest.find(' ').unwrap_or(rest.len());
            let (f, r) = rest.split_at(end);
            rest = r;
            f
        };
        let range = field();
        let perms = field().to_string();
        let offset = u64::from_str_radix(field(), 16).ok()?;
        let _dev = field();
        let _inode = field();
        let path = rest.trim_start_matches(' ').to_string();
        let (s, e) = range.split_once('-')?;
        Some(MapsLine {
            start: u64::from_str_radix(s, 16).ok()?,
            end: u64::from_str_radix(e, 16).ok()?,
            perms,
            offset,
            path,
        })
    }

    /// The compared columns, maps-like.
    pub fn short(&self) -> String {
        format!(
            "{:08x}-{:08x} {} {:08x} {}",
            self.start, self.end, self.perms, self.offset, self.path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> String {
        serde_json::to_string(&Event::Header {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            kernel: "6.18".into(),
            machine: "x86_64".into(),
            page_size: 4096,
            command: vec!["true".into()],
            recorder: "t".into(),
            started_unix_ms: 0,
        })
        .unwrap()
    }

    #[test]
    fn round_trip_and_truncated_last_line() {
        let call = Event::Call {
            tid: 7,
            mm: 1,
            name: "mmap".into(),
            nr: 9,
            args: [0, 4096, 3, 0x22, u64::MAX, 0],
            ret: 0x7f00_0000_0000,
            errno: None,
            file: None,
            anon_kb: None,
        };
        let line = Line {
            t_us: 1500,
            ev: call.clone(),
        };
        let text = format!(
            "{}\n{}\n{{\"ev\":\"ca",
            header(),
            serde_json::to_string(&line).unwrap()
        );
        assert!(is_recording(&text));
        let r = parse(&text).unwrap();
        assert_eq!(
            r.events,
            vec![Timed {
                line: 2,
                t_us: 1500,
                ev: call
            }]
        );
        assert_eq!(r.truncated_line, Some(3));
        assert!(!r.complete);
        // A damaged line in the middle is an error naming it.
        let bad = format!("{}\nnot json\n", header());
        assert_eq!(parse(&bad).unwrap_err().line, 2);
        // Another version is refused with both numbers.
        let v2 = header().replace("\"version\":1", "\"version\":2");
        let e = parse(&v2).unwrap_err();
        assert!(e.reason.contains("version 2") && e.reason.contains("version 1"));
        assert!(!is_recording("1234  mmap(NULL, 4096, ...) = 0x7f00\n"));
    }

    #[test]
    fn file_ref_of_maps_line() {
        let f = FileRef::from_maps_line(
            "7f1c2a000000-7f1c2a022000 r--p 00000000 fe:01 1234                       /usr/lib/my lib.so",
        )
        .unwrap();
        assert_eq!(f.dev, "fe:01");
        assert_eq!(f.inode, 1234);
        assert_eq!(f.path, "/usr/lib/my lib.so");
        assert!(FileRef::from_maps_line("7f00-7f01 rw-p 00000000 00:00 0 ").is_none());
        assert!(FileRef::from_maps_line("7f00-7f01 r--p 00000000 00:00 0    [vvar]").is_none());
    }

    #[test]
    fn maps_line_parses_kernel_text() {
        let l = MapsLine::parse(
            "7f1c2a000000-7f1c2a022000 r--p 00001000 fe:01 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(l.start, 0x7f1c_2a00_0000);
        assert_eq!(l.end, 0x7f1c_2a02_2000);
        assert_eq!(l.perms, "r--p");
        assert_eq!(l.offset, 0x1000);
        assert_eq!(l.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        let a = MapsLine::parse("7ffd0000-7ffd1000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(a.path, "");
    }
}
