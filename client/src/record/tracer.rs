//! The ptrace loop of `vmasim record`: runs a command, follows every task
//! it creates, and writes the recording (see [`super::format`]).
//!
//! Shape, and why:
//!
//! * The command is started with `PTRACE_TRACEME` and a `SIGSTOP` before
//!   its `execve`, so the options (`TRACESYSGOOD`, `TRACECLONE`/`FORK`/
//!   `VFORK`, `TRACEEXEC`, `TRACEEXIT`, `EXITKILL`) are set before it runs
//!   any code of its own; children inherit them and are attached by the
//!   kernel before they run.
//! * Every task runs under `PTRACE_SYSCALL`; `PTRACE_GET_SYSCALL_INFO`
//!   tells entry from exit (no per-task toggling to get wrong around
//!   `execve`, signals and new tasks) and gives the entry arguments.
//! * A new task's first stop can be reported before its parent's
//!   `PTRACE_EVENT_CLONE`: it is held (not resumed) until the parent's
//!   event says which address space it belongs to, so none of its calls
//!   can be seen before the `clone` line that creates its `mm`.
//! * Address spaces (`mm`) are tracked apart from processes: a
//!   `CLONE_VM` child shares its parent's, `execve` leaves it. An `mm`
//!   counts its live tasks; the last one's `PTRACE_EVENT_EXIT` takes the
//!   final snapshot (the task still holds the `mm` there: `exit_mm`
//!   comes later in `do_exit`).
//! * Every line is flushed when written, so a recorder that is killed
//!   leaves a recording readable to its last event. `SIGINT`/`SIGQUIT`
//!   are ignored by the recorder while the command runs (the terminal
//!   sends them to the command too; it decides, the recorder records).
//!
//! All ptrace requests must come from the thread that started the
//! command (the tracer is a thread, not a process): [`record`] is
//! synchronous and must be called on one thread throughout.

use super::format::{Event, FORMAT_NAME, FORMAT_VERSION, FileRef, Line};
use super::procfs;
use super::syscalls::{self, FORK_FLAGS, Kind, PR_SET_VMA, VFORK_FLAGS};
use nix::errno::Errno;
use nix::libc;
use nix::sys::ptrace::{self, Event as PEvent, Options};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execv, fork};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::time::{Duration, Instant};

/// What a recording run is asked to do.
pub struct RecordOptions {
    /// Command and arguments (`argv[0]` is looked up in `PATH`).
    pub command: Vec<String>,
    /// Show a spinner with counts on stderr.
    pub progress: bool,
}

/// What a recording run did.
#[derive(Debug, Default, Clone)]
pub struct RecordSummary {
    /// `call` lines written.
    pub calls: u64,
    /// Calls by name.
    pub by_name: std::collections::BTreeMap<String, u64>,
    /// Address spaces seen (exec'd or forked).
    pub mms: u64,
    /// Tasks seen (processes and threads).
    pub tasks: u64,
    /// Exit code of the command, if it exited.
    pub status: Option<i32>,
    /// Signal that killed the command, if one did.
    pub signal: Option<i32>,
    /// Lines written.
    pub lines: u64,
}

/// Per traced task.
#[derive(Debug)]
struct Task {
    /// Address space.
    mm: u64,
    /// Entry of the syscall it is in: (nr, args, clone3 flags).
    entry: Option<(u64, [u64; 6])>,
    /// Its first (attach) `SIGSTOP` is still to come and must be eaten.
    fresh: bool,
    /// `PTRACE_EVENT_EXIT` seen.
    exiting: bool,
    /// Suspended in a `CLONE_VFORK` clone until its child execs or exits
    /// (`wait_for_vfork_done`): it cannot change the mm meanwhile.
    vfork_wait: bool,
}

/// Per address space.
#[derive(Debug, Default)]
struct Mm {
    /// Tasks using it that have not reached `PTRACE_EVENT_EXIT`.
    live: usize,
    /// The task inside a serialized call (see [`Tracer::serialize`]).
    busy: Option<Pid>,
    /// Tasks held at the entry of a serialized call, in arrival order.
    waiting: std::collections::VecDeque<Pid>,
}

struct Tracer<W: Write> {
    out: W,
    tasks: HashMap<Pid, Task>,
    mms: HashMap<u64, Mm>,
    next_mm: u64,
    /// Stopped tasks no parent event has announced yet (held).
    held: HashSet<Pid>,
    root: Pid,
    started: Instant,
    summary: RecordSummary,
    bar: indicatif::ProgressBar,
}

