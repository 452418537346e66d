//! The parser against single lines, garbage, and the logs of
//! `client/tests/data/`.

use super::*;
use std::collections::HashMap;

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
    match one("mmap(NULL, 4096, 0x1, 0x10 /* MAP_??? */, -1, 0) = -1 EINVAL (Invalid argument)") {
        Syscall::Mmap { prot, flags, .. } => assert_eq!((prot, flags), (1, 0x10)),
        c => panic!("{c:?}"),
    }
    match one("mmap(NULL, 4096, PROT_READ|0x10, MAP_FILE, -1, 0) = -1 EBADF (Bad file descriptor)")
    {
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

const MEMPROG: &str = include_str!("../../tests/data/memprog.strace");
const MEMPROG_NOF: &str = include_str!("../../tests/data/memprog-nof.strace");
const PYTHON: &str = include_str!("../../tests/data/python.strace");

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
