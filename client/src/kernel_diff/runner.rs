//! Apply one sequence to the executor and the simulation, comparing after
//! every operation, and stop at the first divergence.
//!
//! A [`Runner`] owns one executor and one simulated process tree, both
//! fresh, so a replay (for shrinking) always starts from scratch. Steps
//! whose process is not alive (a shrunk sequence may have lost the `fork`
//! that made it) are skipped on both sides.

use super::compare::{Backing, ShmemPairs, Vma, diff_maps, kernel_vma, show};
use super::kernel::{KReply, KResult, Kernel};
use super::ops::{Op, ProcView, Step, kinds};
use super::reclaim::{Reclaimers, absent_runs};
use super::sim::{SResult, Sim};
use super::{MAX_PROCS, PAGE, WINDOW_END};
use crate::connect::Client;
use crate::error::{CliError, code_name};
use std::collections::BTreeMap;
use std::path::Path;
use tonic::Code;

/// The first disagreement of a run.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// Index of the step after which it showed.
    pub index: usize,
    /// The step.
    pub step: Step,
    /// What differs.
    pub what: String,
    /// The kernel's compared region (with Rss/Anonymous).
    pub kernel: String,
    /// The simulation's.
    pub sim: String,
}

impl Divergence {
    /// What kind of divergence this is, for shrinking: the operation's name
    /// and the first thing that differs (`result`, `range`, `perms`,
    /// `Rss`, ...), without addresses. A shrink candidate must keep it, so
    /// that shrinking does not wander off to another, unrelated divergence.
    pub fn signature(&self) -> (String, String) {
        let op = self.step.op_name().to_string();
        const WHAT: &[&str] = &[
            "result:",
            "range",
            "perms",
            "offset",
            "backing",
            "name",
            "text",
            "Rss",
            "Anonymous",
            "VMAs vs",
        ];
        let what = WHAT
            .iter()
            .map(|w| (self.what.find(w), *w))
            .filter_map(|(i, w)| i.map(|i| (i, w)))
            .min()
            .map_or("other", |(_, w)| w);
        (op, what.to_string())
    }
}

/// One executor plus its simulated twin.
pub struct Runner {
    kernel: Kernel,
    sim: Sim,
    pairs: ShmemPairs,
    pagemap_rechecks: u64,
    reclaimers: Reclaimers,
    /// Pages the kernel had unmapped on its own, dropped from the
    /// simulation too, and the VMA shortfalls they came in.
    reclaimed_pages: u64,
    reclaimed_vmas: u64,
    /// Kernel Rss shortfalls its own page table contradicted a moment
    /// later (see [`Runner::mirror_reclaim`]).
    rss_rereads: u64,
    /// What the generator may look at, per live process.
    pub views: Vec<Option<ProcView>>,
    lo: u64,
    hi: u64,
    /// The executor's `start_brk`.
    pub start_brk: u64,
    /// `vm.max_map_count` of the running kernel.
    pub max_map_count: u64,
    /// VMAs of the executor outside the compared region (in map_count).
    pub baseline_vmas: u64,
    smaps: bool,
    /// Operations done, by kind (see [`kinds`]).
    pub counts: BTreeMap<String, u64>,
    /// Results, by outcome (`ok`, `ENOMEM`, `skipped`, ...).
    pub outcomes: BTreeMap<String, u64>,
}

/// The errno each documented status stands for (address_space.proto).
fn errno_matches(errno: i32, code: Code) -> bool {
    match errno {
        libc::EINVAL | libc::EOVERFLOW => code == Code::InvalidArgument,
        libc::EEXIST => code == Code::AlreadyExists,
        // ENOMEM: no range / over a limit (RESOURCE_EXHAUSTED), or an
        // mprotect/munmap range with a hole (FAILED_PRECONDITION).
        libc::ENOMEM => matches!(code, Code::ResourceExhausted | Code::FailedPrecondition),
        libc::EPERM | libc::EACCES => code == Code::PermissionDenied,
        libc::EAGAIN => code == Code::ResourceExhausted,
        libc::EOPNOTSUPP => matches!(code, Code::InvalidArgument | Code::Unimplemented),
        // mremap: the range is not (the start of) one mapping.
        libc::EFAULT => code == Code::FailedPrecondition,
        _ => false,
    }
}

fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EINVAL => "EINVAL",
        libc::ENOMEM => "ENOMEM",
        libc::EEXIST => "EEXIST",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EAGAIN => "EAGAIN",
        libc::EFAULT => "EFAULT",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENODEV => "ENODEV",
        libc::EBADF => "EBADF",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

fn show_k(r: &KResult) -> String {
    match r {
        KResult::Ok(v) => format!("ok {v:#x}"),
        KResult::Err(e) => errno_name(*e),
        KResult::Refused => "refused".into(),
    }
}

fn show_s(r: &SResult) -> String {
    match r {
        SResult::Ok(v) => format!("ok {v:#x}"),
        SResult::Err(c, m) => format!("{} ({m})", code_name(*c)),
        SResult::Segv(o) => o.as_str_name().to_string(),
    }
}

/// `None` if the two results agree for `op`.
fn diff_result(op: &Op, k: &KResult, s: &SResult) -> Option<String> {
    let value_matters = matches!(
        op,
        Op::Mmap { .. } | Op::Brk { .. } | Op::BrkQuery | Op::Fill { .. } | Op::Mremap { .. }
    );
    let same = match (k, s) {
        (KResult::Ok(a), SResult::Ok(b)) => !value_matters || a == b,
        (KResult::Err(e), SResult::Err(c, _)) => errno_matches(*e, *c),
        (KResult::Err(e), SResult::Segv(_)) => *e == libc::EFAULT,
        _ => false,
    };
    (!same).then(|| format!("result: kernel {} vs simulation {}", show_k(k), show_s(s)))
}

impl Runner {
    /// Comparisons where PAGEMAP_SCAN's counts and smaps' differed (smaps
    /// was compared).
    pub fn pagemap_rechecks(&self) -> u64 {
        self.pagemap_rechecks
    }

    /// File pages the kernel unmapped (or fault-around skipped) on its own,
    /// dropped from the simulation too (see [`super::reclaim`]).
    pub fn reclaimed_pages(&self) -> u64 {
        self.reclaimed_pages
    }

    /// The VMA shortfalls those pages came in.
    pub fn reclaimed_vmas(&self) -> u64 {
        self.reclaimed_vmas
    }

    /// Snapshots whose file-VMA Rss shortfall the pagemap contradicted, so
    /// that the kernel's VMAs were read again.
    pub fn rss_rereads(&self) -> u64 {
        self.rss_rereads
    }

    /// A fresh executor (`exe __kernel-diff-executor`) and its twin.
    pub async fn start(exe: &Path, client: Client, file_base: u64) -> Result<Runner, CliError> {
        let kernel = tokio::task::block_in_place(|| Kernel::spawn(exe))?;
        let ready = kernel.ready.clone();
        let sim = Sim::spawn(client, &ready.maps, ready.start_brk, file_base).await?;
        let baseline_vmas = ready
            .maps
            .lines()
            .filter(|l| !l.ends_with("[vsyscall]") && !l.starts_with("VmFlags:"))
            .count() as u64;
        let mut views = vec![None; MAX_PROCS];
        views[0] = Some(ProcView::default());
        Ok(Runner {
            kernel,
            sim,
            pairs: ShmemPairs::default(),
            pagemap_rechecks: 0,
            reclaimers: Reclaimers::detect(),
            reclaimed_pages: 0,
            reclaimed_vmas: 0,
            rss_rereads: 0,
            views,
            lo: ready.start_brk,
            hi: WINDOW_END,
            start_brk: ready.start_brk,
            max_map_count: ready.max_map_count,
            baseline_vmas,
            smaps: true,
            counts: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        })
    }

