//! `vmasim-server`: parse flags, set up logging, bind, and hand over to
//! [`vmasim_server::server::Server::serve`]. Nothing else lives here, so
//! tests and the client's demo run exactly the server this binary runs.

#[cfg(vmasim_loom)]
fn main() {
    // The model-checking build compiles only the engine's lock-free core.
}

#[cfg(not(vmasim_loom))]
fn main() -> std::process::ExitCode {
    imp::main()
}

#[cfg(not(vmasim_loom))]
mod imp {
    use clap::{Parser, ValueEnum};
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::time::Duration;
    use vmasim_server::mm::CachePolicy;
    use vmasim_server::mm::FaultLockMode;
    use vmasim_server::mm::MapsReader;
    use vmasim_server::mm::SimConfig;
    use vmasim_server::server::{Server, ServerConfig, TlsPem};

    /// vmasim: simulated Linux address spaces (mm_struct + VMAs) served over
    /// gRPC, to watch and measure the kernel's per-VMA locks and its
    /// SLAB_TYPESAFE_BY_RCU VMA cache under real concurrency.
    ///
    /// Serves vmasim.v1.AddressSpace, grpc.health.v1.Health and server
    /// reflection on --listen, and Prometheus metrics at /metrics on
    /// --metrics-listen. Every flag can also be set through the environment
    /// variable shown. SIGINT or SIGTERM: health goes NOT_SERVING, in-flight
    /// calls finish (at most 10 s), exit 0.
    #[derive(Debug, Parser)]
    #[command(name = "vmasim-server", version, about, long_about)]
    struct Args {
        /// gRPC listen address.
        #[arg(long, env = "VMASIM_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,

        /// Prometheus metrics listen address (GET /metrics).
        #[arg(long, env = "VMASIM_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
        metrics_listen: SocketAddr,

        /// VMA cache free policy: typesafe (SLAB_TYPESAFE_BY_RCU, freed slots reused at once) or rcu (every free waits a grace period).
        #[arg(long, env = "VMASIM_VMA_CACHE", value_enum, default_value_t = SimConfig::default().vma_cache)]
        vma_cache: CachePolicy,

        /// Fault locking: per-vma (lock_vma_under_rcu, mmap_lock as fallback) or mmap-lock (every fault takes mmap_lock).
        #[arg(long, env = "VMASIM_FAULT_LOCK", value_enum, default_value_t = SimConfig::default().fault_lock)]
        fault_lock: FaultLockMode,

        /// How Maps reads /proc/PID/maps: per-vma (RCU walk, each VMA read-locked in turn, mmap_lock only as a fallback: lock_next_vma, Linux 6.17+) or mmap-lock (mmap_lock held for the whole walk, as before 6.17).
        #[arg(long, env = "VMASIM_MAPS_READER", value_enum, default_value_t = SimConfig::default().maps_reader)]
        maps_reader: MapsReader,

        /// Maximum live processes; more gets RESOURCE_EXHAUSTED.
        #[arg(long, env = "VMASIM_MAX_PROCESSES", default_value_t = SimConfig::default().max_processes)]
        max_processes: usize,

        /// vm.max_map_count: maximum VMAs per process.
        #[arg(long, env = "VMASIM_MAX_MAP_COUNT", default_value_t = SimConfig::default().max_map_count)]
        max_map_count: usize,

        /// VMA cache capacity in slots (one slot per VMA, shared by all processes).
        #[arg(long, env = "VMASIM_POOL_CAPACITY", default_value_t = SimConfig::default().pool_capacity)]
        pool_capacity: u32,

        /// Page-table memory of all processes together (e.g. 256MiB, 1GiB, bytes if no unit). A fault needing a table past it gets RESOURCE_EXHAUSTED (VM_FAULT_OOM), a fork too; munmap and exit give tables back.
        #[arg(long, env = "VMASIM_MAX_PGTABLES_BYTES", default_value = "256MiB", value_parser = parse_bytes)]
        max_pgtables_bytes: u64,

        /// Maximum addresses in one FaultBatch; more gets INVALID_ARGUMENT.
        #[arg(long, env = "VMASIM_MAX_BATCH", default_value_t = ServerConfig::default().max_batch)]
        max_batch: usize,

        /// Maximum calls in flight: a unary call holds a slot while it runs, a Session operation while its work runs (an idle Session holds none); more get RESOURCE_EXHAUSTED at once.
        #[arg(long, env = "VMASIM_CONCURRENCY_LIMIT", default_value_t = ServerConfig::default().concurrency_limit)]
        concurrency_limit: usize,

        /// Server-side limit on the time to answer one call, e.g. 30s or 500ms.
        #[arg(long, env = "VMASIM_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
        request_timeout: Duration,

        /// Largest reply message (e.g. 16MiB); a larger Maps reply is RESOURCE_EXHAUSTED.
        #[arg(long, env = "VMASIM_MAX_REPLY_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
        max_reply_bytes: u64,

