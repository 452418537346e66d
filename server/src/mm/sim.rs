//! The simulator: a process table of address spaces sharing one VMA cache.
//!
//! This is the engine's front door. The service layer calls these methods
//! and maps [`MmError`] to gRPC statuses; nothing here knows about gRPC.
//! Each call looks its process up once (a `DashMap` shard read lock) and
//! then runs the engine operation, which does its own locking.

use crate::mm::{
    DEFAULT_MAX_MAP_COUNT, MmError,
    exit::{ExitStats, exit_mmap},
    fork::dup_mmap,
    madvise::do_madvise,
    mm_struct::{MmContext, MmStruct, MmapWriteGuard},
    mm_types::MapsReader,
    mmap::{MmapArgs, do_brk, do_mmap, do_munmap},
    mprotect::do_mprotect,
    mremap::do_mremap,
    proc_maps::{MapsEntry, import_maps, parse_maps, render},
    slab::{CachePolicy, PoolStats, VmaCache},
    task_mmu::show_maps,
    vmstat::{FaultStats, MapsEvent, NR_MAPS_EVENTS},
};
use crate::mm::{
    fault::{do_user_addr_fault, follow_pte},
    mm_types::{Access, FaultLockMode, FaultResult},
};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// How a simulator is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// VMA cache free policy.
    pub vma_cache: CachePolicy,
    /// Fault locking mode.
    pub fault_lock: FaultLockMode,
    /// How `/proc/PID/maps` is read.
    pub maps_reader: MapsReader,
    /// Maximum live processes.
    pub max_processes: usize,
    /// `vm.max_map_count` per process.
    pub max_map_count: usize,
    /// VMA cache capacity in slots.
    pub pool_capacity: u32,
    /// Page-table memory of all processes together, bytes; a fault that
    /// needs a table past it is `VM_FAULT_OOM`, a fork `ENOMEM`.
    pub max_pgtables_bytes: u64,
    /// The first pid handed out (then counting up, never reused).
    pub first_pid: u32,
}

/// Default [`SimConfig::max_pgtables_bytes`]: 256 MiB, 65,536 tables, room
/// for 32 Mi resident pages or 128 GiB of address space touched once every
/// 2 MiB.
pub const DEFAULT_MAX_PGTABLES_BYTES: u64 = 256 << 20;

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            vma_cache: CachePolicy::Typesafe,
            fault_lock: FaultLockMode::PerVma,
            maps_reader: MapsReader::PerVma,
            max_processes: 4096,
            max_map_count: DEFAULT_MAX_MAP_COUNT,
            pool_capacity: 1 << 20,
            max_pgtables_bytes: DEFAULT_MAX_PGTABLES_BYTES,
            first_pid: 1,
        }
    }
}

/// Everything the engine counts, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Lock events and faults.
    pub faults: FaultStats,
    /// The VMA cache.
    pub pool: PoolStats,
    /// Live processes.
    pub processes: u64,
    /// Processes ever created (spawn and fork).
    pub processes_created: u64,
    /// VMAs in all live processes.
    pub vmas: u64,
    /// Resident pages in all live processes.
    pub rss_pages: u64,
    /// Page-table memory of all processes, bytes.
    pub pgtables_bytes: u64,
    /// The maps readers' events, indexed by [`MapsEvent`].
    pub maps: [u64; NR_MAPS_EVENTS],
}

impl SimStats {
    /// The count of maps reader event `e`.
    pub fn maps_event(&self, e: MapsEvent) -> u64 {
        self.maps[e as usize]
    }
}

/// The maps of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maps {
    /// Kernel-format text.
    pub text: String,
    /// Structured lines.
    pub entries: Vec<MapsEntry>,
    /// Heap start.
    pub start_brk: u64,
    /// Program break.
    pub brk: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

/// The process table.
///
/// ```
/// use vmasim_server::mm::{Access, FaultOutcome, MmapArgs, SimConfig, Simulator, map::*, prot::*};
/// let sim = Simulator::new(SimConfig::default());
/// let pid = sim.spawn().unwrap();
/// let addr = sim.mmap(pid, MmapArgs { len: 8192, prot: PROT_READ | PROT_WRITE,
///     flags: MAP_PRIVATE | MAP_ANONYMOUS, ..Default::default() }).unwrap();
/// let r = sim.fault(pid, addr, Access::Write).unwrap();
/// assert_eq!(r.outcome, FaultOutcome::AnonZeroFill);
/// assert!(sim.maps(pid).unwrap().text.contains(" rw-p 00000000 00:00 0 \n"));
/// ```
pub struct Simulator {
    cfg: SimConfig,
    ctx: Arc<MmContext>,
    tasks: DashMap<u32, Arc<MmStruct>>,
    next_pid: AtomicU32,
    nr_tasks: AtomicUsize,
    created: AtomicU64,
}

