//! `vmasim bench` end to end, with phases short enough for CI: the output
//! must have its three sections, the ratio line and the table, and the
//! JSON the same figures. No assertion on the values themselves: they
//! depend on the machine, and a timing threshold would make the test flaky.

use assert_cmd::Command;
use common::TestServer;
use vmasim_client::embedded::CachePolicy;

mod common;

/// Short phases: the whole run is about a second.
const QUICK: &[&str] = &[
    "bench",
    "--duration",
    "200ms",
    "--warmup",
    "50ms",
    "--concurrency",
    "2",
    "--batch",
    "64",
];

fn vmasim() -> Command {
    common::vmasim()
}

fn check_output(stdout: &str) {
    for needle in [
        "[1/3] unary Fault vs no-op unary call",
        "ratio fault/noop: ",
        "[2/3] simulated faults/s, 64 addresses per FaultBatch",
        "FaultBatch (unary)",
        "Session stream",
        "[3/3] unary Fault latency at half the max rate",
        "p99.9",
        "benchmark",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
    let ratio_line = stdout
        .lines()
        .find(|l| l.contains("ratio fault/noop: "))
        .unwrap();
    let ratio: f64 = ratio_line
        .split("ratio fault/noop: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number in `{ratio_line}`"));
    assert!(ratio.is_finite() && ratio > 0.0, "{ratio_line}");
}

/// Runs a bench that must succeed; checks its output and returns it.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_output(&stdout);
    stdout
}

#[test]
fn bench_on_embedded_server_prints_sections_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let stdout = run_ok(vmasim().args(QUICK).arg("--output").arg(&json));
    assert!(stdout.contains("embedded typesafe server"), "{stdout}");

    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for path in [
        "/unary/noop/rps",
        "/unary/fault/rps",
        "/unary/ratio",
        "/bulk/fault_batch/faults_per_sec",
        "/bulk/session_stream/faults_per_sec",
        "/half_rate/offered_rps",
        "/half_rate/open_loop/latency_ms/p99",
        "/half_rate/open_loop/latency_ms/p999",
    ] {
        assert!(
            j.pointer(path).is_some_and(|v| v.is_number()),
            "{path} in {j}"
        );
    }
    assert_eq!(j["bulk"]["batch"], 64);
    // The setup populated every page: the unary faults measured the RPC,
    // not allocation.
    assert_eq!(j["unary"]["fault"]["already_present"], 1.0);
}

#[test]
fn bench_against_a_server_url() {
    let srv = TestServer::start(CachePolicy::Rcu);
    let stdout = run_ok(vmasim().args(["--server", &srv.url]).args(QUICK));
    assert!(stdout.contains(&srv.url), "{stdout}");
    // With h2load installed (Debian nghttp2-client), the same unary call is
    // also driven by it and compared.
    let h2load = std::process::Command::new("h2load")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if h2load {
        assert!(
            stdout.contains("[4/4] the same unary Fault driven by h2load"),
            "{stdout}"
        );
        let line = stdout
            .lines()
            .find(|l| l.contains("ratio vmasim/h2load: "))
            .unwrap_or_else(|| panic!("no h2load ratio in {stdout}"));
        let r: f64 = line
            .split("ratio vmasim/h2load: ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no number in `{line}`"));
        assert!(r.is_finite() && r > 0.0, "{line}");
    }
}

#[test]
fn bench_refuses_a_server_that_is_not_there() {
    let out = vmasim()
        .args(["--server", "http://127.0.0.1:9"])
        .args(QUICK)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "connect errors exit 3");
}
