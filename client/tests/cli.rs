//! CLI integration tests: the `vmasim` binary against an in-process server
//! on 127.0.0.1:0 (started by the test, stopped when it ends).

use assert_cmd::Command;
use common::TestServer;
use std::path::Path;
use vmasim_client::embedded::CachePolicy;

mod common;

fn server(cache: CachePolicy) -> TestServer {
    TestServer::start(cache)
}

fn vmasim(s: &TestServer) -> Command {
    common::vmasim_at(&s.url)
}

/// Runs a command that must succeed; returns its stdout.
fn ok(s: &TestServer, args: &[&str]) -> String {
    let out = vmasim(s).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "vmasim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns (exit code, stderr).
fn fails(s: &TestServer, args: &[&str]) -> (i32, String) {
    let out = vmasim(s).args(args).output().unwrap();
    assert!(!out.status.success(), "vmasim {args:?} succeeded");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn rpc_commands_round_trip() {
    let s = server(CachePolicy::Typesafe);
    assert_eq!(ok(&s, &["health"]), "SERVING\n");
    let pid = ok(&s, &["spawn"]).trim().to_string();
    assert!(pid.parse::<u32>().unwrap() > 0);

    let addr = ok(&s, &["mmap", &pid, "64K", "--prot", "rw-"])
        .trim()
        .to_string();
    assert!(addr.starts_with("0x"), "{addr}");
    let a = u64::from_str_radix(&addr[2..], 16).unwrap();

    // Split by mprotect, seen in maps in the kernel's format.
    ok(&s, &["mprotect", &pid, &addr, "8K", "r,x"]);
    let maps = ok(&s, &["maps", &pid]);
    let lines: Vec<&str> = maps.lines().collect();
    assert_eq!(lines.len(), 2, "{maps}");
    assert_eq!(
        lines[0],
        format!("{:08x}-{:08x} r-xp 00000000 00:00 0 ", a, a + 0x2000)
    );
    assert!(lines[1].contains(" rw-p "), "{maps}");

    // Faults: decimal addresses work too.
    let out = ok(&s, &["fault", &pid, &(a + 0x3000).to_string(), "--write"]);
    assert!(out.starts_with("ANON_ZERO_FILL"), "{out}");
    let out = ok(&s, &["fault", &pid, &addr, "--write"]);
    assert!(out.starts_with("SEGV_ACCERR"), "{out}");
    let out = ok(&s, &["fault", &pid, "0x10000"]);
    assert!(out.starts_with("SEGV_MAPERR"), "{out}");

    let brk = ok(&s, &["brk", &pid]);
    assert!(brk.starts_with("brk 0x"), "{brk}");
    let child = ok(&s, &["fork", &pid]).trim().to_string();
    assert_ne!(child, pid);
    assert_eq!(ok(&s, &["maps", &child]), maps);
    ok(&s, &["munmap", &child, &addr, "64K"]);
    assert_eq!(ok(&s, &["maps", &child]), "");
    assert!(ok(&s, &["exit", &child]).starts_with("vmas_freed 0"));

    let file = ok(
        &s,
        &[
            "mmap",
            &pid,
            "8K",
            "--prot",
            "r--",
            "--file-id",
            "7",
            "--offset",
            "4K",
        ],
    );
    assert!(file.starts_with("0x"));

    // --json: the same answers as objects named as the proto.
    let j = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&ok(&s, &a)).unwrap()
    };
    assert_eq!(
        j(&[
            "mmap",
            &pid,
            "4K",
            "--addr",
            "0x50000000",
            "--flags",
            "fixed"
        ])["addr"],
        0x5000_0000u64
    );
    assert!(
        j(&["munmap", &pid, "0x50000000", "4K"])["vma_count"]
            .as_u64()
            .is_some()
    );
    let b = j(&["brk", &pid]);
    assert!(
        b["brk"].as_u64().unwrap() >= b["start_brk"].as_u64().unwrap(),
        "{b}"
    );
    let m = j(&["maps", &pid]);
    assert_eq!(m["text"], ok(&s, &["maps", &pid]));
    let entries = m["entries"].as_array().unwrap();
    assert_eq!(entries.len(), m["text"].as_str().unwrap().lines().count());
    assert!(entries.iter().any(|e| e["prot"] == "r-x"), "{m}");
    assert_eq!(j(&["health"])["status"], "SERVING");
    assert!(j(&["spawn"])["pid"].as_u64().unwrap() > 0);
    assert_eq!(j(&["fault", &pid, "0x10000"])["outcome"], "SEGV_MAPERR");
    let (code, err) = fails(&s, &["--json", "race", "--list"]);
    assert_eq!(code, 2, "{err}");

    // Named flags keep the defaults: `--flags fixed` alone is a private
    // anonymous MAP_FIXED (here over the first 4K of the file mapping).
    let fixed = ok(
        &s,
        &[
            "mmap",
            &pid,
            "4K",
            "--addr",
            file.trim(),
            "--flags",
            "fixed",
        ],
    );
    assert_eq!(fixed, file);
    let maps = ok(&s, &["maps", &pid]);
    assert!(
        maps.lines()
            .any(|l| l.starts_with(&format!("{}-", &file.trim()[2..])) && l.contains(" rw-p ")),
        "{maps}"
    );
    // A number is sent as written: the server's own check answers.
    let (code, err) = fails(&s, &["mmap", &pid, "4K", "--flags", "0x20"]);
    assert_eq!(code, 4, "{err}");

    let json: serde_json::Value = serde_json::from_str(&ok(&s, &["stats", "--json"])).unwrap();
    assert_eq!(json["vma_cache"], "typesafe");
    assert!(json["faults"].as_u64().unwrap() >= 3);
    assert!(ok(&s, &["stats"]).contains("vma_allocations_reused"));

    // Spawn from a maps file.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("maps");
    std::fs::write(&f, ok(&s, &["maps", &pid])).unwrap();
    let copy = ok(&s, &["spawn", "--from-maps", f.to_str().unwrap()])
        .trim()
        .to_string();
    assert_eq!(ok(&s, &["maps", &copy]), ok(&s, &["maps", &pid]));
}

