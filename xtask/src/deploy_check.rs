//! `cargo xtask deploy-check`: checks everything under `deploy/` against a
//! real server.
//!
//! 1. `promtool check config` / `check rules` on `deploy/prometheus/`.
//! 2. `docker compose config` on `deploy/docker-compose.yml` (Debian's
//!    `docker-compose` v1 where docker has no compose plugin), every
//!    published port bound to 127.0.0.1, `kubectl kustomize deploy/k8s`
//!    (when kubectl exists), the dashboard lint (valid JSON, unit,
//!    description and datasource uid on every panel, `$instance` in every
//!    query).
//! 3. Starts the release `vmasim-server` on free loopback ports, runs
//!    `vmasim load` against it, scrapes it with a throwaway Prometheus
//!    that uses `deploy/prometheus/prometheus.yml` (target rewritten) and
//!    `rules.yml`, and evaluates every PromQL expression of the dashboard
//!    and the rules (and every recorded series): an expression that errors
//!    or returns an empty result fails the check. Lints the exposition with
//!    `promtool check metrics` and checks that every metric of the
//!    server's table (`vmasim-server --print-metrics`) is exported with
//!    its type.
//!
//! Runs as root on Debian (installs the `prometheus` package if promtool
//! is missing). Everything it starts is stopped, and its scratch directory
//! removed, on every exit.
//!
//! Environment: `VMASIM_SERVER_BIN`, `VMASIM_CLIENT_BIN` (binaries to
//! test; default `$CARGO_TARGET_DIR` or `target/`, `release/vmasim-server`
//! and `release/vmasim`, built with cargo if missing);
//! `DEPLOY_CHECK_LOAD_SECONDS` (how long each load profile runs, default
//! 20).