impl Simulator {
    /// A simulator with no processes.
    pub fn new(cfg: SimConfig) -> Self {
        let pool = VmaCache::new(cfg.vma_cache, cfg.pool_capacity);
        Self {
            cfg,
            ctx: Arc::new(
                MmContext::new(pool, cfg.fault_lock, cfg.max_map_count)
                    .with_pgtables_limit(cfg.max_pgtables_bytes)
                    .with_maps_reader(cfg.maps_reader),
            ),
            tasks: DashMap::new(),
            next_pid: AtomicU32::new(cfg.first_pid.max(1)),
            nr_tasks: AtomicUsize::new(0),
            created: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The shared engine context (pool, counters, files).
    pub fn context(&self) -> &Arc<MmContext> {
        &self.ctx
    }

    /// One process, looked up once, for a caller that makes several calls
    /// on it (a fault batch, an operation and then its VMA count).
    pub fn task(&self, pid: u32) -> Result<Task, MmError> {
        self.mm(pid).map(|mm| Task { mm })
    }

    /// The address space of `pid`.
    pub(crate) fn mm(&self, pid: u32) -> Result<Arc<MmStruct>, MmError> {
        self.tasks
            .get(&pid)
            .map(|m| m.clone())
            .ok_or(MmError::NoSuchProcess(pid))
    }

    fn reserve_task(&self) -> Result<(), MmError> {
        let limit = self.cfg.max_processes;
        // Relaxed: a counter guarding a limit; the DashMap insert publishes
        // the mm itself.
        self.nr_tasks
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| MmError::TooManyProcesses { limit })
    }

    fn install(
        &self,
        mm_for: impl FnOnce(u32) -> Result<Arc<MmStruct>, MmError>,
    ) -> Result<u32, MmError> {
        self.reserve_task()?;
        // Relaxed: pids only need to be unique; never 0, never reused.
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        if pid == 0 {
            // Wrapped after 2^32 processes: 0 is never a pid.
            self.nr_tasks.fetch_sub(1, Ordering::Relaxed);
            return Err(MmError::TooManyProcesses {
                limit: self.cfg.max_processes,
            });
        }
        match mm_for(pid) {
            Ok(mm) => {
                self.tasks.insert(pid, mm);
                self.created.fetch_add(1, Ordering::Relaxed);
                Ok(pid)
            }
            Err(e) => {
                self.nr_tasks.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// A process with an empty address space.
    pub fn spawn(&self) -> Result<u32, MmError> {
        self.install(|pid| Ok(Arc::new(MmStruct::new(pid, self.ctx.clone(), None))))
    }

    /// A process whose layout is a `/proc/PID/maps` text (may be empty),
    /// with the heap starting at `start_brk` if given.
    pub fn spawn_from_maps(&self, text: &str, start_brk: Option<u64>) -> Result<u32, MmError> {
        let lines = parse_maps(text)
            .map_err(|e| MmError::inval("maps_text", format!("line {}: {}", e.line, e.reason)))?;
        self.install(|pid| {
            let mm = Arc::new(MmStruct::new(pid, self.ctx.clone(), None));
            if let Err(e) = import_maps(&mm, &lines, start_brk) {
                // Hand back whatever was built before the failure.
                let _ = exit_mmap(&mm);
                return Err(e);
            }
            Ok(mm)
        })
    }

    /// `mmap` in `pid`.
    pub fn mmap(&self, pid: u32, args: MmapArgs) -> Result<u64, MmError> {
        self.task(pid)?.mmap(args)
    }

    /// `munmap` in `pid`.
    pub fn munmap(&self, pid: u32, addr: u64, len: u64) -> Result<(), MmError> {
        self.task(pid)?.munmap(addr, len)
    }

    /// `mprotect` in `pid`.
    pub fn mprotect(&self, pid: u32, addr: u64, len: u64, prot: u32) -> Result<(), MmError> {
        self.task(pid)?.mprotect(addr, len, prot)
    }

    /// `mremap` in `pid`: the new address.
    pub fn mremap(
        &self,
        pid: u32,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, MmError> {
        self.task(pid)?
            .mremap(addr, old_len, new_len, flags, new_addr)
    }

    /// `madvise` in `pid`.
    pub fn madvise(&self, pid: u32, addr: u64, len: u64, advice: u32) -> Result<(), MmError> {
        self.task(pid)?.madvise(addr, len, advice)
    }

    /// `brk` in `pid`: `(brk, start_brk)`.
    pub fn brk(&self, pid: u32, brk: u64) -> Result<(u64, u64), MmError> {
        self.task(pid)?.brk(brk)
    }

    /// A page fault in `pid`.
    pub fn fault(&self, pid: u32, addr: u64, access: Access) -> Result<FaultResult, MmError> {
        Ok(self.task(pid)?.fault(addr, access))
    }

    /// `fork` of `pid`: the child's pid.
    pub fn fork(&self, pid: u32) -> Result<u32, MmError> {
        let parent = self.mm(pid)?;
        self.install(|cpid| {
            let child = Arc::new(MmStruct::new(cpid, self.ctx.clone(), None));
            if let Err(e) = dup_mmap(&parent, &child) {
                // dup_mmap fails half way only in copy_page_range (ENOMEM):
                // like the kernel's mmput of the unfinished child, free
                // every VMA and table it got.
                let _ = exit_mmap(&child);
                return Err(e);
            }
            // The gate area is the architecture's, not a VMA: the child
            // shows it as its parent does (get_gate_vma).
            let gate = parent.mmap_read_lock().gate_vma;
            child.mmap_write_lock().state.gate_vma = gate;
            Ok(child)
        })
    }

    /// `exit` of `pid`.
    pub fn exit(&self, pid: u32) -> Result<ExitStats, MmError> {
        let (_, mm) = self.tasks.remove(&pid).ok_or(MmError::NoSuchProcess(pid))?;
        self.nr_tasks.fetch_sub(1, Ordering::Relaxed);
        exit_mmap(&mm)
    }

    /// The maps of `pid`.
    pub fn maps(&self, pid: u32) -> Result<Maps, MmError> {
        let mm = self.mm(pid)?;
        let (entries, start_brk, brk) = show_maps(&mm);
        Ok(Maps {
            text: render(&entries),
            entries,
            start_brk,
            brk,
            rss_pages: mm.rss_pages(),
        })
    }

    /// Live pids, ascending.
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.tasks.iter().map(|e| *e.key()).collect();
        v.sort_unstable();
        v
    }

    /// All counters.
    pub fn stats(&self) -> SimStats {
        let mms: Vec<Arc<MmStruct>> = self.tasks.iter().map(|e| e.value().clone()).collect();
        let pool = self.ctx.pool.stats();
        let events = self.ctx.events.snapshot();
        SimStats {
            faults: FaultStats::from_events(&events),
            pool,
            processes: mms.len() as u64,
            processes_created: self.created.load(Ordering::Relaxed),
            vmas: pool.live,
            rss_pages: mms.iter().map(|m| m.rss_pages()).sum(),
            pgtables_bytes: self.ctx.pgtables.used(),
            maps: events.maps(),
        }
    }
}

/// One process's address space, as a syscall holds it once it has looked
/// its task up (`get_task_mm`): the operations of [`Simulator`] without
/// the pid lookup. A handle kept past the process's `exit` still refers to
/// the torn-down address space, as a kernel `mm` reference would, and
/// frees nothing.
#[derive(Clone)]
pub struct Task {
    mm: Arc<MmStruct>,
}

impl Task {
    /// The pid.
    pub fn pid(&self) -> u32 {
        self.mm.pid()
    }

    /// `mmap`.
    pub fn mmap(&self, args: MmapArgs) -> Result<u64, MmError> {
        do_mmap(&self.mm, args)
    }

    /// `munmap`.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), MmError> {
        do_munmap(&self.mm, addr, len)
    }

    /// `mprotect`.
    pub fn mprotect(&self, addr: u64, len: u64, prot: u32) -> Result<(), MmError> {
        do_mprotect(&self.mm, addr, len, prot)
    }

    /// `mremap`: the new address.
    pub fn mremap(
        &self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, MmError> {
        do_mremap(&self.mm, addr, old_len, new_len, flags, new_addr)
    }

    /// `madvise`.
    pub fn madvise(&self, addr: u64, len: u64, advice: u32) -> Result<(), MmError> {
        do_madvise(&self.mm, addr, len, advice)
    }

    /// `brk`: `(brk, start_brk)`.
    pub fn brk(&self, brk: u64) -> Result<(u64, u64), MmError> {
        do_brk(&self.mm, brk)
    }

    /// A page fault (`do_user_addr_fault`).
    #[inline]
    pub fn fault(&self, addr: u64, access: Access) -> FaultResult {
        do_user_addr_fault(&self.mm, addr, access)
    }

    /// VMAs in the address space (`mm->map_count`).
    pub fn map_count(&self) -> usize {
        self.mm.mmap_read_lock().map_count
    }

    /// Resident pages.
    pub fn rss_pages(&self) -> u64 {
        self.mm.rss_pages()
    }

    /// The simulator's page-table memory limit, bytes (what a
    /// [`FaultOutcome::Oom`](crate::mm::FaultOutcome::Oom) ran into).
    pub fn pgtables_limit(&self) -> u64 {
        self.mm.ctx().pgtables.limit()
    }

    /// The frame mapped at `addr`, if any (`follow_pte`): tests compare
    /// frames to see sharing and copy-on-write.
    pub fn follow_pte(&self, addr: u64) -> Option<u64> {
        follow_pte(&self.mm, addr)
    }

    /// Take `mmap_lock` for write and hold it until the guard drops: a test
    /// makes an operation of another thread wait in the engine.
    pub fn mmap_write_lock(&self) -> MmapWriteGuard<'_> {
        self.mm.mmap_write_lock()
    }
}
