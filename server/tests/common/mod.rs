//! The shared integration-test harness: one real server on `127.0.0.1:0`
//! (gRPC and `/metrics`), clients on fresh connections, the requests most
//! tests make, the process's own resident memory, and a metric reader;
//! [`sim`] for the tests that drive the engine without a server. Test
//! files `mod common;` it and use what they need.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vmasim_proto::v1::address_space_client::AddressSpaceClient;
use vmasim_proto::v1::{self as pb};
use vmasim_server::mm::Simulator;
use vmasim_server::server::{LocalServer, ServerConfig, spawn_local};

pub mod sim;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Guard against hangs only; nothing asserts how fast anything is.
pub const HANG: Duration = Duration::from_secs(30);

/// The bits as the proto crate defines them for both sides.
pub use vmasim_proto::linux::{map::*, prot::*};
pub const PAGE: u64 = vmasim_server::mm::PAGE_SIZE;
pub const RW: u32 = PROT_READ | PROT_WRITE;
pub const PRIVATE_ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;

/// A server serving until [`TestServer::shutdown`]: the library's
/// [`spawn_local`], with the clients and checks the tests share.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub sim: Arc<Simulator>,
    local: LocalServer,
}

impl TestServer {
    pub async fn start(cfg: ServerConfig) -> Self {
        let local = spawn_local(cfg).await.unwrap();
        Self {
            grpc: local.grpc,
            metrics: local.metrics,
            sim: local.simulator().clone(),
            local,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Channel::from_shared(self.local.url()).unwrap()
    }

    /// A new connection.
    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.unwrap()
    }

    /// A client on a new connection, accepting replies of any size.
    pub async fn client(&self) -> AddressSpaceClient<Channel> {
        AddressSpaceClient::new(self.channel().await).max_decoding_message_size(usize::MAX)
    }

    /// `GET /metrics`: answered 200 with the Prometheus text format's
    /// content type.
    pub async fn metrics_text(&self) -> String {
        let (head, body) = http_get(self.metrics, "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        body
    }

    /// One sample of `name` from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics_text().await, name, &[])
    }

    /// Start the graceful shutdown without waiting for it; false if it had
    /// already started.
    pub fn begin_shutdown(&mut self) -> bool {
        self.local.begin_shutdown()
    }

    /// Stop and wait (bounded by [`HANG`]) for the server to finish; it
    /// must finish without error.
    pub async fn shutdown(self) {
        tokio::time::timeout(HANG, self.local.shutdown())
            .await
            .expect("shutdown hung")
            .unwrap();
    }
}