    /// Measure Rss/Anonymous (smaps) after each step, or only maps.
    pub fn set_smaps(&mut self, on: bool) -> Result<(), CliError> {
        self.smaps = on;
        for p in 0..MAX_PROCS {
            if self.views[p].is_some() {
                tokio::task::block_in_place(|| {
                    self.kernel.call(p, if on { "o 1" } else { "o 0" })
                })?;
            }
        }
        Ok(())
    }

    fn command(&self, op: &Op, child: usize) -> String {
        match *op {
            Op::Mmap(ref m) => format!(
                "m {:x} {:x} {:x} {:x} {:x} {:x}",
                m.addr,
                m.len,
                m.prot,
                m.flags,
                m.file.map_or(0, |n| u64::from(n) + 1),
                m.offset
            ),
            Op::Munmap { addr, len } => format!("u {addr:x} {len:x}"),
            Op::Mprotect { addr, len, prot } => format!("p {addr:x} {len:x} {prot:x}"),
            Op::Brk { off } => format!("b {:x}", self.start_brk.wrapping_add_signed(off)),
            Op::BrkQuery => "b 0".into(),
            Op::Touch { addr, write } => format!("t {addr:x} {}", u8::from(write)),
            Op::Mremap(ref r) => format!(
                "r {:x} {:x} {:x} {:x} {:x}",
                r.old, r.old_len, r.new_len, r.flags, r.new_addr
            ),
            Op::Madvise { addr, len, advice } => format!("a {addr:x} {len:x} {advice:x}"),
            Op::Fork => format!("f {child:x}"),
            Op::Exit => "x".into(),
            Op::Fill { addr, count } => format!("l {addr:x} {count:x}"),
        }
    }

    fn kernel_vmas(r: &KReply) -> Vec<Vma> {
        r.vmas
            .iter()
            .filter_map(|(rss, anon, line)| kernel_vma(line, *rss, *anon))
            .collect()
    }

    /// The executor counts Rss and Anonymous with `PAGEMAP_SCAN`; where
    /// those counts disagree with the simulation's, smaps' own text is the
    /// reference, so it is read again that way (`v`) and its counts are
    /// what is compared. The times PAGEMAP_SCAN and smaps disagreed are
    /// counted in the summary.
    fn recheck_rss(&mut self, slot: usize, kv: Vec<Vma>, sv: &[Vma]) -> Result<Vec<Vma>, CliError> {
        if !self.smaps {
            return Ok(kv);
        }
        let mut scratch = self.pairs.clone();
        if diff_maps(&kv, sv, &mut scratch, true).is_none() {
            return Ok(kv);
        }
        let kr = self.kernel.call(slot, "v")?;
        let again = Self::kernel_vmas(&kr);
        let counts = |v: &[Vma]| {
            v.iter()
                .map(|x| (x.start, x.rss_kb, x.anon_kb))
                .collect::<Vec<_>>()
        };
        if counts(&again) != counts(&kv) {
            self.pagemap_rechecks += 1;
        }
        Ok(again)
    }

