//! [`spawn_local`]: a whole server on 127.0.0.1:0 in this process, for
//! `vmasim demo` and `bench` without `--server` and the integration tests
//! of both crates. (The dispatch fuzzer drives `AddressSpaceService` without
//! a network in between: thousands of cases a second.)
//!
//! One helper instead of one per caller: binding port 0 and learning the
//! port before serving, the shutdown channel, and waiting for the drain
//! are written here once, so every in-process server is started the way
//! the binary starts its own (the same [`Server::serve`], both listeners).

use super::{BoxError, Server, ServerConfig};
use crate::mm::Simulator;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server started by [`spawn_local`], serving on the runtime it was
/// started on until [`LocalServer::shutdown`] or until dropped (which asks
/// for the same graceful shutdown without waiting for it).
pub struct LocalServer {
    /// The gRPC listener's address.
    pub grpc: SocketAddr,
    /// The `/metrics` listener's address.
    pub metrics: SocketAddr,
    sim: Arc<Simulator>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), BoxError>>>,
}

impl std::fmt::Debug for LocalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalServer")
            .field("grpc", &self.grpc)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// Start a server for `cfg` with gRPC and `/metrics` each on a loopback
/// port the kernel picks. Fails only if a port cannot be bound.
pub async fn spawn_local(cfg: ServerConfig) -> std::io::Result<LocalServer> {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (grpc_addr, metrics_addr) = (grpc.local_addr()?, metrics.local_addr()?);
    let server = Server::new(cfg);
    let sim = server.simulator().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(grpc, Some(metrics), async move {
        let _ = rx.await;
    }));
    Ok(LocalServer {
        grpc: grpc_addr,
        metrics: metrics_addr,
        sim,
        stop: Some(tx),
        task: Some(task),
    })
}

impl LocalServer {
    /// `http://127.0.0.1:PORT`, the gRPC endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The server's simulator (for in-process inspection).
    pub fn simulator(&self) -> &Arc<Simulator> {
        &self.sim
    }

    /// Start the graceful shutdown without waiting for it. False if it
    /// had been started already or the server had stopped on its own.
    pub fn begin_shutdown(&mut self) -> bool {
        self.stop.take().is_some_and(|tx| tx.send(()).is_ok())
    }

    /// Shut down gracefully and wait for the drain to finish; what
    /// [`Server::serve`] returned (a panic of its task as an error).
    pub async fn shutdown(mut self) -> Result<(), BoxError> {
        self.begin_shutdown();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| -> BoxError { Box::new(e) })?,
            None => Ok(()),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}
