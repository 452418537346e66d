//! `vmasim record` + `vmasim replay --check` on real programs, built here
//! from `client/testdata-src/` with gcc (or found on the machine): each
//! recording must rebuild exactly in the simulation (start, end, perms,
//! offset and path of every maps line, `[stack]` on its end).
//!
//! The recorder needs ptrace (root, or `kernel.yama.ptrace_scope` 0) and
//! gcc; both are in CI's Debian image (`.ci/run` installs gcc).

use common::TestServer;
use std::path::{Path, PathBuf};
use vmasim_client::embedded::CachePolicy;

mod common;

fn server() -> TestServer {
    TestServer::start(CachePolicy::Typesafe)
}

/// Runs vmasim; returns (exit code, stdout, stderr).
fn vmasim(s: Option<&TestServer>, args: &[&str]) -> (i32, String, String) {
    let mut c = common::vmasim();
    if let Some(s) = s {
        c.env("VMASIM_SERVER", &s.url);
    }
    let out = c.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Builds `client/testdata-src/NAME.c` with gcc and `flags` into `dir`.
fn build(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata-src")
        .join(format!("{name}.c"));
    let exe = dir.join(name);
    let st = std::process::Command::new("gcc")
        .args(["-O1", "-Wall", "-Wextra", "-pthread"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc must be installed (apt-get install -y gcc)");
    assert!(st.success(), "gcc failed on {}", src.display());
    exe
}

/// Records `cmd` into `dir/out`; returns the recording's path and the
/// recorder's stderr.
fn record(dir: &Path, out: &str, cmd: &[&str]) -> (PathBuf, String) {
    let path = dir.join(out);
    let mut args = vec!["record", "-q", "-o", path.to_str().unwrap(), "--"];
    args.extend_from_slice(cmd);
    let (code, _, err) = vmasim(None, &args);
    assert_eq!(code, 0, "record failed: {err}");
    (path, err)
}

/// `replay --check`: asserts every address space is exact and returns the
/// report.
fn check_exact(s: &TestServer, rec: &Path) -> String {
    let (code, out, err) = vmasim(Some(s), &["replay", rec.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "replay --check of {}:\n{out}{err}", rec.display());
    assert!(
        out.contains(" 0 differ, 0 not checked, 0 diverged"),
        "{out}"
    );
    assert!(!out.contains("DIFFERS"), "{out}");
    // The [vsyscall] gate area line is imported and compared too.
    assert!(!out.contains("[vsyscall]"), "{out}");
    out
}

/// Number of `call` lines of each name in a recording.
fn calls(rec: &Path, name: &str) -> usize {
    std::fs::read_to_string(rec)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"ev\":\"call\"") && l.contains(&format!("\"name\":\"{name}\"")))
        .count()
}

#[test]
fn multithreaded_program_reproduces_exactly() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "recprog", &[]);
    let (rec, err) = record(
        dir.path(),
        "threads.jsonl",
        &[exe.to_str().unwrap(), "threads", "6"],
    );
    assert!(err.contains("exited with status 0"), "{err}");
    // Six threads: six clone3 (CLONE_VM) lines, each with its stack mmap.
    let text = std::fs::read_to_string(&rec).unwrap();
    assert_eq!(text.matches("\"ev\":\"clone\"").count(), 6, "{text}");
    assert!(calls(&rec, "mmap") >= 6 + 6);
    let out = check_exact(&s, &rec);
    assert!(out.contains("1 exact"), "{out}");
}

#[test]
fn mremap_program_reproduces_exactly() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "recprog", &[]);
    let (rec, err) = record(
        dir.path(),
        "mremap.jsonl",
        &[exe.to_str().unwrap(), "mremap"],
    );
    assert!(err.contains("exited with status 0"), "{err}");
    // Grow in place, grow by moving, shrink, move with MREMAP_FIXED, and
    // one that fails (EFAULT): five mremap calls.
    assert_eq!(calls(&rec, "mremap"), 5);
    let out = check_exact(&s, &rec);
    assert!(out.contains("mremap 4, mremap (failed) 1"), "{out}");
    assert!(out.contains("1 exact"), "{out}");
}

#[test]
fn failing_and_killed_programs_still_check() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "recprog", &[]);
    let exe = exe.to_str().unwrap();
    let (rec, err) = record(dir.path(), "fail.jsonl", &[exe, "fail", "3"]);
    assert!(err.contains("exited with status 3"), "{err}");
    assert!(
        std::fs::read_to_string(&rec)
            .unwrap()
            .contains("\"ev\":\"end\",\"status\":3")
    );
    check_exact(&s, &rec);
    let (rec, err) = record(dir.path(), "signal.jsonl", &[exe, "signal"]);
    assert!(err.contains("killed by signal 6"), "{err}");
    let out = check_exact(&s, &rec);
    assert!(out.contains("1 exact"), "{out}");
    // SIGKILL (no handler can run): the shell still stops at
    // PTRACE_EVENT_EXIT, so its final maps are there and compared.
    let (rec, err) = record(dir.path(), "kill.jsonl", &["sh", "-c", "kill -9 $$"]);
    assert!(err.contains("killed by signal 9"), "{err}");
    let out = check_exact(&s, &rec);
    assert!(out.contains("1 exact"), "{out}");
}

