//! vmasim: simulated Linux address spaces whose VMAs come from a
//! `SLAB_TYPESAFE_BY_RCU`-style pool, found by page faults under RCU with
//! per-VMA locks, served over gRPC.
//!
//! # Layout
//!
//! * [`mm`]: the engine. No gRPC in it; named after the kernel's `mm/`.
pub mod mm;
