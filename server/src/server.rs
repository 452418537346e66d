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

use crate::mm::sim::{SimConfig, Simulator};
use crate::service::{AddressSpaceService, Limits};
use crate::telemetry::{METHODS, Telemetry};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::body::Body;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
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
    /// Maximum calls in flight over all connections; a `Session` stream
    /// counts as one call for its whole life (default 1024). Calls beyond
    /// it get RESOURCE_EXHAUSTED at once.
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
    /// listeners close, `Session` streams end with UNAVAILABLE, in-flight
    /// calls finish (for at most [`DRAIN_TIMEOUT`]), and this returns.
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

        let service = AddressSpaceService::new(
            sim.clone(),
            telemetry.clone(),
            Limits {
                max_batch: cfg.max_batch,
                max_maps_text: cfg.max_message_bytes,
                stream_buffer: cfg.stream_buffer,
            },
            stop_rx.clone(),
        );
        let auth = BearerAuth::new(cfg.auth_token.as_deref());
        let api = InterceptedService::new(
            AddressSpaceServer::new(service).max_decoding_message_size(cfg.max_message_bytes),
            auth.clone(),
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(vmasim_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = InterceptedService::new(reflection().build_v1()?, auth.clone());
        let reflection_v1alpha = InterceptedService::new(reflection().build_v1alpha()?, auth);
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));

        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &cfg.tls {
            builder = builder.tls_config(
                ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key)),
            )?;
        }
        let router = builder
            .layer(RpcLayer {
                telemetry: telemetry.clone(),
                limit: Arc::new(Semaphore::new(cfg.concurrency_limit.max(1))),
                timeout: cfg.request_timeout,
            })
            .add_service(health_service)
            .add_service(api)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let grpc_addr = grpc.local_addr()?;
        // TCP_NODELAY: small gRPC frames must not wait for Nagle plus a
        // delayed ACK (40 ms on Linux loopback).
        let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
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
// The RPC layer: concurrency limit, timeout, metrics.

/// See the module documentation, item 2.
#[derive(Clone)]
struct RpcLayer {
    telemetry: Arc<Telemetry>,
    limit: Arc<Semaphore>,
    timeout: Duration,
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

/// One call's metrics, recorded exactly once: when the response body ends,
/// or, if the call is abandoned first (client reset, client deadline), on
/// drop as CANCELLED.
struct CallRecord {
    telemetry: Arc<Telemetry>,
    method: &'static str,
    start: Instant,
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
        let code = self.code.unwrap_or(Code::Cancelled);
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

/// A status answered by the layer itself.
fn refuse(status: Status, mut call: CallRecord) -> http::Response<RpcBody> {
    call.code = Some(status.code());
    status.into_http::<Body>().map(|inner| RpcBody {
        inner,
        call: Some(call),
        _permit: None,
    })
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
        let mut call = CallRecord {
            telemetry: self.layer.telemetry.clone(),
            method: method_label(path),
            start: Instant::now(),
            code: None,
        };
        // Health checks are never refused: a loaded server is not a dead one.
        let permit = if is_health(path) {
            None
        } else {
            match self.layer.limit.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let r = refuse(
                        Status::resource_exhausted("server concurrency limit reached; retry later"),
                        call,
                    );
                    return Box::pin(async move { Ok(r) });
                }
            }
        };
        // The usual tower dance: the clone we leave behind has not been
        // polled ready; the one we take has.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.layer.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.call(req)).await {
                Ok(Ok(resp)) => {
                    // Trailers-only responses (every error status) carry
                    // the code in the headers.
                    call.code = grpc_status(resp.headers());
                    let mut resp = resp.map(|inner| RpcBody {
                        inner,
                        call: Some(call),
                        _permit: permit,
                    });
                    // A trailers-only answer is complete now: record it
                    // before the client can see it, not when hyper drops
                    // the empty body.
                    let body = resp.body_mut();
                    if body.inner.is_end_stream()
                        && body.call.as_ref().is_some_and(|c| c.code.is_some())
                    {
                        body.finish();
                    }
                    Ok(resp)
                }
                Ok(Err(e)) => {
                    call.finish(Code::Internal);
                    Err(e)
                }
                Err(_) => Ok(refuse(
                    Status::deadline_exceeded(format!(
                        "no answer within the server's request timeout of {}",
                        humantime::format_duration(timeout)
                    )),
                    call,
                )),
            }
        })
    }
}

/// The response body, holding the call's concurrency permit and metrics
/// record until the last frame (a `Session` stream holds them for its
/// whole life).
struct RpcBody {
    inner: Body,
    call: Option<CallRecord>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl HttpBody for RpcBody {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    if let Some(call) = this.call.as_mut() {
                        call.code = grpc_status(t).or(call.code);
                    }
                    // Trailers end a gRPC response: record before hyper
                    // sends them, so a client that saw the status also
                    // sees it counted.
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(call) = this.call.as_mut() {
                    call.code = Some(status.code());
                }
                this.finish();
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.as_mut() {
                    // Ended without any status: not a proper gRPC answer.
                    call.code.get_or_insert(Code::Unknown);
                }
                this.finish();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl RpcBody {
    /// Record the call and release its permit now, not when hyper gets
    /// round to dropping the body.
    fn finish(&mut self) {
        self.call.take();
        self._permit.take();
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
