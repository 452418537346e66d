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
//! not sent the whole HTTP/2 client preface within the handshake timeout
//! is closed with a read error. The preface is the 24-byte magic *and* the
//! SETTINGS frame that must follow it (RFC 9113, 3.4): a peer that sends
//! the magic and stops is as half-open as one that sends nothing. Quiet
//! connections after that are HTTP/2's business: the server PINGs them and
//! drops peers that stop answering (`ServerConfig::keepalive`).
//!
//! At the fd limit `accept` fails with EMFILE while connections wait in
//! the listen backlog. Each failure is counted
//! (`vmasim_accept_errors_total`) and followed by a pause, so the server
//! does not spin; once half-open connections time out, fds are free again
//! and the backlog drains.
//!
//! At shutdown hyper sends GOAWAY and waits for each connection's streams
//! to end, but a stream whose peer grants no flow-control window (or never
//! reads at all) cannot even be sent its end. So once shutdown starts, a
//! connection on which nothing is read or written for `DRAIN_IDLE` fails
//! its I/O and is closed; one that is still moving bytes (a client reading
//! a large reply) is left to finish.

use crate::telemetry::Telemetry;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Length of the HTTP/2 client connection preface's magic (RFC 9113, 3.4).
const PREFACE_LEN: usize = 24;

/// Length of an HTTP/2 frame header (RFC 9113, 4.1).
const FRAME_HEADER_LEN: usize = 9;

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
    stop: watch::Receiver<bool>,
}

impl Incoming {
    /// Accept on `listener`, at most `max` connections open at once;
    /// `stop` turns true when the server starts shutting down.
    pub fn new(
        listener: TcpListener,
        max: usize,
        handshake_timeout: Duration,
        telemetry: Arc<Telemetry>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            handshake_timeout,
            telemetry,
            backoff: None,
            stop,
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
                    this.telemetry.accept_error();
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
                preface: Preface::default(),
                handshake: Some(Box::pin(tokio::time::sleep(this.handshake_timeout))),
                telemetry: this.telemetry.clone(),
                drain: Drain::Serving(Box::pin(stopped(this.stop.clone()))),
            })));
        }
    }
}

/// How much of the client preface (magic, then a SETTINGS frame) has
/// arrived. Only lengths are tracked: checking the bytes is hyper's job.
#[derive(Debug)]
struct Preface {
    /// Bytes seen so far.
    seen: usize,
    /// The first frame's header, once its bytes arrive.
    header: [u8; FRAME_HEADER_LEN],
    /// Bytes the preface takes: magic + frame header, then + the frame's
    /// payload length once the header is known.
    need: usize,
}

impl Default for Preface {
    fn default() -> Self {
        Self {
            seen: 0,
            header: [0; FRAME_HEADER_LEN],
            need: PREFACE_LEN + FRAME_HEADER_LEN,
        }
    }
}

impl Preface {
    /// Account for `data` just read; true once the whole preface is in.
    fn observe(&mut self, data: &[u8]) -> bool {
        let mut i = 0;
        while i < data.len() && self.seen < self.need {
            let h = self.seen.wrapping_sub(PREFACE_LEN);
            if h < FRAME_HEADER_LEN {
                self.header[h] = data[i];
                if h == FRAME_HEADER_LEN - 1 {
                    // The frame's 24-bit payload length.
                    let len = (usize::from(self.header[0]) << 16)
                        | (usize::from(self.header[1]) << 8)
                        | usize::from(self.header[2]);
                    self.need = PREFACE_LEN + FRAME_HEADER_LEN + len;
                }
                self.seen += 1;
                i += 1;
            } else {
                // Inside the magic (up to its end) or the payload.
                let stop = if self.seen < PREFACE_LEN {
                    PREFACE_LEN
                } else {
                    self.need
                };
                let n = (data.len() - i).min(stop - self.seen);
                self.seen += n;
                i += n;
            }
        }
        self.seen >= self.need
    }
}

/// One accepted connection: the TCP stream, its slot under the cap, and
/// the handshake deadline until the preface has arrived.
pub struct Conn {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    preface: Preface,
    handshake: Option<Pin<Box<tokio::time::Sleep>>>,
    telemetry: Arc<Telemetry>,
    drain: Drain,
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

/// A connection's part in the shutdown drain.
enum Drain {
    /// Not shutting down; resolves when shutdown starts.
    Serving(Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    /// Shutting down: closed if no I/O happens before this fires (pushed
    /// back by every read or write that moves bytes).
    Draining(Pin<Box<Sleep>>),
    /// Closed for idling through the drain.
    Closed,
}

impl Conn {
    /// Called when an I/O call is about to return `Pending`: during the
    /// drain, the error that closes a connection idle for `DRAIN_IDLE`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            match &mut self.drain {
                Drain::Serving(stop) => {
                    if stop.as_mut().poll(cx).is_pending() {
                        return None;
                    }
                    let idle = Box::pin(tokio::time::sleep(crate::server::DRAIN_IDLE));
                    self.drain = Drain::Draining(idle);
                }
                Drain::Draining(idle) => {
                    if idle.as_mut().poll(cx).is_pending() {
                        return None;
                    }
                    self.drain = Drain::Closed;
                }
                Drain::Closed => {
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "shutting down: nothing read or written on this connection for the drain's idle limit",
                    ));
                }
            }
        }
    }

    /// Bytes moved: during the drain, the idle limit starts again.
    fn progress(&mut self) {
        if let Drain::Draining(idle) = &mut self.drain {
            idle.as_mut()
                .reset(Instant::now() + crate::server::DRAIN_IDLE);
        }
    }
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
                if this.handshake.is_some() && this.preface.observe(&buf.filled()[before..]) {
                    this.handshake = None;
                }
                if buf.filled().len() > before {
                    this.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(e) = this.poll_drain(cx) {
                    return Poll::Ready(Err(e));
                }
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

impl Conn {
    /// Bytes written count as progress; a blocked write (the peer does not
    /// read) is where the drain's idle limit can fire.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.progress();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.poll_drain(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            r => r,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_flush(cx) {
            // A peer that does not read: the socket buffer stays full.
            Poll::Pending => match this.poll_drain(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[test]
    fn the_preface_is_the_magic_and_a_whole_settings_frame() {
        // An empty SETTINGS frame right after the magic.
        let mut p = Preface::default();
        let mut all = MAGIC.to_vec();
        all.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert!(p.observe(&all));
        // The magic alone is not enough, nor the header without its
        // payload, however the bytes are split.
        let mut with_payload = MAGIC.to_vec();
        with_payload.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1]);
        for split in 1..with_payload.len() {
            let mut p = Preface::default();
            let (a, b) = with_payload.split_at(split);
            assert!(!p.observe(a), "complete after {split} bytes");
            assert!(p.observe(b), "not complete after all bytes (split {split})");
        }
        let mut p = Preface::default();
        assert!(!p.observe(MAGIC));
        for &b in &with_payload[MAGIC.len()..with_payload.len() - 1] {
            assert!(!p.observe(&[b]));
        }
        assert!(p.observe(&with_payload[with_payload.len() - 1..]));
    }
}
