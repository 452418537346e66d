//! What one call carries from the RPC layer into the service: its
//! concurrency slot, its deadline, whether the client has abandoned it,
//! and the memory its reply pins.
//!
//! Why shaped so:
//!
//! * **The slot follows the work, not the future.** A handler's future can
//!   be dropped at any time (the client resets the stream, its
//!   `grpc-timeout` passes, the server's `--request-timeout` fires), but
//!   the engine work it started on the blocking pool runs to the end. If
//!   the slot were freed with the future, a client with a 3 ms deadline
//!   could keep any number of engine calls running behind a limit of 4.
//!   So the slot lives in a [`CallCtx`] the layer creates, and every
//!   piece of blocking work holds a clone: the slot is free only when the
//!   future *and* the work are gone.
//! * **Work that was abandoned does not start.** The blocking closure
//!   checks [`CallCtx::check_live`] first: a call whose client is gone or
//!   whose deadline has passed does nothing and says so. Work that was
//!   already running when the call was abandoned completes; the service
//!   undoes what would otherwise be lost for good (a forked or spawned
//!   process whose pid nobody received) and counts the rest
//!   (`vmasim_rpc_applied_after_abandon_total`).
//! * **A task-local, not a parameter.** The layer runs the handler inside
//!   [`CallCtx::scope`], so the service finds its context without every
//!   `op_*` function growing an argument, and code called outside a server
//!   (the fuzzer, tests of the service alone) simply has none.
//! * **Reply bytes are budgeted.** A reply larger than a few KiB is
//!   charged against one server-wide [`ReplyBudget`] before it exists (for
//!   a `FaultBatch`, from its size bound) or right after it is built (for
//!   `Maps`), and the charge is held by the response body until the last
//!   byte has gone to HTTP/2 or the call's time is up. A client that never
//!   reads can therefore pin at most the budget, whatever number of calls
//!   or streams it opens.

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

tokio::task_local! {
    static CALL: CallCtx;
}

/// One call's slot, deadline and abandonment flag. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CallCtx {
    inner: Arc<CallInner>,
}

#[derive(Debug)]
struct CallInner {
    /// The concurrency slot; released when the last clone drops.
    _slot: Option<OwnedSemaphorePermit>,
    /// The earlier of the server's request timeout and the client's
    /// `grpc-timeout`.
    deadline: Option<Instant>,
    /// Set when the layer's future was dropped before it answered.
    abandoned: AtomicBool,
}

impl CallCtx {
    /// A context holding `slot` until the call and all its work are done.
    pub fn new(slot: Option<OwnedSemaphorePermit>, deadline: Option<Instant>) -> Self {
        Self {
            inner: Arc::new(CallInner {
                _slot: slot,
                deadline,
                abandoned: AtomicBool::new(false),
            }),
        }
    }

    /// The context of the call being served on this task, if any.
    pub fn current() -> Option<CallCtx> {
        CALL.try_with(|c| c.clone()).ok()
    }

    /// Run `fut` with `self` as the current call.
    pub async fn scope<F: std::future::Future>(self, fut: F) -> F::Output {
        CALL.scope(self, fut).await
    }

    /// The call's deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Mark the call abandoned: nobody will read its answer.
    pub fn abandon(&self) {
        // Relaxed: a hint read by work that has not started yet; nothing
        // else is published through it.
        self.inner.abandoned.store(true, Ordering::Relaxed);
    }

    /// Has the client gone, or the deadline passed?
    pub fn is_dead(&self) -> bool {
        self.inner.abandoned.load(Ordering::Relaxed)
            || self.inner.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// `Ok` if the call's answer can still reach the client; otherwise the
    /// status saying that `what` was not done.
    pub fn check_live(&self, what: &str) -> Result<(), Status> {
        if self.inner.abandoned.load(Ordering::Relaxed) {
            return Err(Status::cancelled(format!(
                "{what}: the call was cancelled before it ran; nothing was done"
            )));
        }
        if self.inner.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Status::deadline_exceeded(format!(
                "{what}: the deadline passed before it ran; nothing was done"
            )));
        }
        Ok(())
    }
}

/// The message of a call refused because every concurrency slot is taken
/// (unary calls in the RPC layer, `Session` operations in the service).
pub const CONCURRENCY_LIMIT_MESSAGE: &str = "server concurrency limit reached; retry later";

