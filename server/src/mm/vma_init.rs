//! `mm/vma_init.c`: making a VMA from another. The slot comes from the
//! VMA cache (`VmaCache::vm_area_alloc` in slab.rs, the kernel's
//! `kmem_cache_alloc(vm_area_cachep)`), which is `SLAB_TYPESAFE_BY_RCU`: a
//! lockless reader may still hold the slot from its previous life. So the
//! copy leaves the lock (`vm_refcnt`, `vm_lock_seq`) alone, and the new VMA
//! stays detached (0) until `vma_mark_attached` after it is in the tree.

use crate::mm::mm_types::{VM_LOCK_SEQ_UNLOCKED, Vma};
use crate::mm::race::{InjectPoint, RaceHooks};
use crate::mm::sync::Ordering;

/// `vm_area_init_from`: copy `src` into `dest` but leave `dest`'s lock
/// (`vm_refcnt`, `vm_lock_seq`) alone.
pub fn vm_area_init_from(src: &Vma, dest: &Vma) {
    dest.set_fields(&src.fields());
}

/// `vm_area_dup`: `dest` (a slot just taken from the cache) becomes a copy
/// of `src` but for its lock. In a race-lab mm the hooks are consulted at
/// [`InjectPoint::InVmAreaDup`] (copied, `vm_mm` not yet the child's), and
/// the scenario's `dup_copies_refcnt` switch replays the v8 bug: a
/// whole-struct copy with the refcount, then `vma_lock_init(new, true)`
/// resetting it under whoever got in meanwhile
/// ([`InjectPoint::InVmaLockInit`]).
pub(crate) fn vm_area_dup(src: &Vma, dest: &Vma, race: Option<&RaceHooks>) {
    if race.is_some_and(|r| r.bugs().dup_copies_refcnt) {
        // The v8 bug: a whole-struct copy, refcount included.
        vm_area_init_from(src, dest);
        dest.vm_refcnt
            .store(src.vm_refcnt.load(Ordering::Relaxed), Ordering::Release);
    } else {
        vm_area_init_from(src, dest);
    }
    if let Some(r) = race {
        r.hit(InjectPoint::InVmAreaDup, dest);
        if r.bugs().dup_copies_refcnt {
            // ...then vma_lock_init(new, true): refcount_set(vm_refcnt,
            // 0) and vm_lock_seq = UINT_MAX, whoever got in meanwhile.
            dest.vm_refcnt.store(0, Ordering::Release);
            dest.vm_lock_seq
                .store(VM_LOCK_SEQ_UNLOCKED, Ordering::Relaxed);
            r.hit(InjectPoint::InVmaLockInit, dest);
        }
    }
}
