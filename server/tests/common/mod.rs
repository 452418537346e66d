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

/// A hand-written HTTP/2 client for the cases a well-behaved client cannot
/// produce: it opens streams, sends gRPC requests, and then never reads a
/// byte (or never even sends the preface).
pub mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK literal header field without indexing, literal name.
    fn header(block: &mut Vec<u8>, name: &str, value: &str) {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }

    /// A connection that has sent the preface and an empty SETTINGS
    /// frame with a tiny initial window (so the server can send almost
    /// nothing), and answers nothing.
    pub async fn connect(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = PREFACE.to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE (4) = 1 byte per stream.
        out.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 1]));
        s.write_all(&out).await.unwrap();
        s
    }

    /// Send one unary gRPC request on `stream` (odd, increasing).
    pub async fn call(s: &mut TcpStream, stream: u32, path: &str, message: &[u8]) {
        let mut block = Vec::new();
        for (n, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            header(&mut block, n, v);
        }
        let mut out = frame(0x1, 0x4, stream, &block); // HEADERS, END_HEADERS
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        out.extend(frame(0x0, 0x1, stream, &body)); // DATA, END_STREAM
        s.write_all(&out).await.unwrap();
    }

    /// Read frames until the server's first SETTINGS frame and return its
    /// MAX_CONCURRENT_STREAMS (id 3), if set.
    pub async fn server_max_streams(s: &mut TcpStream) -> Option<u32> {
        loop {
            let mut h = [0u8; 9];
            s.read_exact(&mut h).await.unwrap();
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let mut p = vec![0u8; len];
            s.read_exact(&mut p).await.unwrap();
            if h[3] == 0x4 && h[4] & 0x1 == 0 {
                return p
                    .chunks(6)
                    .find(|c| u16::from_be_bytes([c[0], c[1]]) == 3)
                    .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
            }
        }
    }

    /// Has the server closed `s`? Reads (and discards) until EOF or error.
    pub async fn closed_by_server(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

/// `GET /metrics` on `addr`.
pub async fn get_metrics(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}