/// Runs `o.command` under ptrace, writing the recording to `out`.
pub fn record<W: Write>(o: &RecordOptions, out: W) -> Result<RecordSummary, String> {
    let Some(argv0) = o.command.first() else {
        return Err("no command to record".into());
    };
    let path = find_in_path(argv0).ok_or_else(|| format!("{argv0}: command not found"))?;
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{argv0}: NUL in path"))?;
    let cargs = o
        .command
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| format!("NUL in argument {a:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let (kernel, machine) = procfs::uname();
    if machine != "x86_64" {
        return Err(format!(
            "vmasim record reads x86-64 syscalls; this machine is {machine}"
        ));
    }
    let started = Instant::now();

    // SAFETY: between fork and execv the child only makes async-signal-safe
    // calls (ptrace, raise, execv, _exit) on memory prepared before the
    // fork, which is all that is allowed after fork in a multi-threaded
    // parent (the tokio runtime has threads).
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let _ = ptrace::traceme();
            let _ = signal::raise(Signal::SIGSTOP);
            let _ = execv(&cpath, &cargs);
            // SAFETY: _exit is async-signal-safe; 127 is the shell's
            // "command could not be run".
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    // The recorder ignores the terminal's interrupts while the command runs.
    // SAFETY: SIG_IGN installs no handler code.
    let old_int = unsafe { signal::signal(Signal::SIGINT, SigHandler::SigIgn) }.ok();
    let old_quit = unsafe { signal::signal(Signal::SIGQUIT, SigHandler::SigIgn) }.ok();

    let bar = if o.progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} recording {msg} ({elapsed})")
                .expect("static template"),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut t = Tracer {
        out,
        tasks: HashMap::new(),
        mms: HashMap::new(),
        next_mm: 1,
        held: HashSet::new(),
        root: child,
        started,
        summary: RecordSummary::default(),
        bar,
    };
    let result = t.run(o, child, &kernel, &machine, started);
    t.bar.finish_and_clear();
    // SAFETY: restores the dispositions saved above.
    unsafe {
        if let Some(h) = old_int {
            let _ = signal::signal(Signal::SIGINT, h);
        }
        if let Some(h) = old_quit {
            let _ = signal::signal(Signal::SIGQUIT, h);
        }
    }
    result.map(|()| t.summary)
}

