//! loom models of the lock-free core: the VMA cache (sheaves, the barn
//! exchange, the slab free list), the `vm_refcnt` read lock against
//! writers and detach, and a reader racing a free + reuse.
//!
//! Run with `RUSTFLAGS="--cfg vmasim_loom" cargo test -p vmasim-server --lib
//! --release loom` (`.ci/run` does). The project's own cfg name, not plain
//! `loom`: that one would also switch tokio into its loom mode.

use crate::mm::mm_types::{MmLockSeq, ReadChecks, Vma, VmaFields};
use crate::mm::slab::{CachePolicy, VmaCache, VmaIdx};
use loom::sync::Arc;
use loom::sync::atomic::Ordering;
use loom::thread;

fn fields(mm: u64, start: u64, end: u64) -> VmaFields {
    VmaFields {
        vm_mm: mm,
        vm_start: start,
        vm_end: end,
        vm_flags: 1,
        vm_pgoff: start >> 12,
        ..Default::default()
    }
}

fn attach(v: &Vma, f: VmaFields) {
    v.set_fields(&f);
    v.vma_mark_attached();
}

/// `mmap_write_lock` .. `vma_start_write` .. `vma_mark_detached` ..
/// `mmap_write_unlock`, as munmap does it.
fn write_lock_and_detach(mm: &MmLockSeq, v: &Vma) {
    let seq = mm.mm_lock_seq.fetch_add(1, Ordering::AcqRel) + 1;
    v.vma_start_write(seq);
    v.vma_mark_detached();
    mm.mm_lock_seq.fetch_add(1, Ordering::Release);
}

