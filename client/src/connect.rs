//! Connecting to a server: endpoint, TLS, and the bearer-token interceptor.
//!
//! Every RPC the CLI makes goes through a [`Client`], an
//! `AddressSpaceClient` whose channel adds `authorization: Bearer <token>`
//! to each call when a token is configured. Channels are cheap to clone and
//! multiplex calls over one HTTP/2 connection; the load generator opens
//! several ([`Target::connect`] once per `--connections`) to spread load.

use crate::error::CliError;
use std::path::PathBuf;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};
use tonic_health::pb::health_client::HealthClient;
use vmasim_proto::v1::address_space_client::AddressSpaceClient;

/// The default server address (also the server binary's default).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Largest reply the client accepts (a `Maps` of a process at
/// `max_map_count` is ~6 MiB of text plus entries).
pub(crate) const MAX_DECODE: usize = 64 << 20;

/// The service client used everywhere in the crate.
pub type Client = AddressSpaceClient<InterceptedService<Channel, Auth>>;

/// The health client, with the same interceptor.
pub type Health = HealthClient<InterceptedService<Channel, Auth>>;

/// Adds the bearer token, if any, to every request.
#[derive(Clone, Default)]
pub struct Auth {
    /// `Bearer <token>`, already validated as an ASCII header value so the
    /// per-call work is a clone.
    header: Option<MetadataValue<Ascii>>,
}

impl Auth {
    /// An interceptor sending `token` (none: sends nothing).
    pub fn new(token: Option<&str>) -> Result<Self, CliError> {
        let header = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| CliError::Usage("--token must be printable ASCII".into()))
            })
            .transpose()?;
        Ok(Auth { header })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// Limit on opening a connection: TCP, TLS and the HTTP/2 handshake
    /// (a stopped server accepts TCP and then says nothing).
    pub connect_timeout: Duration,
    /// Limit on each call until its response starts; `None`: no limit.
    pub timeout: Option<Duration>,
}

/// Default [`Target::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `vmasim health` answers within this even if `--timeout` is longer: a
/// probe must not hang.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

impl Target {
    /// A plain-text target without token (embedded servers, tests).
    pub fn plain(url: impl Into<String>) -> Self {
        Target {
            url: url.into(),
            token: None,
            tls_ca: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: None,
        }
    }

    fn endpoint(&self) -> Result<Endpoint, CliError> {
        let mut url = self.url.clone();
        if !url.contains("://") {
            let scheme = if self.tls_ca.is_some() {
                "https"
            } else {
                "http"
            };
            url = format!("{scheme}://{url}");
        }
        let mut ep = Endpoint::from_shared(url.clone())
            .map_err(|e| CliError::Usage(format!("bad --server URL `{url}`: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        if let Some(t) = self.timeout {
            ep = ep.timeout(t);
        }
        if self.tls_ca.is_some() || url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                let pem = std::fs::read(ca).map_err(|e| {
                    CliError::Other(format!("cannot read --tls-ca {}: {e}", ca.display()))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| CliError::Usage(format!("TLS configuration: {e}")))?;
        }
        Ok(ep)
    }

    /// Opens one connection (one HTTP/2 channel).
    pub async fn channel(&self) -> Result<Channel, CliError> {
        let ep = self.endpoint()?;
        let connected = tokio::time::timeout(self.connect_timeout, ep.connect())
            .await
            .map_err(|_| {
                CliError::Connect(format!(
                    "cannot connect to {}: no HTTP/2 answer within {} (--connect-timeout)",
                    self.url,
                    humantime_like(self.connect_timeout)
                ))
            })?;
        connected.map_err(|e| {
            let mut msg = format!("cannot connect to {}: {e}", self.url);
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            CliError::Connect(msg)
        })
    }

    /// Opens a connection and wraps it in a service client.
    pub async fn connect(&self) -> Result<Client, CliError> {
        let ch = self.channel().await?;
        self.client(ch)
    }

    /// A service client on an existing channel.
    pub fn client(&self, ch: Channel) -> Result<Client, CliError> {
        let auth = Auth::new(self.token.as_deref())?;
        Ok(AddressSpaceClient::with_interceptor(ch, auth)
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(MAX_DECODE))
    }

    /// A health client on a new connection.
    pub async fn health(&self) -> Result<Health, CliError> {
        let ch = self.channel().await?;
        self.health_client(ch)
    }

    /// A health client on an existing channel (with the same interceptor as
    /// [`Target::client`], so both kinds of call cost the client the same).
    pub fn health_client(&self, ch: Channel) -> Result<Health, CliError> {
        let auth = Auth::new(self.token.as_deref())?;
        Ok(HealthClient::with_interceptor(ch, auth))
    }
}

/// `5s`, `1.5s`, `250ms`.
fn humantime_like(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
