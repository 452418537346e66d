//! The race lab: the review's races, replayed deterministically.
//!
//! The races in `seed-review.txt` need a reader to stop at one precise
//! instruction of `lock_vma_under_rcu` while other threads free and reuse the
//! VMA it found. By chance that happens once in billions of faults, so a
//! scenario makes it happen on purpose and shows which check catches it, or,
//! with the check or the fix switched off, that it becomes a use after reuse.
//!
//! # How a scenario runs
//!
//! * **Private engine.** Each [`run`] builds its own race-lab VMA cache
//!   ([`VmaCache::new_for_race_lab`], typesafe policy, one slab), its own
//!   [`MmContext`] and its own processes, all carrying the same
//!   [`RaceHooks`]. Nothing is shared with the server's simulator, so a
//!   scenario never disturbs other clients or their statistics, and the
//!   buggy switches ([`Bugs`]) exist only inside it. The one thing it shares
//!   is crossbeam's global epoch: a parked reader is inside an RCU read
//!   section, so grace periods everywhere wait the milliseconds a scenario
//!   lasts (as a preempted reader would delay them in the kernel).
//! * **Driven threads.** The reader, and the forker / writer when they must
//!   stop half-way, run on their own threads with a *role*. When the engine
//!   calls a hook ([`InjectPoint`]) on a role thread, the lab records a
//!   timeline step and, if the conductor asked that role to stop there,
//!   parks the thread until the conductor resumes it. The conductor (the
//!   caller of [`run`]) steps the threads in a fixed order through channels:
//!   no sleeps, no timing assumptions, the same interleaving every time.
//!   A writer that is not parked but waiting *inside the protocol* (a
//!   `vma_start_write` draining readers) is observed through `vm_refcnt`
//!   reaching `VMA_LOCK_OFFSET`, which it sets before waiting.
//! * **Observed verdict.** The conductor branches on where the reader
//!   actually stops next, so the verdict is what the engine did, not what
//!   the script expected. It comes from [`RaceHooks::caught`] (checks that
//!   refused a VMA), [`RaceHooks::locks`] (generations walked to and
//!   locked) with a snapshot of each locked VMA taken at
//!   [`InjectPoint::AfterReadLock`], and the engine's own use-after-reuse
//!   counter (a VMA that changed under a held read lock).
//!
//! A timeline step shows the *watched* slot (the one the reader walked to):
//! its `vm_refcnt`, `vm_lock_seq` (`u64::MAX` = never write-locked since
//! allocated), its debug generation, and the reader's mm's `mm_lock_seq`.

use crate::mm::exit::exit_mmap;
use crate::mm::fork::dup_mmap;
use crate::mm::mm_struct::{MmContext, MmStruct};
use crate::mm::mm_types::{VMA_LOCK_OFFSET, Vma};
use crate::mm::mmap::{MmapArgs, do_mmap, do_munmap, map, prot};
use crate::mm::race::{Bugs, InjectPoint, RaceHooks};
use crate::mm::rcu::rcu_read_lock;
use crate::mm::slab::{CachePolicy, SLAB_SIZE, VmaCache, VmaIdx};
use crate::mm::sync::Ordering;
use crate::mm::{
    fault::do_user_addr_fault,
    mm_types::{Access, FaultLockMode, FaultResult, ReuseCheck},
    vmstat::FaultStats,
};
use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A scenario's name and what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScenarioInfo {
    /// The name [`run`] takes.
    pub name: &'static str,
    /// One paragraph: the race and the check or fix it is about.
    pub description: &'static str,
}

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A check refused the reused VMA (see [`RaceReport::caught_by`]); the
    /// fault fell back to `mmap_lock`.
    Caught,
    /// The reader found the VMA detached, walked again (`VMA_LOCK_MISS`)
    /// and read-locked the right VMA.
    Retried,
    /// The reader read-locked and used a VMA that is not the one it meant.
    UseAfterReuse,
    /// Nothing raced: no check had to fire.
    Safe,
    /// A maps reader printed lines that break a `/proc/PID/maps` guarantee
    /// (going backwards or overlapping, or a range mapped during the whole
    /// read left out). Expected only for a buggy variant.
    GuaranteeBroken,
}

/// One step of a scenario's timeline.
#[derive(Debug, Clone)]
pub struct RaceStep {
    /// 1-based position.
    pub step: u32,
    /// `reader`, `writer`, `forker` or `exiter`.
    pub thread: String,
    /// What happened.
    pub action: String,
    /// The watched slot's `vm_refcnt` after the step.
    pub vm_refcnt: u64,
    /// The watched slot's `vm_lock_seq` (`u64::MAX`: not write-locked since
    /// it was allocated).
    pub vm_lock_seq: u64,
    /// The reader's mm's `mm_lock_seq` (odd while `mmap_lock` is
    /// write-held).
    pub mm_lock_seq: u64,
    /// The watched slot's debug generation (bumped at each allocation).
    pub generation: u64,
}

/// The result of one scenario run.
#[derive(Debug, Clone)]
pub struct RaceReport {
    /// Scenario name.
    pub name: String,
    /// Whether the buggy variant ran.
    pub buggy: bool,
    /// What this variant does and what it should show.
    pub description: String,
    /// What happened, in order.
    pub timeline: Vec<RaceStep>,
    /// How it ended.
    pub verdict: Verdict,
    /// The check(s) that refused a reused VMA, comma-separated (for
    /// [`Verdict::Retried`], the detached check); empty if none did.
    pub caught_by: String,
    /// One or two sentences on the outcome.
    pub summary: String,
}

/// [`run`] was given a name [`scenarios`] does not list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown race scenario {0:?}")]
pub struct UnknownScenario(pub String);

struct Scenario {
    name: &'static str,
    description: &'static str,
    run: fn(bool) -> RaceReport,
}

mod maps;

