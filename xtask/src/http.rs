//! Just enough HTTP/1.0 for the checks: `GET /metrics` from the server and
//! the Prometheus HTTP API (a query by form POST, JSON back).
//!
//! HTTP/1.0 on purpose: the server closes the connection after one
//! response and sends no chunked encoding, so a response is "read to end,
//! split at the blank line" and no HTTP client crate is needed.

use crate::{Fail, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One response.
pub struct Response {
    pub status: u16,
    /// Header lines, as sent.
    pub head: String,
    pub body: String,
}

impl Response {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn request(addr: &str, head: &str, body: &str) -> Result<Response> {
    let sock = addr
        .parse()
        .map_err(|e| Fail(format!("address {addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(format!("{head}Host: {addr}\r\n\r\n{body}").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        fail!("{addr}: no HTTP response");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Fail(format!("{addr}: bad status line {head:?}")))?;
    Ok(Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// `GET path` on `addr` (`127.0.0.1:PORT`).
pub fn get(addr: &str, path: &str) -> Result<Response> {
    request(addr, &format!("GET {path} HTTP/1.0\r\n"), "")
}

/// `POST path` with `form` as `application/x-www-form-urlencoded`.
pub fn post_form(addr: &str, path: &str, form: &[(&str, &str)]) -> Result<Response> {
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ),
        &body,
    )
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `n` distinct free loopback ports (bound together, then released: the
/// usual small race with whoever binds next).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()?)
}
