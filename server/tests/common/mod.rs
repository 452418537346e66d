//! The shared integration-test harness: one real server on `127.0.0.1:0`
//! (gRPC and `/metrics`), clients on fresh connections, the process's own
//! resident memory, and a metric reader. Test files `mod common;` it and
//! use what they need.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use vmasim_proto::v1::address_space_client::AddressSpaceClient;
use vmasim_proto::v1::{self as pb};
use vmasim_server::mm::sim::Simulator;
use vmasim_server::server::{Server, ServerConfig};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Guard against hangs only; nothing asserts how fast anything is.
pub const HANG: Duration = Duration::from_secs(30);

pub const PAGE: u64 = 4096;
pub const PROT_READ: u32 = 0x1;
pub const RW: u32 = 0x1 | 0x2;
pub const PRIVATE_ANON: u32 = 0x02 | 0x20;
pub const MAP_NORESERVE: u32 = 0x4000;

/// A server serving until [`TestServer::shutdown`].
pub struct TestServer {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub sim: Arc<Simulator>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), BoxError>>>,
}

impl TestServer {
    pub async fn start(cfg: ServerConfig) -> Self {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ga, ma) = (grpc.local_addr().unwrap(), metrics.local_addr().unwrap());
        let server = Server::new(cfg);
        let sim = server.simulator().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(grpc, Some(metrics), async move {
            let _ = rx.await;
        }));
        Self {
            grpc: ga,
            metrics: ma,
            sim,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap()
    }

    /// A new connection.
    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.unwrap()
    }

    /// A client on a new connection, accepting replies of any size.
    pub async fn client(&self) -> AddressSpaceClient<Channel> {
        AddressSpaceClient::new(self.channel().await).max_decoding_message_size(usize::MAX)
    }

    pub async fn metrics_text(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    }

    /// Stop and wait (bounded by [`HANG`]) for the server to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(HANG, self.task.take().unwrap())
            .await
            .expect("shutdown hung")
            .unwrap()
            .unwrap();
    }
}

/// Sum of the samples of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    let mut found = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap();
            found = true;
        }
    }
    assert!(found, "no sample {name}{labels:?} in\n{text}");
    sum
}

/// Resident set size of this process, bytes (/proc/self/status VmRSS).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

pub const MIB: u64 = 1 << 20;

pub async fn spawn(c: &mut AddressSpaceClient<Channel>) -> u32 {
    c.spawn(pb::SpawnRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pid
}

pub async fn mmap(
    c: &mut AddressSpaceClient<Channel>,
    pid: u32,
    len: u64,
    prot: u32,
    flags: u32,
) -> u64 {
    c.mmap(pb::MmapRequest {
        pid,
        length: len,
        prot,
        flags,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .addr
}