    /// Where this machine unmaps file pages on its own ([`Reclaimers`]): a
    /// file-backed VMA whose kernel `Rss` is below the simulation's, with
    /// the same `Anonymous`, is read page by page (`n`) and each run of
    /// pages the kernel lacks is dropped from the simulation with
    /// `MADV_DONTNEED`, which zaps the PTEs and keeps the page cache as
    /// `try_to_unmap` did. Returns the simulation's maps afterwards, which
    /// are then compared exactly (a simulated page the kernel lacks for
    /// another reason, an anonymous one say, still shows).
    ///
    /// Where the page table has every page after all, the kernel's count
    /// was taken mid-change and its VMAs are read once more (counted in
    /// [`Runner::rss_rereads`]). Op 249,706 of the seed-2026 run: just
    /// after a read fault's fault-around in a 7-page shared memfd VMA,
    /// `PAGEMAP_SCAN` and then smaps counted 24 kB where the simulation had
    /// 28, and the pagemap read after them found no page absent (else it
    /// would have been dropped and the two would have agreed). Returns both
    /// sides' maps as they are then compared.
    async fn mirror_reclaim(
        &mut self,
        p: usize,
        kv: Vec<Vma>,
        sv: Vec<Vma>,
    ) -> Result<(Vec<Vma>, Vec<Vma>), CliError> {
        if !self.smaps {
            return Ok((kv, sv));
        }
        let short: Vec<(u64, u64)> = kv
            .iter()
            .zip(&sv)
            .filter(|(k, s)| {
                (k.start, k.end) == (s.start, s.end)
                    && k.backing != Backing::Anon
                    && k.anon_kb == s.anon_kb
                    && matches!((k.rss_kb, s.rss_kb), (Some(a), Some(b)) if a < b)
            })
            .map(|(k, _)| (k.start, k.end))
            .collect();
        if short.is_empty() || !self.reclaimers.active() {
            return Ok((kv, sv));
        }
        let mut reread = false;
        for (start, end) in short {
            let mut dropped = false;
            let mut chunk = start;
            while chunk < end {
                let r =
                    tokio::task::block_in_place(|| self.kernel.call(p, &format!("N {chunk:x}")))?;
                let KResult::Ok(present) = r.result else {
                    return Err(CliError::Other(format!(
                        "kernel-diff: the executor could not read its pagemap at {chunk:#x}: {:?}",
                        r.result
                    )));
                };
                for (addr, len) in absent_runs(chunk, end, present, PAGE) {
                    dropped = true;
                    let advice = libc::MADV_DONTNEED as u32;
                    self.sim
                        .apply(p, &Op::Madvise { addr, len, advice }, 0)
                        .await?;
                }
                chunk += 64 * PAGE;
            }
            if dropped {
                self.reclaimed_vmas += 1;
            } else {
                reread = true;
            }
        }
        let after = self.sim.maps(p, self.lo, self.hi).await?;
        let rss = |v: &[Vma]| v.iter().filter_map(|x| x.rss_kb).sum::<u64>();
        self.reclaimed_pages += (rss(&sv).saturating_sub(rss(&after))) / (PAGE / 1024);
        let kv = if reread {
            self.rss_rereads += 1;
            let kr = tokio::task::block_in_place(|| self.kernel.call(p, "v"))?;
            Self::kernel_vmas(&kr)
        } else {
            kv
        };
        Ok((kv, after))
    }

    fn count(&mut self, key: String) {
        *self.outcomes.entry(key).or_default() += 1;
    }

