//! The race lab front end: `vmasim race --list` and `vmasim race NAME`.
//!
//! The server runs a scripted interleaving of a lockless fault reader
//! against a writer/freer of a VMA slot and returns every step; this module
//! only lays the timeline out as an aligned table and states the verdict.

use crate::connect::Client;
use crate::error::CliError;
use vmasim_proto::v1::{
    ListRaceScenariosRequest, RaceScenarioRequest, RaceScenarioResponse, RaceVariant, RaceVerdict,
};

/// `race --list`: one line per scenario, name then description.
pub async fn list(client: &mut Client) -> Result<String, CliError> {
    let r = client
        .list_race_scenarios(ListRaceScenariosRequest {})
        .await?
        .into_inner();
    let w = r.scenarios.iter().map(|s| s.name.len()).max().unwrap_or(0);
    Ok(r.scenarios
        .iter()
        .map(|s| format!("{:<w$}  {}\n", s.name, s.description))
        .collect())
}

/// `race NAME [--variant]`: runs the scenario and renders it.
pub async fn run(client: &mut Client, name: &str, buggy: bool) -> Result<String, CliError> {
    let variant = if buggy {
        RaceVariant::Buggy
    } else {
        RaceVariant::Fixed
    };
    let r = client
        .race_scenario(RaceScenarioRequest {
            name: name.to_string(),
            variant: variant as i32,
        })
        .await?
        .into_inner();
    Ok(render(&r))
}

/// The timeline as a table plus a verdict line.
pub fn render(r: &RaceScenarioResponse) -> String {
    let variant = RaceVariant::try_from(r.variant)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("RACE_VARIANT_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| r.variant.to_string());
    let mut out = format!("{} ({variant}): {}\n\n", r.name, r.description);
    let header = [
        "step",
        "thread",
        "action",
        "vm_refcnt",
        "vm_lock_seq",
        "mm_lock_seq",
        "gen",
    ];
    let rows: Vec<[String; 7]> = r
        .timeline
        .iter()
        .map(|s| {
            [
                s.step.to_string(),
                s.thread.clone(),
                s.action.clone(),
                // VMA_LOCK_OFFSET is easier to see in hex.
                if s.vm_refcnt >= 0x4000_0000 {
                    format!("{:#x}", s.vm_refcnt)
                } else {
                    s.vm_refcnt.to_string()
                },
                // u64::MAX: never write-locked since allocation
                // (UINT_MAX upstream).
                if s.vm_lock_seq == u64::MAX {
                    "-".to_string()
                } else {
                    s.vm_lock_seq.to_string()
                },
                s.mm_lock_seq.to_string(),
                s.generation.to_string(),
            ]
        })
        .collect();
    let mut w = header.map(str::len);
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            // Numbers right-aligned, text left-aligned.
            if i == 0 || i >= 3 {
                l.push_str(&format!("{c:>width$}  ", width = w[i]));
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header));
    out.push_str(&line(
        w.map(|n| "-".repeat(n)).each_ref().map(|s| s.as_str()),
    ));
    for row in &rows {
        out.push_str(&line(row.each_ref().map(|s| s.as_str())));
    }
    let verdict = RaceVerdict::try_from(r.verdict)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("RACE_VERDICT_")
                .to_string()
        })
        .unwrap_or_else(|_| r.verdict.to_string());
    out.push('\n');
    if r.caught_by.is_empty() {
        out.push_str(&format!("verdict: {verdict}\n"));
    } else {
        out.push_str(&format!("verdict: {verdict} (caught by {})\n", r.caught_by));
    }
    if !r.summary.is_empty() {
        out.push_str(&format!("{}\n", r.summary));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmasim_proto::v1::RaceStep;

    #[test]
    fn renders_aligned() {
        let r = RaceScenarioResponse {
            name: "reuse-same-mm".into(),
            variant: RaceVariant::Fixed as i32,
            description: "d".into(),
            timeline: vec![
                RaceStep {
                    step: 1,
                    thread: "reader".into(),
                    action: "mas_walk -> vma".into(),
                    vm_refcnt: 1,
                    ..Default::default()
                },
                RaceStep {
                    step: 2,
                    thread: "writer".into(),
                    action: "vma_mark_detached".into(),
                    ..Default::default()
                },
            ],
            verdict: RaceVerdict::Caught as i32,
            caught_by: "vm_refcnt detached".into(),
            summary: "s".into(),
        };
        let t = render(&r);
        assert!(t.contains("verdict: CAUGHT (caught by vm_refcnt detached)\ns\n"));
        let lines: Vec<&str> = t
            .lines()
            .filter(|l| l.contains("reader") || l.contains("writer"))
            .collect();
        assert_eq!(lines[0].find("mas_walk"), lines[1].find("vma_mark"));
    }
}
