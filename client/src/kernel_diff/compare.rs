//! What "the same" means between a kernel maps line and a simulated VMA.
//!
//! Both sides become a [`Vma`]: start, end, perms (with `s`/`p`), offset,
//! [`Backing`] (anonymous, memfd N, shared anonymous memory, another
//! file), the special name (`[heap]`, `[stack]`, ...), the text line, and
//! `Rss`/`Anonymous` in kB where known. Files cannot be compared by path
//! (the kernel prints `/memfd:kdiff-0 (deleted)`, the simulation its own
//! name for the file id), so memfds are compared by index and
//! `MAP_SHARED|MAP_ANONYMOUS` objects (`/dev/zero (deleted)`, one inode per
//! mmap in the kernel: `shmem_zero_setup`) by a bijection between the two
//! sides' inode numbers that must stay consistent for the whole run; so
//! are `MAP_HUGETLB` files (`/anon_hugepage (deleted)`).
//! The text of a line is compared byte for byte when it names no file
//! (anonymous and `[heap]`-like lines): that checks `show_map_vma`'s
//! padding too.

use std::collections::HashMap;

/// What backs a VMA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// Private anonymous memory (possibly named).
    Anon,
    /// The test's memfd number N.
    File(u8),
    /// Shared anonymous memory (shmem), by inode on its own side.
    Shmem(u64),
    /// An anonymous hugetlb file (`MAP_HUGETLB`), by inode on its own side
    /// (its device is an anonymous one the kernel numbers at boot).
    Hugetlb(u64),
    /// Any other file, by path.
    Other(String),
}

/// One maps line, structured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// `rwxp` column.
    pub perms: String,
    /// Offset column.
    pub offset: u64,
    /// Backing object.
    pub backing: Backing,
    /// `[heap]`, `[stack]`, `[anon:...]`, or empty.
    pub name: String,
    /// `Rss` in kB (None when not measured).
    pub rss_kb: Option<u64>,
    /// `Anonymous` in kB.
    pub anon_kb: Option<u64>,
    /// The line as printed.
    pub text: String,
}

/// The memfd name prefix the executor uses (`memfd_create("kdiff-N")`).
const MEMFD_PREFIX: &str = "/memfd:kdiff-";
/// How shared anonymous memory and an anonymous hugetlb file show in
/// maps (the proto crate owns the names; the engine uses the same).
pub use vmasim_proto::linux::{HUGETLB_ANON_PATH as HUGETLB_PATH, SHMEM_ANON_PATH as SHMEM_PATH};

/// Parse a kernel maps line (with the executor's `Rss`/`Anonymous`).
pub fn kernel_vma(line: &str, rss_kb: Option<u64>, anon_kb: Option<u64>) -> Option<Vma> {
    let mut it = line.split_ascii_whitespace();
    let range = it.next()?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode: u64 = it.next()?.parse().ok()?;
    let path = it.collect::<Vec<_>>().join(" ");
    let (s, e) = range.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(s, 16).ok()?,
        u64::from_str_radix(e, 16).ok()?,
    );
    let (backing, name) = if path == SHMEM_PATH {
        (Backing::Shmem(inode), String::new())
    } else if path == HUGETLB_PATH {
        (Backing::Hugetlb(inode), String::new())
    } else if let Some(n) = path
        .strip_prefix(MEMFD_PREFIX)
        .and_then(|r| r.strip_suffix(" (deleted)"))
        .and_then(|n| n.parse().ok())
    {
        (Backing::File(n), String::new())
    } else if inode != 0 || (!path.is_empty() && !path.starts_with('[')) {
        (Backing::Other(path), String::new())
    } else {
        (Backing::Anon, path)
    };
    Some(Vma {
        start,
        end,
        perms,
        offset,
        backing,
        name,
        rss_kb,
        anon_kb,
        text: line.to_string(),
    })
}

/// Shared-anonymous inode numbers of the two sides, paired on first sight.
#[derive(Debug, Default, Clone)]
pub struct ShmemPairs {
    k2s: HashMap<u64, u64>,
    s2k: HashMap<u64, u64>,
}

impl ShmemPairs {
    fn pair(&mut self, k: u64, s: u64) -> bool {
        match (self.k2s.get(&k), self.s2k.get(&s)) {
            (None, None) => {
                self.k2s.insert(k, s);
                self.s2k.insert(s, k);
                true
            }
            (Some(&s2), Some(&k2)) => s2 == s && k2 == k,
            _ => false,
        }
    }
}