use crate::http;
use crate::proc::{self, Child};
use crate::{Fail, Result, Scratch, release_bin, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DASHBOARD: &str = "deploy/grafana/dashboards/vmasim.json";
const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/prometheus.yml";
const PROM_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const RULES: &str = "deploy/prometheus/rules.yml";
const COMPOSE: &str = "deploy/docker-compose.yml";
const LOAD_PROFILES: [&str; 3] = ["fault-heavy", "churn", "fork-storm"];

/// Expressions that prove the load really ran (empty unless true).
const LOAD_ASSERTIONS: [&str; 4] = [
    "sum(vmasim_faults_total) > 0",
    "sum(vmasim_vma_allocations_total) > 0",
    "sum(vmasim_rpc_requests_total) > 0",
    "sum(vmasim_fault_duration_seconds_count) > 0",
];

fn log(msg: impl std::fmt::Display) {
    println!("deploy-check: {msg}");
}

pub fn run() -> Result {
    let root = root();
    std::env::set_current_dir(&root)?;
    let work = Scratch::new("deploy-check")?;
    let n_rules = static_checks(&work)?;
    let r = live_check(&root, &work, n_rules);
    if let Err(Fail(msg)) = &r {
        // The logs of what ran, before the scratch directory goes.
        let mut msg = msg.clone();
        for f in ["server.log", "prometheus.log"]
            .into_iter()
            .map(String::from)
            .chain(LOAD_PROFILES.iter().map(|p| format!("load-{p}.log")))
        {
            let t = proc::tail(&work.file(&f), 20);
            if !t.is_empty() {
                msg.push_str(&format!("\n--- last lines of {f} ---\n{t}"));
            }
        }
        return Err(Fail(msg));
    }
    r
}

// ---------------------------------------------------------------------------
// 1. and 2.: the files.

/// Everything that needs no server; the number of rules in `rules.yml`.
fn static_checks(work: &Scratch) -> Result<usize> {
    if !proc::have("promtool") || !proc::have("prometheus") {
        log("installing Debian's prometheus package (promtool, prometheus)");
        if !proc::is_root() {
            fail!("promtool/prometheus missing and not root: apt-get install prometheus");
        }
        proc::apt_install(&["prometheus"], true)?;
    }
    proc::check(
        &format!("promtool check config {PROM_CONFIG}"),
        Command::new("promtool").args(["check", "config", PROM_CONFIG]),
    )?;
    let out = proc::check(
        &format!("promtool check rules {RULES}"),
        Command::new("promtool").args(["check", "rules", RULES]),
    )?;
    let n_rules = out
        .lines()
        .find_map(|l| {
            let rest = l.split("SUCCESS: ").nth(1)?;
            rest.strip_suffix(" rules found")
                .or_else(|| rest.split(" rules found").next())?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .filter(|&n| n > 0)
        .ok_or_else(|| Fail(format!("promtool found no rules in {RULES}:\n{out}")))?;
    log(format!("promtool: config ok, {n_rules} rules ok"));

    compose_config()?;
    let bad = compose_ports(&std::fs::read_to_string(COMPOSE)?);
    if !bad.is_empty() {
        fail!(
            "{COMPOSE} publishes ports beyond 127.0.0.1:\n  {}",
            bad.join("\n  ")
        );
    }
    if proc::have("kubectl") {
        proc::check(
            "kubectl kustomize deploy/k8s",
            Command::new("kubectl").args(["kustomize", "deploy/k8s"]),
        )?;
        log("kustomize build deploy/k8s ok");
    }
    let panels = lint_dashboard(Path::new(DASHBOARD), Path::new(DATASOURCES))?;
    log(format!("dashboard: {panels} panels ok"));
    let _ = work;
    Ok(n_rules)
}

/// `docker compose config`, or Debian's `docker-compose` (v1) where the
/// docker CLI has no compose plugin (as on the CI machines).
fn compose_config() -> Result {
    let plugin = || {
        proc::output(Command::new("docker").args(["compose", "version"])).is_ok_and(|(ok, _)| ok)
    };
    if proc::have("docker") && !plugin() && !proc::have("docker-compose") && proc::is_root() {
        log(format!(
            "installing Debian's docker-compose to validate {COMPOSE}"
        ));
        if let Err(Fail(e)) = proc::apt_install(&["docker-compose"], false) {
            log(format!("docker-compose could not be installed: {e}"));
        }
    }
    if proc::have("docker") && plugin() {
        proc::check(
            &format!("docker compose config {COMPOSE}"),
            Command::new("docker").args(["compose", "-f", COMPOSE, "config", "-q"]),
        )?;
        log("docker compose config ok");
    } else if proc::have("docker-compose") {
        // Compose v1 predates the top-level `name`.
        let text: String = std::fs::read_to_string(COMPOSE)?
            .lines()
            .filter(|l| !l.starts_with("name:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let v1 = std::env::temp_dir().join(format!("vmasim-compose-{}.yml", std::process::id()));
        std::fs::write(&v1, text)?;
        let r = proc::check(
            &format!("docker-compose config {COMPOSE}"),
            Command::new("docker-compose")
                .args(["--project-directory", "deploy", "-f"])
                .arg(&v1)
                .args(["config", "-q"]),
        );
        let _ = std::fs::remove_file(&v1);
        r?;
        log("docker-compose (v1) config ok");
    } else {
        log("docker compose not available: compose config skipped");
    }
    Ok(())
}

/// Every entry under a `ports:` key that is not bound to 127.0.0.1 (a long
/// syntax entry is reported too: check it by hand).
fn compose_ports(text: &str) -> Vec<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut bad = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "ports:" {
            i += 1;
            continue;
        }
        let key_indent = indent(lines[i]);
        i += 1;
        while i < lines.len() {
            let line = lines[i];
            let s = line.trim();
            if !s.is_empty() && indent(line) <= key_indent && !s.starts_with('-') {
                break;
            }
            if let Some(item) = s.strip_prefix('-') {
                let item = item.trim().trim_matches(['\'', '"']);
                if !item.starts_with("127.0.0.1:") && !item.starts_with("host_ip: 127.0.0.1") {
                    bad.push(item.to_string());
                }
            } else if !s.is_empty() && !s.starts_with('#') {
                bad.push(s.to_string());
            }
            i += 1;
        }
    }
    bad
}

fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for p in ps.and_then(Value::as_array).into_iter().flatten() {
            out.push(p);
            walk(p.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(d.get("panels"), &mut out);
    out
}

fn variables(d: &Value) -> &[Value] {
    d.pointer("/templating/list")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `$instance` (or `${instance…}`) in `expr`.
fn uses_instance(expr: &str) -> bool {
    expr.contains("${instance") || has_var(expr, "$instance")
}

/// `var` in `s`, not followed by a word character.
fn has_var(s: &str, var: &str) -> bool {
    s.match_indices(var).any(|(i, _)| {
        s[i + var.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

/// The dashboard's structural checks; its number of panels.
fn lint_dashboard(path: &Path, datasources: &Path) -> Result<usize> {
    let mut problems = Vec::new();
    let uids: Vec<String> = std::fs::read_to_string(datasources)?
        .lines()
        .filter_map(|l| {
            let v = l.trim_start().strip_prefix("uid:")?.trim();
            let v = v.trim_start_matches(['\'', '"']);
            let uid: String = v
                .chars()
                .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
                .collect();
            (!uid.is_empty()).then_some(uid)
        })
        .collect();
    if uids.is_empty() {
        problems.push(format!("{}: no datasource uid", datasources.display()));
    }
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path)?)
        .map_err(|e| Fail(format!("{}: invalid JSON: {e}", path.display())))?;
    let by_uid = |ds: Option<&Value>| {
        ds.and_then(|d| d.get("uid"))
            .and_then(Value::as_str)
            .is_some_and(|u| uids.iter().any(|k| k == u))
    };
    if !variables(&d)
        .iter()
        .any(|v| str_of(v, "name") == "instance")
    {
        problems.push("no templating variable `instance`".into());
    }
    for v in variables(&d) {
        if str_of(v, "type") == "query" && !by_uid(v.get("datasource")) {
            problems.push(format!(
                "variable ${}: datasource is not by uid {uids:?}",
                str_of(v, "name")
            ));
        }
    }
    let mut n = 0;
    for p in panels(&d) {
        if str_of(p, "type") == "row" {
            continue;
        }
        n += 1;
        let title = match str_of(p, "title") {
            "" => format!("panel id {}", p.get("id").unwrap_or(&Value::Null)),
            t => t.to_string(),
        };
        if str_of(p, "description").trim().is_empty() {
            problems.push(format!("panel \"{title}\": no description"));
        }
        if p.pointer("/fieldConfig/defaults/unit")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push(format!("panel \"{title}\": no unit"));
        }
        if !by_uid(p.get("datasource")) {
            problems.push(format!(
                "panel \"{title}\": datasource is not by uid {uids:?}"
            ));
        }
        let targets = p
            .get("targets")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            problems.push(format!("panel \"{title}\": no targets"));
        }
        for t in targets {
            let (expr, ref_id) = (str_of(t, "expr"), str_of(t, "refId"));
            if expr.is_empty() {
                problems.push(format!("panel \"{title}\" {ref_id}: empty expr"));
            } else if !uses_instance(expr) {
                problems.push(format!(
                    "panel \"{title}\" {ref_id}: query does not use $instance"
                ));
            }
            if t.get("datasource").is_some_and(|ds| !by_uid(Some(ds))) {
                problems.push(format!(
                    "panel \"{title}\" {ref_id}: target datasource not by uid"
                ));
            }
        }
    }
    if !problems.is_empty() {
        fail!(
            "dashboard lint {}:\n  {}",
            path.display(),
            problems.join("\n  ")
        );
    }
    Ok(n)
}

/// `(where, expr)` for every panel target and query variable.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let expr = str_of(t, "expr");
            if !expr.is_empty() {
                out.push((
                    format!("panel \"{}\" {}", str_of(p, "title"), str_of(t, "refId")),
                    expr.to_string(),
                ));
            }
        }
    }
    for v in variables(d) {
        let q = match v.get("query") {
            Some(Value::Object(o)) => o.get("query").and_then(Value::as_str),
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        };
        let (Some(q), "query") = (q, str_of(v, "type")) else {
            continue;
        };
        let where_ = format!("variable ${}", str_of(v, "name"));
        // label_values(EXPR, LABEL) is Grafana's; ask Prometheus the same.
        let label_values = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map(|(e, l)| (e, l.trim()))
            .filter(|(e, l)| {
                !e.is_empty() && !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '_')
            });
        match label_values {
            Some((e, l)) => out.push((where_, format!("count by ({l}) ({e})"))),
            None => out.push((where_, q.to_string())),
        }
    }
    out
}

/// Grafana's variables as Prometheus can evaluate them.
fn grafana_to_promql(expr: &str) -> String {
    let mut e = expr.to_string();
    // ${instance}, ${instance:regex}, $instance, [[instance]] -> every instance.
    while let Some(i) = e.find("${instance") {
        let Some(j) = e[i..].find('}') else { break };
        e.replace_range(i..i + j + 1, ".*");
    }
    e = e.replace("[[instance]]", ".*");
    for (var, value) in [
        ("instance", ".*"),
        ("__rate_interval", "1m"),
        ("__interval", "1m"),
        ("__range", "5m"),
    ] {
        e = e.replace(&format!("${{{var}}}"), value);
        let dollar = format!("${var}");
        let mut out = String::new();
        let mut rest = e.as_str();
        while let Some(i) = rest.find(&dollar) {
            let after = &rest[i + dollar.len()..];
            out.push_str(&rest[..i]);
            if after
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                out.push_str(&dollar);
            } else {
                out.push_str(value);
            }
            rest = after;
        }
        out.push_str(rest);
        e = out;
    }
    e
}

