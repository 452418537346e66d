//! An in-process server on an ephemeral loopback port, for `vmasim demo`,
//! `bench` and `kernel-diff` without `--server`, and the integration tests.
//!
//! This is the only place the client uses the server crate, and only with
//! the default cargo feature `embedded`: everything else talks to the
//! returned URL through the proto, exactly as it would to a remote
//! server. [`Cache`] is here without the feature too: `bench --cache`
//! parses the same in both builds.

#[cfg(feature = "embedded")]
use crate::error::CliError;
#[cfg(feature = "embedded")]
use vmasim_server::mm::{CachePolicy, FaultLockMode};
#[cfg(feature = "embedded")]
#[cfg(feature = "embedded")]
use vmasim_server::server::{LocalServer, ServerConfig, spawn_local};

/// The VMA cache policy of an embedded server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Cache {
    /// `SLAB_TYPESAFE_BY_RCU`: freed slots are reused at once.
    Typesafe,
    /// Every free waits for a grace period (`call_rcu`).
    Rcu,
}

impl Cache {
    /// The name the server reports in `Stats.vma_cache`.
    pub fn name(self) -> &'static str {
        match self {
            Cache::Typesafe => "typesafe",
            Cache::Rcu => "rcu",
        }
    }
}

#[cfg(feature = "embedded")]
/// A running in-process server ([`spawn_local`]); stopped when dropped or
/// by [`stop`].
///
/// [`stop`]: Embedded::stop
pub struct Embedded {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    server: LocalServer,
}

#[cfg(feature = "embedded")]
impl Embedded {
    /// Starts a fresh server with the given VMA cache and fault locking
    /// (`mmap_lock_only`: every fault takes mmap_lock) on 127.0.0.1:0.
    pub async fn start(cache: Cache, mmap_lock_only: bool) -> Result<Self, CliError> {
        let mut cfg = ServerConfig::default();
        cfg.sim.vma_cache = match cache {
            Cache::Typesafe => CachePolicy::Typesafe,
            Cache::Rcu => CachePolicy::Rcu,
        };
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

#[cfg(feature = "embedded")]
/// A thread of this process inside one RCU read-side critical section
/// (`rcu_read_lock` held) until dropped: the slow reader of `vmasim demo`.
/// The embedded servers' RCU is the process's crossbeam-epoch collector,
/// so while it is held no grace period completes for them.
pub struct SlowReader {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "embedded")]
impl SlowReader {
    /// Enter the read section on a new thread; returns once it is held.
    pub fn hold() -> Self {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let guard = vmasim_server::mm::rcu_read_lock();
            let _ = held_tx.send(());
            // Returns when the sender is dropped as well as on a message.
            let _ = release_rx.recv();
            drop(guard);
        });
        let _ = held_rx.recv();
        SlowReader {
            release: Some(release),
            thread: Some(thread),
        }
    }
}

#[cfg(feature = "embedded")]
impl Drop for SlowReader {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