const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "dup-copies-refcnt",
        description: "vm_area_dup copies vm_refcnt with the rest of the VMA (v8 of the \
            series, before the fix) versus vm_area_init_from, which leaves the new VMA \
            detached until it is in the tree. A reader stopped before its vm_refcnt \
            increment meets its freed VMA's slot reused by fork for the child's copy.",
        run: dup_copies_refcnt,
    },
    Scenario {
        name: "exit-without-detach",
        description: "exit_mmap frees VMAs still marked attached (before the fix) versus \
            detaching each one first. A reader stopped before its increment meets the \
            exited process's slot handed out again by another process's fork.",
        run: exit_without_detach,
    },
    Scenario {
        name: "reuse-between-check-and-lock",
        description: "The race in the review: the reader passes the vm_lock_seq check, \
            the VMA is freed and reused before it takes its reference. Reuse by another \
            mm is caught by the vm_mm recheck, reuse by the same mm at another range by \
            the range recheck; the buggy variant skips both re-checks.",
        run: reuse_between_check_and_lock,
    },
    Scenario {
        name: "writer-waits-for-readers",
        description: "vma_start_write adds VMA_LOCK_OFFSET and waits until readers \
            drain, with vm_refcnt shown at each step. The buggy variant's writer does \
            not wait and frees the VMA under the reader.",
        run: writer_waits_for_readers,
    },
    Scenario {
        name: "detached-retry",
        description: "The reader finds a VMA that was just detached and replaced: \
            lock_vma_under_rcu sees vm_refcnt 0, walks again (VMA_LOCK_MISS) and \
            read-locks the new VMA.",
        run: detached_retry,
    },
    Scenario {
        name: "maps-split-while-printing",
        description: "A /proc/PID/maps reader under per-VMA locks (lock_next_vma, 6.17) \
            holds X read-locked while printing it; a writer's mprotect splits X and waits \
            in vma_start_write. X is printed whole, as it was while held: each line is \
            true at one moment, the read is not a snapshot.",
        run: maps::maps_split_while_printing,
    },
    Scenario {
        name: "maps-split-gap",
        description: "The maps reader's RCU walk finds X; before it locks X, a writer \
            splits X so a new VMA takes X's lower half. lock_next_vma sees the locked X \
            start beyond the last printed end, walks again, finds the new VMA and takes it \
            under mmap_lock instead of printing a false gap; the buggy variant skips that \
            recheck and leaves out a range mapped during the whole read.",
        run: maps::maps_split_gap,
    },
];

/// Every scenario, in order.
pub fn scenarios() -> Vec<ScenarioInfo> {
    SCENARIOS
        .iter()
        .map(|s| ScenarioInfo {
            name: s.name,
            description: s.description,
        })
        .collect()
}

/// Run scenario `name`, the buggy variant if `buggy`. Blocks for the few
/// milliseconds the scenario's threads need.
pub fn run(name: &str, buggy: bool) -> Result<RaceReport, UnknownScenario> {
    let s = SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| UnknownScenario(name.to_string()))?;
    Ok((s.run)(buggy))
}

// ---------------------------------------------------------------------------
// The lab: threads, hooks, timeline.

/// Bound on any wait of the conductor. Never reached when the engine
/// behaves; it turns a scenario that went wrong into a panic (an internal
/// error for the caller) instead of a hung request.
const STALL: Duration = Duration::from_secs(30);

/// The thread roles a scenario can drive.
const ROLES: [&str; 4] = ["reader", "writer", "forker", "exiter"];

std::thread_local! {
    /// The role of the current thread in the scenario running it, if any.
    /// Hooks on threads without a role (none in practice) do nothing.
    static ROLE: Cell<Option<&'static str>> = const { Cell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a role thread tells the conductor.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// Stopped in the hook at this point, waiting to be resumed.
    Parked(InjectPoint),
    /// Finished; the text describes the result.
    Done(String),
}

/// The role thread's side of its channels.
struct Driver {
    role: &'static str,
    /// Points where the thread parks next (set by the conductor).
    park_at: Mutex<Vec<InjectPoint>>,
    events: Sender<Event>,
    resume: Mutex<Receiver<Vec<InjectPoint>>>,
}

/// A read lock the reader took, as it was when taken.
#[derive(Debug, Clone)]
struct LockSnap {
    slot: Option<u32>,
    start: u64,
    end: u64,
    /// Why this is not the VMA the reader meant, if it is not.
    wrong: Option<String>,
}

/// What the hooks (on any thread) and the conductor share.
struct Shared {
    pool: Arc<VmaCache>,
    bugs: Bugs,
    timeline: Mutex<Vec<RaceStep>>,
    /// The slot whose state the timeline shows.
    watch: Mutex<Option<VmaIdx>>,
    /// The mm the reader faults in (weak: the mm holds the hooks that hold
    /// this), and the fault address.
    reader_mm: Mutex<Weak<MmStruct>>,
    fault_addr: AtomicU64,
    /// RCU walks of the current reader fault: a second one is a retry.
    walks: AtomicU64,
    /// mm id -> label for timeline text.
    names: Mutex<Vec<(u64, &'static str)>>,
    drivers: Vec<Driver>,
    snaps: Mutex<Vec<LockSnap>>,
}

impl Shared {
    fn driver(&self, role: &str) -> &Driver {
        self.drivers
            .iter()
            .find(|d| d.role == role)
            .expect("race lab role")
    }

    fn record(&self, thread: &str, action: String) {
        let (vm_refcnt, vm_lock_seq, generation) = match *lock(&self.watch) {
            Some(i) => {
                let v = self.pool.get(i);
                (u64::from(v.vm_refcnt()), v.vm_lock_seq(), v.generation())
            }
            None => (0, 0, 0),
        };
        let mm_lock_seq = lock(&self.reader_mm)
            .upgrade()
            .map_or(0, |m| m.mm_lock_seq());
        let mut t = lock(&self.timeline);
        let step = t.len() as u32 + 1;
        t.push(RaceStep {
            step,
            thread: thread.to_string(),
            action,
            vm_refcnt,
            vm_lock_seq,
            mm_lock_seq,
            generation,
        });
    }

    fn name(&self, mm_id: u64) -> String {
        if mm_id == 0 {
            return "no mm (free)".into();
        }
        lock(&self.names)
            .iter()
            .find(|(id, _)| *id == mm_id)
            .map_or_else(|| format!("mm {mm_id}"), |(_, n)| format!("mm {n}"))
    }

    /// The slot index of `vma`. The pool is one slab of [`SLAB_SIZE`]
    /// slots, allocated before any hook can run, so a linear search is
    /// cheap and every index is valid.
    fn slot_of(&self, vma: &Vma) -> Option<u32> {
        (0..SLAB_SIZE).find(|&i| std::ptr::eq(self.pool.get(VmaIdx(i)), vma))
    }

    fn slot_text(&self, vma: &Vma) -> String {
        self.slot_of(vma)
            .map_or_else(|| "?".into(), |i| i.to_string())
    }

