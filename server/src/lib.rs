//! vmasim: simulated Linux address spaces whose VMAs come from a
//! `SLAB_TYPESAFE_BY_RCU`-style pool, found by page faults under RCU with
//! per-VMA locks, served over gRPC.
//!
//! # Layout
//!
//! * [`mm`]: the engine. No gRPC in it; named after the kernel's `mm/`.
//! * [`race_lab`]: the review's races replayed deterministically on a
//!   private engine, fixed and buggy, with a timeline and a verdict.
//! * [`service`]: `vmasim.v1.AddressSpace` on the engine: validation,
//!   translation, error mapping.
//! * [`telemetry`]: Prometheus metric names, descriptions and the
//!   per-server recorder, refreshed from the engine's counters.
//! * [`server`]: the public server API ([`server::ServerConfig`],
//!   [`server::Server`], [`server::spawn_local`]): connections, the RPC
//!   layer, health, reflection, limits, auth, TLS, `/metrics` and
//!   graceful shutdown.
pub mod mm;
#[cfg(not(vmasim_loom))]
pub mod race_lab;
#[cfg(not(vmasim_loom))]
pub mod server;
#[cfg(not(vmasim_loom))]
pub mod service;
#[cfg(not(vmasim_loom))]
pub mod telemetry;
