//! An in-process server on an ephemeral loopback port, for `vmasim demo`,
//! `bench` and `kernel-diff` without `--server`, and the integration tests.
//!
//! This is the only place the client uses the server crate, and only with
//! the default cargo feature `embedded`: everything else talks to the
//! returned URL through the proto, exactly as it would to a remote
//! server. The cache policies are the engine's own [`CachePolicy`] (its
//! `as_str` names are the ones `Stats.vma_cache` reports), so a build
//! without the feature has no `--cache` to choose: there is no server of
//! its own to give one.

use crate::error::CliError;
pub use vmasim_server::mm::CachePolicy;
use vmasim_server::mm::FaultLockMode;
use vmasim_server::server::{LocalServer, ServerConfig, spawn_local};

/// A running in-process server ([`spawn_local`]); stopped when dropped or
/// by [`stop`].
///
/// [`stop`]: Embedded::stop
pub struct Embedded {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    server: LocalServer,
}

impl Embedded {
    /// Starts a fresh server with the given VMA cache and fault locking
    /// (`mmap_lock_only`: every fault takes mmap_lock) on 127.0.0.1:0.
    pub async fn start(cache: CachePolicy, mmap_lock_only: bool) -> Result<Self, CliError> {
        let mut cfg = ServerConfig::default();
        cfg.sim.vma_cache = cache;
        cfg.sim.fault_lock = if mmap_lock_only {
            FaultLockMode::MmapLock
        } else {
            FaultLockMode::PerVma
        };
        Self::start_with(cfg).await
    }

    /// Starts a server with a full configuration.
    pub async fn start_with(cfg: ServerConfig) -> Result<Self, CliError> {
        let server = spawn_local(cfg)
            .await
            .map_err(|e| CliError::Other(format!("cannot bind 127.0.0.1:0: {e}")))?;
        Ok(Embedded {
            url: server.url(),
            server,
        })
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn stop(self) {
        if let Err(e) = self.server.shutdown().await {
            eprintln!("embedded server: {e}");
        }
    }
}

/// The slow reader of `vmasim demo`: the engine's [`SlowReader`]. The
/// embedded servers' RCU is this process's crossbeam-epoch collector, so
/// while it is held no grace period completes for them.
pub use vmasim_server::mm::SlowReader;
