//! The gRPC server: configuration, the service stack around
//! [`AddressSpaceService`], the `/metrics` listener, and graceful shutdown.
//!
//! This is the public API the `vmasim-server` binary, the client's `vmasim
//! demo` and the integration tests use: build a [`ServerConfig`], make a
//! [`Server`], hand [`Server::serve`] bound listeners and a shutdown future.
//! Taking listeners rather than addresses lets callers bind port 0 and learn
//! the port before serving (tests), and keeps binding errors in the caller's
//! hands (the binary reports them with the flag that caused them).
//!
//! The stack, outermost first:
//!
//! 1. tonic's transport (HTTP/2, optional TLS, decode limits per service);
//! 2. `RpcLayer`, one tower layer for everything that must see *every*
//!    call, including the ones it refuses: the global concurrency limit
//!    (RESOURCE_EXHAUSTED at once when full, never a queue; health checks
//!    exempt so a busy server still answers its probes), the request
//!    timeout, and the RPC metrics (latency until the response body ends,
//!    status code from the headers or trailers);
//! 3. per service: the bearer-token interceptor on `AddressSpace` and
//!    reflection (health exempt, so probes work without the token), then
//!    the service.
//!
//! The server's own timeout is done in `RpcLayer` rather than with
//! tonic's `Server::timeout`, because tonic applies that outside custom
//! layers, where the metrics would not see the calls it cuts off. A
//! client's `grpc-timeout` is still honoured by tonic.

use crate::call::{CallCtx, ReplyBudget, ReplyHold};
use crate::mm::sim::{SimConfig, Simulator};
use crate::service::{AddressSpaceService, Limits};
use crate::telemetry::{METHODS, Telemetry};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tonic::body::Body;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Code, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower::{Layer, Service};
use vmasim_proto::v1::address_space_server::AddressSpaceServer;

/// The gRPC name of the API service (for health checks).
pub const SERVICE_NAME: &str = "vmasim.v1.AddressSpace";

/// How long in-flight calls may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// During the drain, a connection on which nothing has been read or
/// written for this long is closed: its peer is not taking the replies
/// or closing (a client that stopped reading, a half-open connection),
/// and waiting for it would hold the shutdown to [`DRAIN_TIMEOUT`].
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Largest health-check request (a service name), bytes.
const HEALTH_MAX_MESSAGE: usize = 4096;

/// Replies larger than this reach HTTP/2 in copies of this size, so that
/// the undelivered rest stays where its deadline can drop it.
const REPLY_SLICE: usize = 16 << 10;

