//! For the tests that drive the engine through the `Simulator` front door,
//! without a server (engine, torture, maps_torture): the `mmap` arguments
//! they build most, and how long a torture run lasts.

use std::time::Duration;
use vmasim_server::mm::{MmapArgs, map::*, prot::*};

/// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)`.
pub fn anon(len: u64) -> MmapArgs {
    MmapArgs {
        len,
        prot: PROT_READ | PROT_WRITE,
        flags: MAP_PRIVATE | MAP_ANONYMOUS,
        ..Default::default()
    }
}

/// `mmap(addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)`.
pub fn fixed(addr: u64, len: u64, prot: u32) -> MmapArgs {
    MmapArgs {
        addr,
        len,
        prot,
        flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
        ..Default::default()
    }
}

/// How long a torture test runs: a few seconds by default,
/// `VMASIM_TORTURE_SECS` for a long run.
pub fn torture_duration() -> Duration {
    let secs = std::env::var("VMASIM_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2u64);
    Duration::from_secs(secs)
}
