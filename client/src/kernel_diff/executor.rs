//! The executor: a real Linux process that performs `kernel-diff`'s
//! operations on its own address space and reports what the kernel did.
//!
//! It is the hidden subcommand `vmasim __kernel-diff-executor`, started by
//! [`super::kernel::Kernel`] as a child process. It is shaped by one need:
//! after setup, **nothing but the test may change its address space** below
//! [`WINDOW_END`], so that every non-fixed placement is the kernel's answer
//! to the test's own history. Hence:
//!
//! * `main.rs` starts no tokio runtime for it: one thread, no stacks
//!   appearing behind our back.
//! * It re-execs itself once with `personality(ADDR_NO_RANDOMIZE)` (so
//!   `mmap_base` is the un-randomised `mmap_base()` of
//!   arch/x86/mm/mmap.c), `RLIMIT_STACK` at most 8 MiB (so the layout is
//!   top-down, not `mmap_is_legacy`), and
//!   `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=0`, so glibc's malloc
//!   never calls `brk`: the heap belongs to the test from `start_brk` up.
//! * Every buffer is mapped during setup; the command loop allocates
//!   nothing and frees nothing (no malloc `mmap`/`munmap` can appear later).
//! * Setup fills every gap between [`WINDOW_END`] and `mmap_base` with
//!   `PROT_NONE` shared mappings of a memfd, so the top-down search of
//!   `vm_unmapped_area` skips the libraries and lands in the window. A
//!   file mapping never merges with the test's mappings.
//! * Operations are raw system calls. A page touch is probed through a
//!   pipe (`write(pipe, addr, 1)` reads the page, `read(pipe, addr, 1)`
//!   writes it): a bad access is `EFAULT`, never a signal.
//! * `fork` forks the executor: the child serves its own command slot (a
//!   pipe pair the controller created for it in advance), the parent goes
//!   on serving its own.
//!
//! The protocol is text, one command a line, answered by a result line, the
//! VMAs of the compared region (`V <Rss kB> <Anonymous kB> <maps line>`),
//! and a `.` line. See [`super::kernel`] for the controller side.

use super::{FILE_SIZE, MAX_PROCS, NR_FILES, WINDOW_END};
use std::ffi::CStr;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;

/// Environment variable marking the re-exec'd executor.
const REEXEC_ENV: &str = "VMASIM_KDIFF_EXECUTOR";
/// `ADDR_NO_RANDOMIZE` (include/uapi/linux/personality.h).
const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;
/// Largest `/proc/self/{maps,smaps}` text the executor can read. A process
/// at `vm.max_map_count` (65530) has ~7 MiB of maps.
const READ_BUF: usize = 128 << 20;
/// Largest reply.
const OUT_BUF: usize = 64 << 20;
/// `TASK_SIZE_MAX` on x86-64 with 4-level paging: `(1 << 47) - PAGE_SIZE`.
const TASK_SIZE_MAX: u64 = (1 << 47) - 4096;
/// `stack_guard_gap` default (mm/mmap.c: 256 pages).
const STACK_GUARD_GAP: u64 = 256 << 12;

/// Fixed-capacity output buffer, so the command loop never allocates.
struct Out {
    buf: &'static mut [u8],
    len: usize,
}

impl std::fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let b = s.as_bytes();
        if self.len + b.len() > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}

/// Everything the command loop uses, mapped during setup.
struct Exec {
    /// `(command read end, reply write end)` per slot.
    slots: [(i32, i32); MAX_PROCS],
    /// The slot this process serves.
    slot: usize,
    files: [i32; NR_FILES],
    probe: [i32; 2],
    /// Compared region: VMAs overlapping it are reported.
    lo: u64,
    hi: u64,
    smaps: bool,
    /// Rss/Anonymous from `PAGEMAP_SCAN` (see [`Exec::snapshot`]); smaps
    /// text where the kernel lacks it or swap is on.
    pagemap_scan: bool,
    /// See [`Exec::check_pagemap_against_smaps`].
    check_pagemap: bool,
    /// See [`CacheWatch`].
    watch: Option<CacheWatch>,
    regions: &'static mut [PageRegion],
    /// The last command's text (for [`CacheWatch`] reports).
    cmd_seen: [u8; 256],
    cmd_seen_len: usize,
    rd: &'static mut [u8],
    out: Out,
    cmd: &'static mut [u8],
    cmd_len: usize,
}

fn die(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "kernel-diff executor: {msg}");
    unsafe { libc::_exit(70) }
}

use std::io::Write as _;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Map `len` bytes of private anonymous memory for a buffer (setup only).
fn map_buffer(len: usize) -> &'static mut [u8] {
    // SAFETY: a fresh private anonymous mapping, owned by nothing else and
    // never unmapped; the slice covers exactly the mapping.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            die("cannot map a buffer");
        }
        std::slice::from_raw_parts_mut(p.cast::<u8>(), len)
    }
}

