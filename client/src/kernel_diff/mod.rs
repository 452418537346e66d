//! `vmasim kernel-diff`: the running kernel as the simulation's oracle.
//!
//! The same operations go to a real process (the [`executor`], a child of
//! this one) and to a simulated process (through the proto, [`sim`]); after
//! each one the [`compare`] module checks the result (address, or errno
//! against the documented gRPC status) and every `/proc/PID/maps` line of
//! the compared region (start, end, perms, offset, anonymous vs which file,
//! shared/private, name, Rss and Anonymous per VMA). On the first
//! divergence, [`shrink`] cuts the operation sequence down to a minimal one
//! by replaying candidates from scratch, and the user gets it as a
//! `--script` file ([`ops`]) with both maps.
//!
//! The pieces, one concept each:
//!
//! * [`ops`]: the operations, the script format, the random generator.
//! * [`executor`]: the real process (hidden subcommand
//!   `__kernel-diff-executor`).
//! * [`kernel`]: the controller's end of the executor's pipes.
//! * [`sim`]: the same operations as RPCs.
//! * [`compare`]: one structured model of a maps line for both sides and
//!   the rules for "the same".
//! * [`runner`]: applies a sequence to both and stops at a divergence.
//! * [`reclaim`]: what on this machine unmaps file pages on its own
//!   (DAMON pageout), so those pages are dropped from the simulation too.
//! * [`shrink`]: delta debugging over a failing sequence.
//!
//! # The address-space layout both sides share
//!
//! The executor runs without ASLR and fills every gap between
//! [`WINDOW_END`] and `mmap_base` (see [`executor`]), so top-down placement
//! starts at `WINDOW_END`. The simulated process is spawned from the
//! executor's own `/proc/self/maps` (less `[vsyscall]`, which is no VMA)
//! with the executor's `start_brk`: the same VMAs, the same `map_count`,
//! the same heap start. The compared region is `[start_brk, WINDOW_END)`:
//! the heap, the empty space above it, and the 1 GiB window.

pub mod compare;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod executor;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod kernel;
pub mod ops;
pub mod reclaim;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod runner;
pub mod shrink;
pub mod sim;

/// Start of the test window: far from everything a process maps by
/// default (programs near 0x5555_5555_4000, libraries right below
/// `mmap_base` = 0x7fff_f7ff_f000 without ASLR).
pub const WINDOW_START: u64 = 0x7f00_0000_0000;
/// Size of the test window: 1 GiB holds `vm.max_map_count` one-page VMAs
/// with a hole after each.
pub const WINDOW_SIZE: u64 = 1 << 30;
/// End of the test window; non-fixed placement starts right below it.
pub const WINDOW_END: u64 = WINDOW_START + WINDOW_SIZE;
/// memfds the executor creates for file mappings (`file=0..3`).
pub const NR_FILES: usize = 4;
/// Size of each memfd. File mappings start inside it; one that `mremap`
/// grows past the end meets SIGBUS there on both sides (the simulation is
/// told the size: `MmapRequest.file_size`).
pub const FILE_SIZE: u64 = 64 << 20;
/// Processes (the first one and its fork descendants) alive at once.
pub const MAX_PROCS: usize = 4;
/// Bytes per page.
pub const PAGE: u64 = 4096;