        /// Bytes of replies built but not yet read by clients, all calls and streams together; past it, calls with large replies get RESOURCE_EXHAUSTED before doing anything. What clients that stop reading can pin.
        #[arg(long, env = "VMASIM_MAX_REPLY_BUFFER_BYTES", default_value = "256MiB", value_parser = parse_bytes)]
        max_reply_buffer_bytes: u64,

        /// Open gRPC connections; more are closed on accept. Each takes a file descriptor: at start the soft RLIMIT_NOFILE is raised to the hard one, and a warning says so if it is still below this plus a reserve.
        #[arg(long, env = "VMASIM_MAX_CONNECTIONS", default_value_t = ServerConfig::default().max_connections)]
        max_connections: usize,

        /// Concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
        #[arg(long, env = "VMASIM_MAX_STREAMS_PER_CONNECTION", default_value_t = ServerConfig::default().max_streams_per_connection)]
        max_streams_per_connection: u32,

        /// Health Watch streams open at once, all connections together; more get RESOURCE_EXHAUSTED.
        #[arg(long, env = "VMASIM_MAX_WATCH_STREAMS", default_value_t = ServerConfig::default().max_watch_streams)]
        max_watch_streams: usize,

        /// Time a new connection has to send the HTTP/2 preface (the magic and its SETTINGS frame); a connection that has not is closed.
        #[arg(long, env = "VMASIM_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
        handshake_timeout: Duration,

        /// HTTP/2 PING interval on a quiet connection; a peer that does not answer within as long again is disconnected.
        #[arg(long, env = "VMASIM_KEEPALIVE", default_value = "20s", value_parser = humantime::parse_duration)]
        keepalive: Duration,

