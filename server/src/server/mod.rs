//! The gRPC server: configuration, the service stack around
//! [`AddressSpaceService`](crate::service::AddressSpaceService), the
//! `/metrics` listener, and graceful shutdown.
//!
//! This is the public API the `vmasim-server` binary, the client's `vmasim
//! demo` and the integration tests use: build a [`ServerConfig`], make a
//! [`Server`], hand [`Server::serve`] bound listeners and a shutdown future
//! ([`spawn_local`] does that on 127.0.0.1:0 for the demo and the tests).
//! Taking listeners rather than addresses lets callers bind port 0 and
//! learn the port before serving, and keeps binding errors in the
//! caller's hands (the binary reports them with the flag that caused
//! them).
//!
//! The stack, outermost first:
//!
//! 1. tonic's transport (HTTP/2, optional TLS, decode limits per service),
//!    on connections accepted by [`conn`](self::conn) (cap, handshake
//!    timeout, accept back-off);
//! 2. [`rpc`](self::rpc), one tower layer for everything that must see
//!    *every* call: concurrency limit, request timeout, reply delivery,
//!    RPC metrics; what one call carries from it into the service is
//!    [`call`];
//! 3. per service: the bearer-token interceptor ([`auth`](self::auth)) on
//!    `AddressSpace` and reflection (health exempt, so probes work without
//!    the token), then the service.
//!
//! [`serve`](self::serve) assembles it and runs the shutdown sequence;
//! [`metrics`](self::metrics) is the `/metrics` listener beside it.

mod auth;
pub mod call;
mod conn;
mod flags;
mod local;
mod metrics;
mod rpc;
mod serve;

pub use local::{LocalServer, spawn_local};

use crate::mm::{SimConfig, Simulator};
use crate::telemetry::Telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;

/// The gRPC name of the API service (for health checks).
pub const SERVICE_NAME: &str = "vmasim.v1.AddressSpace";

/// How long in-flight calls may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// During the drain, a connection on which nothing has been read or
/// written for this long is closed: its peer is not taking the replies
/// or closing (a client that stopped reading, a half-open connection),
/// and waiting for it would hold the shutdown to [`DRAIN_TIMEOUT`].
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// A PEM certificate chain and private key for TLS.
#[derive(Clone)]
pub struct TlsPem {
    /// Certificate chain, PEM.
    pub cert: Vec<u8>,
    /// Private key, PEM.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsPem").finish_non_exhaustive()
    }
}

/// Everything a server needs to know.
#[derive(Clone)]
pub struct ServerConfig {
    /// The engine: cache policy, fault locking mode, limits.
    pub sim: SimConfig,
    /// Maximum addresses in one `FaultBatch` (default 65536).
    pub max_batch: usize,
    /// Maximum calls in flight over all connections (default 1024): a
    /// unary call holds a slot while it and its engine work run, a
    /// `Session` operation while its work runs (an idle stream holds
    /// none). Calls beyond it get RESOURCE_EXHAUSTED at once.
    pub concurrency_limit: usize,
    /// Server-side limit on the time to answer a call (default 30 s); the
    /// client's `grpc-timeout`, when shorter, wins.
    pub request_timeout: Duration,
    /// Maximum size of one decoded request message (default 4 MiB).
    pub max_message_bytes: usize,
    /// When set, every call except health checks needs
    /// `authorization: Bearer <token>` metadata.
    pub auth_token: Option<String>,
    /// When set, serve gRPC over TLS.
    pub tls: Option<TlsPem>,
    /// Replies in flight per `Session` stream before the server stops
    /// reading that stream's requests (default 64).
    pub stream_buffer: usize,
    /// Largest reply message, bytes (default 16 MiB: the `Maps` of a
    /// process at the default `max_map_count` fits). A larger one is
    /// RESOURCE_EXHAUSTED instead of being built.
    pub max_reply_bytes: usize,
    /// Bytes of replies built but not yet handed to HTTP/2, all calls and
    /// streams together (default 256 MiB). What a client that stops
    /// reading can pin: past it, calls with large replies get
    /// RESOURCE_EXHAUSTED before doing anything.
    pub max_reply_buffer_bytes: usize,
    /// Open connections (default 512); more are closed on accept.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection (default 64).
    pub max_streams_per_connection: u32,
    /// Health `Watch` streams open at once, all connections together
    /// (default 64); more get RESOURCE_EXHAUSTED.
    pub max_watch_streams: usize,
    /// Time a new connection has to send the HTTP/2 preface (default 5 s).
    pub handshake_timeout: Duration,
    /// HTTP/2 PING interval on a quiet connection; a peer that does not
    /// answer within the same time again is disconnected (default 20 s).
    pub keepalive: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            sim: SimConfig::default(),
            max_batch: 65536,
            concurrency_limit: 1024,
            request_timeout: Duration::from_secs(30),
            max_message_bytes: 4 << 20,
            auth_token: None,
            tls: None,
            stream_buffer: 64,
            max_reply_bytes: 16 << 20,
            max_reply_buffer_bytes: 256 << 20,
            max_connections: 512,
            max_streams_per_connection: 64,
            max_watch_streams: 64,
            handshake_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(20),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("sim", &self.sim)
            .field("max_batch", &self.max_batch)
            .field("concurrency_limit", &self.concurrency_limit)
            .field("request_timeout", &self.request_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            // The token itself is never printed.
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<set>"))
            .field("tls", &self.tls.is_some())
            .field("stream_buffer", &self.stream_buffer)
            .field("max_reply_bytes", &self.max_reply_bytes)
            .field("max_reply_buffer_bytes", &self.max_reply_buffer_bytes)
            .field("max_connections", &self.max_connections)
            .field(
                "max_streams_per_connection",
                &self.max_streams_per_connection,
            )
            .field("max_watch_streams", &self.max_watch_streams)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

/// A vmasim server: one simulator, its metrics, its health state.
pub struct Server {
    cfg: ServerConfig,
    sim: Arc<Simulator>,
    telemetry: Arc<Telemetry>,
    health: HealthReporter,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The error [`Server::serve`] returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Server {
    /// A server with an empty simulator.
    pub fn new(cfg: ServerConfig) -> Self {
        let sim = Arc::new(Simulator::new(cfg.sim));
        let telemetry = Arc::new(Telemetry::new(&cfg.sim));
        Self {
            cfg,
            sim,
            telemetry,
            health: HealthReporter::new(),
        }
    }

    /// The simulator (for in-process inspection).
    pub fn simulator(&self) -> &Arc<Simulator> {
        &self.sim
    }

    /// The Prometheus text exposition, with the engine metrics refreshed
    /// from `sim.stats()`.
    pub fn render_metrics(&self) -> String {
        self.telemetry.render(&self.sim.stats())
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}
