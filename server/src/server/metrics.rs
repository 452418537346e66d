//! `GET /metrics` on its own listener, and the upkeep that keeps the
//! histograms folded when nobody scrapes.
//!
//! A listener of its own (plain HTTP/1.1, no token) because Prometheus
//! scrapes over HTTP/1.1 and the gRPC port may be TLS and token-only; the
//! exposition itself is [`Telemetry::render`].

use super::stopped;
use crate::mm::Simulator;
use crate::telemetry::Telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often recorded histogram samples are folded into buckets when
/// nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The `/metrics` server's task.
pub(super) type MetricsTask = JoinHandle<std::io::Result<()>>;

/// Serve `/metrics` on `listener` until `stop` turns true.
pub(super) fn spawn(
    listener: tokio::net::TcpListener,
    sim: &Arc<Simulator>,
    telemetry: &Arc<Telemetry>,
    stop: &watch::Receiver<bool>,
) -> std::io::Result<MetricsTask> {
    let addr = listener.local_addr()?;
    let app = router(sim.clone(), telemetry.clone());
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped(stop.clone()))
            .into_future(),
    ))
}

/// After shutdown: a scrape in progress gets the same bounded drain as a
/// call.
pub(super) async fn drain(mut task: MetricsTask) {
    if tokio::time::timeout(super::DRAIN_TIMEOUT, &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}

/// Histogram samples pile up in lock-free buckets until folded in; fold
/// them regularly even if nobody scrapes.
pub(super) fn spawn_upkeep(
    telemetry: &Arc<Telemetry>,
    stop: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    let telemetry = telemetry.clone();
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => telemetry.run_upkeep(),
                _ = stop.wait_for(|&s| s) => return,
            }
        }
    })
}

/// `GET /metrics` on its own listener.
fn router(sim: Arc<Simulator>, telemetry: Arc<Telemetry>) -> axum::Router {
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
