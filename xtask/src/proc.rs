//! Child processes the checks start: each owned by a [`Child`] that stops
//! it (SIGTERM, up to 10 s, then SIGKILL) when dropped, so a failing check
//! leaves nothing running; and commands run to completion with their
//! output captured.

use crate::{Fail, Result};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped child has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running child process, its output going to a log file (read by
/// the check with [`tail`] when it fails).
pub struct Child {
    pub name: String,
    inner: Option<std::process::Child>,
}

impl Child {
    /// Start `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let inner = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                Fail(format!(
                    "cannot start {name} ({:?}): {e}",
                    cmd.get_program()
                ))
            })?;
        Ok(Child {
            name: name.to_string(),
            inner: Some(inner),
        })
    }

    pub fn pid(&self) -> u32 {
        self.inner.as_ref().map_or(0, std::process::Child::id)
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        match self.inner.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Wait up to `limit` for it to exit on its own: `None` if it is still
    /// running then.
    pub fn wait_for(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        let Some(c) = self.inner.as_mut() else {
            fail!("{} was already reaped", self.name);
        };
        loop {
            if let Some(st) = c.try_wait()? {
                self.inner = None;
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; the exit status if it
    /// exited within the grace.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let c = self.inner.as_mut()?;
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        let status = loop {
            match c.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break None;
                }
            }
        };
        self.inner = None;
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of `path` (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Is `prog` on PATH?
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Run `cmd` to completion: (success, stdout and stderr together).
pub fn output(cmd: &mut Command) -> Result<(bool, String)> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Fail(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    Ok((o.status.success(), text))
}

/// Run `cmd`; on failure, fail with `what` and its output.
pub fn check(what: &str, cmd: &mut Command) -> Result<String> {
    let (ok, text) = output(cmd)?;
    if !ok {
        fail!("{what}:\n{text}");
    }
    Ok(text)
}

/// Running as root (may install Debian packages)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `apt-get install` Debian packages, quietly.
pub fn apt_install(packages: &[&str], update: bool) -> Result<()> {
    if update {
        check(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]),
        )?;
    }
    check(
        &format!("apt-get install {}", packages.join(" ")),
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(packages),
    )?;
    Ok(())
}

/// Poll `ready` every `every` until it is true or `limit` has passed.
pub fn poll(
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if ready()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(every);
    }
}