    /// Apply `step` (number `index`) to both sides and compare results and,
    /// if `check_maps`, the maps.
    pub async fn step(
        &mut self,
        index: usize,
        step: &Step,
        check_maps: bool,
    ) -> Result<Option<Divergence>, CliError> {
        let p = step.proc;
        let child = (0..MAX_PROCS).find(|&c| self.views[c].is_none());
        let skip = self.views[p].is_none()
            || (step.op == Op::Exit && p == 0)
            || (step.op == Op::Fork && child.is_none());
        if skip {
            self.count("skipped".into());
            return Ok(None);
        }
        let child = child.unwrap_or(0);
        let mut cmd = self.command(&step.op, child);
        if !check_maps {
            cmd[..1].make_ascii_uppercase();
        }
        let kr = tokio::task::block_in_place(|| self.kernel.call(p, &cmd))?;
        if kr.result == KResult::Refused {
            self.count("refused (outside the test region)".into());
            return Ok(None);
        }
        let kchild = match (&step.op, kr.result) {
            (Op::Fork, KResult::Ok(_)) => {
                Some(tokio::task::block_in_place(|| self.kernel.recv(child))?)
            }
            _ => None,
        };
        for k in kinds(&step.op) {
            *self.counts.entry(k).or_default() += 1;
        }
        // Where an mremap left the mapping, which only the result says.
        if let (Op::Mremap(r), KResult::Ok(a)) = (&step.op, kr.result) {
            let k = if a == r.old {
                "mremap:stayed"
            } else {
                "mremap:moved"
            };
            *self.counts.entry(k.into()).or_default() += 1;
        }
        self.count(match kr.result {
            KResult::Ok(_) => "ok".into(),
            KResult::Err(e) => errno_name(e),
            KResult::Refused => unreachable!(),
        });
        let sr = self.sim.apply(p, &step.op, child).await?;
        let div = |what: String, k: &[Vma], s: &[Vma]| Divergence {
            index,
            step: step.clone(),
            what,
            kernel: show(k),
            sim: show(s),
        };
        if step.op == Op::Exit {
            self.views[p] = None;
            if let Some(d) = diff_result(&step.op, &kr.result, &sr) {
                return Ok(Some(div(d, &[], &[])));
            }
            return Ok(None);
        }
        if !check_maps {
            if let Some(d) = diff_result(&step.op, &kr.result, &sr) {
                return Ok(Some(div(d, &[], &[])));
            }
            if let Some(kc) = kchild {
                drop(kc);
                let brk = self.views[p].as_ref().map_or(0, |v| v.brk_off);
                self.views[child] = Some(ProcView {
                    vmas: Vec::new(),
                    brk_off: brk,
                });
            }
            return Ok(None);
        }
        let kv = Self::kernel_vmas(&kr);
        let sv = self.sim.maps(p, self.lo, self.hi).await?;
        if let Some(d) = diff_result(&step.op, &kr.result, &sr) {
            return Ok(Some(div(d, &kv, &sv)));
        }
        let kv = self.recheck_rss(p, kv, &sv)?;
        let (kv, sv) = self.mirror_reclaim(p, kv, sv).await?;
        if let Some(d) = diff_maps(&kv, &sv, &mut self.pairs, self.smaps) {
            return Ok(Some(div(format!("process {p}: {d}"), &kv, &sv)));
        }
        self.update_view(p, &kv, &kr.result, &step.op);
        if let Some(kc) = kchild {
            let kcv = Self::kernel_vmas(&kc);
            let scv = self.sim.maps(child, self.lo, self.hi).await?;
            let kcv = self.recheck_rss(child, kcv, &scv)?;
            let (kcv, scv) = self.mirror_reclaim(child, kcv, scv).await?;
            if let Some(d) = diff_maps(&kcv, &scv, &mut self.pairs, self.smaps) {
                return Ok(Some(div(
                    format!("fork child (process {child}): {d}"),
                    &kcv,
                    &scv,
                )));
            }
            let brk = self.views[p].as_ref().map_or(0, |v| v.brk_off);
            self.views[child] = Some(ProcView {
                vmas: kcv.iter().map(|v| (v.start, v.end)).collect(),
                brk_off: brk,
            });
        }
        Ok(None)
    }

    fn update_view(&mut self, p: usize, kv: &[Vma], r: &KResult, op: &Op) {
        let start_brk = self.start_brk;
        if let Some(v) = self.views[p].as_mut() {
            v.vmas = kv.iter().map(|v| (v.start.max(start_brk), v.end)).collect();
            if let (Op::Brk { .. } | Op::BrkQuery, KResult::Ok(b)) = (op, r) {
                v.brk_off = b.wrapping_sub(start_brk) as i64;
            }
        }
    }

    /// Current VMAs of process 0 in the compared region (kernel side).
    pub fn vma_count(&self, p: usize) -> usize {
        self.views[p].as_ref().map_or(0, |v| v.vmas.len())
    }

    /// Exit the simulated processes (the executor goes with `self`).
    pub async fn close(mut self) {
        self.sim.cleanup().await;
    }
}
