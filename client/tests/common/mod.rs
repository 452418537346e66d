//! The client's integration-test harness: one "server on 127.0.0.1:0"
//! and one way to run the `vmasim` binary against it, shared by every
//! test file (`mod common;`), so a change to how a test server starts or
//! how the binary's environment is cleaned is made once.
//!
//! Each test binary uses a part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use vmasim_client::embedded::{CachePolicy, Embedded};
use vmasim_server::server::ServerConfig;

/// An in-process server on 127.0.0.1:0, on a runtime of its own for the
/// duration of a test; dropping it (or [`TestServer::kill`]) takes it away
/// at once: the runtime is shut down without waiting, connections drop,
/// the port closes.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    srv: Option<Embedded>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// A default server with the given VMA cache.
    pub fn start(cache: CachePolicy) -> Self {
        Self::run(Embedded::start(cache, false))
    }

    /// A server with a full configuration.
    pub fn start_with(cfg: ServerConfig) -> Self {
        Self::run(Embedded::start_with(cfg))
    }

    fn run(
        start: impl std::future::Future<Output = Result<Embedded, vmasim_client::error::CliError>>,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let srv = rt.block_on(start).unwrap();
        TestServer {
            url: srv.url.clone(),
            srv: Some(srv),
            rt: Some(rt),
        }
    }

    /// Takes the server away at once.
    pub fn kill(&mut self) {
        // Forget the handle so its Drop does not ask for a graceful
        // shutdown; the runtime's tasks (listener, connections) are dropped.
        std::mem::forget(self.srv.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `vmasim` binary with no server, token or CA from the environment
/// the tests run in.
pub fn vmasim() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("vmasim").unwrap();
    c.env_remove("VMASIM_SERVER")
        .env_remove("VMASIM_TOKEN")
        .env_remove("VMASIM_TLS_CA");
    c
}

/// [`vmasim`] pointed at `url` (`VMASIM_SERVER`).
pub fn vmasim_at(url: &str) -> assert_cmd::Command {
    let mut c = vmasim();
    c.env("VMASIM_SERVER", url);
    c
}
