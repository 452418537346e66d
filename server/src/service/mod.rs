//! `vmasim.v1.AddressSpace` on top of the engine: validation, translation
//! and error mapping, nothing else.
//!
//! * [`convert`](self::convert): wire ↔ engine (request checks, replies,
//!   the `MmError` → status map).
//! * [`ops`](self::ops): one method per RPC, shared by the unary handlers
//!   and the stream.
//! * [`session`](self::session): the `Session` stream (backpressure,
//!   concurrency slots per operation, shutdown).
//!
//! This file holds the public face ([`AddressSpaceService`], [`Limits`])
//! and the tonic trait, whose handlers only unwrap the request and call
//! the operation: the engine validates the rest (alignment, ranges,
//! limits) and fails without changing anything, so a failed RPC never
//! leaves half an operation behind.

mod convert;
mod ops;
mod session;

pub use convert::status_from;
pub use ops::FAULT_BATCH_SAMPLE;

use crate::mm::Simulator;
use crate::server::call::ReplyBudget;
use crate::telemetry::Telemetry;
use ops::Ops;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};
use vmasim_proto::v1::address_space_server::AddressSpace;
use vmasim_proto::v1::{self as pb};

/// Request-size limits the service enforces itself.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum addresses in one `FaultBatch`.
    pub max_batch: usize,
    /// Maximum size of a `maps_text`, bytes (the decoder already caps whole
    /// messages; this gives a clear field-level error).
    pub max_maps_text: usize,
    /// Replies in flight per `Session` stream.
    pub stream_buffer: usize,
    /// Largest reply message, bytes.
    pub max_reply_bytes: usize,
    /// How long a `Session` reply may wait for the client to read before
    /// the stream ends with DEADLINE_EXCEEDED (the server's
    /// `--request-timeout`).
    pub request_timeout: std::time::Duration,
}

impl From<&crate::server::ServerConfig> for Limits {
    /// The service's share of a server's configuration.
    fn from(cfg: &crate::server::ServerConfig) -> Self {
        Self {
            max_batch: cfg.max_batch,
            max_maps_text: cfg.max_message_bytes,
            stream_buffer: cfg.stream_buffer,
            max_reply_bytes: cfg.max_reply_bytes,
            request_timeout: cfg.request_timeout,
        }
    }
}

impl Default for Limits {
    /// Those of [`ServerConfig::default`](crate::server::ServerConfig),
    /// where the defaults are written.
    fn default() -> Self {
        Self::from(&crate::server::ServerConfig::default())
    }
}

/// The `AddressSpace` service. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AddressSpaceService {
    ops: Arc<Ops>,
}

impl std::fmt::Debug for AddressSpaceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpaceService")
            .field("limits", &self.ops.limits)
            .finish_non_exhaustive()
    }
}

impl AddressSpaceService {
    /// A service over `sim`, recording into `telemetry`. `shutdown` turns
    /// `true` when the server starts shutting down.
    pub fn new(
        sim: Arc<Simulator>,
        telemetry: Arc<Telemetry>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            ops: Arc::new(Ops {
                sim,
                telemetry,
                limits,
                shutdown,
                replies: Arc::new(ReplyBudget::new(usize::MAX)),
                slots: None,
            }),
        }
    }

    /// Charge large replies against `budget` (shared with the server's
    /// other services; unlimited by default).
    pub fn with_reply_budget(mut self, budget: Arc<ReplyBudget>) -> Self {
        if let Some(ops) = Arc::get_mut(&mut self.ops) {
            ops.replies = budget;
        }
        self
    }

    /// Take `Session` operations' concurrency slots from `slots` (the
    /// semaphore the RPC layer takes unary calls' slots from).
    pub fn with_slots(mut self, slots: Arc<tokio::sync::Semaphore>) -> Self {
        if let Some(ops) = Arc::get_mut(&mut self.ops) {
            ops.slots = Some(slots);
        }
        self
    }

    /// Run one `Session` operation exactly as the stream does (the
    /// dispatch fuzzer's entry).
    pub async fn dispatch(&self, req: pb::SessionRequest) -> pb::SessionReply {
        self.ops.session_op(req).await.0
    }
}