/// `argv[0]` as `execvp` would find it.
fn find_in_path(cmd: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        let p = std::path::PathBuf::from(cmd);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| is_exec(p))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl<W: Write> Tracer<W> {
    fn emit(&mut self, ev: &Event) -> Result<(), String> {
        let mut line = if matches!(ev, Event::Header { .. }) {
            serde_json::to_string(ev)
        } else {
            serde_json::to_string(&Line {
                t_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
                ev: ev.clone(),
            })
        }
        .map_err(|e| e.to_string())?;
        line.push('\n');
        // Flushed per line: see the module docs.
        self.out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|e| format!("cannot write the recording: {e}"))?;
        self.summary.lines += 1;
        Ok(())
    }

    fn run(
        &mut self,
        o: &RecordOptions,
        child: Pid,
        kernel: &str,
        machine: &str,
        started: Instant,
    ) -> Result<(), String> {
        // The child's SIGSTOP before execve.
        match waitpid(child, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {}
            Ok(s) => return Err(format!("the command did not start under ptrace: {s:?}")),
            Err(e) => return Err(format!("waitpid: {e}")),
        }
        ptrace::setoptions(
            child,
            Options::PTRACE_O_TRACESYSGOOD
                | Options::PTRACE_O_TRACECLONE
                | Options::PTRACE_O_TRACEFORK
                | Options::PTRACE_O_TRACEVFORK
                | Options::PTRACE_O_TRACEEXEC
                | Options::PTRACE_O_TRACEEXIT
                | Options::PTRACE_O_EXITKILL,
        )
        .map_err(|e| {
            let _ = signal::kill(child, Signal::SIGKILL);
            format!("ptrace(PTRACE_SETOPTIONS): {e} (is ptrace allowed here?)")
        })?;
        self.emit(&Event::Header {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            kernel: kernel.into(),
            machine: machine.into(),
            page_size: 4096,
            command: o.command.clone(),
            recorder: format!("vmasim {}", env!("CARGO_PKG_VERSION")),
            started_unix_ms: now_ms(),
        })?;
        self.tasks.insert(
            child,
            Task {
                mm: 0,
                entry: None,
                fresh: false,
                exiting: false,
                vfork_wait: false,
            },
        );
        self.mms.insert(
            0,
            Mm {
                live: 1,
                ..Mm::default()
            },
        );
        self.summary.tasks = 1;
        resume(child, None);
        loop {
            let st = match waitpid(None, Some(WaitPidFlag::__WALL)) {
                Ok(s) => s,
                Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("waitpid: {e}")),
            };
            self.on_stop(st)?;
            self.bar.set_message(format!(
                "{} calls, {} address spaces, {} tasks live",
                self.summary.calls,
                self.summary.mms,
                self.tasks.len()
            ));
        }
        let calls = self.summary.calls;
        let (status, signal) = (self.summary.status, self.summary.signal);
        self.emit(&Event::End {
            status,
            signal,
            calls,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn on_stop(&mut self, st: WaitStatus) -> Result<(), String> {
        match st {
            WaitStatus::PtraceSyscall(pid) if self.on_syscall(pid)? => resume(pid, None),
            WaitStatus::PtraceSyscall(_) => {} // held: see `serialize`
            WaitStatus::PtraceEvent(pid, _, ev) => {
                self.on_event(pid, ev)?;
                resume(pid, None);
            }
            WaitStatus::Stopped(pid, sig) => match self.tasks.get_mut(&pid) {
                None => {
                    // A new task reported before its parent's event: held.
                    self.held.insert(pid);
                }
                Some(t) if t.fresh && sig == Signal::SIGSTOP => {
                    t.fresh = false;
                    resume(pid, None);
                }
                Some(_) => resume(pid, Some(sig)),
            },
            WaitStatus::Exited(pid, code) => {
                if pid == self.root {
                    self.summary.status = Some(code);
                }
                self.gone(pid)?;
            }
            WaitStatus::Signaled(pid, sig, _) => {
                if pid == self.root {
                    self.summary.signal = Some(sig as i32);
                }
                self.gone(pid)?;
            }
            WaitStatus::Continued(_) | WaitStatus::StillAlive => {}
            #[allow(unreachable_patterns)]
            _ => {}
        }
        Ok(())
    }

    /// A task is gone (reaped). If it never reached `PTRACE_EVENT_EXIT`
    /// (killed by `SIGKILL`, which skips the stop), its `mm` loses it here.
    fn gone(&mut self, pid: Pid) -> Result<(), String> {
        if let Some(t) = self.tasks.remove(&pid) {
            self.release(t.mm, pid);
            if !t.exiting {
                self.leave_mm(t.mm)?;
            }
        }
        Ok(())
    }

    /// `pid` left its serialized call (returned, exited or died): the
    /// next held task of `mm` may enter its own.
    fn release(&mut self, mm: u64, pid: Pid) {
        let Some(m) = self.mms.get_mut(&mm) else {
            return;
        };
        m.waiting.retain(|p| *p != pid);
        if m.busy != Some(pid) {
            return;
        }
        m.busy = None;
        while let Some(next) = m.waiting.pop_front() {
            if self.tasks.contains_key(&next) {
                m.busy = Some(next);
                resume(next, None);
                break;
            }
        }
    }

    /// One task less in `mm`; `mm_end` when it was the last.
    fn leave_mm(&mut self, mm: u64) -> Result<(), String> {
        let Some(m) = self.mms.get_mut(&mm) else {
            return Ok(());
        };
        m.live = m.live.saturating_sub(1);
        if m.live == 0 {
            self.mms.remove(&mm);
            if mm != 0 {
                self.emit(&Event::MmEnd { mm })?;
            }
        }
        Ok(())
    }

    fn new_mm(&mut self) -> u64 {
        let id = self.next_mm;
        self.next_mm += 1;
        self.mms.insert(id, Mm::default());
        self.summary.mms += 1;
        id
    }

    /// One serialized call per `mm` at a time, so the recorded order is
    /// the kernel's: ptrace reports each thread's stops in its own order,
    /// but two threads' calls can finish in the kernel (under `mmap_lock`)
    /// in one order and reach their exit stops in the other. A thread
    /// that enters an address-space call while another thread of its `mm`
    /// is inside one is held at its entry stop (it holds no lock there)
    /// until that one's exit stop. `clone`, `execve` and `exit` are not
    /// serialized: `vfork` waits for its child, `execve` for its sibling
    /// threads to die, and the child or siblings must be able to run.
    fn serialize(&mut self, pid: Pid, mm: u64, nr: u64) -> bool {
        if !matches!(syscalls::lookup(nr), Some((_, Kind::Call))) {
            return true;
        }
        let Some(m) = self.mms.get_mut(&mm) else {
            return true;
        };
        match m.busy {
            Some(other) if other != pid => {
                m.waiting.push_back(pid);
                false
            }
            _ => {
                m.busy = Some(pid);
                true
            }
        }
    }

    /// Handles a syscall stop; `false` when the task is held (not resumed).
    fn on_syscall(&mut self, pid: Pid) -> Result<bool, String> {
        let info = match syscall_info(pid) {
            Ok(i) => i,
            Err(_) => return Ok(true), // died meanwhile
        };
        let Some(task) = self.tasks.get_mut(&pid) else {
            return Ok(true);
        };
        match info.op {
            libc::PTRACE_SYSCALL_INFO_ENTRY => {
                // SAFETY: op ENTRY says the kernel filled the `entry` member.
                let e = unsafe { info.u.entry };
                task.entry = Some((e.nr, e.args));
                let mm = task.mm;
                if !self.serialize(pid, mm, e.nr) {
                    return Ok(false);
                }
                if matches!(syscalls::lookup(e.nr), Some((_, Kind::Exec))) && mm != 0 {
                    // The old mm's last state if the exec succeeds.
                    // Quiescent: every other task of the mm is a vfork
                    // parent waiting for this child (or there is none).
                    let quiescent = self.mms.get(&mm).is_some_and(|m| {
                        m.live
                            == 1 + self
                                .tasks
                                .iter()
                                .filter(|(p, t)| **p != pid && t.mm == mm && t.vfork_wait)
                                .count()
                    });
                    if let Ok(s) = procfs::snapshot(pid.as_raw()) {
                        self.emit(&Event::Maps {
                            tid: pid.as_raw() as u32,
                            mm,
                            why: "execve".into(),
                            quiescent,
                            maps: s.maps,
                            vmflags: s.vmflags,
                        })?;
                    }
                }
            }
            libc::PTRACE_SYSCALL_INFO_EXIT => {
                // SAFETY: op EXIT says the kernel filled the `exit` member.
                let x = unsafe { info.u.exit };
                task.vfork_wait = false;
                let Some((nr, args)) = task.entry.take() else {
                    return Ok(true);
                };
                let mm = task.mm;
                self.release(mm, pid);
                let Some((name, kind)) = syscalls::lookup(nr) else {
                    return Ok(true);
                };
                let failed = x.is_error != 0;
                let record = match kind {
                    Kind::Call => name != "prctl" || args[0] == PR_SET_VMA,
                    // A failed exec or clone is a call; successes have
                    // their own lines (exec, clone).
                    Kind::Exec | Kind::Clone => failed,
                    Kind::Exit => false,
                };
                if !record || mm == 0 {
                    return Ok(true);
                }
                let ret = x.sval;
                let file = if name == "mmap" && !failed && args[3] & libc::MAP_ANONYMOUS as u64 == 0
                {
                    procfs::line_at(pid.as_raw(), ret as u64)
                        .and_then(|l| FileRef::from_maps_line(&l))
                } else {
                    None
                };
                // A remapped VMA's anonymous pages (it was faulted, so it
                // has an anon_vma): what decides copy_vma's pgoff and merge.
                let anon_kb = (name == "mremap" && !failed)
                    .then(|| procfs::anon_kb_at(pid.as_raw(), ret as u64))
                    .flatten();
                self.summary.calls += 1;
                *self.summary.by_name.entry(name.into()).or_default() += 1;
                self.emit(&Event::Call {
                    tid: pid.as_raw() as u32,
                    mm,
                    name: name.into(),
                    nr,
                    args,
                    ret,
                    errno: failed.then(|| syscalls::errno_name(-ret)),
                    file,
                    anon_kb,
                })?;
            }
            _ => {}
        }
        Ok(true)
    }

    fn on_event(&mut self, pid: Pid, ev: i32) -> Result<(), String> {
        let msg = ptrace::getevent(pid).unwrap_or(0);
        if ev == PEvent::PTRACE_EVENT_CLONE as i32
            || ev == PEvent::PTRACE_EVENT_FORK as i32
            || ev == PEvent::PTRACE_EVENT_VFORK as i32
        {
            let child = Pid::from_raw(msg as i32);
            let Some(parent) = self.tasks.get(&pid) else {
                return Ok(());
            };
            let mm = parent.mm;
            let (name, flags) = match parent.entry {
                Some((nr, args)) => match syscalls::lookup(nr) {
                    Some(("clone", _)) => ("clone", args[0]),
                    Some(("clone3", _)) => (
                        "clone3",
                        // struct clone_args starts with the u64 flags.
                        ptrace::read(pid, args[0] as ptrace::AddressType).unwrap_or(0) as u64,
                    ),
                    Some(("vfork", _)) => ("vfork", VFORK_FLAGS),
                    _ => ("fork", FORK_FLAGS),
                },
                None => ("fork", FORK_FLAGS),
            };
            let shares_vm = flags & libc::CLONE_VM as u64 != 0;
            if flags & libc::CLONE_VFORK as u64 != 0
                && let Some(p) = self.tasks.get_mut(&pid)
            {
                p.vfork_wait = true;
            }
            let child_mm = if shares_vm { mm } else { self.new_mm() };
            if let Some(m) = self.mms.get_mut(&child_mm) {
                m.live += 1;
            }
            self.summary.tasks += 1;
            if mm != 0 {
                self.emit(&Event::Clone {
                    tid: pid.as_raw() as u32,
                    mm,
                    name: name.into(),
                    flags,
                    child: child.as_raw() as u32,
                    child_mm,
                })?;
            }
            let held = self.held.remove(&child);
            self.tasks.insert(
                child,
                Task {
                    mm: child_mm,
                    entry: None,
                    fresh: !held,
                    exiting: false,
                    vfork_wait: false,
                },
            );
            if held {
                resume(child, None);
            }
        } else if ev == PEvent::PTRACE_EVENT_EXEC as i32 {
            // A non-leader thread that execs takes the leader's id.
            let former = Pid::from_raw(msg as i32);
            let mut task = match self.tasks.remove(&former) {
                Some(t) => t,
                None => match self.tasks.remove(&pid) {
                    Some(t) => t,
                    None => return Ok(()),
                },
            };
            if former != pid
                && let Some(leader) = self.tasks.remove(&pid)
                && !leader.exiting
            {
                self.leave_mm(leader.mm)?;
            }
            let old_mm = task.mm;
            let mm = self.new_mm();
            self.mms.get_mut(&mm).expect("just made").live = 1;
            task.mm = mm;
            // The execve's exit stop follows; nothing to record there.
            task.entry = None;
            self.tasks.insert(pid, task);
            let snap = procfs::snapshot(pid.as_raw()).unwrap_or_default();
            let start_brk = procfs::start_brk(pid.as_raw()).unwrap_or(0);
            self.emit(&Event::Exec {
                tid: pid.as_raw() as u32,
                mm,
                old_mm,
                path: procfs::exe(pid.as_raw()),
                start_brk,
                maps: snap.maps,
                vmflags: snap.vmflags,
            })?;
            self.leave_mm(old_mm)?;
        } else if ev == PEvent::PTRACE_EVENT_EXIT as i32 {
            let Some(task) = self.tasks.get_mut(&pid) else {
                return Ok(());
            };
            if task.exiting {
                return Ok(());
            }
            task.exiting = true;
            let mm = task.mm;
            self.release(mm, pid);
            let last = self.mms.get(&mm).is_some_and(|m| m.live == 1);
            if mm != 0
                && last
                && let Ok(s) = procfs::snapshot(pid.as_raw())
            {
                self.emit(&Event::Maps {
                    tid: pid.as_raw() as u32,
                    mm,
                    why: "exit".into(),
                    quiescent: true,
                    maps: s.maps,
                    vmflags: s.vmflags,
                })?;
            }
            if mm != 0 {
                self.emit(&Event::Exit {
                    tid: pid.as_raw() as u32,
                    mm,
                    status: msg as i32,
                })?;
            }
            self.leave_mm(mm)?;
        }
        Ok(())
    }
}

/// `PTRACE_GET_SYSCALL_INFO`. Not `nix::sys::ptrace::syscall_info`: nix
/// 0.30 passes a buffer size of 0 (the `addr` argument), so the kernel
/// copies nothing and nix returns uninitialised memory.
fn syscall_info(pid: Pid) -> nix::Result<libc::ptrace_syscall_info> {
    let mut info = std::mem::MaybeUninit::<libc::ptrace_syscall_info>::zeroed();
    let size = std::mem::size_of::<libc::ptrace_syscall_info>();
    // SAFETY: the kernel writes at most `size` bytes to `info`, which is
    // that large; zeroed memory is a valid `ptrace_syscall_info` (plain
    // integers and a union of them) whatever the kernel fills.
    let n = unsafe {
        libc::ptrace(
            libc::PTRACE_GET_SYSCALL_INFO,
            pid.as_raw(),
            size as *mut libc::c_void,
            info.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    Errno::result(n)?;
    // SAFETY: zero-initialised above, possibly overwritten by the kernel.
    Ok(unsafe { info.assume_init() })
}

/// `PTRACE_SYSCALL` with an optional signal to deliver. A task that died
/// meanwhile (`ESRCH`) is reaped by `waitpid` later.
fn resume(pid: Pid, sig: Option<Signal>) {
    let _ = ptrace::syscall(pid, sig);
}
