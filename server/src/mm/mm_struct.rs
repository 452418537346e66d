//! `struct mm_struct`: one address space.
//!
//! `mmap_lock` is a reader/writer lock around the few fields only writers
//! change (`brk`, `map_count`...). The VMA tree and the page table sit
//! *outside* it, because faults read them with no lock at all. Taking
//! `mmap_lock` for write bumps `mm_lock_seq` to an odd value; every VMA a
//! writer touches gets `vm_lock_seq` set to it (`vma_start_write`), and
//! releasing the lock bumps the sequence again, unlocking all of them in
//! one store (`vma_end_write_all`).

use crate::mm::{
    mm_types::{FaultLockMode, MapsReader, MmLockSeq},
    pgtable::{PageTable, PgtableBudget},
    race::RaceHooks,
    slab::VmaCache,
    sync::{AtomicU64, Ordering, RwLock, RwLockReadGuard, RwLockWriteGuard},
    vma_tree::VmaTree,
    vmstat::{Counters, VmEvents},
};
use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use std::sync::Arc;

/// RSS counter: file pages.
pub const MM_FILEPAGES: usize = 0;
/// RSS counter: anonymous pages.
pub const MM_ANONPAGES: usize = 1;
/// RSS counter: shared anonymous pages.
pub const MM_SHMEMPAGES: usize = 2;
/// Number of RSS counters.
pub const NR_MM_COUNTERS: usize = 3;

/// Where a file id's `/proc/PID/maps` columns come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileInfo {
    /// Path as maps shows it.
    pub path: String,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode number.
    pub inode: u64,
}

/// File ids and anonymous VMA names, shared by every mm of a simulator.
///
/// Clients pick file ids (any non-zero number, same id = same file); files
/// imported from a maps text get ids from the top half of the id space.
#[derive(Default)]
pub struct FileTable {
    files: DashMap<u64, Arc<FileInfo>>,
    /// `i_size` in pages of the client files whose size a mapping gave
    /// (see [`FileTable::set_size`]); at most [`MAX_SIZED_FILES`].
    sizes: DashMap<u64, u64>,
    nr_sized: std::sync::atomic::AtomicUsize,
    by_identity: DashMap<FileInfo, u64>,
    names: DashMap<u64, Arc<str>>,
    by_name: DashMap<Arc<str>, u64>,
    next_import: AtomicU64,
    next_name: AtomicU64,
    next_internal: AtomicU64,
}

/// First file id handed to imported files.
pub const IMPORTED_FILE_ID_BASE: u64 = 1 << 63;

/// The engine's own files, made per mmap and never registered, so that
/// millions of them cost no memory: the id says what the file is.
/// `shmem_zero_setup`'s file of a `MAP_SHARED|MAP_ANONYMOUS` mapping.
const SHMEM_FILE_ID_BASE: u64 = 0xc << 60;
/// `hugetlb_file_setup`'s file of a 2 MiB `MAP_HUGETLB` mapping.
const HUGETLB_2M_FILE_ID_BASE: u64 = 0xd << 60;
/// `hugetlb_file_setup`'s file of a 1 GiB `MAP_HUGETLB` mapping.
const HUGETLB_1G_FILE_ID_BASE: u64 = 0xe << 60;
/// Serial numbers of the engine's own files (their inode numbers).
const INTERNAL_FILE_SERIAL: u64 = (1 << 60) - 1;
/// A shmem file id carries its size (`i_size`, fixed at mmap time:
/// mremap does not resize the file) in pages above a 24-bit serial, so a
/// fault past the end can be refused without a table of sizes.
const SHMEM_SERIAL_BITS: u32 = 24;

/// How the engine's own files appear in maps (shared with kernel-diff).
pub use vmasim_proto::linux::{HUGETLB_ANON_PATH, SHMEM_ANON_PATH};

/// The size in pages of one of the engine's own shmem files, `None` for
/// other files (whose size the simulation does not know).
pub const fn shmem_file_pages(file: u64) -> Option<u64> {
    if file & !INTERNAL_FILE_SERIAL == SHMEM_FILE_ID_BASE {
        Some((file & INTERNAL_FILE_SERIAL) >> SHMEM_SERIAL_BITS)
    } else {
        None
    }
}

