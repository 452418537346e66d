//! The shadow model behind `load --verify`: what a process's layout must be.
//!
//! Each load worker owns its processes, so it knows every operation applied
//! to them, in order. It replays each successful reply into a
//! [`ShadowMm`] (a plain sorted map of VMAs, no merging) and checks every
//! reply against it before applying it:
//!
//! * a fault must be `SEGV_MAPERR` exactly where the model has no VMA,
//!   `SEGV_ACCERR` exactly where the VMA's protection forbids the access,
//!   and otherwise a page-in outcome that fits the backing (never
//!   `FILE_PAGE` on anonymous memory, never `ANON_ZERO_FILL` on a file);
//! * `mmap` without `MAP_FIXED*` must return a free range (the hint only if
//!   it was free); `MAP_FIXED_NOREPLACE` must fail with `ALREADY_EXISTS`
//!   exactly when the range is not free;
//! * `mprotect` must fail with `FAILED_PRECONDITION` exactly when the range
//!   is not fully mapped, having changed the part before the first hole (as
//!   `do_mprotect_pkey` does);
//! * `Maps` must match the model on start, end, perms and (file mappings)
//!   file and offset. The server merges adjacent compatible VMAs as
//!   `vma_merge` does and the model does not, so both sides are compared
//!   after coalescing adjacent entries that are indistinguishable (same
//!   perms, both anonymous or the same file at contiguous offsets): that
//!   compares exactly the page-by-page layout, which is what a process can
//!   observe.

use crate::parse::format_prot;
use std::collections::BTreeMap;
use vmasim_proto::v1::{Access, FaultOutcome, VmaEntry};

/// Page size.
pub const PAGE: u64 = 4096;

/// What backs a VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory from `mmap`.
    Anon,
    /// Anonymous memory from `brk` (never picked as a target by the load
    /// generator's munmap/mprotect/MAP_FIXED so the heap stays a heap).
    Heap,
    /// A file, at `offset` bytes for the VMA's first page.
    File {
        /// The client-chosen file identity.
        id: u64,
        /// Offset of the VMA's start in the file.
        offset: u64,
    },
}

/// One VMA of the model (its start is the map key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowVma {
    /// One past the last byte.
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `MAP_SHARED`.
    pub shared: bool,
    /// Anonymous, heap or file.
    pub backing: Backing,
}

/// A coalesced layout entry, what [`ShadowMm::diff_entries`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Norm {
    start: u64,
    end: u64,
    prot: u32,
    shared: bool,
    /// (file id, offset of `start`) for file mappings.
    file: Option<(u64, u64)>,
}

impl Norm {
    fn line(&self) -> String {
        let file = self
            .file
            .map(|(id, off)| format!(" file {id} @ {off:#x}"))
            .unwrap_or_default();
        format!(
            "{:x}-{:x} {}{}{file}",
            self.start,
            self.end,
            format_prot(self.prot),
            if self.shared { 's' } else { 'p' }
        )
    }
}

/// What a fault at some address must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No VMA: `SEGV_MAPERR`.
    MapErr,
    /// A VMA whose protection forbids the access: `SEGV_ACCERR`.
    AccErr,
    /// The page is (made) present; `file` tells which page-in outcomes fit.
    PageIn {
        /// File-backed VMA.
        file: bool,
    },
}

impl Expect {
    /// Checks a reply's outcome; `Err` says what is wrong.
    pub fn check(self, outcome: i32) -> Result<(), String> {
        use FaultOutcome as O;
        let o = O::try_from(outcome).unwrap_or(O::Unspecified);
        let ok = match self {
            Expect::MapErr => o == O::SegvMaperr,
            Expect::AccErr => o == O::SegvAccerr,
            Expect::PageIn { file: false } => {
                matches!(o, O::AnonZeroFill | O::CowBreak | O::AlreadyPresent)
            }
            Expect::PageIn { file: true } => {
                matches!(o, O::FilePage | O::CowBreak | O::AlreadyPresent)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "expected {self:?}, server said {}",
                o.as_str_name()
            ))
        }
    }
}

