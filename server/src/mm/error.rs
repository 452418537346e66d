//! Errors of engine operations: the kernel's errno plus enough context for
//! the service layer to say precisely what was wrong.

/// The errno a real kernel would return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// Bad argument.
    EINVAL,
    /// Out of memory, address space or map count; or range not mapped.
    ENOMEM,
    /// `MAP_FIXED_NOREPLACE` hit an existing mapping.
    EEXIST,
    /// No such process.
    ESRCH,
    /// Too many processes.
    EAGAIN,
    /// Offset plus length overflows.
    EOVERFLOW,
    /// No VMA where one must be (`mremap` of an unmapped address).
    EFAULT,
    /// Not permitted (`mmap_min_addr` without `CAP_SYS_RAWIO`).
    EPERM,
    /// `MAP_SHARED_VALIDATE` with a flag the file does not support.
    EOPNOTSUPP,
}

/// Why an operation failed. A failed operation leaves what the kernel
/// would leave: nothing changed, except where the kernel applies part of
/// a call before failing (see [`MmError::NotMapped`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmError {
    /// An argument is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The argument's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No live process has this pid.
    #[error("no such process: pid {0}")]
    NoSuchProcess(u32),
    /// `MAP_FIXED_NOREPLACE` on a mapped range.
    #[error("range {start:#x}-{end:#x} overlaps an existing mapping")]
    Exists {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// `mprotect` on a range with holes (the kernel's ENOMEM). Like the
    /// kernel, the VMAs before the first hole were changed:
    /// `[start, changed_up_to)` has the new protection.
    #[error("range {start:#x}-{end:#x} is not fully mapped{}", applied(*start, *changed_up_to))]
    NotMapped {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// End of the part that was changed before the hole (`start` if
        /// nothing was).
        changed_up_to: u64,
    },
    /// A call that failed after doing part of its work, as the kernel's
    /// does: mremap with `MREMAP_FIXED` unmaps the destination (and a
    /// shrink the source's tail) before checks that can still fail, and
    /// a move of several VMAs stops at the first that cannot move. The
    /// errno and status are `error`'s; `applied` says what was done, in
    /// order.
    #[error("{error}; as the kernel does, {} first", applied.join(" and "))]
    Partial {
        /// What the call fails with.
        error: Box<MmError>,
        /// What it did before failing ("the destination 0x..-0x.. was
        /// unmapped").
        applied: Vec<String>,
    },
    /// The operation would leave more than `max_map_count` VMAs.
    #[error("max_map_count ({limit}) would be exceeded")]
    MapCountExceeded {
        /// The limit.
        limit: usize,
    },
    /// The VMA cache has no free slot.
    #[error("VMA cache exhausted: all {capacity} slots in use")]
    PoolExhausted {
        /// The pool's capacity in slots.
        capacity: u32,
    },
    /// No gap in the address space is large enough.
    #[error("no free range of {len:#x} bytes in the address space")]
    NoSpace {
        /// The requested length.
        len: u64,
    },
    /// A page table was needed and the simulator's page-table memory
    /// budget is spent (`pte_alloc` failing: `ENOMEM`).
    #[error("page-table memory limit ({limit} bytes) reached")]
    PgtablesExhausted {
        /// The limit, bytes.
        limit: u64,
    },
    /// `madvise` over a range with holes (the kernel's ENOMEM): as in
    /// `madvise_walk_vmas`, every mapped part got the advice first.
    #[error(
        "range {start:#x}-{end:#x} has holes; as the kernel does, every mapped part got the advice"
    )]
    AdviceHoles {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// `mremap`: `[addr, addr + old_len)` is not inside one VMA (EFAULT).
    #[error("addr: {addr:#x}+{len:#x} is not inside one mapping")]
    BadAddress {
        /// The address.
        addr: u64,
        /// The old length.
        len: u64,
    },
    /// The process table is full.
    #[error("process limit ({limit}) reached")]
    TooManyProcesses {
        /// The limit.
        limit: usize,
    },
    /// Not permitted (kernel EPERM).
    #[error("{0}")]
    Permission(String),
    /// A flag the mapping does not support (kernel EOPNOTSUPP).
    #[error("{0}")]
    NotSupported(String),
    /// `MAP_HUGETLB` without reserved huge pages (`vm.nr_hugepages` 0).
    #[error("MAP_HUGETLB: no huge pages are reserved (vm.nr_hugepages is 0)")]
    NoHugePages,
    /// File offset plus length overflows.
    #[error("offset: file offset {offset:#x} plus length {len:#x} overflows")]
    Overflow {
        /// The offset.
        offset: u64,
        /// The length.
        len: u64,
    },
}

fn applied(start: u64, changed_up_to: u64) -> String {
    if changed_up_to > start {
        format!("; as the kernel does, {start:#x}-{changed_up_to:#x} (before the hole) was changed")
    } else {
        "; nothing was changed".to_string()
    }
}

impl MmError {
    /// The errno the kernel would return.
    pub fn errno(&self) -> Errno {
        match self {
            MmError::InvalidArgument { .. } => Errno::EINVAL,
            MmError::NoSuchProcess(_) => Errno::ESRCH,
            MmError::Exists { .. } => Errno::EEXIST,
            MmError::NotMapped { .. }
            | MmError::AdviceHoles { .. }
            | MmError::MapCountExceeded { .. }
            | MmError::PoolExhausted { .. }
            | MmError::NoSpace { .. }
            | MmError::PgtablesExhausted { .. }
            | MmError::NoHugePages => Errno::ENOMEM,
            MmError::Permission(_) => Errno::EPERM,
            MmError::NotSupported(_) => Errno::EOPNOTSUPP,
            MmError::TooManyProcesses { .. } => Errno::EAGAIN,
            MmError::BadAddress { .. } => Errno::EFAULT,
            MmError::Overflow { .. } => Errno::EOVERFLOW,
            MmError::Partial { error, .. } => error.errno(),
        }
    }

    /// This error, reported as coming after `done` (nothing if `done` is
    /// empty; earlier steps go first if it already is [`MmError::Partial`]).
    pub(crate) fn after(self, done: &[String]) -> MmError {
        if done.is_empty() {
            return self;
        }
        match self {
            MmError::Partial { error, applied } => MmError::Partial {
                error,
                applied: done.iter().cloned().chain(applied).collect(),
            },
            error => MmError::Partial {
                error: Box::new(error),
                applied: done.to_vec(),
            },
        }
    }

    pub(crate) fn inval(field: &'static str, reason: impl Into<String>) -> Self {
        MmError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<crate::mm::slab::PoolExhausted> for MmError {
    fn from(e: crate::mm::slab::PoolExhausted) -> Self {
        MmError::PoolExhausted {
            capacity: e.capacity,
        }
    }
}