/// Entry point of `vmasim __kernel-diff-executor --fds ...`.
pub fn main(fds: &str) -> ! {
    // SAFETY: personality(0xffffffff) only queries.
    let persona = unsafe { libc::personality(0xffff_ffff) };
    if std::env::var_os(REEXEC_ENV).is_none() {
        reexec(persona as libc::c_ulong);
    }
    if persona as libc::c_ulong & ADDR_NO_RANDOMIZE == 0 {
        die("personality(ADDR_NO_RANDOMIZE) did not survive exec");
    }
    let mut slots = [(-1, -1); MAX_PROCS];
    let nums: Vec<i32> = fds.split(',').filter_map(|s| s.parse().ok()).collect();
    if nums.len() != 2 * MAX_PROCS {
        die("--fds needs a command and a reply fd per slot");
    }
    for (i, s) in slots.iter_mut().enumerate() {
        *s = (nums[2 * i], nums[2 * i + 1]);
    }
    if !threads_is_one() {
        die("the executor must be single-threaded");
    }
    drop_cap_sys_rawio();
    // SAFETY: plain system calls on our own process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // Children are reaped by the kernel: no waitpid in the loop.
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let rd = map_buffer(READ_BUF);
    let out = Out {
        buf: map_buffer(OUT_BUF),
        len: 0,
    };
    let cmd = map_buffer(1 << 16);
    let mut files = [-1; NR_FILES];
    let mut inodes = [0u64; NR_FILES];
    for (i, f) in files.iter_mut().enumerate() {
        let name = format!("kdiff-{i}\0");
        *f = memfd(&name);
        // SAFETY: ftruncate/fstat on our own fd.
        unsafe {
            if libc::ftruncate(*f, FILE_SIZE as i64) != 0 {
                die("ftruncate(memfd)");
            }
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(*f, &mut st);
            inodes[i] = st.st_ino;
        }
    }
    let fill = memfd("kdiff-fill\0");
    let mut probe = [0; 2];
    // SAFETY: pipe writes two fds into `probe`.
    if unsafe { libc::pipe(probe.as_mut_ptr()) } != 0 {
        die("pipe");
    }
    let start_brk = read_start_brk();
    // SAFETY: brk(0) queries the break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
    let mut ex = Exec {
        slots,
        slot: 0,
        files,
        probe,
        lo: start_brk,
        hi: WINDOW_END,
        smaps: true,
        pagemap_scan: swap_is_off(),
        check_pagemap: std::env::var_os("VMASIM_KDIFF_CHECK_PAGEMAP").is_some(),
        watch: CacheWatch::from_env(),
        regions: map_regions(),
        cmd_seen: [0; 256],
        cmd_seen_len: 0,
        rd,
        out,
        cmd,
        cmd_len: 0,
    };
    // Everything that allocates happens before the gaps are filled, and
    // nothing allocated is ever freed (a freed malloc chunk is an munmap,
    // which would reopen a gap): `main` never returns, so its locals live.
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(65530);
    let mut gaps = Vec::with_capacity(4096);
    fill_gaps(&mut ex, fill, &mut gaps);
    let n = ex.read_proc(c"/proc/self/maps");
    let text = std::str::from_utf8(&ex.rd[..n]).unwrap_or("");
    for line in text.lines() {
        let (s, e) = line_range(line);
        if e > ex.lo && s < ex.hi {
            die(&format!(
                "{line:?} is inside the test region {:#x}-{:#x}",
                ex.lo, ex.hi
            ));
        }
    }
    isolate_heap_from_bss(&mut ex);
    let _ = write!(ex.out, "ready {start_brk:x} {brk:x} {max_map_count}");
    for i in inodes {
        let _ = write!(ex.out, " {i}");
    }
    let _ = writeln!(ex.out);
    // smaps, not maps: the simulation imports each VMA's `VmFlags:` too
    // (the isolation's VM_DONTDUMP, the kernel's own VM_ACCOUNT), so its
    // merges see the flags the kernel's do. The other fields are dropped.
    let n = ex.read_proc(c"/proc/self/smaps");
    for line in std::str::from_utf8(&ex.rd[..n]).unwrap_or("").lines() {
        if is_maps_line(line) || line.starts_with("VmFlags:") {
            let _ = writeln!(ex.out, "M {line}");
        }
    }
    let _ = writeln!(ex.out, ".");
    ex.flush();
    // From here on: no allocation, no free.
    loop {
        ex.serve_one();
    }
}

