//! The page cache (`mm/filemap.c`): which pages of which file are in memory.
//!
//! The simulation keeps no file data, but whether a page is cached decides
//! what a read fault maps: `do_read_fault` calls `->map_pages`
//! (`filemap_map_pages`) over the fault-around window first, and that maps
//! every page of the window already in the cache. So a page enters the
//! cache when a fault on a file or shmem mapping brings it in
//! (`filemap_fault` / `shmem_fault` through `__do_fault`, for reads, for
//! `do_cow_fault`'s source page and for `do_shared_fault`), and it stays
//! there after `munmap`, `MADV_DONTNEED` and the exit of every process that
//! mapped it, as in the kernel. A shared anonymous mapping is a file of its
//! own (`shmem_zero_setup`), so its pages are cached under its file id and
//! a fork child's read fault finds the parent's pages.
//!
//! Reclaim is not simulated; the cache is bounded instead: past
//! [`MAX_CACHED_PAGES`] pages a page brought in by a fault is mapped but
//! not kept (as if reclaimed at once), so no client can grow the server's
//! memory through it. One `DashSet` of `(file, index)` keeps lookups
//! lock-free against each other except within a shard, which is what the
//! kernel's per-mapping xarray gives too.

use dashmap::DashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most pages the simulated page cache keeps, over all files: 2 Mi pages
/// (8 GiB of simulated file memory, about 100 MiB of server memory).
pub const MAX_CACHED_PAGES: usize = 2 << 20;

/// The page cache of every file of one simulator.
#[derive(Debug, Default)]
pub struct PageCache {
    pages: DashSet<(u64, u64)>,
    len: AtomicUsize,
}

impl PageCache {
    /// Is page `index` of `file` cached (`filemap_get_entry` finding an
    /// uptodate folio)?
    pub fn contains(&self, file: u64, index: u64) -> bool {
        self.pages.contains(&(file, index))
    }

    /// `filemap_add_folio`: page `index` of `file` is now cached (a fault
    /// read it in). Past [`MAX_CACHED_PAGES`] it is not kept.
    pub fn add(&self, file: u64, index: u64) {
        // Relaxed: the bound is approximate under races by at most the
        // number of concurrent faults; only memory use depends on it.
        if self.len.load(Ordering::Relaxed) >= MAX_CACHED_PAGES {
            return;
        }
        if self.pages.insert((file, index)) {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Pages cached, over all files.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Nothing cached?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_per_file_and_index() {
        let c = PageCache::default();
        c.add(7, 3);
        c.add(7, 3);
        assert!(c.contains(7, 3));
        assert!(!c.contains(7, 4));
        assert!(!c.contains(8, 3));
        assert_eq!(c.len(), 1);
    }
}
