//! The syscalls a recording keeps: the ones that change (or may change)
//! an address space, by number, with their names.
//!
//! The numbers are the C library's (`libc::SYS_*`) for the machine the
//! recorder is built for; a recording names each call too, so a reader
//! never needs the numbers. Only x86-64 is recorded today (the names
//! `fork` and `vfork` do not exist on arm64, and the recorder reads
//! x86-64 `clone` argument order).

use nix::libc;

/// How a recorded syscall is treated by the tracer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Recorded as a `call` line when it returns.
    Call,
    /// Creates a task: recorded as a `clone` line at the ptrace event.
    Clone,
    /// `execve`/`execveat`: a `maps` snapshot at entry, `exec` on success,
    /// a `call` line on failure.
    Exec,
    /// `exit`/`exit_group`: recorded through `PTRACE_EVENT_EXIT`.
    Exit,
}

/// `(number, name, kind)` of every recorded syscall.
pub const RECORDED: &[(i64, &str, Kind)] = &[
    (libc::SYS_mmap, "mmap", Kind::Call),
    (libc::SYS_munmap, "munmap", Kind::Call),
    (libc::SYS_mprotect, "mprotect", Kind::Call),
    (libc::SYS_pkey_mprotect, "pkey_mprotect", Kind::Call),
    (libc::SYS_mremap, "mremap", Kind::Call),
    (libc::SYS_madvise, "madvise", Kind::Call),
    (libc::SYS_process_madvise, "process_madvise", Kind::Call),
    (libc::SYS_brk, "brk", Kind::Call),
    (libc::SYS_mlock, "mlock", Kind::Call),
    (libc::SYS_mlock2, "mlock2", Kind::Call),
    (libc::SYS_munlock, "munlock", Kind::Call),
    (libc::SYS_mlockall, "mlockall", Kind::Call),
    (libc::SYS_munlockall, "munlockall", Kind::Call),
    (libc::SYS_mseal, "mseal", Kind::Call),
    (libc::SYS_remap_file_pages, "remap_file_pages", Kind::Call),
    (libc::SYS_shmat, "shmat", Kind::Call),
    (libc::SYS_shmdt, "shmdt", Kind::Call),
    (libc::SYS_prctl, "prctl", Kind::Call),
    (libc::SYS_clone, "clone", Kind::Clone),
    (libc::SYS_clone3, "clone3", Kind::Clone),
    (libc::SYS_fork, "fork", Kind::Clone),
    (libc::SYS_vfork, "vfork", Kind::Clone),
    (libc::SYS_execve, "execve", Kind::Exec),
    (libc::SYS_execveat, "execveat", Kind::Exec),
    (libc::SYS_exit, "exit", Kind::Exit),
    (libc::SYS_exit_group, "exit_group", Kind::Exit),
];

/// The name and kind of a recorded syscall, `None` for the others.
pub fn lookup(nr: u64) -> Option<(&'static str, Kind)> {
    RECORDED
        .iter()
        .find(|(n, _, _)| u64::try_from(*n) == Ok(nr))
        .map(|(_, name, k)| (*name, *k))
}

/// The name of an errno value (`ENOMEM`), or its number.
pub fn errno_name(e: i64) -> String {
    let errno = nix::errno::Errno::from_raw(i32::try_from(e).unwrap_or(0));
    match errno {
        nix::errno::Errno::UnknownErrno => format!("errno {e}"),
        e => format!("{e:?}"),
    }
}

/// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, ...)` names anonymous memory
/// (it splits VMAs); other `prctl`s are not address-space calls and are
/// not recorded.
pub const PR_SET_VMA: u64 = 0x53564d41;

/// `fork()`'s implied clone flags.
pub const FORK_FLAGS: u64 = libc::SIGCHLD as u64;
/// `vfork()`'s implied clone flags.
pub const VFORK_FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_errno() {
        assert_eq!(lookup(9), Some(("mmap", Kind::Call)));
        assert_eq!(lookup(435), Some(("clone3", Kind::Clone)));
        assert_eq!(lookup(0), None); // read
        assert_eq!(errno_name(12), "ENOMEM");
        assert_eq!(errno_name(17), "EEXIST");
    }
}