/// How often recorded histogram samples are folded into buckets when
/// nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

    /// Serve gRPC on `grpc` and, if given, `GET /metrics` on `metrics`,
    /// until `shutdown` completes. Then: health goes NOT_SERVING, both
    /// listeners close, streams end with UNAVAILABLE, in-flight calls
    /// finish (for at most [`DRAIN_TIMEOUT`]; a connection with no I/O for
    /// [`DRAIN_IDLE`] is closed meanwhile), and this returns.
    pub async fn serve(
        self,
        grpc: tokio::net::TcpListener,
        metrics: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        let Server {
            cfg,
            sim,
            telemetry,
            health,
        } = self;

        for name in ["", SERVICE_NAME] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let reply_budget = Arc::new(ReplyBudget::new(cfg.max_reply_buffer_bytes));
        let slots = Arc::new(Semaphore::new(cfg.concurrency_limit.max(1)));
        telemetry.attach_server_state(crate::telemetry::ServerState {
            replies: reply_budget.clone(),
            slots: (slots.clone(), cfg.concurrency_limit.max(1)),
        });

        let service = AddressSpaceService::new(
            sim.clone(),
            telemetry.clone(),
            Limits {
                max_batch: cfg.max_batch,
                max_maps_text: cfg.max_message_bytes,
                stream_buffer: cfg.stream_buffer,
                max_reply_bytes: cfg.max_reply_bytes,
                request_timeout: cfg.request_timeout,
            },
            stop_rx.clone(),
        )
        .with_reply_budget(reply_budget.clone())
        .with_slots(slots.clone());
        let auth = BearerAuth::new(cfg.auth_token.as_deref());
        let api = InterceptedService::new(
            AddressSpaceServer::new(service)
                .max_decoding_message_size(cfg.max_message_bytes)
                // The service refuses larger replies itself, with a clear
                // message; this only backs that up.
                .max_encoding_message_size(cfg.max_reply_bytes.saturating_add(1 << 16)),
            auth.clone(),
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(vmasim_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = InterceptedService::new(reflection().build_v1()?, auth.clone());
        let reflection_v1alpha = InterceptedService::new(reflection().build_v1alpha()?, auth);
        // A health request is a service name: no reason to buffer 4 MiB of
        // one from an unauthenticated peer.
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()))
            .max_decoding_message_size(HEALTH_MAX_MESSAGE);

        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &cfg.tls {
            builder = builder.tls_config(
                ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key)),
            )?;
        }
        let router = builder
            .max_concurrent_streams(Some(cfg.max_streams_per_connection.max(1)))
            .http2_keepalive_interval(Some(cfg.keepalive))
            .http2_keepalive_timeout(Some(cfg.keepalive))
            .layer(RpcLayer {
                telemetry: telemetry.clone(),
                limit: slots.clone(),
                watch_limit: Arc::new(Semaphore::new(cfg.max_watch_streams.max(1))),
                timeout: cfg.request_timeout,
                stop: stop_rx.clone(),
            })
            .add_service(health_service)
            .add_service(api)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let grpc_addr = grpc.local_addr()?;
        let incoming = crate::conn::Incoming::new(
            grpc,
            cfg.max_connections.max(1),
            cfg.handshake_timeout,
            telemetry.clone(),
            stop_rx.clone(),
        );
        let mut grpc_task =
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())));
        tracing::info!(%grpc_addr, tls = cfg.tls.is_some(), auth = cfg.auth_token.is_some(), "serving gRPC");

        let mut metrics_task = match metrics {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let app = metrics_router(sim.clone(), telemetry.clone());
                tracing::info!(%addr, "serving metrics at /metrics");
                Some(tokio::spawn(
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stopped(stop_rx.clone()))
                        .into_future(),
                ))
            }
            None => None,
        };

        // Histogram samples pile up in lock-free buckets until folded in;
        // fold them regularly even if nobody scrapes.
        let upkeep = {
            let telemetry = telemetry.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
                loop {
                    tokio::select! {
                        _ = tick.tick() => telemetry.run_upkeep(),
                        _ = stop.wait_for(|&s| s) => return,
                    }
                }
            })
        };

        // Shutdown starts: health first, so probes see NOT_SERVING before
        // the listeners go away; then everything else watching `stop`.
        let trigger = {
            let health = health.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutdown: health NOT_SERVING, draining in-flight calls");
                for name in ["", SERVICE_NAME] {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                let _ = stop_tx.send(true);
            })
        };

        let early = tokio::select! {
            r = &mut grpc_task => Some(r),
            _ = stopped(stop_rx.clone()) => None,
        };
        let result = match early {
            // The gRPC server failed before any shutdown was asked for.
            Some(r) => {
                trigger.abort();
                let _ = health
                    .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                    .await;
                r.map_err(|e| -> BoxError { Box::new(e) })
                    .and_then(|r| r.map_err(|e| -> BoxError { Box::new(e) }))
            }
            None => match tokio::time::timeout(DRAIN_TIMEOUT, &mut grpc_task).await {
                Ok(r) => r
                    .map_err(|e| -> BoxError { Box::new(e) })
                    .and_then(|r| r.map_err(|e| -> BoxError { Box::new(e) })),
                Err(_) => {
                    tracing::warn!(
                        "in-flight calls still running after {DRAIN_TIMEOUT:?}; closing their connections"
                    );
                    grpc_task.abort();
                    Ok(())
                }
            },
        };
        if let Some(task) = metrics_task.as_mut() {
            // A scrape in progress gets the same bounded drain.
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut *task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        upkeep.abort();
        tracing::info!("server stopped");
        result
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

/// `GET /metrics` on its own listener.
fn metrics_router(sim: Arc<Simulator>, telemetry: Arc<Telemetry>) -> axum::Router {
    use axum::http::header::CONTENT_TYPE;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (sim, telemetry) = (sim.clone(), telemetry.clone());
            async move {
                // `stats()` walks the process table: off the async workers.
                let text = tokio::task::spawn_blocking(move || telemetry.render(&sim.stats()))
                    .await
                    .unwrap_or_else(|e| format!("# render failed: {e}\n"));
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    text,
                )
            }
        }),
    )
}

