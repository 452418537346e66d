//! `vmasim kernel-diff`: its arguments and the run (random, scripted, the
//! `vm.max_map_count` scenario), the summary, and the divergence report
//! with a shrunk script.

use crate::connect::Target;
use crate::error::CliError;
use crate::parse::parse_duration;
use std::path::PathBuf;
use std::time::Duration;

/// Shown by `vmasim kernel-diff --help`.
const AFTER_HELP: &str = "\
Runs the same operations in a real process (a child, without ASLR) and in a
simulated one, and compares, after each operation, the result (address or
errno <-> gRPC status) and every /proc/PID/maps line from the heap start to
the end of the test window 0x7f0000000000-0x7f0040000000 (start, end, perms,
offset, which file, name, Rss and Anonymous from smaps). On the first
divergence it shrinks the sequence to a minimal one, prints it as a script,
prints both maps, and exits 10.

Script format (--script FILE), one operation a line, `#` comments, an
optional `@P` first selects the process (0, or a fork child: the lowest free
number):
  mmap ADDR LEN PROT FLAGS [file=N offset=OFF]   N = memfd 0..3 (64 MiB each)
  munmap ADDR LEN
  mprotect ADDR LEN PROT
  brk OFF | brk -OFF | brk query                  brk(start_brk + OFF), brk(0)
  touch ADDR read|write                           fault a page in (probed: no crash)
  mremap OLD OLDLEN NEWLEN [FLAGS] [NEWADDR]      FLAGS: 0 or MREMAP_MAYMOVE|MREMAP_FIXED|
                                                  MREMAP_DONTUNMAP; NEWADDR: destination/hint
  madvise ADDR LEN ADVICE   MADV_DONTNEED, MADV_FREE, MADV_DONTFORK, MADV_DOFORK,
                            MADV_WIPEONFORK, MADV_KEEPONFORK (or a number)
  fork | exit
  fill ADDR COUNT          COUNT 1-page rw- anonymous MAP_FIXED maps, every 2 pages
ADDR/LEN/OFF: hex or decimal (LEN also 4K, 2M); PROT: rw-, r-x, ---;
FLAGS: MAP_* names joined by | (MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED), hex
for other bits. Example:
  mmap 0x7f003fff0000 0x10000 rw- MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED
  mprotect 0x7f003fff4000 4K r--
  touch 0x7f003fff0000 write
  fork
  @1 munmap 0x7f003fff2000 8K
  mremap 0x7f003fff0000 16K 32K MREMAP_MAYMOVE
  madvise 0x7f003fff0000 8K MADV_DONTNEED

Where the machine unmaps file pages on its own (DAMON with a pageout scheme,
page migration), a file VMA whose kernel Rss falls below the simulation's is
read page by page and the pages the kernel lacks are dropped from the
simulation too (MADV_DONTNEED there); the summary counts them. Elsewhere any
Rss difference is a divergence.

For chasing a divergence (environment variables):
  VMASIM_KDIFF_CHECK_PAGEMAP=1  take every snapshot with PAGEMAP_SCAN and smaps
                                and fail where they disagree
  VMASIM_KDIFF_WATCH=N:A-B      report on stderr the command after which each
                                page A..B (hex page offsets) of memfd N entered
                                the kernel's page cache

Linux on x86-64 only.";

/// `--json` does not apply.
pub const JSON: bool = false;

/// Arguments of `vmasim kernel-diff`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct Args {
    /// Random operations to run (with --seed).
    #[arg(long, default_value_t = 10_000)]
    pub ops: u64,
    /// Seed of the random generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run this script instead of random operations (format: see --help).
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Also run the vm.max_map_count scenario: fill the window up to the
    /// kernel's limit, then random operations at the limit.
    #[arg(long)]
    pub limit: bool,
    /// Only the vm.max_map_count scenario (no random run).
    #[arg(long, conflicts_with = "script")]
    pub limit_only: bool,
    /// Random operations at the limit.
    #[arg(long, default_value_t = 300)]
    pub limit_ops: u64,
    /// Leave families of operations out of the random run, comma separated:
    /// anon-shared, file, populate, growsdown, hugetlb, odd-flags, odd-args,
    /// thp, brk, fork, mprotect, munmap, touch.
    #[arg(long, value_delimiter = ',', value_name = "FAMILY")]
    pub without: Vec<String>,
    /// Don't compare Rss/Anonymous (reads maps instead of smaps: faster).
    #[arg(long)]
    pub no_rss: bool,
    /// Time allowed for shrinking a divergent sequence.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub shrink_time: Duration,
    /// Report the divergent sequence as it is, unshrunk.
    #[arg(long)]
    pub no_shrink: bool,
    /// Write the minimal divergent script to FILE too.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// The executor binary (default: this one).
    #[arg(long, hide = true)]
    pub executor: Option<PathBuf>,
}

