//! Race-lab scenario: vma_start_write waiting for readers to drain, and a writer that does
//! not.

use super::*;

pub(in crate::race_lab) const SCENARIO: Scenario = Scenario {
    name: "writer-waits-for-readers",
    description: "vma_start_write adds VMA_LOCK_OFFSET and waits until readers \
        drain, with vm_refcnt shown at each step. The buggy variant's writer does \
        not wait and frees the VMA under the reader.",
    run,
};

fn run(buggy: bool) -> RaceReport {
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
    let x = lab.map_watched(&a, R1, "A maps X", ": attached, vm_refcnt 1");
    lab.stop_reader_at(&a, R1 + IN, InjectPoint::AfterReadLock);
    if buggy {
        munmap_without_waiting(&a, R1);
        lab.record(
            Role::Writer,
            "munmap(X) without waiting: vm_lock_seq set, X removed from the tree, \
             vm_refcnt forced to 0 under the reader, slot freed",
        );
        let reused = lab.map_slot(&c, R1, RW);
        lab.record(
            Role::Writer,
            format!(
                "C maps the same range and gets slot {} while the reader still uses it",
                reused.0
            ),
        );
        let r = lab.expect_done_after_resume(Role::Reader);
        lab.record(
            Role::Reader,
            format!("{r}; its vma_end_read dropped C's attach reference: C's VMA is in C's tree with vm_refcnt 0"),
        );
    } else {
        let pa = a.clone();
        lab.spawn(Role::Writer, &[], move || match do_munmap(&pa, R1, LEN) {
            Ok(()) => "munmap(X) done: X write-locked, detached (vm_refcnt 0) and freed".into(),
            Err(e) => format!("munmap failed: {e}"),
        });
        lab.wait_for_writer(x);
        lab.record(
            Role::Writer,
            "munmap(X): vma_start_write added VMA_LOCK_OFFSET and waits for the reader",
        );
        let (r, w) = lab.release(Role::Reader, Role::Writer);
        lab.record(Role::Reader, format!("{r}; vma_end_read let the writer in"));
        lab.record(Role::Writer, w);
    }
    lab.finish(buggy, description)
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