/// Set up the deterministic environment and exec ourselves again.
fn reexec(persona: libc::c_ulong) -> ! {
    // SAFETY: personality/getrlimit/setrlimit change only this process
    // (and, through exec, the executor it becomes).
    unsafe {
        if libc::personality(persona | ADDR_NO_RANDOMIZE) == -1 {
            die("personality(ADDR_NO_RANDOMIZE) failed");
        }
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_STACK, &mut rl);
        // mmap_is_legacy(): an unlimited stack means bottom-up placement;
        // above ~127 MiB mmap_base() moves. 8 MiB is the usual default.
        if rl.rlim_cur == libc::RLIM_INFINITY || rl.rlim_cur > (8 << 20) {
            rl.rlim_cur = 8 << 20;
            libc::setrlimit(libc::RLIMIT_STACK, &rl);
        }
    }
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("{t}:glibc.malloc.mmap_threshold=0"),
        _ => "glibc.malloc.mmap_threshold=0".to_string(),
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .env(REEXEC_ENV, "1")
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    die(&format!("re-exec failed: {err}"))
}

fn threads_is_one() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().eq(["Threads:", "1"]))
        })
        .unwrap_or(false)
}

fn memfd(name: &str) -> i32 {
    let c = CStr::from_bytes_with_nul(name.as_bytes()).unwrap_or(c"kdiff");
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), 0) };
    if fd < 0 {
        die("memfd_create");
    }
    fd
}

/// The simulation's processes are unprivileged: `cap_mmap_addr` refuses
/// them an address below `vm.mmap_min_addr` (EPERM). An executor run as
/// root would be allowed it (and then fail later checks differently, or
/// map page 0), so it gives up `CAP_SYS_RAWIO` (capabilities(7)) first.
fn drop_cap_sys_rawio() {
    /// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_RAWIO: u32 = 17;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget/capset read and write exactly one header and the two
    // data words of version 3; they act on this process only.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) != 0 {
            die("capget");
        }
        let bit = !(1u32 << CAP_SYS_RAWIO);
        data[0].effective &= bit;
        data[0].permitted &= bit;
        data[0].inheritable &= bit;
        if libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) != 0 {
            die("capset (dropping CAP_SYS_RAWIO)");
        }
    }
}

/// A maps line (`start-end perms ...`), not an smaps `Key: value` field?
fn is_maps_line(line: &str) -> bool {
    line.as_bytes()
        .first()
        .is_some_and(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Keep the executor's own pages out of the compared VMAs.
///
/// The ELF loader maps the tail of `.bss` as an anonymous VMA
/// (`vm_brk_flags` in `elf_load`, fs/binfmt_elf.c) that may end exactly at
/// `start_brk`, with the flags of a heap VMA. `brk` itself never merges
/// with it (`vma_prev_limit(&vmi, mm->start_brk)` in the brk syscall looks
/// no lower than `start_brk`), but an `mprotect` or `munmap` starting at
/// `start_brk` does (`vma_modify` merges with `prev`), and the merged
/// `[heap]` then counts the Rust runtime's touched statics in its Rss: a
/// kernel page the simulation cannot know. `MADV_DONTDUMP` gives that VMA
/// `VM_DONTDUMP`, which nothing the test does sets, so `is_mergeable_vma`
/// never lets it merge with a test VMA, on the kernel nor (it imports the
/// flag from smaps) in the simulation. It changes nothing else: the flag
/// only leaves the range out of core dumps, and `fork` copies it.
fn isolate_heap_from_bss(ex: &mut Exec) {
    let n = ex.read_proc(c"/proc/self/maps");
    let text = std::str::from_utf8(&ex.rd[..n]).unwrap_or("");
    let below = text.lines().find_map(|line| {
        let (s, e) = line_range(line);
        let mut cols = line.split_ascii_whitespace();
        let inode = cols.nth(4).unwrap_or("");
        let path = cols.next();
        (e == ex.lo && inode == "0" && path.is_none()).then_some((s, e))
    });
    if let Some((s, e)) = below {
        // SAFETY: madvise(MADV_DONTDUMP) changes only a vm_flags bit of
        // our own VMA; its memory stays mapped and unchanged.
        let r = unsafe {
            libc::madvise(
                s as *mut libc::c_void,
                (e - s) as usize,
                libc::MADV_DONTDUMP,
            )
        };
        if r != 0 {
            die(&format!(
                "madvise(MADV_DONTDUMP) on the .bss tail {s:#x}-{e:#x}"
            ));
        }
    }
}

/// `start_brk` is field 47 of /proc/self/stat (proc(5)).
fn read_start_brk() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .nth(47 - 3)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| die("cannot read start_brk from /proc/self/stat"))
}

