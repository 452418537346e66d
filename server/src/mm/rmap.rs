//! How many page tables map each anonymous page that `fork` shared
//! (`folio_mapcount` / `folio_ref_count`, mm/rmap.c).
//!
//! It exists for one decision: a write to a write-protected private page
//! after fork (`do_wp_page`) copies the page only while someone else still
//! maps it. Once the other side has broken COW itself, unmapped the page
//! or exited, the page is exclusive again and `wp_can_reuse_anon_folio`
//! lets the writer reuse it in place -- no copy, no new page. Without the
//! count every such write would "copy", and the `cow_break` figures would
//! be too high.
//!
//! Only shared pages are tracked: `dup_mmap`'s PTE copy enters a frame
//! with two mappers (or adds one), and every path that drops a mapping of
//! a tracked frame (`zap_page_range` for munmap, exit, `MADV_DONTNEED`; a
//! COW copy replacing it) takes one away; at one mapper the entry goes,
//! which is what "exclusive" means here. So the map holds at most one
//! entry per present PTE: bounded by the page-table budget.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// Mappers of each fork-shared anonymous frame.
#[derive(Debug, Default)]
pub struct AnonRefs {
    mappers: DashMap<u64, u32>,
}

impl AnonRefs {
    /// `dup_mmap` copied a PTE mapping `frame`: one more mapper.
    pub fn dup(&self, frame: u64) {
        // The shard lock makes the read-modify-write atomic against a
        // concurrent put on the same frame (another mm's COW break).
        *self.mappers.entry(frame).or_insert(1) += 1;
    }

    /// A mapping of `frame` is gone (zapped, or replaced by a private
    /// copy). A frame not tracked was exclusive already.
    pub fn put(&self, frame: u64) {
        if let Entry::Occupied(mut e) = self.mappers.entry(frame) {
            *e.get_mut() -= 1;
            if *e.get() <= 1 {
                e.remove();
            }
        }
    }

    /// `wp_can_reuse_anon_folio`: does nobody else map `frame`?
    pub fn exclusive(&self, frame: u64) -> bool {
        !self.mappers.contains_key(&frame)
    }

    /// Frames shared by more than one page table.
    pub fn len(&self) -> usize {
        self.mappers.len()
    }

    /// No frame is shared?
    pub fn is_empty(&self) -> bool {
        self.mappers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_exclusive_again_at_one_mapper() {
        let r = AnonRefs::default();
        assert!(r.exclusive(9));
        r.dup(9);
        r.dup(9);
        assert!(!r.exclusive(9), "three mappers");
        r.put(9);
        assert!(!r.exclusive(9), "two mappers");
        r.put(9);
        assert!(r.exclusive(9));
        assert!(r.is_empty());
        r.put(9);
        assert!(r.exclusive(9), "an untracked put is a no-op");
    }
}
