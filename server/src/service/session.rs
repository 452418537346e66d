//! The `Session` stream: one task per stream runs the operations in order
//! and queues their replies; each is answered exactly like its unary RPC.
//!
//! Why shaped so:
//!
//! * **Backpressure.** Replies go into a bounded channel of
//!   `stream_buffer` entries. When the client stops reading, the channel
//!   fills, the task stops reading requests, and HTTP/2 flow control
//!   pushes back on the client: nothing is buffered without bound. A reply
//!   left unread for the request timeout ends the stream and drops what
//!   was queued.
//! * **A Session holds a concurrency slot only while it works.** Each
//!   operation on the stream takes a slot of `--concurrency-limit` for as
//!   long as its engine work runs, exactly like a unary call, and gets
//!   RESOURCE_EXHAUSTED when none is free. An idle stream (a load
//!   generator between requests, or one that never sends) holds no slot,
//!   so idle streams cannot lock other clients out; what an idle stream
//!   costs is bounded by the connection and per-connection stream caps.
//! * **One dispatch list.** Operation → [`Ops`] method comes from the
//!   proto crate's [`vmasim_proto::for_each_session_op!`], the list the
//!   client's unary fallback is generated from too.

use super::convert::invalid;
use super::ops::{Charged, Ops};
use crate::server::call::{CallCtx, Charge, ReplyHold};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Response, Status, Streaming};
use vmasim_proto::v1::{self as pb, session_reply, session_request};

/// The response stream of `Session`.
pub(super) type SessionStream =
    Pin<Box<dyn Stream<Item = Result<pb::SessionReply, Status>> + Send>>;

/// A `Session` reply and the budget charge of its bytes.
type QueuedItem = (Result<pb::SessionReply, Status>, Option<Charge>);

/// One queued `Session` reply. The task keeps a weak reference to every
/// queued reply so that, when the client stops reading for longer than
/// the request timeout, it can drop them from its side of the channel.
type Queued = Arc<std::sync::Mutex<Option<QueuedItem>>>;

fn queued(item: Result<pb::SessionReply, Status>, charge: Option<Charge>) -> Queued {
    Arc::new(std::sync::Mutex::new(Some((item, charge))))
}

/// Replies queued on a `Session` stream and when they were queued.
type SentLog = std::collections::VecDeque<(
    std::sync::Weak<std::sync::Mutex<Option<QueuedItem>>>,
    tokio::time::Instant,
)>;

/// Drop the contents of every reply still queued.
fn drain(sent: &mut SentLog) {
    for (w, _) in sent.drain(..) {
        if let Some(q) = w.upgrade() {
            q.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
}

/// Serve one `Session` stream of `inbound` requests on `ops`.
pub(super) fn session(
    ops: &Arc<Ops>,
    mut inbound: Streaming<pb::SessionRequest>,
) -> Response<SessionStream> {
    let (tx, rx) = mpsc::channel::<Queued>(ops.limits.stream_buffer.max(1));
    let this = ops.clone();
    let mut shutdown = ops.shutdown.clone();
    let hold = ReplyHold::default();
    let task_hold = hold.clone();
    let patience = ops.limits.request_timeout;
    let buffer = ops.limits.stream_buffer.max(1);
    let push_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut sent = SentLog::new();
        let stop = async move {
            let _ = shutdown.wait_for(|&s| s).await;
        };
        tokio::pin!(stop);
        // Queue one reply; false when the stream is over (client gone,
        // not reading for longer than `patience`, or, while it waits
        // for room, the server shutting down: a client that does not
        // read must not hold the drain up).
        let push = |tx: &mpsc::Sender<Queued>,
                    sent: &mut std::collections::VecDeque<_>,
                    item: Result<pb::SessionReply, Status>,
                    charge: Option<Charge>| {
            let q = queued(item, charge);
            if sent.len() >= 2 * buffer {
                sent.retain(|(w, _): &(std::sync::Weak<_>, _)| w.strong_count() > 0);
            }
            sent.push_back((Arc::downgrade(&q), tokio::time::Instant::now()));
            let tx = tx.clone();
            let mut shutdown = push_shutdown.clone();
            async move {
                tokio::select! {
                    // Room first: the last reply (UNAVAILABLE at
                    // shutdown) still goes out if it fits.
                    biased;
                    r = tokio::time::timeout(patience, tx.send(q)) => matches!(r, Ok(Ok(()))),
                    _ = shutdown.wait_for(|&s| s) => false,
                }
            }
        };
        let expire = |sent: &mut SentLog| {
            drain(sent);
            let status = if *push_shutdown.borrow() {
                Status::unavailable("server is shutting down")
            } else {
                Status::deadline_exceeded(format!(
                    "Session: replies not read for {}; stream closed",
                    humantime::format_duration(patience)
                ))
            };
            task_hold.expire(status);
        };
        loop {
            // Replies the client has taken are gone from the front.
            while sent
                .front()
                .is_some_and(|(w, _): &(std::sync::Weak<_>, _)| w.strong_count() == 0)
            {
                sent.pop_front();
            }
            let oldest = sent.front().map(|(_, t)| *t);
            let next = tokio::select! {
                // Shutdown first: stop taking new work as soon as it
                // starts; the operation in hand has already finished.
                biased;
                _ = &mut stop => {
                    let _ = push(&tx, &mut sent, Err(Status::unavailable("server is shutting down")), None).await;
                    return;
                }
                // A reply left unread for `patience`, even with no new
                // request coming: the client is not reading.
                _ = tokio::time::sleep_until(oldest.unwrap_or_else(tokio::time::Instant::now) + patience), if oldest.is_some() => {
                    if sent.front().is_some_and(|(w, t)| w.strong_count() > 0 && t.elapsed() >= patience) {
                        expire(&mut sent);
                        return;
                    }
                    continue;
                }
                m = inbound.message() => m,
            };
            match next {
                Ok(Some(req)) => {
                    if tx.is_closed() {
                        return;
                    }
                    let op = session_op_name(&req);
                    // Each operation is a call of its own inside the
                    // stream: it holds a concurrency slot while its
                    // work runs (and only then), no deadline.
                    let (reply, charge) = match this.slot() {
                        Ok(slot) => CallCtx::new(slot, None).scope(this.session_op(req)).await,
                        Err(status) => (failed(req.id, &status), None),
                    };
                    if tx.is_closed() {
                        // Nobody will read this reply: undo what would
                        // be lost for good, count what stands.
                        this.abandoned(op, &reply);
                        return;
                    }
                    // Waits while `stream_buffer` replies are unread:
                    // that is the backpressure. Past `patience` the
                    // client is not reading at all: end the stream and
                    // drop what it left queued.
                    if !push(&tx, &mut sent, Ok(reply), charge).await {
                        expire(&mut sent);
                        return;
                    }
                }
                // The client closed its side: end the stream with OK.
                Ok(None) => return,
                // Undecodable message or transport error.
                Err(status) => {
                    // A message over the decode limit: the gRPC
                    // status for it is RESOURCE_EXHAUSTED.
                    let status = if status.code() == Code::OutOfRange {
                        Status::resource_exhausted(status.message().to_string())
                    } else {
                        status
                    };
                    let _ = push(&tx, &mut sent, Err(status), None).await;
                    return;
                }
            }
        }
    });
    // Hand each reply over, moving its charge to the body's hold: the
    // bytes are then the body's until they reach HTTP/2.
    let body_hold = hold.clone();
    let stream = ReceiverStream::new(rx).filter_map(move |q| {
        let item = q.lock().unwrap_or_else(|e| e.into_inner()).take();
        item.map(|(reply, charge)| {
            body_hold.set_charge(charge);
            reply
        })
    });
    let mut resp = Response::new(Box::pin(stream) as SessionStream);
    resp.extensions_mut().insert(hold);
    resp
}