/// The Debian python3 (not a pyenv shim, which is a shell script).
fn python3() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("python3 (apt-get install -y python3)")
}

#[test]
fn python_import_json_reproduces_exactly() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let (rec, _) = record(dir.path(), "py.jsonl", &[python3(), "-c", "import json"]);
    assert!(calls(&rec, "mmap") > 20, "an interpreter maps its modules");
    let out = check_exact(&s, &rec);
    assert!(out.contains("1 exact"), "{out}");
}

#[test]
fn shell_pipeline_forks_and_execs_and_reproduces_exactly() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let (rec, _) = record(
        dir.path(),
        "sh.jsonl",
        &["sh", "-c", "ls /usr | grep -c l | cat >/dev/null; true"],
    );
    let text = std::fs::read_to_string(&rec).unwrap();
    // sh, and the three children it forks, each of which execs.
    assert_eq!(text.matches("\"ev\":\"exec\"").count(), 4, "{text}");
    let forks = text
        .lines()
        .filter(|l| l.contains("\"ev\":\"clone\""))
        .count();
    assert!(forks >= 3, "{forks} clone lines");
    let out = check_exact(&s, &rec);
    // Every address space: sh, its forks (checked at their execve), and
    // ls, grep, cat.
    assert!(out.contains("7 exact"), "{out}");
}

#[test]
fn check_refuses_strace_logs_and_record_reports_missing_commands() {
    let s = server();
    let log = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/memprog.strace");
    let (code, _, err) = vmasim(Some(&s), &["replay", log.to_str().unwrap(), "--check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--check needs a recording"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.jsonl");
    let (code, _, err) = vmasim(
        None,
        &[
            "record",
            "-o",
            out.to_str().unwrap(),
            "--",
            "no-such-command-vmasim",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("command not found"), "{err}");
}

#[test]
fn load_replays_recordings_with_verify() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "recprog", &[]);
    let exe = exe.to_str().unwrap();
    let (threads, _) = record(dir.path(), "t.jsonl", &[exe, "threads", "3"]);
    let (fail, _) = record(dir.path(), "f.jsonl", &[exe, "fail", "2"]);
    let (mremap, _) = record(dir.path(), "m.jsonl", &[exe, "mremap"]);
    let traces = format!(
        "{},{},{}",
        threads.display(),
        fail.display(),
        mremap.display()
    );
    let json = dir.path().join("r.json");
    let (code, out, err) = vmasim(
        Some(&s),
        &[
            "load",
            "--trace",
            &traces,
            "-n",
            "1500",
            "-c",
            "2",
            "--processes",
            "2",
            "--fault-rate",
            "2",
            "--verify",
            "-q",
            "-o",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("recorded program instance(s)"), "{out}");
    // The programs' own operations ran, faults among them, none failed.
    for op in [
        "spawn", "mmap", "munmap", "mprotect", "brk", "exit", "fault", "maps",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(op)),
            "no {op} in the report:\n{out}"
        );
    }
    assert!(out.contains("(0 errors, "), "{out}");
    let report = std::fs::read_to_string(&json).unwrap();
    assert!(report.contains("\"traces\""), "{report}");
    // Not a recording: a clear usage error.
    let log = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/memprog.strace");
    let (code, _, err) = vmasim(
        Some(&s),
        &["load", "--trace", log.to_str().unwrap(), "-n", "10"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a `vmasim record` recording"), "{err}");
}

#[test]
fn a_recorder_killed_mid_run_leaves_a_readable_recording() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cut.jsonl");
    let mut rec = std::process::Command::new(assert_cmd::cargo::cargo_bin("vmasim"))
        .args([
            "record",
            "-q",
            "-o",
            out.to_str().unwrap(),
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    // Wait (bounded) until the exec snapshot of `sleep` is on disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("/sleep\",\"start_brk\"")
    {
        assert!(std::time::Instant::now() < deadline, "no exec line");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rec.kill().unwrap(); // SIGKILL: no end line; EXITKILL ends `sleep`
    rec.wait().unwrap();
    let (code, report, err) = vmasim(Some(&s), &["replay", out.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{report}{err}");
    assert!(report.contains("cut short (no end line)"), "{report}");
    assert!(
        report.contains("not checked: no quiescent final maps"),
        "{report}"
    );
}