/// Compare one VMA of each side; `None` if they agree, else what differs.
pub fn diff_vma(k: &Vma, s: &Vma, pairs: &mut ShmemPairs, rss: bool) -> Option<String> {
    let mut d = Vec::new();
    if (k.start, k.end) != (s.start, s.end) {
        d.push(format!(
            "range {:x}-{:x} vs {:x}-{:x}",
            k.start, k.end, s.start, s.end
        ));
    }
    if k.perms != s.perms {
        d.push(format!("perms {} vs {}", k.perms, s.perms));
    }
    if k.offset != s.offset {
        d.push(format!("offset {:#x} vs {:#x}", k.offset, s.offset));
    }
    let same_backing = match (&k.backing, &s.backing) {
        (Backing::Shmem(a), Backing::Shmem(b)) | (Backing::Hugetlb(a), Backing::Hugetlb(b)) => {
            pairs.pair(*a, *b)
        }
        (a, b) => a == b,
    };
    if !same_backing {
        d.push(format!("backing {:?} vs {:?}", k.backing, s.backing));
    }
    if k.name != s.name {
        d.push(format!("name {:?} vs {:?}", k.name, s.name));
    }
    if d.is_empty() && k.backing == Backing::Anon && k.text != s.text {
        d.push(format!("text {:?} vs {:?}", k.text, s.text));
    }
    // Exact: where the machine unmaps file pages on its own, the runner
    // has dropped them from the simulation first (see `reclaim`).
    if rss
        && let (Some(a), Some(b)) = (k.rss_kb, s.rss_kb)
        && a != b
    {
        d.push(format!("Rss {a} kB vs {b} kB"));
    }
    if rss
        && let (Some(a), Some(b)) = (k.anon_kb, s.anon_kb)
        && a != b
    {
        d.push(format!("Anonymous {a} kB vs {b} kB"));
    }
    (!d.is_empty()).then(|| d.join(", "))
}

/// Compare two whole regions; `None` if they agree.
pub fn diff_maps(k: &[Vma], s: &[Vma], pairs: &mut ShmemPairs, rss: bool) -> Option<String> {
    for (i, (a, b)) in k.iter().zip(s).enumerate() {
        if let Some(d) = diff_vma(a, b, pairs, rss) {
            return Some(format!("VMA {i} ({:x}-{:x}): {d}", a.start, a.end));
        }
    }
    if k.len() != s.len() {
        let (more, which) = if k.len() > s.len() {
            (&k[s.len()], "kernel")
        } else {
            (&s[k.len()], "simulation")
        };
        return Some(format!(
            "{} VMAs vs {}: the {which} also has {}",
            k.len(),
            s.len(),
            more.text.trim_end()
        ));
    }
    None
}

/// Render a region with Rss/Anonymous for a report.
pub fn show(vmas: &[Vma]) -> String {
    let mut out = String::new();
    for v in vmas {
        let rss = match (v.rss_kb, v.anon_kb) {
            (Some(r), Some(a)) => format!("   # Rss {r} kB, Anonymous {a} kB"),
            _ => String::new(),
        };
        out.push_str(&format!("{}{rss}\n", v.text.trim_end()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_parse() {
        let v = kernel_vma(
            "7f0000000000-7f0000002000 rw-s 00001000 00:01 77                         /memfd:kdiff-2 (deleted)",
            Some(8),
            Some(0),
        )
        .unwrap();
        assert_eq!(v.backing, Backing::File(2));
        assert_eq!(v.offset, 0x1000);
        let h = kernel_vma(
            "555555560000-555555581000 rw-p 00000000 00:00 0                          [heap]",
            None,
            None,
        )
        .unwrap();
        assert_eq!((h.backing, h.name.as_str()), (Backing::Anon, "[heap]"));
        let z = kernel_vma(
            "7f0000000000-7f0000001000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)",
            None,
            None,
        )
        .unwrap();
        assert_eq!(z.backing, Backing::Shmem(1234));
    }

    #[test]
    fn shmem_pairs_must_stay_consistent() {
        let mut p = ShmemPairs::default();
        assert!(p.pair(10, 1));
        assert!(p.pair(10, 1));
        assert!(!p.pair(10, 2), "one kernel object, two simulated ones");
        assert!(!p.pair(11, 1), "two kernel objects, one simulated one");
    }
}
