//! [`Server::serve`]: assemble the stack, run it, shut it down.
//!
//! Written as the sequence of its steps (health up, shared state, the
//! tonic router, the listeners' tasks, the shutdown trigger, the drain)
//! so that each step is read, and changed, on its own; `serve` itself is
//! only their order.

use super::auth::BearerAuth;
use super::call::ReplyBudget;
use super::conn::Incoming;
use super::rpc::RpcLayer;
use super::{BoxError, DRAIN_TIMEOUT, SERVICE_NAME, Server, ServerConfig, stopped};
use crate::mm::Simulator;
use crate::service::{AddressSpaceService, Limits};
use crate::telemetry::{ServerState, Telemetry};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower::layer::util::{Identity as NoLayer, Stack};
use vmasim_proto::v1::address_space_server::AddressSpaceServer;

/// Largest health-check request (a service name), bytes.
const HEALTH_MAX_MESSAGE: usize = 4096;

/// What the service and the RPC layer share for the server's lifetime.
struct Shared {
    /// Turns `true` when shutdown starts.
    stop: watch::Receiver<bool>,
    /// Reply bytes built but not yet handed to HTTP/2.
    replies: Arc<ReplyBudget>,
    /// `--concurrency-limit` slots, taken by unary calls in the RPC layer
    /// and by `Session` operations in the service.
    slots: Arc<Semaphore>,
}

type GrpcTask = JoinHandle<Result<(), tonic::transport::Error>>;

impl Server {
    /// Serve gRPC on `grpc` and, if given, `GET /metrics` on `metrics`,
    /// until `shutdown` completes. Then: health goes NOT_SERVING, both
    /// listeners close, streams end with UNAVAILABLE, in-flight calls
    /// finish (for at most [`DRAIN_TIMEOUT`]; a connection with no I/O for
    /// [`DRAIN_IDLE`](super::DRAIN_IDLE) is closed meanwhile), and this
    /// returns.
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
        set_health(&health, ServingStatus::Serving).await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = shared_state(&cfg, &telemetry, stop_rx.clone());
        let router = router(&cfg, &sim, &telemetry, &health, &shared)?;

        let grpc_addr = grpc.local_addr()?;
        let incoming = Incoming::new(
            grpc,
            cfg.max_connections.max(1),
            cfg.handshake_timeout,
            telemetry.clone(),
            stop_rx.clone(),
        );
        let mut grpc_task =
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())));
        tracing::info!(%grpc_addr, tls = cfg.tls.is_some(), auth = cfg.auth_token.is_some(), "serving gRPC");
        let metrics_task = match metrics {
            Some(l) => Some(super::metrics::spawn(l, &sim, &telemetry, &stop_rx)?),
            None => None,
        };
        let upkeep = super::metrics::spawn_upkeep(&telemetry, &stop_rx);
        let trigger = spawn_trigger(health.clone(), shutdown, stop_tx);

        let result = run_until_drained(&mut grpc_task, trigger, &health, stop_rx).await;
        if let Some(task) = metrics_task {
            super::metrics::drain(task).await;
        }
        upkeep.abort();
        tracing::info!("server stopped");
        result
    }
}

/// The overall health and the API service's, together.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for name in ["", SERVICE_NAME] {
        health.set_service_status(name, status).await;
    }
}

/// The reply budget and the concurrency slots, made known to the
/// telemetry (their gauges).
fn shared_state(cfg: &ServerConfig, telemetry: &Telemetry, stop: watch::Receiver<bool>) -> Shared {
    let replies = Arc::new(ReplyBudget::new(cfg.max_reply_buffer_bytes));
    let slots = Arc::new(Semaphore::new(cfg.concurrency_limit.max(1)));
    telemetry.attach_server_state(ServerState {
        replies: replies.clone(),
        slots: (slots.clone(), cfg.concurrency_limit.max(1)),
    });
    Shared {
        stop,
        replies,
        slots,
    }
}

/// The tonic router: transport settings, the RPC layer, and the services
/// (health, the API behind the token, reflection behind the token).
fn router(
    cfg: &ServerConfig,
    sim: &Arc<Simulator>,
    telemetry: &Arc<Telemetry>,
    health: &HealthReporter,
    shared: &Shared,
) -> Result<Router<Stack<RpcLayer, NoLayer>>, BoxError> {
    let service = AddressSpaceService::new(
        sim.clone(),
        telemetry.clone(),
        Limits::from(cfg),
        shared.stop.clone(),
    )
    .with_reply_budget(shared.replies.clone())
    .with_slots(shared.slots.clone());
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
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key)))?;
    }
    Ok(builder
        .max_concurrent_streams(Some(cfg.max_streams_per_connection.max(1)))
        .http2_keepalive_interval(Some(cfg.keepalive))
        .http2_keepalive_timeout(Some(cfg.keepalive))
        .layer(RpcLayer {
            telemetry: telemetry.clone(),
            limit: shared.slots.clone(),
            watch_limit: Arc::new(Semaphore::new(cfg.max_watch_streams.max(1))),
            timeout: cfg.request_timeout,
            stop: shared.stop.clone(),
        })
        .add_service(health_service)
        .add_service(api)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha))
}

/// Shutdown starts when `shutdown` completes: health first, so probes see
/// NOT_SERVING before the listeners go away; then everything else
/// watching `stop`.
fn spawn_trigger(
    health: HealthReporter,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop_tx: watch::Sender<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown: health NOT_SERVING, draining in-flight calls");
        set_health(&health, ServingStatus::NotServing).await;
        let _ = stop_tx.send(true);
    })
}

/// Waits for the gRPC server: until it fails on its own, or, once
/// shutdown has started, until its calls have drained (at most
/// [`DRAIN_TIMEOUT`], after which their connections are closed).
async fn run_until_drained(
    grpc_task: &mut GrpcTask,
    trigger: JoinHandle<()>,
    health: &HealthReporter,
    stop: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    fn flatten(
        r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
    ) -> Result<(), BoxError> {
        r.map_err(|e| -> BoxError { Box::new(e) })
            .and_then(|r| r.map_err(|e| -> BoxError { Box::new(e) }))
    }
    let early = tokio::select! {
        r = &mut *grpc_task => Some(r),
        _ = stopped(stop) => None,
    };
    match early {
        // The gRPC server failed before any shutdown was asked for.
        Some(r) => {
            trigger.abort();
            let _ = health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            flatten(r)
        }
        None => match tokio::time::timeout(DRAIN_TIMEOUT, &mut *grpc_task).await {
            Ok(r) => flatten(r),
            Err(_) => {
                tracing::warn!(
                    "in-flight calls still running after {DRAIN_TIMEOUT:?}; closing their connections"
                );
                grpc_task.abort();
                Ok(())
            }
        },
    }
}