/// `deploy/prometheus/prometheus.yml` with the one target `server:9464`
/// pointed at `target` and its one rule file at `rules`.
fn rewrite_config(text: &str, target: &str, rules: &Path) -> Result<String> {
    let n_target = text.matches("server:9464").count();
    let text = text.replace("server:9464", target);
    let mut n_rules = 0;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let item = t
            .strip_prefix('-')
            .map(|r| r.trim().trim_matches(['\'', '"']));
        if item == Some("rules.yml") {
            n_rules += 1;
            let prefix = &line[..line.len() - t.len()];
            out.push_str(&format!(
                "{prefix}- {}\n",
                Value::String(rules.display().to_string())
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if n_target != 1 || n_rules != 1 {
        fail!(
            "expected one target server:9464 and one rule file rules.yml in {PROM_CONFIG}, found {n_target} and {n_rules}"
        );
    }
    Ok(out)
}

/// Every metric of the server's table exported, with its type, and a
/// histogram with buckets (not a summary). The problems found.
fn contract_problems(exposition: &str, table: &str) -> Vec<String> {
    let types: std::collections::HashMap<&str, &str> = exposition
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    let samples: std::collections::HashSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty())
        .collect();
    let mut bad = Vec::new();
    for line in table.lines() {
        let Some((name, typ)) = line.split_once(' ') else {
            continue;
        };
        let present = samples.contains(name)
            || samples
                .iter()
                .any(|s| s.strip_prefix(name).is_some_and(|r| r.starts_with('_')));
        if !present {
            bad.push(format!("{name}: missing from /metrics"));
        } else if let Some(have) = types.get(name).filter(|&&h| h != typ) {
            bad.push(format!("{name}: TYPE {have}, the table says {typ}"));
        }
        if typ == "histogram" && !samples.contains(format!("{name}_bucket").as_str()) {
            bad.push(format!(
                "{name}: no _bucket series (exported as a summary?)"
            ));
        }
    }
    bad
}

// ---------------------------------------------------------------------------
// 3.: the live check.

/// The Prometheus HTTP API at `prom` (`127.0.0.1:PORT`): `data`, or the
/// error it reported.
fn api(prom: &str, path: &str, form: &[(&str, &str)]) -> std::result::Result<Value, String> {
    let r = if form.is_empty() {
        http::get(prom, path)
    } else {
        http::post_form(prom, path, form)
    }
    .map_err(|Fail(e)| e)?;
    let body: Value = serde_json::from_str(&r.body).map_err(|e| match r.status {
        200 => format!("bad JSON: {e}"),
        s => format!("HTTP {s}"),
    })?;
    if str_of(&body, "status") != "success" {
        return Err(format!(
            "{}: {}",
            str_of(&body, "errorType"),
            str_of(&body, "error")
        ));
    }
    Ok(body.get("data").cloned().unwrap_or(Value::Null))
}

/// How many results `expr` has now.
fn query(prom: &str, expr: &str) -> std::result::Result<usize, String> {
    let data = api(prom, "/api/v1/query", &[("query", expr)])?;
    match str_of(&data, "resultType") {
        "scalar" | "string" => Ok(1),
        _ => Ok(data
            .get("result")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)),
    }
}

/// Successful scrapes of `job` in the last 10 minutes.
fn scrapes(prom: &str, job: &str) -> u64 {
    let expr = format!("sum_over_time(up{{job=\"{job}\"}}[10m])");
    api(prom, "/api/v1/query", &[("query", &expr)])
        .ok()
        .and_then(|d| {
            d.pointer("/result/0/value/1")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0, |v| v as u64)
}

/// Every dashboard and rule expression (and recorded series) evaluated,
/// retried until `deadline` while any fails; the number evaluated.
fn evaluate(
    prom: &str,
    dashboard: &Value,
    expected_rules: usize,
    limit: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let mut items: Vec<(String, String, bool)> = dashboard_exprs(dashboard)
            .into_iter()
            .map(|(w, e)| (w, grafana_to_promql(&e), false))
            .collect();
        let mut failures = Vec::new();
        let mut n_rules = 0;
        match api(prom, "/api/v1/rules", &[]) {
            Err(e) => failures.push(format!("/api/v1/rules: {e}")),
            Ok(data) => {
                for g in data
                    .get("groups")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for r in g
                        .get("rules")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        n_rules += 1;
                        let where_ = format!("rule {}/{}", str_of(g, "name"), str_of(r, "name"));
                        if str_of(r, "health") == "err" {
                            failures.push(format!("{where_}: {}", str_of(r, "lastError")));
                        }
                        let q = str_of(r, "query").to_string();
                        if str_of(r, "type") == "recording" {
                            items.push((format!("{where_} (expr)"), q, false));
                            items.push((
                                format!("{where_} (recorded series)"),
                                str_of(r, "name").to_string(),
                                false,
                            ));
                        } else {
                            // An alert's expression is empty while all is
                            // well; it only has to evaluate.
                            items.push((format!("{where_} (alert expr, may be empty)"), q, true));
                        }
                    }
                }
            }
        }
        if n_rules != expected_rules {
            failures.push(format!(
                "Prometheus loaded {n_rules} rules, rules.yml has {expected_rules}"
            ));
        }
        for a in LOAD_ASSERTIONS {
            items.push(("load ran".into(), a.into(), false));
        }
        for (where_, expr, may_be_empty) in &items {
            if expr.contains('$') {
                failures.push(format!("UNSUBSTITUTED {where_}: {expr}"));
                continue;
            }
            match query(prom, expr) {
                Err(e) => failures.push(format!("ERROR {where_}: {e}\n      {expr}")),
                Ok(0) if !may_be_empty => failures.push(format!("EMPTY {where_}:\n      {expr}")),
                Ok(_) => {}
            }
        }
        if failures.is_empty() {
            return Ok(items.len());
        }
        if Instant::now() >= deadline {
            fail!(
                "PromQL: {} of {} expressions failed:\n  {}",
                failures.len(),
                items.len(),
                failures.join("\n  ")
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn bin(env: &str, name: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| release_bin(name), PathBuf::from)
}

fn live_check(root: &Path, work: &Scratch, n_rules: usize) -> Result {
    let server_bin = bin("VMASIM_SERVER_BIN", "vmasim-server");
    let client_bin = bin("VMASIM_CLIENT_BIN", "vmasim");
    let load_secs: u64 = match std::env::var("DEPLOY_CHECK_LOAD_SECONDS") {
        Ok(s) => s
            .parse()
            .map_err(|_| Fail(format!("DEPLOY_CHECK_LOAD_SECONDS={s:?} is not a number")))?,
        Err(_) => 20,
    };
    if !server_bin.is_file() || !client_bin.is_file() {
        if std::env::var_os("VMASIM_SERVER_BIN").is_some()
            || std::env::var_os("VMASIM_CLIENT_BIN").is_some()
        {
            fail!("VMASIM_SERVER_BIN / VMASIM_CLIENT_BIN not executable");
        }
        log("building vmasim-server and vmasim (release)");
        proc::check(
            "cargo build --release",
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
                "build",
                "--release",
                "--bin",
                "vmasim-server",
                "--bin",
                "vmasim",
            ]),
        )?;
    }
    let table = proc::check(
        "vmasim-server --print-metrics",
        Command::new(&server_bin).arg("--print-metrics"),
    )?;

    let ports = http::free_ports(3)?;
    let server_url = format!("http://127.0.0.1:{}", ports[0]);
    let metrics_addr = format!("127.0.0.1:{}", ports[1]);
    let prom = format!("127.0.0.1:{}", ports[2]);

    log(format!(
        "starting vmasim-server (grpc {server_url}, metrics {metrics_addr})"
    ));
    let mut cmd = Command::new(&server_bin);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{}", ports[0]))
        .arg("--metrics-listen")
        .arg(&metrics_addr);
    let mut server = Child::spawn("vmasim-server", cmd, &work.file("server.log"))?;
    let health = || {
        proc::output(
            Command::new(&client_bin)
                .args(["health", "--server", &server_url])
                .env_remove("VMASIM_TOKEN")
                .env_remove("VMASIM_TLS_CA"),
        )
        .is_ok_and(|(ok, _)| ok)
    };
    let serving = proc::poll(Duration::from_secs(30), Duration::from_millis(250), || {
        if !server.alive() {
            fail!("vmasim-server exited at start-up");
        }
        Ok(health())
    })?;
    if !serving {
        fail!("vmasim-server not SERVING after 30 s");
    }
    log("server is SERVING");

    let config = rewrite_config(
        &std::fs::read_to_string(PROM_CONFIG)?,
        &metrics_addr,
        &root.join(RULES),
    )?;
    let config_path = work.file("prometheus.yml");
    std::fs::write(&config_path, config)?;
    proc::check(
        "rewritten Prometheus config invalid",
        Command::new("promtool")
            .args(["check", "config"])
            .arg(&config_path),
    )?;
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            work.file("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .arg("--log.level=warn");
    let mut prometheus = Child::spawn("prometheus", cmd, &work.file("prometheus.log"))?;
    let ready = proc::poll(Duration::from_secs(30), Duration::from_millis(250), || {
        if !prometheus.alive() {
            fail!("prometheus exited at start-up");
        }
        Ok(http::get(&prom, "/-/ready").is_ok_and(|r| r.status == 200))
    })?;
    if !ready {
        fail!("prometheus not ready after 30 s");
    }
    log(format!("prometheus ready at http://{prom}"));

    let mut loads = Vec::new();
    for profile in LOAD_PROFILES {
        let mut cmd = Command::new(&client_bin);
        cmd.args(["load", "--server", &server_url, "--profile", profile])
            .arg("--duration")
            .arg(format!("{load_secs}s"))
            .args(["--concurrency", "4"])
            .env_remove("VMASIM_TOKEN")
            .env_remove("VMASIM_TLS_CA");
        loads.push(Child::spawn(
            &format!("load {profile}"),
            cmd,
            &work.file(&format!("load-{profile}.log")),
        )?);
    }
    log(format!(
        "load running: {} for {load_secs}s",
        LOAD_PROFILES.join(" ")
    ));

    let mut n = 0;
    let scraped = proc::poll(Duration::from_secs(60), Duration::from_secs(1), || {
        n = scrapes(&prom, "vmasim");
        if !server.alive() {
            fail!("vmasim-server died");
        }
        Ok(n >= 3)
    })?;
    if !scraped {
        fail!("fewer than 3 successful scrapes of {metrics_addr} after 60 s");
    }
    log(format!("prometheus scraped the server {n} times"));

    let mut failed = Vec::new();
    for (load, profile) in loads.iter_mut().zip(LOAD_PROFILES) {
        // The client is given load_secs; allow it 60 s more to finish.
        match load.wait_for(Duration::from_secs(load_secs + 60))? {
            None => failed.push(format!("{profile} (did not finish)")),
            Some(st) if !st.success() => failed.push(format!("{profile} ({st})")),
            Some(_) => {}
        }
    }
    drop(loads);
    if !failed.is_empty() {
        fail!("vmasim load failed: {}", failed.join(", "));
    }
    if !server.alive() {
        fail!("vmasim-server died under load");
    }
    log("load finished");

    let metrics = http::get(&metrics_addr, "/metrics")?;
    if metrics.status != 200 {
        fail!("GET http://{metrics_addr}/metrics: HTTP {}", metrics.status);
    }
    // Prometheus 3 (the compose image) refuses a scrape without a text
    // format Content-Type; Debian's Prometheus 2 here would not notice.
    let ctype = metrics.header("content-type").unwrap_or("");
    if !(ctype.starts_with("text/plain") || ctype.starts_with("application/openmetrics-text")) {
        fail!(
            "/metrics answers Content-Type '{ctype}'; Prometheus 3 needs text/plain; version=0.0.4"
        );
    }
    let exposition = work.file("metrics.txt");
    std::fs::write(&exposition, &metrics.body)?;
    proc::check(
        "promtool check metrics found problems",
        Command::new("sh")
            .arg("-c")
            .arg("promtool check metrics < \"$1\"")
            .arg("sh")
            .arg(&exposition),
    )?;
    let bad = contract_problems(&metrics.body, &table);
    if !bad.is_empty() {
        fail!(
            "/metrics does not export the server's metric table:\n  {}",
            bad.join("\n  ")
        );
    }
    log(format!(
        "promtool check metrics ok; all {} metrics of the table exported",
        table.lines().count()
    ));

    // Let at least one more scrape and one rule evaluation see the final
    // state; `evaluate` then retries failing expressions for up to 45 s.
    std::thread::sleep(Duration::from_secs(6));
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD)?)?;
    let n_exprs = evaluate(&prom, &dashboard, n_rules, Duration::from_secs(45))?;
    log(format!("{n_exprs} expressions ok"));
    drop(prometheus);
    server.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_variables_become_promql() {
        assert_eq!(
            grafana_to_promql(
                r#"rate(x{instance=~"$instance"}[$__rate_interval]) + y{i=~"${instance:regex}"}[$__range] $__interval_ms"#
            ),
            r#"rate(x{instance=~".*"}[1m]) + y{i=~".*"}[5m] $__interval_ms"#
        );
    }

    #[test]
    fn compose_ports_outside_loopback() {
        let text =
            "services:\n  s:\n    ports:\n      - \"127.0.0.1:1:1\"\n      - \"2:2\"\n    x: 1\n";
        assert_eq!(compose_ports(text), vec!["2:2".to_string()]);
    }

    #[test]
    fn contract_checks_presence_type_and_buckets() {
        let expo = "# TYPE a_total counter\na_total 1\n# TYPE h summary\nh{quantile=\"0.5\"} 1\n";
        let table = "a_total counter\nh histogram\nmissing gauge\n";
        assert_eq!(
            contract_problems(expo, table),
            vec![
                "h: TYPE summary, the table says histogram",
                "h: no _bucket series (exported as a summary?)",
                "missing: missing from /metrics",
            ]
        );
    }
}