/// The health service's answer to a check of `service` on `ch`.
pub async fn health_status(ch: Channel, service: &str) -> ServingStatus {
    HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// `GET path` on `addr` over HTTP/1.1: the response head and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
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

/// [`rss_bytes`] in MiB.
pub fn rss_mib() -> u64 {
    rss_bytes() / MIB
}

/// A maps text of `n` separate anonymous VMAs.
pub fn many_vmas(n: u64) -> String {
    (0..n)
        .map(|i| {
            let a = 0x1000_0000 + i * 2 * PAGE;
            format!("{a:x}-{:x} rw-p 00000000 00:00 0 \n", a + PAGE)
        })
        .collect()
}

pub async fn spawn(c: &mut AddressSpaceClient<Channel>) -> u32 {
    c.spawn(pb::SpawnRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pid
}

/// A process imported from `maps_text`; its pid.
pub async fn spawn_maps(c: &mut AddressSpaceClient<Channel>, maps_text: impl Into<String>) -> u32 {
    c.spawn(pb::SpawnRequest {
        maps_text: maps_text.into(),
        start_brk: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .pid
}

pub async fn maps(c: &mut AddressSpaceClient<Channel>, pid: u32) -> pb::MapsResponse {
    c.maps(pb::MapsRequest { pid }).await.unwrap().into_inner()
}

pub async fn stats(c: &mut AddressSpaceClient<Channel>) -> pb::StatsResponse {
    c.stats(pb::StatsRequest {}).await.unwrap().into_inner()
}

/// `mmap(NULL, len, prot, flags)` in `pid`, as a request.
pub fn mmap_request(pid: u32, len: u64, prot: u32, flags: u32) -> pb::MmapRequest {
    pb::MmapRequest {
        pid,
        length: len,
        prot,
        flags,
        ..Default::default()
    }
}

/// A private anonymous read-write mapping of `len` bytes anywhere, as a
/// request (for the tests that look at the call's error or send it on
/// another client).
pub fn anon_request(pid: u32, len: u64) -> pb::MmapRequest {
    mmap_request(pid, len, RW, PRIVATE_ANON)
}

/// [`anon_request`] at `addr` with `MAP_FIXED`.
pub fn fixed_request(pid: u32, addr: u64, len: u64) -> pb::MmapRequest {
    pb::MmapRequest {
        addr,
        ..mmap_request(pid, len, RW, PRIVATE_ANON | MAP_FIXED)
    }
}

/// A private anonymous read-write mapping of `len` bytes anywhere.
pub async fn mmap_anon(c: &mut AddressSpaceClient<Channel>, pid: u32, len: u64) -> u64 {
    mmap(c, pid, len, RW, PRIVATE_ANON).await
}

pub async fn mmap(
    c: &mut AddressSpaceClient<Channel>,
    pid: u32,
    len: u64,
    prot: u32,
    flags: u32,
) -> u64 {
    c.mmap(mmap_request(pid, len, prot, flags))
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
        try_call(s, stream, path, message).await.unwrap();
    }

    /// [`call`], failing instead of panicking when the server has closed
    /// the connection.
    pub async fn try_call(
        s: &mut TcpStream,
        stream: u32,
        path: &str,
        message: &[u8],
    ) -> std::io::Result<()> {
        let mut out = headers(stream, path, false);
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        out.extend(frame(0x0, 0x1, stream, &body)); // DATA, END_STREAM
        s.write_all(&out).await
    }

    /// Open `stream` with its HEADERS and nothing else: the request never
    /// arrives (a slow client, or an idle streaming call).
    pub async fn open(s: &mut TcpStream, stream: u32, path: &str) {
        s.write_all(&headers(stream, path, false)).await.unwrap();
    }

    /// Send one more gRPC message on an open `stream` (no END_STREAM).
    pub async fn send(s: &mut TcpStream, stream: u32, message: &[u8]) {
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        s.write_all(&frame(0x0, 0x0, stream, &body)).await.unwrap();
    }

    /// A HEADERS frame for a gRPC request on `stream`.
    fn headers(stream: u32, path: &str, end_stream: bool) -> Vec<u8> {
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
        // END_HEADERS, and END_STREAM if asked.
        let flags = 0x4 | if end_stream { 0x1 } else { 0 };
        frame(0x1, flags, stream, &block)
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
    http_get(addr, "/metrics").await.1
}

/// The `vmasim-server` binary as a child process, for what needs the real
/// process: its own resident memory and CPU time, an open-file limit of
/// its own, its logs, SIGTERM. `VMASIM_SERVER_BIN` runs another build of
/// it (the README's release figures: `target/release/vmasim-server`).
pub struct BinServer {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub pid: u32,
    child: Option<std::process::Child>,
    /// stderr (the JSON log) and stdout, line by line.
    log: Lines,
    stdout: Lines,
    /// The threads reading them: joined, they have every line.
    readers: Vec<std::thread::JoinHandle<()>>,
}

type Lines = Arc<std::sync::Mutex<Vec<String>>>;

/// How a [`BinServer`] ended ([`BinServer::terminate`]).
pub struct Exited {
    pub status: std::process::ExitStatus,
    /// From SIGTERM to the exit.
    pub took: Duration,
    /// Everything it wrote to stderr (the log) and to stdout.
    pub log: String,
    pub stdout: String,
}

/// A reader thread collecting `r`'s lines into `out` until EOF.
fn collect_lines(
    r: impl std::io::Read + Send + 'static,
    out: Lines,
) -> std::thread::JoinHandle<()> {
    use std::io::BufRead;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines() {
            match line {
                Ok(l) => out.lock().unwrap().push(l),
                Err(_) => return,
            }
        }
    })
}

impl BinServer {
    /// Start it on free loopback ports with `args`, and, if given, an
    /// open-file limit (soft and hard) of `nofile`; it logs at `info`.
    pub async fn start(args: &[&str], nofile: Option<u64>) -> Self {
        Self::launch(args, nofile, "info").await
    }

    /// [`BinServer::start`] with `RUST_LOG=rust_log` and no fd limit.
    pub async fn start_logging(args: &[&str], rust_log: &str) -> Self {
        Self::launch(args, None, rust_log).await
    }

    async fn launch(args: &[&str], nofile: Option<u64>, rust_log: &str) -> Self {
        use std::os::unix::process::CommandExt;
        // A relative VMASIM_SERVER_BIN is taken from the workspace root
        // (tests run in server/).
        let bin = match std::env::var_os("VMASIM_SERVER_BIN") {
            Some(p) => {
                let p = std::path::PathBuf::from(p);
                let p = if p.is_relative() {
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("..")
                        .join(p)
                } else {
                    p
                };
                p.to_string_lossy().into_owned()
            }
            None => env!("CARGO_BIN_EXE_vmasim-server").to_string(),
        };
        let mut cmd = std::process::Command::new(&bin);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(args)
        .env("RUST_LOG", rust_log)
        .env_remove("VMASIM_AUTH_TOKEN")
        .env_remove("VMASIM_AUTH_TOKEN_FILE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        if let Some(n) = nofile {
            // SAFETY: setrlimit is a plain system call, async-signal-safe,
            // and touches no memory of the parent: allowed between fork and
            // exec.
            unsafe {
                cmd.pre_exec(move || {
                    use nix::sys::resource::{Resource, setrlimit};
                    setrlimit(Resource::RLIMIT_NOFILE, n, n).map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let (log, stdout) = (Lines::default(), Lines::default());
        let readers = vec![
            collect_lines(child.stderr.take().unwrap(), log.clone()),
            collect_lines(child.stdout.take().unwrap(), stdout.clone()),
        ];
        let find = |what: &str, field: &str| -> Option<SocketAddr> {
            log.lock().unwrap().iter().find_map(|l| {
                if !l.contains(what) {
                    return None;
                }
                let rest = l.split(&format!("\"{field}\":\"")).nth(1)?;
                rest.split('"').next()?.parse().ok()
            })
        };
        let start = std::time::Instant::now();
        let (grpc, metrics) = loop {
            if let (Some(g), Some(m)) = (
                find("serving gRPC", "grpc_addr"),
                find("serving metrics", "addr"),
            ) {
                break (g, m);
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{bin} exited at start ({status}):\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            assert!(start.elapsed() < HANG, "{bin}: no `serving` lines");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Self {
            grpc,
            metrics,
            pid: child.id(),
            child: Some(child),
            log,
            stdout,
            readers,
        }
    }

    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{}/status", self.pid))
    }

    /// The server's resident set size, bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.status_field("VmRSS:") * 1024
    }

    /// The server's threads.
    pub fn threads(&self) -> u64 {
        self.status_field("Threads:")
    }

    /// The server's open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// CPU time the server has used (user + system), seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        // After the command name's closing parenthesis: field 3 onwards;
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        ticks as f64 / hz
    }

    pub fn endpoint(&self) -> Endpoint {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap()
    }

    /// A client on a new connection, accepting replies of any size.
    pub async fn client(&self) -> AddressSpaceClient<Channel> {
        AddressSpaceClient::new(self.endpoint().connect().await.unwrap())
            .max_decoding_message_size(usize::MAX)
    }

    pub async fn metrics_text(&self) -> String {
        get_metrics(self.metrics).await
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then wait (bounded by [`HANG`]) for the exit and for every
    /// line it wrote.
    pub async fn terminate(mut self) -> Exited {
        use nix::sys::signal::{Signal, kill};
        let mut child = self.child.take().unwrap();
        let start = std::time::Instant::now();
        kill(nix::unistd::Pid::from_raw(self.pid as i32), Signal::SIGTERM).unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > HANG {
                let _ = child.kill();
                panic!(
                    "server did not exit within {HANG:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let took = start.elapsed();
        // The pipes reach EOF now that the server has exited: once the
        // readers are joined, every line it wrote has been collected.
        for r in self.readers.drain(..) {
            r.join().expect("log reader panicked");
        }
        Exited {
            status,
            took,
            log: self.log(),
            stdout: self.stdout.lock().unwrap().join("\n"),
        }
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Raise this process's soft open-file limit to at least `n` (up to the
/// hard limit); the limit now.
pub fn raise_own_fd_limit(n: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft >= n {
        return soft;
    }
    let want = n.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    want
}
