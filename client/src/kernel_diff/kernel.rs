//! The controller's end of the executor: spawning it, one command at a
//! time over its slot's pipes, replies read with a timeout.
//!
//! Each of the [`MAX_PROCS`] slots has a command pipe and a reply pipe,
//! created here before the executor starts, so that a `fork` in the
//! executor needs no fd passing: the child simply serves the next slot.

use super::{MAX_PROCS, NR_FILES};
use crate::error::CliError;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the executor may take to answer one command (a fork or a
/// maps read at `vm.max_map_count` takes milliseconds).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the executor reports once set up.
#[derive(Debug, Clone)]
pub struct Ready {
    /// `mm->start_brk`.
    pub start_brk: u64,
    /// The break (equal to `start_brk`: the executor leaves the heap alone).
    pub brk: u64,
    /// `vm.max_map_count`.
    pub max_map_count: u64,
    /// Inode of each memfd (`file=N`), to recognise its maps lines.
    pub inodes: [u64; NR_FILES],
    /// The executor's whole `/proc/self/maps`, each line followed by its
    /// smaps `VmFlags:` line.
    pub maps: String,
}

/// The result of one operation in the real process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KResult {
    /// Success, with the call's value (address, break, count, child pid).
    Ok(u64),
    /// Failure with this errno.
    Err(i32),
    /// Not performed: it could have hit the executor's own memory.
    Refused,
}

/// One reply: the result and the `V` lines (`RSS_KB ANON_KB MAPS_LINE`).
#[derive(Debug, Clone)]
pub struct KReply {
    /// The call's result.
    pub result: KResult,
    /// The VMAs of the compared region, as `(rss_kb, anon_kb, maps line)`.
    pub vmas: Vec<(Option<u64>, Option<u64>, String)>,
}

struct LineReader {
    file: File,
    buf: Vec<u8>,
    pos: usize,
}

impl LineReader {
    fn read_line(&mut self) -> Result<String, CliError> {
        loop {
            if let Some(nl) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + nl]).into_owned();
                self.pos += nl + 1;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(line);
            }
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, REPLY_TIMEOUT.as_millis() as i32) };
            if r == 0 {
                return Err(CliError::Other(format!(
                    "kernel-diff executor did not answer within {REPLY_TIMEOUT:?}"
                )));
            }
            let mut chunk = [0u8; 1 << 16];
            let n = match self.file.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CliError::Other(format!("executor pipe: {e}"))),
            };
            if n == 0 {
                return Err(CliError::Other(
                    "kernel-diff executor exited unexpectedly (see its message above)".into(),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A running executor.
pub struct Kernel {
    child: Child,
    cmd: Vec<File>,
    reply: Vec<LineReader>,
    /// Its setup report.
    pub ready: Ready,
}

fn pipe() -> Result<(File, File), CliError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: freshly created, owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

fn inherit(f: &File) -> Result<(), CliError> {
    // SAFETY: clears FD_CLOEXEC on an fd we own, so the executor inherits it.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

impl Kernel {
    /// Start `exe __kernel-diff-executor` and wait for its setup report.
    pub fn spawn(exe: &Path) -> Result<Kernel, CliError> {
        let mut theirs = Vec::new();
        let mut cmd = Vec::new();
        let mut reply = Vec::new();
        let mut fds = Vec::new();
        for _ in 0..MAX_PROCS {
            let (cr, cw) = pipe()?;
            let (rr, rw) = pipe()?;
            inherit(&cr)?;
            inherit(&rw)?;
            fds.push(cr.as_raw_fd().to_string());
            fds.push(rw.as_raw_fd().to_string());
            theirs.push(cr);
            theirs.push(rw);
            cmd.push(cw);
            reply.push(LineReader {
                file: rr,
                buf: Vec::new(),
                pos: 0,
            });
        }
        let child = Command::new(exe)
            .arg("__kernel-diff-executor")
            .arg("--fds")
            .arg(fds.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                CliError::Other(format!("cannot start the executor {}: {e}", exe.display()))
            })?;
        // Our copies of its ends go, so its exit is our EOF.
        drop(theirs);
        let mut k = Kernel {
            child,
            cmd,
            reply,
            ready: Ready {
                start_brk: 0,
                brk: 0,
                max_map_count: 0,
                inodes: [0; NR_FILES],
                maps: String::new(),
            },
        };
        let first = k.reply[0].read_line()?;
        let t: Vec<&str> = first.split_whitespace().collect();
        let bad = || CliError::Other(format!("executor: unexpected setup line {first:?}"));
        if t.len() != 4 + NR_FILES || t[0] != "ready" {
            return Err(bad());
        }
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
        k.ready.start_brk = hex(t[1])?;
        k.ready.brk = hex(t[2])?;
        k.ready.max_map_count = t[3].parse().map_err(|_| bad())?;
        for i in 0..NR_FILES {
            k.ready.inodes[i] = t[4 + i].parse().map_err(|_| bad())?;
        }
        loop {
            let l = k.reply[0].read_line()?;
            if l == "." {
                break;
            }
            if let Some(m) = l.strip_prefix("M ") {
                k.ready.maps.push_str(m);
                k.ready.maps.push('\n');
            }
        }
        Ok(k)
    }

    /// Send one command line to `slot`.
    pub fn send(&mut self, slot: usize, line: &str) -> Result<(), CliError> {
        self.cmd[slot]
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| CliError::Other(format!("executor pipe: {e}")))
    }

    /// Read one reply from `slot`.
    pub fn recv(&mut self, slot: usize) -> Result<KReply, CliError> {
        let r = &mut self.reply[slot];
        let first = r.read_line()?;
        let t: Vec<&str> = first.split_whitespace().collect();
        let result = match t.as_slice() {
            ["r", "ok", v] => KResult::Ok(u64::from_str_radix(v, 16).unwrap_or(0)),
            ["r", "err", e] => KResult::Err(e.parse().unwrap_or(0)),
            ["r", "refused"] => KResult::Refused,
            _ => {
                return Err(CliError::Other(format!(
                    "executor: unexpected reply {first:?}"
                )));
            }
        };
        let mut vmas = Vec::new();
        loop {
            let l = r.read_line()?;
            if l == "." {
                break;
            }
            let Some(rest) = l.strip_prefix("V ") else {
                continue;
            };
            let mut it = rest.splitn(3, ' ');
            let rss = it.next().and_then(|v| v.parse().ok());
            let anon = it.next().and_then(|v| v.parse().ok());
            vmas.push((rss, anon, it.next().unwrap_or("").to_string()));
        }
        Ok(KReply { result, vmas })
    }

    /// Send a command and read its reply.
    pub fn call(&mut self, slot: usize, line: &str) -> Result<KReply, CliError> {
        self.send(slot, line)?;
        self.recv(slot)
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // Closing the command pipes makes every executor process exit.
        self.cmd.clear();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
