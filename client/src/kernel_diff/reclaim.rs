//! What on this machine can take file pages out of the executor's page
//! tables behind its back, so that the comparison can tell that from a
//! simulation that maps too much.
//!
//! The simulation has no reclaim. The kernel, on some machines, does it on
//! its own: DAMON with a `pageout` scheme (`mm/damon/paddr.c`,
//! `damon_pa_pageout` → `reclaim_pages`) picks physical regions that look
//! cold and runs them through `shrink_folio_list`, whose `try_to_unmap`
//! takes a shmem (memfd) folio out of every page table mapping it even when
//! the writeout then fails for want of swap: the folio stays in the page
//! cache, unmapped. Its rmap walks (`damon_folio_mkold`) also hold file
//! folios locked for a moment, and `filemap_map_pages` skips a locked
//! folio (`next_uptodate_folio`), so fault-around can map fewer cached
//! pages than the simulation. Page migration (compaction) does the same
//! for the time a folio moves. Region ages are per physical range, so a
//! page freshly allocated into an old region can go within a second.
//!
//! Measured on the reference machine (Linux 6.18, Firecracker, one kdamond
//! with `paddr` operations and a `pageout` scheme for regions idle 12
//! aggregation intervals): a 80,000-operation run found 111 such events in
//! 15 minutes, a replay of the same 15,855 operations in 33 s none.
//!
//! Where such a reclaimer is present, a file-backed VMA whose kernel `Rss`
//! is below the simulation's (with the same `Anonymous`) is looked at page
//! by page and the pages the kernel does not have are dropped from the
//! simulation too (`MADV_DONTNEED` there, which zaps the PTE and keeps the
//! page cache, as `try_to_unmap` did); then the comparison is exact again,
//! so a later fault that maps them back is compared like any other. Where
//! none is present, any difference is a divergence.

use std::fs;
use std::path::Path;

/// The DAMON sysfs root (`mm/damon/sysfs.c`).
const DAMON_ADMIN: &str = "/sys/kernel/mm/damon/admin/kdamonds";

/// What can unmap file pages on its own on this machine.
#[derive(Debug, Clone, Default)]
pub struct Reclaimers {
    /// Running DAMON contexts with a `pageout` scheme, as
    /// `kdamond N: OPERATIONS`.
    pub damon_pageout: Vec<String>,
    /// `pgmigrate_success` in `/proc/vmstat` when the run began.
    migrations_at_start: u64,
}

impl Reclaimers {
    /// Look at this machine now.
    pub fn detect() -> Self {
        Reclaimers {
            damon_pageout: damon_pageout(Path::new(DAMON_ADMIN)),
            migrations_at_start: pgmigrate_success(),
        }
    }

    /// Can a file page leave the executor's page tables (or be skipped by
    /// fault-around) without an operation of the test? True with a DAMON
    /// pageout scheme, or once pages have been migrated during the run.
    pub fn active(&self) -> bool {
        !self.damon_pageout.is_empty() || pgmigrate_success() > self.migrations_at_start
    }

    /// One line for the run's header, if any is present.
    pub fn describe(&self) -> Option<String> {
        (!self.damon_pageout.is_empty()).then(|| {
            format!(
                "this machine runs DAMON pageout ({}): file pages the kernel unmaps on its own are dropped from the simulation too and counted",
                self.damon_pageout.join(", ")
            )
        })
    }
}

/// `kdamond N: OPS` for every kdamond that is `on` with a context that has
/// a `pageout` scheme.
fn damon_pageout(admin: &Path) -> Vec<String> {
    let read = |p: &Path| fs::read_to_string(p).map(|s| s.trim().to_string()).ok();
    let mut found = Vec::new();
    let Ok(kdamonds) = fs::read_dir(admin) else {
        return found;
    };
    let mut dirs: Vec<_> = kdamonds.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for k in dirs {
        if read(&k.join("state")).as_deref() != Some("on") {
            continue;
        }
        let Ok(contexts) = fs::read_dir(k.join("contexts")) else {
            continue;
        };
        for c in contexts.flatten().map(|e| e.path()) {
            let Ok(schemes) = fs::read_dir(c.join("schemes")) else {
                continue;
            };
            let pageout = schemes
                .flatten()
                .any(|s| read(&s.path().join("action")).as_deref() == Some("pageout"));
            if pageout {
                let name = k
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into());
                let ops = read(&c.join("operations")).unwrap_or_default();
                found.push(format!("kdamond {name}: {ops}"));
            }
        }
    }
    found
}

/// Pages migrated since boot (`pgmigrate_success`), 0 if unknown.
fn pgmigrate_success() -> u64 {
    fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("pgmigrate_success "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The page-aligned runs of pages in `[start, start + 64 pages)` that
/// `present` (bit i: page i present in the kernel) lacks, clipped to `end`.
pub fn absent_runs(start: u64, end: u64, present: u64, page: u64) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut run: Option<u64> = None;
    for i in 0..64u64 {
        let a = start + i * page;
        let absent = a < end && present & (1 << i) == 0;
        match (absent, run) {
            (true, None) => run = Some(a),
            (false, Some(s)) => {
                runs.push((s, a - s));
                run = None;
            }
            _ => {}
        }
        if a >= end {
            break;
        }
    }
    if let Some(s) = run {
        let stop = end.min(start + 64 * page);
        runs.push((s, stop - s));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_runs_cover_the_zero_bits_up_to_the_end() {
        const P: u64 = 4096;
        // Pages 0, 1 present; 2-3 absent; 4 present; 5-6 absent; end at 7.
        let runs = absent_runs(0x1000, 0x1000 + 7 * P, 0b1_0011, P);
        assert_eq!(runs, vec![(0x1000 + 2 * P, 2 * P), (0x1000 + 5 * P, 2 * P)]);
        // All 64 absent, range longer than the chunk: one 64-page run.
        assert_eq!(absent_runs(0, 100 * P, 0, P), vec![(0, 64 * P)]);
        assert!(absent_runs(0, 3 * P, 0b111, P).is_empty());
    }

    #[test]
    fn a_running_pageout_kdamond_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("0");
        let s = k.join("contexts/0/schemes/0");
        fs::create_dir_all(&s).unwrap();
        fs::write(k.join("state"), "on\n").unwrap();
        fs::write(k.join("contexts/0/operations"), "paddr\n").unwrap();
        fs::write(s.join("action"), "pageout\n").unwrap();
        assert_eq!(damon_pageout(dir.path()), vec!["kdamond 0: paddr"]);
        fs::write(k.join("state"), "off\n").unwrap();
        assert!(damon_pageout(dir.path()).is_empty());
        fs::write(k.join("state"), "on\n").unwrap();
        fs::write(s.join("action"), "stat\n").unwrap();
        assert!(damon_pageout(dir.path()).is_empty());
    }
}