fn line_range(line: &str) -> (u64, u64) {
    let r = line.split(' ').next().unwrap_or("");
    let (s, e) = r.split_once('-').unwrap_or(("0", "0"));
    (
        u64::from_str_radix(s, 16).unwrap_or(0),
        u64::from_str_radix(e, 16).unwrap_or(0),
    )
}

/// `mmap_base()` of arch/x86/mm/mmap.c without randomisation: the stack
/// rlimit plus `stack_guard_gap`, clamped to [128 MiB, 5/6 of the task
/// size], below `TASK_SIZE_MAX`.
fn mmap_base() -> u64 {
    // SAFETY: getrlimit fills `rl`.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) };
    let gap = rl
        .rlim_cur
        .saturating_add(STACK_GUARD_GAP)
        .clamp(128 << 20, TASK_SIZE_MAX / 6 * 5);
    (TASK_SIZE_MAX - gap) & !4095
}

/// Fill every gap of `[WINDOW_END, mmap_base)` with a `PROT_NONE` shared
/// mapping of `fd`, then check that a non-fixed mmap lands right below
/// `WINDOW_END`.
fn fill_gaps(ex: &mut Exec, fd: i32, gaps: &mut Vec<(u64, u64)>) {
    let top = mmap_base();
    let n = ex.read_proc(c"/proc/self/maps");
    let text = std::str::from_utf8(&ex.rd[..n]).unwrap_or("");
    let mut cursor = WINDOW_END;
    for line in text.lines() {
        let (s, e) = line_range(line);
        if e <= cursor {
            continue;
        }
        if s >= top {
            break;
        }
        if s > cursor {
            gaps.push((cursor, s));
        }
        cursor = cursor.max(e);
    }
    if cursor < top {
        gaps.push((cursor, top));
    }
    if gaps.len() == gaps.capacity() {
        die("too many gaps to fill");
    }
    for &(s, e) in gaps.iter() {
        // SAFETY: MAP_FIXED_NOREPLACE into a gap: replaces nothing.
        let p = unsafe {
            libc::mmap(
                s as *mut libc::c_void,
                (e - s) as usize,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
                fd,
                0,
            )
        };
        if p as u64 != s {
            die(&format!("cannot fill the gap {s:#x}-{e:#x}"));
        }
    }
    // SAFETY: a probe mapping, unmapped right away.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p as u64 != WINDOW_END - 4096 {
        die(&format!(
            "non-fixed placement probe landed at {:#x}, not below the window end {WINDOW_END:#x}",
            p as u64
        ));
    }
    unsafe { libc::munmap(p, 4096) };
}