#[tonic::async_trait]
impl AddressSpace for AddressSpaceService {
    async fn spawn(
        &self,
        r: Request<pb::SpawnRequest>,
    ) -> Result<Response<pb::SpawnResponse>, Status> {
        self.ops.spawn(r.into_inner()).await.map(Response::new)
    }

    async fn mmap(
        &self,
        r: Request<pb::MmapRequest>,
    ) -> Result<Response<pb::MmapResponse>, Status> {
        self.ops.mmap(r.into_inner()).await.map(Response::new)
    }

    async fn munmap(
        &self,
        r: Request<pb::MunmapRequest>,
    ) -> Result<Response<pb::MunmapResponse>, Status> {
        self.ops.munmap(r.into_inner()).await.map(Response::new)
    }

    async fn mprotect(
        &self,
        r: Request<pb::MprotectRequest>,
    ) -> Result<Response<pb::MprotectResponse>, Status> {
        self.ops.mprotect(r.into_inner()).await.map(Response::new)
    }

    async fn mremap(
        &self,
        r: Request<pb::MremapRequest>,
    ) -> Result<Response<pb::MremapResponse>, Status> {
        self.ops.mremap(r.into_inner()).await.map(Response::new)
    }

    async fn madvise(
        &self,
        r: Request<pb::MadviseRequest>,
    ) -> Result<Response<pb::MadviseResponse>, Status> {
        self.ops.madvise(r.into_inner()).await.map(Response::new)
    }

    async fn brk(&self, r: Request<pb::BrkRequest>) -> Result<Response<pb::BrkResponse>, Status> {
        self.ops.brk(r.into_inner()).await.map(Response::new)
    }

    async fn fault(
        &self,
        r: Request<pb::FaultRequest>,
    ) -> Result<Response<pb::FaultResponse>, Status> {
        self.ops.fault(r.into_inner()).await.map(Response::new)
    }

    async fn fault_batch(
        &self,
        r: Request<pb::FaultBatchRequest>,
    ) -> Result<Response<pb::FaultBatchResponse>, Status> {
        self.ops
            .fault_batch(r.into_inner())
            .await
            .map(ops::Charged::into_response)
    }

    async fn fork(
        &self,
        r: Request<pb::ForkRequest>,
    ) -> Result<Response<pb::ForkResponse>, Status> {
        self.ops.fork(r.into_inner()).await.map(Response::new)
    }

    async fn exit(
        &self,
        r: Request<pb::ExitRequest>,
    ) -> Result<Response<pb::ExitResponse>, Status> {
        self.ops.exit(r.into_inner()).await.map(Response::new)
    }

    async fn maps(
        &self,
        r: Request<pb::MapsRequest>,
    ) -> Result<Response<pb::MapsResponse>, Status> {
        self.ops
            .maps(r.into_inner())
            .await
            .map(ops::Charged::into_response)
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(self.ops.stats()))
    }

    async fn list_race_scenarios(
        &self,
        _: Request<pb::ListRaceScenariosRequest>,
    ) -> Result<Response<pb::ListRaceScenariosResponse>, Status> {
        Ok(Response::new(self.ops.list_race_scenarios()))
    }

    async fn race_scenario(
        &self,
        r: Request<pb::RaceScenarioRequest>,
    ) -> Result<Response<pb::RaceScenarioResponse>, Status> {
        self.ops
            .race_scenario(r.into_inner())
            .await
            .map(Response::new)
    }

    type SessionStream = session::SessionStream;

    async fn session(
        &self,
        r: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Ok(session::session(&self.ops, r.into_inner()))
    }
}
