//! Accepting connections: a cap on how many are open, a deadline for the
//! HTTP/2 preface, and no busy loop when the process runs out of file
//! descriptors.
//!
//! Why shaped so: tonic's own `TcpIncoming` accepts without limit and
//! waits for a peer's first bytes forever, so a thousand half-open
//! connections stay open for good and, at the fd limit, `accept` fails in
//! a tight loop. This stream sits in its place (tonic still does TLS and
//! HTTP/2 on top): a connection past `--max-connections` is closed at
//! once (the peer sees a reset, its client UNAVAILABLE), and one that has
//! not sent the 24-byte HTTP/2 client preface within the handshake timeout
//! is closed with a read error. Quiet connections after that are HTTP/2's
//! business: the server PINGs them and drops peers that stop answering
//! (`ServerConfig::keepalive`).

use crate::telemetry::Telemetry;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Length of the HTTP/2 client connection preface (RFC 9113, 3.4).
const PREFACE_LEN: usize = 24;

/// Pause before accepting again after `accept` failed (EMFILE, ENFILE,
/// ENOMEM): the condition lasts, and retrying at once only burns CPU.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accepted connections, capped.
pub struct Incoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    telemetry: Arc<Telemetry>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    /// Accept on `listener`, at most `max` connections open at once.
    pub fn new(
        listener: TcpListener,
        max: usize,
        handshake_timeout: Duration,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            handshake_timeout,
            telemetry,
            backoff: None,
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.backoff.as_mut() {
                std::task::ready!(b.as_mut().poll(cx));
                this.backoff = None;
            }
            let (stream, _) = match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(s)) => s,
                Poll::Ready(Err(e)) => {
                    tracing::warn!("accept failed: {e}; pausing {ACCEPT_BACKOFF:?}");
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    continue;
                }
            };
            let Ok(slot) = this.slots.clone().try_acquire_owned() else {
                // Over the cap: close at once (dropping the stream).
                this.telemetry.connection_refused("limit");
                continue;
            };
            // TCP_NODELAY: small gRPC frames must not wait for Nagle plus a
            // delayed ACK (40 ms on Linux loopback).
            let _ = stream.set_nodelay(true);
            this.telemetry.connection_opened();
            return Poll::Ready(Some(Ok(Conn {
                io: stream,
                _slot: slot,
                preface_left: PREFACE_LEN,
                handshake: Some(Box::pin(tokio::time::sleep(this.handshake_timeout))),
                telemetry: this.telemetry.clone(),
            })));
        }
    }
}

/// One accepted connection: the TCP stream, its slot under the cap, and
/// the handshake deadline until the preface has arrived.
pub struct Conn {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    preface_left: usize,
    handshake: Option<Pin<Box<tokio::time::Sleep>>>,
    telemetry: Arc<Telemetry>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.telemetry.connection_closed();
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let n = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(n);
                if this.preface_left == 0 {
                    this.handshake = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(h) = this.handshake.as_mut()
                    && h.as_mut().poll(cx).is_ready()
                {
                    this.handshake = None;
                    this.telemetry.connection_refused("handshake_timeout");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
