//! The replay test of `client/testdata-src/README.md`: import the traced
//! program's first `/proc/self/maps` snapshot, replay its strace log
//! between the two markers into it, and compare the result with the second
//! snapshot on start, end, perms, offset (file mappings) and path.
//!
//! The comparison is exact. It holds because the replay reproduces the
//! two things a maps snapshot alone does not say: the heap start (the
//! kernel randomises it; `spawn --start-brk` takes the log's first
//! `brk(NULL)`), and the flags that block merges without showing in maps
//! (`MAP_NORESERVE` -> `VM_NORESERVE`, `MAP_STACK` -> `VM_NOHUGEPAGE`),
//! which the replay passes through.

use common::TestServer;
use std::path::PathBuf;
use vmasim_client::embedded::CachePolicy;

mod common;

fn server() -> TestServer {
    TestServer::start(CachePolicy::Typesafe)
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Runs vmasim; returns (success, stdout, stderr).
fn vmasim(s: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = common::vmasim_at(&s.url).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// One maps line, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    start: u64,
    end: u64,
    perms: String,
    /// File mappings only (maps shows 0 for anonymous ones anyway).
    offset: u64,
    /// `None` when paths of file mappings are not compared.
    path: Option<String>,
    file: bool,
}

fn parse_maps(text: &str, file_paths: bool) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.ends_with("[vsyscall]")) // the gate area: no VMA, no call changes it
        .map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next().unwrap();
            let perms = it.next().unwrap().to_string();
            let offset = u64::from_str_radix(it.next().unwrap(), 16).unwrap();
            let _dev = it.next().unwrap();
            let inode: u64 = it.next().unwrap().parse().unwrap();
            let path: String = it.collect::<Vec<_>>().join(" ");
            let (a, b) = range.split_once('-').unwrap();
            let file = inode != 0;
            Line {
                start: u64::from_str_radix(a, 16).unwrap(),
                end: u64::from_str_radix(b, 16).unwrap(),
                perms,
                offset: if file { offset } else { 0 },
                path: if file && !file_paths {
                    None
                } else {
                    Some(path)
                },
                file,
            }
        })
        .collect()
}

fn marker_line(log: &str, len: &str) -> usize {
    log.lines()
        .position(|l| l.contains("madvise(") && l.contains(&format!(", {len}, MADV_NORMAL)")))
        .expect("marker")
        + 1
}

/// Spawns from `maps-before`, replays between the markers, returns
/// (replay stdout, final maps text).
fn replay(s: &TestServer, prefix: &str) -> (String, String) {
    let before = data(&format!("{prefix}.maps-before"));
    let log_path = data(&format!("{prefix}.strace"));
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The kernel randomised the heap start; the log's first brk(NULL) says
    // where it was.
    let start_brk = log
        .lines()
        .find_map(|l| {
            l.split_once("brk(NULL)")
                .and_then(|(_, r)| r.split("= ").nth(1))
        })
        .expect("a brk(NULL) in the log")
        .trim()
        .to_string();
    let (ok, pid, err) = vmasim(
        s,
        &[
            "spawn",
            "--from-maps",
            before.to_str().unwrap(),
            "--start-brk",
            &start_brk,
        ],
    );
    assert!(ok, "{err}");
    let pid = pid.trim().to_string();
    let (m1, m2) = (marker_line(&log, "28672"), marker_line(&log, "45056"));
    let (ok, out, err) = vmasim(
        s,
        &[
            "replay",
            log_path.to_str().unwrap(),
            "--into",
            &pid,
            "--from-line",
            &(m1 + 1).to_string(),
            "--to-line",
            &m2.to_string(),
        ],
    );
    assert!(ok, "replay failed:\n{out}\n{err}");
    let (ok, maps, err) = vmasim(s, &["maps", &pid]);
    assert!(ok, "{err}");
    (out, maps)
}

/// Compares, tolerating only the gaps the replay reported.
fn compare(report: &str, actual_text: &str, expected_text: &str, file_paths: bool) {
    let actual = parse_maps(actual_text, file_paths);
    let expected = parse_maps(expected_text, file_paths);
    assert_eq!(
        actual, expected,
        "replay:\n{report}\nactual:\n{actual_text}\nexpected:\n{expected_text}"
    );
}