/// The reply to request `id` that failed with `status`: the status a
/// unary call would have ended with, in the reply's `code` and `message`.
fn failed(id: u64, status: &Status) -> pb::SessionReply {
    pb::SessionReply {
        id,
        code: status.code() as i32,
        message: status.message().to_string(),
        result: None,
    }
}

/// The method name of a `Session` operation (for the abandoned-call
/// counters).
fn session_op_name(req: &pb::SessionRequest) -> &'static str {
    req.op
        .as_ref()
        .map_or("Session", session_request::Op::method)
}

impl Ops {
    /// One `Session` operation: the reply and the budget charge of its
    /// bytes, if large.
    pub(super) async fn session_op(
        &self,
        req: pb::SessionRequest,
    ) -> (pb::SessionReply, Option<Charge>) {
        use session_reply::Result as R;
        use session_request::Op;
        // One arm per operation, from the proto crate's list: the oneof
        // variant, its reply variant and the `Ops` method share the name.
        macro_rules! dispatch {
            ($($variant:ident => $method:ident,)*) => {
                match req.op {
                    None => Err(invalid("op", "not set")),
                    $(Some(Op::$variant(r)) => self.$method(r).await.map(|r| {
                        let c: Charged<_> = r.into();
                        (R::$variant(c.reply), c.charge)
                    }),)*
                }
            };
        }
        let result: Result<(R, Option<Charge>), Status> =
            vmasim_proto::for_each_session_op!(dispatch);
        match result {
            Ok((r, charge)) => (
                pb::SessionReply {
                    id: req.id,
                    code: Code::Ok as i32,
                    message: String::new(),
                    result: Some(r),
                },
                charge,
            ),
            Err(s) => (failed(req.id, &s), None),
        }
    }

    /// A concurrency slot for one `Session` operation, or the
    /// RESOURCE_EXHAUSTED a unary call would get.
    fn slot(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Status> {
        match &self.slots {
            None => Ok(None),
            Some(sem) => sem.clone().try_acquire_owned().map(Some).map_err(|_| {
                Status::resource_exhausted(crate::server::call::CONCURRENCY_LIMIT_MESSAGE)
            }),
        }
    }

    /// A `Session` operation finished after its stream's client had gone:
    /// exit a process nobody received the pid of, count what stands.
    fn abandoned(&self, op: &'static str, reply: &pb::SessionReply) {
        use session_reply::Result as R;
        let t = &self.telemetry;
        match &reply.result {
            Some(R::Spawn(s)) => {
                let _ = self.sim.exit(s.pid);
                t.undone_after_abandon(op);
            }
            Some(R::Fork(f)) => {
                let _ = self.sim.exit(f.child_pid);
                t.undone_after_abandon(op);
            }
            Some(R::Maps(_)) | None => {}
            Some(_) => t.applied_after_abandon(op),
        }
    }
}