/// The huge-page shift of a hugetlb file id (21 or 30), `None` for any
/// other file (`hstate_file`).
pub const fn huge_page_shift(file: u64) -> Option<u32> {
    match file & !INTERNAL_FILE_SERIAL {
        HUGETLB_2M_FILE_ID_BASE => Some(21),
        HUGETLB_1G_FILE_ID_BASE => Some(30),
        _ => None,
    }
}

/// Most client files whose size the simulation remembers: each costs a
/// table entry, and file ids are the client's to choose.
pub const MAX_SIZED_FILES: usize = 65536;

impl FileTable {
    /// Record that client file `id` is `bytes` long (`i_size`), as the
    /// mapping that says so finds it. From then on a fault at or past the
    /// end is `VM_FAULT_SIGBUS` and fault-around stops at it
    /// (`filemap_fault`, `shmem_get_folio_gfp`; `filemap_map_pages`'
    /// `file_end`), as for the engine's own shmem files. Truncation is not
    /// simulated: a different size for a file that has one is refused, and
    /// so is a new file past [`MAX_SIZED_FILES`].
    pub fn set_size(&self, id: u64, bytes: u64) -> Result<(), crate::mm::MmError> {
        let pages = bytes.div_ceil(1 << crate::mm::PAGE_SHIFT);
        if let Some(old) = self.sizes.get(&id) {
            return if *old == pages {
                Ok(())
            } else {
                Err(crate::mm::MmError::inval(
                    "file_size",
                    format!(
                        "file {id} is {} bytes already (truncation is not simulated)",
                        *old << crate::mm::PAGE_SHIFT
                    ),
                ))
            };
        }
        // Relaxed: the bound is approximate by the number of racing
        // first mappings; only memory use depends on it.
        if self.nr_sized.load(Ordering::Relaxed) >= MAX_SIZED_FILES {
            return Err(crate::mm::MmError::inval(
                "file_size",
                format!("sizes of {MAX_SIZED_FILES} files are known already, the most kept"),
            ));
        }
        if self.sizes.insert(id, pages).is_none() {
            self.nr_sized.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// `i_size` in pages of file `id`, if known: the engine's own shmem
    /// files carry it in their id, a client file has it if a mapping gave
    /// it ([`FileTable::set_size`]).
    pub fn size_pages(&self, id: u64) -> Option<u64> {
        shmem_file_pages(id).or_else(|| {
            // Relaxed: a hint that skips the table when no size was given.
            if self.nr_sized.load(Ordering::Relaxed) == 0 {
                None
            } else {
                self.sizes.get(&id).map(|p| *p)
            }
        })
    }

    /// How file `id` appears in maps.
    pub fn file(&self, id: u64) -> Arc<FileInfo> {
        if let Some(f) = self.files.get(&id) {
            return f.clone();
        }
        let serial = match id & !INTERNAL_FILE_SERIAL {
            SHMEM_FILE_ID_BASE => id & ((1 << SHMEM_SERIAL_BITS) - 1),
            _ => id & INTERNAL_FILE_SERIAL,
        };
        // The devices are those of the kernel's internal shmem and
        // hugetlbfs mounts on the reference machine (anonymous device
        // numbers, given out at boot: other machines may differ).
        let internal = |path: &str, dev_minor| {
            Arc::new(FileInfo {
                path: path.into(),
                dev_major: 0,
                dev_minor,
                inode: serial,
            })
        };
        match id & !INTERNAL_FILE_SERIAL {
            SHMEM_FILE_ID_BASE => return internal(SHMEM_ANON_PATH, 1),
            HUGETLB_2M_FILE_ID_BASE => return internal(HUGETLB_ANON_PATH, 0x11),
            HUGETLB_1G_FILE_ID_BASE => return internal(HUGETLB_ANON_PATH, 0x12),
            _ => {}
        }
        Arc::new(FileInfo {
            path: format!("/vmasim/file/{id}"),
            dev_major: 0,
            dev_minor: 0,
            inode: id,
        })
    }

    /// The id of an imported file, registering it on first sight.
    pub fn import(&self, info: FileInfo) -> u64 {
        if let Some(id) = self.by_identity.get(&info) {
            return *id;
        }
        *self.by_identity.entry(info.clone()).or_insert_with(|| {
            // Relaxed: uniqueness only.
            let id = IMPORTED_FILE_ID_BASE + self.next_import.fetch_add(1, Ordering::Relaxed);
            self.files.insert(id, Arc::new(info));
            id
        })
    }

    /// A new `shmem_zero_setup` file of `bytes` (the mapping's length).
    /// Its serial repeats after 2^24 files; a file is told apart from an
    /// earlier one with the same serial by its size only.
    pub fn new_shmem_file(&self, bytes: u64) -> u64 {
        let pages = (bytes >> 12) & (INTERNAL_FILE_SERIAL >> SHMEM_SERIAL_BITS);
        let serial = self.new_serial() & ((1 << SHMEM_SERIAL_BITS) - 1);
        SHMEM_FILE_ID_BASE | pages << SHMEM_SERIAL_BITS | serial
    }

    /// A new anonymous hugetlb file of `1 << shift`-byte pages (21 or 30).
    pub fn new_hugetlb_file(&self, shift: u32) -> u64 {
        let base = if shift == 30 {
            HUGETLB_1G_FILE_ID_BASE
        } else {
            HUGETLB_2M_FILE_ID_BASE
        };
        base | self.new_serial()
    }

    fn new_serial(&self) -> u64 {
        // Relaxed: uniqueness only. 2^60 files before a serial repeats.
        (self.next_internal.fetch_add(1, Ordering::Relaxed) + 1) & INTERNAL_FILE_SERIAL
    }

    /// The id of an anonymous-VMA name (`[stack]`, `[anon:foo]`).
    pub fn name_id(&self, name: &str) -> u64 {
        if let Some(id) = self.by_name.get(name) {
            return *id;
        }
        let name: Arc<str> = name.into();
        *self.by_name.entry(name.clone()).or_insert_with(|| {
            let id = self.next_name.fetch_add(1, Ordering::Relaxed) + 1;
            self.names.insert(id, name);
            id
        })
    }

    /// The name for a name id.
    pub fn name(&self, id: u64) -> Option<Arc<str>> {
        self.names.get(&id).map(|n| n.clone())
    }
}

/// What every mm of one simulator shares.
pub struct MmContext {
    /// The VMA cache.
    pub pool: Arc<VmaCache>,
    /// Every event the engine counts ([`crate::mm::vmstat::VmEvent`]).
    pub events: VmEvents,
    /// How faults lock.
    pub fault_lock: FaultLockMode,
    /// `vm.max_map_count`.
    pub max_map_count: usize,
    /// File ids and names.
    pub files: FileTable,
    /// Page-table memory of every mm, against its limit.
    pub pgtables: Arc<PgtableBudget>,
    /// How `/proc/PID/maps` is read (per-VMA locks or `mmap_lock`).
    pub maps_reader: MapsReader,
    /// The page cache of every file (what fault-around maps).
    pub page_cache: crate::mm::filemap::PageCache,
    /// Mappers of fork-shared anonymous pages (see [`crate::mm::rmap`]).
    pub anon_refs: crate::mm::rmap::AnonRefs,
    /// Bumped by every first anonymous write fault of a VMA (under a
    /// writer's `mmap_lock` or the VMA lock): on a line of its own, away
    /// from `pool`, `events` and `fault_lock`, which every fault reads.
    next_anon_vma: CachePadded<AtomicU64>,
}

impl MmContext {
    /// A context over `pool`.
    pub fn new(pool: Arc<VmaCache>, fault_lock: FaultLockMode, max_map_count: usize) -> Self {
        Self {
            pool,
            events: VmEvents::default(),
            fault_lock,
            max_map_count,
            files: FileTable::default(),
            pgtables: Arc::new(PgtableBudget::default()),
            maps_reader: MapsReader::default(),
            page_cache: Default::default(),
            anon_refs: Default::default(),
            next_anon_vma: CachePadded::new(AtomicU64::new(1)),
        }
    }

    /// Read `/proc/PID/maps` of every mm of this context with `reader`.
    pub fn with_maps_reader(mut self, reader: MapsReader) -> Self {
        self.maps_reader = reader;
        self
    }

    /// Limit the page tables of all mms of this context to `bytes`.
    pub fn with_pgtables_limit(mut self, bytes: u64) -> Self {
        self.pgtables = Arc::new(PgtableBudget::new(bytes));
        self
    }

    /// A new `anon_vma` id (`anon_vma_prepare`, `anon_vma_fork`).
    pub fn new_anon_vma(&self) -> u64 {
        // Relaxed: uniqueness only; taken on slow paths.
        self.next_anon_vma.fetch_add(1, Ordering::Relaxed)
    }
}

/// The fields `mmap_lock` protects.
#[derive(Debug, Clone)]
pub struct MmState {
    /// Start of the heap.
    pub start_brk: u64,
    /// Current program break.
    pub brk: u64,
    /// Number of VMAs.
    pub map_count: usize,
    /// Set by `exit_mmap`; later operations see no process.
    pub dead: bool,
    /// `vm_flags` of the x86-64 gate area (`[vsyscall]`, `get_gate_vma`)
    /// shown after the last VMA, `None` for none: not a VMA (not in the tree,
    /// not in `map_count`, no operation reaches it), kept from an imported
    /// maps text and inherited by fork (see proc_maps).
    pub gate_vma: Option<u64>,
}

/// One simulated address space.
///
/// Laid out by who writes what. Every fault reads `ctx`, `race`, `seq`,
/// the tree and the page-table root; a writer of the same mm (mmap,
/// mprotect, munmap anywhere else in it) writes `mmap_lock` and its state,
/// `mm_lock_seq`, `proc_view` and the page-table byte count. Each of those
/// sits on cache lines of its own ([`CachePadded`]), so a writer dirties
/// only the line a fault must read anyway (`mm_lock_seq`, which
/// `vma_start_read` compares), not the read-mostly ones: the kernel's
/// `struct mm_struct` keeps its often-written `mm_count` in a
/// `____cacheline_aligned_in_smp` group of its own ("Fields which are
/// often written to are placed in a separate cache line") for the same
/// reason.
pub struct MmStruct {
    /// `mm_lock_seq` (written at every `mmap_write_lock`/unlock, read by
    /// every lockless fault) and the id beside it, read with it.
    pub(crate) seq: CachePadded<MmLockSeq>,
    pub(crate) pid: u32,
    mmap_lock: CachePadded<RwLock<MmState>>,
    pub(crate) mm_mt: VmaTree,
    pub(crate) pgd: PageTable,
    pub(crate) rss: Counters<NR_MM_COUNTERS>,
    pub(crate) ctx: Arc<MmContext>,
    /// Race-lab hooks; `None` for every mm of ordinary traffic, so the hot
    /// path pays one load and a predictable branch.
    pub(crate) race: Option<Arc<RaceHooks>>,
    /// What a lockless maps reader may read of [`MmState`], republished at
    /// every `mmap_write_unlock`.
    pub(crate) proc_view: CachePadded<ProcView>,
}

/// The [`MmState`] fields `show_map_vma` needs, published at every
/// `mmap_write_unlock` so that a maps reader under per-VMA locks reads
/// them without `mmap_lock`, as `get_vma_name` reads `mm->brk` and
/// `mm->start_brk` (plain loads, no lock) and `get_gate_vma` needs none.
pub(crate) struct ProcView {
    pub(crate) start_brk: AtomicU64,
    pub(crate) brk: AtomicU64,
    /// `gate_vma` flags, [`ProcView::NO_GATE`] for none.
    pub(crate) gate_vma: AtomicU64,
}

impl ProcView {
    /// No gate area (`vm_flags` are never all ones).
    pub(crate) const NO_GATE: u64 = u64::MAX;

    fn publish(&self, s: &MmState) {
        // Relaxed: a racy snapshot like the kernel's reads of mm->brk; the
        // Release bump of mm_lock_seq that follows orders it for readers
        // that care (none need more than a value that was true once).
        self.start_brk.store(s.start_brk, Ordering::Relaxed);
        self.brk.store(s.brk, Ordering::Relaxed);
        self.gate_vma
            .store(s.gate_vma.unwrap_or(Self::NO_GATE), Ordering::Relaxed);
    }

    /// `(start_brk, brk, gate_vma)` as last published.
    pub(crate) fn read(&self) -> (u64, u64, Option<u64>) {
        let g = self.gate_vma.load(Ordering::Relaxed);
        (
            self.start_brk.load(Ordering::Relaxed),
            self.brk.load(Ordering::Relaxed),
            (g != Self::NO_GATE).then_some(g),
        )
    }
}

impl MmStruct {
    /// This mm's race-lab hooks, if it has any.
    ///
    /// Built with `RUSTFLAGS="--cfg vmasim_no_race_hooks"` it is always
    /// `None`, so every hook call compiles out: the baseline against which
    /// the fault benchmark shows what the disarmed hooks cost (README,
    /// "Benchmarks"). Scenarios cannot run in such a build.
    #[inline(always)]
    pub(crate) fn race_hooks(&self) -> Option<&RaceHooks> {
        #[cfg(vmasim_no_race_hooks)]
        {
            None
        }
        #[cfg(not(vmasim_no_race_hooks))]
        {
            self.race.as_deref()
        }
    }
}

fn next_mm_id() -> u64 {
    // Relaxed: uniqueness only. Ids are never reused, which is what lets
    // vma_start_read compare ids where the kernel compares pointers.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl MmStruct {
    /// An empty address space (`mm_alloc`).
    pub fn new(pid: u32, ctx: Arc<MmContext>, race: Option<Arc<RaceHooks>>) -> Self {
        Self {
            seq: CachePadded::new(MmLockSeq::new(next_mm_id())),
            pid,
            mmap_lock: CachePadded::new(RwLock::new(MmState {
                start_brk: crate::mm::DEFAULT_START_BRK,
                brk: crate::mm::DEFAULT_START_BRK,
                map_count: 0,
                dead: false,
                gate_vma: None,
            })),
            mm_mt: VmaTree::new(),
            pgd: PageTable::new(ctx.pgtables.clone()),
            rss: Counters::new(),
            ctx,
            race,
            proc_view: CachePadded::new(ProcView {
                start_brk: AtomicU64::new(crate::mm::DEFAULT_START_BRK),
                brk: AtomicU64::new(crate::mm::DEFAULT_START_BRK),
                gate_vma: AtomicU64::new(ProcView::NO_GATE),
            }),
        }
    }

    /// The mm's id (what `vm_mm` holds).
    pub fn id(&self) -> u64 {
        self.seq.id
    }

    /// The pid it was created for.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The shared context.
    pub fn ctx(&self) -> &Arc<MmContext> {
        &self.ctx
    }

    /// Current `mm_lock_seq`.
    pub fn mm_lock_seq(&self) -> u64 {
        self.seq.mm_lock_seq.load(Ordering::Acquire)
    }

    /// Resident pages (all RSS counters).
    pub fn rss_pages(&self) -> u64 {
        self.rss.snapshot().iter().sum()
    }

    /// `mmap_write_lock`.
    pub fn mmap_write_lock(&self) -> MmapWriteGuard<'_> {
        let state = self.mmap_lock.write().unwrap_or_else(|e| e.into_inner());
        // AcqRel: the odd sequence must be visible before any VMA is marked
        // with it (mm_lock_seqcount_begin's smp_wmb).
        let seq = self.seq.mm_lock_seq.fetch_add(1, Ordering::AcqRel) + 1;
        debug_assert!(seq % 2 == 1);
        MmapWriteGuard {
            mm: self,
            state,
            seq,
        }
    }

    /// `mmap_read_lock`.
    pub fn mmap_read_lock(&self) -> RwLockReadGuard<'_, MmState> {
        self.mmap_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// `mmap_read_trylock`: `None` while a writer holds (or waits for) the
    /// lock.
    pub fn mmap_read_trylock(&self) -> Option<RwLockReadGuard<'_, MmState>> {
        match self.mmap_lock.try_read() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// `mmap_lock` held for write. Dropping it is `mmap_write_unlock`, which
/// first unlocks every VMA write-locked under it (`vma_end_write_all`).
pub struct MmapWriteGuard<'a> {
    mm: &'a MmStruct,
    /// The protected fields.
    pub state: RwLockWriteGuard<'a, MmState>,
    seq: u64,
}

impl MmapWriteGuard<'_> {
    /// The odd `mm_lock_seq` of this write cycle, for `vma_start_write`.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for MmapWriteGuard<'_> {
    fn drop(&mut self) {
        self.mm.proc_view.publish(&self.state);
        // Release pairs with the Acquire re-check in vma_start_read: a
        // reader that sees the new sequence sees every change made under
        // the lock. The RwLock is released after this (field drop order).
        self.mm.seq.mm_lock_seq.fetch_add(1, Ordering::Release);
    }
}