/// One process's layout as the client knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowMm {
    /// VMAs by start address, non-overlapping.
    vmas: BTreeMap<u64, ShadowVma>,
    /// Lowest break.
    pub start_brk: u64,
    /// Current break (byte address).
    pub brk: u64,
}

/// Rounds up to a page.
pub fn page_up(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

impl ShadowMm {
    /// An empty address space with the given heap start.
    pub fn new(start_brk: u64, brk: u64) -> Self {
        ShadowMm {
            vmas: BTreeMap::new(),
            start_brk,
            brk,
        }
    }

    /// Rebuilds a model from a `Maps` reply (used to resynchronise after an
    /// unexpected error when not verifying).
    pub fn from_entries(entries: &[VmaEntry], start_brk: u64, brk: u64) -> Self {
        let mut m = ShadowMm::new(start_brk, brk);
        for e in entries {
            let backing = if e.file_id != 0 {
                Backing::File {
                    id: e.file_id,
                    offset: e.offset,
                }
            } else if e.path == "[heap]" {
                Backing::Heap
            } else {
                Backing::Anon
            };
            m.vmas.insert(
                e.start,
                ShadowVma {
                    end: e.end,
                    prot: e.prot,
                    shared: e.shared,
                    backing,
                },
            );
        }
        m
    }

    /// Number of VMAs (unmerged, so an upper bound of the server's count).
    pub fn len(&self) -> usize {
        self.vmas.len()
    }

    /// Number of VMAs after coalescing indistinguishable neighbours: about
    /// what the server (which merges) has.
    pub fn distinct_len(&self) -> usize {
        self.norm_self().len()
    }

    /// No VMA at all.
    pub fn is_empty(&self) -> bool {
        self.vmas.is_empty()
    }

    /// Every VMA as (start, vma).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &ShadowVma)> {
        self.vmas.iter().map(|(s, v)| (*s, v))
    }

    /// The `i`-th VMA (by address).
    pub fn nth(&self, i: usize) -> Option<(u64, ShadowVma)> {
        self.vmas.iter().nth(i).map(|(s, v)| (*s, *v))
    }

    /// The VMA containing `addr`.
    pub fn find(&self, addr: u64) -> Option<(u64, &ShadowVma)> {
        self.vmas
            .range(..=addr)
            .next_back()
            .filter(|(_, v)| addr < v.end)
            .map(|(s, v)| (*s, v))
    }

    /// True if no VMA intersects [start, end).
    pub fn is_free(&self, start: u64, end: u64) -> bool {
        if let Some((_, v)) = self.vmas.range(..start).next_back()
            && v.end > start
        {
            return false;
        }
        self.vmas.range(start..end).next().is_none()
    }

    /// True if every page of [start, end) is in some VMA.
    pub fn fully_mapped(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match self.find(at) {
                Some((_, v)) => at = v.end,
                None => return false,
            }
        }
        true
    }

    /// The end of the mapped run that starts at `start` (`start` itself if
    /// `start` is unmapped), capped at `end`: how far a failing mprotect
    /// gets before the hole that stops it.
    pub fn mapped_up_to(&self, start: u64, end: u64) -> u64 {
        let mut at = start;
        while at < end {
            match self.find(at) {
                Some((_, v)) => at = v.end,
                None => return at,
            }
        }
        end
    }

    /// Splits the VMA strictly containing `addr` into two at `addr`.
    fn split_at(&mut self, addr: u64) {
        let Some((start, v)) = self.find(addr).map(|(s, v)| (s, *v)) else {
            return;
        };
        if start == addr {
            return;
        }
        let mut right = v;
        if let Backing::File { id, offset } = v.backing {
            right.backing = Backing::File {
                id,
                offset: offset + (addr - start),
            };
        }
        self.vmas.get_mut(&start).expect("found").end = addr;
        self.vmas.insert(addr, right);
    }

    /// munmap(2) of [start, end).
    pub fn unmap(&mut self, start: u64, end: u64) {
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.vmas.range(start..end).map(|(s, _)| *s).collect();
        for k in keys {
            self.vmas.remove(&k);
        }
    }

    /// A new mapping over [start, end), replacing what was there.
    pub fn map(&mut self, start: u64, end: u64, prot: u32, shared: bool, backing: Backing) {
        self.unmap(start, end);
        self.vmas.insert(
            start,
            ShadowVma {
                end,
                prot,
                shared,
                backing,
            },
        );
    }

    /// mprotect(2) of [start, end); the caller checked it is fully mapped.
    pub fn protect(&mut self, start: u64, end: u64, prot: u32) {
        self.split_at(start);
        self.split_at(end);
        for (_, v) in self.vmas.range_mut(start..end) {
            v.prot = prot;
        }
    }

    /// Applies a brk reply: the heap is [start_brk, page_up(brk)).
    pub fn set_brk(&mut self, new_brk: u64) {
        let old_end = page_up(self.brk);
        let new_end = page_up(new_brk);
        if new_end > old_end {
            self.map(
                old_end,
                new_end,
                vmasim_proto::v1::Prot::Read as u32 | vmasim_proto::v1::Prot::Write as u32,
                false,
                Backing::Heap,
            );
        } else if new_end < old_end {
            self.unmap(new_end, old_end);
        }
        self.brk = new_brk;
    }

    /// What a fault at `addr` with `access` must do.
    pub fn expect_fault(&self, addr: u64, access: Access) -> Expect {
        let Some((_, v)) = self.find(addr) else {
            return Expect::MapErr;
        };
        let allowed = match access {
            // x86-64: any of r/w/x allows a read.
            Access::Read => v.prot != 0,
            Access::Write => v.prot & vmasim_proto::v1::Prot::Write as u32 != 0,
            Access::Exec => v.prot & vmasim_proto::v1::Prot::Exec as u32 != 0,
        };
        if allowed {
            Expect::PageIn {
                file: matches!(v.backing, Backing::File { .. }),
            }
        } else {
            Expect::AccErr
        }
    }

    fn normalize<I: Iterator<Item = Norm>>(it: I) -> Vec<Norm> {
        let mut out: Vec<Norm> = Vec::new();
        for n in it {
            if let Some(p) = out.last_mut() {
                let same_backing = match (p.file, n.file) {
                    (None, None) => true,
                    (Some((a, ao)), Some((b, bo))) => a == b && ao + (p.end - p.start) == bo,
                    _ => false,
                };
                if p.end == n.start && p.prot == n.prot && p.shared == n.shared && same_backing {
                    p.end = n.end;
                    continue;
                }
            }
            out.push(n);
        }
        out
    }

    fn norm_self(&self) -> Vec<Norm> {
        Self::normalize(self.vmas.iter().map(|(s, v)| Norm {
            start: *s,
            end: v.end,
            prot: v.prot,
            shared: v.shared,
            file: match v.backing {
                Backing::File { id, offset } => Some((id, offset)),
                _ => None,
            },
        }))
    }

    /// Compares a `Maps` reply with the model; `Some(report)` on a
    /// difference, listing both layouts around the first mismatch.
    pub fn diff_entries(&self, entries: &[VmaEntry]) -> Option<String> {
        let theirs = Self::normalize(entries.iter().map(|e| Norm {
            start: e.start,
            end: e.end,
            prot: e.prot,
            shared: e.shared,
            file: (e.file_id != 0).then_some((e.file_id, e.offset)),
        }));
        let mine = self.norm_self();
        if theirs == mine {
            return None;
        }
        let first = mine
            .iter()
            .zip(&theirs)
            .position(|(a, b)| a != b)
            .unwrap_or(mine.len().min(theirs.len()));
        let show = |v: &[Norm]| -> String {
            let lo = first.saturating_sub(2);
            let hi = (first + 3).min(v.len());
            v[lo..hi]
                .iter()
                .map(|n| format!("    {}\n", n.line()))
                .collect()
        };
        Some(format!(
            "maps differ at entry {first} (after coalescing indistinguishable neighbours)\n  model:\n{}  server:\n{}",
            show(&mine),
            show(&theirs)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmasim_proto::v1::Prot;

    const RW: u32 = Prot::Read as u32 | Prot::Write as u32;
    const R: u32 = Prot::Read as u32;

    fn entry(start: u64, end: u64, prot: u32, file_id: u64, offset: u64) -> VmaEntry {
        VmaEntry {
            start,
            end,
            prot,
            file_id,
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn split_protect_unmap() {
        let mut m = ShadowMm::new(0x1000_0000, 0x1000_0000);
        m.map(0x10000, 0x20000, RW, false, Backing::Anon);
        m.protect(0x14000, 0x15000, R);
        assert_eq!(m.len(), 3);
        assert_eq!(m.expect_fault(0x14000, Access::Write), Expect::AccErr);
        assert_eq!(
            m.expect_fault(0x14fff, Access::Read),
            Expect::PageIn { file: false }
        );
        assert_eq!(m.expect_fault(0x20000, Access::Read), Expect::MapErr);
        assert_eq!(m.expect_fault(0x15000, Access::Exec), Expect::AccErr);
        m.unmap(0x12000, 0x16000);
        assert!(m.is_free(0x12000, 0x16000));
        assert!(!m.fully_mapped(0x10000, 0x20000));
        assert!(m.fully_mapped(0x16000, 0x20000));
        // The server merged nothing here; after munmap its layout is two VMAs.
        let server = [
            entry(0x10000, 0x12000, RW, 0, 0),
            entry(0x16000, 0x20000, RW, 0, 0),
        ];
        assert_eq!(m.diff_entries(&server), None);
    }

    #[test]
    fn merged_server_layout_matches_split_model() {
        let mut m = ShadowMm::new(0, 0);
        m.map(
            0x10000,
            0x20000,
            RW,
            false,
            Backing::File { id: 7, offset: 0 },
        );
        m.protect(0x14000, 0x15000, R);
        m.protect(0x14000, 0x15000, RW); // merged back on the server
        let server = [entry(0x10000, 0x20000, RW, 7, 0)];
        assert_eq!(m.diff_entries(&server), None);
        // A wrong offset on the server is a difference.
        let bad = [
            entry(0x10000, 0x14000, RW, 7, 0),
            entry(0x14000, 0x20000, RW, 7, 0x1000),
        ];
        assert!(m.diff_entries(&bad).is_some());
    }

    #[test]
    fn brk_grows_and_shrinks_heap() {
        let mut m = ShadowMm::new(0x5000_0000, 0x5000_0000);
        m.set_brk(0x5000_2001);
        assert!(m.fully_mapped(0x5000_0000, 0x5000_3000));
        m.set_brk(0x5000_1000);
        assert!(m.is_free(0x5000_1000, 0x5000_3000));
        assert!(m.fully_mapped(0x5000_0000, 0x5000_1000));
    }

    #[test]
    fn expectations_check_outcomes() {
        assert!(
            Expect::MapErr
                .check(FaultOutcome::SegvMaperr as i32)
                .is_ok()
        );
        assert!(
            Expect::MapErr
                .check(FaultOutcome::AnonZeroFill as i32)
                .is_err()
        );
        assert!(
            Expect::PageIn { file: false }
                .check(FaultOutcome::FilePage as i32)
                .is_err()
        );
        assert!(
            Expect::PageIn { file: true }
                .check(FaultOutcome::FilePage as i32)
                .is_ok()
        );
        assert!(
            Expect::AccErr
                .check(FaultOutcome::Unspecified as i32)
                .is_err()
        );
    }
}
