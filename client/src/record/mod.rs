//! `vmasim record`: a real program's address-space history, made by
//! tracing it with ptrace, in a self-checking file.
//!
//! A recording holds, per address space, its maps right after `execve`,
//! every memory-related syscall with arguments and result in order, and
//! its maps when its last task exits, so `vmasim replay FILE --check` can
//! rebuild it in the simulation and compare (see [`check`]), and `vmasim
//! load --trace` can replay it as a workload.
//!
//! * [`format`]: the versioned JSON-lines format (written and read).
//! * [`syscalls`]: which syscalls are kept, their names and kinds.
//! * [`procfs`]: what is read from `/proc` about a stopped task.
//! * [`tracer`]: the ptrace loop.
//! * [`check`]: `replay --check` of a recording.

pub mod check;
pub mod format;
pub mod procfs;
pub mod syscalls;
pub mod tracer;
