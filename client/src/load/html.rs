//! `load --html FILE`: a self-contained HTML report.
//!
//! One file, no scripts, no fonts, no network: inline CSS and inline SVG
//! charts (latency histogram, throughput per second), plus tables of the
//! latency percentiles, operations, status codes and server-side counters.
//! The markup is also well-formed XML (every element closed, text escaped),
//! so it can be checked mechanically and opened anywhere.

use crate::load::report::Summary;
use std::fmt::Write as _;

/// Escapes text for HTML/XML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const W: f64 = 720.0;
const H: f64 = 240.0;
const PAD_L: f64 = 70.0;
const PAD_R: f64 = 70.0;
const PAD_T: f64 = 20.0;
const PAD_B: f64 = 50.0;

fn nice(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The latency histogram as an SVG bar chart.
fn histogram_svg(s: &Summary) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img"><title>Latency histogram</title>"#
    );
    let n = s.histogram.len().max(1) as f64;
    let maxc = s
        .histogram
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
    let bw = pw / n;
    axes(&mut o, maxc, "requests");
    for (i, b) in s.histogram.iter().enumerate() {
        let h = b.count as f64 / maxc * ph;
        let x = PAD_L + i as f64 * bw;
        let _ = write!(
            o,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"><title>≤ {:.3} ms: {}</title></rect>"#,
            x + 1.0,
            PAD_T + ph - h,
            (bw - 2.0).max(1.0),
            b.upper_ms,
            b.count
        );
        let _ = write!(
            o,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end" transform="rotate(-35 {:.1} {:.1})">{:.3}</text>"#,
            x + bw / 2.0,
            H - PAD_B + 14.0,
            x + bw / 2.0,
            H - PAD_B + 14.0,
            b.upper_ms
        );
    }
    let _ = write!(
        o,
        r#"<text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">latency upper bound (ms)</text></svg>"#,
        PAD_L + pw / 2.0,
        H - 4.0
    );
    o
}

/// Y axis with 4 grid lines, labelled from 0 to `max`.
fn axes(o: &mut String, max: f64, label: &str) {
    let ph = H - PAD_T - PAD_B;
    for i in 0..=4 {
        let y = PAD_T + ph - ph * i as f64 / 4.0;
        let _ = write!(
            o,
            r#"<line class="grid" x1="{PAD_L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - PAD_R,
            PAD_L - 6.0,
            y + 4.0,
            nice(max * i as f64 / 4.0)
        );
    }
    let _ = write!(
        o,
        r#"<text class="label" x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        PAD_T + ph / 2.0,
        PAD_T + ph / 2.0,
        esc(label)
    );
}

/// Requests/s (bars) and simulated faults/s (line, right axis) per second.
fn throughput_svg(s: &Summary) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img"><title>Throughput over time</title>"#
    );
    let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
    let n = s.timeline.len().max(1) as f64;
    let maxr = s
        .timeline
        .iter()
        .map(|x| x.requests)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let maxf = s
        .timeline
        .iter()
        .map(|x| x.faults)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    axes(&mut o, maxr, "requests/s");
    let bw = pw / n;
    let mut pts = Vec::new();
    for (i, sec) in s.timeline.iter().enumerate() {
        let h = sec.requests as f64 / maxr * ph;
        let x = PAD_L + i as f64 * bw;
        let _ = write!(
            o,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"><title>second {}: {} requests, {} faults</title></rect>"#,
            x + 0.5,
            PAD_T + ph - h,
            (bw - 1.0).max(0.5),
            sec.second,
            sec.requests,
            sec.faults
        );
        pts.push(format!(
            "{:.1},{:.1}",
            x + bw / 2.0,
            PAD_T + ph - sec.faults as f64 / maxf * ph
        ));
        if s.timeline.len() <= 30 || i % (s.timeline.len() / 15 + 1) == 0 {
            let _ = write!(
                o,
                r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + bw / 2.0,
                H - PAD_B + 14.0,
                sec.second
            );
        }
    }
    if !pts.is_empty() {
        let _ = write!(o, r#"<polyline class="line" points="{}"/>"#, pts.join(" "));
    }
    for i in 0..=4 {
        let y = PAD_T + ph - ph * i as f64 / 4.0;
        let _ = write!(
            o,
            r#"<text class="tick faults" x="{:.1}" y="{:.1}">{}</text>"#,
            W - PAD_R + 6.0,
            y + 4.0,
            nice(maxf * i as f64 / 4.0)
        );
    }
    let _ = write!(
        o,
        r#"<text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">seconds since start (bars: requests/s, line: simulated faults/s, right axis)</text></svg>"#,
        PAD_L + pw / 2.0,
        H - 4.0
    );
    o
}