#[test]
fn race_lab_front_end() {
    let s = server(CachePolicy::Typesafe);
    let list = ok(&s, &["race", "--list"]);
    let name = list
        .split_whitespace()
        .next()
        .expect("a scenario")
        .to_string();
    let out = ok(&s, &["race", &name]);
    assert!(
        out.contains("step") && out.contains("thread") && out.contains("verdict: "),
        "{out}"
    );
    let out = ok(&s, &["race", &name, "--variant", "buggy"]);
    assert!(out.contains("verdict: "), "{out}");
    let (code, err) = fails(&s, &["race", "no-such-scenario"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
}

#[test]
fn errors_exit_non_zero_with_the_status() {
    let s = server(CachePolicy::Rcu);
    // Unknown pid.
    let (code, err) = fails(&s, &["maps", "999999"]);
    assert_eq!(code, 5);
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    // Unaligned address: the server's INVALID_ARGUMENT.
    let pid = ok(&s, &["spawn"]).trim().to_string();
    let (code, err) = fails(&s, &["munmap", &pid, "0x10001", "4K"]);
    assert_eq!(code, 4);
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
    // mprotect of a hole: FAILED_PRECONDITION.
    let (code, err) = fails(&s, &["mprotect", &pid, "0x10000", "4K", "r--"]);
    assert_eq!(code, 6, "{err}");
    // MAP_FIXED_NOREPLACE over a mapping: ALREADY_EXISTS.
    let a = ok(&s, &["mmap", &pid, "8K"]).trim().to_string();
    let (code, err) = fails(
        &s,
        &[
            "mmap",
            &pid,
            "4K",
            "--addr",
            &a,
            "--flags",
            "private,anonymous,fixed_noreplace",
        ],
    );
    assert_eq!(code, 6);
    assert!(err.contains("ALREADY_EXISTS"), "{err}");
    // Bad values are caught before any call.
    let (code, err) = fails(&s, &["fault", &pid, "0xZZ"]);
    assert_eq!(code, 2);
    assert!(err.contains("not an address"), "{err}");
    let (code, _) = fails(&s, &["mmap", &pid, "4Q"]);
    assert_eq!(code, 2);
    let (code, _) = fails(&s, &["mmap", &pid, "4K", "--prot", "rwz"]);
    assert_eq!(code, 2);
    // The exit codes are documented in --help.
    let help = ok(&s, &["--help"]);
    for line in [
        "Exit codes:",
        "  9   any other gRPC status",
        "  11  `health`",
        "  12  `load`",
    ] {
        assert!(help.contains(line), "{line}: {help}");
    }
    // Nobody listening.
    let out = Command::cargo_bin("vmasim")
        .unwrap()
        .args(["--server", "http://127.0.0.1:1", "health"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

#[test]
fn load_verify_passes_for_every_profile() {
    let s = server(CachePolicy::Typesafe);
    for (profile, extra) in [
        ("fault-heavy", vec![]),
        ("churn", vec!["--stream"]),
        ("fork-storm", vec!["--threads", "1"]),
    ] {
        let mut args = vec![
            "load",
            "--profile",
            profile,
            "--verify",
            "--verify-every",
            "10",
            "-z",
            "2s",
            "-c",
            "3",
            "-q",
        ];
        args.extend(extra);
        let out = ok(&s, &args);
        assert!(
            out.contains("every reply matched the shadow model"),
            "{profile}: {out}"
        );
        assert!(out.contains("Server-side"), "{out}");
    }
    // Open loop with a request budget, unary faults.
    let out = ok(
        &s,
        &[
            "load",
            "--rps",
            "2000",
            "-n",
            "400",
            "--mix",
            "fault=90,mmap=5,munmap=5",
            "--verify",
            "-q",
        ],
    );
    assert!(out.contains("Count:        400 requests"), "{out}");
}

/// Checks that `html` is well formed: every tag closed in order (the
/// report is written as XHTML), `<svg>` present.
fn assert_well_formed(html: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').expect("unterminated tag");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack
                .pop()
                .unwrap_or_else(|| panic!("</{name}> closes nothing"));
            assert_eq!(open, name.trim(), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap().to_string();
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(html.contains("<svg"), "no svg");
    assert!(
        !html.contains("http://") || !html.contains("<script"),
        "no scripts"
    );
}

#[test]
fn load_writes_html_json_and_csv_reports() {
    let s = server(CachePolicy::Rcu);
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let json = dir.path().join("report.json");
    let csv = dir.path().join("report.csv");
    let h = html.to_str().unwrap();
    let out = ok(
        &s,
        &[
            "load",
            "-n",
            "3000",
            "-c",
            "2",
            "--batch",
            "8",
            "--html",
            h,
            "-o",
            json.to_str().unwrap(),
            "-q",
        ],
    );
    assert!(out.contains("Latency distribution"), "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert_well_formed(&page);
    assert!(page.contains("Latency histogram") && page.contains("Throughput over time"));
    assert!(
        page.contains("call_rcu made / avoided"),
        "server counters table"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["count"], 3000);
    assert_eq!(j["server"]["vma_cache"], "rcu");

    ok(
        &s,
        &[
            "load",
            "-n",
            "200",
            "-c",
            "1",
            "-o",
            csv.to_str().unwrap(),
            "-q",
        ],
    );
    // One row per request after the header.
    let c = std::fs::read_to_string(&csv).unwrap();
    assert!(
        c.starts_with("start_ms,operation,latency_ms,status,"),
        "{c}"
    );
    assert_eq!(c.lines().count(), 201, "{c}");

    let (code, err) = fails(
        &s,
        &[
            "load",
            "-n",
            "10",
            "-o",
            dir.path().join("x.txt").to_str().unwrap(),
            "-q",
        ],
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn demo_against_a_given_server() {
    let s = server(CachePolicy::Typesafe);
    let out = ok(&s, &["demo", "--duration", "1s", "--concurrency", "2"]);
    assert!(
        out.contains("simulated faults/s") && out.contains("typesafe"),
        "{out}"
    );
    assert!(out.contains("call_rcu made / avoided"), "{out}");
}

/// The embedded demo's slow-reader phase: with one RCU reader held, the
/// rcu server parks freed slots (waiting > 0) while typesafe has none.
#[test]
fn embedded_demo_shows_what_typesafe_buys_under_a_slow_reader() {
    let out = Command::cargo_bin("vmasim")
        .unwrap()
        .env_remove("VMASIM_SERVER")
        .args([
            "demo",
            "--duration",
            "1s",
            "--concurrency",
            "2",
            "--slow-reader",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.contains("throughput: "), "{out}");
    let waiting = out
        .lines()
        .find(|l| l.starts_with("slots waiting for a grace period"))
        .unwrap_or_else(|| panic!("no slow-reader table: {out}"));
    let n: Vec<u64> = waiting
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(n.len(), 2, "{waiting}");
    assert_eq!(n[0], 0, "typesafe parks nothing: {out}");
    assert!(n[1] > 0, "rcu parks freed slots behind the reader: {out}");
}

#[test]
fn test_data_is_present() {
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/memprog.strace")
            .exists()
    );
}

/// Issue 12 item 8: a stopped server (it accepts TCP, then says nothing,
/// like a SIGSTOPped process) makes no command hang: `health` gives up
/// within its short limit (connection exit code 3), every other command
/// within `--connect-timeout` or `--timeout` (HTTP/2 lets a client send
/// before the server's first frame, so a call may start and then time
/// out), with a non-zero exit and a message saying it timed out.
#[test]
fn commands_time_out_on_a_stopped_server() {
    // The listener's backlog completes TCP handshakes; nobody ever reads.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let run = |args: &[&str]| {
        let out = Command::cargo_bin("vmasim")
            .unwrap()
            .env_remove("VMASIM_TOKEN")
            .env_remove("VMASIM_TLS_CA")
            .env("VMASIM_SERVER", &url)
            // A hang guard only: the commands must end long before it.
            .timeout(std::time::Duration::from_secs(60))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["health"]);
    assert_eq!(code, Some(3), "{err}");
    for cmd in [&["maps", "1"][..], &["stats"][..], &["spawn"][..]] {
        let mut args = vec!["--connect-timeout", "300ms", "--timeout", "500ms"];
        args.extend_from_slice(cmd);
        let (code, err) = run(&args);
        assert!(code.is_some_and(|c| c != 0), "{args:?}: {err}");
        assert!(err.to_lowercase().contains("timeout"), "{args:?}: {err}");
    }
    drop(l);
}
