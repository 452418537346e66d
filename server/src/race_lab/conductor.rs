//! The conductor: role threads, the hooks that park them, the timeline and
//! the verdict. A scenario (`scenario/<name>.rs`) builds a [`Lab`], maps
//! its VMAs, starts roles that stop at named [`InjectPoint`]s, steps them
//! in a fixed order and calls [`Lab::finish`], which judges what the engine
//! did (see the module doc of `race_lab` for how).

use super::scenario;
use super::{RaceReport, RaceStep, Verdict};
use crate::mm::mm_struct::{MmContext, MmStruct};
use crate::mm::mm_types::{VMA_LOCK_OFFSET, Vma};
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

/// Bound on any wait of the conductor. Never reached when the engine
/// behaves; it turns a scenario that went wrong into a panic (an internal
/// error for the caller) instead of a hung request.
pub(super) const STALL: Duration = Duration::from_secs(30);

/// The thread roles a scenario can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Faults (or reads maps) and is stopped inside the lock protocol.
    Reader,
    /// Maps, unmaps, mprotects under the reader.
    Writer,
    /// Forks (`dup_mmap`, `vm_area_dup`).
    Forker,
    /// Exits a process (`exit_mmap`).
    Exiter,
}

impl Role {
    const ALL: [Role; 4] = [Role::Reader, Role::Writer, Role::Forker, Role::Exiter];

    /// The name the timeline shows.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Forker => "forker",
            Role::Exiter => "exiter",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

std::thread_local! {
    /// The role of the current thread in the scenario running it, if any.
    /// Hooks on threads without a role (none in practice) do nothing.
    static ROLE: Cell<Option<Role>> = const { Cell::new(None) };
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a role thread tells the conductor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// Stopped in the hook at this point, waiting to be resumed.
    Parked(InjectPoint),
    /// Finished; the text describes the result.
    Done(String),
}

/// The role thread's side of its channels.
pub(super) struct Driver {
    pub(super) role: Role,
    /// Points where the thread parks next (set by the conductor).
    pub(super) park_at: Mutex<Vec<InjectPoint>>,
    pub(super) events: Sender<Event>,
    pub(super) resume: Mutex<Receiver<Vec<InjectPoint>>>,
}

/// A read lock the reader took, as it was when taken.
#[derive(Debug, Clone)]
pub(super) struct LockSnap {
    pub(super) slot: Option<u32>,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Why this is not the VMA the reader meant, if it is not.
    pub(super) wrong: Option<String>,
}

/// What the hooks (on any thread) and the conductor share.
pub(super) struct Shared {
    pub(super) pool: Arc<VmaCache>,
    pub(super) bugs: Bugs,
    pub(super) timeline: Mutex<Vec<RaceStep>>,
    /// The slot whose state the timeline shows.
    pub(super) watch: Mutex<Option<VmaIdx>>,
    /// The mm the reader faults in (weak: the mm holds the hooks that hold
    /// this), and the fault address.
    pub(super) reader_mm: Mutex<Weak<MmStruct>>,
    pub(super) fault_addr: AtomicU64,
    /// RCU walks of the current reader fault: a second one is a retry.
    pub(super) walks: AtomicU64,
    /// mm id -> label for timeline text.
    pub(super) names: Mutex<Vec<(u64, &'static str)>>,
    pub(super) drivers: Vec<Driver>,
    pub(super) snaps: Mutex<Vec<LockSnap>>,
}

impl Shared {
    pub(super) fn driver(&self, role: Role) -> &Driver {
        self.drivers
            .iter()
            .find(|d| d.role == role)
            .expect("race lab role")
    }

    pub(super) fn record(&self, thread: Role, action: String) {
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
            thread: thread.as_str().to_string(),
            action,
            vm_refcnt,
            vm_lock_seq,
            mm_lock_seq,
            generation,
        });
    }

    pub(super) fn name(&self, mm_id: u64) -> String {
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
    pub(super) fn slot_of(&self, vma: &Vma) -> Option<u32> {
        (0..SLAB_SIZE).find(|&i| std::ptr::eq(self.pool.get(VmaIdx(i)), vma))
    }

    pub(super) fn slot_text(&self, vma: &Vma) -> String {
        self.slot_of(vma)
            .map_or_else(|| "?".into(), |i| i.to_string())
    }

    pub(super) fn describe(&self, p: InjectPoint, vma: &Vma) -> String {
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
            | InjectPoint::MapsShowVma => scenario::maps::describe(self, p, vma),
        }
    }