fn table(o: &mut String, title: &str, rows: &[(String, String)]) {
    let _ = write!(o, "<h2>{}</h2><table>", esc(title));
    for (k, v) in rows {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    o.push_str("</table>\n");
}

/// The whole page.
pub fn render(s: &Summary) -> String {
    let mut o = String::new();
    o.push_str(
        r#"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/><title>vmasim load report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}
td{font-family:monospace}th{background:#f4f4f4;font-weight:normal}
.bar{fill:#4a7ebb}.line{fill:none;stroke:#d9534f;stroke-width:2}.grid{stroke:#e4e4e4}
.tick{font-size:10px;fill:#555}.faults{fill:#d9534f}.label{font-size:11px;fill:#333}.bad{color:#b00}
</style></head><body>
<h1>vmasim load report</h1>
"#,
    );
    let _ = writeln!(o, "<p>{}</p>", esc(&s.description));
    if let Some(w) = &s.rate_warning {
        let _ = writeln!(o, "<p class=\"bad\">WARNING: {}</p>", esc(w));
    }
    let l = &s.latency_ms;
    let mut summary = vec![
        ("target".into(), format!("{} at {}", s.target, s.date)),
        ("stopped".into(), s.stopped.to_string()),
        (
            "requests".into(),
            format!(
                "{} ({} errors, {} of them expected, {})",
                s.count,
                s.errors,
                s.expected_errors,
                s.error_rate()
            ),
        ),
    ];
    if s.unreachable > 0 {
        summary.push((
            "calls that found no server".into(),
            format!("{} (not counted as requests)", s.unreachable),
        ));
    }
    if let Some(offered) = s.offered_rps {
        summary.push((
            "offered requests/s".into(),
            format!("{offered} ({} sent late)", s.late_requests),
        ));
    }
    summary.extend([
        ("measured time".into(), format!("{:.2} s", s.total_secs)),
        ("requests/s".into(), format!("{:.1}", s.rps)),
        (
            "simulated faults/s".into(),
            format!("{:.1}", s.faults_per_sec),
        ),
        (
            "latency min / mean / max".into(),
            format!("{:.3} / {:.3} / {:.3} ms", l.min, l.mean, l.max),
        ),
    ]);
    table(&mut o, "Summary", &summary);
    table(
        &mut o,
        "Latency distribution",
        &s.latency_distribution
            .iter()
            .map(|p| {
                (
                    format!("p{}", p.percentile),
                    format!("{:.3} ms", p.latency_ms),
                )
            })
            .collect::<Vec<_>>(),
    );
    o.push_str("<h2>Latency histogram</h2>\n");
    o.push_str(&histogram_svg(s));
    o.push_str("\n<h2>Throughput over time</h2>\n");
    o.push_str(&throughput_svg(s));
    o.push('\n');
    let rows = |v: &[(String, u64)]| -> Vec<(String, String)> {
        v.iter().map(|(k, n)| (k.clone(), n.to_string())).collect()
    };
    table(&mut o, "Operations", &rows(&s.operations));
    table(&mut o, "Status codes", &rows(&s.status_codes));
    if !s.error_distribution.is_empty() {
        let errs: Vec<(String, String)> = s
            .error_distribution
            .iter()
            .map(|e| {
                let tag = match (&e.expected, e.reached_server) {
                    (_, false) => " (no server: not a request)".to_string(),
                    (Some(why), _) => format!(" (expected: {why})"),
                    (None, _) => String::new(),
                };
                (
                    format!("{} {}", e.operation, e.code),
                    format!("{}: {}{tag}", e.count, e.message),
                )
            })
            .collect();
        table(&mut o, "Error distribution", &errs);
    }
    table(
        &mut o,
        "Fault outcomes (client side)",
        &rows(&s.fault_outcomes),
    );
    match &s.server {
        Some(d) => {
            table(
                &mut o,
                "Server-side counters (delta over the run)",
                &d.summary_rows(),
            );
            let all: Vec<(String, String)> = d
                .values
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            table(
                &mut o,
                "All server counters (gauges: value at the end)",
                &all,
            );
        }
        None => o.push_str("<p>Server Stats unavailable.</p>\n"),
    }
    if !s.divergences.is_empty() {
        let _ = write!(
            o,
            r#"<h2 class="bad">Verify: {} divergence(s)</h2>"#,
            s.divergences.len()
        );
        for d in &s.divergences {
            let _ = write!(o, "<pre>{}</pre>", esc(&d.to_string()));
        }
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(esc("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }

    #[test]
    fn renders_svg() {
        let s = Summary::new(&crate::load::report::tests_support::sample());
        let h = render(&s);
        assert!(h.contains("<svg") && h.ends_with("</html>\n"));
        assert_eq!(h.matches("<svg").count(), 2);
        assert_eq!(h.matches("</svg>").count(), 2);
        // What the text report says, the page says.
        assert!(h.contains("<th>p99.9</th>"), "{h}");
        assert!(h.contains("<h2>Error distribution</h2>"), "{h}");
        assert!(
            h.contains("<th>fault NOT_FOUND</th><td>10: no such process N"),
            "{h}"
        );
        assert!(h.contains("2 (not counted as requests)"), "{h}");
        let mut r = crate::load::report::tests_support::sample();
        r.config.rps = Some(1000.0);
        let h = render(&Summary::new(&r));
        assert!(
            h.contains("<p class=\"bad\">WARNING: the offered rate"),
            "{h}"
        );
    }
}