impl Exec {
    /// Read a /proc file into `rd`, returning its length.
    fn read_proc(&mut self, path: &CStr) -> usize {
        // SAFETY: open/read/close into our own buffer, bounded by its size.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                die("cannot open /proc/self/maps");
            }
            let mut n = 0;
            loop {
                if n == self.rd.len() {
                    die("/proc/self/smaps is larger than the read buffer");
                }
                let r = libc::read(
                    fd,
                    self.rd[n..].as_mut_ptr().cast(),
                    (self.rd.len() - n).min(1 << 20),
                );
                if r < 0 {
                    if errno() == libc::EINTR {
                        continue;
                    }
                    die("read(/proc/self/maps)");
                }
                if r == 0 {
                    break;
                }
                n += r as usize;
            }
            libc::close(fd);
            n
        }
    }

    fn flush(&mut self) {
        let fd = self.slots[self.slot].1;
        let mut off = 0;
        while off < self.out.len {
            // SAFETY: writes from our own buffer.
            let r =
                unsafe { libc::write(fd, self.out.buf[off..].as_ptr().cast(), self.out.len - off) };
            if r < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                // The controller is gone.
                unsafe { libc::_exit(0) };
            }
            off += r as usize;
        }
        self.out.len = 0;
    }

    /// Read the next command line into `cmd[..len]`, returning its length.
    fn next_command(&mut self) -> usize {
        let fd = self.slots[self.slot].0;
        loop {
            if let Some(nl) = self.cmd[..self.cmd_len].iter().position(|&b| b == b'\n') {
                return nl;
            }
            if self.cmd_len == self.cmd.len() {
                die("command too long");
            }
            // SAFETY: reads into our own buffer, bounded by its size.
            let r = unsafe {
                libc::read(
                    fd,
                    self.cmd[self.cmd_len..].as_mut_ptr().cast(),
                    self.cmd.len() - self.cmd_len,
                )
            };
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            if r <= 0 {
                // EOF: the controller is done with us.
                unsafe { libc::_exit(0) };
            }
            self.cmd_len += r as usize;
        }
    }

    fn serve_one(&mut self) {
        let nl = self.next_command();
        let mut args = [0u64; 8];
        let mut argc = 0;
        // An upper-case command asks for no snapshot (shrink replays
        // compare maps only at the end).
        let quiet = self.cmd[0].is_ascii_uppercase();
        let op = self.cmd[0].to_ascii_lowercase();
        for tok in self.cmd[..nl].split(|&b| b == b' ').skip(1) {
            if argc < args.len() {
                args[argc] = hex(tok);
                argc += 1;
            }
        }
        if self.watch.is_some() {
            let n = nl.min(self.cmd_seen.len());
            self.cmd_seen[..n].copy_from_slice(&self.cmd[..n]);
            self.cmd_seen_len = n;
        }
        // Consume the line.
        self.cmd.copy_within(nl + 1..self.cmd_len, 0);
        self.cmd_len -= nl + 1;
        let a = args;
        let res: Result<u64, i32> = match op {
            b'm' => self.op_mmap(a[0], a[1], a[2] as i32, a[3] as i32, a[4], a[5]),
            b'u' => self.guard(a[0], a[1]).and_then(|()| {
                // SAFETY: inside the test region, which holds no executor memory.
                sys(unsafe { libc::munmap(a[0] as *mut _, a[1] as usize) } as i64)
            }),
            b'p' => self.guard(a[0], a[1]).and_then(|()| {
                // SAFETY: as above.
                sys(unsafe { libc::mprotect(a[0] as *mut _, a[1] as usize, a[2] as i32) } as i64)
            }),
            // SAFETY: brk moves only the heap, which the executor leaves to the test.
            b'b' => Ok(unsafe { libc::syscall(libc::SYS_brk, a[0]) } as u64),
            b't' => self.touch(a[0], a[1] != 0),
            b'r' => self.op_mremap(a[0], a[1], a[2], a[3] as i32, a[4]),
            b'a' => self.guard(a[0], a[1]).and_then(|()| {
                // SAFETY: inside the test region, which holds no executor memory.
                sys(unsafe { libc::madvise(a[0] as *mut _, a[1] as usize, a[2] as i32) } as i64)
            }),
            b'l' => self.fill(a[0], a[1]),
            b'f' => self.fork(a[0] as usize),
            b'x' => {
                let _ = writeln!(self.out, "r ok 0\n.");
                self.flush();
                unsafe { libc::_exit(0) }
            }
            b'o' => {
                self.smaps = a[0] != 0;
                Ok(0)
            }
            b's' | b'v' => Ok(0),
            b'n' => self.present_pages(a[0]),
            _ => die("unknown command"),
        };
        if let Some(w) = self.watch.as_mut() {
            w.check(&self.files, &self.cmd_seen[..self.cmd_seen_len]);
        }
        let _ = match res {
            Ok(v) => writeln!(self.out, "r ok {v:x}"),
            Err(e) if e == REFUSED => writeln!(self.out, "r refused"),
            Err(e) => writeln!(self.out, "r err {e}"),
        };
        if op == b'v' {
            // A second look with smaps' own text, asked for when the
            // PAGEMAP_SCAN counts disagree with the simulation.
            self.snapshot_text();
        } else if !quiet {
            self.snapshot();
        }
        let _ = writeln!(self.out, ".");
        self.flush();
    }

    /// Operations that could hit the executor's own memory are refused
    /// outside the test region.
    fn guard(&self, addr: u64, len: u64) -> Result<(), i32> {
        let end = addr.checked_add(len.max(1)).ok_or(REFUSED)?;
        if addr >= self.lo && end <= self.hi {
            Ok(())
        } else {
            Err(REFUSED)
        }
    }

    fn op_mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: i32,
        flags: i32,
        file: u64,
        off: u64,
    ) -> Result<u64, i32> {
        if flags & libc::MAP_FIXED != 0 && flags & libc::MAP_FIXED_NOREPLACE == 0 {
            self.guard(addr, len)?;
        }
        let fd = if file == 0 {
            -1
        } else {
            self.files[(file - 1) as usize % NR_FILES]
        };
        // SAFETY: MAP_FIXED only inside the test region (checked above);
        // any other placement replaces nothing.
        let p = unsafe { libc::mmap(addr as *mut _, len as usize, prot, flags, fd, off as i64) };
        if p == libc::MAP_FAILED {
            Err(errno())
        } else {
            Ok(p as u64)
        }
    }

    /// `mremap`: the old range, and an `MREMAP_FIXED` destination, must lie
    /// in the test region. Without `MREMAP_FIXED` the kernel only places
    /// the mapping where nothing is (a gap of the window: the gaps above
    /// it are filled), or grows it over free space.
    fn op_mremap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: i32,
        new_addr: u64,
    ) -> Result<u64, i32> {
        self.guard(old, old_len)?;
        if flags & libc::MREMAP_FIXED != 0 {
            self.guard(new_addr, new_len)?;
        }
        // SAFETY: raw syscall (no glibc argument rewriting); it changes
        // only test-region mappings (checked above).
        let r = unsafe { libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) };
        if r < 0 { Err(errno()) } else { Ok(r as u64) }
    }

    /// Touch one page: `write(probe, addr, 1)` makes the kernel read it
    /// (fault in for read), `read(probe, addr, 1)` makes it write it.
    fn touch(&mut self, addr: u64, write: bool) -> Result<u64, i32> {
        self.guard(addr, 1)?;
        let mut b = [0u8; 1];
        // SAFETY: the kernel does the access (copy_{from,to}_user), so a bad
        // address is EFAULT; our own buffer `b` is valid.
        unsafe {
            if write {
                libc::write(self.probe[1], b.as_ptr().cast(), 1);
                let r = libc::read(self.probe[0], addr as *mut _, 1);
                if r != 1 {
                    let e = errno();
                    libc::read(self.probe[0], b.as_mut_ptr().cast(), 1);
                    return Err(e);
                }
            } else {
                let r = libc::write(self.probe[1], addr as *const _, 1);
                if r != 1 {
                    return Err(errno());
                }
                libc::read(self.probe[0], b.as_mut_ptr().cast(), 1);
            }
        }
        Ok(0)
    }

    /// Which of the 64 pages from `addr` are present in the page table
    /// (`/proc/self/pagemap` bit 63), as a bitmap: bit i for page i. Asked
    /// for where the kernel's `Rss` of a file VMA fell below the
    /// simulation's (see `reclaim`).
    fn present_pages(&mut self, addr: u64) -> Result<u64, i32> {
        self.guard(addr, 1)?;
        // SAFETY: our own pagemap, opened by the process it describes (as
        // in snapshot_pagemap_scan) into a buffer of ours.
        unsafe {
            let fd = libc::open(
                c"/proc/self/pagemap".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(errno());
            }
            let mut entries = [0u64; 64];
            let r = libc::pread(
                fd,
                entries.as_mut_ptr().cast(),
                std::mem::size_of_val(&entries),
                ((addr / 4096) * 8) as i64,
            );
            let e = errno();
            libc::close(fd);
            if r < 0 {
                return Err(e);
            }
            let n = r as usize / 8;
            Ok((0..n).fold(0u64, |bits, i| bits | ((entries[i] >> 63) << i)))
        }
    }

    /// `count` one-page private anonymous rw- mappings, one every two
    /// pages from `addr` (the max_map_count scenario). Stops at the first
    /// failure; returns how many were mapped.
    fn fill(&mut self, addr: u64, count: u64) -> Result<u64, i32> {
        self.guard(addr, count * 8192)?;
        for i in 0..count {
            let a = addr + i * 8192;
            // SAFETY: inside the test region (checked above).
            let p = unsafe {
                libc::mmap(
                    a as *mut _,
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Ok(i);
            }
        }
        Ok(count)
    }

    fn fork(&mut self, slot: usize) -> Result<u64, i32> {
        if slot >= MAX_PROCS || slot == self.slot {
            return Err(REFUSED);
        }
        // SAFETY: single-threaded, so fork is safe; the child only makes
        // system calls on buffers it owns (copies of ours).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(errno());
        }
        if pid == 0 {
            // The child serves `slot` from now on: its "r ok 0" and its
            // snapshot go to that slot's reply pipe, the parent's to its own.
            self.slot = slot;
            self.cmd_len = 0;
            return Ok(0);
        }
        Ok(pid as u64)
    }

    /// Append the `V` lines of every VMA overlapping the compared region.
    fn snapshot(&mut self) {
        let mark = self.out.len;
        if self.smaps && self.pagemap_scan && self.snapshot_pagemap_scan() {
            if self.check_pagemap {
                self.check_pagemap_against_smaps(mark);
            }
            return;
        }
        self.snapshot_text();
    }

    /// `VMASIM_KDIFF_CHECK_PAGEMAP=1`: take every snapshot both ways and
    /// stop the executor if they differ (a check of the counting rules in
    /// [`Self::snapshot_pagemap_scan`] against the kernel's own smaps).
    fn check_pagemap_against_smaps(&mut self, mark: usize) {
        let split = self.out.len;
        self.snapshot_text();
        let (a, b) = self.out.buf[mark..self.out.len].split_at(split - mark);
        if a != b {
            let a = String::from_utf8_lossy(a);
            let b = String::from_utf8_lossy(b);
            for (x, y) in a.lines().zip(b.lines()) {
                if x != y {
                    let (vs, ve) = line_range(x.splitn(4, ' ').nth(3).unwrap_or(""));
                    let regions: Vec<String> = self
                        .regions
                        .iter()
                        .filter(|r| r.end > vs && r.start < ve)
                        .map(|r| format!("{:x}-{:x} {:#x}", r.start, r.end, r.categories))
                        .collect();
                    die(&format!(
                        "PAGEMAP_SCAN and smaps differ:\n  pagemap {x}\n  smaps   {y}\n  regions {regions:?}"
                    ));
                }
            }
            die("PAGEMAP_SCAN and smaps differ in the number of VMAs");
        }
        self.out.len = split;
    }

    /// The `V` lines from the smaps (or, without Rss, maps) text.
    fn snapshot_text(&mut self) {
        let smaps = self.smaps;
        let n = self.read_proc(if smaps {
            c"/proc/self/smaps"
        } else {
            c"/proc/self/maps"
        });
        let (lo, hi) = (self.lo, self.hi);
        let rd: &[u8] = &self.rd[..n];
        let mut header: Option<&str> = None;
        let (mut rss, mut anon) = (0u64, 0u64);
        let out = &mut self.out;
        let mut emit = |h: &str, rss: u64, anon: u64| {
            let (s, e) = line_range(h);
            if e > lo && s < hi {
                if smaps {
                    let _ = writeln!(out, "V {rss} {anon} {h}");
                } else {
                    let _ = writeln!(out, "V - - {h}");
                }
            }
        };
        for line in rd.split(|&b| b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            if line.is_empty() {
                continue;
            }
            let first = line.as_bytes()[0];
            if first.is_ascii_digit() || (b'a'..=b'f').contains(&first) {
                if let Some(h) = header.take() {
                    emit(h, rss, anon);
                }
                header = Some(line);
                rss = 0;
                anon = 0;
            } else if let Some(v) = line.strip_prefix("Rss:") {
                rss = kb(v);
            } else if let Some(v) = line.strip_prefix("Anonymous:") {
                anon = kb(v);
            }
        }
        if let Some(h) = header {
            emit(h, rss, anon);
        }
    }

    /// The `V` lines from `/proc/self/maps` plus one `PAGEMAP_SCAN` ioctl
    /// (fs/proc/task_mmu.c, 6.7+) over the compared region, instead of the
    /// `/proc/self/smaps` text: rendering smaps' two dozen fields for every
    /// VMA was most of a step's time. The counts are smaps' own
    /// (`smaps_pte_entry`): `Rss` counts each mapped page that
    /// `vm_normal_page` finds -- not the shared zero page
    /// (`PAGE_IS_PFNZERO`) -- and each migration entry (with swap off, the
    /// only swap-type PTEs there can be: `PAGE_IS_SWAPPED`); `Anonymous`
    /// those of them whose folio is anonymous (`!PAGE_IS_FILE`). Returns
    /// false if the kernel refuses the ioctl (then smaps is read).
    fn snapshot_pagemap_scan(&mut self) -> bool {
        let (lo, hi) = (self.lo, self.hi);
        let out_mark = self.out.len;
        let n = self.read_proc(c"/proc/self/maps");
        // SAFETY: open/close of our own pagemap; it must be opened by the
        // process it describes (a forked child's inherited fd would
        // describe the parent's mm), so it is opened for each snapshot.
        let fd = unsafe {
            libc::open(
                c"/proc/self/pagemap".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            self.pagemap_scan = false;
            return false;
        }
        let rd: &[u8] = &self.rd[..n];
        let regions = &mut *self.regions;
        let out = &mut self.out;
        // Regions come sorted by address and may span adjacent VMAs: each
        // VMA takes its part of the regions that overlap it; one that runs
        // on is kept for the next. A full vector resumes at `walk_end`.
        let (mut ri, mut rn) = (0usize, 0usize);
        let (mut scanned_to, mut ok) = (lo, true);
        let lines = rd
            .split(|&b| b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .filter(|l| {
                let (s, e) = line_range(l);
                !l.is_empty() && e > lo && s < hi
            });
        for l in lines {
            let (s, e) = line_range(l);
            let (s, e) = (s.max(lo), e.min(hi));
            let (mut rss, mut anon) = (0u64, 0u64);
            loop {
                if ri == rn {
                    if scanned_to >= e {
                        break;
                    }
                    let Some((count, walk_end)) = pagemap_scan(fd, scanned_to, hi, regions) else {
                        ok = false;
                        break;
                    };
                    (ri, rn, scanned_to) = (0, count, walk_end.max(scanned_to + 1));
                    continue;
                }
                let r = regions[ri];
                if r.start >= e {
                    break;
                }
                let (a, b) = (r.start.max(s), r.end.min(e));
                if b > a {
                    rss += (b - a) >> 10;
                    if r.categories & PAGE_IS_FILE == 0 {
                        anon += (b - a) >> 10;
                    }
                }
                if r.end > e {
                    break;
                }
                ri += 1;
            }
            if !ok {
                break;
            }
            let _ = writeln!(out, "V {rss} {anon} {l}");
        }
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        if !ok {
            // Nothing of this snapshot is kept: smaps answers instead.
            self.out.len = out_mark;
            self.pagemap_scan = false;
        }
        ok
    }
}

/// `VMASIM_KDIFF_WATCH=FILE:FIRST-LAST` (memfd number, page offsets in
/// hex): after every command, report on stderr each watched page that has
/// entered that memfd's page cache since the last command, with the command
/// that brought it in (`cachestat(2)`, 6.5+). For finding which operation
/// of a long sequence cached a page the simulation's page cache lacks.
struct CacheWatch {
    file: usize,
    first: u64,
    last: u64,
    cached: [bool; 64],
}

impl CacheWatch {
    fn from_env() -> Option<Self> {
        let v = std::env::var("VMASIM_KDIFF_WATCH").ok()?;
        let (f, r) = v.split_once(':')?;
        let (a, b) = r.split_once('-')?;
        let w = Self {
            file: f.parse().ok()?,
            first: u64::from_str_radix(a, 16).ok()?,
            last: u64::from_str_radix(b, 16).ok()?,
            cached: [false; 64],
        };
        (w.file < NR_FILES && w.last >= w.first && w.last - w.first < 64).then_some(w)
    }

    fn check(&mut self, files: &[i32; NR_FILES], cmd: &[u8]) {
        for (i, pgoff) in (self.first..=self.last).enumerate() {
            if self.cached[i] {
                continue;
            }
            let range: [u64; 2] = [pgoff << 12, 1 << 12];
            let mut stat = [0u64; 5];
            // SAFETY: cachestat(fd, range, cstat, 0) reads `range` and
            // writes `stat`, both ours and of the kernel's struct sizes.
            let r = unsafe {
                libc::syscall(451, files[self.file], range.as_ptr(), stat.as_mut_ptr(), 0)
            };
            if r == 0 && stat[0] > 0 {
                self.cached[i] = true;
                let _ = writeln!(
                    std::io::stderr(),
                    "kdiff-watch: pid {} after {:?}: memfd {} pgoff {pgoff:#x} cached",
                    std::process::id(),
                    String::from_utf8_lossy(cmd),
                    self.file
                );
            }
        }
    }
}

/// `struct page_region` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` (include/uapi/linux/fs.h).
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16) | (0x66 << 8) | 16;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// Regions one ioctl may return (a scan that fills them resumes at
/// `walk_end`).
const NR_REGIONS: usize = 1 << 16;

