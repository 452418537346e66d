//! `vmasim health`: the gRPC health check; `SERVING` (exit 0) or an error
//! (exit 3 when there is no answer, 11 when the answer is not SERVING).

use super::{Ctx, Printed};
use crate::connect::HEALTH_TIMEOUT;
use crate::error::CliError;
use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

/// `--json` applies.
pub const JSON: bool = true;

/// Arguments of `vmasim health` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs it.
pub async fn run(_a: &Args, ctx: &Ctx) -> Result<(), CliError> {
    let target = &ctx.target;
    let limit = target
        .timeout
        .map_or(HEALTH_TIMEOUT, |t| t.min(HEALTH_TIMEOUT));
    let probe = async {
        let mut h = target.health().await?;
        Ok::<_, CliError>(
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner(),
        )
    };
    let r = tokio::time::timeout(limit, probe)
        .await
        .map_err(|_| CliError::Connect(format!("no health answer from {} within {limit:?}", target.url)))??;
    let status = ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown);
    if status != ServingStatus::Serving {
        return Err(CliError::NotServing(format!(
            "server is {}",
            status.as_str_name()
        )));
    }
    ctx.print(&Printed::new(
        "SERVING\n".into(),
        json!({ "status": status.as_str_name() }),
    ));
    Ok(())
}
