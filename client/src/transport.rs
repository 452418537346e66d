//! One operation, two ways to send it: a unary RPC or the `Session` stream.
//!
//! The load generator and the demo build every operation as a
//! [`session_request::Op`] and get back a [`session_reply::Result`], so the
//! same worker code runs over unary calls (`--stream` off) and over one
//! bidirectional `Session` stream per worker (`--stream`). A reply with a
//! non-zero `code` on the stream becomes the same `tonic::Status` the unary
//! RPC would have returned, so callers see one error shape.

use crate::connect::Client;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use vmasim_proto::v1::session_reply::Result as Reply;
use vmasim_proto::v1::session_request::Op;
use vmasim_proto::v1::{Access, FaultBatchRequest, FaultRequest, SessionReply, SessionRequest};

/// How a worker talks to the server.
pub enum Transport {
    /// One unary RPC per operation.
    Unary(Client),
    /// One `Session` stream; one request in flight at a time, so replies
    /// come back in the order of requests and latency is per operation.
    Stream(Box<StreamConn>),
}

/// An open `Session` stream.
pub struct StreamConn {
    /// Kept to reopen the stream if it ends (e.g. after a server restart).
    client: Client,
    /// Requests go here; the receiving half is the request stream.
    tx: Option<mpsc::Sender<SessionRequest>>,
    /// Replies.
    rx: Option<Streaming<SessionReply>>,
    /// Id of the next request (echoed by the server, checked on reply).
    next_id: u64,
}

impl StreamConn {
    async fn open(&mut self) -> Result<(), Status> {
        let (tx, rx) = mpsc::channel(16);
        let replies = self
            .client
            .session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.tx = Some(tx);
        self.rx = Some(replies);
        Ok(())
    }

    async fn call(&mut self, op: Op) -> Result<Reply, Status> {
        if self.tx.is_none() {
            self.open().await?;
        }
        let id = self.next_id;
        self.next_id += 1;
        let req = SessionRequest { id, op: Some(op) };
        let sent = self.tx.as_ref().expect("opened").send(req).await;
        let reply = match sent {
            Ok(()) => self.rx.as_mut().expect("opened").message().await,
            Err(_) => Err(Status::unavailable("session stream closed")),
        };
        let reply = match reply {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.tx = None;
                self.rx = None;
                return Err(Status::unavailable("session stream ended"));
            }
            Err(s) => {
                self.tx = None;
                self.rx = None;
                return Err(s);
            }
        };
        if reply.id != id {
            return Err(Status::internal(format!(
                "session reply id {} for request {id}",
                reply.id
            )));
        }
        if reply.code != 0 {
            return Err(Status::new(Code::from(reply.code), reply.message));
        }
        reply
            .result
            .ok_or_else(|| Status::internal("session reply without result"))
    }
}

impl Transport {
    /// A transport over `client`, streaming or not. The stream is opened
    /// lazily on the first call.
    pub fn new(client: Client, stream: bool) -> Self {
        if stream {
            Transport::Stream(Box::new(StreamConn {
                client,
                tx: None,
                rx: None,
                next_id: 1,
            }))
        } else {
            Transport::Unary(client)
        }
    }

    /// Runs one operation and returns its result.
    pub async fn call(&mut self, op: Op) -> Result<Reply, Status> {
        let c = match self {
            Transport::Stream(s) => return s.call(op).await,
            Transport::Unary(c) => c,
        };
        // One arm per `Session` operation, from the proto crate's list:
        // the oneof variant, its reply variant and the unary stub share
        // the name.
        macro_rules! unary {
            ($($variant:ident => $method:ident,)*) => {
                match op {
                    $(Op::$variant(r) => Reply::$variant(c.$method(r).await?.into_inner()),)*
                }
            };
        }
        Ok(vmasim_proto::for_each_session_op!(unary))
    }
}

/// The fault of `addrs` as one operation: with `batch` 1 (`--batch 1`) a
/// unary `Fault` of the first address, else a `FaultBatch` of them all
/// (`totals_only`: it replies with totals, not a result per address).
pub fn fault_op(pid: u32, addrs: Vec<u64>, access: Access, batch: usize, totals_only: bool) -> Op {
    if batch == 1 {
        Op::Fault(FaultRequest {
            pid,
            addr: addrs[0],
            access: access as i32,
        })
    } else {
        Op::FaultBatch(FaultBatchRequest {
            pid,
            addrs,
            access: access as i32,
            totals_only,
        })
    }
}
