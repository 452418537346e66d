//! The RPC layer: one tower layer for everything that must see *every*
//! call, including the ones it refuses: the global concurrency limit
//! (RESOURCE_EXHAUSTED at once when full, never a queue; health checks
//! exempt so a busy server still answers its probes), the request
//! timeout, reply delivery in slices, and the RPC metrics (latency until
//! the response body ends, status code from the headers or trailers).
//!
//! The server's own timeout is done here rather than with tonic's
//! `Server::timeout`, because tonic applies that outside custom layers,
//! where the metrics would not see the calls it cuts off. A client's
//! `grpc-timeout` is still honoured by tonic.

use super::call::{CallCtx, ReplyHold};
use super::{SERVICE_NAME, stopped};
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
use tonic::{Code, Status};
use tower::{Layer, Service};

/// Replies larger than this reach HTTP/2 in copies of this size, so that
/// the undelivered rest stays where its deadline can drop it.
const REPLY_SLICE: usize = 16 << 10;

/// See the module documentation.
#[derive(Clone)]
pub(super) struct RpcLayer {
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) limit: Arc<Semaphore>,
    /// Health `Watch` streams: exempt from `limit` like every health call,
    /// but long-lived, so capped on their own.
    pub(super) watch_limit: Arc<Semaphore>,
    pub(super) timeout: Duration,
    /// Turns true at shutdown: open streams other than `Session` (which
    /// ends itself) end with UNAVAILABLE so the drain need not wait.
    pub(super) stop: watch::Receiver<bool>,
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
pub(super) struct RpcService<S> {
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
            Some((&self.layer.limit, super::call::CONCURRENCY_LIMIT_MESSAGE))
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
pub(super) struct RpcBody {
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
}