/// Runs it: against `--server`, or an embedded server (Linux x86-64).
pub async fn run(a: &Args, ctx: &super::Ctx) -> Result<(), CliError> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        imp::run(a, ctx.server()).await
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        let _ = (a, ctx);
        Err(CliError::Usage(
            "kernel-diff compares the simulation with the running kernel, which must be \
             Linux on x86-64 (the simulation models x86-64's address space); this is a \
             different platform"
                .into(),
        ))
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp {
    use super::*;
    use crate::kernel_diff::ops::{Generator, Step, parse_script};
    use crate::kernel_diff::runner::{Divergence, Runner};
    use crate::kernel_diff::shrink::ddmin;
    use crate::kernel_diff::{NR_FILES, PAGE, WINDOW_END, WINDOW_START};
    use indicatif::{ProgressBar, ProgressStyle};
    use std::collections::BTreeMap;
    use std::io::IsTerminal;
    use std::path::Path;
    use std::time::Instant;

    /// How to make fresh runners.
    struct Ctx {
        exe: PathBuf,
        target: Target,
        file_base: u64,
        /// Runners started so far: each gets memfd ids of its own, as each
        /// executor has fresh memfds, so no page the simulated page cache
        /// keeps for one run's files is found by the next run's faults.
        runs: std::sync::atomic::AtomicU64,
    }

    impl Ctx {
        async fn runner(&self, smaps: bool) -> Result<Runner, CliError> {
            let client = self.target.connect().await?;
            // Relaxed: a counter for uniqueness only.
            let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let base = self.file_base + run * NR_FILES as u64;
            let mut r = Runner::start(&self.exe, client, base).await?;
            if !smaps {
                r.set_smaps(false)?;
            }
            Ok(r)
        }

        /// Replay `steps` from scratch; the first divergence, if any.
        /// `every`: compare maps after every step, else (cheap shrink
        /// candidates) only results, and maps after the last step.
        async fn replay(
            &self,
            steps: &[Step],
            smaps: bool,
            every: bool,
        ) -> Result<Option<Divergence>, CliError> {
            let mut r = self.runner(smaps).await?;
            for (i, s) in steps.iter().enumerate() {
                let check = every || i + 1 == steps.len();
                if let Some(d) = r.step(i, s, check).await? {
                    r.close().await;
                    return Ok(Some(d));
                }
            }
            r.close().await;
            Ok(None)
        }
    }

    /// Without a terminal for the progress bar, a line every this many
    /// operations says how far a long run is.
    const PROGRESS_EVERY: u64 = 10_000;

    /// Totals of every sequence run.
    #[derive(Default)]
    struct Totals {
        ops: u64,
        counts: BTreeMap<String, u64>,
        outcomes: BTreeMap<String, u64>,
        reclaimed_pages: u64,
        reclaimed_vmas: u64,
        pagemap_rechecks: u64,
        rss_rereads: u64,
    }

    impl Totals {
        fn add(&mut self, r: &Runner, ops: u64) {
            self.ops += ops;
            self.reclaimed_pages += r.reclaimed_pages();
            self.reclaimed_vmas += r.reclaimed_vmas();
            self.pagemap_rechecks += r.pagemap_rechecks();
            self.rss_rereads += r.rss_rereads();
            for (k, v) in &r.counts {
                *self.counts.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.outcomes {
                *self.outcomes.entry(k.clone()).or_default() += v;
            }
        }
    }

    fn kernel_release() -> String {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }

    fn bar(n: u64, quiet: bool, what: &str) -> ProgressBar {
        if quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(n);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ops ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message(what.to_string());
        pb
    }

    /// Run `kernel-diff`: against `server`, or an embedded server.
    pub async fn run(a: &Args, server: Option<&Target>) -> Result<(), CliError> {
        let exe = match &a.executor {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        #[cfg(feature = "embedded")]
        let mut embedded = None;
        let target = match server {
            Some(t) => t.clone(),
            #[cfg(feature = "embedded")]
            None => {
                let max_map_count: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(vmasim_server::mm::DEFAULT_MAX_MAP_COUNT);
                let mut cfg = vmasim_server::server::ServerConfig::default();
                // The simulation gets the running kernel's vm.max_map_count.
                cfg.sim.max_map_count = max_map_count;
                let e = crate::embedded::Embedded::start_with(cfg).await?;
                let t = Target::plain(e.url.clone());
                embedded = Some(e);
                t
            }
            #[cfg(not(feature = "embedded"))]
            None => return Err(CliError::NeedsEmbedded("kernel-diff")),
        };
        let ctx = Ctx {
            exe,
            target,
            // File ids of our own, so a shared server's other files are not
            // ours: 2^24 per process, NR_FILES per runner.
            file_base: 0x6b64_0000_0000_0000 | (u64::from(std::process::id()) << 24),
            runs: Default::default(),
        };
        let started = Instant::now();
        let mut totals = Totals::default();
        let res = drive(a, &ctx, &mut totals).await;
        #[cfg(feature = "embedded")]
        if let Some(e) = embedded {
            e.stop().await;
        }
        let div = res?;
        let elapsed = started.elapsed();
        print!("{}", summary(a, &totals, elapsed, div.is_none()));
        if let Some(msg) = div {
            return Err(CliError::Check(msg));
        }
        Ok(())
    }

    /// Every sequence of the run; `Some(message)` after a reported divergence.
    async fn drive(
        a: &Args,
        ctx: &Ctx,
        totals: &mut Totals,
    ) -> Result<Option<String>, CliError> {
        let smaps = !a.no_rss;
        if let Some(path) = &a.script {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::read(path, e))?;
            let steps = parse_script(&text).map_err(CliError::Usage)?;
            let mut r = ctx.runner(smaps).await?;
            for (i, s) in steps.iter().enumerate() {
                if let Some(d) = r.step(i, s, true).await? {
                    totals.add(&r, i as u64 + 1);
                    r.close().await;
                    return report(a, ctx, &steps[..=i], d, smaps).await.map(Some);
                }
            }
            totals.add(&r, steps.len() as u64);
            r.close().await;
            return Ok(None);
        }
        if !a.limit_only {
            let mut rng_gen = Generator::new(a.seed, &a.without).map_err(CliError::Usage)?;
            let mut r = ctx.runner(smaps).await?;
            let pb = bar(a.ops, a.quiet, "random");
            let mut done = Vec::with_capacity(a.ops.min(1 << 20) as usize);
            for i in 0..a.ops {
                let s = rng_gen.next(&r.views);
                done.push(s.clone());
                if let Some(d) = r.step(i as usize, &s, true).await? {
                    pb.finish_and_clear();
                    totals.add(&r, i + 1);
                    r.close().await;
                    return report(a, ctx, &done, d, smaps).await.map(Some);
                }
                pb.inc(1);
                if pb.is_hidden() && !a.quiet && (i + 1) % PROGRESS_EVERY == 0 {
                    eprintln!(
                        "kernel-diff: {} of {} operations, 0 divergences so far",
                        i + 1,
                        a.ops
                    );
                }
            }
            pb.finish_and_clear();
            totals.add(&r, a.ops);
            r.close().await;
        }
        if (a.limit || a.limit_only)
            && let Some(m) = limit_scenario(a, ctx, totals).await?
        {
            return Ok(Some(m));
        }
        Ok(None)
    }

    /// Fill the window to `vm.max_map_count` (and past it: the last few
    /// mappings must fail as the kernel's do), then random operations at
    /// the limit. Maps only (smaps of 65530 VMAs is ~90 MB per read).
    async fn limit_scenario(
        a: &Args,
        ctx: &Ctx,
        totals: &mut Totals,
    ) -> Result<Option<String>, CliError> {
        let mut r = ctx.runner(false).await?;
        let want = r.max_map_count.saturating_sub(r.baseline_vmas) + 4;
        let max_fill = (WINDOW_END - WINDOW_START) / (2 * PAGE);
        if want > max_fill {
            return Err(CliError::Other(format!(
                "vm.max_map_count {} does not fit in the 1 GiB test window",
                r.max_map_count
            )));
        }
        let mut rng_gen =
            Generator::new(a.seed ^ 0x6d61_7863, &a.without).map_err(CliError::Usage)?;
        let mut steps = rng_gen.limit_scenario(want);
        let pb = bar(a.limit_ops + 1, a.quiet, "max_map_count");
        for i in 0..=a.limit_ops as usize {
            if i > 0 {
                let s = rng_gen.next(&r.views);
                steps.push(s);
            }
            if let Some(d) = r.step(i, &steps[i], true).await? {
                pb.finish_and_clear();
                totals.add(&r, i as u64 + 1);
                r.close().await;
                return report(a, ctx, &steps[..=i], d, false).await.map(Some);
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        totals.add(&r, a.limit_ops + 1);
        r.close().await;
        Ok(None)
    }

    /// Shrink, print the minimal script and both maps; the error message.
    async fn report(
        a: &Args,
        ctx: &Ctx,
        seq: &[Step],
        first: Divergence,
        smaps: bool,
    ) -> Result<String, CliError> {
        eprintln!(
            "kernel-diff: divergence after operation {} ({}): {}",
            first.index + 1,
            first.step,
            first.what
        );
        let (min, d, tries) = if a.no_shrink || seq.len() <= 1 {
            (seq.to_vec(), first, 0)
        } else {
            eprintln!(
                "kernel-diff: shrinking {} operations (at most {:?}) ...",
                seq.len(),
                a.shrink_time
            );
            let sig = first.signature();
            let (min, tries) = ddmin(seq.to_vec(), a.shrink_time, async |c: &[Step]| {
                // Long candidates: results at every step, maps at the end
                // (where the original divergence showed); short ones: all.
                let d = ctx.replay(c, smaps, c.len() <= 64).await?;
                Ok::<_, CliError>(d.is_some_and(|d| d.signature() == sig))
            })
            .await?;
            match ctx.replay(&min, smaps, true).await? {
                Some(d) => (min, d, tries),
                // Not reproducible from scratch (should not happen): keep
                // the original.
                None => (seq.to_vec(), first, tries),
            }
        };
        let script = render_script(&min, &d, tries, seq.len());
        println!("{script}");
        println!(
            "# kernel (compared region after operation {}):",
            d.index + 1
        );
        print!("{}", comment(&d.kernel));
        println!("# simulation:");
        print!("{}", comment(&d.sim));
        if let Some(p) = &a.save {
            write_file(p, &script)?;
        }
        Ok(format!(
            "kernel-diff: the simulation diverges from the kernel ({}): {}",
            d.step, d.what
        ))
    }

    fn comment(maps: &str) -> String {
        if maps.is_empty() {
            return "#   (no VMAs)\n".into();
        }
        maps.lines().map(|l| format!("#   {l}\n")).collect()
    }

    fn render_script(min: &[Step], d: &Divergence, tries: usize, from: usize) -> String {
        let mut s = format!(
            "# kernel-diff divergence, kernel {}: {}\n# {} operation(s), shrunk from {from} by {tries} replays; rerun: vmasim kernel-diff --script FILE\n",
            kernel_release(),
            d.what,
            min.len()
        );
        for st in min {
            s.push_str(&format!("{st}\n"));
        }
        s
    }

    fn write_file(p: &Path, text: &str) -> Result<(), CliError> {
        std::fs::write(p, text)
            .map_err(|e| CliError::Other(format!("cannot write {}: {e}", p.display())))
    }

    fn summary(a: &Args, t: &Totals, elapsed: Duration, clean: bool) -> String {
        let mut s = String::new();
        let mode = match (&a.script, a.limit_only, a.limit) {
            (Some(p), _, _) => format!("script {}", p.display()),
            (None, true, _) => "max_map_count scenario".into(),
            (None, false, true) => {
                format!("--ops {} --seed {} + max_map_count scenario", a.ops, a.seed)
            }
            (None, false, false) => format!("--ops {} --seed {}", a.ops, a.seed),
        };
        s.push_str(&format!(
            "kernel-diff: {} operations ({mode}) in {:.1}s against Linux {}: {}\n",
            t.ops,
            elapsed.as_secs_f64(),
            kernel_release(),
            if clean { "0 divergences" } else { "DIVERGED" }
        ));
        s.push_str("  operations by kind:\n");
        for (k, v) in &t.counts {
            s.push_str(&format!("    {k:<32} {v:>9}\n"));
        }
        s.push_str("  kernel results:\n");
        for (k, v) in &t.outcomes {
            s.push_str(&format!("    {k:<32} {v:>9}\n"));
        }
        s.push_str(&format!(
            "  file pages the kernel unmapped on its own (reclaim), dropped from the simulation too: {} in {} VMAs{}\n",
            t.reclaimed_pages,
            t.reclaimed_vmas,
            crate::kernel_diff::reclaim::Reclaimers::detect()
                .describe()
                .map_or_else(String::new, |d| format!(" ({d})"))
        ));
        s.push_str(&format!(
            "  comparisons where PAGEMAP_SCAN's Rss/Anonymous differed from smaps' (smaps compared): {}\n",
            t.pagemap_rechecks
        ));
        s.push_str(&format!(
            "  file-VMA Rss shortfalls the kernel's pagemap contradicted a moment later (kernel read again): {}\n",
            t.rss_rereads
        ));
        s
    }
}
