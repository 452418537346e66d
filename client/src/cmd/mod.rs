//! One module per subcommand that owns its arguments and `run` (the
//! layout DESIGN.md gives; the older subcommands still live in
//! [`crate::cli`] until they move).

pub mod kernel_diff;
pub mod madvise;
pub mod mremap;
pub mod record;
