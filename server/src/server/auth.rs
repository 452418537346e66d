//! Bearer-token authentication of every call but health checks.
//!
//! An interceptor, not a layer: it runs per service, so the health service
//! (probes carry no token) is simply not wrapped in it, and it sees the
//! metadata after tonic has parsed it. The comparison is constant-time and
//! the token is never logged or echoed.

use std::sync::Arc;
use tonic::Status;
use tonic::service::Interceptor;

/// Checks `authorization: Bearer <token>` in constant time. With no token
/// configured it lets everything through. The token is never logged.
#[derive(Clone)]
pub(super) struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
    pub(super) fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.as_bytes())),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        let value = value.as_bytes();
        // The scheme is case-insensitive (RFC 9110); the token is not.
        let presented = match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
            _ => {
                return Err(Status::unauthenticated(
                    "authorization metadata is not `Bearer <token>`",
                ));
            }
        };
        // `ct_eq` on slices of different lengths returns false at once: it
        // reveals the token's length, not its content.
        if bool::from(presented.ct_eq(token)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn bearer_auth() {
        let mut a = BearerAuth::new(Some("s3cret"));
        let req = |v: Option<&str>| {
            let mut r = tonic::Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            r
        };
        assert!(a.call(req(Some("Bearer s3cret"))).is_ok());
        assert!(a.call(req(Some("bearer s3cret"))).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
            Some("Bearer"),
        ] {
            let e = a.call(req(bad)).unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated);
            assert!(!e.message().contains("s3cret"));
        }
        assert!(BearerAuth::new(None).call(req(None)).is_ok());
    }
}
