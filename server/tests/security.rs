//! Security: TLS end to end, bearer-token auth, and the token kept out of
//! the logs.
//!
//! What this proves:
//!
//! * **TLS.** With a self-signed certificate generated here (rcgen), a
//!   tonic client that trusts it (`ClientTlsConfig::ca_certificate`) calls
//!   Spawn, Mmap and Fault successfully; a plaintext client, a TLS client
//!   that does not trust the certificate, and one expecting another name
//!   all fail, and none of them reaches the service.
//! * **Token auth** (over that TLS connection): a missing or wrong token is
//!   UNAUTHENTICATED and changes nothing, the right one works, health
//!   checks need none; no error message repeats a token.
//! * **No token in the logs.** The real `vmasim-server` binary, run with
//!   `--auth-token`, `RUST_LOG=trace` and `--log-format json` (everything
//!   every crate logs, including the HTTP/2 layers), serves authenticated
//!   and rejected calls, then exits 0 on SIGTERM; neither the token nor any
//!   presented token nor an `authorization` value appears anywhere in its
//!   stdout or stderr.
//!
//! The comparison itself is `subtle::ConstantTimeEq` (server.rs,
//! `BearerAuth`); timing is not measured here.

mod common;
use common::{BinServer, Exited, HANG, PAGE, TestServer, anon_request, health_status};

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use vmasim_proto::v1::address_space_client::AddressSpaceClient;
use vmasim_proto::v1::{self as pb, session_request::Op};
use vmasim_server::server::{SERVICE_NAME, ServerConfig, TlsPem};

/// Adds `authorization: Bearer TOKEN`.
fn bearer(token: &'static str) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut r: Request<()>| {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(r)
    }
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

async fn tls_channel(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("tls config: {e}"))?;
    tokio::time::timeout(HANG, ch.connect())
        .await
        .expect("connect hung")
        .map_err(|e| format!("connect: {e:?}"))
}