    fn describe(&self, p: InjectPoint, vma: &Vma) -> String {
        let f = vma.fields();
        let slot = self.slot_text(vma);
        let range = format!("[{:#x}, {:#x})", f.vm_start, f.vm_end);
        let owner = self.name(f.vm_mm);
        match p {
            InjectPoint::AfterRcuWalk => format!(
                "{}the RCU walk for {:#x} found slot {slot}, {range} of {owner}; nothing \
                 checked yet",
                // Relaxed: only the reader thread touches it during a fault.
                if self.walks.fetch_add(1, Ordering::Relaxed) == 0 {
                    "lock_vma_under_rcu: "
                } else {
                    "vm_refcnt was 0 (detached): VMA_LOCK_MISS, walk again; "
                },
                self.fault_addr.load(Ordering::Relaxed)
            ),
            InjectPoint::BetweenSeqCheckAndInc => format!(
                "vma_start_read: slot {slot} passed the early vm_lock_seq check; vm_refcnt \
                 not incremented yet"
            ),
            InjectPoint::AfterReadLock => format!(
                "read-locked slot {slot} ({range} of {owner}): every check passed, the fault \
                 goes on with it"
            ),
            InjectPoint::InVmAreaDup if self.bugs.dup_copies_refcnt => format!(
                "vm_area_dup copied the whole VMA {range} of {owner} into slot {slot}, \
                 vm_refcnt included (v8); vm_mm not yet set to the child"
            ),
            InjectPoint::InVmAreaDup => format!(
                "vm_area_init_from copied {range} of {owner} into slot {slot}, leaving its \
                 vm_refcnt alone; vm_mm not yet set to the child"
            ),
            InjectPoint::InVmaLockInit => format!(
                "vma_lock_init(new, true) resets slot {slot}'s vm_refcnt to 0 under the reader \
                 that got in (and vm_lock_seq to UINT_MAX)"
            ),
            InjectPoint::ExitBeforeDetach if self.bugs.exit_without_detach => format!(
                "exit_mmap frees slot {slot} {range} WITHOUT detaching it (vm_refcnt stays 1)"
            ),
            InjectPoint::ExitBeforeDetach => {
                format!("exit_mmap detaches slot {slot} {range} (vm_refcnt 1 -> 0), then frees it")
            }
            InjectPoint::MapsAfterVmaNext
            | InjectPoint::MapsGapRecheckFailed
            | InjectPoint::MapsLockedUnderMmapLock
            | InjectPoint::MapsShowVma => maps::describe(self, p, vma),
        }
    }

    /// Is the VMA just read-locked the one the reader meant: its mm's VMA
    /// covering the address, as the tree has it now? Called in the reader's
    /// hook while every other thread is parked or done, so the answer is
    /// the state at lock time.
    fn snapshot_lock(&self, vma: &Vma) {
        let addr = self.fault_addr.load(Ordering::Relaxed);
        let f = vma.fields();
        let wrong = match lock(&self.reader_mm).upgrade() {
            None => Some("its mm is gone".to_string()),
            Some(mm) => {
                let slot = self.slot_of(vma);
                let guard = rcu_read_lock();
                let entry = mm.mm_mt.mas_walk(addr, &guard);
                if f.vm_mm != mm.id() {
                    Some(format!("it belongs to {}", self.name(f.vm_mm)))
                } else if !vma.contains(addr) {
                    Some(format!(
                        "it maps [{:#x}, {:#x}), which does not contain {addr:#x}",
                        f.vm_start, f.vm_end
                    ))
                } else if !entry
                    .is_some_and(|e| Some(e.idx.0) == slot && e.generation == vma.generation())
                {
                    Some(format!(
                        "it is not in {}'s VMA tree (freed or not inserted yet)",
                        self.name(mm.id())
                    ))
                } else {
                    None
                }
            }
        };
        lock(&self.snaps).push(LockSnap {
            slot: self.slot_of(vma),
            start: f.vm_start,
            end: f.vm_end,
            wrong,
        });
    }

    /// The hook every scenario mm carries.
    fn hit(&self, p: InjectPoint, vma: &Vma) {
        let Some(role) = ROLE.with(Cell::get) else {
            return;
        };
        let d = self.driver(role);
        if p == InjectPoint::AfterReadLock {
            self.snapshot_lock(vma);
        }
        self.record(role, self.describe(p, vma));
        let park = lock(&d.park_at).contains(&p);
        if park {
            let _ = d.events.send(Event::Parked(p));
            // A closed channel means the conductor is gone (it panicked):
            // run on, so the thread finishes instead of hanging.
            let next = lock(&d.resume).recv().unwrap_or_default();
            *lock(&d.park_at) = next;
        }
    }
}

/// Sends `Done` when a role thread ends, even by panic, so the conductor
/// never waits for a dead thread.
struct DoneGuard {
    events: Sender<Event>,
    text: Option<String>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let text = self.text.take().unwrap_or_else(|| "thread panicked".into());
        let _ = self.events.send(Event::Done(text));
    }
}