/// Two threads allocating and freeing never get the same slot at once, and
/// the pool ends balanced.
#[test]
fn pool_alloc_free_is_exclusive() {
    loom::model(|| {
        let pool = VmaCache::new(CachePolicy::Typesafe, 2);
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let pool = pool.clone();
                thread::spawn(move || {
                    let (i, v) = pool.vm_area_alloc().unwrap();
                    attach(v, fields(t + 1, 0x1000, 0x2000));
                    // If another thread had this slot too, its attach or
                    // detach would show here.
                    assert_eq!(v.vm_mm(), t + 1);
                    v.vma_mark_detached();
                    pool.vm_area_free(i);
                    i
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let s = pool.stats();
        assert_eq!(s.live, 0);
        assert_eq!(s.free, s.created);
        assert_eq!(pool.audit().total(), s.free);
    });
}

/// The barn exchange (`barn_replace_full_sheaf` / `barn_replace_empty_sheaf`)
/// between two CPUs: one frees more slots than its two sheaves hold, so a
/// full sheaf goes to the barn; the other allocates from an empty CPU, so
/// it takes a full sheaf from the barn if one is there, else the slabs (or
/// the drain at the capacity). No slot is handed out twice, and every slot
/// ends up free exactly once: in a sheaf, the barn or the free list.
/// (Under loom a sheaf holds 2 slots and the barn 1 full + 1 empty.)
#[test]
fn barn_exchange_hands_each_slot_out_once() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    // Ten cache operations of a dozen atomics each: more than the default.
    b.max_branches = 20_000;
    b.check(|| {
        let pool = VmaCache::new(CachePolicy::Typesafe, 6);
        // The freeing thread allocates its 5 slots itself, so they start
        // on its own CPU; then it frees them: main (2), spare (2), then the
        // fifth finds both full and puts a sheaf in the barn.
        let freer = {
            let pool = pool.clone();
            thread::spawn(move || {
                let mine: Vec<_> = (0..5).map(|_| pool.vm_area_alloc().unwrap().0).collect();
                for i in mine {
                    pool.vm_area_free(i);
                }
            })
        };
        let taker = {
            let pool = pool.clone();
            thread::spawn(move || {
                let (i, v) = pool.vm_area_alloc().unwrap();
                attach(v, fields(7, 0x1000, 0x2000));
                // A slot also sitting in the freer's sheaves or the barn
                // would be handed out again and re-attached there.
                assert_eq!(v.vm_mm(), 7);
                assert_eq!(v.vm_refcnt(), 1);
                v.vma_mark_detached();
                pool.vm_area_free(i);
            })
        };
        freer.join().unwrap();
        taker.join().unwrap();
        let s = pool.stats();
        assert_eq!(s.live, 0);
        assert_eq!(s.free, s.created);
        assert_eq!(pool.audit().total(), s.free, "{s:?}");
        // The freer's fourth free found main and spare full.
        assert_eq!(s.barn_put, 1, "{s:?}");
        if s.barn_get == 1 {
            TOOK_FROM_BARN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Some interleavings had the taker get the freer's sheaf from the barn:
    // the exchange itself was explored, not only the slab fallback.
    assert!(TOOK_FROM_BARN.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

/// Executions of the barn model in which the taker got a barn sheaf (a std
/// atomic: counted across executions, outside the model).
static TOOK_FROM_BARN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A reader racing a writer that write-locks and detaches: the reader
/// either gets the read lock before the writer (which then waits for it)
/// or fails; it never holds the lock while the VMA is detached.
#[test]
fn start_read_vs_start_write_and_detach() {
    loom::model(|| {
        let mm = Arc::new(MmLockSeq::new(1));
        let v = Arc::new(Vma::default());
        attach(&v, fields(1, 0x1000, 0x2000));
        let reader = {
            let (mm, v) = (mm.clone(), v.clone());
            thread::spawn(move || {
                if v.vma_start_read(&mm, ReadChecks::ALL, None).is_ok() {
                    // Writer must not have detached under us.
                    assert!(!v.is_detached());
                    assert_eq!(v.vm_end(), 0x2000);
                    v.vma_end_read();
                    true
                } else {
                    false
                }
            })
        };
        write_lock_and_detach(&mm, &v);
        // The "modification" a writer makes once readers are out.
        v.set_fields(&fields(1, 0x1000, 0x9000));
        reader.join().unwrap();
        assert!(v.is_detached());
        assert_eq!(v.vm_refcnt(), 0);
    });
}

/// The review's race: a reader looked a VMA up (it holds the slot index)
/// while that VMA is detached, freed and reused by another mm (`other_mm`
/// true) or by the same mm at another range. The reader either fails or
/// holds the VMA it meant; never a reused one.
fn reader_vs_free_and_reuse(other_mm: bool) {
    loom::model(move || {
        let pool = VmaCache::new(CachePolicy::Typesafe, 1);
        let mm = Arc::new(MmLockSeq::new(1));
        let mm2 = Arc::new(MmLockSeq::new(2));
        let (idx, v) = pool.vm_area_alloc().unwrap();
        attach(v, fields(1, 0x1000, 0x2000));
        let gen0 = v.generation();
        let reader = {
            let (pool, mm) = (pool.clone(), mm.clone());
            thread::spawn(move || {
                let v = pool.get(idx);
                let addr = 0x1800;
                match v.vma_start_read(&mm, ReadChecks::ALL, None) {
                    Ok(()) => {
                        let ok = v.contains(addr);
                        if ok {
                            // The range re-check passed: it must be the VMA
                            // we looked up, still ours.
                            assert_eq!(v.generation(), gen0, "use after reuse");
                            assert_eq!(v.vm_mm(), 1);
                        }
                        v.vma_end_read();
                    }
                    Err(_) => {}
                }
            })
        };
        // munmap + reuse
        write_lock_and_detach(&mm, v);
        pool.vm_area_free(idx);
        let (idx2, v2) = pool.vm_area_alloc().unwrap();
        assert_eq!(idx2, VmaIdx(idx.0), "typesafe reuses the only slot");
        if other_mm {
            let seq = mm2.mm_lock_seq.fetch_add(1, Ordering::AcqRel) + 1;
            v2.set_fields(&fields(2, 0x1000, 0x2000));
            v2.vma_start_write(seq);
            v2.vma_mark_attached();
            mm2.mm_lock_seq.fetch_add(1, Ordering::Release);
        } else {
            let seq = mm.mm_lock_seq.fetch_add(1, Ordering::AcqRel) + 1;
            v2.set_fields(&fields(1, 0x5000, 0x6000));
            v2.vma_start_write(seq);
            v2.vma_mark_attached();
            mm.mm_lock_seq.fetch_add(1, Ordering::Release);
        }
        reader.join().unwrap();
    });
}

#[test]
fn reader_vs_reuse_by_other_mm() {
    reader_vs_free_and_reuse(true);
}

#[test]
fn reader_vs_reuse_by_same_mm_other_range() {
    reader_vs_free_and_reuse(false);
}