/// A client that must not get through: either it cannot connect, or its
/// call fails (and not with an answer from the service).
async fn must_fail(ch: Result<Channel, String>, what: &str) {
    let ch = match ch {
        Err(e) => {
            eprintln!("{what}: refused at connect ({e})");
            return;
        }
        Ok(ch) => ch,
    };
    let r = tokio::time::timeout(
        HANG,
        AddressSpaceClient::new(ch).spawn(pb::SpawnRequest::default()),
    )
    .await
    .expect("call hung");
    let e = r.expect_err(what);
    assert!(
        !matches!(e.code(), Code::Unauthenticated | Code::Ok),
        "{what}: the service answered: {e:?}"
    );
    eprintln!("{what}: call failed ({:?})", e.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_with_token_auth() {
    const TOKEN: &str = "tls-t0ken-42";
    let (cert, key) = self_signed();
    let server = TestServer::start(ServerConfig {
        tls: Some(TlsPem {
            cert: cert.clone().into_bytes(),
            key: key.into_bytes(),
        }),
        auth_token: Some(TOKEN.into()),
        ..ServerConfig::default()
    })
    .await;
    let (addr, sim) = (server.grpc, server.sim.clone());

    let trusted = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert))
        .domain_name("localhost");
    let ch = tls_channel(addr, trusted.clone()).await.unwrap();

    // The right token: Spawn, Mmap, Fault, a Session round trip.
    let mut c = AddressSpaceClient::with_interceptor(ch.clone(), bearer(TOKEN));
    let pid = c
        .spawn(pb::SpawnRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pid;
    let a = c
        .mmap(anon_request(pid, 4 * PAGE))
        .await
        .unwrap()
        .into_inner()
        .addr;
    let f = c
        .fault(pb::FaultRequest {
            pid,
            addr: a,
            access: pb::Access::Write as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.outcome(), pb::FaultOutcome::AnonZeroFill);
    let mut replies = c
        .session(tokio_stream::iter(vec![pb::SessionRequest {
            id: 7,
            op: Some(Op::Maps(pb::MapsRequest { pid })),
        }]))
        .await
        .unwrap()
        .into_inner();
    let r = replies.message().await.unwrap().unwrap();
    assert_eq!((r.id, r.code), (7, 0));
    assert!(replies.message().await.unwrap().is_none());

    // No token, a wrong one, a prefix of the right one, another scheme:
    // UNAUTHENTICATED, nothing done, no token echoed.
    let procs = sim.pids().len();
    let mut none = AddressSpaceClient::new(ch.clone());
    let mut wrong = AddressSpaceClient::with_interceptor(ch.clone(), bearer("tls-t0ken-43"));
    let mut prefix = AddressSpaceClient::with_interceptor(ch.clone(), bearer("tls-t0ken-4"));
    let mut basic = AddressSpaceClient::with_interceptor(ch.clone(), |mut r: Request<()>| {
        r.metadata_mut()
            .insert("authorization", format!("Basic {TOKEN}").parse().unwrap());
        Ok(r)
    });
    for (what, r) in [
        ("no token", none.spawn(pb::SpawnRequest::default()).await),
        ("wrong", wrong.spawn(pb::SpawnRequest::default()).await),
        ("prefix", prefix.spawn(pb::SpawnRequest::default()).await),
        ("basic", basic.spawn(pb::SpawnRequest::default()).await),
    ] {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(!e.message().contains("t0ken"), "{what}: {e:?}");
    }
    let e = wrong.exit(pb::ExitRequest { pid }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(sim.pids().len(), procs, "rejected calls did nothing");

    // Health needs no token.
    assert_eq!(
        health_status(ch.clone(), SERVICE_NAME).await,
        ServingStatus::Serving
    );

    // Clients that must not get through.
    let plain = async {
        let ch = Channel::from_shared(format!("http://{addr}")).unwrap();
        tokio::time::timeout(HANG, ch.connect())
            .await
            .expect("connect hung")
            .map_err(|e| format!("{e:?}"))
    };
    must_fail(plain.await, "plaintext client").await;
    must_fail(
        tls_channel(addr, ClientTlsConfig::new().domain_name("localhost")).await,
        "TLS client without the CA",
    )
    .await;
    must_fail(
        tls_channel(
            addr,
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&cert))
                .domain_name("vmasim.example"),
        )
        .await,
        "TLS client expecting another name",
    )
    .await;
    assert_eq!(sim.pids().len(), procs);

    // The trusted connection still works after all that.
    c.exit(pb::ExitRequest { pid }).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_never_appears_in_the_logs() {
    const TOKEN: &str = "s3cr3t-XYZ";
    const WRONG: &str = "s3cr3t-XYz-wr0ng";
    let srv = BinServer::start_logging(&["--auth-token", TOKEN], "trace").await;

    // Authenticated calls, rejected calls, a stream, health.
    let ch = srv.endpoint().connect().await.unwrap();
    let mut good = AddressSpaceClient::with_interceptor(ch.clone(), bearer(TOKEN));
    let pid = good
        .spawn(pb::SpawnRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pid;
    let a = good
        .mmap(anon_request(pid, PAGE))
        .await
        .unwrap()
        .into_inner()
        .addr;
    good.fault(pb::FaultRequest {
        pid,
        addr: a,
        access: 1,
    })
    .await
    .unwrap();
    let mut replies = good
        .session(tokio_stream::iter(vec![pb::SessionRequest {
            id: 1,
            op: Some(Op::Maps(pb::MapsRequest { pid })),
        }]))
        .await
        .unwrap()
        .into_inner();
    while replies.message().await.unwrap().is_some() {}
    good.stats(pb::StatsRequest {}).await.unwrap();
    let e = AddressSpaceClient::new(ch.clone())
        .spawn(pb::SpawnRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = AddressSpaceClient::with_interceptor(ch.clone(), bearer(WRONG))
        .maps(pb::MapsRequest { pid })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(
        health_status(ch.clone(), SERVICE_NAME).await,
        ServingStatus::Serving
    );
    good.exit(pb::ExitRequest { pid }).await.unwrap();
    drop((good, ch));

    // SIGTERM: graceful shutdown, exit 0.
    let Exited {
        status,
        log: err,
        stdout: out,
        ..
    } = srv.terminate().await;
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{err}");

    // The logs are real: trace level from every layer, JSON.
    let lines = err.lines().count();
    assert!(
        err.contains("\"level\":\"TRACE\""),
        "no trace lines: RUST_LOG=trace did not take effect:\n{err}"
    );
    assert!(err.contains("SIGTERM received"), "{err}");
    // A token given on the command line is warned about (issue 12, item
    // 6: every local user can read it in /proc/PID/cmdline).
    assert!(
        err.contains("readable in /proc/PID/cmdline"),
        "no warning about --auth-token on the command line:\n{err}"
    );
    eprintln!(
        "server wrote {lines} log lines ({} bytes) and {} bytes to stdout",
        err.len(),
        out.len()
    );
    for (name, text) in [("stdout", &out), ("stderr", &err)] {
        for secret in [TOKEN, WRONG, "Bearer ", "bearer "] {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{secret:?} appears in the server's {name}:\n{line}");
            }
        }
    }
}

/// Issue 12, item 6: /metrics has no authentication, so a non-loopback
/// `--metrics-listen` is refused (exit 2, a message naming the flag) even
/// when a token protects gRPC, unless `--insecure`; so is a non-loopback
/// `--listen` without a token.
#[test]
fn non_loopback_listeners_need_insecure_or_a_token() {
    let token = std::env::temp_dir().join(format!("vmasim-token-{}", std::process::id()));
    std::fs::write(&token, "t0ken\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vmasim-server"))
            .args(args)
            .env_remove("VMASIM_AUTH_TOKEN")
            .env_remove("VMASIM_AUTH_TOKEN_FILE")
            .env_remove("VMASIM_INSECURE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let t = token.to_str().unwrap();
    let out = run(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "0.0.0.0:0",
        "--auth-token-file",
        t,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refusing to serve /metrics on non-loopback --metrics-listen"),
        "{err}"
    );
    let out = run(&["--listen", "0.0.0.0:0", "--metrics-listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refusing to listen on non-loopback --listen"),
        "{err}"
    );
    let _ = std::fs::remove_file(&token);
}