    /// Is the VMA just read-locked the one the reader meant: its mm's VMA
    /// covering the address, as the tree has it now? Called in the reader's
    /// hook while every other thread is parked or done, so the answer is
    /// the state at lock time.
    pub(super) fn snapshot_lock(&self, vma: &Vma) {
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
    pub(super) fn hit(&self, p: InjectPoint, vma: &Vma) {
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
pub(super) struct DoneGuard {
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
pub(super) type ConductorEnd = (Role, Receiver<Event>, Sender<Vec<InjectPoint>>);

/// The conductor's side: one scenario run.
pub(super) struct Lab {
    pub(super) shared: Arc<Shared>,
    pub(super) hooks: Arc<RaceHooks>,
    pub(super) ctx: Arc<MmContext>,
    /// Per role: events from it, resumes to it.
    pub(super) conductor: Vec<ConductorEnd>,
    pub(super) handles: Vec<JoinHandle<()>>,
    pub(super) next_pid: u32,
}

impl Lab {
    pub(super) fn new(bugs: Bugs) -> Self {
        let pool = VmaCache::new_for_race_lab(CachePolicy::Typesafe, SLAB_SIZE);
        let ctx = Arc::new(MmContext::new(pool.clone(), FaultLockMode::PerVma, 64));
        let mut drivers = Vec::new();
        let mut conductor = Vec::new();
        for role in Role::ALL {
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
    pub(super) fn mm(&mut self, label: &'static str) -> Arc<MmStruct> {
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

    pub(super) fn record(&self, thread: Role, action: impl Into<String>) {
        self.shared.record(thread, action.into());
    }

    pub(super) fn watch(&self, idx: VmaIdx) {
        *lock(&self.shared.watch) = Some(idx);
    }

    pub(super) fn channels(&self, role: Role) -> (&Receiver<Event>, &Sender<Vec<InjectPoint>>) {
        let (_, rx, tx) = self
            .conductor
            .iter()
            .find(|(r, _, _)| *r == role)
            .expect("race lab role");
        (rx, tx)
    }

    /// Run `f` on a new thread with `role`, parking at `park_at`.
    pub(super) fn spawn(
        &mut self,
        role: Role,
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
    pub(super) fn spawn_reader(&mut self, mm: &Arc<MmStruct>, addr: u64, park_at: &[InjectPoint]) {
        *lock(&self.shared.reader_mm) = Arc::downgrade(mm);
        self.shared.fault_addr.store(addr, Ordering::Relaxed);
        self.shared.walks.store(0, Ordering::Relaxed);
        let mm = mm.clone();
        self.spawn(Role::Reader, park_at, move || {
            describe_fault(addr, do_user_addr_fault(&mm, addr, Access::Read))
        });
    }

    pub(super) fn wait(&self, role: Role) -> Event {
        self.channels(role)
            .0
            .recv_timeout(STALL)
            .unwrap_or_else(|e| panic!("race lab: the {role} thread stalled ({e})"))
    }

    pub(super) fn expect_parked(&self, role: Role, p: InjectPoint) {
        let e = self.wait(role);
        assert_eq!(
            e,
            Event::Parked(p),
            "race lab: {role} did not stop at {p:?}"
        );
    }

    /// Wait for `role` to finish; its result text.
    pub(super) fn expect_done(&self, role: Role) -> String {
        match self.wait(role) {
            Event::Done(t) => t,
            e => panic!("race lab: {role} stopped at {e:?} instead of finishing"),
        }
    }

    pub(super) fn resume(&self, role: Role, park_at: &[InjectPoint]) {
        self.channels(role)
            .1
            .send(park_at.to_vec())
            .expect("race lab: resume a parked thread");
    }

    /// Resume `role` with no further stops and wait for it to finish.
    pub(super) fn expect_done_after_resume(&self, role: Role) -> String {
        self.resume(role, &[]);
        self.expect_done(role)
    }

    /// Run `f` on the conductor's thread as `role` (hooks record, never park).
    pub(super) fn as_role<T>(&self, role: Role, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<Role>);
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
    pub(super) fn wait_for_writer(&self, idx: VmaIdx) {
        let t0 = Instant::now();
        while self.shared.pool.get(idx).vm_refcnt() < VMA_LOCK_OFFSET {
            assert!(
                t0.elapsed() < STALL,
                "race lab: the writer never reached vma_start_write"
            );
            std::thread::yield_now();
        }
    }

    /// Join the role threads; a panic on one goes on on the conductor's.
    fn join(&mut self) {
        for h in self.handles.drain(..) {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    }

    /// The report: the timeline so far and the verdict given.
    fn report(
        self,
        buggy: bool,
        description: &str,
        verdict: Verdict,
        caught_by: String,
        summary: String,
    ) -> RaceReport {
        let timeline = std::mem::take(&mut *lock(&self.shared.timeline));
        RaceReport {
            // Filled in by `run` from the registry: a name is written once.
            name: String::new(),
            buggy,
            description: description.to_string(),
            timeline,
            verdict,
            caught_by,
            summary,
        }
    }

    /// Join the threads and build the report with a verdict the scenario
    /// judged itself (the maps scenarios judge the printed lines, not the
    /// reader's locks).
    pub(super) fn finish_judged(
        mut self,
        buggy: bool,
        description: &str,
        verdict: Verdict,
        caught_by: &str,
        summary: String,
    ) -> RaceReport {
        self.join();
        self.report(buggy, description, verdict, caught_by.to_string(), summary)
    }

    /// Join the threads, judge, and build the report.
    pub(super) fn finish(mut self, buggy: bool, description: &str) -> RaceReport {
        self.join();
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
        self.report(buggy, description, verdict, caught_by, summary)
    }
}

pub(super) fn check_name(c: ReuseCheck) -> &'static str {
    match c {
        ReuseCheck::VmRefcnt => "vm_refcnt == 0 (detached)",
        ReuseCheck::VmMm => "vm_mm recheck",
        ReuseCheck::VmLockSeq => "vm_lock_seq recheck",
        ReuseCheck::Range => "range recheck",
    }
}

pub(super) fn describe_fault(addr: u64, r: FaultResult) -> String {
    format!(
        "fault at {addr:#x} finished: {} via {} ({} retr{})",
        r.outcome.as_str(),
        r.path.as_str(),
        r.retries,
        if r.retries == 1 { "y" } else { "ies" }
    )
}