/// Replies up to this size are not charged: the small answers of the
/// mutating calls (an address, a count) must never fail for want of
/// budget after their work is done. The count of such replies is bounded
/// by the slots and streams, so their bytes are too.
pub const CHARGE_MIN_BYTES: usize = 4096;

/// The bytes of replies built but not yet handed to HTTP/2, server-wide.
#[derive(Debug)]
pub struct ReplyBudget {
    sem: Arc<Semaphore>,
    limit: usize,
}

/// Bytes charged against a [`ReplyBudget`]; returned on drop.
#[derive(Debug)]
pub struct Charge(#[allow(dead_code)] OwnedSemaphorePermit);

impl ReplyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Self {
            sem: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// The limit, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.limit - self.sem.available_permits()
    }

    fn permits(bytes: usize) -> u32 {
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// Charge `bytes` now or fail with RESOURCE_EXHAUSTED. Small replies
    /// ([`CHARGE_MIN_BYTES`]) are free.
    pub fn try_charge(&self, bytes: usize, what: &str) -> Result<Option<Charge>, Status> {
        if bytes <= CHARGE_MIN_BYTES {
            return Ok(None);
        }
        self.sem
            .clone()
            .try_acquire_many_owned(Self::permits(bytes.min(self.limit)))
            .map(|p| Some(Charge(p)))
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{what}: the server already holds {} bytes of replies clients have not read \
                     (--max-reply-buffer-bytes {}); nothing was done, retry later",
                    self.used(),
                    self.limit
                ))
            })
    }

    /// Charge `bytes`, waiting for room (a `Session` stream, whose replies
    /// wait in order anyway).
    pub async fn charge(&self, bytes: usize) -> Option<Charge> {
        if bytes <= CHARGE_MIN_BYTES {
            return None;
        }
        self.sem
            .clone()
            .acquire_many_owned(Self::permits(bytes.min(self.limit)))
            .await
            .ok()
            .map(Charge)
    }
}

/// A response body's reply memory, shared between the body (which hands
/// it to HTTP/2 in small copies), whoever charged it (the service), and
/// the timer that drops it when the call's time is up.
#[derive(Clone, Debug, Default)]
pub struct ReplyHold {
    inner: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    /// Encoded reply bytes not yet handed to HTTP/2.
    pending: Bytes,
    /// The budget charge for the reply being delivered.
    charge: Option<Charge>,
    /// Set when the call's time ran out: the body ends with this status.
    expired: Option<Status>,
}

impl ReplyHold {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding it cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold `charge` for the reply now being delivered (the previous one
    /// has been handed over by then).
    pub fn set_charge(&self, charge: Option<Charge>) {
        self.lock().charge = charge;
    }

    /// Time is up: drop the undelivered bytes and the charge, and end the
    /// body with `status` when it is next polled.
    pub fn expire(&self, status: Status) {
        let mut h = self.lock();
        h.pending = Bytes::new();
        h.charge = None;
        h.expired.get_or_insert(status);
    }

    /// The expiry status, once (the body's last frame).
    pub(crate) fn take_expired(&self) -> Option<Status> {
        self.lock().expired.take()
    }

    pub(crate) fn is_expired(&self) -> bool {
        self.lock().expired.is_some()
    }

    /// Keep `data` to be handed out in slices.
    pub(crate) fn stash(&self, data: Bytes) {
        let mut h = self.lock();
        if h.expired.is_none() {
            h.pending = data;
        }
    }

    /// The next slice of at most `max` bytes, copied so that HTTP/2 never
    /// keeps the whole reply alive through a reference to it.
    pub(crate) fn next_slice(&self, max: usize) -> Option<Bytes> {
        let mut h = self.lock();
        if h.pending.is_empty() {
            return None;
        }
        let n = h.pending.len().min(max);
        let slice = Bytes::copy_from_slice(&h.pending[..n]);
        let rest = h.pending.slice(n..);
        h.pending = rest;
        if h.pending.is_empty() {
            // Delivered: the reply's charge goes back with its bytes.
            h.pending = Bytes::new();
            h.charge = None;
        }
        Some(slice)
    }

    /// Drop everything now (the call is over).
    pub(crate) fn release(&self) {
        let mut h = self.lock();
        h.pending = Bytes::new();
        h.charge = None;
    }
}
