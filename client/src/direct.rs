//! A gRPC transport straight over one HTTP/2 connection (the `h2` crate),
//! for the calls `vmasim bench` measures.
//!
//! tonic's `Channel` puts a `tower::Buffer` in front of hyper's HTTP/2
//! client: a call goes to the buffer's worker task over one channel, from
//! there to hyper's connection task over another, and hyper spawns a task
//! per call to wait for its response and hand it back over a third. On a
//! multi-threaded runtime, shared in the embedded bench with the server,
//! each hop is a wake-up that may cross threads; profiled, the closed loop
//! spent about twice h2load's CPU time per call, most of it there. A
//! [`Via::H2`] call does what h2load does: the caller's own task opens the
//! stream, queues HEADERS and the request's DATA with END_STREAM, and reads
//! the reply; only the connection's I/O runs in a task of its own. The
//! call itself is unchanged: tonic's generated client encodes the request,
//! decodes the reply and turns `grpc-status` into a `Status` exactly as
//! over a `Channel`, through the same interceptor.
//!
//! What `Channel` adds and this does not: reconnection, TLS and the
//! per-call `--timeout`. So only plain `http://` targets get [`Via::H2`];
//! anything else keeps a `Channel` ([`Via::Channel`]), and a broken
//! connection fails its calls rather than reconnecting.

use crate::connect::{Auth, MAX_DECODE, Target};
use crate::error::CliError;
use bytes::Bytes;
use http_body::{Body, Frame};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use vmasim_proto::v1::address_space_client::AddressSpaceClient;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HTTP/2 window sizes hyper gives tonic's channels (stream, connection),
/// so the two transports differ in tasks, not in flow control.
const STREAM_WINDOW: u32 = 2 << 20;
const CONN_WINDOW: u32 = 5 << 20;

/// The service client over a [`Via`].
pub type DirectClient = AddressSpaceClient<InterceptedService<Via, Auth>>;

/// The health client over a [`Via`].
pub type DirectHealth = HealthClient<InterceptedService<Via, Auth>>;

/// One connection's calls: straight over h2, or through a `Channel`.
#[derive(Clone)]
pub enum Via {
    /// Plain HTTP: the caller's task drives its stream (module docs).
    H2(h2::client::SendRequest<Bytes>),
    /// TLS: tonic's channel.
    Channel(Channel),
}

impl Via {
    /// Opens one connection to `target`: TCP (no Nagle, as `Channel`
    /// does), the HTTP/2 handshake, and a task for the connection's I/O.
    pub async fn connect(target: &Target) -> Result<Self, CliError> {
        let Some(authority) = target
            .url
            .strip_prefix("http://")
            .filter(|_| target.tls_ca.is_none())
        else {
            return Ok(Via::Channel(target.channel().await?));
        };
        let authority = authority.trim_end_matches('/').to_string();
        let fail = |e: &dyn std::fmt::Display| {
            CliError::Connect(format!("cannot connect to {}: {e}", target.url))
        };
        let open = async {
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| fail(&e))?;
            tcp.set_nodelay(true).map_err(|e| fail(&e))?;
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONN_WINDOW)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(|e| fail(&e))?;
            tokio::spawn(async move {
                // Its calls see the error; nothing to add here.
                let _ = conn.await;
            });
            send.ready().await.map_err(|e| fail(&e))
        };
        let send = tokio::time::timeout(target.connect_timeout, open)
            .await
            .map_err(|_| fail(&"no HTTP/2 answer within --connect-timeout"))??;
        Ok(Via::H2(send))
    }

    /// The service client, with the token interceptor of
    /// [`Target::client`] and its message size limits.
    pub fn client(&self, target: &Target) -> Result<DirectClient, CliError> {
        let svc = InterceptedService::new(self.clone(), Auth::new(target.token.as_deref())?);
        Ok(AddressSpaceClient::with_origin(svc, origin(target)?)
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(MAX_DECODE))
    }

    /// The health client, with the same interceptor.
    pub fn health(&self, target: &Target) -> Result<DirectHealth, CliError> {
        let svc = InterceptedService::new(self.clone(), Auth::new(target.token.as_deref())?);
        Ok(HealthClient::with_origin(svc, origin(target)?))
    }
}

/// Scheme and authority for the request URIs: tonic's generated clients
/// send a bare path, which `Channel` completes and h2 needs complete.
fn origin(target: &Target) -> Result<http::Uri, CliError> {
    target
        .url
        .parse()
        .map_err(|e| CliError::Usage(format!("bad --server URL `{}`: {e}", target.url)))
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Via {
    type Response = http::Response<Reply>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Via::H2(send) => send.poll_ready(cx).map_err(Into::into),
            Via::Channel(ch) => {
                tower_service::Service::<http::Request<tonic::body::Body>>::poll_ready(ch, cx)
                    .map_err(Into::into)
            }
        }
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let send = match self {
            Via::H2(send) => send,
            Via::Channel(ch) => {
                let fut = ch.call(req);
                return Box::pin(async move { Ok(fut.await?.map(Reply::Channel)) });
            }
        };
        let (parts, mut body) = req.into_parts();
        // Opening the stream here, on the handle `poll_ready` found ready,
        // keeps h2's limit on concurrent streams in force.
        let opened = send.send_request(http::Request::from_parts(parts, ()), false);
        Box::pin(async move {
            let (reply, mut tx) = opened?;
            // A unary request's body is ready at once (one encoded message);
            // the last DATA frame carries END_STREAM, as h2load sends it.
            let mut last: Option<Bytes> = None;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                match frame {
                    Ok(f) => {
                        if let Ok(data) = f.into_data()
                            && let Some(prev) = last.replace(data)
                        {
                            tx.send_data(prev, false)?;
                        }
                    }
                    Err(status) => {
                        tx.send_reset(h2::Reason::CANCEL);
                        return Err(status.into());
                    }
                }
            }
            tx.send_data(last.unwrap_or_default(), true)?;
            Ok(reply.await?.map(Reply::H2))
        })
    }
}

/// A reply's body: its DATA frames, then the trailers (`grpc-status`).
#[derive(Default)]
pub enum Reply {
    /// Nothing (what an interceptor's refusal carries).
    #[default]
    Empty,
    /// Read straight from the h2 stream.
    H2(h2::RecvStream),
    /// Through a `Channel`.
    Channel(tonic::body::Body),
}

impl Body for Reply {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let rx = match self.get_mut() {
            Reply::Empty => return Poll::Ready(None),
            Reply::Channel(b) => return Pin::new(b).poll_frame(cx).map_err(Into::into),
            Reply::H2(rx) => rx,
        };
        if let Some(data) = ready!(rx.poll_data(cx)) {
            let data = data?;
            // Read: give the window back, as hyper does.
            let _ = rx.flow_control().release_capacity(data.len());
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(
            ready!(rx.poll_trailers(cx))
                .map_err(Into::into)
                .transpose()
                .map(|t| t.map(Frame::trailers)),
        )
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Empty => true,
            Reply::H2(rx) => rx.is_end_stream(),
            Reply::Channel(b) => b.is_end_stream(),
        }
    }
}