/// The conductor's end of one role's channels: the role, its events, and
/// where to send the next set of stops when resuming it.
type ConductorEnd = (&'static str, Receiver<Event>, Sender<Vec<InjectPoint>>);

/// The conductor's side: one scenario run.
struct Lab {
    shared: Arc<Shared>,
    hooks: Arc<RaceHooks>,
    ctx: Arc<MmContext>,
    /// Per role: events from it, resumes to it.
    conductor: Vec<ConductorEnd>,
    handles: Vec<JoinHandle<()>>,
    next_pid: u32,
}

impl Lab {
    fn new(bugs: Bugs) -> Self {
        let pool = VmaCache::new_for_race_lab(CachePolicy::Typesafe, SLAB_SIZE);
        let ctx = Arc::new(MmContext::new(pool.clone(), FaultLockMode::PerVma, 64));
        let mut drivers = Vec::new();
        let mut conductor = Vec::new();
        for role in ROLES {
            let (ev_tx, ev_rx) = mpsc::channel();
            let (res_tx, res_rx) = mpsc::channel();
            drivers.push(Driver {
                role,
                park_at: Mutex::new(Vec::new()),
                events: ev_tx,
                resume: Mutex::new(res_rx),
            });
            conductor.push((role, ev_rx, res_tx));
        }
        let shared = Arc::new(Shared {
            pool,
            bugs,
            timeline: Mutex::new(Vec::new()),
            watch: Mutex::new(None),
            reader_mm: Mutex::new(Weak::new()),
            fault_addr: AtomicU64::new(0),
            walks: AtomicU64::new(0),
            names: Mutex::new(Vec::new()),
            drivers,
            snaps: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let hooks = Arc::new(RaceHooks::new(bugs, move |p, vma| s.hit(p, vma)));
        Self {
            shared,
            hooks,
            ctx,
            conductor,
            handles: Vec::new(),
            next_pid: 1,
        }
    }

    /// A new empty process labelled `label` in the timeline.
    fn mm(&mut self, label: &'static str) -> Arc<MmStruct> {
        let mm = Arc::new(MmStruct::new(
            self.next_pid,
            self.ctx.clone(),
            Some(self.hooks.clone()),
        ));
        self.next_pid += 1;
        lock(&self.shared.names).push((mm.id(), label));
        // The first mm is the one the reader faults in: show its
        // mm_lock_seq from the first step on.
        let mut reader = lock(&self.shared.reader_mm);
        if reader.upgrade().is_none() {
            *reader = Arc::downgrade(&mm);
        }
        drop(reader);
        mm
    }

    fn record(&self, thread: &str, action: impl Into<String>) {
        self.shared.record(thread, action.into());
    }

    fn watch(&self, idx: VmaIdx) {
        *lock(&self.shared.watch) = Some(idx);
    }

    fn channels(&self, role: &str) -> (&Receiver<Event>, &Sender<Vec<InjectPoint>>) {
        let (_, rx, tx) = self
            .conductor
            .iter()
            .find(|(r, _, _)| *r == role)
            .expect("race lab role");
        (rx, tx)
    }

    /// Run `f` on a new thread with `role`, parking at `park_at`.
    fn spawn(
        &mut self,
        role: &'static str,
        park_at: &[InjectPoint],
        f: impl FnOnce() -> String + Send + 'static,
    ) {
        let d = self.shared.driver(role);
        *lock(&d.park_at) = park_at.to_vec();
        let done = DoneGuard {
            events: d.events.clone(),
            text: None,
        };
        let h = std::thread::Builder::new()
            .name(format!("race-lab-{role}"))
            .spawn(move || {
                // Bind the whole guard: a closure capturing only `done.text`
                // would leave the guard (and its Drop) on this thread.
                let mut done = done;
                ROLE.with(|r| r.set(Some(role)));
                done.text = Some(f());
            })
            .expect("spawn a race lab thread");
        self.handles.push(h);
    }

    /// Start a read fault at `addr` in `mm` on the reader thread.
    fn spawn_reader(&mut self, mm: &Arc<MmStruct>, addr: u64, park_at: &[InjectPoint]) {
        *lock(&self.shared.reader_mm) = Arc::downgrade(mm);
        self.shared.fault_addr.store(addr, Ordering::Relaxed);
        self.shared.walks.store(0, Ordering::Relaxed);
        let mm = mm.clone();
        self.spawn("reader", park_at, move || {
            describe_fault(addr, do_user_addr_fault(&mm, addr, Access::Read))
        });
    }

    fn wait(&self, role: &str) -> Event {
        self.channels(role)
            .0
            .recv_timeout(STALL)
            .unwrap_or_else(|e| panic!("race lab: the {role} thread stalled ({e})"))
    }

    fn expect_parked(&self, role: &str, p: InjectPoint) {
        let e = self.wait(role);
        assert_eq!(
            e,
            Event::Parked(p),
            "race lab: {role} did not stop at {p:?}"
        );
    }

    /// Wait for `role` to finish; its result text.
    fn expect_done(&self, role: &str) -> String {
        match self.wait(role) {
            Event::Done(t) => t,
            e => panic!("race lab: {role} stopped at {e:?} instead of finishing"),
        }
    }

    fn resume(&self, role: &str, park_at: &[InjectPoint]) {
        self.channels(role)
            .1
            .send(park_at.to_vec())
            .expect("race lab: resume a parked thread");
    }

    /// Resume `role` with no further stops and wait for it to finish.
    fn expect_done_after_resume(&self, role: &str) -> String {
        self.resume(role, &[]);
        self.expect_done(role)
    }

    /// Run `f` on the conductor's thread as `role` (hooks record, never park).
    fn as_role<T>(&self, role: &'static str, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<&'static str>);
        impl Drop for Restore {
            fn drop(&mut self) {
                ROLE.with(|r| r.set(self.0));
            }
        }
        let _restore = Restore(ROLE.with(|r| r.replace(Some(role))));
        f()
    }

    /// Wait until a writer has added `VMA_LOCK_OFFSET` to `idx`'s
    /// `vm_refcnt`: it is in `vma_start_write`, waiting for readers. The
    /// writer sets it before it waits and cannot clear it while a parked
    /// reader holds the VMA, so this is deterministic; it yields, never
    /// sleeps.
    fn wait_for_writer(&self, idx: VmaIdx) {
        let t0 = Instant::now();
        while self.shared.pool.get(idx).vm_refcnt() < VMA_LOCK_OFFSET {
            assert!(
                t0.elapsed() < STALL,
                "race lab: the writer never reached vma_start_write"
            );
            std::thread::yield_now();
        }
    }

    /// Join the threads, judge, and build the report.
    fn finish(mut self, name: &str, buggy: bool, description: &str) -> RaceReport {
        for h in self.handles.drain(..) {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        let caught = lock(&self.hooks.caught).clone();
        let locks = lock(&self.hooks.locks).clone();
        let snaps = lock(&self.shared.snaps).clone();
        let changed_under_lock =
            FaultStats::from_events(&self.ctx.events.snapshot()).use_after_reuse;
        let addr = self.shared.fault_addr.load(Ordering::Relaxed);
        let reused = locks
            .iter()
            .zip(&snaps)
            .find(|((walked, locked), s)| walked != locked && s.wrong.is_some());
        let mut checks: Vec<&'static str> = Vec::new();
        for c in &caught {
            let n = check_name(*c);
            if !checks.contains(&n) {
                checks.push(n);
            }
        }
        let (verdict, caught_by, summary) = if let Some(((walked, locked), s)) = reused {
            (
                Verdict::UseAfterReuse,
                String::new(),
                format!(
                    "USE-AFTER-REUSE: the reader walked to a VMA of generation {walked} and \
                     read-locked slot {} at generation {locked} as the VMA covering its \
                     fault, but {}.",
                    s.slot.map_or_else(|| "?".into(), |i| i.to_string()),
                    s.wrong.as_deref().unwrap_or("it is another VMA")
                ),
            )
        } else if changed_under_lock > 0 {
            (
                Verdict::UseAfterReuse,
                String::new(),
                "USE-AFTER-REUSE: the VMA the reader held read-locked was freed and \
                 reused by another mm while the fault used it (the fault's stability \
                 check saw it change)."
                    .to_string(),
            )
        } else if caught.is_empty() {
            (
                Verdict::Safe,
                String::new(),
                "safe: nothing was reused under the reader, no check had to fire.".to_string(),
            )
        } else if caught.iter().all(|c| *c == ReuseCheck::VmRefcnt)
            && snaps.last().is_some_and(|s| s.wrong.is_none())
        {
            let s = snaps.last().expect("checked above");
            (
                Verdict::Retried,
                check_name(ReuseCheck::VmRefcnt).to_string(),
                format!(
                    "retried: the reader found its VMA detached (vm_refcnt 0, \
                     VMA_LOCK_MISS), walked the tree again and read-locked the VMA that \
                     now covers {addr:#x} (slot {}, [{:#x}, {:#x})).",
                    s.slot.map_or_else(|| "?".into(), |i| i.to_string()),
                    s.start,
                    s.end
                ),
            )
        } else {
            let by = checks.join(", ");
            let how = if caught.iter().all(|c| *c == ReuseCheck::VmRefcnt) {
                "the reader's increment failed on the detached slot, it walked again and \
                 found no VMA it could lock, so it fell back to mmap_lock"
            } else {
                "the reader refused the reused VMA, dropped the reference it had taken and \
                 fell back to mmap_lock"
            };
            (
                Verdict::Caught,
                by.clone(),
                format!("caught by {by}: {how}, which sees the address space as it really is."),
            )
        };
        let timeline = std::mem::take(&mut *lock(&self.shared.timeline));
        RaceReport {
            name: name.to_string(),
            buggy,
            description: description.to_string(),
            timeline,
            verdict,
            caught_by,
            summary,
        }
    }
}

fn check_name(c: ReuseCheck) -> &'static str {
    match c {
        ReuseCheck::VmRefcnt => "vm_refcnt == 0 (detached)",
        ReuseCheck::VmMm => "vm_mm recheck",
        ReuseCheck::VmLockSeq => "vm_lock_seq recheck",
        ReuseCheck::Range => "range recheck",
    }
}

fn describe_fault(addr: u64, r: FaultResult) -> String {
    format!(
        "fault at {addr:#x} finished: {} via {} ({} retr{})",
        r.outcome.as_str(),
        r.path.as_str(),
        r.retries,
        if r.retries == 1 { "y" } else { "ies" }
    )
}

// ---------------------------------------------------------------------------
// Helpers for the scenarios.

const PAGE: u64 = crate::mm::PAGE_SIZE;
/// Scenario VMAs: four pages each, far apart so that nothing merges.
const LEN: u64 = 4 * PAGE;
const R1: u64 = 0x1000_0000;
const R2: u64 = 0x2000_0000;
const R3: u64 = 0x3000_0000;
const R4: u64 = 0x4000_0000;
/// The reader faults on the second page of a VMA.
const IN: u64 = PAGE;

const RW: u32 = prot::PROT_READ | prot::PROT_WRITE;

/// `mmap(start, LEN, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)`.
fn map_fixed(mm: &MmStruct, start: u64, prot: u32) {
    do_mmap(
        mm,
        MmapArgs {
            addr: start,
            len: LEN,
            prot,
            flags: map::MAP_PRIVATE | map::MAP_ANONYMOUS | map::MAP_FIXED,
            file: 0,
            offset: 0,
        },
    )
    .expect("race lab mmap");
}

/// The slot mapping `addr` in `mm`.
fn slot_at(mm: &MmStruct, addr: u64) -> VmaIdx {
    let guard = rcu_read_lock();
    mm.mm_mt
        .mas_walk(addr, &guard)
        .expect("race lab: address mapped")
        .idx
}

// ---------------------------------------------------------------------------
// The scenarios.

fn dup_copies_refcnt(buggy: bool) -> RaceReport {
    let description = if buggy {
        "The reader faults at X in mm A and stops between the vm_lock_seq check and its \
         vm_refcnt increment. The writer maps P over X with MAP_FIXED: X is detached and \
         freed, its slot first on the free list. A forks into B: vm_area_dup takes X's slot \
         for B's copy of P and stops after the copy, before vm_mm is set to B. Buggy (v8): \
         the whole-struct copy sets the slot's vm_refcnt to P's 1, so it looks attached and \
         still says vm_mm = A with X's range: the reader passes every check and read-locks \
         B's VMA-to-be as A's VMA (vm_refcnt 2). Then vma_lock_init(new, true) resets \
         vm_refcnt to 0 under the reader, so the fork neither waits for it nor notices it: \
         it sets vm_mm = B and attaches the VMA (0 -> 1) while the reader uses it, and the \
         reader's vma_end_read leaves B's attached VMA at vm_refcnt 0."
    } else {
        "The reader faults at X in mm A and stops between the vm_lock_seq check and its \
         vm_refcnt increment. The writer maps P over X with MAP_FIXED: X is detached and \
         freed, its slot first on the free list. A forks into B: vm_area_dup takes X's slot \
         for B's copy of P and stops after the copy, before vm_mm is set to B. Fixed: \
         vm_area_init_from leaves the slot's vm_refcnt at 0, so the reader's increment \
         fails (detached); it walks again (VMA_LOCK_MISS) and finds P, which the fork holds \
         write-locked; once the fork releases A it read-locks P."
    };
    let mut lab = Lab::new(Bugs {
        dup_copies_refcnt: buggy,
        ..Bugs::default()
    });
    let a = lab.mm("A");
    let b = lab.mm("B");
    let addr = R1 + IN;
    map_fixed(&a, R1, RW);
    let x = slot_at(&a, addr);
    lab.watch(x);
    lab.record(
        "writer",
        format!("A maps X at [{R1:#x}, {:#x}) in slot {}", R1 + LEN, x.0),
    );
    lab.spawn_reader(&a, addr, &[InjectPoint::BetweenSeqCheckAndInc]);
    lab.expect_parked("reader", InjectPoint::BetweenSeqCheckAndInc);
    map_fixed(&a, R1, RW);
    let p = slot_at(&a, addr);
    lab.record(
        "writer",
        format!(
            "mmap(MAP_FIXED) maps P over X in slot {}: X is detached (vm_refcnt 0) and \
             freed; slot {} is first on the free list",
            p.0, x.0
        ),
    );
    let (pa, pb) = (a.clone(), b.clone());
    lab.spawn(
        "forker",
        &[InjectPoint::InVmAreaDup],
        move || match dup_mmap(&pa, &pb) {
            Ok(()) => "dup_mmap done: B has its copy of P; A's and B's mmap_lock released".into(),
            Err(e) => format!("dup_mmap failed: {e}"),
        },
    );
    lab.expect_parked("forker", InjectPoint::InVmAreaDup);
    lab.resume(
        "reader",
        &[InjectPoint::AfterRcuWalk, InjectPoint::AfterReadLock],
    );
    match lab.wait("reader") {
        Event::Parked(InjectPoint::AfterReadLock) => {
            // Got in while the copied count said "attached". The pre-fix
            // code then re-initialised the lock under the reader...
            lab.resume("forker", &[InjectPoint::InVmaLockInit]);
            lab.expect_parked("forker", InjectPoint::InVmaLockInit);
            // ...so nothing makes the fork wait: it sets vm_mm = B and
            // attaches the VMA (0 -> 1) with the reader still inside.
            let f = lab.expect_done_after_resume("forker");
            lab.record("forker", f);
            lab.resume("reader", &[]);
            let r = lab.expect_done("reader");
            lab.record("reader", r);
            lab.record(
                "reader",
                format!(
                    "vma_end_read dropped the reference it took before the reset: B's VMA in \
                     slot {} is in B's tree with vm_refcnt {} (looks detached; B's faults on \
                     it now miss)",
                    x.0,
                    lab.shared.pool.get(x).vm_refcnt()
                ),
            );
        }
        Event::Parked(InjectPoint::AfterRcuWalk) => {
            // Refused and walking again: P is write-locked by the fork,
            // so let the fork finish before the reader checks it.
            let f = lab.expect_done_after_resume("forker");
            lab.record("forker", f);
            lab.resume("reader", &[]);
            let r = lab.expect_done("reader");
            lab.record("reader", r);
        }
        Event::Done(r) => {
            lab.record("reader", r);
            lab.resume("forker", &[]);
            let f = lab.expect_done("forker");
            lab.record("forker", f);
        }
        e => panic!("race lab: unexpected reader event {e:?}"),
    }
    lab.finish("dup-copies-refcnt", buggy, description)
}

fn exit_without_detach(buggy: bool) -> RaceReport {
    let description = if buggy {
        "The reader faults at X in mm A (A maps X and Y) and stops between the vm_lock_seq \
         check and its vm_refcnt increment. A exits: exit_mmap frees X, then Y. Process D \
         (two VMAs) forks into E: dup_mmap allocates both slots up front, getting Y's slot \
         and then X's, and stops after copying D's first VMA into Y's slot, so X's slot is \
         handed out again but not written yet. Buggy: X was freed still attached and \
         vm_area_alloc does not reset vm_refcnt, so the reused slot reads vm_refcnt 1, \
         vm_mm = A, X's range and an unlocked vm_lock_seq: the reader passes every check \
         and read-locks E's VMA-to-be; the fork then copies D's second VMA into it under \
         the reader and its vma_start_write waits for the reader."
    } else {
        "The reader faults at X in mm A (A maps X and Y) and stops between the vm_lock_seq \
         check and its vm_refcnt increment. A exits: exit_mmap frees X, then Y. Process D \
         (two VMAs) forks into E: dup_mmap allocates both slots up front, getting Y's slot \
         and then X's, and stops after copying D's first VMA into Y's slot, so X's slot is \
         handed out again but not written yet. Fixed: exit_mmap detached X (vm_refcnt 0) \
         before freeing it, so the reader's increment fails; it walks again, A's tree is \
         empty, and the fault falls back to mmap_lock and gets SEGV_MAPERR."
    };
    let mut lab = Lab::new(Bugs {
        exit_without_detach: buggy,
        ..Bugs::default()
    });
    let a = lab.mm("A");
    let d = lab.mm("D");
    let e = lab.mm("E");
    let addr = R1 + IN;
    map_fixed(&a, R1, RW);
    map_fixed(&a, R2, RW);
    map_fixed(&d, R3, RW);
    map_fixed(&d, R4, RW);
    let x = slot_at(&a, addr);
    lab.watch(x);
    lab.record(
        "writer",
        format!(
            "A maps X in slot {} and Y in slot {}; D maps two VMAs in slots {} and {}",
            x.0,
            slot_at(&a, R2).0,
            slot_at(&d, R3).0,
            slot_at(&d, R4).0
        ),
    );
    lab.spawn_reader(&a, addr, &[InjectPoint::BetweenSeqCheckAndInc]);
    lab.expect_parked("reader", InjectPoint::BetweenSeqCheckAndInc);
    lab.as_role("exiter", || exit_mmap(&a))
        .expect("race lab exit");
    lab.record(
        "exiter",
        "exit_mmap done: A is dead, its tree empty; Y's slot is first on the free list, \
         then X's",
    );
    let (pd, pe) = (d.clone(), e.clone());
    lab.spawn(
        "forker",
        &[InjectPoint::InVmAreaDup],
        move || match dup_mmap(&pd, &pe) {
            Ok(()) => "dup_mmap done: E has copies of D's two VMAs".into(),
            Err(e) => format!("dup_mmap failed: {e}"),
        },
    );
    lab.expect_parked("forker", InjectPoint::InVmAreaDup);
    lab.record(
        "forker",
        format!(
            "vm_area_alloc handed X's slot {} out again for E's second VMA (generation \
             bumped); nothing written to it yet",
            x.0
        ),
    );
    lab.resume(
        "reader",
        &[InjectPoint::AfterRcuWalk, InjectPoint::AfterReadLock],
    );
    match lab.wait("reader") {
        Event::Parked(InjectPoint::AfterReadLock) => {
            lab.resume("forker", &[]);
            lab.wait_for_writer(x);
            lab.record(
                "forker",
                "copied D's second VMA into the slot the reader holds (vm_mm = E); \
                 vma_start_write waits for the reader",
            );
            lab.resume("reader", &[]);
            let r = lab.expect_done("reader");
            let f = lab.expect_done("forker");
            lab.record("reader", r);
            lab.record("forker", f);
        }
        Event::Parked(InjectPoint::AfterRcuWalk) => {
            // Not expected (A's tree is empty), but harmless: finish in order.
            lab.resume("reader", &[]);
            let r = lab.expect_done("reader");
            lab.record("reader", r);
            let f = lab.expect_done_after_resume("forker");
            lab.record("forker", f);
        }
        Event::Done(r) => {
            lab.record("reader", r);
            let f = lab.expect_done_after_resume("forker");
            lab.record("forker", f);
        }
        e => panic!("race lab: unexpected reader event {e:?}"),
    }
    lab.finish("exit-without-detach", buggy, description)
}

fn reuse_between_check_and_lock(buggy: bool) -> RaceReport {
    let description = if buggy {
        "Two sub-cases in one timeline, both with the re-checks after the increment \
         switched off (skip_mm_check, skip_range_check). (a) Reuse by another mm: the \
         reader stops after the vm_lock_seq check on X in mm A; X is unmapped and mm C maps \
         the same range, getting X's slot: the reader read-locks C's VMA as A's. (b) Reuse \
         by the same mm at another range: the reader stops on X2; X2 is unmapped and A maps \
         Z at another range, getting X2's slot: the reader read-locks Z for an address Z \
         does not map. The vm_lock_seq recheck cannot help: the slot was unlocked by its \
         new owner, and a vm_lock_seq written in another mm, or in an earlier write cycle \
         of A, never equals A's current mm_lock_seq."
    } else {
        "Two sub-cases in one timeline. (a) Reuse by another mm: the reader stops after the \
         vm_lock_seq check on X in mm A; X is unmapped and mm C maps the same range, getting \
         X's slot (attached, vm_mm = C): the vm_mm recheck after the increment refuses it. \
         (b) Reuse by the same mm at another range: the reader stops on X2; X2 is unmapped \
         and A maps Z at another range, getting X2's slot (vm_mm = A): the range recheck \
         refuses it. Both faults fall back to mmap_lock and get SEGV_MAPERR, since nothing \
         is mapped there any more. The vm_lock_seq recheck cannot catch either: the new \
         owner unlocked the slot."
    };
    let mut lab = Lab::new(Bugs {
        skip_mm_check: buggy,
        skip_range_check: buggy,
        ..Bugs::default()
    });
    let a = lab.mm("A");
    let c = lab.mm("C");

    // (a) Reuse by another mm at the same range.
    let addr = R1 + IN;
    map_fixed(&a, R1, RW);
    let x = slot_at(&a, addr);
    lab.watch(x);
    lab.record(
        "writer",
        format!("(a) A maps X at [{R1:#x}, {:#x}) in slot {}", R1 + LEN, x.0),
    );
    lab.spawn_reader(&a, addr, &[InjectPoint::BetweenSeqCheckAndInc]);
    lab.expect_parked("reader", InjectPoint::BetweenSeqCheckAndInc);
    do_munmap(&a, R1, LEN).expect("race lab munmap");
    lab.record(
        "writer",
        "(a) munmap(X): X is write-locked, detached (vm_refcnt 0) and freed",
    );
    map_fixed(&c, R1, RW);
    lab.record(
        "writer",
        format!(
            "(a) C maps the same range and gets slot {} (attached, vm_mm = C)",
            slot_at(&c, addr).0
        ),
    );
    lab.resume("reader", &[]);
    let r = lab.expect_done("reader");
    lab.record("reader", format!("(a) {r}"));

    // (b) Reuse by the same mm at another range.
    let addr = R2 + IN;
    map_fixed(&a, R2, RW);
    let x2 = slot_at(&a, addr);
    lab.watch(x2);
    lab.record(
        "writer",
        format!(
            "(b) A maps X2 at [{R2:#x}, {:#x}) in slot {} (the timeline now watches it)",
            R2 + LEN,
            x2.0
        ),
    );
    lab.spawn_reader(&a, addr, &[InjectPoint::BetweenSeqCheckAndInc]);
    lab.expect_parked("reader", InjectPoint::BetweenSeqCheckAndInc);
    do_munmap(&a, R2, LEN).expect("race lab munmap");
    lab.record(
        "writer",
        "(b) munmap(X2): X2 is write-locked, detached (vm_refcnt 0) and freed",
    );
    map_fixed(&a, R3, RW);
    lab.record(
        "writer",
        format!(
            "(b) A maps Z at [{R3:#x}, {:#x}) and gets slot {} (attached, vm_mm = A)",
            R3 + LEN,
            slot_at(&a, R3).0
        ),
    );
    lab.resume("reader", &[]);
    let r = lab.expect_done("reader");
    lab.record("reader", format!("(b) {r}"));
    lab.finish("reuse-between-check-and-lock", buggy, description)
}

/// The buggy writer of `writer-waits-for-readers`: unmap the VMA at `start`
/// without waiting for its readers. It write-locks it in name only (sets
/// `vm_lock_seq`, which a reader already inside never re-reads), and
/// detaches it with a plain store of 0 instead of `vma_mark_detached`'s
/// wait, so the slot is freed while a reader still holds it.
fn munmap_without_waiting(mm: &MmStruct, start: u64) {
    let mut w = mm.mmap_write_lock();
    let guard = rcu_read_lock();
    let e = mm.mm_mt.mas_walk(start, &guard).expect("race lab: mapped");
    let vma = mm.ctx.pool.get(e.idx);
    vma.vm_lock_seq.store(w.seq(), Ordering::Relaxed);
    mm.mm_mt.erase(e.start, &guard);
    vma.vm_refcnt.store(0, Ordering::Release);
    mm.ctx.pool.vm_area_free_with(e.idx, &guard);
    w.state.map_count -= 1;
}

fn writer_waits_for_readers(buggy: bool) -> RaceReport {
    let description = if buggy {
        "The reader read-locks X in mm A (vm_refcnt 1 -> 2) and stops while holding it. \
         Buggy: a writer that does not wait for readers unmaps X: it marks X write-locked, \
         removes it from the tree, sets vm_refcnt to 0 regardless of the reader (a plain \
         store instead of vma_mark_detached's wait) and frees it; mm C maps the same range \
         and gets the slot while the reader still uses it. The reader's fault sees its VMA \
         change under the read lock, and its vma_end_read then drops C's attach reference, \
         leaving C's VMA in C's tree with vm_refcnt 0."
    } else {
        "The reader read-locks X in mm A (vm_refcnt 1 -> 2) and stops while holding it. The \
         writer munmaps X: vma_start_write adds VMA_LOCK_OFFSET (0x40000002) and waits. The \
         reader finishes and drops its reference; only then does the writer take the lock, \
         detach X (vm_refcnt 0) and free it. Nothing raced, no check had to fire."
    };
    let mut lab = Lab::new(Bugs::default());
    let a = lab.mm("A");
    let c = lab.mm("C");
    let addr = R1 + IN;
    map_fixed(&a, R1, RW);
    let x = slot_at(&a, addr);
    lab.watch(x);
    lab.record(
        "writer",
        format!(
            "A maps X at [{R1:#x}, {:#x}) in slot {}: attached, vm_refcnt 1",
            R1 + LEN,
            x.0
        ),
    );
    lab.spawn_reader(&a, addr, &[InjectPoint::AfterReadLock]);
    lab.expect_parked("reader", InjectPoint::AfterReadLock);
    if buggy {
        munmap_without_waiting(&a, R1);
        lab.record(
            "writer",
            "munmap(X) without waiting: vm_lock_seq set, X removed from the tree, \
             vm_refcnt forced to 0 under the reader, slot freed",
        );
        map_fixed(&c, R1, RW);
        lab.record(
            "writer",
            format!(
                "C maps the same range and gets slot {} while the reader still uses it",
                slot_at(&c, addr).0
            ),
        );
        lab.resume("reader", &[]);
        let r = lab.expect_done("reader");
        lab.record(
            "reader",
            format!("{r}; its vma_end_read dropped C's attach reference: C's VMA is in C's tree with vm_refcnt 0"),
        );
    } else {
        let pa = a.clone();
        lab.spawn("writer", &[], move || match do_munmap(&pa, R1, LEN) {
            Ok(()) => "munmap(X) done: X write-locked, detached (vm_refcnt 0) and freed".into(),
            Err(e) => format!("munmap failed: {e}"),
        });
        lab.wait_for_writer(x);
        lab.record(
            "writer",
            "munmap(X): vma_start_write added VMA_LOCK_OFFSET and waits for the reader",
        );
        lab.resume("reader", &[]);
        let r = lab.expect_done("reader");
        let w = lab.expect_done("writer");
        lab.record("reader", format!("{r}; vma_end_read let the writer in"));
        lab.record("writer", w);
    }
    lab.finish("writer-waits-for-readers", buggy, description)
}

fn detached_retry(buggy: bool) -> RaceReport {
    let description = if buggy {
        "No buggy switch applies to this scenario: the retry on a detached VMA is the \
         protection that the other scenarios' buggy variants defeat. The buggy variant runs \
         the same schedule as the fixed one and ends the same way (retried): the reader's \
         RCU walk finds X and stops; the writer maps X' over X with MAP_FIXED (X detached \
         and freed); the reader sees vm_refcnt 0, walks again and read-locks X'."
    } else {
        "The reader's RCU walk finds X in mm A and stops before any check. The writer maps \
         X' (read-only) over X with MAP_FIXED: X' gets its own slot, X is detached \
         (vm_refcnt 0) and freed. The reader's increment fails on the detached X \
         (VMA_LOCK_MISS); it walks again, finds X' and read-locks it."
    };
    let mut lab = Lab::new(Bugs::default());
    let a = lab.mm("A");
    let addr = R1 + IN;
    map_fixed(&a, R1, RW);
    let x = slot_at(&a, addr);
    lab.watch(x);
    lab.record(
        "writer",
        format!("A maps X at [{R1:#x}, {:#x}) in slot {}", R1 + LEN, x.0),
    );
    lab.spawn_reader(&a, addr, &[InjectPoint::AfterRcuWalk]);
    lab.expect_parked("reader", InjectPoint::AfterRcuWalk);
    map_fixed(&a, R1, prot::PROT_READ);
    lab.record(
        "writer",
        format!(
            "mmap(MAP_FIXED) maps X' (read-only) over X in slot {}: X is detached \
             (vm_refcnt 0) and freed",
            slot_at(&a, addr).0
        ),
    );
    lab.resume("reader", &[]);
    let r = lab.expect_done("reader");
    lab.record("reader", r);
    lab.finish("detached-retry", buggy, description)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPS: usize = 100;

    fn check(name: &str, buggy: bool, want: Verdict, caught_by: &str) {
        for i in 0..REPS {
            let r = run(name, buggy).unwrap();
            assert_eq!(
                (r.verdict, r.caught_by.as_str()),
                (want, caught_by),
                "{name} buggy={buggy} repetition {i}: {}\n{:#?}",
                r.summary,
                r.timeline
            );
            assert_eq!((r.name.as_str(), r.buggy), (name, buggy));
            assert!(!r.timeline.is_empty());
            assert!(
                r.timeline
                    .iter()
                    .enumerate()
                    .all(|(i, s)| s.step as usize == i + 1)
            );
        }
    }

    /// The whole timeline (not only the verdict) is the same every run.
    fn deterministic(name: &str, buggy: bool) {
        let key = |r: &RaceReport| {
            r.timeline
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {} {:#x} {} {}",
                        s.thread, s.action, s.vm_refcnt, s.vm_lock_seq, s.mm_lock_seq, s.generation
                    )
                })
                .collect::<Vec<_>>()
        };
        let first = key(&run(name, buggy).unwrap());
        for _ in 0..20 {
            assert_eq!(
                key(&run(name, buggy).unwrap()),
                first,
                "{name} buggy={buggy}"
            );
        }
    }

    #[test]
    fn dup_copies_refcnt_fixed_retries() {
        check(
            "dup-copies-refcnt",
            false,
            Verdict::Retried,
            "vm_refcnt == 0 (detached)",
        );
    }

    #[test]
    fn dup_copies_refcnt_buggy_uses_after_reuse() {
        check("dup-copies-refcnt", true, Verdict::UseAfterReuse, "");
    }

    #[test]
    fn exit_without_detach_fixed_is_caught() {
        check(
            "exit-without-detach",
            false,
            Verdict::Caught,
            "vm_refcnt == 0 (detached)",
        );
    }

    #[test]
    fn exit_without_detach_buggy_uses_after_reuse() {
        check("exit-without-detach", true, Verdict::UseAfterReuse, "");
    }

    #[test]
    fn reuse_between_check_and_lock_fixed_is_caught_by_both_rechecks() {
        check(
            "reuse-between-check-and-lock",
            false,
            Verdict::Caught,
            "vm_mm recheck, range recheck",
        );
    }

    #[test]
    fn reuse_between_check_and_lock_buggy_uses_after_reuse() {
        check(
            "reuse-between-check-and-lock",
            true,
            Verdict::UseAfterReuse,
            "",
        );
    }

    #[test]
    fn writer_waits_for_readers_fixed_is_safe() {
        check("writer-waits-for-readers", false, Verdict::Safe, "");
        let r = run("writer-waits-for-readers", false).unwrap();
        let refcnts: Vec<u64> = r.timeline.iter().map(|s| s.vm_refcnt).collect();
        for want in [1, 2, u64::from(VMA_LOCK_OFFSET) + 2, 0] {
            assert!(refcnts.contains(&want), "{want:#x} not in {refcnts:x?}");
        }
    }

    #[test]
    fn writer_waits_for_readers_buggy_uses_after_reuse() {
        check("writer-waits-for-readers", true, Verdict::UseAfterReuse, "");
    }

    #[test]
    fn detached_retry_retries_in_both_variants() {
        check(
            "detached-retry",
            false,
            Verdict::Retried,
            "vm_refcnt == 0 (detached)",
        );
        check(
            "detached-retry",
            true,
            Verdict::Retried,
            "vm_refcnt == 0 (detached)",
        );
    }

    #[test]
    fn maps_split_while_printing_prints_the_held_vma_whole() {
        for buggy in [false, true] {
            check("maps-split-while-printing", buggy, Verdict::Safe, "");
            let r = run("maps-split-while-printing", buggy).unwrap();
            // X printed whole although the split finished during the read.
            assert!(
                r.summary
                    .contains("20000000-20004000 rw-p 00000000 00:00 0 — X as one line"),
                "{}",
                r.summary
            );
            // The writer waited for the reader's read lock.
            assert!(
                r.timeline
                    .iter()
                    .any(|s| s.vm_refcnt == u64::from(VMA_LOCK_OFFSET) + 2)
            );
        }
    }

    #[test]
    fn maps_split_gap_fixed_rechecks_buggy_leaves_a_hole() {
        check(
            "maps-split-gap",
            false,
            Verdict::Caught,
            "lock_next_vma gap recheck",
        );
        let r = run("maps-split-gap", false).unwrap();
        // Both halves printed, the lower one locked under mmap_lock.
        assert!(
            r.summary.contains("20000000-20002000 rw-p"),
            "{}",
            r.summary
        );
        assert!(
            r.summary.contains("20002000-20004000 r--p"),
            "{}",
            r.summary
        );
        assert!(
            r.timeline
                .iter()
                .any(|s| s.action.starts_with("lock_next_vma_under_mmap_lock"))
        );
        check("maps-split-gap", true, Verdict::GuaranteeBroken, "");
        let r = run("maps-split-gap", true).unwrap();
        assert!(!r.summary.contains("20000000-20002000"), "{}", r.summary);
        assert!(
            r.summary.contains("guarantee 2 broken: 0x20000000"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn timelines_are_deterministic() {
        for s in scenarios() {
            deterministic(s.name, false);
            deterministic(s.name, true);
        }
    }

    #[test]
    fn every_listed_scenario_runs_and_names_are_unique() {
        let list = scenarios();
        assert_eq!(list.len(), 7);
        for (i, s) in list.iter().enumerate() {
            assert!(list[..i].iter().all(|o| o.name != s.name));
            assert!(!s.description.is_empty());
            run(s.name, false).unwrap();
        }
    }

    #[test]
    fn unknown_scenario_is_an_error() {
        assert_eq!(
            run("nope", false).unwrap_err(),
            UnknownScenario("nope".into())
        );
        assert_eq!(
            UnknownScenario("nope".into()).to_string(),
            "unknown race scenario \"nope\""
        );
    }
}