// ---------------------------------------------------------------------------
// Authentication.

/// Checks `authorization: Bearer <token>` in constant time. With no token
/// configured it lets everything through. The token is never logged.
#[derive(Clone)]
struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
    fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.as_bytes())),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        let value = value.as_bytes();
        // The scheme is case-insensitive (RFC 9110); the token is not.
        let presented = match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
            _ => {
                return Err(Status::unauthenticated(
                    "authorization metadata is not `Bearer <token>`",
                ));
            }
        };
        // `ct_eq` on slices of different lengths returns false at once: it
        // reveals the token's length, not its content.
        if bool::from(presented.ct_eq(token)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

// ---------------------------------------------------------------------------
// The RPC layer: concurrency limit, deadlines, reply delivery, metrics.

/// See the module documentation, item 2.
#[derive(Clone)]
struct RpcLayer {
    telemetry: Arc<Telemetry>,
    limit: Arc<Semaphore>,
    /// Health `Watch` streams: exempt from `limit` like every health call,
    /// but long-lived, so capped on their own.
    watch_limit: Arc<Semaphore>,
    timeout: Duration,
    /// Turns true at shutdown: open streams other than `Session` (which
    /// ends itself) end with UNAVAILABLE so the drain need not wait.
    stop: watch::Receiver<bool>,
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

/// The `method` label for a request path: the method name for
/// `vmasim.v1.AddressSpace`, `Service/Method` for the few other services
/// served, `unknown` otherwise (so a scanner cannot grow the label set).
fn method_label(path: &str) -> &'static str {
    const OTHER: &[&str] = &[
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    let path = path.strip_prefix('/').unwrap_or(path);
    if let Some(m) = path
        .strip_prefix(SERVICE_NAME)
        .and_then(|m| m.strip_prefix('/'))
    {
        return METHODS
            .iter()
            .find(|&&k| k == m)
            .copied()
            .unwrap_or("unknown");
    }
    OTHER
        .iter()
        .find(|&&k| k == path)
        .copied()
        .unwrap_or("unknown")
}

fn is_health(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

fn is_reflection(method: &str) -> bool {
    method.starts_with("grpc.reflection.")
}

/// Methods whose response is a stream that may stay open indefinitely.
fn is_streaming(method: &str) -> bool {
    matches!(
        method,
        "Session"
            | "grpc.health.v1.Health/Watch"
            | "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            | "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
}

/// The client's `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits
/// and a unit H, M, S, m, u or n), if present and well-formed.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// One call's metrics, recorded exactly once: when the response body ends,
/// or, if the call is abandoned first, on drop: DEADLINE_EXCEEDED when its
/// deadline has passed (tonic answers the client's `grpc-timeout` outside
/// this layer by dropping it), CANCELLED otherwise (the client reset the
/// stream or went away).
struct CallRecord {
    telemetry: Arc<Telemetry>,
    method: &'static str,
    start: Instant,
    deadline: Option<Instant>,
    code: Option<Code>,
}

impl CallRecord {
    /// Record now, with `code`.
    fn finish(mut self, code: Code) {
        self.code = Some(code);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let code = self.code.unwrap_or_else(|| {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                Code::DeadlineExceeded
            } else {
                Code::Cancelled
            }
        });
        self.telemetry
            .record_rpc(self.method, code, self.start.elapsed());
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from(v))
}

/// tonic answers a request message over the decode limit with OUT_OF_RANGE;
/// the gRPC status-code table (and the README) say RESOURCE_EXHAUSTED. The
/// service itself never answers OUT_OF_RANGE, so the rewrite is exact.
fn fix_too_large(headers: &mut http::HeaderMap) {
    if grpc_status(headers) == Some(Code::OutOfRange) {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
}

/// A status answered by the layer itself.
fn refuse(status: Status, mut call: CallRecord) -> http::Response<RpcBody> {
    call.code = Some(status.code());
    status
        .into_http::<Body>()
        .map(|inner| RpcBody::new(inner, Some(call)))
}

/// Marks the call abandoned if its future is dropped before it answers.
struct AbandonOnDrop(Option<CallCtx>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(ctx) = self.0.take() {
            ctx.abandon();
        }
    }
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for RpcService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<RpcBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let method = method_label(path);
        let start = Instant::now();
        // The earlier of the server's limit and the client's: work that
        // starts after it would answer nobody.
        let budget =
            grpc_timeout(req.headers()).map_or(self.layer.timeout, |t| t.min(self.layer.timeout));
        let deadline = start + budget;
        let mut call = CallRecord {
            telemetry: self.layer.telemetry.clone(),
            method,
            start,
            deadline: Some(deadline),
            code: None,
        };
        // Health checks are never refused: a loaded server is not a dead
        // one. Watch streams live long, so they have a cap of their own.
        // A `Session` takes a slot per operation, in the service, so that
        // an idle stream holds none; a reflection stream's answers are
        // descriptor lookups, so it holds none either (no stream can pin a
        // slot while it idles).
        let sem = if method == "grpc.health.v1.Health/Watch" {
            Some((&self.layer.watch_limit, "health Watch stream limit reached"))
        } else if is_health(path) || method == "Session" || is_reflection(method) {
            None
        } else {
            Some((&self.layer.limit, crate::call::CONCURRENCY_LIMIT_MESSAGE))
        };
        let permit = match sem {
            None => None,
            Some((sem, msg)) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let r = refuse(Status::resource_exhausted(msg), call);
                    return Box::pin(async move { Ok(r) });
                }
            },
        };
        let ctx = CallCtx::new(permit, Some(deadline));
        // The usual tower dance: the clone we leave behind has not been
        // polled ready; the one we take has.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = budget;
        let stop = self.layer.stop.clone();
        Box::pin(async move {
            let mut guard = AbandonOnDrop(Some(ctx.clone()));
            let fut = inner.call(req);
            let r = ctx
                .clone()
                .scope(tokio::time::timeout_at(deadline.into(), fut))
                .await;
            match r {
                Ok(Ok(mut resp)) => {
                    guard.0 = None;
                    fix_too_large(resp.headers_mut());
                    // Trailers-only responses (every error status) carry
                    // the code in the headers.
                    call.code = grpc_status(resp.headers());
                    let hold = resp.extensions_mut().remove::<ReplyHold>();
                    let streaming = is_streaming(method);
                    let mut resp = resp.map(|inner| RpcBody::new(inner, Some(call)));
                    let body = resp.body_mut();
                    if streaming {
                        // A Watch stream holds its Watch slot for its
                        // whole life (Session and reflection hold none).
                        body.ctx = Some(ctx);
                        if method != "Session" {
                            body.stop = Some(Box::pin(stopped(stop)));
                        }
                    } else if let Some(h) = &hold {
                        // A unary reply's time is the call's time: past
                        // the deadline its undelivered bytes are dropped.
                        let h = h.clone();
                        body.timer = Some(
                            tokio::spawn(async move {
                                tokio::time::sleep_until(deadline.into()).await;
                                h.expire(Status::deadline_exceeded(
                                    "the reply was not read before the call's deadline",
                                ));
                            })
                            .abort_handle(),
                        );
                    }
                    // Unary: the slot is free once the work is (the
                    // blocking closure held its own clone of `ctx`).
                    body.hold = hold;
                    // A trailers-only answer is complete now: record it
                    // before the client can see it, not when hyper drops
                    // the empty body.
                    if body.inner.is_end_stream()
                        && body.call.as_ref().is_some_and(|c| c.code.is_some())
                    {
                        body.finish();
                    }
                    Ok(resp)
                }
                Ok(Err(e)) => {
                    guard.0 = None;
                    call.finish(Code::Internal);
                    Err(e)
                }
                Err(_) => {
                    // Work still running keeps the slot through its own
                    // clone of `ctx`; what has not started will not.
                    ctx.abandon();
                    guard.0 = None;
                    Ok(refuse(
                        Status::deadline_exceeded(format!(
                            "no answer within the call's deadline of {}",
                            humantime::format_duration(timeout)
                        )),
                        call,
                    ))
                }
            }
        })
    }
}

