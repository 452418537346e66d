//! The simulator's file table: the file ids a client maps (any non-zero
//! number, same id = same file), files imported from a maps text, the
//! engine's own shmem and hugetlb files (made per mmap, never registered:
//! the id says what the file is), and anonymous-VMA names. Shared by every
//! mm of a simulator through `MmContext::files`; apart from `mm_struct.rs`
//! because it is about files, not address spaces.

use crate::mm::sync::{AtomicU64, Ordering};
use dashmap::DashMap;
use std::sync::Arc;

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