#[test]
fn memprog_replay_reproduces_maps_after() {
    let s = server();
    let (report, maps) = replay(&s, "memprog");
    // The failing calls were skipped, the child was forked and exited.
    assert!(
        report.contains("mmap failed in the trace (EEXIST)"),
        "{report}"
    );
    assert!(
        report.contains("munmap failed in the trace (EINVAL)"),
        "{report}"
    );
    assert!(
        report.contains("mmap failed in the trace (ENOMEM)"),
        "{report}"
    );
    assert!(report.contains("4925 -> "), "{report}");
    assert!(!report.contains("DIVERGED"), "{report}");
    let expected = std::fs::read_to_string(data("memprog.maps-after")).unwrap();
    compare(&report, &maps, &expected, true);
}

#[test]
fn memprog_without_f_and_y_replays_the_parent() {
    let s = server();
    let (report, maps) = replay(&s, "memprog-nof");
    assert!(!report.contains("DIVERGED"), "{report}");
    let expected = std::fs::read_to_string(data("memprog-nof.maps-after")).unwrap();
    // No -y: file mappings have no path in the log; compare them without.
    compare(&report, &maps, &expected, false);
}

#[test]
fn python_log_replays_without_divergence() {
    let s = server();
    let (ok, out, err) = vmasim(&s, &["replay", data("python.strace").to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("execve") && out.contains("thread"), "{out}");
    assert!(out.contains("other syscalls (not replayed)"), "{out}");
}

#[test]
fn verbose_prints_every_call_and_keep_leaves_the_processes() {
    let s = server();
    let log = data("python.strace");
    let text = std::fs::read_to_string(&log).unwrap();
    let (ok, out, err) = vmasim(&s, &["replay", log.to_str().unwrap(), "-v", "--keep"]);
    assert!(ok, "{out}\n{err}");
    // One `line N: task ...` line per parsed call, in log order.
    let traced: Vec<usize> = out
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(':').next()?.parse().ok())
        .collect();
    // Every syscall line of the log is one call (resumed pairs join).
    let calls = text
        .lines()
        .filter(|l| l.contains('(') && !l.contains("resumed>") && !l.contains("+++"))
        .count();
    assert_eq!(traced.len(), calls, "{out}");
    let mut unique = traced.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), traced.len(), "a call printed twice");
    for n in [traced[0], traced[traced.len() / 2], *traced.last().unwrap()] {
        assert!(text.lines().nth(n - 1).is_some(), "line {n} of the log");
    }
    // --keep: the processes are still there.
    let kept = out
        .lines()
        .find_map(|l| l.split_once("remove with `vmasim exit PID`): "))
        .map(|(_, p)| p.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no kept line:\n{out}"));
    assert!(!kept.is_empty());
    for p in &kept {
        let (ok, maps, err) = vmasim(&s, &["maps", p]);
        assert!(ok, "maps {p}: {err}");
        let _ = maps;
    }
    // Without --keep they are gone.
    let (ok, out, _) = vmasim(&s, &["replay", log.to_str().unwrap()]);
    assert!(ok && !out.contains("kept"), "{out}");
}

#[test]
fn a_file_with_no_parsable_line_fails() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.txt");
    std::fs::write(&f, "hello\nthis is not strace output\n").unwrap();
    let out = common::vmasim_at(&s.url)
        .args(["replay", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no strace line could be parsed"), "{err}");
    std::fs::write(&f, "").unwrap();
    let (ok, _, err) = vmasim(&s, &["replay", f.to_str().unwrap()]);
    assert!(
        !ok && err.contains("no strace line could be parsed (0 non-empty lines"),
        "{err}"
    );
}

#[test]
fn repeated_notes_are_folded() {
    let s = server();
    // Three programs (two execs) whose heaps are elsewhere than the fresh
    // simulated process's: one folded note, not three.
    let log = "\
100 brk(NULL) = 0x555555600000
100 execve(\"/bin/true\", [\"true\"], 0x7ffd5d4a3e08 /* 1 var */) = 0
100 brk(NULL) = 0x555555660000
100 execve(\"/bin/true\", [\"true\"], 0x7ffd5d4a3e08 /* 1 var */) = 0
100 brk(NULL) = 0x555555770000
";
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.strace");
    std::fs::write(&f, log).unwrap();
    let (ok, out, err) = vmasim(&s, &["replay", f.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let notes: Vec<&str> = out.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{out}");
    assert!(
        notes[0].starts_with("note: 3 x the simulated heap")
            && notes[0].ends_with("(first at line 1)"),
        "{out}"
    );
}