/// The response body: records the call when it ends, holds a stream's
/// slot for its life, hands large replies to HTTP/2 in small copies so
/// their undelivered rest can be dropped at the deadline, and ends
/// streams at shutdown.
struct RpcBody {
    inner: Body,
    call: Option<CallRecord>,
    /// A stream's concurrency slot.
    ctx: Option<CallCtx>,
    /// The reply's memory and budget charge (large replies).
    hold: Option<ReplyHold>,
    /// Drops `hold` at the deadline even if nobody polls this body.
    timer: Option<tokio::task::AbortHandle>,
    /// Shutdown, for streams that do not end themselves.
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    done: bool,
}

impl RpcBody {
    fn new(inner: Body, call: Option<CallRecord>) -> Self {
        Self {
            inner,
            call,
            ctx: None,
            hold: None,
            timer: None,
            stop: None,
            done: false,
        }
    }

    /// End the response now with `status` in trailers.
    fn end_with(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(call) = self.call.as_mut() {
            call.code = Some(status.code());
        }
        self.finish();
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
        if let Ok(v) = http::HeaderValue::from_str(&percent_encode(status.message())) {
            trailers.insert("grpc-message", v);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    /// Record the call and release its slot, charge and timer now, not when
    /// hyper gets round to dropping the body.
    fn finish(&mut self) {
        self.call.take();
        self.ctx.take();
        if let Some(h) = self.hold.take() {
            h.release();
        }
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

impl Drop for RpcBody {
    fn drop(&mut self) {
        if let Some(h) = &self.hold {
            h.release();
        }
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HttpBody for RpcBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(h) = &this.hold {
            if let Some(status) = h.take_expired() {
                return this.end_with(status);
            }
            if let Some(slice) = h.next_slice(REPLY_SLICE) {
                return Poll::Ready(Some(Ok(Frame::data(slice))));
            }
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        // At shutdown a stream first delivers what is ready (health's
        // NOT_SERVING update was published before the stop), then ends.
        if r.is_pending()
            && let Some(stop) = this.stop.as_mut()
            && stop.as_mut().poll(cx).is_ready()
        {
            return this.end_with(Status::unavailable("server is shutting down"));
        }
        match r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    if let Some(call) = this.call.as_mut() {
                        call.code = grpc_status(t).or(call.code);
                    }
                    // Trailers end a gRPC response: record before hyper
                    // sends them, so a client that saw the status also
                    // sees it counted.
                    this.finish();
                    return Poll::Ready(Some(Ok(frame)));
                }
                match (frame.into_data(), &this.hold) {
                    (Ok(data), Some(h)) if data.len() > REPLY_SLICE => {
                        h.stash(data);
                        if h.is_expired() {
                            let s = h.take_expired().unwrap_or_else(|| Status::cancelled(""));
                            return this.end_with(s);
                        }
                        let slice = h.next_slice(REPLY_SLICE).unwrap_or_default();
                        Poll::Ready(Some(Ok(Frame::data(slice))))
                    }
                    (Ok(data), _) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    (Err(frame), _) => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(call) = this.call.as_mut() {
                    call.code = Some(status.code());
                }
                this.finish();
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.as_mut() {
                    // Ended without any status: not a proper gRPC answer.
                    call.code.get_or_insert(Code::Unknown);
                }
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.inner.is_end_stream() && self.hold.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        if self.hold.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label("/vmasim.v1.AddressSpace/Mmap"), "Mmap");
        assert_eq!(method_label("/vmasim.v1.AddressSpace/Nope"), "unknown");
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/x/y"), "unknown");
    }

    #[test]
    fn bearer_auth() {
        let mut a = BearerAuth::new(Some("s3cret"));
        let req = |v: Option<&str>| {
            let mut r = tonic::Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            r
        };
        assert!(a.call(req(Some("Bearer s3cret"))).is_ok());
        assert!(a.call(req(Some("bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
            Some("Bearer"),
        ] {
            let e = a.call(req(bad)).unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated);
            assert!(!e.message().contains("s3cret"));
        }
        assert!(BearerAuth::new(None).call(req(None)).is_ok());
    }
}
