//! `cargo xtask soak [SECONDS]`: a release `vmasim-server` under `vmasim
//! load --verify` for SECONDS (default 60), half the time with the churn
//! profile, half with fork-storm.
//!
//! Passes when: both load runs exit 0 with zero divergences from the
//! shadow model; after every process is gone, `Stats` shows no process,
//! no VMA, no resident page and no live pool slot (no leaked slots), and
//! every allocation was freed; the server then shuts down cleanly
//! (SIGTERM, exit 0).
//!
//! Builds nothing: expects the release `vmasim-server` and `vmasim` (under
//! `$CARGO_TARGET_DIR` or `target/`), e.g. from
//! `cargo build --release --bin vmasim-server --bin vmasim`.

use crate::proc::{self, Child};
use crate::{Fail, Result, Scratch, release_bin};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn log(msg: impl std::fmt::Display) {
    println!("soak: {msg}");
}

/// A top-level number of a JSON file the client wrote.
fn num(path: &Path, key: &str) -> Result<u64> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path)?)
        .map_err(|e| Fail(format!("{}: {e}", path.display())))?;
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| Fail(format!("no \"{key}\" in {}", path.display())))
}

/// Resident memory of `pid`, MiB (`?` if unreadable).
fn rss_mib(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(|| "?".into(), |kb| (kb / 1024).to_string())
}

pub fn run(secs: u64) -> Result {
    let server_bin = release_bin("vmasim-server");
    let client_bin = release_bin("vmasim");
    for b in [&server_bin, &client_bin] {
        if !b.is_file() {
            fail!(
                "{} not found; run: cargo build --release --bin vmasim-server --bin vmasim",
                b.display()
            );
        }
    }
    let mut work = Scratch::new("soak")?;
    let r = soak(&work, &server_bin, &client_bin, secs);
    if let Err(Fail(msg)) = r {
        work.keep = true;
        fail!(
            "{msg}\nserver log (last 40 lines) and files kept in {}:\n{}",
            work.path.display(),
            proc::tail(&work.file("server.log"), 40)
        );
    }
    Ok(())
}

fn soak(work: &Scratch, server_bin: &Path, client_bin: &Path, secs: u64) -> Result {
    // Port 0: the kernel picks free ports; the server logs what it bound.
    let mut cmd = Command::new(server_bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let log_path = work.file("server.log");
    let mut server = Child::spawn("vmasim-server", cmd, &log_path)?;
    let mut addr = String::new();
    let found = proc::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(a) = text
            .split("\"grpc_addr\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            addr = a.to_string();
            return Ok(true);
        }
        if !server.alive() {
            fail!("server exited at start");
        }
        Ok(false)
    })?;
    if !found {
        fail!("server did not report its address within 30 s");
    }
    let url = format!("http://{addr}");
    let vmasim = |args: &[&str]| {
        let mut c = Command::new(client_bin);
        c.args(args)
            .env("VMASIM_SERVER", &url)
            .env_remove("VMASIM_TOKEN")
            .env_remove("VMASIM_TLS_CA");
        c
    };
    let healthy = || proc::output(&mut vmasim(&["health"])).is_ok_and(|(ok, _)| ok);
    if !proc::poll(Duration::from_secs(10), Duration::from_millis(100), || {
        Ok(healthy())
    })? {
        fail!("server at {addr} not SERVING");
    }
    log(format!(
        "server pid {} on {addr}; {secs}s of load (--verify)",
        server.pid()
    ));

    let stats = |name: &str| -> Result<std::path::PathBuf> {
        let path = work.file(name);
        let out = proc::check("vmasim stats --json", &mut vmasim(&["stats", "--json"]))?;
        std::fs::write(&path, out)?;
        Ok(path)
    };
    let before = stats("before.json")?;
    let rss_before = rss_mib(server.pid());

    let half = secs / 2;
    let mut total_requests = 0;
    for (profile, d) in [("churn", half), ("fork-storm", secs - half)] {
        log(format!("load --profile {profile} --duration {d}s --verify"));
        let json = work.file(&format!("{profile}.json"));
        let (ok, out) = proc::output(&mut vmasim(&[
            "load",
            "--verify",
            "--duration",
            &format!("{d}s"),
            "--profile",
            profile,
            "--connections",
            "2",
            "--quiet",
            "--output",
            &json.display().to_string(),
        ]))?;
        std::fs::write(work.file(&format!("{profile}.txt")), &out)?;
        if !ok {
            fail!(
                "load --profile {profile} failed (exit 10 = divergence from the shadow model):\n{out}"
            );
        }
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
        if !report
            .get("divergences")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            fail!(
                "load --profile {profile} reported divergences (see {})",
                json.display()
            );
        }
        let n = num(&json, "count")?;
        total_requests += n;
        log(format!("  {n} requests, 0 divergences"));
    }
    let rss_after = rss_mib(server.pid());

    let after_load = stats("after-load.json")?;
    let (before_procs, left) = (num(&before, "processes")?, num(&after_load, "processes")?);
    // Every load run exits the processes it created, including those it
    // spawned just as the run stopped; a process left behind is a client
    // bug.
    if left > before_procs {
        fail!("the load left {} process(es) behind", left - before_procs);
    }
    let after = stats("after.json")?;
    let n = |k| num(&after, k);
    let (procs, vmas, rss_pages, live) = (
        n("processes")?,
        n("vmas")?,
        n("rss_pages")?,
        n("pool_slots_live")?,
    );
    let (capacity, reused, fresh, frees, faults) = (
        n("pool_capacity_slots")?,
        n("vma_allocations_reused")?,
        n("vma_allocations_fresh")?,
        n("vma_frees")?,
        n("faults")?,
    );
    if procs != 0 {
        fail!("{procs} process(es) still alive");
    }
    if vmas != 0 {
        fail!("{vmas} VMA(s) left with no process");
    }
    if rss_pages != 0 {
        fail!("{rss_pages} resident page(s) left with no process");
    }
    if live != 0 {
        fail!("{live} pool slot(s) still live with no process: leaked");
    }
    if reused + fresh != frees {
        fail!("allocations ({reused} reused + {fresh} fresh) != frees ({frees})");
    }

    match server.stop() {
        Some(st) if st.success() => {}
        Some(st) => fail!("server exited {st} after SIGTERM"),
        None => fail!("server did not exit within 10 s of SIGTERM"),
    }
    log(format!(
        "OK {secs}s (churn {half}s + fork-storm {}s): {total_requests} requests, 0 divergences; {} VMA allocations ({reused} reused) all freed, 0 live of {capacity} pool slots, {faults} faults; server RSS {rss_before} -> {rss_after} MiB; clean exit",
        secs - half,
        reused + fresh
    ));
    Ok(())
}
