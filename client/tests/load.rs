//! `vmasim load` as a user meets it (issue 12): a server that goes away,
//! `--max-errors`, output paths checked before the run, the per-request
//! CSV and the offered-vs-achieved rate. The binary runs against an
//! in-process server on 127.0.0.1:0 that the test can take away.

use common::TestServer;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use vmasim_server::server::ServerConfig;

mod common;

fn vmasim(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmasim"));
    c.env_remove("VMASIM_TOKEN")
        .env_remove("VMASIM_TLS_CA")
        .env("VMASIM_SERVER", url);
    c
}

/// Waits for `child`; a hang guard only (the commands must end long
/// before it), never a timing assertion.
fn wait(mut child: Child, what: &str) -> Output {
    let guard = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > guard {
            let _ = child.kill();
            panic!("{what} still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(url: &str, args: &[&str]) -> Output {
    let child = vmasim(url)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, &format!("vmasim {args:?}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn stats(url: &str) -> serde_json::Value {
    let out = run(url, &["stats", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Killed mid-run, the server takes the run with it: `load` stops, exits
/// 3, says so, and counts none of the failed calls as requests.
#[test]
fn load_stops_and_exits_3_when_the_server_goes_away() {
    let mut s = TestServer::start_with(ServerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    // -z 0: until Ctrl-C. Only the server going away can end this run.
    let child = vmasim(&s.url)
        .args(["load", "-z", "0", "-c", "2", "--threads", "1", "-q"])
        .arg("-o")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Setup done (2 workers × 2 processes) and requests flowing.
    let guard = Instant::now() + Duration::from_secs(60);
    loop {
        let st = stats(&s.url);
        if st["processes"].as_u64().unwrap() >= 4 && st["faults"].as_u64().unwrap() >= 100 {
            break;
        }
        assert!(Instant::now() < guard, "load never got going: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.kill();
    let out = wait(child, "load against a killed server");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stderr.contains("the server went away"), "{stderr}");
    assert!(stdout.contains("Stopped:      SERVER GONE: "), "{stdout}");
    assert!(
        stdout.contains("call(s) found no server (not counted as requests)"),
        "{stdout}"
    );
    // The report is still written, and it is the truth: the requests the
    // server answered, no UNAVAILABLE among them, the failed calls apart.
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["stopped"]["reason"], "server_gone");
    let count = j["count"].as_u64().unwrap();
    assert!(count > 0, "{j}");
    let codes = j["status_codes"].as_object().unwrap();
    assert!(!codes.contains_key("UNAVAILABLE"), "{codes:?}");
    for e in j["error_distribution"].as_array().unwrap() {
        if e["reached_server"] == true {
            assert_ne!(e["code"], "UNAVAILABLE", "{e}");
        }
    }
    assert_eq!(
        codes.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        count
    );
    assert!(j["unreachable"].as_u64().unwrap() >= 1, "{j}");
    let unreachable: Vec<_> = j["error_distribution"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reached_server"] == false)
        .collect();
    assert!(!unreachable.is_empty(), "{j}");
    // Refused or reset: UNAVAILABLE, or UNKNOWN from a connection that
    // broke mid-call.
    assert!(
        unreachable
            .iter()
            .all(|e| e["code"] == "UNAVAILABLE" || e["code"] == "UNKNOWN"),
        "{j}"
    );
}

/// Every fault is refused (no page-table budget): unexpected errors, so
/// `--max-errors` ends the run with exit 12; without it the run goes on
/// and reports them by operation, code and message.
#[test]
fn max_errors_stops_the_run_and_errors_are_distributed() {
    let mut cfg = ServerConfig::default();
    cfg.sim.max_pgtables_bytes = 0;
    let s = TestServer::start_with(cfg);
    let out = run(
        &s.url,
        &[
            "load",
            "-z",
            "0",
            "--mix",
            "fault=1",
            "-c",
            "2",
            "-q",
            "--max-errors",
            "20",
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(12), "{stdout}\n{stderr}");
    assert!(stderr.contains("--max-errors 20"), "{stderr}");
    assert!(
        stdout.contains("Stopped:      more than --max-errors 20"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = run(
        &s.url,
        &[
            "load",
            "-n",
            "300",
            "--mix",
            "fault=8,mmap=1,mprotect=1",
            "-c",
            "2",
            "-q",
            "-o",
            json.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Error distribution ("), "{stdout}");
    assert!(
        stdout.contains("  fault    RESOURCE_EXHAUSTED: "),
        "{stdout}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let errs = j["error_distribution"].as_array().unwrap();
    let exhausted: u64 = errs
        .iter()
        .filter(|e| e["operation"] == "fault" && e["code"] == "RESOURCE_EXHAUSTED")
        .map(|e| {
            assert!(e.get("expected").is_none(), "{e}");
            assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
            e["count"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(exhausted, j["status_codes"]["RESOURCE_EXHAUSTED"], "{j}");
    // The distribution accounts for every error the report counts.
    let total: u64 = errs.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(total, j["errors"].as_u64().unwrap(), "{j}");
    // Expected errors are labelled with why.
    for e in errs.iter().filter(|e| e.get("expected").is_some()) {
        assert!(
            matches!(
                e["code"].as_str(),
                Some("ALREADY_EXISTS" | "FAILED_PRECONDITION")
            ),
            "{e}"
        );
    }
}

/// A bad `-o` or `--html` fails at once: these runs would never end
/// (`-z 0`) if the paths were only checked after them.
#[test]
fn output_paths_are_checked_before_the_run() {
    let s = TestServer::start_with(ServerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("r.json");
    let out = run(
        &s.url,
        &["load", "-z", "0", "-q", "-o", missing.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--output "),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no report: nothing ran");

    let out = run(
        &s.url,
        &[
            "load",
            "-z",
            "0",
            "-q",
            "--html",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is a directory"));

    let out = run(&s.url, &["load", "-z", "0", "-q", "-o", "r.txt"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // bench: nothing measured (its phases print as they finish).
    let out = run(&s.url, &["bench", "-o", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(stats(&s.url)["processes_spawned_total"], 0, "nothing ran");
}

/// `-o FILE.csv`: one row per request; `--rps` beyond what one worker
/// can do: the offered rate beside the achieved one, and a warning.
#[test]
fn per_request_csv_and_an_unmet_offered_rate() {
    let s = TestServer::start_with(ServerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("r.csv");
    let json = dir.path().join("r.json");
    let out = run(
        &s.url,
        &[
            "load",
            "-n",
            "300",
            "-c",
            "2",
            "-q",
            "-o",
            csv.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let c = std::fs::read_to_string(&csv).unwrap();
    let mut lines = c.lines();
    assert_eq!(
        lines.next(),
        Some("start_ms,operation,latency_ms,status,error,expected")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 300);
    let mut last = 0.0;
    for r in &rows {
        assert!(r.len() >= 6, "{r:?}");
        let start: f64 = r[0].parse().unwrap();
        assert!(start >= last, "rows in send order");
        last = start;
        assert!(r[2].parse::<f64>().unwrap() > 0.0, "{r:?}");
        assert!(
            [
                "fault", "mmap", "munmap", "mprotect", "brk", "fork", "exit", "spawn", "maps"
            ]
            .contains(&r[1]),
            "{r:?}"
        );
        assert_eq!(
            r[3] == "OK",
            r[4].is_empty(),
            "an error has a message: {r:?}"
        );
    }

    // One closed worker cannot send a million requests a second.
    let out = run(
        &s.url,
        &[
            "load",
            "--rps",
            "1000000",
            "-n",
            "2000",
            "-c",
            "1",
            "-q",
            "-o",
            json.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("warning: the offered rate was not met"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("Offered:      1000000 requests/s"));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["offered_rps"], 1_000_000.0);
    assert!(j["rps"].as_f64().unwrap() < 950_000.0);
    assert!(j["late_requests"].as_u64().unwrap() > 0);
    assert!(j["rate_warning"].is_string());
    assert_eq!(j["options"]["rps"], 1_000_000.0);
    assert_eq!(j["target"], s.url.as_str());
}