fn map_regions() -> &'static mut [PageRegion] {
    let bytes = map_buffer(NR_REGIONS * std::mem::size_of::<PageRegion>());
    // SAFETY: a fresh page-aligned zeroed mapping of exactly NR_REGIONS
    // regions; PageRegion is plain u64s, for which zero bytes are valid.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<PageRegion>(), NR_REGIONS) }
}

/// No swap device: a swap-type PTE can only be a migration entry, which
/// smaps counts in Rss as PAGEMAP_SCAN's `PAGE_IS_SWAPPED` lets us count it.
fn swap_is_off() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() <= 1)
}

/// One `PAGEMAP_SCAN` from `start` to `end` for the pages smaps counts in
/// Rss, split by `PAGE_IS_FILE`: `(regions filled, walk_end)`.
fn pagemap_scan(fd: i32, start: u64, end: u64, vec: &mut [PageRegion]) -> Option<(usize, u64)> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: 0,
        start,
        end,
        walk_end: 0,
        vec: vec.as_mut_ptr() as u64,
        vec_len: vec.len() as u64,
        max_pages: 0,
        // Not the zero page, and present or a migration entry.
        category_inverted: PAGE_IS_PFNZERO,
        category_mask: PAGE_IS_PFNZERO,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_FILE,
    };
    loop {
        // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len`
        // regions into `vec`, which we own, and `walk_end` into `arg`.
        let r = unsafe { libc::ioctl(fd, PAGEMAP_SCAN, &mut arg) };
        if r >= 0 {
            return Some((r as usize, arg.walk_end));
        }
        if errno() != libc::EINTR {
            return None;
        }
    }
}

/// Not performed: outside the test region (reported as `refused`).
const REFUSED: i32 = -1;

fn sys(r: i64) -> Result<u64, i32> {
    if r < 0 { Err(errno()) } else { Ok(r as u64) }
}

fn kb(v: &str) -> u64 {
    v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
}

fn hex(tok: &[u8]) -> u64 {
    let mut v: u64 = 0;
    for &c in tok {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => continue,
        };
        v = v.wrapping_mul(16).wrapping_add(u64::from(d));
    }
    v
}