        /// Require `authorization: Bearer <token>` on every call but health checks. A value given on the command line is readable by every local user in /proc/PID/cmdline: prefer --auth-token-file or the environment variable.
        #[arg(
            long,
            env = "VMASIM_AUTH_TOKEN",
            hide_env_values = true,
            conflicts_with = "auth_token_file"
        )]
        auth_token: Option<String>,

        /// Read the bearer token from this file (surrounding whitespace ignored).
        #[arg(long, env = "VMASIM_AUTH_TOKEN_FILE")]
        auth_token_file: Option<PathBuf>,

        /// TLS certificate chain (PEM) for the gRPC listener; needs --tls-key.
        #[arg(long, env = "VMASIM_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,

        /// TLS private key (PEM) for the gRPC listener; needs --tls-cert.
        #[arg(long, env = "VMASIM_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,

        /// Log format on stderr (level via RUST_LOG, default info).
        #[arg(long, env = "VMASIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,

        /// Allow a non-loopback --listen without a token, and a non-loopback --metrics-listen at all (/metrics has no authentication).
        #[arg(long, env = "VMASIM_INSECURE")]
        insecure: bool,

        /// Print every exported metric as `NAME TYPE`, one a line, and exit
        /// (the deploy check reads the metric table from here).
        #[arg(long, hide = true)]
        print_metrics: bool,
    }

    #[derive(Debug, Clone, Copy, ValueEnum)]
    enum LogFormat {
        Text,
        Json,
    }

    fn init_logging(format: LogFormat) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Colours only for a person at a terminal, not for log files.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }

    /// Turn the flags into a config; `Err` is a message for the user.
    fn config(args: &Args) -> Result<ServerConfig, String> {
        let auth_token = match (&args.auth_token, &args.auth_token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => {
                let t = std::fs::read_to_string(path)
                    .map_err(|e| format!("--auth-token-file {}: {e}", path.display()))?;
                Some(t.trim().to_string())
            }
            (None, None) => None,
        };
        if auth_token.as_deref() == Some("") {
            return Err("the auth token is empty".into());
        }
        if auth_token.is_none() && !args.insecure && !args.listen.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on non-loopback --listen {} without authentication: \
                 pass --auth-token-file (or VMASIM_AUTH_TOKEN), or --insecure if the network is private",
                args.listen
            ));
        }
        // /metrics has no authentication at all, token or not.
        if !args.insecure && !args.metrics_listen.ip().is_loopback() {
            return Err(format!(
                "refusing to serve /metrics on non-loopback --metrics-listen {}: it has no \
                 authentication (the bearer token protects gRPC only); pass --insecure if \
                 the network is private",
                args.metrics_listen
            ));
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(TlsPem {
                cert: std::fs::read(c).map_err(|e| format!("--tls-cert {}: {e}", c.display()))?,
                key: std::fs::read(k).map_err(|e| format!("--tls-key {}: {e}", k.display()))?,
            }),
            _ => None,
        };
        if args.pool_capacity == 0 || args.max_processes == 0 || args.max_map_count == 0 {
            return Err("--pool-capacity, --max-processes and --max-map-count must be > 0".into());
        }
        Ok(ServerConfig {
            sim: SimConfig {
                vma_cache: args.vma_cache,
                fault_lock: args.fault_lock,
                maps_reader: args.maps_reader,
                max_processes: args.max_processes,
                max_map_count: args.max_map_count,
                pool_capacity: args.pool_capacity,
                max_pgtables_bytes: args.max_pgtables_bytes,
                first_pid: boot_pid_base(),
            },
            max_batch: args.max_batch,
            concurrency_limit: args.concurrency_limit.max(1),
            request_timeout: args.request_timeout,
            max_reply_bytes: usize::try_from(args.max_reply_bytes).unwrap_or(usize::MAX),
            max_reply_buffer_bytes: usize::try_from(args.max_reply_buffer_bytes)
                .unwrap_or(usize::MAX),
            max_connections: args.max_connections.max(1),
            max_streams_per_connection: args.max_streams_per_connection.max(1),
            max_watch_streams: args.max_watch_streams.max(1),
            handshake_timeout: args.handshake_timeout,
            keepalive: args.keepalive,
            auth_token,
            tls,
            ..ServerConfig::default()
        })
    }

    /// A byte size: a number with an optional unit (B, KiB, MiB, GiB, TiB;
    /// K, M, G, T and KB, MB... are read as the same powers of 1024).
    fn parse_bytes(s: &str) -> Result<u64, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 64KiB, 256MiB, 1GiB)"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            u => {
                return Err(format!(
                    "unknown size unit {u:?} (use KiB, MiB, GiB or TiB)"
                ));
            }
        };
        n.checked_mul(1 << shift)
            .ok_or_else(|| format!("{s:?} is too large"))
    }

    /// The first pid of this server run: random per start, so a pid kept
    /// from an earlier run (state is in memory only) is NOT_FOUND rather
    /// than silently another process. Below 2^30, leaving 2^32 - 2^30 pids
    /// before the counter could wrap.
    fn boot_pid_base() -> u32 {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS per process: enough to make a
        // collision with an earlier run's pids unlikely, no extra crate.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
        1000 + (h.finish() % ((1 << 30) - 1000)) as u32
    }

    /// File descriptors the server needs besides its connections: the
    /// runtime, both listeners, /metrics scrapes, logs.
    const FD_RESERVE: u64 = 64;

    /// Raise the soft open-file limit to the hard one (what a server with
    /// hundreds of connections needs; 1024 is a common default soft
    /// limit), and warn when it still cannot hold `max_connections`: past
    /// it `accept` fails with EMFILE, the server pauses and retries
    /// (`vmasim_accept_errors_total`), and new clients wait in the backlog.
    fn raise_fd_limit(max_connections: usize) {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return;
        };
        let mut limit = soft;
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            limit = hard;
        }
        let needed = max_connections as u64 + FD_RESERVE;
        if limit < needed {
            tracing::warn!(
                fd_limit = limit,
                max_connections,
                "the open-file limit ({limit}) is below --max-connections {max_connections} +                  {FD_RESERVE}: at the limit new connections wait in the listen backlog until                  others close; raise `ulimit -n` or lower --max-connections"
            );
        }
    }

    /// SIGINT or SIGTERM.
    async fn shutdown_signal() {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install the SIGTERM handler: {e}");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }

    pub fn main() -> ExitCode {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Args::command().get_matches();
        let args = match Args::from_arg_matches(&matches) {
            Ok(a) => a,
            Err(e) => e.exit(),
        };
        if args.print_metrics {
            for m in vmasim_server::telemetry::METRICS {
                println!("{} {}", m.name, m.kind.as_str());
            }
            return ExitCode::SUCCESS;
        }
        init_logging(args.log_format);
        if matches.value_source("auth_token") == Some(clap::parser::ValueSource::CommandLine) {
            tracing::warn!(
                "--auth-token on the command line is readable in /proc/PID/cmdline by every local \
                 user; use --auth-token-file or VMASIM_AUTH_TOKEN instead"
            );
        }
        let cfg = match config(&args) {
            Ok(c) => c,
            Err(msg) => {
                eprintln!("vmasim-server: {msg}");
                return ExitCode::from(2);
            }
        };
        raise_fd_limit(cfg.max_connections);
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("vmasim-server: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = rt.block_on(async {
            let grpc = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| format!("--listen {}: {e}", args.listen))?;
            let metrics = tokio::net::TcpListener::bind(args.metrics_listen)
                .await
                .map_err(|e| format!("--metrics-listen {}: {e}", args.metrics_listen))?;
            tracing::info!(
                vma_cache = cfg.sim.vma_cache.as_str(),
                fault_lock = cfg.sim.fault_lock.as_str(),
                maps_reader = cfg.sim.maps_reader.as_str(),
                max_processes = cfg.sim.max_processes,
                max_map_count = cfg.sim.max_map_count,
                pool_capacity = cfg.sim.pool_capacity,
                "vmasim-server {}",
                env!("CARGO_PKG_VERSION")
            );
            Server::new(cfg)
                .serve(grpc, Some(metrics), shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("vmasim-server: {msg}");
                ExitCode::FAILURE
            }
        }
    }
}
